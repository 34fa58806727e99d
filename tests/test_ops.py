"""Operations: the pyfuse3 handlers driven directly under trio (no kernel, ctx=None).

readdir needs a ``ReaddirToken`` that only a real request provides: tests/test_mount.py covers it.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio
from conftest import SAMPLE_FILES, without_entry_ids

from artifactfs.errors import BlobChanged
from artifactfs.fetcher import Fetcher
from artifactfs.manifest import Entry
from artifactfs.names import parse_ref
from artifactfs.ops import Operations
from artifactfs.registry.base import VersionInfo
from artifactfs.registry.local import LocalRegistry
from artifactfs.store import Blob, BlobStore
from artifactfs.tree import FOREVER, ROOT_INODE, Tree

TTL = 7.0
CTX: Any = None  # handlers get no RequestContext outside a real request


@pytest.fixture
def registry(sample_registry: tuple[Path, Path], request: pytest.FixtureRequest) -> Iterator[LocalRegistry]:
    if getattr(request, "param", None) == "without entry ids":
        without_entry_ids(sample_registry[0] / "registry.sqlite")
    reg = LocalRegistry(sample_registry[0])
    yield reg
    reg.close()


# A registry made before entry ids: content nodes counted per kernel reference (see test_tree.py).
without_ids = pytest.mark.parametrize("registry", ["without entry ids"], indirect=True)


def make_ops(registry: LocalRegistry, cache: Path, **kwargs: Any) -> Operations:
    tree = Tree(registry, uid=os.getuid(), gid=os.getgid(), alias_ttl=TTL)
    return Operations(tree, Fetcher(registry, BlobStore(str(cache))), **kwargs)


@pytest.fixture
def ops(registry: LocalRegistry, tmp_path: Path) -> Iterator[Operations]:
    o = make_ops(registry, tmp_path / "cache")
    yield o
    o.fetcher.store.close()


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(fn)


async def lookup_path(ops: Operations, *names: str) -> pyfuse3.EntryAttributes:
    inode = ROOT_INODE
    attrs = None
    for name in names:
        attrs = await ops.lookup(inode, name.encode(), CTX)
        assert attrs.st_ino != 0, f"{name!r} not found"
        inode = attrs.st_ino
    assert attrs is not None
    return attrs


def fuse_errno(excinfo: pytest.ExceptionInfo[pyfuse3.FUSEError]) -> int:
    return int(excinfo.value.errno)


# -- lookup and attributes -----------------------------------------------------------------------------


def test_lookup_returns_attributes_and_timeouts(ops: Operations, registry: LocalRegistry) -> None:
    async def main() -> None:
        entity = await lookup_path(ops, "acme")
        assert stat.S_ISDIR(entity.st_mode)
        assert entity.entry_timeout == entity.attr_timeout == TTL
        f = await lookup_path(ops, "acme", "vision", "ds:v1", "train", "000002.txt")
        assert f.st_mode == stat.S_IFREG | 0o444
        assert f.st_size == 4000
        assert f.st_blocks == 8
        assert f.st_nlink == 1
        assert (f.st_uid, f.st_gid) == (os.getuid(), os.getgid())
        assert f.entry_timeout == f.attr_timeout == FOREVER
        created = ops.tree.node(f.st_ino).version.created_at_ns  # type: ignore[union-attr]
        assert f.st_mtime_ns == f.st_ctime_ns == f.st_atime_ns == created
        link = await lookup_path(ops, "acme", "vision", "ds:latest")
        assert stat.S_ISLNK(link.st_mode)
        assert link.st_size == len("ds:v1")
        assert link.entry_timeout == TTL
        assert await ops.readlink(link.st_ino, CTX) == b"ds:v1"
        # getattr answers the same as lookup
        again = await ops.getattr(f.st_ino, CTX)
        assert (again.st_ino, again.st_mode, again.st_size) == (f.st_ino, f.st_mode, f.st_size)
        unicode = await lookup_path(ops, "acme", "vision", "ds:v1", "with space", "ünïcødé name.txt")
        assert unicode.st_size == len(SAMPLE_FILES["with space/ünïcødé name.txt"])

    run(main)


@without_ids
def test_lookup_counts_references_for_forget(ops: Operations) -> None:
    async def main() -> None:
        version = await lookup_path(ops, "acme", "vision", "ds:v1")
        a = await ops.lookup(version.st_ino, b"README.md", CTX)
        b = await ops.lookup(version.st_ino, b"README.md", CTX)
        assert b.st_ino == a.st_ino != 0
        await ops.forget([(a.st_ino, 1)])
        assert (await ops.getattr(a.st_ino, CTX)).st_ino == a.st_ino  # one lookup left
        await ops.forget([(a.st_ino, 1)])
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.getattr(a.st_ino, CTX)
        assert fuse_errno(info) == errno.ENOENT
        assert (await ops.getattr(version.st_ino, CTX)).st_ino == version.st_ino

    run(main)


def test_forget_never_raises(
    ops: Operations, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """pyfuse3 must not see an exception from forget (it has no reply to fail): a broken
    forget is logged, and the other inodes of the batch are still forgotten."""
    seen: list[tuple[int, int]] = []

    def broken(inode: int, nlookup: int) -> None:
        seen.append((inode, nlookup))
        raise RuntimeError("a bug in the tree")

    monkeypatch.setattr(ops.tree, "forget", broken)

    async def main() -> None:
        await ops.forget([(5, 1), (6, 2)])  # returns: no FUSEError, no RuntimeError

    run(main)
    assert seen == [(5, 1), (6, 2)]
    assert "forget(5, 1) failed" in caplog.text and "a bug in the tree" in caplog.text


@without_ids
def test_releasedir_drops_nodes_the_kernel_never_got(ops: Operations) -> None:
    """``ls | head``: readdir made a node for every entry, the kernel got (and counted) only
    some; closing the directory drops the others instead of keeping them forever."""

    async def main() -> None:
        version = await lookup_path(ops, "acme", "vision", "ds:v1")
        fh = await ops.opendir(version.st_ino, CTX)
        listing = await ops.tree.listdir(version.st_ino)  # what readdir keeps in the handle
        ops._dirs[fh].children = listing
        handed_out = dict(listing)["README.md"]
        ops.tree.remember(handed_out)  # the one entry the reader got
        before = len(ops.tree)
        await ops.releasedir(fh)
        assert len(ops.tree) == before - (len(listing) - 1)
        assert (await ops.getattr(handed_out.inode, CTX)).st_ino == handed_out.inode
        for name, node in listing:
            if node is not handed_out:
                with pytest.raises(pyfuse3.FUSEError) as info:
                    await ops.getattr(node.inode, CTX)
                assert fuse_errno(info) == errno.ENOENT, name
        assert (await ops.getattr(version.st_ino, CTX)).st_ino == version.st_ino

    run(main)


def test_missing_names_get_negative_entries(ops: Operations) -> None:
    async def main() -> None:
        project = await lookup_path(ops, "acme", "vision")
        version = await lookup_path(ops, "acme", "vision", "ds:v1")
        cases = [
            (ROOT_INODE, "nobody", TTL),
            (project.st_ino, "ds:v99", TTL),
            (project.st_ino, "ds:nope", TTL),
            (project.st_ino, "nocolon", TTL),
            (version.st_ino, "missing.txt", FOREVER),
        ]
        for parent, name, timeout in cases:
            neg = await ops.lookup(parent, name.encode(), CTX)
            assert neg.st_ino == 0, name
            assert neg.entry_timeout == timeout, name
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.lookup(version.st_ino, b"\xff\xfe", CTX)
        assert fuse_errno(info) == errno.ENOENT

    run(main)


def test_getattr_of_unknown_inode_is_enoent(ops: Operations) -> None:
    async def main() -> None:
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.getattr(424242, CTX)
        assert fuse_errno(info) == errno.ENOENT

    run(main)


# -- read-only ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND])
def test_open_for_writing_is_erofs(ops: Operations, flags: int) -> None:
    async def main() -> None:
        f = await lookup_path(ops, "acme", "vision", "ds:v1", "README.md")
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.open(f.st_ino, flags, CTX)
        assert fuse_errno(info) == errno.EROFS

    run(main)


def test_write_handlers_are_erofs(ops: Operations) -> None:
    async def main() -> None:
        version = await lookup_path(ops, "acme", "vision", "ds:v1")
        f = await lookup_path(ops, "acme", "vision", "ds:v1", "README.md")
        calls = [
            ops.mkdir(version.st_ino, b"new", 0o755, CTX),
            ops.mknod(version.st_ino, b"new", stat.S_IFREG | 0o644, 0, CTX),
            ops.create(version.st_ino, b"new", 0o644, os.O_WRONLY | os.O_CREAT, CTX),
            ops.unlink(version.st_ino, b"README.md", CTX),
            ops.rmdir(version.st_ino, b"train", CTX),
            ops.symlink(version.st_ino, b"link", b"README.md", CTX),
            ops.rename(version.st_ino, b"README.md", version.st_ino, b"other", 0, CTX),
            ops.link(f.st_ino, version.st_ino, b"hard", CTX),
            ops.setattr(f.st_ino, pyfuse3.EntryAttributes(), pyfuse3.SetattrFields(), None, CTX),
            ops.setxattr(f.st_ino, b"user.x", b"1", CTX),
            ops.removexattr(f.st_ino, b"user.artifact.entry.digest", CTX),
            ops.write(1, 0, b"data"),
        ]
        for call in calls:
            with pytest.raises(pyfuse3.FUSEError) as info:
                await call
            assert fuse_errno(info) == errno.EROFS
        assert (await ops.getxattr(f.st_ino, b"user.artifact.entry.size", CTX)) == b"9"

    run(main)


def test_open_directory_is_eisdir(ops: Operations) -> None:
    async def main() -> None:
        version = await lookup_path(ops, "acme", "vision", "ds:v1")
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.open(version.st_ino, os.O_RDONLY, CTX)
        assert fuse_errno(info) == errno.EISDIR

    run(main)


# -- reading -------------------------------------------------------------------------------------------------


def test_open_and_read_verified_bytes(ops: Operations) -> None:
    path = "train/deep/er/still/x.bin"
    data = SAMPLE_FILES[path]

    async def main() -> None:
        f = await lookup_path(ops, "acme", "vision", "ds:v1", *path.split("/"))
        info = await ops.open(f.st_ino, os.O_RDONLY, CTX)
        assert info.keep_cache
        assert not info.direct_io
        for off, size in [(0, 10), (1000, 4096), (len(data) - 3, 100), (len(data), 10), (0, len(data))]:
            assert await ops.read(info.fh, off, size) == data[off : off + size]
        await ops.release(info.fh)
        # a second handle of the same file: the blob is trusted, not hashed again
        info2 = await ops.open(f.st_ino, os.O_RDONLY, CTX)
        assert await ops.read(info2.fh, 5, 5) == data[5:10]
        await ops.release(info2.fh)
        empty = await lookup_path(ops, "acme", "vision", "ds:v1", "empty")
        info3 = await ops.open(empty.st_ino, os.O_RDONLY, CTX)
        assert await ops.read(info3.fh, 0, 4096) == b""
        await ops.release(info3.fh)

    run(main)
    assert ops.fetcher.stats.verified_in_place == 2
    assert ops.fetcher.stats.trusted_in_place == 1


def test_open_does_not_fetch(ops: Operations, registry: LocalRegistry) -> None:
    async def main() -> None:
        f = await lookup_path(ops, "acme", "vision", "ds:v1", "README.md")
        info = await ops.open(f.st_ino, os.O_RDONLY, CTX)
        await ops.release(info.fh)

    run(main)
    counters = {k: v for k, v in ops.fetcher.stats.to_json().items() if isinstance(v, int)}
    assert counters == {k: 0 for k in counters}
    assert ops.fetcher.stats.to_json()["latency"] == {}


def test_read_in_thread_mode(registry: LocalRegistry, tmp_path: Path) -> None:
    ops = make_ops(registry, tmp_path / "cache", pread_in_thread=True)
    data = SAMPLE_FILES["train/000002.txt"]

    async def main() -> None:
        f = await lookup_path(ops, "acme", "vision", "ds:v1", "train", "000002.txt")
        info = await ops.open(f.st_ino, os.O_RDONLY, CTX)
        assert await ops.read(info.fh, 100, 200) == data[100:300]
        await ops.release(info.fh)

    run(main)
    ops.fetcher.store.close()


@pytest.mark.allow_log(r"digest mismatch")
def test_read_of_corrupted_blob_is_eio(ops: Operations, registry: LocalRegistry) -> None:
    path = "train/000002.txt"
    version = registry.resolve(parse_ref("acme/vision/ds:v1"))
    entry = registry.get_entry(version, path).entry
    assert entry is not None
    blob = registry.blob_path(entry.alg, entry.digest)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.write(b"ONE")  # same size, different bytes

    async def main() -> None:
        f = await lookup_path(ops, "acme", "vision", "ds:v1", *path.split("/"))
        info = await ops.open(f.st_ino, os.O_RDONLY, CTX)
        for _ in range(2):  # the second read hits the failure backoff: EIO again, no new hash
            with pytest.raises(pyfuse3.FUSEError) as exc:
                await ops.read(info.fh, 0, 4096)
            assert fuse_errno(exc) == errno.EIO
        await ops.release(info.fh)
        # other files stay readable
        readme = await lookup_path(ops, "acme", "vision", "ds:v1", "README.md")
        info = await ops.open(readme.st_ino, os.O_RDONLY, CTX)
        assert await ops.read(info.fh, 0, 100) == SAMPLE_FILES["README.md"]
        await ops.release(info.fh)

    run(main)
    assert ops.fetcher.stats.digest_mismatches == 1


# -- extended attributes ------------------------------------------------------------------------------------


def test_xattrs(ops: Operations) -> None:
    async def main() -> None:
        v0 = await lookup_path(ops, "acme", "vision", "ds:v0")
        assert await ops.getxattr(v0.st_ino, b"user.artifact.metadata", CTX) == b'{"rows": 1}'
        assert await ops.getxattr(v0.st_ino, b"user.artifact.aliases", CTX) == b"best"
        names = await ops.listxattr(v0.st_ino, CTX)
        assert b"user.artifact.version" in names
        assert len(names) == 16
        for inode, name in [(v0.st_ino, b"user.artifact.nope"), (v0.st_ino, b"trusted.x"), (ROOT_INODE, b"user.x")]:
            with pytest.raises(pyfuse3.FUSEError) as info:
                await ops.getxattr(inode, name, CTX)
            assert fuse_errno(info) == pyfuse3.ENOATTR == errno.ENODATA
        project = await lookup_path(ops, "acme", "vision")
        assert await ops.listxattr(project.st_ino, CTX) == []
        stats = json.loads(await ops.getxattr(ROOT_INODE, b"user.artifactfs.stats", CTX))
        assert set(stats) >= {
            "cache_hits",
            "fetches",
            "fetched_bytes",
            "verified_in_place",
            "trusted_in_place",
            "digest_mismatches",
            "fetch_errors",
        }
        assert stats["verified_in_place"] == 0
        f = await lookup_path(ops, "acme", "vision", "model:v0", "model.pt")
        handle = await ops.open(f.st_ino, os.O_RDONLY, CTX)
        await ops.read(handle.fh, 0, 10)
        await ops.release(handle.fh)
        stats = json.loads(await ops.getxattr(ROOT_INODE, b"user.artifactfs.stats", CTX))
        assert stats["verified_in_place"] == 1

    run(main)


def test_statfs(ops: Operations) -> None:
    async def main() -> None:
        await lookup_path(ops, "acme", "vision")
        out = await ops.statfs(CTX)
        assert out.f_namemax == 255
        assert out.f_files == 3  # root, acme, vision

    run(main)


# -- the errno boundary ------------------------------------------------------------------------------------


class ExplodingRegistry(LocalRegistry):
    def check_entity(self, entity: str) -> None:
        raise RuntimeError("a bug in a registry")


def test_unexpected_exception_becomes_eio(
    sample_registry: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ExplodingRegistry(sample_registry[0])
    ops = make_ops(registry, tmp_path / "cache")

    async def main() -> None:
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.lookup(ROOT_INODE, b"acme", CTX)
        assert fuse_errno(info) == errno.EIO
        assert isinstance(info.value.__cause__, RuntimeError)

    try:
        run(main)
    finally:
        ops.fetcher.store.close()
        registry.close()
    assert "lookup failed unexpectedly" in caplog.text
    assert "a bug in a registry" in caplog.text


def test_read_or_readdir_of_unknown_handle_is_ebadf(ops: Operations) -> None:
    """A handle the kernel never got from open/opendir: EBADF, no traceback (the log check
    would fail the test on one)."""

    async def main() -> None:
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.read(999, 0, 10)
        assert fuse_errno(info) == errno.EBADF
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.readdir(999, 0, None)  # type: ignore[arg-type]
        assert fuse_errno(info) == errno.EBADF

    run(main)


def test_release_during_first_read_closes_the_blob(registry: LocalRegistry, tmp_path: Path) -> None:
    """A read still fetching when its handle is released (an interrupted reader) must not leak
    the blob it then gets."""
    from test_fetcher import FakeRemote, FaultySource

    data = SAMPLE_FILES["README.md"]
    src = FaultySource(data)
    src.gate = threading.Event()
    blobs: list[Blob] = []

    class Recording(Fetcher):
        async def get(self, version: VersionInfo, entry: Entry) -> Blob:
            blob = await super().get(version, entry)
            blobs.append(blob)
            return blob

    tree = Tree(registry, uid=os.getuid(), gid=os.getgid(), alias_ttl=TTL)
    store = BlobStore(str(tmp_path / "cache"))
    ops = Operations(tree, Recording(FakeRemote(src), store))
    results: list[bytes | int] = []

    async def main() -> None:
        f = await lookup_path(ops, "acme", "vision", "ds:v1", "README.md")
        handle = await ops.open(f.st_ino, os.O_RDONLY, CTX)

        async def reader() -> None:
            try:
                results.append(await ops.read(handle.fh, 0, 100))
            except pyfuse3.FUSEError as exc:
                results.append(exc.errno)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.to_thread.run_sync(src.entered.wait)
            await ops.release(handle.fh)
            assert src.gate is not None
            src.gate.set()

    try:
        run(main)
    finally:
        store.close()
    assert len(results) == 1
    assert len(blobs) == 1
    assert blobs[0]._fd is None, "blob of a released handle left open"


# -- a blob that changes under a reader ----------------------------------------------------------------


class ChangingBlob(Blob):
    """A verified blob whose file then changes: every pread raises BlobChanged (as the store's
    identity check does), and close is recorded."""

    __slots__ = ("closed",)

    def __init__(self) -> None:
        super().__init__(data=b"never served")
        self.closed = False

    def pread(self, size: int, offset: int) -> bytes:
        raise BlobChanged("blob file changed under us (test)")

    def close(self) -> None:
        self.closed = True
        super().close()


class ChangingFetcher(Fetcher):
    """Hands out ``changes`` changing blobs first, then the real ones."""

    changes = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handed: list[Blob] = []

    async def get(self, version: VersionInfo, entry: Entry) -> Blob:
        if self.changes > 0:
            self.changes -= 1
            blob: Blob = ChangingBlob()
        else:
            blob = await super().get(version, entry)
        self.handed.append(blob)
        return blob


def changing_ops(registry: LocalRegistry, cache: Path, changes: int) -> tuple[Operations, ChangingFetcher]:
    tree = Tree(registry, uid=os.getuid(), gid=os.getgid(), alias_ttl=TTL)
    fetcher = ChangingFetcher(registry, BlobStore(str(cache)))
    fetcher.changes = changes
    return Operations(tree, fetcher), fetcher


def test_read_fetches_again_once_when_the_blob_changed(registry: LocalRegistry, tmp_path: Path) -> None:
    ops, fetcher = changing_ops(registry, tmp_path / "cache", changes=1)
    data = SAMPLE_FILES["README.md"]

    async def main() -> None:
        f = await lookup_path(ops, "acme", "vision", "ds:v1", "README.md")
        info = await ops.open(f.st_ino, os.O_RDONLY, CTX)
        assert await ops.read(info.fh, 0, 100) == data
        assert len(fetcher.handed) == 2
        first, second = fetcher.handed
        assert isinstance(first, ChangingBlob) and first.closed
        assert ops._files[info.fh].blob is second  # the fresh blob serves the next reads
        assert await ops.read(info.fh, 2, 3) == data[2:5]
        assert len(fetcher.handed) == 2
        await ops.release(info.fh)

    try:
        run(main)
    finally:
        fetcher.store.close()


@pytest.mark.allow_log(r"artifactfs\.ops: read: ")
def test_read_of_a_blob_that_keeps_changing_is_eio(registry: LocalRegistry, tmp_path: Path) -> None:
    ops, fetcher = changing_ops(registry, tmp_path / "cache", changes=3)

    async def main() -> None:
        f = await lookup_path(ops, "acme", "vision", "ds:v1", "README.md")
        info = await ops.open(f.st_ino, os.O_RDONLY, CTX)
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await ops.read(info.fh, 0, 100)
        assert fuse_errno(exc) == errno.EIO
        assert isinstance(exc.value.__cause__, BlobChanged)
        assert len(fetcher.handed) == 2  # one fetch again, not a loop
        assert all(isinstance(b, ChangingBlob) and b.closed for b in fetcher.handed)
        assert ops._files[info.fh].blob is None
        # the handle is not stuck on a dead blob: the next read fetches again (a third change,
        # then the real blob)
        assert await ops.read(info.fh, 0, 100) == SAMPLE_FILES["README.md"]
        assert len(fetcher.handed) == 4
        await ops.release(info.fh)

    try:
        run(main)
    finally:
        fetcher.store.close()


# -- request costs: ready-made attributes, xattrs off, the view --------------------------------------


def test_attributes_are_made_once_for_immutable_nodes(ops: Operations) -> None:
    async def main() -> None:
        f = await lookup_path(ops, "acme", "vision", "ds:v1", "README.md")
        assert await ops.getattr(f.st_ino, CTX) is await ops.getattr(f.st_ino, CTX)
        assert (await ops.getattr(f.st_ino, CTX)).st_size == len(SAMPLE_FILES["README.md"])
        alias = await lookup_path(ops, "acme", "vision", "ds:latest")
        assert await ops.getattr(alias.st_ino, CTX) is not await ops.getattr(alias.st_ino, CTX)  # aliases move

    run(main)


def test_xattr_names_outside_user_are_enoattr_at_once(ops: Operations) -> None:
    async def main() -> None:
        f = await lookup_path(ops, "acme", "vision", "ds:v1", "README.md")
        for name in (b"security.selinux", b"system.posix_acl_access", b"trusted.x"):
            with pytest.raises(pyfuse3.FUSEError) as info:
                await ops.getxattr(f.st_ino, name, CTX)
            assert fuse_errno(info) == pyfuse3.ENOATTR
        assert await ops.getxattr(f.st_ino, b"user.artifact.entry.size", CTX) == b"9"

    run(main)


def test_xattrs_off_answers_enosys(registry: LocalRegistry, tmp_path: Path) -> None:
    """ENOSYS makes the kernel stop asking this mount for xattrs (ls -l, cp -a at listing speed)."""
    ops = make_ops(registry, tmp_path / "cache", xattrs=False)

    async def main() -> None:
        f = await lookup_path(ops, "acme", "vision", "ds:v1", "README.md")
        for inode in (f.st_ino, ROOT_INODE):
            with pytest.raises(pyfuse3.FUSEError) as info:
                await ops.getxattr(inode, b"user.artifact.entry.digest", CTX)
            assert fuse_errno(info) == errno.ENOSYS
            with pytest.raises(pyfuse3.FUSEError) as info:
                await ops.listxattr(inode, CTX)
            assert fuse_errno(info) == errno.ENOSYS

    try:
        run(main)
    finally:
        ops.fetcher.store.close()


def test_view_files_open_and_read(ops: Operations, registry: LocalRegistry) -> None:
    async def main() -> None:
        info = await lookup_path(ops, "acme", "vision", ".artifactfs", "ds:v0", "info.json")
        handle = await ops.open(info.st_ino, os.O_RDONLY, CTX)
        assert handle.direct_io and not handle.keep_cache  # it changes with aliases
        data = await ops.read(handle.fh, 0, 1 << 20)
        await ops.release(handle.fh)
        assert json.loads(data)["aliases"] == ["best"]
        manifest = await lookup_path(ops, "acme", "vision", ".artifactfs", "ds:v0", "manifest.json")
        handle = await ops.open(manifest.st_ino, os.O_RDONLY, CTX)
        assert handle.keep_cache and not handle.direct_io
        data = await ops.read(handle.fh, 0, manifest.st_size)
        await ops.release(handle.fh)
        version = registry.resolve(parse_ref("acme/vision/ds:v0"))
        assert json.loads(data) == registry.manifest(version).to_json()
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await ops.open(manifest.st_ino, os.O_WRONLY, CTX)
        assert fuse_errno(exc) == errno.EROFS
        assert ops.fetcher.stats.verified_in_place == 0  # no blob was read

    run(main)
