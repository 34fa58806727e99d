"""artifactfs: versioned ML artifacts mounted as read-only directories, and a W&B-compatible API.

``import artifactfs as wandb`` gives W&B artifact code what it uses: ``Api``, ``Artifact``,
``Table``, ``init``, ``log_artifact``, ``use_artifact``, ``finish`` and ``current_run()``, over the
registry ``$ARTIFACTFS_REGISTRY``.  W&B's ``wandb.run`` (the current run) is ``current_run()``
here: ``artifactfs.run`` is the module that implements runs.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from .api import Api
from .artifact import Artifact, ArtifactFile, ArtifactManifestEntry, VerificationError
from .table import Table

#: Names that artifactfs.run (runs and lineage) provides, loaded on first use.
_RUN_NAMES = ("init", "log_artifact", "use_artifact", "finish", "current_run", "Run")

__all__ = [
    "Api",
    "Artifact",
    "ArtifactFile",
    "ArtifactManifestEntry",
    "Table",
    "VerificationError",
    "__version__",
    *_RUN_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _RUN_NAMES:
        return getattr(importlib.import_module(".run", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
