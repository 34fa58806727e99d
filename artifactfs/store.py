"""The verified blob store: a content-addressed, size-bounded, multi-process cache on diskcache.

Keys are content addresses (``md5/<hex>``, ``xxh128/<hex>``), so a blob shared by several
versions, artifacts or mounts is stored and fetched once.  Nothing enters the cache before its
bytes have hashed to the digest the manifest promises:

* :meth:`BlobStore.fill` writes a source into a temp file under the cache directory while
  hashing it, and only on a match *adopts* the temp file into diskcache (a rename, not a copy:
  see :class:`_AdoptingDisk`).  On a mismatch the temp file is deleted and
  :class:`~artifactfs.errors.DigestMismatch` raised.  A stream is hashed as it is copied; a
  download that writes at offsets (ranged, parallel HTTP) is hashed by :class:`PrefixHasher`
  as its contiguous prefix grows, and to the end once it returns (see :func:`write_verified`).
* :meth:`BlobStore.verify_in_place` serves a blob that already sits in a local file (the local
  registry's blob store) without copying it: it hashes the file once and records the file's
  identity (device, inode, size, mtime, ctime) in the cache.  The record is trusted only while
  that identity is unchanged: any write to the file changes its ctime and forces a new hash.

All methods block (disk I/O, hashing); the fetcher runs them in worker threads.  A worker touches
only its own file descriptors and the diskcache handle, which is thread- and process-safe.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sqlite3
import stat
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

import diskcache

from .errors import DigestMismatch, FetchError, RegistryError
from .fsutil import make_temp, remove_stale
from .manifest import Entry, b64_digest, hash_fd, new_hasher, update_from_fd
from .registry.base import BlobSource

log = logging.getLogger(__name__)

CHUNK = 1 << 20
DEFAULT_SIZE_LIMIT = 50 << 30
_TRUST_PREFIX = "trust/"
_TOUCH_INTERVAL = 60.0


class Blob:
    """An open, verified blob: ``pread`` serves bytes from it without further checks."""

    __slots__ = ("_data", "_fd", "size")

    def __init__(self, fd: int | None = None, data: bytes | None = None, size: int = 0) -> None:
        self._fd = fd
        self._data = data
        self.size = size

    def pread(self, size: int, offset: int) -> bytes:
        if self._data is not None:
            return self._data[offset : offset + size]
        assert self._fd is not None
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


@dataclass(frozen=True, slots=True)
class _Adopt:
    """A value for ``Cache.set(read=True)`` that is moved into the cache instead of copied."""

    path: str


class _AdoptingDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache's file storage, plus adoption of a finished temp file by rename.

    Stock ``set(key, file, read=True)`` copies the file into the cache directory: a second full
    write of every blob.  The temp file already lives inside the cache directory, so a rename
    gives diskcache the same on-disk state (a ``.val`` file it owns, counted in its size) for free.
    """

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if isinstance(value, _Adopt):
            filename, full_path = self.filename(key, value)
            os.makedirs(os.path.dirname(full_path), exist_ok=True)
            os.rename(value.path, full_path)
            return os.path.getsize(full_path), diskcache.core.MODE_BINARY, filename, None
        return super().store(value, read, key)


