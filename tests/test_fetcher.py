"""Fetcher: single flight, failure backoff, cache and in-place paths (trio, no FUSE).

The remote side is a fake :class:`Registry` whose blob source is a real in-process fault
injector: it counts opens, can hold a download until released, serve corrupted bytes or fail.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any, cast

import pytest
import trio
import trio.testing
from fault_server import Fault, FaultServer

from artifactfs.errors import ArtifactFSError, DigestMismatch, FetchError
from artifactfs.fetcher import Fetcher
from artifactfs.manifest import Entry, Manifest, digest_bytes
from artifactfs.names import Ref, parse_ref
from artifactfs.registry.base import CollectionInfo, DirEntry, Registry, VersionInfo
from artifactfs.registry.local import LocalRegistry
from artifactfs.sources import BlobSource
from artifactfs.store import INLINE_VERIFY_MAX, Blob, BlobStore
from artifactfs.transfer import Policy

DATA = os.urandom(300_000)
ENTRY = Entry("data/blob.bin", digest_bytes(DATA), len(DATA))


def make_version(name: str = "ds", index: int = 0) -> VersionInfo:
    return VersionInfo(
        id=f"id-{name}-{index}",
        entity="acme",
        project="vision",
        name=name,
        type="dataset",
        version_index=index,
        aliases=("latest",),
        digest="0" * 32,
        digest_algorithm="MANIFEST_MD5",
        commit_hash="c" * 20,
        created_at_ns=1_700_000_000_000_000_000,
        updated_at_ns=1_700_000_000_000_000_000,
        description="",
        metadata={},
        size=len(DATA),
        state="COMMITTED",
        file_count=1,
    )


VERSION = make_version()


class FaultySource:
    """A blob source: ``mode`` is "ok", "corrupt" or "error"; ``gate`` holds opens until set."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.mode = "ok"
        self.opens = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def open(self) -> IO[bytes]:
        with self._lock:
            self.opens += 1
        self.entered.set()
        if self.gate is not None and not self.gate.wait(timeout=120):
            raise AssertionError("test gate was never released")
        if self.mode == "error":
            raise FetchError("injected: connection refused")
        if self.mode == "corrupt":
            return io.BytesIO(b"\x00" + self.data[1:])
        return io.BytesIO(self.data)


class FakeRemote(Registry):
    """A remote registry: only ``blob_source`` is needed by the fetcher."""

    kind = "fake"

    def __init__(self, source: FaultySource) -> None:
        self.source = source

    def blob_source(self, version: VersionInfo, entry: Entry) -> BlobSource:
        return BlobSource(f"{version.ref}/{entry.path}", open=self.source.open)

    def entities(self) -> list[str]:
        raise NotImplementedError

    def projects(self, entity: str) -> list[str]:
        raise NotImplementedError

    def check_entity(self, entity: str) -> None:
        raise NotImplementedError

    def check_project(self, entity: str, project: str) -> None:
        raise NotImplementedError

    def project_versions(self, entity: str, project: str) -> list[VersionInfo]:
        raise NotImplementedError

    def collections(self, entity: str, project: str) -> list[CollectionInfo]:
        raise NotImplementedError

    def versions(self, entity: str, project: str, name: str) -> list[VersionInfo]:
        raise NotImplementedError

    def resolve(self, ref: Ref) -> VersionInfo:
        raise NotImplementedError

    def iter_entries(self, version: VersionInfo) -> Iterator[Entry]:
        raise NotImplementedError

    def list_dir(self, version: VersionInfo, path: str) -> list[DirEntry]:
        raise NotImplementedError

    def get_entry(self, version: VersionInfo, path: str) -> DirEntry:
        raise NotImplementedError

    def manifest(self, version: VersionInfo) -> Manifest:
        raise NotImplementedError


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BlobStore]:
    s = BlobStore(str(tmp_path / "cache"))
    yield s
    s.close()


@pytest.fixture
def src() -> FaultySource:
    return FaultySource(DATA)


def run(fn: Callable[..., Awaitable[Any]], *args: Any, clock: trio.abc.Clock | None = None) -> Any:
    return trio.run(fn, *args, clock=clock)


