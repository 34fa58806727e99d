"""Default locations, shared by the CLI, the API and the mount."""

from __future__ import annotations

import os


def default_registry() -> str:
    """``$ARTIFACTFS_REGISTRY``, else ``~/.local/share/artifactfs/registry``."""
    return os.environ.get("ARTIFACTFS_REGISTRY") or os.path.expanduser("~/.local/share/artifactfs/registry")


def default_cache_dir() -> str:
    """``$ARTIFACTFS_CACHE_DIR``, else ``~/.cache/artifactfs``."""
    return os.environ.get("ARTIFACTFS_CACHE_DIR") or os.path.expanduser("~/.cache/artifactfs")
