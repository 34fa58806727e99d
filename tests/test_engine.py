"""The fetch engine (artifactfs.engine): the walk policy, its bounds, and a real mount.

The policy tests drive :class:`Engine` without a kernel: ``opened()`` as ``ops.open`` calls it,
over a real local registry whose blobs are copied into a real cache (``--local-blobs copy``), so
every file the engine warms is a fetch the stats count.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import threading
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from conftest import Mounter, clean_wandb_env, write_tree

import artifactfs.engine as engine_module
from artifactfs.engine import BATCH, Engine, VersionIndex, WarmPolicy
from artifactfs.fetcher import Fetcher
from artifactfs.manifest import Entry
from artifactfs.names import parse_ref
from artifactfs.registry.local import LocalRegistry
from artifactfs.store import BlobStore

# a/ has 3 directories of 20 files, b/ 100 files, c/ 10 directories of 10, z/ 20 of 100; and model.bin
FILES: dict[str, bytes] = {}
for _i in range(3):
    for _j in range(20):
        FILES[f"a/{_i}/f{_j:02d}"] = os.urandom(200) + bytes([_i, _j])
for _j in range(100):
    FILES[f"b/f{_j:03d}"] = os.urandom(100) + bytes([_j])
for _i in range(10):
    for _j in range(10):
        FILES[f"c/{_i}/f{_j}"] = os.urandom(100) + bytes([_i, _j, 7])
for _i in range(20):  # z/: 2,000 tiny files, so that a dozen opens are a small part of the version
    for _j in range(100):
        FILES[f"z/{_i:02d}/f{_j:02d}"] = b"%d.%d\n" % (_i, _j)
FILES["model.bin"] = os.urandom(50_000)


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("engine")
    src = write_tree(tmp / "src", FILES)
    reg = LocalRegistry(tmp / "registry", create=True)
    try:
        reg.log_dir(src, parse_ref("acme/vision/ds"), type="dataset")
    finally:
        reg.close()
    return tmp / "registry"


class Setup:
    def __init__(self, registry_dir: Path, cache: Path, registry_type: type[LocalRegistry] = LocalRegistry) -> None:
        self.registry = registry_type(registry_dir)
        self.store = BlobStore(str(cache), 1 << 30)
        # copy mode: a warmed file is a fetch into the cache, as a remote one would be
        self.fetcher = Fetcher(self.registry, self.store, serve_local_in_place=False)
        self.version = self.registry.resolve(parse_ref("acme/vision/ds:v0"))
        self.registry.load_contents(self.version)
        self.entries = {e.path: e for e in self.registry.iter_entries(self.version)}

    def close(self) -> None:
        self.store.close()
        self.registry.close()

    def engine(self, **kwargs: Any) -> Engine:
        return Engine(self.fetcher, self.registry, **kwargs)

    def cached(self, prefix: str = "") -> set[str]:
        return {p for p, e in self.entries.items() if p.startswith(prefix) and e.cache_key in self.store}


@pytest.fixture
def setup(registry_dir: Path, tmp_path: Path) -> Iterator[Setup]:
    s = Setup(registry_dir, tmp_path / "cache")
    try:
        yield s
    finally:
        s.close()


def drive(engine: Engine, body: Callable[[], Awaitable[None]], clock: Any = None) -> None:
    """Run ``engine`` and ``body`` (which opens files), then wait until the engine is idle."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run)
            await body()
            await settle(engine)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock)


async def settle(engine: Engine) -> None:
    """Until nothing is running or queued (after the index, built in a thread, is in).  The
    deadline is in real time: a MockClock's jumps must not end it."""
    deadline = time.monotonic() + 60
    while True:
        await trio.testing.wait_all_tasks_blocked()
        await _pause()
        building = any(w.building and w.index is None for w in engine._walks.values())
        queued = any(not s.stopped and s.next < len(s.entries) for s in engine._scopes)
        if not building and not queued and engine.active == 0:
            return
        assert time.monotonic() < deadline, "the engine never settled"


