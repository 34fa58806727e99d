"""Content digests: every hash the package takes.  The MD5 and XXH128 hashers, hashing an open
file, whether a file holds the bytes an entry promises, and a source written into a file while
its bytes are hashed (:func:`write_verified`; :class:`PrefixHasher` for a download that writes
at offsets from several threads).

The blob store's verification (:mod:`artifactfs.store`), the manifest's digests
(:mod:`artifactfs.manifest`), downloads and log-time checksums all hash through here, so the
store hands its files down here and never comes back up mid-check.  A digest is the base64 of the
16-byte hash (the manifest's form).  Files are read with ``pread``, so a shared descriptor's
position never matters.  What the bytes must be is a :class:`Content` (a manifest ``Entry``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import threading
from typing import IO, Protocol

import xxhash

from .errors import DigestMismatch, DiskFull, FetchError, ManifestError
from .fsutil import DISK_FULL, start_writeback
from .sources import BlobSource

MD5 = "MD5"
XXH128 = "XXH128"
CHUNK = 1 << 20


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...

    def hexdigest(self) -> str: ...


class Content(Protocol):
    """What some bytes must be (a manifest ``Entry``): their digest, its algorithm, their size."""

    @property
    def alg(self) -> str: ...

    @property
    def digest(self) -> str: ...

    @property
    def size(self) -> int: ...


def new_hasher(alg: str = MD5) -> Hasher:
    """A fresh hasher for an entry algorithm (``MD5`` or ``XXH128``)."""
    if alg == MD5:
        return hashlib.md5(usedforsecurity=False)
    if alg == XXH128:
        return xxhash.xxh128()
    raise ManifestError(f"unsupported digest algorithm {alg!r}")


def b64_digest(hasher: Hasher) -> str:
    return base64.b64encode(hasher.digest()).decode("ascii")


def hash_fd(fd: int, alg: str = MD5, limit: int | None = None, chunk: int = CHUNK) -> tuple[str, int]:
    """Hash an open file from offset 0 with ``pread``: ``(b64 digest, bytes read)``.

    With ``limit`` it reads at most ``limit + 1`` bytes: enough to know the file is too long,
    without hashing a file of any size.
    """
    hasher = new_hasher(alg)
    size = update_from_fd(hasher, fd, 0, None if limit is None else limit + 1, chunk)
    return b64_digest(hasher), size


def fd_holds(fd: int, content: Content) -> bool:
    """Whether the open file ``fd`` holds ``content``'s bytes: a regular file of its size whose
    hash is its digest (a file of another size is not read).  An error reading it (OSError)
    passes."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != content.size:
        return False
    return hash_fd(fd, content.alg, limit=content.size) == (content.digest, content.size)


def update_from_fd(hasher: Hasher, fd: int, start: int, end: int | None = None, chunk: int = CHUNK) -> int:
    """Feed bytes ``[start, end)`` of an open file (to its end when ``end`` is None) to
    ``hasher`` with ``pread``; return the offset reached (less than ``end`` at end of file)."""
    offset = start
    while end is None or offset < end:
        data = os.pread(fd, chunk if end is None else min(chunk, end - offset), offset)
        if not data:
            break
        hasher.update(data)
        offset += len(data)
    return offset


def write_verified(source: BlobSource, fd: int, entry: Content, what: str) -> int:
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
    try:
        # A download translates its own network errors; an OSError out of it is the file's.
        source.download(fd, what, hasher)
        actual, size = hasher.finish(limit=entry.size)
    except OSError as exc:
        raise _write_error(exc, what) from exc
    _check(entry, actual, size, what)
    return size


def copy_verified(src: IO[bytes], fd: int, entry: Content, what: str) -> int:
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
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            raise _write_error(exc, what) from exc
    _check(entry, b64_digest(hasher), size, what)
    return size


def _write_error(exc: OSError, what: str) -> FetchError:
    """A failed write of verified bytes: DiskFull for a full disk, else FetchError (never the
    source's fault, so never reported as a read error)."""
    if exc.errno in DISK_FULL:
        return DiskFull(f"writing {what} failed: {exc.strerror}")
    return FetchError(f"writing {what} failed: {exc.strerror or exc}")


def check_empty(entry: Content, what: str) -> None:
    """DigestMismatch unless ``entry``, which says it has no bytes, names the digest of no
    bytes.  Nothing reads such a file (the kernel answers a read past its size itself), so this
    is its whole verification, asked when it is opened."""
    actual = b64_digest(new_hasher(entry.alg))
    if entry.size == 0 and entry.digest != actual:
        raise DigestMismatch(what, f"{entry.digest} (0 bytes)", f"{actual} (0 bytes)")


def _check(entry: Content, actual: str, size: int, what: str) -> None:
    if actual != entry.digest or size != entry.size:
        shown = f">{entry.size}" if size > entry.size else str(size)
        raise DigestMismatch(what, f"{entry.digest} ({entry.size} bytes)", f"{actual} ({shown} bytes)")


class PrefixHasher:
    """Hashes a file while a download writes it, possibly out of order and from several threads.

    The download calls :meth:`advance` whenever the contiguous written prefix ``[0, end)``
    grows; whichever thread finds the hasher idle hashes up to the newest ``end`` (MD5 and
    XXH128 are sequential), the others return at once and keep downloading.  Parts' bytes are
    read back from the file; one stream's (a small file's) are hashed from the very buffer just
    written there (:meth:`wrote`), so they are read from disk never, and written once.
    :meth:`finish` hashes what is left, to the end of the file (at most ``limit + 1`` bytes).
    Each hashed stretch of parts has its writeback started (:func:`~artifactfs.fsutil.start_writeback`),
    so the blob's ``fsync`` finds most of it on disk already.
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
                    start = self._pos
                    reached = update_from_fd(self._hasher, self._fd, start, target, CHUNK)
                    if reached < target:  # not written after all: finish() hashes what is there
                        self._pos = reached
                        return
                    self._pos = reached
                    # Hashed parts go to disk now, not all in the fsync at the end.
                    start_writeback(self._fd, start, reached - start)
            finally:
                self._busy.release()
            with self._state:  # a target raised while we were releasing: go on hashing
                if self._pos >= self._target:
                    return

    def wrote(self, offset: int, data: bytes) -> None:
        """One stream's bytes, just written at ``offset``: hashed from memory when they continue
        the hashed prefix (the bytes the file now holds there), so :meth:`advance` finds nothing
        to read back; otherwise left for :meth:`advance` to read from the file."""
        if not self._busy.acquire(blocking=False):
            return
        try:
            if offset == self._pos:
                self._hasher.update(data)
                self._pos += len(data)
        finally:
            self._busy.release()

    def restart(self) -> None:
        with self._busy, self._state:
            self._hasher = new_hasher(self._alg)
            self._pos = self._target = 0

    def finish(self, limit: int) -> tuple[str, int]:
        """``(b64 digest, size)`` of the whole file, once every writer has stopped."""
        with self._busy:
            self._pos = update_from_fd(self._hasher, self._fd, self._pos, limit + 1, CHUNK)
            return b64_digest(self._hasher), self._pos