class BlobStore:
    """The cache directory (mode 0700) and the rules for what may enter it."""

    def __init__(self, directory: str, size_limit: int = DEFAULT_SIZE_LIMIT) -> None:
        self.directory = os.path.abspath(directory)
        try:
            _claim_directory(self.directory)
            self.tmp = os.path.join(self.directory, "tmp")
            os.makedirs(self.tmp, mode=0o700, exist_ok=True)
            self._cache = diskcache.Cache(
                self.directory,
                size_limit=size_limit,
                eviction_policy="least-recently-used",
                disk=_AdoptingDisk,
                cull_limit=0,  # no batch culls on set: _make_room evicts what is needed
            )
        except (OSError, sqlite3.Error) as exc:
            raise RegistryError(f"cannot use cache directory {self.directory}: {exc}") from exc
        # Per-process memo of what this store has already found in its cache: key -> (file path,
        # trusted identity or None for cache files, monotonic time diskcache was last told).
        # It spares a SQLite transaction per open (diskcache's LRU get writes an access time);
        # diskcache still hears of every blob in use at least every _TOUCH_INTERVAL seconds.
        self._memo: dict[str, tuple[str, tuple[int, ...] | None, float]] = {}

    def close(self) -> None:
        self._cache.close()

    @property
    def volume(self) -> int:
        return int(self._cache.volume())

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def open_cached(self, key: str) -> Blob | None:
        """The cached blob for ``key``, opened, or None.  Marks it recently used."""
        memo = self._memo.get(key)
        now = time.monotonic()
        if memo is not None and memo[1] is None and now - memo[2] < _TOUCH_INTERVAL:
            try:
                # Cache file names are random and never reused: if it opens, it is this blob.
                fd = os.open(memo[0], os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._memo.pop(key, None)
            else:
                return Blob(fd=fd, size=os.fstat(fd).st_size)
        try:
            handle = self._cache.get(key, read=True)
        except (OSError, sqlite3.Error, diskcache.Timeout):  # evicted meanwhile, or busy: a miss
            return None
        if handle is None:
            return None
        if isinstance(handle, io.BytesIO):
            data = handle.getvalue()
            return Blob(data=data, size=len(data))
        fd = os.dup(handle.fileno())
        self._memo[key] = (handle.name, None, now)
        handle.close()
        return Blob(fd=fd, size=os.fstat(fd).st_size)

    def fill(self, key: str, entry: Entry, source: BlobSource, what: str) -> Blob:
        """Write ``source``'s bytes into the cache if they hash to ``entry.digest``; return the blob."""
        try:
            return self._fill(key, entry, source, what)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            raise FetchError(f"caching {what} failed: {exc}") from exc

    def _fill(self, key: str, entry: Entry, source: BlobSource, what: str) -> Blob:
        fd, path = make_temp(self.tmp, ".part", os.O_RDWR)
        published = False
        try:
            size = write_verified(source, fd, entry, what)
            self._cache.set(key, _Adopt(path), read=True)
            published = True
            self._make_room(keep=key)
            return Blob(fd=fd, size=size)
        except BaseException:
            os.close(fd)
            if not published:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise

    def _make_room(self, keep: str) -> None:
        """Evict least recently used items, one at a time, until the cache fits its size limit.

        diskcache's own culling (``cull_limit`` in ``set``, ``Cache.cull``) deletes a whole batch
        of the oldest items once the limit is passed, however little room is needed, and may
        delete the item just stored (with 3 items and a limit of 2.5 it empties the cache).
        """
        cache = self._cache
        try:
            while cache.volume() > cache.size_limit:
                row = cache._sql(
                    "SELECT key FROM Cache WHERE raw = 1 AND key != ? ORDER BY access_time LIMIT 1", (keep,)
                ).fetchone()
                if row is None or not cache.delete(row[0], retry=True):
                    return
        except (diskcache.Timeout, sqlite3.Error) as exc:  # the blob is stored; eviction can wait
            log.warning("cache eviction failed: %s", exc)

    def open_trusted(self, key: str, path: str, *, persisted: bool = True) -> Blob | None:
        """``path`` opened, if a trust record says it was verified and it has not changed since.

        Without ``persisted`` only this process's memo is asked (no SQLite read)."""
        memo = self._memo.get(key)
        if memo is not None and memo[0] == path and memo[1] is not None:
            identity: tuple[int, ...] | None = memo[1]
        elif not persisted:
            return None
        else:
            try:
                record = self._cache.get(_TRUST_PREFIX + key)
            except (sqlite3.Error, diskcache.Timeout):
                return None
            if record is None or record[0] != path:
                return None
            identity = tuple(record[1:])
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        st = os.fstat(fd)
        if identity != _identity(st):
            os.close(fd)
            self._memo.pop(key, None)
            return None
        self._memo[key] = (path, identity, time.monotonic())
        return Blob(fd=fd, size=st.st_size)

    def verify_in_place(self, key: str, entry: Entry, path: str, what: str, *, persist: bool = True) -> Blob:
        """Open ``path``, hash it, and on a match remember its identity as trusted: in this
        process, and with ``persist`` also in the cache directory for later mounts."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise FetchError(f"blob of {what} is missing ({path})") from exc
        except OSError as exc:
            raise FetchError(f"cannot open blob of {what}: {exc.strerror or exc}") from exc
        try:
            return self._verify_fd(fd, key, entry, path, what, persist)
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, (OSError, sqlite3.Error, diskcache.Timeout)):
                raise FetchError(f"verifying {what} failed: {exc}") from exc
            raise

    def _verify_fd(self, fd: int, key: str, entry: Entry, path: str, what: str, persist: bool) -> Blob:
        trust_key = _TRUST_PREFIX + key
        before = _identity(os.fstat(fd))
        if before[2] != entry.size:  # never hash a blob of the wrong size (it could be huge)
            actual, size = "(not hashed)", before[2]
        else:
            actual, size = hash_fd(fd, entry.alg, limit=entry.size)
            if _identity(os.fstat(fd)) != before:
                raise FetchError(f"blob of {what} changed while it was verified")
        if actual != entry.digest or size != entry.size:
            self._memo.pop(key, None)
            self._cache.delete(trust_key)
            raise DigestMismatch(what, f"{entry.digest} ({entry.size} bytes)", f"{actual} ({size} bytes)")
        if persist:
            self._cache.set(trust_key, (path, *before))
            self._make_room(keep=trust_key)
        self._memo[key] = (path, before, time.monotonic())  # only once the record is stored
        return Blob(fd=fd, size=size)

    def clean_tmp(self, max_age: float = 3600.0) -> None:
        """Delete temp files of fills that died (killed daemons) more than ``max_age`` ago."""
        remove_stale(self.tmp, max_age)


def write_verified(source: BlobSource, fd: int, entry: Entry, what: str) -> int:
    """Write ``source``'s bytes into the empty file ``fd`` (opened read-write) and hash them;
    DigestMismatch unless they are ``entry``'s.  Returns the size.  The caller publishes the
    file only on success and deletes it otherwise."""
    if source.download is None:
        try:
            with source.stream() as src:
                return copy_verified(src, fd, entry, what)
        except OSError as exc:
            raise FetchError(f"reading {what} failed: {exc.strerror or exc}") from exc
    hasher = PrefixHasher(fd, entry.alg)
    source.download(fd, what, hasher)
    actual, size = hasher.finish(limit=entry.size)
    _check(entry, actual, size, what)
    return size


def copy_verified(src: IO[bytes], fd: int, entry: Entry, what: str) -> int:
    """Copy ``src`` to ``fd`` while hashing it; DigestMismatch unless the bytes are ``entry``'s.

    Stops reading as soon as the source is longer than the entry says, so a misbehaving source
    cannot fill the disk.  Returns the size copied.
    """
    hasher = new_hasher(entry.alg)
    size = 0
    while chunk := src.read(CHUNK):
        hasher.update(chunk)
        size += len(chunk)
        if size > entry.size:
            break
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
    _check(entry, b64_digest(hasher), size, what)
    return size


def _check(entry: Entry, actual: str, size: int, what: str) -> None:
    if actual != entry.digest or size != entry.size:
        shown = f">{entry.size}" if size > entry.size else str(size)
        raise DigestMismatch(what, f"{entry.digest} ({entry.size} bytes)", f"{actual} ({shown} bytes)")


class PrefixHasher:
    """Hashes a file while a download writes it, possibly out of order and from several threads.

    The download calls :meth:`advance` whenever the contiguous written prefix ``[0, end)``
    grows; whichever thread finds the hasher idle hashes up to the newest ``end`` (MD5 and
    XXH128 are sequential), the others return at once and keep downloading.  The bytes hashed
    are read back from the file, so they are exactly the bytes that will be served.
    :meth:`finish` hashes what is left, to the end of the file (at most ``limit + 1`` bytes).
    """

    def __init__(self, fd: int, alg: str) -> None:
        self._fd = fd
        self._alg = alg
        self._hasher = new_hasher(alg)
        self._pos = 0  # bytes hashed; changed only while holding _busy
        self._target = 0
        self._busy = threading.Lock()
        self._state = threading.Lock()

    def advance(self, end: int) -> None:
        with self._state:
            self._target = max(self._target, end)
        while self._busy.acquire(blocking=False):
            try:
                while True:
                    with self._state:
                        target = self._target
                    if self._pos >= target:
                        break
                    reached = update_from_fd(self._hasher, self._fd, self._pos, target, CHUNK)
                    if reached < target:  # not written after all: finish() hashes what is there
                        self._pos = reached
                        return
                    self._pos = reached
            finally:
                self._busy.release()
            with self._state:  # a target raised while we were releasing: go on hashing
                if self._pos >= self._target:
                    return

    def restart(self) -> None:
        with self._busy, self._state:
            self._hasher = new_hasher(self._alg)
            self._pos = self._target = 0

    def finish(self, limit: int) -> tuple[str, int]:
        """``(b64 digest, size)`` of the whole file, once every writer has stopped."""
        with self._busy:
            self._pos = update_from_fd(self._hasher, self._fd, self._pos, limit + 1, CHUNK)
            return b64_digest(self._hasher), self._pos


_OWN_NAMES = {"mount.log", "tmp"}


def _claim_directory(path: str) -> None:
    """Create the cache directory (0700), or take over an existing one only if it is ours: owned
    by this user and either a diskcache directory already or holding nothing but our files.
    Pointing ``--cache-dir`` at ``~`` or ``/tmp`` by mistake is refused, not chmod-ed."""
    try:
        os.makedirs(path, mode=0o700)
    except FileExistsError:
        st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise RegistryError(f"cache directory {path} is not a directory") from None
        if st.st_uid != os.getuid():
            raise RegistryError(f"cache directory {path} belongs to another user") from None
        names = set(os.listdir(path))
        if "cache.db" not in names and not names <= _OWN_NAMES:
            raise RegistryError(
                f"{path} is not empty and is not an artifactfs cache: choose a new or empty directory"
            ) from None
    os.chmod(path, 0o700)


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
