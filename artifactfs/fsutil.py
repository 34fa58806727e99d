"""Small file-system helpers shared by the registry and the cache: temp files and their cleanup,
and URIs made fit for logs."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
import urllib.parse


def make_temp(directory: str, suffix: str = ".tmp", flags: int = os.O_WRONLY) -> tuple[int, str]:
    """Create a new private file in ``directory``: ``(fd, path)``.  The name carries the pid, so
    a leftover can be traced to the process that died."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for _ in range(100):
        path = os.path.join(directory, f"{os.getpid()}-{secrets.token_hex(8)}{suffix}")
        try:
            return os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temp file in {directory}")


def remove_stale(directory: str, max_age: float = 3600.0) -> None:
    """Delete files in ``directory`` untouched for ``max_age`` seconds (left by killed writers)."""
    cutoff = time.time() - max_age
    with contextlib.suppress(OSError), os.scandir(directory) as it:
        for item in it:
            with contextlib.suppress(OSError):
                if item.stat().st_mtime < cutoff:
                    os.unlink(item.path)


def redact_uri(uri: str) -> str:
    """A URI fit for logs, errors and xattrs: no user info, no query string or fragment
    (presigned URLs carry their credentials there), port kept."""
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