def content(blob: Blob) -> bytes:
    try:
        return blob.pread(blob.size + 1, 0)
    finally:
        blob.close()


async def get_many(
    fetcher: Fetcher, src: FaultySource, n: int, version: VersionInfo = VERSION, entry: Entry = ENTRY
) -> list[bytes | BaseException]:
    """``n`` concurrent gets, released only once all of them wait on the one download."""
    results: list[bytes | BaseException] = []
    src.gate = threading.Event()
    src.entered.clear()

    async def one() -> None:
        try:
            results.append(content(await fetcher.get(version, entry)))
        except ArtifactFSError as exc:
            results.append(exc)

    gate = src.gate
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
        try:
            await trio.to_thread.run_sync(src.entered.wait)  # the download has started...
            await trio.testing.wait_all_tasks_blocked()  # ...and every reader waits for it
            assert src.opens == 1
            assert results == []
        finally:
            gate.set()  # also on a failed assertion: worker threads must not hang
    src.gate = None
    return results


# -- single flight ---------------------------------------------------------------------------------


def test_concurrent_gets_share_one_fetch(store: BlobStore, src: FaultySource) -> None:
    fetcher = Fetcher(FakeRemote(src), store)

    async def main() -> None:
        results = await get_many(fetcher, src, 10)
        assert results == [DATA] * 10

    run(main)
    assert src.opens == 1
    assert fetcher.stats.fetches == 1
    assert fetcher.stats.fetched_bytes == len(DATA)
    assert fetcher.stats.cache_hits == 9
    assert fetcher.stats.digest_mismatches == fetcher.stats.fetch_errors == 0
    assert ENTRY.cache_key in store


def test_different_keys_fetch_independently(store: BlobStore) -> None:
    other_data = b"another blob\n" * 100
    other_entry = Entry("other.bin", digest_bytes(other_data), len(other_data))
    sources = {ENTRY.path: FaultySource(DATA), other_entry.path: FaultySource(other_data)}

    class TwoBlobs(FakeRemote):
        def blob_source(self, version: VersionInfo, entry: Entry) -> BlobSource:
            return BlobSource(entry.path, open=sources[entry.path].open)

    fetcher = Fetcher(TwoBlobs(sources[ENTRY.path]), store)

    async def main() -> None:
        assert content(await fetcher.get(VERSION, ENTRY)) == DATA
        assert content(await fetcher.get(VERSION, other_entry)) == other_data

    run(main)
    assert [s.opens for s in sources.values()] == [1, 1]
    assert fetcher.stats.fetches == 2


def test_cache_hit_opens_nothing(store: BlobStore, src: FaultySource) -> None:
    store.fill(ENTRY.cache_key, ENTRY, BlobSource("prefill", open=lambda: io.BytesIO(DATA)), "prefill").close()
    fetcher = Fetcher(FakeRemote(src), store)

    async def main() -> None:
        for _ in range(3):
            assert content(await fetcher.get(VERSION, ENTRY)) == DATA

    run(main)
    assert src.opens == 0
    assert fetcher.stats.cache_hits == 3
    assert fetcher.stats.fetches == 0


def test_same_content_in_another_version_is_not_fetched_again(store: BlobStore, src: FaultySource) -> None:
    fetcher = Fetcher(FakeRemote(src), store)
    twin = Entry("elsewhere/copy.bin", ENTRY.digest, ENTRY.size)

    async def main() -> None:
        assert content(await fetcher.get(VERSION, ENTRY)) == DATA
        assert content(await fetcher.get(make_version("model", 3), twin)) == DATA

    run(main)
    assert src.opens == 1
    assert fetcher.stats.cache_hits == 1


# -- failures and backoff -----------------------------------------------------------------------------


