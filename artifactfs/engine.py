"""The fetch engine: the blobs of a version fetched in the background, many at once.

Readers of a mount fetch only what they open, one chain of round trips per file: on a network
with 30 ms per request, 8 readers keep at most 8 requests in flight.  The engine keeps up to
``concurrency`` (16) in flight for files nobody has asked for yet, when someone is walking the
version or a directory of it.  Every front end goes through it:

* the mount's **walk detector** (``--warm auto``, the default): :meth:`Engine.opened` is told of
  every open, and a *scope* (a directory of a version, or the whole version) is warmed once the
  opens show that it is being walked (:class:`WarmPolicy`);
* ``--warm on``: the first open of a version warms all of it; ``--warm off``: nothing is warmed;
* ``--prefetch N`` (:class:`Lookahead`): the next N files of a directory
  after each file read, submitted here;
* ``artifactfs prefetch`` and ``Artifact.download()``: :meth:`Engine.fetch_all`, which waits for
  the result.

Rules (every structure here is touched on the trio loop only):

* **Demand first.**  Background fetches run in worker threads under the engine's own
  ``CapacityLimiter``, never under the fetcher's (which serves reads), so no reader waits for a
  thread behind background work; a reader that opens a file the engine is fetching waits for
  that one fetch (the fetcher's single flight), never for a queue.
* **Bounded.**  At most ``concurrency`` fetches at once; background scopes stop when the cache
  has no room left for the next file (its ``--cache-size`` and its disk's free space, read in a
  worker thread every second and counted down as fetches start: the engine never evicts to warm),
  and when the version has not been opened for ``WarmPolicy.idle`` seconds.
* **Single flight and failures** are the fetcher's (:meth:`~artifactfs.fetcher.Fetcher.warm`):
  a file being fetched by a reader is not fetched twice, and one that failed is not retried
  before its back-off ends.
* File URLs come from the registry in pages of the next files of the directory
  (:mod:`artifactfs.registry.wandb`: ``files(names:)`` batches, signed again on expiry); a scope is
  fetched in path order, so each page serves the next ``url_batch`` fetches.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from . import transfer
from .errors import ArtifactFSError
from .fetcher import Fetcher
from .manifest import Entry
from .registry.base import Registry, VersionInfo

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 16
# While readers' own fetches run, background fetches in flight stay at this many (0: no limit).
YIELD_TO_READS = 16
YIELD_POLL = 0.005  # seconds between looks while background work gives way
URL_PAGE_AHEAD = 500  # entries whose sources (W&B: URLs) are asked for at once, ahead of the fetches
# A remote version of at most this many files has the sources (W&B: file URLs) of all its files
# not cached asked for once a walk of it is indexed (WarmPolicy.min_files opens), in parallel pages:
# readers in random order (a shuffled epoch) then find their next file's URL ready instead of
# asking a page for its directory first, a round trip each on a WAN (WAN bench: the 56 files of
# the first batch after the index 0.80-0.87 s before, docs/PERFORMANCE.md).  URLs, not bytes:
# nothing is fetched that nobody reads.  URL_PAGES_AT_ONCE of those pages at a time.
URLS_WHOLE_VERSION = 10_000
URL_PAGES_AT_ONCE = 4
# Small remote blobs (a registry with ``batched_gets``) are fetched BATCH at a time, in one
# worker thread each, BATCH_IN_FLIGHT requests at once (libcurl's multi: no thread per request),
# at most MAX_BATCHES batches at once.  128/64 against 64/32: epoch 1 of the WAN bench 5.7-7.4 s
# against 7.3-8.5 s, daemon CPU 1.1-1.6 against 1.4-1.9 ms a file (fewer batches, fewer ends of
# batch with the pipe half empty); docs/PERFORMANCE.md.
BATCH = 128
BATCH_IN_FLIGHT = 64
MAX_BATCHES = 2
MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class WarmPolicy:
    """When opens show that a scope (a directory, or the whole version) is being walked.

    Opens are counted per directory (every directory above the file), as distinct files within
    the last ``window`` seconds.  A directory *qualifies* once the opens under it that no warmed
    scope inside it already explains reach ``max(min_files, min_fraction * files under it)``.
    On each open the directories above the file are checked deepest first, and the first that
    qualifies is warmed (the smallest scope that explains the walk).  A directory with two or
    more subdirectories that are (or hold) warmed scopes is warmed too: the walk moves from one
    sibling to the next.  A scope inside one already warmed is not checked.  So:

    * a shuffled epoch over ``small/`` (4,000 files in 50 directories) warms ``small/`` after 80
      opens (no directory of 80 files gets 8 of them first), and not the model file beside it;
    * ``cp -r`` of a directory of 10 subdirectories of 100 files warms the first subdirectory
      after 8 opens, the second after 8 more, and then the whole directory;
    * 1% of a 10,000-file version (100 directories of 100) read at random warms nothing: about
      one file per directory, 10 per 1,000-file directory (threshold 20), 100 in all (200).
    """

    min_files: int = 8
    min_fraction: float = 0.02
    window: float = 30.0
    idle: float = 30.0  # a version not opened for this long stops being warmed

    def threshold(self, files_under: int) -> int:
        return max(self.min_files, math.ceil(self.min_fraction * files_under))


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _ancestors(path: str) -> list[str]:
    """The directories above a file, top first: ``"a/b/c.bin"`` -> ``["", "a", "a/b"]``."""
    out = [""]
    end = path.find("/")
    while end != -1:
        out.append(path[:end])
        end = path.find("/", end + 1)
    return out


def _small(entry: Entry) -> bool:
    """Whether the engine may fetch ``entry`` in a batch (a registry's plain GET, held in memory)."""
    return entry.ref is None and entry.size <= transfer.MANY_MAX_SIZE


def _within(path: str, directory: str) -> bool:
    """``path`` lies strictly inside ``directory`` ("" is the version's root)."""
    return path != directory and (not directory or path.startswith(directory + "/"))


def _child_of(directory: str, path: str) -> str:
    """The subdirectory of ``directory`` that holds ``path`` (which lies inside it)."""
    rest = path[len(directory) + 1 :] if directory else path
    head = rest.split("/", 1)[0]
    return f"{directory}/{head}" if directory else head


class VersionIndex:
    """A version's entries in path order and the number of files under each directory (built in
    a worker thread: one pass over the manifest)."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        self.entries = sorted(entries, key=lambda e: e.path)
        self.paths = [e.path for e in self.entries]
        files_under: dict[str, int] = {}
        for path in self.paths:
            for d in _ancestors(path):
                files_under[d] = files_under.get(d, 0) + 1
        self.files_under = files_under

    def under(self, directory: str) -> list[Entry]:
        """The entries under ``directory`` ("" for all), in path order (a prefix is contiguous)."""
        if not directory:
            return list(self.entries)
        prefix = directory + "/"
        lo = bisect.bisect_left(self.paths, prefix)
        hi = bisect.bisect_left(self.paths, directory + "0")  # "0" follows "/"
        return self.entries[lo:hi]


@dataclass(eq=False)
class Scope:
    """A list of entries of one version being fetched by the engine."""

    version: VersionInfo
    entries: list[Entry]
    name: str  # what it is, for the log ("walk small/", "prefetch", ...)
    background: bool = True  # bounded by the cache's room and stopped when the version is idle
    next: int = 0
    running: int = 0
    done: int = 0
    fetched: int = 0
    failed: list[tuple[Entry, ArtifactFSError]] = field(default_factory=list)
    stopped: bool = False
    finished: trio.Event = field(default_factory=trio.Event)
    on_done: Callable[[Entry], None] | None = None

    def _check_finished(self) -> None:
        if self.running == 0 and (self.stopped or self.next >= len(self.entries)):
            self.finished.set()


@dataclass(eq=False)
class _Walk:
    """What the walk detector knows of one version (loop only)."""

    version: VersionInfo
    index: VersionIndex | None = None
    building: bool = False
    last_open: float = 0.0
    recent: deque[tuple[float, str]] = field(default_factory=deque)
    seen: dict[str, float] = field(default_factory=dict)  # path -> when it was first opened (in the window)
    counts: dict[str, int] = field(default_factory=dict)  # directory -> distinct files opened under it
    warmed: dict[str, Scope] = field(default_factory=dict)  # scope directory -> its scope


class Engine:
    """See the module docstring.  ``run`` must be running (a task of the mount's nursery) for
    anything to be fetched; :meth:`fetch_all` starts it itself when it is not."""

    def __init__(
        self,
        fetcher: Fetcher,
        registry: Registry,
        *,
        mode: str = "auto",
        policy: WarmPolicy | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        room: Callable[[], int | None] | None = None,
        room_interval: float = 1.0,
        yield_to_reads: int = YIELD_TO_READS,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"engine mode {mode!r}")
        self.fetcher = fetcher
        self.registry = registry
        self.mode = mode
        self.policy = policy or WarmPolicy()
        self.concurrency = max(1, concurrency)
        self.yield_to_reads = yield_to_reads
        self._parked = 0  # workers waiting while background work gives way to reads
        self._parking = trio.Event()  # set when a worker parks (wakes _watch_reads)
        self.limiter = trio.CapacityLimiter(self.concurrency)
        # The whole-version URL pages (URLS_WHOLE_VERSION) run in threads of their own, a few at
        # once: a registry that keeps failing (each page retrying for its budget) never holds
        # the threads of the fetches.
        self._pages = trio.CapacityLimiter(URL_PAGES_AT_ONCE)
        # Its fetches and the reads' may all be HTTP requests to one host at once: the pools keep
        # a connection for each (no connection closed after one request, no urllib3 warning).
        transfer.expect_fetches(self.concurrency + fetcher.max_threads)
        # A local registry served in place has nothing to fetch: its blobs are hashed inline
        # (or trusted) when opened, so walks warm nothing there.
        self._in_place = registry.local and fetcher.serve_local_in_place
        self._batched = registry.batched_gets
        self._batches = 0  # batches running now
        self._in_batches = 0  # entries of the batches running now (not counted when giving way)
        self._room_fn = room
        self._room_interval = room_interval
        self._room: int | None = None  # bytes background work may still add (None: unknown, no bound)
        self._walks: dict[str, _Walk] = {}
        self._scopes: list[Scope] = []
        self._pending: list[_Walk] = []  # indexes asked for before run() started
        self._wake = trio.Event()
        self._running = False
        self._nursery: trio.Nursery | None = None
        # counters (the stats and tests)
        self.started = 0
        self.active = 0
        self.max_active = 0
        self.failed = 0
        self.scopes_started = 0
        self.stopped_full = 0
        self.stopped_idle = 0
        self.batches = 0  # batches started
        self.batched = 0  # blobs made ready by a batch (the rest went one by one)

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve scopes until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._running = True
            pending, self._pending = self._pending, []
            for walk in pending:
                nursery.start_soon(self._index, walk)
            try:
                if self._room_fn is not None:
                    await self._refresh_room()
                    nursery.start_soon(self._watch_room)
                for _ in range(self.concurrency):
                    nursery.start_soon(self._worker)
                if self.yield_to_reads > 0:
                    nursery.start_soon(self._watch_reads)
                await trio.sleep_forever()
            finally:
                self._running = False
                self._nursery = None

    async def _refresh_room(self) -> None:
        assert self._room_fn is not None
        try:
            self._room = await trio.to_thread.run_sync(self._room_fn)
        except Exception:  # a bound that cannot be read is no reason to stop the mount
            log.exception("engine: cannot read the cache's room")
            self._room = None

    async def _watch_room(self) -> None:
        while True:
            await trio.sleep(self._room_interval)
            if any(s.background and not s.stopped for s in self._scopes):
                await self._refresh_room()

    async def _watch_reads(self) -> None:
        """Wake the workers parked for reads once reads no longer need the room (one task
        looking every YIELD_POLL seconds while any is parked, not every parked worker; none
        parked, it sleeps until one is: an idle mount does not wake for it)."""
        while True:
            if not self._parked:
                await self._parking.wait()
                self._parking = trio.Event()
            await trio.sleep(YIELD_POLL)
            if self._parked and not self._yielding():
                self._notify()

    def _notify(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    def _yielding(self) -> bool:
        """Whether background work gives way now: readers' fetches are running or waiting and
        ``yield_to_reads`` background fetches are already in flight, each in its own thread (on
        two cores, many threads of background work would slow every reader's own fetch down).
        Batched fetches do not count: a batch is one thread, and what gets a reader's next
        files fastest (WAN epoch 1 4.8-5.2 s against 6.8-7.1 s when batches gave way too)."""
        if self.yield_to_reads <= 0 or self.active - self._in_batches < self.yield_to_reads:
            return False
        demand = self.fetcher.limiter.statistics()
        return bool(demand.borrowed_tokens or demand.tasks_waiting)

    def _take(self) -> tuple[Scope, Entry] | bool | None:
        """The next entry to fetch: scopes newest first (a new walk is what readers want now);
        None when there is nothing, False when background work gives way to reads for now."""
        now = trio.current_time()
        yielding = self._yielding()
        for scope in reversed(self._scopes):
            if scope.stopped:
                continue
            if scope.background and yielding:
                return False
            if scope.background:
                walk = self._walks.get(scope.version.id)
                if walk is not None and now - walk.last_open > self.policy.idle:
                    self._stop(scope, "the version is no longer read", again=True)
                    self.stopped_idle += 1
                    continue
            if scope.next >= len(scope.entries):
                continue
            entry = scope.entries[scope.next]
            if scope.background and self._room is not None:
                if entry.size > self._room:
                    self._stop(scope, "the cache is full")
                    self.stopped_full += 1
                    continue
                self._room -= entry.size
            scope.next += 1
            return scope, entry
        self._scopes = [s for s in self._scopes if not s.finished.is_set()]
        return None

    def _stop(self, scope: Scope, why: str, *, again: bool = False) -> None:
        """Stop ``scope``; ``again``: a walk that comes back may warm it again (it stopped
        because the version went idle, not because the cache is full)."""
        scope.stopped = True
        log.info(
            "engine: stopped %s of %s after %d of %d files: %s",
            scope.name,
            scope.version.ref,
            scope.done,
            len(scope.entries),
            why,
        )
        walk = self._walks.get(scope.version.id)
        if again and walk is not None:
            for key, value in list(walk.warmed.items()):
                if value is scope:
                    del walk.warmed[key]
        scope._check_finished()

    async def _worker(self) -> None:
        while True:
            job = self._take()
            if job is None:
                await self._wake.wait()
                continue
            if job is False:  # _watch_reads wakes it when the readers' fetches are done
                self._parked += 1
                self._parking.set()
                try:
                    await self._wake.wait()
                finally:
                    self._parked -= 1
                continue
            assert job is not True
            scope, entry = job
            if self._batched and _small(entry):
                if self._batches >= MAX_BATCHES:  # put it back: a batch ending wakes this worker
                    scope.next -= 1
                    if scope.background and self._room is not None:
                        self._room += entry.size
                    await self._wake.wait()
                    continue
                await self._fetch_batch(scope, [entry, *self._take_small(scope, BATCH - 1)])
            else:
                self._starting(scope, 1)
                await self._fetch_one(scope, entry)

    def _take_small(self, scope: Scope, n: int) -> list[Entry]:
        """Up to ``n`` more small entries that follow in ``scope`` (stops at the first that is
        not small, or that the cache has no room for)."""
        out: list[Entry] = []
        while len(out) < n and scope.next < len(scope.entries) and not scope.stopped:
            entry = scope.entries[scope.next]
            if not _small(entry):
                break
            if scope.background and self._room is not None:
                if entry.size > self._room:
                    break  # the next _take stops the scope
                self._room -= entry.size
            scope.next += 1
            out.append(entry)
        return out

    def _starting(self, scope: Scope, n: int) -> None:
        scope.running += n
        self.started += n
        self.active += n
        self.max_active = max(self.max_active, self.active)

    async def _fetch_batch(self, scope: Scope, batch: list[Entry]) -> None:
        """Small remote blobs fetched together (:meth:`Fetcher.warm_small`); what it leaves
        (a failed GET, a reference) goes the ordinary way, one by one, in this worker."""
        self._starting(scope, len(batch))
        self._batches += 1
        self._in_batches += len(batch)
        self.batches += 1
        try:
            left = await self.fetcher.warm_small(
                scope.version,
                batch,
                limiter=self.limiter,
                concurrency=BATCH_IN_FLIGHT,
                count_cached=not scope.background,
            )
        except Exception:  # never let a bug here cancel the nursery: each goes its ordinary way
            log.exception("engine: a batch of %s failed unexpectedly", scope.version.ref)
            left = batch
        finally:
            self._batches -= 1
            self._in_batches -= len(batch)
            self._notify()  # workers waiting for a batch to end
        leftover = {id(e) for e in left}
        for entry in batch:
            if id(entry) not in leftover:
                self.batched += 1
                scope.fetched += 1
                self._done(scope, entry)
        for entry in left:
            await self._fetch_one(scope, entry)

    async def _fetch_one(self, scope: Scope, entry: Entry) -> None:
        try:
            if await self.fetcher.warm(scope.version, entry, limiter=self.limiter, count_cached=not scope.background):
                scope.fetched += 1
        except ArtifactFSError as exc:  # a reader gets the error when it reads the file
            self.failed += 1
            scope.failed.append((entry, exc))
            log.debug("engine: %s/%s failed: %s", scope.version.ref, entry.path, exc)
        except Exception:  # never let a bug here cancel the nursery that serves the mount
            self.failed += 1
            log.exception("engine: %s/%s failed unexpectedly", scope.version.ref, entry.path)
        finally:
            self._done(scope, entry)

    def _done(self, scope: Scope, entry: Entry) -> None:
        self.active -= 1
        scope.running -= 1
        scope.done += 1
        if scope.on_done is not None:
            try:
                scope.on_done(entry)
            except Exception:
                log.exception("engine: progress callback failed")
        scope._check_finished()

    # -- front ends ---------------------------------------------------------------------------

    def submit(self, version: VersionInfo, entries: list[Entry], name: str, *, background: bool = True) -> Scope:
        """Fetch ``entries`` (in this order) as soon as workers are free; returns the scope."""
        scope = Scope(version, entries, name, background=background)
        self.scopes_started += 1
        if not entries:
            scope.finished.set()
            return scope
        self._scopes.append(scope)
        self._notify()
        self._page(scope)
        return scope

    def _page(self, scope: Scope) -> None:
        if self._nursery is not None and len(scope.entries) > 1:
            self._nursery.start_soon(self._pager, scope)

    async def _pager(self, scope: Scope) -> None:
        """Ask the registry for what the scope's fetches will need (W&B: file URLs, in pages
        of 500) ahead of the workers: at most two pages ahead of the next entry to take."""
        entries = scope.entries
        done = 0
        while done < len(entries) and not scope.stopped:
            if done - scope.next >= 2 * URL_PAGE_AHEAD:
                await trio.sleep(0.05)
                continue
            chunk = entries[done : done + URL_PAGE_AHEAD]
            if not await self._prepare(scope.version, chunk):
                return
            done += len(chunk)

    async def _prepare(
        self,
        version: VersionInfo,
        entries: list[Entry],
        *,
        limiter: trio.CapacityLimiter | None = None,
        uncached: bool = False,
    ) -> bool:
        """Ask the registry ahead for what fetching ``entries`` (``uncached``: those of them not
        in the cache) will need, in a worker thread under ``limiter`` (default the engine's),
        not waited for when the engine stops (a hint: it only fills the registry's caches);
        False if it failed (the fetches then ask again themselves, and report)."""
        store = self.fetcher.store

        def prepare() -> None:
            wanted = [e for e in entries if e.ref is None and e.cache_key not in store] if uncached else entries
            if wanted:
                self.registry.prepare_sources(version, wanted)

        try:
            limiter = self.limiter if limiter is None else limiter
            await trio.to_thread.run_sync(prepare, limiter=limiter, abandon_on_cancel=True)
        except ArtifactFSError as exc:
            log.debug("engine: %s: asking ahead failed: %s", version.ref, exc)
            return False
        except Exception:
            log.exception("engine: %s: asking ahead failed unexpectedly", version.ref)
            return False
        return True

    async def fetch_all(
        self, version: VersionInfo, entries: list[Entry], on_done: Callable[[Entry], None] | None = None
    ) -> list[tuple[Entry, ArtifactFSError]]:
        """Fetch every entry (not bounded by the cache's room or by reads), and wait; the
        entries that failed, with their errors.  Runs the engine for the duration if it is not
        running already (``artifactfs prefetch``, ``Artifact.download()``)."""
        scope = Scope(version, entries, "fetch", background=False, on_done=on_done)
        if not entries:
            return []
        if self._running:
            self._scopes.append(scope)
            self._notify()
            self._page(scope)
            await scope.finished.wait()
            return scope.failed
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.run)
            await trio.sleep(0)
            self._scopes.append(scope)
            self._notify()
            self._page(scope)
            await scope.finished.wait()
            nursery.cancel_scope.cancel()
        return scope.failed

    def opened(self, version: VersionInfo, entry: Entry) -> None:
        """A reader opened ``entry`` of ``version`` (on the loop, per open: cheap)."""
        if self.mode == "off" or self._in_place:
            return
        now = trio.current_time()
        walk = self._walks.get(version.id)
        if walk is None:
            walk = self._walks[version.id] = _Walk(version)
        walk.last_open = now
        if self.mode == "on":
            if "" not in walk.warmed:
                self._warm_when_indexed(walk, "")
            return
        self._expire(walk, now)
        path = entry.path
        if path in walk.seen:
            return
        walk.seen[path] = now
        walk.recent.append((now, path))
        dirs = _ancestors(path)
        for d in dirs:
            walk.counts[d] = walk.counts.get(d, 0) + 1
        if walk.index is None:
            if not walk.building and len(walk.seen) >= self.policy.min_files:
                self._build(walk)
            return
        self._check(walk, dirs)

    def _expire(self, walk: _Walk, now: float) -> None:
        horizon = now - self.policy.window
        recent = walk.recent
        while recent and recent[0][0] < horizon:
            when, path = recent.popleft()
            if walk.seen.get(path) != when:
                continue
            del walk.seen[path]
            for d in _ancestors(path):
                left = walk.counts[d] - 1
                if left:
                    walk.counts[d] = left
                else:
                    del walk.counts[d]

    def _check(self, walk: _Walk, dirs: list[str]) -> None:
        """Warm the deepest of ``dirs`` (the directories above an opened file, top first) that
        qualifies; else the deepest with two subdirectories that hold warmed scopes."""
        index = walk.index
        assert index is not None
        warmed = walk.warmed
        if any(d in warmed for d in dirs):
            return  # this walk is inside a scope already warmed
        policy = self.policy
        for d in reversed(dirs):
            inside = [w for w in warmed if _within(w, d)]
            explained = sum(walk.counts.get(w, 0) for w in inside)
            if walk.counts.get(d, 0) - explained >= policy.threshold(index.files_under.get(d, 0)):
                self._warm(walk, d)
                return
            subdirs = {_child_of(d, w) for w in inside}
            if len(subdirs) >= 2:
                self._warm(walk, d)
                return

    def _warm(self, walk: _Walk, directory: str) -> None:
        assert walk.index is not None
        entries = [e for e in walk.index.under(directory) if e.path not in walk.seen]
        name = f"walk of {directory or '/'}" if self.mode == "auto" else "--warm on"
        scope = self.submit(walk.version, entries, name)
        walk.warmed[directory] = scope
        # scopes inside this one stop (their files are in it)
        prefix = directory + "/" if directory else ""
        for key, inner in list(walk.warmed.items()):
            if key != directory and key.startswith(prefix):
                inner.stopped = True
                inner._check_finished()
                del walk.warmed[key]
        log.info(
            "engine: %s: warming %s (%d files, %d opened in the last %gs)",
            walk.version.ref,
            directory or "the whole version",
            len(entries),
            walk.counts.get(directory, 0),
            self.policy.window,
        )

    def _warm_when_indexed(self, walk: _Walk, directory: str) -> None:
        if walk.index is not None:
            self._warm(walk, directory)
        elif not walk.building:
            self._build(walk)

    def _build(self, walk: _Walk) -> None:
        walk.building = True
        if self._nursery is None:  # not running yet: run() starts it
            self._pending.append(walk)
            return
        self._nursery.start_soon(self._index, walk)

    async def _index(self, walk: _Walk) -> None:
        try:
            index = await trio.to_thread.run_sync(self._load_index, walk.version, limiter=self.limiter)
        except ArtifactFSError as exc:
            log.info("engine: no index of %s: %s", walk.version.ref, exc)
            return
        except Exception:
            log.exception("engine: indexing %s failed", walk.version.ref)
            return
        walk.index = index
        entries = index.entries
        if not self.registry.local and len(entries) <= URLS_WHOLE_VERSION and self._nursery is not None:
            for start in range(0, len(entries), URL_PAGE_AHEAD):
                chunk = entries[start : start + URL_PAGE_AHEAD]
                ask = functools.partial(self._prepare, walk.version, chunk, limiter=self._pages, uncached=True)
                self._nursery.start_soon(ask)
        if self.mode == "on":
            self._warm(walk, "")
            return
        # The opens so far, checked as if they came now (once per directory of an opened file).
        for parent in sorted({_parent(path) for path in walk.seen}):
            self._check(walk, _ancestors(parent + "/x") if parent else [""])

    def warming(self, version: VersionInfo, path: str) -> bool:
        """Whether a walk's scope being warmed (running or done) holds ``path`` of ``version``:
        hints for it (``--prefetch``) would only repeat that work, a scope and a thread hop a file."""
        walk = self._walks.get(version.id)
        if walk is None:
            return False
        return any(_within(path, d) and not scope.stopped for d, scope in walk.warmed.items())

    def _load_index(self, version: VersionInfo) -> VersionIndex:
        if not self.registry.contents_loaded(version):
            self.registry.load_contents(version)
        return VersionIndex(self.registry.iter_entries(version))

    def to_json(self) -> dict[str, int]:
        return {
            "mode_" + self.mode: 1,
            "started": self.started,
            "active": self.active,
            "failed": self.failed,
            "scopes": self.scopes_started,
            "stopped_full": self.stopped_full,
            "stopped_idle": self.stopped_idle,
            "batches": self.batches,
            "batched": self.batched,
        }


def cache_room(store: object) -> Callable[[], int | None]:
    """A ``room`` function for :class:`Engine` over a :class:`~artifactfs.store.BlobStore`: the
    bytes the cache may still take without evicting anything (its size limit less its volume,
    and no more than its disk's free space less a slack).  Called in a worker thread."""
    from .store import BlobStore

    assert isinstance(store, BlobStore)

    def room() -> int | None:
        left = store.size_limit - store.volume
        try:
            st = os.statvfs(store.tmp)
        except OSError:
            return max(0, left)
        free = st.f_bavail * st.f_frsize - 64 * 1024 * 1024
        return max(0, min(left, free))

    return room


LOOKAHEAD_WORKERS = 2  # fetches in flight at once when the lookahead runs an engine of its own
LOOKAHEAD_MAX_SIZE = 64 << 20  # a file bigger than this is fetched when it is read, not ahead


Lister = Callable[[Any, int], Awaitable[list[tuple[VersionInfo, Entry]]]]


class Lookahead:
    """Fetches the files a reader walking a directory is about to read (``--prefetch N``): a
    front end of :class:`artifactfs.engine.Engine`.

    ``after(node)`` is called on the loop when a file's first read got its blob; it only queues
    the node (dropped if the queue is full: a reader far ahead needs no more hints).  ``run``
    turns each queued node into the next ``count`` files of its directory (``lister``, i.e.
    :meth:`artifactfs.tree.Tree.files_after`) and submits them to the engine (the mount's, or
    one of its own with ``workers`` fetches at once), so concurrency, single flight,
    verification and failure back-off are the engine's and the fetcher's.

    Bounded memory: at most ``count`` entries per hint, plus 16 hints; files over ``max_size``
    are skipped, and a digest is offered once per ``2 * count`` recent ones.  A hint inside a
    scope the walk detector warms (:meth:`Engine.warming`) is dropped (the files after it are in
    the same directory, so in the scope too): it would repeat that work, a scope and a thread hop
    a file (1.58-1.74 ms of daemon CPU a file on loopback
    with ``--prefetch 8`` against 0.88-1.02 ms without).
    """

    def __init__(
        self,
        fetcher: Fetcher,
        lister: Lister,
        count: int,
        *,
        workers: int = LOOKAHEAD_WORKERS,
        max_size: int = LOOKAHEAD_MAX_SIZE,
        engine: Engine | None = None,
    ) -> None:
        self.fetcher = fetcher
        self.lister = lister
        self.count = count
        self.max_size = max_size
        self._own = engine is None
        self.engine = engine or Engine(fetcher, fetcher.registry, mode="off", concurrency=max(1, min(workers, count)))
        self._hints_in, self._hints_out = trio.open_memory_channel[Any](16)
        self._recent: dict[str, None] = {}  # insertion-ordered: the newest 2 * count digests offered

    @property
    def started(self) -> int:
        return self.engine.started

    @property
    def active(self) -> int:
        return self.engine.active

    @property
    def max_active(self) -> int:
        return self.engine.max_active

    @property
    def failed(self) -> int:
        return self.engine.failed

    def after(self, node: Any) -> None:
        try:
            self._hints_in.send_nowait(node)
        except trio.WouldBlock:
            pass

    async def run(self) -> None:
        """Serve hints until cancelled (and the engine too, when it is the lookahead's own)."""
        async with trio.open_nursery() as nursery:
            if self._own:
                nursery.start_soon(self.engine.run)
            async for node in self._hints_out:
                version = getattr(node, "version", None)
                if version is not None and self.engine.warming(version, getattr(node, "path", "")):
                    continue  # its directory is being warmed already: so are the files after it
                try:
                    upcoming = await self.lister(node, self.count)
                except ArtifactFSError as exc:
                    log.debug("prefetch: no listing after %s: %s", getattr(node, "path", node), exc)
                    continue
                except Exception:  # a hint is only a hint: a bug here must not end the mount
                    log.exception("prefetch: listing after %s failed", getattr(node, "path", node))
                    continue
                batch: dict[str, tuple[VersionInfo, list[Entry]]] = {}
                for version, entry in upcoming:
                    key = entry.cache_key
                    if entry.size > self.max_size or key in self._recent:
                        continue
                    self._recent[key] = None
                    if len(self._recent) > 2 * self.count:
                        del self._recent[next(iter(self._recent))]
                    batch.setdefault(version.id, (version, []))[1].append(entry)
                for version, entries in batch.values():
                    self.engine.submit(version, entries, "prefetch")
