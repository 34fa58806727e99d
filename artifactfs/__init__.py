"""artifactfs: versioned ML artifacts mounted as read-only directories, and a W&B-compatible API.

``import artifactfs as wandb`` gives W&B artifact code what it uses: ``Api``, ``Artifact``,
``Table``, ``init``, ``log_artifact``, ``use_artifact``, ``finish`` and ``current_run()``, over the
registry ``$ARTIFACTFS_REGISTRY``.  W&B's ``wandb.run`` (the current run) is ``current_run()``
here: ``artifactfs.run`` is the module that implements runs.
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Api
    from .artifact import Artifact, ArtifactFile, ArtifactManifestEntry, VerificationError
    from .run import Run, current_run, finish, init, log_artifact, use_artifact
    from .table import Table

# The W&B-compatible API is imported when a name of it is first asked for: the mount daemon
# and the other CLI commands never load it (about 40 ms of every command's start).
_HOMES = {
    "Api": "api",
    "Artifact": "artifact",
    "ArtifactFile": "artifact",
    "ArtifactManifestEntry": "artifact",
    "VerificationError": "artifact",
    "Run": "run",
    "current_run": "run",
    "finish": "run",
    "init": "run",
    "log_artifact": "run",
    "use_artifact": "run",
    "Table": "table",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is not None:
        value = getattr(importlib.import_module(f".{home}", __name__), name)
        globals()[name] = value
        return value
    if name in _HOMES.values():  # the modules themselves (``artifactfs.run`` is one)
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "Api",
    "Artifact",
    "ArtifactFile",
    "ArtifactManifestEntry",
    "Run",
    "Table",
    "VerificationError",
    "__version__",
    "current_run",
    "finish",
    "init",
    "log_artifact",
    "use_artifact",
]
