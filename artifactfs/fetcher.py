"""Async, single-flight access to verified blobs.

``await fetcher.get(version, entry)`` returns an open :class:`~artifactfs.store.Blob` whose bytes
match the manifest.  Concurrency rules (the trio loop is single-threaded, so only ``await``
points interleave):

* Fast path, inline on the loop: a blob already in the cache whose file still has the identity
  it had when it was verified, a local blob whose trust record still matches, or a small local
  blob (<= 64 KiB, hashed here) is opened directly (a SQLite lookup or a short hash and an
  ``open``: tens of microseconds, cheaper than the ~150 us thread hop measured on this machine).
  Nothing here asks the registry anything but the pure ``local_path``.
* Slow path, one per content address however many readers wait: the first caller registers a
  ``trio.Event`` in ``_inflight``, runs the download or hash in a worker thread under a
  ``CapacityLimiter``, and sets the event; the others wait on it and then take the fast path.
  The worker re-hashes a cached file whose identity moved (evicting it if its bytes are wrong),
  and only then asks the registry for the blob's source (for a remote registry: a URL) and
  fetches it.
* A failed fetch (digest mismatch, network fault) is remembered for ``failure_backoff`` seconds:
  readers during that window get the same error at once instead of a new fetch.
* Worker threads touch only the store (thread- and process-safe) and their own file
  descriptors; the dictionaries here are touched only on the trio loop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from . import defaults
from .errors import ArtifactFSError, DigestMismatch
from .manifest import Entry
from .metrics import Histogram
from .references import content_entry
from .registry.base import Registry, VersionInfo
from .store import Blob, BlobStore

log = logging.getLogger(__name__)
T = TypeVar("T")

INLINE_VERIFY_MAX = 64 * 1024  # local blobs up to this size are hashed on the trio loop


@dataclass
class Stats:
    """Counters shown in the mount root's ``user.artifactfs.stats`` attribute."""

    cache_hits: int = 0  # blobs opened from the cache
    fetches: int = 0  # blobs downloaded (or copied) into the cache
    fetched_bytes: int = 0
    verified_in_place: int = 0  # local blobs hashed where they lie
    trusted_in_place: int = 0  # local blobs whose trust record still matched
    digest_mismatches: int = 0
    fetch_errors: int = 0
    served_bytes: int = 0  # answered to reads (ops); re-reads from the kernel's page cache never reach us
    # Per backend (registry kind, or a reference's scheme): seconds from a miss to a verified blob.
    latency: dict[str, Histogram] = field(default_factory=dict)

    def observe(self, backend: str, seconds: float) -> None:
        hist = self.latency.get(backend)
        if hist is None:
            hist = self.latency[backend] = Histogram()
        hist.observe(seconds)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in self.__dict__.items() if k != "latency"}
        out["latency"] = {backend: hist.to_json() for backend, hist in self.latency.items()}
        return out


@dataclass
class _Failure:
    error: ArtifactFSError
    until: float


