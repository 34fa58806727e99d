"""Async, single-flight access to verified blobs.

``await fetcher.get(version, entry)`` returns an open :class:`~artifactfs.store.Blob` whose bytes
match the manifest.  Concurrency rules (the trio loop is single-threaded, so only ``await``
points interleave):

The fetcher asks the store once, with everything it needs: the store's one sequence
(:meth:`~artifactfs.store.BlobStore.obtain`: a local blob trusted or hashed where it lies, else
the cached blob, opened or hashed again, else the registry's source filled into the cache) runs
first on the loop with ``quick``, then, if that could not finish it, whole in a worker thread.

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

import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from . import defaults
from .digests import check_empty
from .errors import ArtifactFSError, DigestMismatch
from .manifest import Entry
from .metrics import Histogram
from .references import content_entry
from .registry.base import Registry, VersionInfo
from .sources import BlobSource
from .store import Blob, BlobStore, Outcome

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        # Asked once, the higher layer first: where a local registry keeps the blob (pure, no
        # I/O), and the digest a reference's bytes are verified against (its own, or the MD5 that
        # a wandb-logged s3 entry's single-part ETag is; FetchError when none proves anything).
        local = self.registry.local_path(entry) if self.serve_local_in_place else None
        check = content_entry(entry)
        key = check.cache_key

        # Asked by the store only past a quick open: its name in messages (``version.ref`` is
        # made anew each time), and the source (it may be a network call).
        def what() -> str:
            return f"{version.ref}/{entry.path}"

        def source() -> BlobSource:
            return self.registry.blob_source(version, check)

        while True:
            failure = self._failures.get(key)
            if failure is not None:
                if trio.current_time() < failure.until:
                    raise failure.error.with_traceback(None)  # one object, re-raised to many
                del self._failures[key]
            event = self._inflight.get(key)
            if event is None:
                break
            await event.wait()
        try:  # inline: what needs no download and no long hash
            got = self.store.obtain(key, check, what, source, local=local, quick=True)
        except ArtifactFSError as exc:
            self._remember_failure(key, exc, version, entry)
            raise
        if got is None:
            started = trio.current_time()
            got = await self._flight(
                key, version, entry, lambda: self.store.obtain(key, check, what, source, local=local), self._limiter
            )
            backend = self.registry.kind if entry.ref is None else entry.ref.partition("://")[0]
            self.stats.observe("local" if local is not None else backend, trio.current_time() - started)
        blob, outcome = got
        self._count(outcome, check.size)
        return blob

    def check_empty(self, version: VersionInfo, entry: Entry) -> None:
        """A file of 0 bytes is never read (the kernel answers a read past its size itself), so
        it is verified when it is opened: DigestMismatch unless its digest is that of no bytes,
        FetchError for a reference whose digest proves nothing (its size unknown: 0)."""
        what = f"{version.ref}/{entry.path}"
        try:
            check_empty(content_entry(entry), what)
        except DigestMismatch:
            self.stats.digest_mismatches += 1
            raise

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
        local = self.registry.local_path(entry) if self.serve_local_in_place else None
        check = content_entry(entry)
        key = check.cache_key
        if key in self._inflight or key in self._failures:
            return False

        def what() -> str:
            return f"{version.ref}/{entry.path}"

        def source() -> BlobSource:
            return self.registry.blob_source(version, check)

        def ahead() -> Outcome:
            # Fetched ahead of any read: kept by the store's group commit, one sync and one
            # transaction a batch (a reader's fill is durable before its read returns).
            blob, outcome = self.store.obtain(key, check, what, source, local=local, group=True)
            blob.close()
            if outcome == "trusted" and local is not None:  # hashing would have read it
                _will_need(local, check.size)
            return outcome

        outcome = await self._flight(key, version, entry, ahead, limiter or self._limiter)
        if outcome != "cached" or count_cached:
            self._count(outcome, check.size)
        return True

    async def warm_small(
        self,
        version: VersionInfo,
        entries: list[Entry],
        *,
        limiter: trio.CapacityLimiter | None = None,
        concurrency: int = 32,
        count_cached: bool = True,
    ) -> list[Entry]:
        """:meth:`warm` for many small remote blobs at once, in one worker thread: the registry
        fetches them ``concurrency`` at a time on that thread (:meth:`Registry.get_small`), and
        each is verified into the cache (kept by the group commit) as it arrives.  Each is its
        own single flight: a reader that asks for one waits for that one (told as it is done,
        not when the batch is), then takes the fast path.  Entries already being fetched, or
        failed recently, are skipped as :meth:`warm` skips them.  Returns the entries left for
        :meth:`warm` (a reference, a GET that failed, bytes that did not match): nothing is
        retried or reported here, so the ordinary path owns every error."""
        left: list[Entry] = []
        mine: dict[str, Entry] = {}
        for entry in entries:
            key = entry.cache_key
            if entry.ref is not None:
                left.append(entry)
            elif key not in self._inflight and key not in self._failures and key not in mine:
                mine[key] = entry
        if not mine:
            return left
        token = trio.lowlevel.current_trio_token()
        events = {key: trio.Event() for key in mine}
        self._inflight.update(events)

        def finish(key: str, outcome: Outcome | None) -> None:  # on the loop
            event = events.pop(key, None)
            if event is None:
                return
            if self._inflight.get(key) is event:
                del self._inflight[key]
            event.set()
            entry = mine[key]
            if outcome is None:
                left.append(entry)
            elif outcome != "cached" or count_cached:
                self._count(outcome, entry.size)

        def finish_all(done: list[tuple[str, Outcome | None]]) -> None:  # on the loop
            for key, outcome in done:
                finish(key, outcome)

        def work() -> None:  # a worker thread
            # The loop is told in bunches: whatever is done each time the batch is about to wait
            # for the network (one wake-up of the loop for them all, no file held back).
            done: list[tuple[str, Outcome | None]] = []

            def tell() -> None:
                if done:
                    token.run_sync_soon(finish_all, done.copy())
                    done.clear()

            wanted: list[Entry] = []
            for key, entry in mine.items():
                blob = self.store.open_cached(key)
                if blob is None:
                    wanted.append(entry)
                else:
                    blob.close()
                    done.append((key, "cached"))
            tell()
            for entry, body in self.registry.get_small(version, wanted, concurrency, idle=tell):
                done.append((entry.cache_key, None if body is None else self._keep_fetched(version, entry, body)))
            tell()

        try:
            await trio.to_thread.run_sync(work, limiter=limiter or self._limiter)
        finally:
            for key in list(events):  # whatever the thread did not finish (it failed): left over
                finish(key, None)
        return left

    def _keep_fetched(self, version: VersionInfo, entry: Entry, body: bytes) -> Outcome | None:
        """Worker thread: ``body``, fetched for ``entry`` by a batch, verified into the cache
        (kept by the group commit); None if it could not be (a mismatch, a full disk: the
        ordinary path fetches it again and says what is wrong)."""
        description = f"{version.ref}/{entry.path} (batched GET)"
        source = BlobSource(description, open=lambda: io.BytesIO(body))
        try:
            # Not looked up again: the batch found no cached blob just before fetching it.
            self.store.fill(entry.cache_key, entry, source, f"{version.ref}/{entry.path}", group=True).close()
        except ArtifactFSError as exc:
            log.debug("%s: %s; fetched again the ordinary way", description, exc)
            return None
        return "fetched"

    def _count(self, outcome: Outcome, size: int) -> None:
        if outcome == "cached":
            self.stats.cache_hits += 1
        elif outcome == "trusted":
            self.stats.trusted_in_place += 1
        elif outcome == "verified":
            self.stats.verified_in_place += 1
        else:
            self.stats.fetches += 1
            self.stats.fetched_bytes += size

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
        exc.logged = self.log_failures  # one line per failure: not again for each read it fails
        self._failures[key] = _Failure(exc, trio.current_time() + self.failure_backoff)


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
