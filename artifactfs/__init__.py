"""artifactfs: versioned ML artifacts mounted as read-only directories."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import Api, Artifact, VerificationError

__all__ = ["Api", "Artifact", "VerificationError", "__version__"]