async def _until(done: Callable[[], bool], each: Callable[[], None] | None = None) -> None:
    """Pause until ``done()`` (``each()`` before every look), 60 s at most in real time."""
    deadline = time.monotonic() + 60
    while not done():
        assert time.monotonic() < deadline, "never happened"
        if each is not None:
            each()
        await _pause()


@contextlib.asynccontextmanager
async def _a_reader_fetching(fetcher: Fetcher) -> AsyncIterator[None]:
    """One of the fetcher's threads held, as a reader's own fetch holds it while it runs."""
    reader = object()
    await fetcher.limiter.acquire_on_behalf_of(reader)
    try:
        yield
    finally:
        fetcher.limiter.release_on_behalf_of(reader)


async def _pause() -> None:
    """A short wait in real time (worker threads progress) that lets the loop run, whatever the
    clock: a MockClock that does not move must not stop it."""
    for _ in range(10):
        time.sleep(0.002)
        await trio.lowlevel.checkpoint()


def test_index_counts_files_under_each_directory() -> None:
    entries = [Entry(p, "x", 1) for p in ("b/2", "a/1/x", "a/2", "a10/y", "top")]
    index = VersionIndex(entries)
    assert index.files_under == {"": 5, "a": 2, "a/1": 1, "b": 1, "a10": 1}
    assert [e.path for e in index.under("a")] == ["a/1/x", "a/2"]  # not a10/
    assert [e.path for e in index.under("")] == ["a/1/x", "a/2", "a10/y", "b/2", "top"]


def test_a_walk_of_a_directory_warms_it_and_nothing_else(setup: Setup) -> None:
    engine = setup.engine()
    walked = sorted(p for p in setup.entries if p.startswith("b/"))

    async def body() -> None:
        for path in walked[:8]:  # cp -r: in order, one at a time
            engine.opened(setup.version, setup.entries[path])
            await setup.fetcher.get(setup.version, setup.entries[path])

    drive(engine, body)
    assert setup.cached("b/") == set(walked)
    assert setup.cached() == set(walked)  # a/, c/ and model.bin untouched
    assert setup.fetcher.stats.fetches == len(walked)  # each file fetched once, readers' included


def test_a_shuffled_walk_of_a_tree_warms_the_tree_not_its_sibling(setup: Setup) -> None:
    engine = setup.engine()
    tree = sorted(p for p in setup.entries if p.startswith("a/"))
    random.Random(3).shuffle(tree)

    async def body() -> None:
        for path in tree[:8]:
            engine.opened(setup.version, setup.entries[path])

    drive(engine, body)
    # 8 opens spread over a/0, a/1, a/2: none of them dominates, a/ (60 files) is the walk
    assert setup.cached() == {p for p in setup.entries if p.startswith("a/")} - set(tree[:8])


def test_sparse_opens_warm_nothing(setup: Setup) -> None:
    engine = setup.engine()
    picked = ["c/0/f0", "c/3/f1", "c/7/f2", "a/0/f05", "a/2/f17", "b/f042", "model.bin"]

    async def body() -> None:
        for path in picked:  # one file in each of 7 directories
            engine.opened(setup.version, setup.entries[path])
            await setup.fetcher.get(setup.version, setup.entries[path])

    drive(engine, body)
    assert engine.scopes_started == 0
    assert setup.cached() == set(picked)


def _policy_only(setup: Setup, paths: list[str]) -> tuple[Engine, dict[str, Entry]]:
    """An engine whose index is a synthetic version of ``paths`` (no fetch may start: its room
    is 0, so a warmed scope stops at once, and is still recorded)."""
    engine = setup.engine(room=lambda: 0)
    entries = {p: Entry(p, "AAAAAAAAAAAAAAAAAAAAAA==", 1000) for p in paths}
    engine._load_index = lambda version: VersionIndex(entries.values())  # type: ignore[method-assign]
    return engine, entries