@dataclass
class Fetcher:
    registry: Registry
    store: BlobStore
    serve_local_in_place: bool = True
    failure_backoff: float = defaults.FAILURE_BACKOFF
    max_threads: int = 8
    stats: Stats = field(default_factory=Stats)
    log_failures: bool = True  # False: a caller that raises them itself (download) logs nothing twice
    _limiter: trio.CapacityLimiter = field(init=False)
    _inflight: dict[str, trio.Event] = field(default_factory=dict, init=False)
    _failures: dict[str, _Failure] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._limiter = trio.CapacityLimiter(self.max_threads)

    @property
    def limiter(self) -> trio.CapacityLimiter:
        return self._limiter

    @property
    def in_flight(self) -> int:
        """Fetches (or hashes) running now."""
        return len(self._inflight)

    async def get(self, version: VersionInfo, entry: Entry) -> Blob:
        backend = self.registry.kind if entry.ref is None else entry.ref.partition("://")[0]
        if entry.ref is not None:
            # The digest a reference's bytes are verified against: its own, or the MD5 that a
            # wandb-logged s3 entry's single-part ETag is; FetchError when none proves anything.
            entry = content_entry(entry)
        key = entry.cache_key
        # Pure (no I/O): where a local registry keeps the blob, when it may be served in place.
        local = self.registry.local_path(entry) if self.serve_local_in_place else None
        while True:
            failure = self._failures.get(key)
            if failure is not None:
                if trio.current_time() < failure.until:
                    raise failure.error.with_traceback(None)  # one object, re-raised to many
                del self._failures[key]
            event = self._inflight.get(key)
            if event is None:
                blob = self._fast(key, version, entry, local)
                if blob is not None:
                    return blob
                break
            await event.wait()
        started = trio.current_time()
        verified, fetched = await self._flight(
            key, version, entry, lambda: self._slow(key, version, entry, local), self._limiter
        )
        self.stats.observe("local" if local is not None else backend, trio.current_time() - started)
        if local is not None:
            self.stats.verified_in_place += 1
        elif fetched:
            self.stats.fetches += 1
            self.stats.fetched_bytes += entry.size
        else:
            self.stats.cache_hits += 1
        return verified

    async def warm(
        self,
        version: VersionInfo,
        entry: Entry,
        *,
        limiter: trio.CapacityLimiter | None = None,
        count_cached: bool = True,
    ) -> bool:
        """Make ``entry``'s blob ready before anyone reads it, entirely in a worker thread: a
        local blob verified (or its trust checked) and its bytes asked into the page cache; a
        remote one fetched and verified into the cache.  Readers that come meanwhile wait for it
        (single flight) and then take the fast path.  False if it was already being fetched or
        recently failed; a failure is remembered as a read's would be.  ``limiter``: the thread
        limiter to run under (the engine's, so that background work never takes the threads
        that serve reads); default the fetcher's own.  ``count_cached``: whether a blob found
        already cached counts as a cache hit (not for the engine's background checks: no
        reader asked for it)."""
        if entry.ref is not None:
            entry = content_entry(entry)
        key = entry.cache_key
        if key in self._inflight or key in self._failures:
            return False
        local = self.registry.local_path(entry) if self.serve_local_in_place else None
        outcome = await self._flight(
            key, version, entry, lambda: self._ahead(key, version, entry, local), limiter or self._limiter
        )
        if outcome == "verified":
            self.stats.verified_in_place += 1
        elif outcome == "trusted":
            self.stats.trusted_in_place += 1
        elif outcome == "fetched":
            self.stats.fetches += 1
            self.stats.fetched_bytes += entry.size
        elif count_cached:
            self.stats.cache_hits += 1
        return True

    async def _flight(
        self, key: str, version: VersionInfo, entry: Entry, work: Callable[[], T], limiter: trio.CapacityLimiter
    ) -> T:
        """``work()`` in a worker thread under ``limiter`` as the one flight for ``key``: askers
        that come meanwhile wait for its event (then take the fast path), and an error is
        remembered for the failure back-off.  The single flight of :meth:`get` and :meth:`warm`."""
        event = trio.Event()
        self._inflight[key] = event
        try:
            return await trio.to_thread.run_sync(work, limiter=limiter)
        except ArtifactFSError as exc:
            self._remember_failure(key, exc, version, entry)
            raise
        finally:
            del self._inflight[key]
            event.set()

    def _ahead(self, key: str, version: VersionInfo, entry: Entry, local: str | None) -> str:
        """Worker thread of :meth:`warm`: what it did (verified, trusted, fetched, cached)."""
        if local is not None:
            small = entry.size <= INLINE_VERIFY_MAX
            blob = self.store.open_trusted(key, local, persisted=not small)
            outcome = "trusted"
            if blob is None:  # hashing reads it: its bytes are in the page cache afterwards
                blob = self.store.verify_in_place(key, entry, local, f"{version.ref}/{entry.path}", persist=not small)
                outcome = "verified"
            else:
                _will_need(local, entry.size)
            blob.close()
            return outcome
        blob, fetched = self._slow(key, version, entry, None, group=True)
        blob.close()
        return "fetched" if fetched else "cached"

    def _fast(self, key: str, version: VersionInfo, entry: Entry, local: str | None) -> Blob | None:
        """Inline: a blob that needs no download and no long hash, or None."""
        if local is not None:
            small = entry.size <= INLINE_VERIFY_MAX
            blob = self.store.open_trusted(key, local, persisted=not small)
            if blob is not None:
                self.stats.trusted_in_place += 1
                return blob
            if small:
                # Hashing 64 KiB costs about what a thread hop does, and far less than writing a
                # trust record: small local blobs are verified inline, once per process.
                try:
                    blob = self.store.verify_in_place(key, entry, local, f"{version.ref}/{entry.path}", persist=False)
                except ArtifactFSError as exc:
                    self._remember_failure(key, exc, version, entry)
                    raise
                self.stats.verified_in_place += 1
            return blob
        blob = self.store.open_cached(key)
        if blob is not None:
            self.stats.cache_hits += 1
        return blob

    def _remember_failure(self, key: str, exc: ArtifactFSError, version: VersionInfo, entry: Entry) -> None:
        level = logging.ERROR if self.log_failures else logging.DEBUG
        if isinstance(exc, DigestMismatch):
            self.stats.digest_mismatches += 1
            log.log(
                level,
                "digest mismatch: %s/%s: manifest %s, content %s; answering EIO for %gs",
                version.ref,
                entry.path,
                exc.expected,
                exc.actual,
                self.failure_backoff,
            )
        else:
            self.stats.fetch_errors += 1
            log.log(level, "fetch failed: %s/%s: %s", version.ref, entry.path, exc)
        self._failures[key] = _Failure(exc, trio.current_time() + self.failure_backoff)

    def _slow(
        self, key: str, version: VersionInfo, entry: Entry, local: str | None, *, group: bool = False
    ) -> tuple[Blob, bool]:
        """Worker thread: hash a local blob in place; or re-check a cached file that could not be
        proven inline; or ask the registry where the bytes are (only now, after the miss: it may
        be a network call) and fetch them into the cache.  ``(blob, fetched)``."""
        what = f"{version.ref}/{entry.path}"
        if local is not None:
            return self.store.verify_in_place(key, entry, local, what), False
        blob = self.store.open_verified(key, entry, what)
        if blob is not None:
            return blob, False
        source = self.registry.blob_source(version, entry)
        # Fetched ahead of any read (group): kept by the store's group commit, one sync and one
        # transaction a batch; a reader's fill is durable before its read returns.
        return self.store.fill(key, entry, source, what, group=group), True


def _will_need(path: str, size: int) -> None:
    """Ask the kernel to read ``path`` into the page cache in the background (a hint: errors
    are ignored)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)