@pytest.mark.allow_log(r"digest mismatch")
def test_digest_mismatch_reaches_all_waiters_then_backs_off(store: BlobStore, src: FaultySource) -> None:
    fetcher = Fetcher(FakeRemote(src), store, failure_backoff=5.0)
    src.mode = "corrupt"
    clock = trio.testing.MockClock()

    async def main() -> None:
        results = await get_many(fetcher, src, 10)
        assert len(results) == 10
        assert all(isinstance(r, DigestMismatch) for r in results), results
        assert fetcher.stats.digest_mismatches == 1
        assert ENTRY.cache_key not in store
        assert os.listdir(store.tmp) == []

        # within the backoff: the same error at once, the source is not asked again
        src.mode = "ok"
        clock.jump(4.9)
        with pytest.raises(DigestMismatch):
            await fetcher.get(VERSION, ENTRY)
        assert src.opens == 1
        assert fetcher.stats.digest_mismatches == 1

        # after it: a new fetch, which now succeeds
        clock.jump(0.2)
        assert content(await fetcher.get(VERSION, ENTRY)) == DATA
        assert src.opens == 2

    run(main, clock=clock)
    assert fetcher.stats.fetches == 1
    assert fetcher.stats.digest_mismatches == 1
    assert fetcher.stats.fetch_errors == 0
    assert ENTRY.cache_key in store


@pytest.mark.allow_log(r"fetch failed: ")
def test_fetch_error_reaches_all_waiters_then_backs_off(store: BlobStore, src: FaultySource) -> None:
    fetcher = Fetcher(FakeRemote(src), store, failure_backoff=2.0)
    src.mode = "error"
    clock = trio.testing.MockClock()

    async def main() -> None:
        results = await get_many(fetcher, src, 5)
        assert len(results) == 5
        assert all(isinstance(r, FetchError) and "injected" in str(r) for r in results), results
        assert fetcher.stats.fetch_errors == 1
        assert fetcher.stats.digest_mismatches == 0

        clock.jump(1.0)
        with pytest.raises(FetchError):
            await fetcher.get(VERSION, ENTRY)
        assert src.opens == 1

        # still failing after the backoff: a new attempt, counted again
        clock.jump(1.5)
        with pytest.raises(FetchError):
            await fetcher.get(VERSION, ENTRY)
        assert src.opens == 2
        assert fetcher.stats.fetch_errors == 2

        src.mode = "ok"
        clock.jump(2.5)
        assert content(await fetcher.get(VERSION, ENTRY)) == DATA
        assert src.opens == 3

    run(main, clock=clock)
    assert fetcher.stats.fetches == 1


@pytest.mark.allow_log(r"fetch failed: ")
def test_read_error_mid_stream_is_a_fetch_error(store: BlobStore) -> None:
    class Reset(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buf: Any) -> int:
            raise ConnectionResetError(104, "Connection reset by peer")

    class Remote(FakeRemote):
        def blob_source(self, version: VersionInfo, entry: Entry) -> BlobSource:
            return BlobSource("x", open=lambda: cast(IO[bytes], Reset()))

    fetcher = Fetcher(Remote(FaultySource(DATA)), store)

    async def main() -> None:
        with pytest.raises(FetchError, match="reset"):
            await fetcher.get(VERSION, ENTRY)

    run(main)
    assert fetcher.stats.fetch_errors == 1
    assert os.listdir(store.tmp) == []


STORE_FAULTS = {
    "sqlite-locked": lambda: sqlite3.OperationalError("database is locked"),
    "disk-full": lambda: OSError(errno.ENOSPC, "No space left on device"),
}


class _BrokenSet:
    """Stands in for the diskcache ``set`` of a real store: fails while ``broken``."""

    def __init__(self, real: Callable[..., Any], fault: Callable[[], Exception]) -> None:
        self.real = real
        self.fault = fault
        self.broken = True
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.broken:
            raise self.fault()
        return self.real(*args, **kwargs)