TEN_K = [f"d{i // 1000:02d}/s{(i // 100) % 10}/f{i:06d}.bin" for i in range(10_000)]


def test_one_percent_of_a_large_version_read_at_random_warms_nothing(setup: Setup) -> None:
    engine, entries = _policy_only(setup, TEN_K)
    picked = random.Random(5).sample(TEN_K, 100)

    async def body() -> None:
        for path in picked:
            engine.opened(setup.version, entries[path])
            await trio.sleep(0)

    drive(engine, body)
    assert engine.scopes_started == 0


def test_a_shuffled_read_of_one_directory_of_many_warms_that_directory(setup: Setup) -> None:
    engine, entries = _policy_only(setup, TEN_K)
    picked = random.Random(6).sample([p for p in TEN_K if p.startswith("d03/")], 20)

    async def body() -> None:
        for path in picked:
            engine.opened(setup.version, entries[path])
            await trio.sleep(0)

    drive(engine, body)
    assert engine.scopes_started == 1
    assert engine.stopped_full == 1  # no room: stopped before any fetch
    assert setup.fetcher.stats.fetches == 0


def test_reopening_the_same_files_is_no_walk(setup: Setup) -> None:
    engine = setup.engine()

    async def body() -> None:
        for _ in range(20):
            for path in ("b/f000", "b/f001"):
                engine.opened(setup.version, setup.entries[path])

    drive(engine, body)
    assert engine.scopes_started == 0


def test_opens_older_than_the_window_do_not_count(setup: Setup) -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    engine = setup.engine(policy=WarmPolicy(window=10.0))
    walked = sorted(p for p in setup.entries if p.startswith("b/"))

    async def body() -> None:
        for path in walked[:7]:
            engine.opened(setup.version, setup.entries[path])
        clock.jump(11)
        engine.opened(setup.version, setup.entries[walked[7]])  # 1 in the window, not 8

    drive(engine, body, clock)
    assert engine.scopes_started == 0


@pytest.mark.parametrize("mode", ["on", "off"])
def test_warm_on_warms_the_whole_version_at_its_first_open_and_off_nothing(setup: Setup, mode: str) -> None:
    engine = setup.engine(mode=mode)

    async def body() -> None:
        engine.opened(setup.version, setup.entries["b/f000"])

    drive(engine, body)
    assert setup.cached() == (set(setup.entries) if mode == "on" else set())


def test_background_work_stops_when_the_cache_has_no_room(setup: Setup) -> None:
    room = 30 * 102  # about 30 of b/'s files
    engine = setup.engine(room=lambda: room)
    walked = sorted(p for p in setup.entries if p.startswith("b/"))

    async def body() -> None:
        for path in walked[:8]:
            engine.opened(setup.version, setup.entries[path])

    drive(engine, body)
    assert engine.stopped_full == 1
    fetched = setup.cached()
    assert 0 < len(fetched) <= 30
    assert sum(setup.entries[p].size for p in fetched) <= room


def test_background_work_stops_when_the_version_is_no_longer_read(setup: Setup) -> None:
    clock = trio.testing.MockClock()  # moves only when told: the thread's time does not count
    engine = setup.engine(concurrency=1, policy=WarmPolicy(idle=5.0))
    walked = sorted(p for p in setup.entries if p.startswith("b/"))

    async def body() -> None:
        for path in walked[:8]:
            engine.opened(setup.version, setup.entries[path])
        await _until(lambda: engine.started >= 1)
        clock.jump(6)  # nobody opened anything of the version for longer than idle

    drive(engine, body, clock)
    assert engine.stopped_idle == 1
    assert len(setup.cached()) < len(walked) - 8


