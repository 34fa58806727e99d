"""Small file-system helpers shared by the registry, the cache, the API and the mount: temp files
and their cleanup, the walk of a directory to log, the claim of a cache directory, and URIs made
fit for logs."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

from .errors import CacheError, SourceError

log = logging.getLogger(__name__)


#: errnos of a write that found its disk full (no space, or the quota reached).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def make_temp(directory: str, suffix: str = ".tmp", flags: int = os.O_WRONLY) -> tuple[int, str]:
    """Create a new private file in ``directory``: ``(fd, path)``.  The name carries the pid, so
    a leftover can be traced to the process that died."""
    for _ in range(100):
        path = os.path.join(directory, f"{os.getpid()}-{secrets.token_hex(8)}{suffix}")
        try:
            return os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path
        except FileExistsError:
            continue
        except FileNotFoundError:  # made here the first time (not looked for on every call)
            os.makedirs(directory, mode=0o700, exist_ok=True)
    raise FileExistsError(f"cannot create a temp file in {directory}")


def fsync_dir(path: str) -> None:
    """Make the names in directory ``path`` durable (after a rename or a new file in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc: Any = None


def _c_library() -> Any:
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


#: ``sync_file_range``'s flag that starts the writeback of a range without waiting for it.
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing ``[offset, offset + length)`` of ``fd`` to disk, without waiting (Linux
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; nothing elsewhere).  Durability still comes from
    the ``fsync`` that follows; this only spreads its work over the time the bytes arrive, so a
    large blob's ``fsync`` does not write it all at the end (measured: 512 MiB, 0.19 s to 0.01 s).
    Best effort: an error is ignored (the ``fsync`` reports what matters)."""
    try:
        import ctypes

        _c_library().sync_file_range(fd, ctypes.c_longlong(offset), ctypes.c_longlong(length), _SYNC_FILE_RANGE_WRITE)
    except (OSError, AttributeError):
        pass


def syncfs(path: str) -> None:
    """Flush the filesystem holding ``path`` (Linux ``syncfs``; ``sync`` elsewhere): one call
    for a whole batch of new files is far cheaper than an fsync each (measured: 27 vs 143 us per
    4 KiB file).  Used by a local registry's log and by the blob store's group commit."""
    try:
        libc = _c_library()
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    os.sync()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (ours or another user's): a temp file named after a dead
    writer may be removed."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


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


def walk_files(src: str) -> Iterator[tuple[str, str]]:
    """``(entry path, file path)`` for each regular file below ``src``, in sorted order, lazily:
    what ``log`` and ``Artifact.add_dir`` add, and what ``Artifact.verify`` compares.

    Symlinks are followed, to files and to directories, as the wandb SDK's ``add_dir`` does; a
    link back to one of its own ancestors (a cycle) is skipped.  An unreadable directory raises
    :class:`~artifactfs.errors.SourceError`; an unreadable or special file is skipped with a warning.
    """
    ancestors: dict[str, frozenset[tuple[int, int]]] = {src: frozenset()}
    for dirpath, dirnames, filenames in os.walk(src, onerror=_raise_source_error, followlinks=True):
        st_dir = os.stat(dirpath)
        ident = (st_dir.st_dev, st_dir.st_ino)
        chain = ancestors.pop(dirpath, frozenset())
        if ident in chain:
            dirnames.clear()
            log.warning("skipping %s: a symlink cycle leads back to it", dirpath)
            continue
        chain |= {ident}
        dirnames.sort()
        for d in dirnames:
            ancestors[os.path.join(dirpath, d)] = chain
        rel = os.path.relpath(dirpath, src)
        for fname in sorted(filenames):
            full = os.path.join(dirpath, fname)
            try:
                st = os.stat(full)
            except OSError as exc:
                log.warning("skipping %s: %s", full, exc.strerror)
                continue
            if not stat.S_ISREG(st.st_mode):
                log.warning("skipping %s: not a regular file", full)
                continue
            path = fname if rel == "." else f"{rel.replace(os.sep, '/')}/{fname}"
            yield path, full


def _raise_source_error(exc: OSError) -> None:
    raise SourceError(f"cannot read {exc.filename!r}: {exc.strerror or exc}") from exc


#: diskcache's index (SQLite, its ``DBNAME``) in a cache directory; the one place that names it.
CACHE_INDEX = "cache.db"
#: What a cache directory may hold before it has become a diskcache directory: our own files only
#: (the mount's log, the store's temp files, the manifests a remote registry keeps).
_CACHE_OWN_NAMES = frozenset({"mount.log", "tmp", "manifests"})
CACHE, OURS, FOREIGN = "cache", "ours", "foreign"


def cache_dir_kind(path: str) -> str:
    """What the existing directory ``path`` is to a mount: ``CACHE`` (diskcache's index is
    there), ``OURS`` (nothing but what a mount writes before its first blob) or ``FOREIGN``
    (other files: a mount refuses it, as it would evict them).  OSError if it cannot be listed."""
    names = set(os.listdir(path))
    if CACHE_INDEX in names:
        return CACHE
    return OURS if names <= _CACHE_OWN_NAMES else FOREIGN


def make_dirs(path: str, mode: int = 0o700) -> None:
    """``os.makedirs(path, mode)``, but the parents it makes are 0755 at most whatever the
    umask (``os.makedirs`` makes them 0777 less the umask: world-writable under ``umask 000``,
    so another user could move the cache or the log away under them).  FileExistsError when
    ``path`` exists, as ``os.makedirs``."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            make_dirs(parent, 0o755)
    os.mkdir(path, mode)


def claim_cache_dir(path: str) -> None:
    """Create the cache directory (0700), or take over an existing one only if it is ours: owned
    by this user and either a diskcache directory already or holding nothing but our files.
    Pointing ``--cache-dir`` at ``~`` or ``/tmp`` by mistake is refused, not chmod-ed.

    Called by the mount before it writes its log or opens a backend that keeps files there, and
    by the blob store when it opens the directory."""
    try:
        make_dirs(path)
    except FileExistsError:
        st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise CacheError(f"cache directory {path} is not a directory") from None
        if st.st_uid != os.getuid():
            raise CacheError(f"cache directory {path} belongs to another user") from None
        if cache_dir_kind(path) == FOREIGN:
            raise CacheError(
                f"{path} is not empty and is not an artifactfs cache: choose a new or empty directory"
            ) from None
    os.chmod(path, 0o700)


#: The type of an artifactfs mount in /proc/mounts.
FSTYPE = "fuse.artifactfs"


def _unescape(field: str) -> str:
    """/proc/mounts escapes space, tab, newline and backslash as octal (``\\040``)."""
    out = bytearray()
    raw = field.encode()
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 3 < len(raw) + 1 and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def mounted() -> list[tuple[str, dict[str, str]]]:
    """``(mount point, options)`` of every artifactfs mount in /proc/mounts."""
    out: list[tuple[str, dict[str, str]]] = []
    try:
        with open("/proc/mounts", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.readlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) >= 4 and parts[2] == FSTYPE:
            opts = dict(o.partition("=")[::2] for o in parts[3].split(","))
            out.append((_unescape(parts[1]), opts))
    return out
