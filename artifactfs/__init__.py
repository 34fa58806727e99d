"""artifactfs: versioned ML artifacts mounted as read-only directories, and a W&B-compatible API.

``import artifactfs as wandb`` gives W&B artifact code what it uses: ``Api``, ``Artifact``,
``Table``, ``init``, ``log_artifact``, ``use_artifact``, ``finish`` and ``run`` (the current run,
or None), over the registry ``$ARTIFACTFS_REGISTRY``.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

from .api import Api
from .artifact import Artifact, ArtifactFile, ArtifactManifestEntry, VerificationError
from .table import Table

#: Names that artifactfs.run (runs and lineage) provides, loaded on first use.
_RUN_NAMES = ("init", "log_artifact", "use_artifact", "finish", "Run")

__all__ = [
    "Api",
    "Artifact",
    "ArtifactFile",
    "ArtifactManifestEntry",
    "Table",
    "VerificationError",
    "__version__",
    *_RUN_NAMES,
    "run",
]


def __getattr__(name: str) -> Any:
    if name in _RUN_NAMES:
        return getattr(importlib.import_module(".run", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """``artifactfs.run`` is the current run (or None), as ``wandb.run``, although
    ``artifactfs/run.py`` is also a module: the import system's binding of the submodule is kept
    aside, and ``from artifactfs.run import Run`` finds the module through ``sys.modules``."""

    @property
    def run(self) -> Any:
        module = sys.modules.get(f"{__name__}.run")
        return None if module is None else getattr(module, "run", None)

    @run.setter
    def run(self, value: Any) -> None:
        if not isinstance(value, types.ModuleType):
            raise AttributeError("artifactfs.run is the current run: start one with artifactfs.init()")


sys.modules[__name__].__class__ = _Package
