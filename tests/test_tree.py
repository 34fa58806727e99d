"""Tree: the mount's namespace, attributes and xattrs over a real LocalRegistry, without a kernel."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import stat
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import SAMPLE_FILES, without_entry_ids
from trio.testing import MockClock

from artifactfs.errors import (
    ArtifactNotFound,
    EntityNotFound,
    EntryNotFound,
    NotFound,
    ProjectNotFound,
)
from artifactfs.manifest import Entry
from artifactfs.names import parse_ref
from artifactfs.registry.base import iso_time
from artifactfs.registry.local import LocalRegistry
from artifactfs.tree import FOREVER, ROOT_INODE, Kind, Node, Tree

TTL = 30.0
VERSION_XATTRS = {
    "id",
    "digest",
    "type",
    "version",
    "aliases",
    "state",
    "size",
    "created_at",
    "updated_at",
    "description",
    "metadata",
    "commit_hash",
    "qualified_name",
    "source_version",
    "source_qualified_name",
    "file_count",
}


def trio_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test under trio, on the test's ``clock`` fixture (a MockClock) if it asks for one."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        trio.run(functools.partial(fn, *args, **kwargs), clock=kwargs.get("clock"))

    return wrapper


@pytest.fixture
def registry(sample_registry: tuple[Path, Path], request: pytest.FixtureRequest) -> Iterator[LocalRegistry]:
    if getattr(request, "param", None) == "without entry ids":
        without_entry_ids(sample_registry[0] / "registry.sqlite")
    reg = LocalRegistry(sample_registry[0])
    yield reg
    reg.close()


# A registry made before entry ids (read as it is, as one the mount cannot upgrade): content
# nodes are made one per name and counted, dropped when the kernel forgets them.  These tests
# check that path; a registry with ids makes content nodes from its rows (tests/test_index.py).
without_ids = pytest.mark.parametrize("registry", ["without entry ids"], indirect=True)


@pytest.fixture
def clock() -> MockClock:
    return MockClock()


@pytest.fixture
def tree(registry: LocalRegistry) -> Tree:
    return Tree(registry, uid=1234, gid=5678, alias_ttl=TTL, mount_time_ns=42_000_000_000)


async def walk(tree: Tree, *names: str) -> Node:
    node = tree.node(ROOT_INODE)
    for name in names:
        node = await tree.lookup(node.inode, name)
    return node


async def names(tree: Tree, node: Node) -> list[str]:
    return [name for name, _ in await tree.listdir(node.inode)]


# -- namespace -----------------------------------------------------------------------------------------


@trio_test
async def test_root_lists_entities(tree: Tree) -> None:
    children = await tree.listdir(ROOT_INODE)
    assert [n for n, _ in children] == ["acme"]
    assert children[0][1].kind is Kind.ENTITY
    assert await names(tree, await walk(tree, "acme")) == ["vision"]


@trio_test
async def test_lookup_down_to_a_file(tree: Tree, registry: LocalRegistry) -> None:
    entity = await walk(tree, "acme")
    assert (entity.kind, entity.entity) == (Kind.ENTITY, "acme")
    project = await tree.lookup(entity.inode, "vision")
    assert (project.kind, project.entity, project.project) == (Kind.PROJECT, "acme", "vision")
    version = await tree.lookup(project.inode, "ds:v1")
    assert version.kind is Kind.VERSION
    assert version.version is not None
    assert version.version.id == registry.resolve(parse_ref("acme/vision/ds:v1")).id
    train = await tree.lookup(version.inode, "train")
    assert (train.kind, train.path) == (Kind.DIR, "train")
    deep = await walk(tree, "acme", "vision", "ds:v1", "train", "deep", "er", "still", "x.bin")
    assert deep.kind is Kind.FILE
    assert deep.path == "train/deep/er/still/x.bin"
    assert deep.entry is not None
    assert deep.entry.size == len(SAMPLE_FILES["train/deep/er/still/x.bin"])
    # names that look special elsewhere are plain entries inside a version
    for name in ("latest", "colon:inside.txt", ".hidden", "empty"):
        assert (await tree.lookup(version.inode, name)).kind is Kind.FILE
    odd = await walk(tree, "acme", "vision", "ds:v1", "with space", "ünïcødé name.txt")
    assert odd.entry is not None and odd.entry.size == len(SAMPLE_FILES["with space/ünïcødé name.txt"])


@trio_test
async def test_aliases_are_symlinks_to_versions(tree: Tree) -> None:
    project = await walk(tree, "acme", "vision")
    latest = await tree.lookup(project.inode, "ds:latest")
    assert latest.kind is Kind.ALIAS
    assert latest.target == "ds:v1"
    assert await tree.readlink(latest.inode) == "ds:v1"
    best = await tree.lookup(project.inode, "ds:best")
    assert best.target == "ds:v0"
    assert (await tree.lookup(project.inode, "model:latest")).target == "model:v0"
    with pytest.raises(EntryNotFound):
        await tree.readlink(project.inode)


@pytest.mark.parametrize(
    ("path", "error"),
    [
        (("nobody",), EntityNotFound),
        (("bad name!",), NotFound),
        (("acme", "nothing"), ProjectNotFound),
        (("acme", "vision", "ds:v99"), ArtifactNotFound),
        (("acme", "vision", "ds:nope"), ArtifactNotFound),
        (("acme", "vision", "ds:"), ArtifactNotFound),
        (("acme", "vision", "ds:v01"), ArtifactNotFound),
        (("acme", "vision", "nocolon"), ArtifactNotFound),
        (("acme", "vision", "ds"), ArtifactNotFound),
        (("acme", "vision", "other:v0"), ArtifactNotFound),
        (("acme", "vision", "model:best"), ArtifactNotFound),
        (("acme", "vision", "ds:v1", "missing.txt"), EntryNotFound),
        (("acme", "vision", "ds:v1", "train", "000003.txt"), EntryNotFound),
        (("acme", "vision", "ds:v1", "README.md", "inside"), EntryNotFound),
        (("acme", "vision", "ds:v0", "empty"), EntryNotFound),  # only in v1
        (("acme", "vision", "ds:latest", "README.md"), EntryNotFound),  # a symlink is no directory
    ],
)
@trio_test
async def test_unknown_names(tree: Tree, path: tuple[str, ...], error: type[NotFound]) -> None:
    with pytest.raises(error):
        await walk(tree, *path)


@trio_test
async def test_project_lists_versions_and_aliases_sorted(tree: Tree) -> None:
    project = await walk(tree, "acme", "vision")
    children = await tree.listdir(project.inode)
    assert [n for n, _ in children] == ["ds:best", "ds:latest", "ds:v0", "ds:v1", "model:latest", "model:v0"]
    kinds = {n: node.kind for n, node in children}
    assert kinds["ds:v0"] is kinds["model:v0"] is Kind.VERSION
    assert kinds["ds:best"] is kinds["model:latest"] is Kind.ALIAS
    targets = {n: node.target for n, node in children if node.kind is Kind.ALIAS}
    assert targets == {"ds:best": "ds:v0", "ds:latest": "ds:v1", "model:latest": "model:v0"}


def _expected_tree(files: dict[str, bytes]) -> dict[str, set[str]]:
    """directory path -> child names, derived from entry paths."""
    out: dict[str, set[str]] = {"": set()}
    for path in files:
        parts = path.split("/")
        for i in range(len(parts)):
            parent = "/".join(parts[:i])
            out.setdefault(parent, set()).add(parts[i])
    return out


@trio_test
async def test_version_listing_matches_manifest(tree: Tree) -> None:
    expected = _expected_tree(SAMPLE_FILES)
    version = await walk(tree, "acme", "vision", "ds:v1")
    seen: dict[str, set[str]] = {}
    sizes: dict[str, int] = {}

    async def visit(node: Node) -> None:
        children = await tree.listdir(node.inode)
        listed = [n for n, _ in children]
        assert listed == sorted(listed)
        seen[node.path] = set(listed)
        for _, child in children:
            if child.kind is Kind.DIR:
                await visit(child)
            else:
                assert child.kind is Kind.FILE and child.entry is not None
                sizes[child.path] = child.entry.size

    await visit(version)
    assert seen == expected
    assert sizes == {p: len(d) for p, d in SAMPLE_FILES.items()}
    v0 = await walk(tree, "acme", "vision", "ds:v0")
    assert await names(tree, v0) == ["README.md", "train"]


@trio_test
async def test_listing_and_lookup_share_nodes(tree: Tree) -> None:
    version = await walk(tree, "acme", "vision", "ds:v1")
    listed = dict(await tree.listdir(version.inode))
    assert await tree.lookup(version.inode, "README.md") is listed["README.md"]
    assert await tree.lookup(version.inode, "train") is listed["train"]
    project = await walk(tree, "acme", "vision")
    listed = dict(await tree.listdir(project.inode))
    assert await tree.lookup(project.inode, "ds:v1") is version
    assert await tree.lookup(project.inode, "ds:latest") is listed["ds:latest"]
    # the version through an alias and by number is one directory
    assert len({version.inode, listed["ds:v1"].inode}) == 1


@trio_test
async def test_listdir_of_a_file_fails(tree: Tree) -> None:
    readme = await walk(tree, "acme", "vision", "ds:v1", "README.md")
    with pytest.raises(EntryNotFound):
        await tree.listdir(readme.inode)
    with pytest.raises(NotFound):
        await tree.listdir(987654)


# -- attributes ---------------------------------------------------------------------------------------


@trio_test
async def test_file_and_directory_attributes(tree: Tree, registry: LocalRegistry) -> None:
    created = registry.resolve(parse_ref("acme/vision/ds:v1")).created_at_ns
    f = tree.getattr(await walk(tree, "acme", "vision", "ds:v1", "train", "000002.txt"))
    assert f.mode == stat.S_IFREG | 0o444
    assert (f.size, f.nlink, f.blocks) == (4000, 1, 8)
    assert f.mtime_ns == created
    assert f.timeout == FOREVER
    x = tree.getattr(await walk(tree, "acme", "vision", "ds:v1", "train", "deep", "er", "still", "x.bin"))
    assert (x.size, x.blocks) == (16384, 32)
    empty = tree.getattr(await walk(tree, "acme", "vision", "ds:v1", "empty"))
    assert (empty.size, empty.blocks) == (0, 0)
    one = tree.getattr(await walk(tree, "acme", "vision", "ds:v1", "README.md"))
    assert (one.size, one.blocks) == (len(SAMPLE_FILES["README.md"]), 1)
    for path in (("acme", "vision", "ds:v1"), ("acme", "vision", "ds:v1", "train", "deep")):
        d = tree.getattr(await walk(tree, *path))
        assert d.mode == stat.S_IFDIR | 0o555
        assert (d.size, d.nlink) == (0, 2)
        assert d.mtime_ns == created
        assert d.timeout == FOREVER
    v0 = tree.getattr(await walk(tree, "acme", "vision", "ds:v0"))
    assert v0.mtime_ns == registry.resolve(parse_ref("acme/vision/ds:v0")).created_at_ns
    assert v0.mtime_ns != created


@trio_test
async def test_moving_names_use_alias_ttl(tree: Tree) -> None:
    link = tree.getattr(await walk(tree, "acme", "vision", "ds:latest"))
    assert link.mode == stat.S_IFLNK | 0o777
    assert link.size == len("ds:v1")
    assert link.timeout == TTL
    assert link.mtime_ns == 42_000_000_000
    for path in ((), ("acme",), ("acme", "vision")):
        d = tree.getattr(await walk(tree, *path))
        assert d.mode == stat.S_IFDIR | 0o555
        assert d.timeout == TTL
        assert d.mtime_ns == 42_000_000_000


@trio_test
async def test_negative_timeout(tree: Tree) -> None:
    for path in (("acme", "vision", "ds:v1"), ("acme", "vision", "ds:v1", "train")):
        assert tree.negative_timeout((await walk(tree, *path)).inode) == FOREVER
    for other in ((), ("acme",), ("acme", "vision")):
        assert tree.negative_timeout((await walk(tree, *other)).inode) == TTL
    assert tree.negative_timeout(987654) == TTL


@trio_test
async def test_readlink_reresolves_after_ttl(tree: Tree, registry: LocalRegistry, clock: MockClock) -> None:
    project = await walk(tree, "acme", "vision")
    best = await tree.lookup(project.inode, "ds:best")
    assert await tree.readlink(best.inode) == "ds:v0"
    registry.add_alias(parse_ref("acme/vision/ds:v1"), "best")
    clock.jump(TTL - 0.5)
    assert await tree.readlink(best.inode) == "ds:v0"  # within the TTL: the old answer
    clock.jump(0.5)
    assert await tree.readlink(best.inode) == "ds:v1"
    assert tree.getattr(best).size == len("ds:v1")
    # the next change again waits a full TTL from the re-resolution
    registry.add_alias(parse_ref("acme/vision/ds:v0"), "best")
    clock.jump(TTL - 0.5)
    assert await tree.readlink(best.inode) == "ds:v1"
    clock.jump(0.5)
    assert await tree.readlink(best.inode) == "ds:v0"


@trio_test
async def test_readlink_of_removed_alias(tree: Tree, registry: LocalRegistry, clock: MockClock) -> None:
    best = await walk(tree, "acme", "vision", "ds:best")
    registry.remove_alias(parse_ref("acme/vision/ds:v0"), "best")
    assert await tree.readlink(best.inode) == "ds:v0"
    clock.jump(TTL)
    with pytest.raises(ArtifactNotFound):
        await tree.readlink(best.inode)
    with pytest.raises(ArtifactNotFound):
        await walk(tree, "acme", "vision", "ds:best")


@without_ids
@trio_test
async def test_forget_drops_unreferenced_nodes(tree: Tree) -> None:
    project = await walk(tree, "acme", "vision")
    readme = await walk(tree, "acme", "vision", "ds:v1", "README.md")
    tree.remember(readme)
    tree.remember(readme)
    inode = readme.inode
    assert (await tree.lookup((await tree.lookup(project.inode, "ds:v1")).inode, "README.md")).inode == inode
    tree.forget(inode, 1)
    assert tree.node(inode) is readme  # one reference left: same inode
    assert (await walk(tree, "acme", "vision", "ds:v1", "README.md")).inode == inode
    tree.forget(inode, 1)
    with pytest.raises(NotFound):
        tree.node(inode)
    again = await walk(tree, "acme", "vision", "ds:v1", "README.md")
    assert again is not readme
    assert again.path == "README.md"
    tree.forget(987654, 1)  # unknown inodes are ignored
    tree.forget(ROOT_INODE, 10)  # the root is never forgotten
    assert tree.node(ROOT_INODE).kind is Kind.ROOT


@without_ids
@trio_test
async def test_forget_keeps_other_nodes(tree: Tree) -> None:
    version = await walk(tree, "acme", "vision", "ds:v1")
    tree.remember(version)
    readme = await tree.lookup(version.inode, "README.md")
    tree.remember(readme)
    before = len(tree)
    tree.forget(readme.inode, 1)
    assert len(tree) == before - 1
    assert tree.node(version.inode) is version
    assert (await tree.lookup(version.inode, "train")).inode != readme.inode


@without_ids
@trio_test
async def test_drop_unreferenced_keeps_referenced_nodes_and_the_root(tree: Tree) -> None:
    version = await walk(tree, "acme", "vision", "ds:v1")
    listing = dict(await tree.listdir(version.inode))
    kept = listing["README.md"]
    tree.remember(kept)
    dropped = [node for node in listing.values() if node is not kept]
    assert dropped and all(node.lookups == 0 for node in dropped)
    before = len(tree)
    tree.drop_unreferenced([*listing.items(), ("", tree.node(ROOT_INODE))])
    assert len(tree) == before - len(dropped)
    assert tree.node(kept.inode) is kept
    assert tree.node(ROOT_INODE).kind is Kind.ROOT
    for node in dropped:
        with pytest.raises(NotFound):
            tree.node(node.inode)
    # the name resolves again, to a new node, and so does a new listing
    again = await tree.lookup(version.inode, "train")
    assert again is not listing["train"]
    assert again.path == "train"
    assert dict(await tree.listdir(version.inode))["train"] is again


@without_ids
@trio_test
async def test_dropped_node_handed_out_later_is_known_again(tree: Tree) -> None:
    """Another open listing may still hold a dropped node and hand it to the kernel later."""
    version = await walk(tree, "acme", "vision", "ds:v1")
    listing = dict(await tree.listdir(version.inode))
    node = listing["train"]
    tree.drop_unreferenced([("train", node)])
    with pytest.raises(NotFound):
        tree.node(node.inode)
    tree.remember(node)
    assert tree.node(node.inode) is node
    assert node.lookups == 1
    assert await names(tree, node) == ["000001.txt", "000002.txt", "deep"]


# -- extended attributes ------------------------------------------------------------------------------


def decoded(attrs: dict[str, bytes]) -> dict[str, str]:
    return {k.removeprefix("user.artifact."): v.decode() for k, v in attrs.items()}


@trio_test
async def test_version_xattrs(tree: Tree, registry: LocalRegistry) -> None:
    info = registry.resolve(parse_ref("acme/vision/ds:v0"))
    attrs = await tree.xattrs(await walk(tree, "acme", "vision", "ds:v0"))
    assert all(k.startswith("user.artifact.") for k in attrs)
    values = decoded(attrs)
    assert set(values) == VERSION_XATTRS
    assert values["id"] == info.id
    assert values["digest"] == info.digest
    assert values["type"] == "dataset"
    assert values["version"] == values["source_version"] == "v0"
    assert values["aliases"] == "best"
    assert values["state"] == "COMMITTED"
    assert values["size"] == str(len(b"# v0\n") + len(b"one\n"))
    assert values["file_count"] == "2"
    assert values["commit_hash"] == info.commit_hash
    assert values["created_at"] == iso_time(info.created_at_ns)
    assert values["updated_at"] == iso_time(info.updated_at_ns)
    assert json.loads(values["metadata"]) == {"rows": 1}
    assert values["description"] == ""
    v1 = decoded(await tree.xattrs(await walk(tree, "acme", "vision", "ds:v1")))
    assert v1["aliases"] == "latest"
    assert v1["description"] == "the full set"
    assert v1["file_count"] == str(len(SAMPLE_FILES))
    assert json.loads(v1["metadata"]) == {}
    assert decoded(await tree.xattrs(await walk(tree, "acme", "vision", "model:v0")))["type"] == "model"


@trio_test
async def test_version_xattrs_through_alias_directory(tree: Tree) -> None:
    # ``ds:latest/`` is the ds:v1 directory: the kernel follows the link to the version node
    latest = await walk(tree, "acme", "vision", "ds:latest")
    version = await walk(tree, "acme", "vision", latest.target)
    assert decoded(await tree.xattrs(version))["version"] == "v1"
    assert await tree.xattrs(latest) == {}


@trio_test
async def test_version_aliases_refresh_after_ttl(tree: Tree, registry: LocalRegistry, clock: MockClock) -> None:
    v0 = await walk(tree, "acme", "vision", "ds:v0")
    v1 = await walk(tree, "acme", "vision", "ds:v1")
    old_updated = decoded(await tree.xattrs(v1))["updated_at"]
    clock.jump(1.0)
    registry.add_alias(parse_ref("acme/vision/ds:v1"), "best")
    clock.jump(TTL - 1.5)
    assert decoded(await tree.xattrs(v1))["aliases"] == "latest"
    assert decoded(await tree.xattrs(v0))["aliases"] == "best"
    clock.jump(0.5)
    fresh = decoded(await tree.xattrs(v1))
    assert fresh["aliases"] == "latest,best"
    assert fresh["updated_at"] != old_updated
    assert decoded(await tree.xattrs(v0))["aliases"] == ""


@trio_test
async def test_deleted_version_keeps_serving_mounted_info(
    tree: Tree, registry: LocalRegistry, clock: MockClock
) -> None:
    v0 = await walk(tree, "acme", "vision", "ds:v0")
    registry.delete(parse_ref("acme/vision/ds:v0"), delete_aliases=True)
    clock.jump(TTL)
    assert decoded(await tree.xattrs(v0))["version"] == "v0"


@trio_test
async def test_file_xattrs(tree: Tree) -> None:
    readme = await walk(tree, "acme", "vision", "ds:v1", "README.md")
    data = SAMPLE_FILES["README.md"]
    assert await tree.xattrs(readme) == {
        "user.artifact.entry.digest": base64.b64encode(hashlib.md5(data).digest()),
        "user.artifact.entry.size": str(len(data)).encode(),
    }
    assert await tree.xattrs(await walk(tree, "acme", "vision", "ds:v1", "train")) == {}


@trio_test
async def test_reference_entry_xattr_is_redacted(tree: Tree) -> None:
    version = await walk(tree, "acme", "vision", "ds:v1")
    assert version.version is not None
    uri = "https://alice:s3cr3t@bucket.example.com:8443/data/train.tar?X-Amz-Signature=deadbeef&token=xyz#frag"
    entry = Entry("train.tar", "etag-not-base64", 123, ref=uri)
    node = Node(
        999_999, Kind.FILE, ("test",), "acme", "vision", "ds", version=version.version, path="train.tar", entry=entry
    )
    attrs = await tree.xattrs(node)
    assert attrs["user.artifact.entry.ref"] == b"https://bucket.example.com:8443/data/train.tar"
    assert attrs["user.artifact.entry.digest"] == b"etag-not-base64"
    assert attrs["user.artifact.entry.size"] == b"123"
    blob = b"".join(attrs.values())
    for secret in (b"alice", b"s3cr3t", b"deadbeef", b"xyz", b"Signature"):
        assert secret not in blob
    plain = Entry("s3.bin", "x", 1, ref="s3://bucket/key/file.bin")
    node = Node(999_998, Kind.FILE, ("test2",), version=version.version, path="s3.bin", entry=plain)
    assert (await tree.xattrs(node))["user.artifact.entry.ref"] == b"s3://bucket/key/file.bin"


@trio_test
async def test_root_stats_xattr(tree: Tree) -> None:
    root = tree.node(ROOT_INODE)
    counters = {"fetches": 2, "cache_hits": 7}
    attrs = await tree.xattrs(root, lambda: counters)
    assert list(attrs) == ["user.artifactfs.stats"]
    assert json.loads(attrs["user.artifactfs.stats"]) == counters
    assert await tree.xattrs(root) == {}
    assert await tree.xattrs(await walk(tree, "acme"), lambda: counters) == {}
    assert await tree.xattrs(await walk(tree, "acme", "vision"), lambda: counters) == {}


@without_ids
@trio_test
async def test_node_of_an_open_listing_survives_forget(tree: Tree) -> None:
    """readdir keeps a directory's listing between calls and counts a reference for each entry it
    hands out: an entry the kernel forgot meanwhile must come back valid, not as a dead inode."""
    version = await walk(tree, "acme", "vision", "ds:v1")
    listing = dict(await tree.listdir(version.inode))  # kept by an open directory handle
    readme = await tree.lookup(version.inode, "README.md")
    tree.remember(readme)
    assert readme is listing["README.md"]
    tree.forget(readme.inode, 1)  # the kernel drops its dentry while the listing is still open
    tree.remember(listing["README.md"])  # a later readdir batch hands the entry out again
    assert tree.node(readme.inode) is readme
    assert tree.getattr(tree.node(readme.inode)).size == len(SAMPLE_FILES["README.md"])
    assert await tree.lookup(version.inode, "README.md") is readme
    tree.forget(readme.inode, 1)
    with pytest.raises(NotFound):
        tree.node(readme.inode)


# -- version listings and prefetch order -------------------------------------------------------------


@without_ids
@trio_test
async def test_version_directory_listing_is_asked_once(tree: Tree, registry: LocalRegistry) -> None:
    """A version's content never changes: its directories are listed by the registry once."""
    calls: list[str] = []
    list_dir = registry.list_dir

    def counting(version: Any, path: str) -> Any:
        calls.append(path)
        return list_dir(version, path)

    registry.list_dir = counting  # type: ignore[method-assign]
    version = await walk(tree, "acme", "vision", "ds:v1")
    first = await names(tree, version)
    assert await names(tree, version) == first
    train = await tree.lookup(version.inode, "train")
    assert await names(tree, train) == ["000001.txt", "000002.txt", "deep"]
    await names(tree, train)
    assert calls == ["", "train"]
    # a repeated walk gets the same nodes without making anything
    assert await tree.listdir(train.inode) is await tree.listdir(train.inode)


