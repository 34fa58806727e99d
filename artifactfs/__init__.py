"""artifactfs: versioned ML artifacts mounted as read-only directories, and a W&B-compatible API.

``import artifactfs as wandb`` gives W&B artifact code what it uses: ``Api``, ``Artifact``,
``Table``, ``init``, ``log_artifact``, ``use_artifact``, ``finish`` and ``current_run()``, over the
registry ``$ARTIFACTFS_REGISTRY``.  W&B's ``wandb.run`` (the current run) is ``current_run()``
here: ``artifactfs.run`` is the module that implements runs.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import Api
from .artifact import Artifact, ArtifactFile, ArtifactManifestEntry, VerificationError
from .run import Run, current_run, finish, init, log_artifact, use_artifact
from .table import Table

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