@pytest.mark.parametrize("fault", STORE_FAULTS.values(), ids=STORE_FAULTS.keys())
def test_store_fault_during_adoption_serves_the_verified_bytes_unkept(
    store: BlobStore,
    src: FaultySource,
    monkeypatch: pytest.MonkeyPatch,
    fault: Callable[[], Exception],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cache that cannot record a verified blob (SQLite busy or broken, disk full) still
    serves it, from the temp file's descriptor, and keeps nothing (docs/RELIABILITY.md, "A full
    cache disk"); never a raw exception.  The next read fetches it again and keeps it."""
    broken = _BrokenSet(store._cache.set, fault)
    monkeypatch.setattr(store._cache, "set", broken)
    fetcher = Fetcher(FakeRemote(src), store, failure_backoff=2.0)

    async def main() -> None:
        assert content(await fetcher.get(VERSION, ENTRY)) == DATA
        assert fetcher.stats.fetch_errors == 0
        assert (src.opens, broken.calls) == (1, 1)
        assert os.listdir(store.tmp) == []  # the verified temp file is not left behind
        assert ENTRY.cache_key not in store

        broken.broken = False
        assert content(await fetcher.get(VERSION, ENTRY)) == DATA
        assert (src.opens, broken.calls) == (2, 3)  # the blob, then the record of its identity

    with caplog.at_level(logging.WARNING, logger="artifactfs.store"):
        run(main)
    assert "serving it verified, from a file that is not kept" in caplog.text
    assert fetcher.stats.fetches == 2
    assert fetcher.stats.digest_mismatches == 0
    assert ENTRY.cache_key in store


@pytest.mark.parametrize("fault", STORE_FAULTS.values(), ids=STORE_FAULTS.keys())
@pytest.mark.allow_log(r"fetch failed: ")
def test_store_fault_while_recording_trust_is_a_fetch_error_with_backoff(
    sample_registry: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: Callable[[], Exception]
) -> None:
    reg_dir, src1 = sample_registry
    registry = LocalRegistry(reg_dir)
    store = BlobStore(str(tmp_path / "cache"))
    try:
        version = registry.resolve(parse_ref("acme/vision/model:v0"))
        entry = registry.get_entry(version, "model.pt").entry
        assert entry is not None and entry.size > INLINE_VERIFY_MAX  # hashed in a thread, recorded
        broken = _BrokenSet(store._cache.set, fault)
        monkeypatch.setattr(store._cache, "set", broken)
        fetcher = Fetcher(registry, store, failure_backoff=2.0)
        clock = trio.testing.MockClock()

        async def main() -> None:
            with pytest.raises(FetchError):
                await fetcher.get(version, entry)
            assert fetcher.stats.fetch_errors == 1
            broken.broken = False
            clock.jump(1.0)
            with pytest.raises(FetchError):
                await fetcher.get(version, entry)
            assert fetcher.stats.fetch_errors == 1 and broken.calls == 1
            clock.jump(1.5)
            assert content(await fetcher.get(version, entry)) == (src1.parent / "model" / "model.pt").read_bytes()

        run(main, clock=clock)
        assert fetcher.stats.digest_mismatches == 0
    finally:
        store.close()
        registry.close()


@pytest.mark.allow_log(r"digest mismatch")
def test_failure_of_one_key_does_not_block_others(store: BlobStore, src: FaultySource) -> None:
    good = b"fine\n"
    good_entry = Entry("good.txt", digest_bytes(good), len(good))

    class Remote(FakeRemote):
        def blob_source(self, version: VersionInfo, entry: Entry) -> BlobSource:
            if entry.path == good_entry.path:
                return BlobSource("good", open=lambda: io.BytesIO(good))
            return super().blob_source(version, entry)

    src.mode = "corrupt"
    fetcher = Fetcher(Remote(src), store)

    async def main() -> None:
        with pytest.raises(DigestMismatch):
            await fetcher.get(VERSION, ENTRY)
        assert content(await fetcher.get(VERSION, good_entry)) == good

    run(main)


def test_files_of_no_bytes_are_verified_when_opened(store: BlobStore, src: FaultySource) -> None:
    """Nothing reads a 0-byte file (the kernel answers past its size), so check_empty is its
    verification: the digest of no bytes passes; another is a counted mismatch; a reference of
    size 0 (its size unknown) whose digest proves nothing is a FetchError; nothing is fetched."""

    async def main() -> None:
        fetcher = Fetcher(FakeRemote(src), store)
        fetcher.check_empty(VERSION, Entry("empty", digest_bytes(b""), 0))
        fetcher.check_empty(VERSION, Entry("ref-empty", digest_bytes(b""), 0, ref="s3://b/empty"))
        with pytest.raises(DigestMismatch):
            fetcher.check_empty(VERSION, Entry("zero", digest_bytes(b"abc"), 0))
        assert fetcher.stats.digest_mismatches == 1
        with pytest.raises(FetchError, match="not a content hash"):
            fetcher.check_empty(VERSION, Entry("ref", "s3://b/k", 0, ref="s3://b/k"))

    run(main)
    assert src.opens == 0


# -- local registry: verify in place -----------------------------------------------------------------------


@pytest.mark.allow_log(r"digest mismatch")
def test_local_blobs_are_verified_in_place_then_trusted(sample_registry: tuple[Path, Path], tmp_path: Path) -> None:
    reg_dir, src1 = sample_registry
    registry = LocalRegistry(reg_dir)
    cache = str(tmp_path / "cache")
    try:
        # model.pt is 300,000 bytes: above INLINE_VERIFY_MAX, so hashed in a thread and recorded
        version = registry.resolve(parse_ref("acme/vision/model:v0"))
        found = registry.get_entry(version, "model.pt")
        assert found.entry is not None
        entry = found.entry
        assert entry.size > INLINE_VERIFY_MAX
        expected = (src1.parent / "model" / "model.pt").read_bytes()

        first = Fetcher(registry, BlobStore(cache))
        blob = run(first.get, version, entry)
        assert content(blob) == expected
        assert first.stats.verified_in_place == 1
        assert first.stats.fetches == first.stats.cache_hits == 0
        assert entry.cache_key not in first.store  # served where it lies, not copied
        assert os.listdir(first.store.tmp) == []

        # another mount on the same cache directory trusts the record without hashing again
        second = Fetcher(registry, BlobStore(cache))
        assert content(run(second.get, version, entry)) == expected
        assert second.stats.trusted_in_place == 1
        assert second.stats.verified_in_place == 0

        # the registry's blob is damaged: the next mount hashes again and refuses it
        blob_path = registry.blob_path(entry.alg, entry.digest)
        time.sleep(0.03)  # past the file timestamp granularity
        os.chmod(blob_path, 0o644)
        with open(blob_path, "r+b") as f:
            f.write(b"TWO")
        third = Fetcher(registry, BlobStore(cache))

        async def damaged() -> None:
            with pytest.raises(DigestMismatch):
                await third.get(version, entry)

        run(damaged)
        assert third.stats.digest_mismatches == 1
        assert third.stats.trusted_in_place == 0
        for fetcher in (first, second, third):
            fetcher.store.close()
    finally:
        registry.close()


@pytest.mark.allow_log(r"digest mismatch")
def test_small_local_blobs_are_verified_inline_once_per_process(
    sample_registry: tuple[Path, Path], tmp_path: Path
) -> None:
    reg_dir, src1 = sample_registry
    registry = LocalRegistry(reg_dir)
    cache = str(tmp_path / "cache")
    try:
        version = registry.resolve(parse_ref("acme/vision/ds:v1"))
        found = registry.get_entry(version, "train/000002.txt")
        assert found.entry is not None and found.entry.size <= INLINE_VERIFY_MAX
        entry = found.entry
        expected = (src1 / "train" / "000002.txt").read_bytes()
        first = Fetcher(registry, BlobStore(cache))
        assert content(run(first.get, version, entry)) == expected
        assert content(run(first.get, version, entry)) == expected
        # hashed once in this process, then remembered in memory only: no trust record written
        assert (first.stats.verified_in_place, first.stats.trusted_in_place) == (1, 1)
        assert "trust/" + entry.cache_key not in first.store
        second = Fetcher(registry, BlobStore(cache))
        assert content(run(second.get, version, entry)) == expected
        assert (second.stats.verified_in_place, second.stats.trusted_in_place) == (1, 0)
        # a damaged small blob is refused too, and the failure is remembered (backoff)
        blob_path = registry.blob_path(entry.alg, entry.digest)
        time.sleep(0.03)
        os.chmod(blob_path, 0o644)
        with open(blob_path, "r+b") as f:
            f.write(b"TWO")
        third = Fetcher(registry, BlobStore(cache))

        async def damaged() -> None:
            for _ in range(2):
                with pytest.raises(DigestMismatch):
                    await third.get(version, entry)

        run(damaged)
        assert third.stats.digest_mismatches == 1  # the second get hit the backoff
        for fetcher in (first, second, third):
            fetcher.store.close()
    finally:
        registry.close()


def test_local_blobs_copy_mode(sample_registry: tuple[Path, Path], tmp_path: Path) -> None:
    reg_dir, src1 = sample_registry
    registry = LocalRegistry(reg_dir)
    store = BlobStore(str(tmp_path / "cache"))
    try:
        version = registry.resolve(parse_ref("acme/vision/ds:latest"))
        entry = registry.get_entry(version, "README.md").entry
        assert entry is not None
        fetcher = Fetcher(registry, store, serve_local_in_place=False)
        assert content(run(fetcher.get, version, entry)) == (src1 / "README.md").read_bytes()
        assert content(run(fetcher.get, version, entry)) == (src1 / "README.md").read_bytes()
        assert fetcher.stats.fetches == 1
        assert fetcher.stats.cache_hits == 1
        assert fetcher.stats.verified_in_place == 0
        assert entry.cache_key in store
    finally:
        store.close()
        registry.close()


@pytest.mark.allow_log(r"fetch failed: ")
def test_missing_local_blob_is_a_fetch_error(sample_registry: tuple[Path, Path], tmp_path: Path) -> None:
    reg_dir, _ = sample_registry
    registry = LocalRegistry(reg_dir)
    store = BlobStore(str(tmp_path / "cache"))
    try:
        version = registry.resolve(parse_ref("acme/vision/ds:v1"))
        entry = registry.get_entry(version, "README.md").entry
        assert entry is not None
        os.unlink(registry.blob_path(entry.alg, entry.digest))
        for in_place in (True, False):
            fetcher = Fetcher(registry, store, serve_local_in_place=in_place)

            async def main(f: Fetcher = fetcher) -> None:
                with pytest.raises(FetchError, match="missing"):
                    await f.get(version, entry)

            run(main)
            assert fetcher.stats.fetch_errors == 1
    finally:
        store.close()
        registry.close()


# -- http(s) references: a real HTTP source on localhost ---------------------------------------------------

FAST_HTTP = Policy(connect_timeout=5.0, read_timeout=5.0, attempts=2, backoff=0.01, backoff_max=0.01)


class HttpReferences(FakeRemote):
    def blob_source(self, version: VersionInfo, entry: Entry) -> BlobSource:
        from artifactfs.references import reference_source

        return reference_source(entry, policy=FAST_HTTP)


@pytest.mark.allow_log(r"gave up", r"retrying in")
def test_http_reference_cut_short_is_a_fetch_error_with_backoff(store: BlobStore) -> None:
    with FaultServer() as server:
        url = server.add("/bucket/blob.bin", DATA, ranges=False)
        entry = Entry("ref.bin", ENTRY.digest, ENTRY.size, ref=url)
        fetcher = Fetcher(HttpReferences(FaultySource(b"")), store, failure_backoff=5.0)
        clock = trio.testing.MockClock()

        async def main() -> None:
            server.plan("/bucket/blob.bin", Fault(cut=10), Fault(cut=10))  # every try of the download
            with pytest.raises(FetchError) as info:
                await fetcher.get(VERSION, entry)
            assert "secret" not in str(info.value)
            assert "gave up after 2 tries" in str(info.value)
            assert fetcher.stats.fetch_errors == 1
            with pytest.raises(FetchError):  # within the backoff: no new request
                await fetcher.get(VERSION, entry)
            assert len(server.gets()) == 2
            clock.jump(5.0)
            assert content(await fetcher.get(VERSION, entry)) == DATA
            assert len(server.gets()) == 3

        run(main, clock=clock)
    assert fetcher.stats.fetches == 1
    assert os.listdir(store.tmp) == []


def test_concurrent_gets_of_a_slow_http_blob_share_one_download(store: BlobStore) -> None:
    with FaultServer() as server:
        url = server.add("/slow.bin", DATA, delay=0.3)
        entry = Entry("slow.bin", ENTRY.digest, ENTRY.size, ref=url)
        fetcher = Fetcher(HttpReferences(FaultySource(b"")), store)
        results: list[bytes] = []

        async def one() -> None:
            results.append(content(await fetcher.get(VERSION, entry)))

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(one)

        run(main)
        assert results == [DATA] * 10
        assert len(server.gets()) == 1
    assert fetcher.stats.fetches == 1
    assert fetcher.stats.cache_hits == 9


# -- prefetch --------------------------------------------------------------------------------------------


def test_warm_fetches_once_and_readers_wait_for_it(store: BlobStore, src: FaultySource) -> None:
    fetcher = Fetcher(FakeRemote(src), store)
    src.gate = threading.Event()

    async def main() -> list[bytes]:
        got: list[bytes] = []

        async def reader() -> None:
            got.append(content(await fetcher.get(VERSION, ENTRY)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetcher.warm, VERSION, ENTRY)
            await trio.to_thread.run_sync(src.entered.wait)
            nursery.start_soon(reader)
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == [] and fetcher.in_flight == 1
            assert not await fetcher.warm(VERSION, ENTRY)  # already under way: nothing more
            assert src.gate is not None
            src.gate.set()
        return got

    assert run(main) == [DATA, DATA]
    assert src.opens == 1
    assert (fetcher.stats.fetches, fetcher.stats.cache_hits) == (1, 2)
    assert run(fetcher.warm, VERSION, ENTRY)  # cached: checked, nothing fetched
    assert (src.opens, fetcher.stats.cache_hits) == (1, 3)


@pytest.mark.allow_log(r"digest mismatch")
def test_warm_failure_is_remembered_like_a_read(store: BlobStore, src: FaultySource) -> None:
    fetcher = Fetcher(FakeRemote(src), store)
    src.mode = "corrupt"

    async def main() -> None:
        with pytest.raises(DigestMismatch):
            await fetcher.warm(VERSION, ENTRY)
        with pytest.raises(DigestMismatch):  # the reader gets the same error, without a new fetch
            await fetcher.get(VERSION, ENTRY)
        assert not await fetcher.warm(VERSION, ENTRY)

    run(main)
    assert src.opens == 1
    assert ENTRY.cache_key not in store


def test_warm_verifies_local_blobs_off_the_loop(sample_registry: tuple[Path, Path], tmp_path: Path) -> None:
    """A small local blob is hashed in a worker thread ahead of its reader, who then only opens it."""
    registry = LocalRegistry(sample_registry[0])
    store = BlobStore(str(tmp_path / "cache"))
    try:
        version = registry.resolve(parse_ref("acme/vision/ds:v1"))
        entry = registry.get_entry(version, "train/000002.txt").entry
        assert entry is not None and entry.size <= INLINE_VERIFY_MAX
        fetcher = Fetcher(registry, store)
        threads: list[str] = []
        verify = store.verify_in_place

        def spy(*args: Any, **kwargs: Any) -> Blob:
            threads.append(threading.current_thread().name)
            return verify(*args, **kwargs)

        store.verify_in_place = spy  # type: ignore[method-assign]
        assert run(fetcher.warm, version, entry)
        assert threads and threads[0] != threading.main_thread().name
        assert content(run(fetcher.get, version, entry)) == (sample_registry[1] / "train/000002.txt").read_bytes()
        assert (fetcher.stats.verified_in_place, fetcher.stats.trusted_in_place) == (1, 1)
        assert len(threads) == 1
    finally:
        store.close()
        registry.close()


class CountingRemote(FakeRemote):
    """Many distinct blobs; each download takes a while and the most at once is recorded."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        super().__init__(FaultySource(b""))
        self.blobs = blobs
        self.active = 0
        self.most = 0
        self.opened: list[str] = []
        self._lock = threading.Lock()

    def blob_source(self, version: VersionInfo, entry: Entry) -> BlobSource:
        def open_() -> IO[bytes]:
            with self._lock:
                self.active += 1
                self.most = max(self.most, self.active)
                self.opened.append(entry.path)
            time.sleep(0.05)
            with self._lock:
                self.active -= 1
            return io.BytesIO(self.blobs[entry.path])

        return BlobSource(f"{version.ref}/{entry.path}", open=open_)


def test_lookahead_fetches_the_next_files_with_bounded_concurrency(store: BlobStore) -> None:
    from artifactfs.engine import Lookahead

    blobs = {f"d/{i:02d}": os.urandom(1000) + bytes([i]) for i in range(12)}
    entries = [Entry(path, digest_bytes(data), len(data)) for path, data in blobs.items()]
    big = Entry("d/zz-big", digest_bytes(b"x"), 1 << 30)  # over the size bound: never fetched ahead
    remote = CountingRemote(blobs)
    fetcher = Fetcher(remote, store)
    asked: list[tuple[object, int]] = []

    async def lister(node: object, count: int) -> list[tuple[VersionInfo, Entry]]:
        asked.append((node, count))
        start = entries.index(node) + 1  # type: ignore[arg-type]
        return [(VERSION, e) for e in [*entries, big][start : start + count]]

    lookahead = Lookahead(fetcher, lister, 8, workers=3, max_size=1 << 20)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lookahead.run)
            lookahead.after(entries[0])
            lookahead.after(entries[1])  # overlaps the first hint: nothing is offered twice
            with trio.fail_after(30):
                while lookahead.started < 9 or lookahead.active:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    run(main)
    assert asked == [(entries[0], 8), (entries[1], 8)]
    assert sorted(remote.opened) == [e.path for e in entries[1:10]]  # 1..8, then 9; each once
    assert remote.most <= 3 and lookahead.max_active <= 3
    assert lookahead.failed == 0
    for e in entries[1:10]:
        assert e.cache_key in store


def test_lookahead_hints_are_dropped_when_its_queue_is_full(store: BlobStore) -> None:
    from artifactfs.engine import Lookahead

    async def lister(node: object, count: int) -> list[tuple[VersionInfo, Entry]]:
        return []

    lookahead = Lookahead(Fetcher(FakeRemote(FaultySource(DATA)), store), lister, 4)

    async def main() -> None:
        for i in range(1000):  # nobody serves the queue: after() must neither block nor grow
            lookahead.after(i)
        stats = lookahead._hints_in.statistics()
        assert stats.current_buffer_used == stats.max_buffer_size == 16

    run(main)


@pytest.mark.allow_log(r"prefetch: listing after .* failed|engine: .* failed unexpectedly")
def test_a_lookahead_bug_is_logged_and_it_keeps_going(store: BlobStore) -> None:
    """The lookahead runs in the nursery that serves the mount: an unexpected exception in a
    listing or a fetch is logged and skipped, never allowed to cancel that nursery."""
    from artifactfs.engine import Lookahead

    blobs = {f"d/{i}": os.urandom(500) + bytes([i]) for i in range(3)}
    entries = [Entry(path, digest_bytes(data), len(data)) for path, data in blobs.items()]
    fetcher = Fetcher(CountingRemote(blobs), store)
    calls: list[object] = []

    async def lister(node: object, count: int) -> list[tuple[VersionInfo, Entry]]:
        calls.append(node)
        if node is entries[0]:
            raise RuntimeError("a bug in the lister")
        return [(VERSION, entries[2])]

    class Buggy(Fetcher):
        async def warm(self, version: VersionInfo, entry: Entry) -> None:
            raise KeyError("a bug in a fetch")

    lookahead = Lookahead(fetcher, lister, 2)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lookahead.run)
            lookahead.after(entries[0])  # the lister raises: logged, skipped
            lookahead.after(entries[1])  # lists entries[2], fetched
            with trio.fail_after(30):
                while entries[2].cache_key not in store:
                    await trio.sleep(0.01)
            lookahead.fetcher = Buggy(CountingRemote(blobs), store)
            lookahead.after(entries[1])  # already offered: nothing new to fetch
            nursery.cancel_scope.cancel()

    run(main)
    assert calls == [entries[0], entries[1], entries[1]]

    buggy = Lookahead(Buggy(CountingRemote(blobs), store), lister, 2)

    async def second() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(buggy.run)
            buggy.after(entries[1])
            with trio.fail_after(30):
                while buggy.failed < 1:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()  # reached only because the bug did not end run()

    run(second)
    assert buggy.failed == 1