@trio_test
async def test_files_after_follow_the_listing_and_skip_directories(tree: Tree) -> None:
    version = await walk(tree, "acme", "vision", "ds:v1")
    readme = await tree.lookup(version.inode, "README.md")
    after = [entry.path for _, entry in await tree.files_after(readme, 10)]
    assert after == ["colon:inside.txt", "empty", "latest"]  # "train" and "with space" are directories
    assert [e.path for _, e in await tree.files_after(readme, 2)] == ["colon:inside.txt", "empty"]
    first = await walk(tree, "acme", "vision", "ds:v1", "train", "000001.txt")
    assert [e.path for _, e in await tree.files_after(first, 5)] == ["train/000002.txt"]
    last = await walk(tree, "acme", "vision", "ds:v1", "train", "deep", "er", "still", "x.bin")
    assert await tree.files_after(last, 5) == []
    assert await tree.files_after(version, 5) == []  # not a file


# -- the .artifactfs view ---------------------------------------------------------------------------


@trio_test
async def test_view_holds_info_and_manifest_of_every_version(tree: Tree, registry: LocalRegistry) -> None:
    project = await walk(tree, "acme", "vision")
    assert ".artifactfs" not in await names(tree, project)  # reachable, never listed
    view = await tree.lookup(project.inode, ".artifactfs")
    assert view.kind is Kind.VIEW
    assert await names(tree, view) == ["ds:v0", "ds:v1", "model:v0"]
    v1 = await tree.lookup(view.inode, "ds:v1")
    assert v1.kind is Kind.VIEW_VERSION
    assert await names(tree, v1) == ["info.json", "manifest.json"]
    version = registry.resolve(parse_ref("acme/vision/ds:v1"))
    info_node = await tree.lookup(v1.inode, "info.json")
    info = json.loads(info_node.data)
    assert info == {**version.to_json(), "logged_by": None, "used_by": []}
    manifest_node = await tree.lookup(v1.inode, "manifest.json")
    assert manifest_node.file is not None  # made into an open, unlinked file: never held in memory
    made = os.pread(manifest_node.file.fd, 1 << 20, 0)
    assert made == registry.manifest(version).dumps().encode()
    assert os.fstat(manifest_node.file.fd).st_nlink == 0
    for node, size in ((info_node, len(info_node.data)), (manifest_node, len(made))):
        attr = tree.getattr(node)
        assert attr.mode == stat.S_IFREG | 0o444
        assert attr.size == size
    assert tree.getattr(manifest_node).timeout == FOREVER
    assert tree.getattr(info_node).timeout == TTL
    assert tree.getattr(v1).mode == stat.S_IFDIR | 0o555
    assert await tree.xattrs(info_node) == {}


@trio_test
async def test_view_names_versions_only(tree: Tree) -> None:
    view = await walk(tree, "acme", "vision", ".artifactfs")
    for name in ("ds:latest", "ds", "nope:v0", "ds:v9"):
        with pytest.raises(NotFound):
            await tree.lookup(view.inode, name)
    v0 = await tree.lookup(view.inode, "ds:v0")
    with pytest.raises(EntryNotFound):
        await tree.lookup(v0.inode, "README.md")


@trio_test
async def test_view_info_follows_aliases_after_ttl(tree: Tree, registry: LocalRegistry, clock: MockClock) -> None:
    info = await walk(tree, "acme", "vision", ".artifactfs", "ds:v1", "info.json")
    assert json.loads(info.data)["aliases"] == ["latest"]
    registry.add_alias(parse_ref("acme/vision/ds:v1"), "prod")
    await tree.refresh_view_file(info)
    assert json.loads(info.data)["aliases"] == ["latest"]  # the kernel was told this until the TTL
    clock.jump(TTL + 1)
    await tree.refresh_view_file(info)
    assert json.loads(info.data)["aliases"] == ["latest", "prod"]
    assert tree.getattr(info).size == len(info.data)
