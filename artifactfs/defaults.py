"""Defaults, in one place: locations shared by the CLI, the API and the mount, and the default of
every mount option (:mod:`artifactfs.options` declares the options and takes these values)."""

from __future__ import annotations

import os

#: Blob cache size limit: ``--cache-size`` (least recently used blobs are evicted beyond it).
CACHE_SIZE = 50 << 30
#: Seconds before an alias symlink or a listing is resolved again: ``--alias-ttl``.
ALIAS_TTL = 60.0
#: Seconds a failed or mismatching blob answers EIO before it is fetched again: ``--failure-backoff``.
FAILURE_BACKOFF = 5.0
#: Kernel read-ahead of a mount, in KiB (set only when running as root): ``--read-ahead-kb``.
READ_AHEAD_KB = 1024
#: How the mount serves local registry blobs: ``--local-blobs``.
LOCAL_BLOBS = "verify-in-place"
#: Log level of the mount daemon (its log is a file, so it says what it mounted).
MOUNT_LOG_LEVEL = "INFO"
#: Log level of the other commands (their stderr is the user's terminal).
LOG_LEVEL = "WARNING"
#: ``gc``: unused blobs younger than this many seconds are kept (a log may be running).
GC_GRACE = 3600.0


#: The registry of a user who names none (``$ARTIFACTFS_REGISTRY`` unset, no ``--registry``).
REGISTRY = "~/.local/share/artifactfs/registry"


def default_registry() -> str:
    """``$ARTIFACTFS_REGISTRY``, else ``~/.local/share/artifactfs/registry``."""
    return os.environ.get("ARTIFACTFS_REGISTRY") or os.path.expanduser(REGISTRY)


def is_builtin_registry(spec: str) -> bool:
    """Whether ``spec`` is the registry of a user who named none (``$ARTIFACTFS_REGISTRY`` unset
    and the spec is ``~/.local/share/artifactfs/registry``)."""
    builtin = os.path.abspath(os.path.expanduser(REGISTRY))
    return not os.environ.get("ARTIFACTFS_REGISTRY") and os.path.abspath(os.path.expanduser(spec)) == builtin


def default_cache_dir() -> str:
    """``$ARTIFACTFS_CACHE_DIR``, else ``~/.cache/artifactfs``."""
    return os.environ.get("ARTIFACTFS_CACHE_DIR") or os.path.expanduser("~/.cache/artifactfs")


def default_log_level() -> str:
    """``$ARTIFACTFS_LOG_LEVEL``, else :data:`LOG_LEVEL` (commands other than ``mount``)."""
    return os.environ.get("ARTIFACTFS_LOG_LEVEL") or LOG_LEVEL
