"""Registry backends: the local registry and the W&B server behind one interface."""

from __future__ import annotations

from .base import BlobSource, CollectionInfo, DirEntry, Registry, VersionInfo
from .local import LocalRegistry, LogResult

__all__ = ["BlobSource", "CollectionInfo", "DirEntry", "LocalRegistry", "LogResult", "Registry", "VersionInfo"]