def test_demand_reads_never_wait_for_background_threads(setup: Setup) -> None:
    """The engine's fetches run under its own limiter: with every one of its threads taken, a
    reader's fetch still runs (under the fetcher's)."""
    engine = setup.engine(concurrency=2)
    assert engine.limiter is not setup.fetcher.limiter

    async def main() -> None:
        holders = [object(), object()]
        for holder in holders:
            await engine.limiter.acquire_on_behalf_of(holder)
        walked = sorted(p for p in setup.entries if p.startswith("b/"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run)
            for path in walked[:8]:
                engine.opened(setup.version, setup.entries[path])
            with trio.fail_after(30):  # a reader, while the background is stuck
                blob = await setup.fetcher.get(setup.version, setup.entries["model.bin"])
            blob.close()
            assert engine.active > 0 or engine.started == 0
            for holder in holders:
                engine.limiter.release_on_behalf_of(holder)
            nursery.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.allow_log(r"fetch failed: .*c/missing")
def test_fetch_all_fetches_everything_and_reports_failures(setup: Setup) -> None:
    engine = setup.engine(concurrency=8)
    wanted = [e for p, e in setup.entries.items() if p.startswith("c/")]
    bad = Entry("c/missing", "AAAAAAAAAAAAAAAAAAAAAA==", 5)
    done: list[str] = []

    async def main() -> list[tuple[Entry, Any]]:
        return await engine.fetch_all(setup.version, [*wanted, bad], on_done=lambda e: done.append(e.path))

    failed = trio.run(main)
    assert setup.cached() == {e.path for e in wanted}
    assert [e.path for e, _ in failed] == ["c/missing"]
    assert sorted(done) == sorted([*(e.path for e in wanted), "c/missing"])


# -- a real mount ---------------------------------------------------------------------------------


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def test_a_walk_on_a_mount_fetches_the_directory_in_the_background_and_sparse_reads_do_not(
    registry_dir: Path, mounter: Mounter
) -> None:
    m = mounter(registry_dir, "--local-blobs", "copy")
    root = m.path / "acme" / "vision" / "ds:v0"
    # sparse: one file in each of 6 directories
    sparse = ["c/0/f0", "c/3/f1", "c/7/f2", "a/0/f05", "a/2/f17", "b/f042"]
    for path in sparse:
        (root / path).read_bytes()
    time.sleep(1.0)  # room for background work, if the engine wrongly started any
    assert m.stats()["fetches"] == len(sparse)
    assert m.stats()["engine"]["scopes"] == 0
    # a walk: 8 files of b/, in order (one of them already read)
    for j in range(8):
        (root / f"b/f{j:03d}").read_bytes()
    _wait_for(lambda: m.stats()["fetches"] == len(sparse) + 100 - 1, "b/ fetched in the background")
    assert m.stats()["engine"]["scopes"] == 1
    assert "warming b" in m.log()
    # every file of b/ is served with the right bytes
    for j in range(100):
        assert (root / f"b/f{j:03d}").read_bytes() == FILES[f"b/f{j:03d}"]
    assert m.stats()["fetches"] == len(sparse) + 99


def test_warm_off_on_a_mount(registry_dir: Path, mounter: Mounter) -> None:
    m = mounter(registry_dir, "--local-blobs", "copy", "--warm", "off")
    root = m.path / "acme" / "vision" / "ds:v0"
    for j in range(20):
        (root / f"b/f{j:03d}").read_bytes()
    time.sleep(1.0)
    assert m.stats()["fetches"] == 20
    assert m.stats()["engine"] == {"mode_off": 1, "started": 0, "active": 0, "failed": 0, "scopes": 0,
                                   "stopped_full": 0, "stopped_idle": 0, "batches": 0, "batched": 0}  # fmt: skip


def test_background_work_gives_way_while_readers_fetch(setup: Setup) -> None:
    """While a reader's fetch holds one of the fetcher's threads, at most ``yield_to_reads``
    background fetches are in flight; once it is done the engine goes back to full width."""
    engine = setup.engine(concurrency=8, yield_to_reads=2)
    walked = sorted(p for p in setup.entries if p.startswith("b/"))
    peaks = [0]

    async def body() -> None:
        async with _a_reader_fetching(setup.fetcher):
            for path in walked[:8]:
                engine.opened(setup.version, setup.entries[path])
            # background work goes on, narrowly
            await _until(lambda: engine.started >= 20, lambda: peaks.append(engine.active))

    drive(engine, body)
    assert 0 < max(peaks) <= 2
    assert setup.cached("b/") >= set(walked[8:])


class _SlowBatches(LocalRegistry):
    """A registry whose small files come in batches that take a while (as GETs over a WAN)."""

    batched_gets = True

    def get_small(self, version: Any, entries: list[Any], concurrency: int, idle: Any = None) -> Iterator[Any]:
        time.sleep(0.05)
        for entry in entries:
            path = self.local_path(entry)
            assert path is not None
            with open(path, "rb") as f:
                yield entry, f.read()


def test_batches_keep_going_while_readers_fetch(
    registry_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batched background fetches do not give way to readers' fetches (a batch is one thread,
    and the quickest way to a reader's next files): while a reader's fetch runs, two batches
    are in flight at once, as when nobody reads."""
    monkeypatch.setattr(engine_module, "BATCH", 4)
    s = Setup(registry_dir, tmp_path / "cache", _SlowBatches)
    try:
        engine = s.engine(concurrency=8, yield_to_reads=2)
        walked = sorted(p for p in s.entries if p.startswith("b/"))
        peaks = [0]

        async def body() -> None:
            async with _a_reader_fetching(s.fetcher):
                scope = engine.submit(s.version, [s.entries[p] for p in walked], "walk b/")
                await _until(scope.finished.is_set, lambda: peaks.append(engine._batches))

        drive(engine, body)
        assert max(peaks) == engine_module.MAX_BATCHES
        assert engine.batched == len(walked) and s.cached("b/") == set(walked)
    finally:
        s.close()


def test_lookahead_hints_inside_a_warmed_scope_are_dropped(setup: Setup) -> None:
    """With ``--prefetch`` and the walk detector on one engine, a hint for a file of a scope
    being warmed submits nothing (it would repeat the scope's work, a scope and a thread hop a
    file); a hint elsewhere still fetches the files after it."""
    from artifactfs.engine import Lookahead

    engine = setup.engine(concurrency=4)
    paths = sorted(setup.entries)
    listed: list[str] = []

    async def lister(node: Any, count: int) -> list[tuple[Any, Entry]]:
        listed.append(node.path)
        start = paths.index(node.path) + 1
        return [(setup.version, setup.entries[p]) for p in paths[start : start + count]]

    lookahead = Lookahead(setup.fetcher, lister, 4, engine=engine)
    walked = sorted(p for p in paths if p.startswith("b/"))

    def node(path: str) -> Any:
        return types.SimpleNamespace(version=setup.version, path=path)

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lookahead.run)
            for path in walked[:8]:  # a walk of b/: warmed
                engine.opened(setup.version, setup.entries[path])
            await settle(engine)
            assert engine.warming(setup.version, "b/f050") and not engine.warming(setup.version, "c/0/f0")
            before = engine.scopes_started
            for path in walked[8:12]:
                lookahead.after(node(path))
            lookahead.after(node("c/0/f0"))
            await _until(lambda: bool(listed))
            await settle(engine)
            assert listed == ["c/0/f0"]  # the hints inside b/ were dropped before any listing
            assert engine.scopes_started == before + 1
            nursery.cancel_scope.cancel()

    drive(engine, body)
    assert {f"c/0/f{i}" for i in range(1, 5)} <= setup.cached("c/0/")


class _SlowUrls(LocalRegistry):
    """A registry taken for a remote one whose URL pages hang until released (a server that
    keeps failing, each page retrying for its budget)."""

    local = False

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()
        self.pages = self.now = self.peak = 0
        self._count = threading.Lock()

    def prepare_sources(self, version: Any, entries: list[Any]) -> None:
        with self._count:
            self.pages += 1
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            self.release.wait(30)
        finally:
            with self._count:
                self.now -= 1


def test_whole_version_url_pages_never_hold_the_fetch_threads(registry_dir: Path, tmp_path: Path) -> None:
    """The URL pages of a small remote version run a few at a time in threads of their own:
    while they hang, none of the engine's fetch threads is taken, and a fetch still runs."""
    s = Setup(registry_dir, tmp_path / "cache", _SlowUrls)
    registry = s.registry
    assert isinstance(registry, _SlowUrls)
    try:
        engine = s.engine(concurrency=4)
        # 8 opens spread over directories: the version is indexed, no directory is warmed
        spread = ["a/0/f00", "a/1/f00", "a/2/f00", "b/f000", "c/0/f0", "c/1/f0", "c/2/f0", "model.bin"]
        pages = -(-(len(s.entries) - len(spread)) // engine_module.URL_PAGE_AHEAD)

        async def body() -> None:
            for path in spread:
                engine.opened(s.version, s.entries[path])
            await _until(lambda: registry.peak >= engine_module.URL_PAGES_AT_ONCE)
            await _pause()
            assert registry.now == engine_module.URL_PAGES_AT_ONCE < pages
            assert engine.limiter.statistics().borrowed_tokens == 0  # the fetch threads are free
            scope = engine.submit(s.version, [s.entries["b/f050"]], "a fetch", background=False)
            with trio.fail_after(30):
                await scope.finished.wait()
            registry.release.set()
            await _until(lambda: registry.pages >= pages and not registry.now)

        drive(engine, body)
        assert registry.peak == engine_module.URL_PAGES_AT_ONCE and registry.pages == pages
        assert "b/f050" in s.cached("b/")
    finally:
        registry.release.set()
        s.close()


def test_a_walk_on_a_wandb_mount_asks_file_urls_in_large_pages(
    tmp_path: Path, mounter: Mounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine asks the W&B backend for the URLs of a warmed directory ahead of its fetches,
    500 names a request, instead of each run of 100 files waiting for its own request."""
    from wandb_server import WandbServer

    key = "k" * 40
    clean_wandb_env(tmp_path, monkeypatch, key)
    files = {f"d1/f{i:04d}": b"%d\n" % i for i in range(1000)}
    files.update({f"d2/f{i:04d}": b"other %d\n" % i for i in range(50)})
    with WandbServer(api_key=key, viewer_entity="acme") as server:
        server.add_artifact("acme", "vision", "ds", "dataset", files)
        m = mounter(f"wandb:{server.url}")  # type: ignore[arg-type]
        root = m.path / "acme" / "vision" / "ds:v0"
        for i in range(20):  # a walk of d1/, in order (2% of its 1,000 files)
            assert (root / f"d1/f{i:04d}").read_bytes() == files[f"d1/f{i:04d}"]
        _wait_for(lambda: m.stats()["fetches"] == 1000, "d1/ fetched in the background")
        asked = server.operations("GetArtifactMembershipFileUrls")
        # the readers' first batch (100 names), then the rest of d1/ in pages of up to 500
        assert 2 <= len(asked) <= 4, len(asked)
        assert m.stats()["fetches"] == 1000  # d2/ untouched


def test_a_small_wandb_version_read_at_random_has_its_urls_asked_at_once(
    tmp_path: Path, mounter: Mounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote version of up to URLS_WHOLE_VERSION files has the URLs of all its files not
    cached asked once a walk of it is indexed (WarmPolicy.min_files opens), in pages of
    URL_PAGE_AHEAD: readers in random order then find their URLs ready instead of asking a page
    for each directory they come to.  URLs only: nothing is fetched that was not read (the walk
    threshold is not reached), and no URL of a cached file is asked."""
    from wandb_server import WandbServer

    key = "k" * 40
    clean_wandb_env(tmp_path, monkeypatch, key)
    files = {f"d{i % 100:02d}/f{i:05d}": b"%d\n" % i for i in range(6000)}
    with WandbServer(api_key=key, viewer_entity="acme") as server:
        server.add_artifact("acme", "vision", "ds", "dataset", files)
        m = mounter(f"wandb:{server.url}")  # type: ignore[arg-type]
        root = m.path / "acme" / "vision" / "ds:v0"
        order = sorted(files)
        random.Random(7).shuffle(order)
        first = WarmPolicy().min_files
        for path in order[:first]:  # each asks a page for its own directory
            assert (root / path).read_bytes() == files[path]
        pages = -(-(len(files) - first) // engine_module.URL_PAGE_AHEAD)
        _wait_for(lambda: len(server.operations("GetArtifactMembershipFileUrls")) >= first + pages, "the URL pages")
        for path in order[first:100]:  # 100 files in about 63 directories
            assert (root / path).read_bytes() == files[path]
        asked = server.operations("GetArtifactMembershipFileUrls")
        assert len(asked) <= first + pages + 2, len(asked)  # no page per directory afterwards
        paged = {n for r in asked if len(r.variables["names"]) > 100 for n in r.variables["names"]}
        assert len(paged) >= len(files) - first - 100 * first and not paged & set(order[: first - 1])
        assert m.stats()["fetches"] == 100  # URLs, not bytes


@pytest.mark.allow_log(r"digest mismatch.*d1/f0400")
def test_a_walk_on_a_wandb_mount_fetches_in_batches_and_faults_go_the_ordinary_way(
    tmp_path: Path, mounter: Mounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Warmed small files come in batches (libcurl's multi, many GETs on one thread); a batched
    GET that fails or brings wrong bytes is fetched again the ordinary way (its retries), so
    every file reads right, and a file whose bytes are always wrong is EIO, never data."""
    from wandb_server import WandbServer

    key = "k" * 40
    clean_wandb_env(tmp_path, monkeypatch, key)
    files = {f"d1/f{i:04d}": b"%d\n" % i * 50 for i in range(600)}
    with WandbServer(api_key=key, viewer_entity="acme") as server:
        server.add_artifact("acme", "vision", "ds", "dataset", files)
        m = mounter(f"wandb:{server.url}")  # type: ignore[arg-type]
        root = m.path / "acme" / "vision" / "ds:v0"
        server.faults.corrupt(times=1, match="d1/f0300")
        server.faults.status(503, times=1, match="d1/f0301")
        server.faults.truncate_after(10, times=1, match="d1/f0302")
        server.faults.corrupt(times=None, match="d1/f0400")
        for i in range(20):  # a walk of d1/, in order
            assert (root / f"d1/f{i:04d}").read_bytes() == files[f"d1/f{i:04d}"]
        _wait_for(lambda: m.stats()["fetches"] + m.stats()["engine"]["failed"] >= 600, "d1/ fetched in the background")
        engine = m.stats()["engine"]
        assert engine["batches"] >= 500 // BATCH and engine["batched"] >= 500, engine
        assert engine["failed"] == 1  # f0400: wrong bytes every time
        for i in range(600):
            path = root / f"d1/f{i:04d}"
            if i == 400:
                with pytest.raises(OSError) as err:
                    path.read_bytes()
                assert err.value.errno == errno.EIO
            else:
                assert path.read_bytes() == files[f"d1/f{i:04d}"], i
        assert m.stats()["fetches"] == 599


def test_an_idle_engine_does_not_wake(setup: Setup) -> None:
    """With nothing to fetch, no task of the engine runs: a node's idle mounts cost no CPU
    (the watch for parked workers used to wake 200 times a second for ever)."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    engine = setup.engine()
    steps: list[str] = []

    class Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            steps.append(task.name)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run)
            await trio.sleep(1)  # started and settled
            instrument = Steps()
            trio.lowlevel.add_instrument(instrument)
            await trio.sleep(60)  # a minute of virtual time with nothing to do
            trio.lowlevel.remove_instrument(instrument)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock)
    engine_steps = [name for name in steps if "Engine" in name]
    assert engine_steps == []
