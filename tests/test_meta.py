"""Meta and the async Tree over a slow, non-local registry (no kernel, no network).

The fake registry below answers like a remote backend would: every call may block, so the mount
must ask it from worker threads.  Each blocking method asserts that it is *not* running on the
trio thread, counts itself, and can be held at a gate, slowed down or made to fail.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import IO, Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from artifactfs.errors import (
    ArtifactNotFound,
    AuthError,
    EntityNotFound,
    EntryNotFound,
    FetchError,
    ProjectNotFound,
    RegistryError,
)
from artifactfs.manifest import Entry
from artifactfs.meta import STALE_TTL, STALE_WAIT, Meta
from artifactfs.names import Ref
from artifactfs.registry.base import CollectionInfo, DirEntry, Registry, RunInfo, VersionInfo
from artifactfs.sources import BlobSource
from artifactfs.tree import ROOT_INODE, Kind, Node, Tree

TTL = 10.0
LISTINGS = {"entities", "projects", "collections", "versions", "project_versions"}
FILES = {"README.md": 5, "train/a.txt": 1, "train/b.txt": 2, "train/sub/c.txt": 3}


def trio_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test under trio, on the test's ``clock`` fixture (a MockClock) if it asks for one."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        trio.run(functools.partial(fn, *args, **kwargs), clock=kwargs.get("clock"))

    return wrapper


def version(name: str, index: int, aliases: tuple[str, ...] = ()) -> VersionInfo:
    return VersionInfo(
        id=f"id-{name}-{index}",
        entity="acme",
        project="vision",
        name=name,
        type="dataset",
        version_index=index,
        aliases=aliases,
        digest=f"digest-{name}-{index}",
        digest_algorithm="manifest_md5",
        commit_hash="",
        created_at_ns=1_000_000_000 * (index + 1),
        updated_at_ns=1_000_000_000 * (index + 1),
        description="",
        metadata={},
        size=sum(FILES.values()),
        state="COMMITTED",
        file_count=len(FILES),
    )


class SlowRegistry(Registry):
    """A remote-like registry: entity ``acme`` (and ``beta``, ``gamma``), project ``vision`` with
    ``ds:v0`` (alias best), ``ds:v1`` (alias latest) and ``model:v0`` (alias latest)."""

    kind = "fake"
    local = False

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.loop_thread = threading.get_ident()  # made on the test's (trio) thread
        self.calls: Counter[str] = Counter()
        self.gate: threading.Event | None = None
        self.failures: dict[str, Exception] = {}
        self.thread_errors: list[str] = []
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.loaded: set[str] = set()
        self.versions_ = [version("ds", 0, ("best",)), version("ds", 1, ("latest",)), version("model", 0, ("latest",))]

    def _call(self, name: str) -> None:
        if threading.get_ident() == self.loop_thread:
            self.thread_errors.append(name)
            raise AssertionError(f"{name} was called on the trio thread")
        with self._lock:
            self.calls[name] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                assert self.gate.wait(120), "gate never opened"
            if self.delay:
                time.sleep(self.delay)
            failure = self.failures.get(name)
            if failure is not None:
                raise failure
        finally:
            with self._lock:
                self.in_flight -= 1

    # -- namespace ---------------------------------------------------------------------------------

    def entities(self) -> list[str]:
        self._call("entities")
        return ["acme", "beta", "gamma"]

    def check_entity(self, entity: str) -> None:
        self._call("check_entity")
        if entity not in ("acme", "beta", "gamma"):
            raise EntityNotFound(f"entity {entity} not found")

    def projects(self, entity: str) -> list[str]:
        self._call("projects")
        return ["vision"] if entity == "acme" else []

    def check_project(self, entity: str, project: str) -> None:
        self._call("check_project")
        if (entity, project) != ("acme", "vision"):
            raise ProjectNotFound(f"project {entity}/{project} not found")

    def collections(self, entity: str, project: str) -> list[CollectionInfo]:
        self._call("collections")
        return [CollectionInfo(entity, project, n, "dataset", "", 0, 1) for n in ("ds", "model")]

    def versions(self, entity: str, project: str, name: str) -> list[VersionInfo]:
        self._call("versions")
        return [v for v in self.versions_ if v.name == name]

    def project_versions(self, entity: str, project: str) -> list[VersionInfo]:
        self._call("project_versions")
        if (entity, project) != ("acme", "vision"):
            raise ProjectNotFound(f"project {entity}/{project} not found")
        return list(self.versions_)

    def resolve(self, ref: Ref) -> VersionInfo:
        self._call("resolve")
        for v in self.versions_:
            if v.name == ref.name and ref.tag in (v.version, *v.aliases):
                return v
        raise ArtifactNotFound(f"{ref} not found")

    def move_alias(self, name: str, alias: str, index: int) -> None:
        out = []
        for v in self.versions_:
            aliases = tuple(a for a in v.aliases if a != alias)
            if v.name == name and v.version_index == index:
                aliases += (alias,)
            out.append(_with_aliases(v, aliases))
        self.versions_ = out

    # -- contents: cheap once loaded, and only then --------------------------------------------------

    def contents_loaded(self, version: VersionInfo) -> bool:
        return version.id in self.loaded

    def load_contents(self, version: VersionInfo) -> None:
        self._call("load_contents")
        self.loaded.add(version.id)

    def _entries(self, version: VersionInfo) -> dict[str, Entry]:
        assert version.id in self.loaded, "contents asked before they were loaded"
        return {p: Entry(p, f"d-{p}", size) for p, size in FILES.items()}

    def iter_entries(self, version: VersionInfo) -> Iterator[Entry]:
        return iter(self._entries(version).values())

    def list_dir(self, version: VersionInfo, path: str) -> list[DirEntry]:
        entries = self._entries(version)
        prefix = f"{path}/" if path else ""
        out: dict[str, Entry | None] = {}
        for p, e in entries.items():
            if p.startswith(prefix):
                head, sep, _ = p[len(prefix) :].partition("/")
                out[head] = None if sep else e
        if path and not out:
            raise EntryNotFound(f"{path}: no such directory")
        return [DirEntry(n, out[n]) for n in sorted(out)]

    def get_entry(self, version: VersionInfo, path: str) -> DirEntry:
        entries = self._entries(version)
        name = path.rsplit("/", 1)[-1]
        if path in entries:
            return DirEntry(name, entries[path])
        if any(p.startswith(path + "/") for p in entries):
            return DirEntry(name, None)
        raise EntryNotFound(f"{path} not found")

    def blob_source(self, version: VersionInfo, entry: Entry) -> BlobSource:
        raise AssertionError("the tree never asks for blobs")


def _with_aliases(v: VersionInfo, aliases: tuple[str, ...]) -> VersionInfo:
    fields = {name: getattr(v, name) for name in VersionInfo.__dataclass_fields__}
    fields["aliases"] = aliases
    return VersionInfo(**fields)


class ThreadCheckingDict(dict[Any, Any]):
    """A dict that records the thread of every change (the inode table must change on the loop only)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.threads: list[int] = []

    def __setitem__(self, key: Any, value: Any) -> None:
        self.threads.append(threading.get_ident())
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self.threads.append(threading.get_ident())
        super().__delitem__(key)


@pytest.fixture
def registry() -> SlowRegistry:
    return SlowRegistry()


@pytest.fixture
def clock() -> MockClock:
    return MockClock()


def make_tree(registry: Registry, **kwargs: Any) -> Tree:
    return Tree(registry, uid=1, gid=1, alias_ttl=TTL, **kwargs)


async def walk(tree: Tree, *names: str) -> Node:
    node = tree.node(ROOT_INODE)
    for name in names:
        node = await tree.lookup(node.inode, name)
    return node


# -- concurrency -----------------------------------------------------------------------------------------


def test_slow_lookups_run_at_once() -> None:
    """Three lookups of different entities, each a 1 s registry call: all three calls are in
    flight together, not one after another."""
    registry = SlowRegistry(delay=1.0)
    tree = make_tree(registry)
    found: dict[str, Node] = {}

    async def one(name: str) -> None:
        found[name] = await tree.lookup(ROOT_INODE, name)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for name in ("acme", "beta", "gamma"):
                nursery.start_soon(one, name)

    trio.run(main)
    assert registry.max_in_flight == 3  # all three at once (not a timing: that depends on the load)
    assert registry.calls == Counter(check_entity=3)
    assert {n: node.kind for n, node in found.items()} == dict.fromkeys(("acme", "beta", "gamma"), Kind.ENTITY)


def test_threads_are_bounded_by_the_meta_limiter() -> None:
    registry = SlowRegistry(delay=0.2)
    tree = make_tree(registry, meta=Meta(registry, alias_ttl=TTL, max_threads=2))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for name in ("acme", "beta", "gamma", "nobody"):
                nursery.start_soon(functools.partial(_lookup_quietly, tree, ROOT_INODE, name))

    trio.run(main)
    assert registry.calls == Counter(check_entity=4)
    assert registry.max_in_flight == 2


async def _lookup_quietly(tree: Tree, parent: int, name: str) -> None:
    try:
        await tree.lookup(parent, name)
    except EntityNotFound:
        pass


@trio_test
async def test_concurrent_lookups_of_one_name_share_one_call(registry: SlowRegistry) -> None:
    tree = make_tree(registry)
    registry.gate = threading.Event()
    nodes: list[Node] = []

    async def one() -> None:
        nodes.append(await tree.lookup(ROOT_INODE, "acme"))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        registry.gate.set()
    assert registry.calls == Counter(check_entity=1)
    assert len(nodes) == 10 and all(node is nodes[0] for node in nodes)
    assert tree.meta.stats.joined == 9


@trio_test
async def test_an_error_is_shared_and_not_cached(registry: SlowRegistry) -> None:
    tree = make_tree(registry)
    registry.gate = threading.Event()
    registry.failures["check_entity"] = FetchError("the server is down")
    errors: list[BaseException] = []

    async def one() -> None:
        try:
            await tree.lookup(ROOT_INODE, "acme")
        except FetchError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        registry.gate.set()
    assert registry.calls == Counter(check_entity=1)
    assert len(errors) == 5 and all(str(e) == "the server is down" for e in errors)
    # not remembered: the next lookup asks again, and now succeeds
    del registry.failures["check_entity"]
    assert (await tree.lookup(ROOT_INODE, "acme")).kind is Kind.ENTITY
    assert registry.calls == Counter(check_entity=2)
    # a missing name is an error too: asked each time (the kernel keeps the negative entry)
    for expected in (3, 4):
        with pytest.raises(EntityNotFound):
            await tree.lookup(ROOT_INODE, "nobody")
        assert registry.calls["check_entity"] == expected


@trio_test
async def test_a_cancelled_caller_does_not_strand_its_waiters(registry: SlowRegistry) -> None:
    """The caller that owns a call is cancelled while it waits for a thread: a caller that
    joined it asks again instead of getting nothing."""
    meta = Meta(registry, alias_ttl=TTL, max_threads=1)
    registry.gate = threading.Event()
    answers: list[str] = []

    async def blocker() -> None:
        await meta.check_entity("beta")  # holds the only thread until the gate opens

    async def joiner() -> None:
        await meta.check_entity("acme")
        answers.append("acme")

    owner_scope = trio.CancelScope()

    async def owner() -> None:
        with owner_scope:
            await meta.check_entity("acme")  # waits for the thread the blocker holds
        answers.append("owner cancelled" if owner_scope.cancelled_caught else "owner answered")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocker)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(owner)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(joiner)
        await trio.testing.wait_all_tasks_blocked()
        assert meta.stats.joined == 1
        owner_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        registry.gate.set()
    assert answers == ["owner cancelled", "acme"]
    assert registry.calls == Counter(check_entity=2)  # beta, then acme once (by the joiner)


# -- TTL cache ---------------------------------------------------------------------------------------------


@trio_test
async def test_answers_are_kept_for_alias_ttl(registry: SlowRegistry, clock: MockClock) -> None:
    tree = make_tree(registry)
    await tree.lookup(ROOT_INODE, "acme")
    clock.jump(TTL - 0.5)
    await tree.lookup(ROOT_INODE, "acme")
    assert registry.calls == Counter(check_entity=1)
    clock.jump(0.5)
    await tree.lookup(ROOT_INODE, "acme")
    assert registry.calls == Counter(check_entity=2)
    await tree.lookup(ROOT_INODE, "acme")
    assert registry.calls == Counter(check_entity=2)


async def _probe_done(meta: Meta) -> None:
    """Until the background probe (a worker thread) has ended."""
    for _ in range(2000):
        await trio.testing.wait_all_tasks_blocked()
        if not meta._probing:
            return
        await trio.to_thread.run_sync(time.sleep, 0.001)
    raise AssertionError("the probe never ended")


@pytest.mark.allow_log(r"serving the last answers", r"the registry answers again")
@trio_test
async def test_last_answers_are_served_while_the_registry_fails(registry: SlowRegistry, clock: MockClock) -> None:
    """A server that cannot answer (RegistryError: unreachable, 5xx) does not take away what a
    mount already knew: past the TTL the last answers are served, the first asker paying the
    failed call and the others none, while one probe at a time asks again in the background.
    A name never answered still fails; the first success ends it."""
    tree = make_tree(registry)
    acme = await tree.lookup(ROOT_INODE, "acme")
    project = await tree.lookup(acme.inode, "vision")
    best = await tree.lookup(project.inode, "ds:best")
    assert registry.calls == Counter(check_entity=1, check_project=1, resolve=1)
    down = RegistryError("W&B CheckEntity: cannot reach the server (ConnectionError); gave up after 8 tries")
    for name in ("check_entity", "check_project", "resolve", "project_versions"):
        registry.failures[name] = down
    clock.jump(TTL)
    assert (await tree.lookup(ROOT_INODE, "acme")) is acme  # the failed call, then the last answer
    assert registry.calls["check_entity"] == 2
    assert (await tree.lookup(acme.inode, "vision")) is project  # answered at once ...
    assert await tree.readlink(best.inode) == "ds:v0"
    await _probe_done(tree.meta)
    assert registry.calls["check_project"] + registry.calls["resolve"] == 3  # ... while one probe asks again
    assert tree.meta.stats.stale_answers == 3
    with pytest.raises(RegistryError):  # never answered before: nothing to serve
        await tree.lookup(ROOT_INODE, "beta")
    # the registry answers again: the next probe ends it, and the answers are fresh again
    registry.failures.clear()
    registry.move_alias("ds", "best", 1)
    clock.jump(TTL)
    assert await tree.readlink(best.inode) == "ds:v0"  # the last answer, and a probe that succeeds
    await _probe_done(tree.meta)
    clock.jump(STALE_TTL)  # the last answer was served again for a short while only
    assert await tree.readlink(best.inode) == "ds:v1"  # what the probe brought
    clock.jump(TTL)
    calls = registry.calls["check_entity"]
    assert (await tree.lookup(ROOT_INODE, "acme")).kind is Kind.ENTITY
    assert registry.calls["check_entity"] == calls + 1  # asked in the foreground again


@trio_test
async def test_a_slow_registry_keeps_an_asker_with_a_last_answer_waiting_stale_wait_at_most(
    registry: SlowRegistry, clock: MockClock
) -> None:
    """Past the TTL, a registry that does not answer (a blackholed server: each try waits for
    its timeouts) costs an asker that holds a last answer STALE_WAIT, not the registry's
    retries; the call goes on and its answer is used once it comes."""
    tree = make_tree(registry)
    acme = await tree.lookup(ROOT_INODE, "acme")
    best = await tree.lookup((await tree.lookup(acme.inode, "vision")).inode, "ds:best")
    registry.move_alias("ds", "best", 1)
    clock.jump(TTL)
    registry.gate = threading.Event()
    got: list[str] = []

    async def ask() -> None:
        got.append(await tree.readlink(best.inode))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # waiting for the registry ...
            clock.jump(STALE_WAIT)
        assert got == ["ds:v0"]  # ... STALE_WAIT at most: then the last answer
        assert tree.meta.stats.stale_answers == 1
    finally:
        registry.gate.set()
    for _ in range(2000):  # the call, still running in the background, ends
        await trio.testing.wait_all_tasks_blocked()
        if not tree.meta._inflight:
            break
        await trio.to_thread.run_sync(time.sleep, 0.001)
    clock.jump(STALE_TTL)
    assert await tree.readlink(best.inode) == "ds:v1"  # its answer, kept
    assert registry.calls["resolve"] == 2


def test_a_background_call_does_not_hold_the_end_of_the_mount(registry: SlowRegistry) -> None:
    """A refresh still waiting for the registry (one that is down: its retry budget can take
    minutes) is left to its thread when the mount's loop ends, instead of holding the unmount."""
    clock = MockClock()

    async def main() -> None:
        tree = make_tree(registry)
        await tree.lookup(ROOT_INODE, "acme")
        clock.jump(TTL)
        registry.gate = threading.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tree.lookup, ROOT_INODE, "acme")
            await trio.testing.wait_all_tasks_blocked()
            clock.jump(STALE_WAIT)  # the asker gets the last answer; the call goes on
        assert tree.meta._inflight  # still asking when the loop ends

    try:
        started = time.monotonic()
        trio.run(main, clock=clock)
        assert time.monotonic() - started < 30
    finally:
        if registry.gate is not None:
            registry.gate.set()


@pytest.mark.allow_log(r"serving the last answers")
@trio_test
async def test_a_gone_name_is_not_served_from_its_last_answer(registry: SlowRegistry, clock: MockClock) -> None:
    """ "No such thing" is an answer: it drops the last one, so a later outage cannot bring
    the name back; refused credentials are raised too."""
    tree = make_tree(registry)
    await tree.lookup(ROOT_INODE, "acme")
    clock.jump(TTL)
    registry.failures["check_entity"] = EntityNotFound("entity acme not found")
    with pytest.raises(EntityNotFound):
        await tree.lookup(ROOT_INODE, "acme")
    registry.failures["check_entity"] = RegistryError("cannot reach the server")
    with pytest.raises(RegistryError):
        await tree.lookup(ROOT_INODE, "acme")
    registry.failures["check_entity"] = AuthError("the server no longer accepts the API key")
    with pytest.raises(AuthError):
        await tree.lookup(ROOT_INODE, "acme")
    assert tree.meta.stats.stale_answers == 0


@trio_test
async def test_alias_symlink_reresolved_after_ttl(registry: SlowRegistry, clock: MockClock) -> None:
    tree = make_tree(registry)
    project = await walk(tree, "acme", "vision")
    best = await tree.lookup(project.inode, "ds:best")
    assert await tree.readlink(best.inode) == "ds:v0"
    assert registry.calls["resolve"] == 1
    registry.move_alias("ds", "best", 1)
    clock.jump(TTL - 0.5)
    assert await tree.readlink(best.inode) == "ds:v0"
    assert (await tree.lookup(project.inode, "ds:best")) is best
    assert registry.calls["resolve"] == 1
    clock.jump(0.5)
    assert await tree.readlink(best.inode) == "ds:v1"
    assert registry.calls["resolve"] == 2
    assert tree.getattr(best).size == len("ds:v1")


@trio_test
async def test_version_xattrs_refresh_after_ttl(registry: SlowRegistry, clock: MockClock) -> None:
    tree = make_tree(registry)
    v1 = await walk(tree, "acme", "vision", "ds:v1")
    assert (await tree.xattrs(v1))["user.artifact.aliases"] == b"latest"
    registry.move_alias("ds", "best", 1)
    clock.jump(TTL - 0.5)
    assert (await tree.xattrs(v1))["user.artifact.aliases"] == b"latest"
    assert registry.calls["resolve"] == 1
    clock.jump(0.5)
    assert (await tree.xattrs(v1))["user.artifact.aliases"] == b"latest,best"
    assert registry.calls["resolve"] == 2


# -- bounded calls -----------------------------------------------------------------------------------------


@trio_test
async def test_project_listing_is_one_project_versions_call(registry: SlowRegistry) -> None:
    tree = make_tree(registry)
    project = await walk(tree, "acme", "vision")
    before = registry.calls.copy()
    listing = await tree.listdir(project.inode)
    assert [n for n, _ in listing] == ["ds:best", "ds:latest", "ds:v0", "ds:v1", "model:latest", "model:v0"]
    assert {n: node.target for n, node in listing if node.kind is Kind.ALIAS} == {
        "ds:best": "ds:v0",
        "ds:latest": "ds:v1",
        "model:latest": "model:v0",
    }
    assert registry.calls - before == Counter(project_versions=1)
    assert registry.calls["versions"] == registry.calls["collections"] == 0
    # the listing answered the lookups that follow it (``ls`` then ``cat``): no further calls
    listed = dict(listing)
    assert await tree.lookup(project.inode, "ds:v1") is listed["ds:v1"]
    assert await tree.lookup(project.inode, "model:latest") is listed["model:latest"]
    assert registry.calls - before == Counter(project_versions=1)


@trio_test
async def test_existence_checks_never_list(registry: SlowRegistry) -> None:
    tree = make_tree(registry)
    await walk(tree, "acme", "vision")
    for parent, name, error in ((ROOT_INODE, "nobody", EntityNotFound),):
        with pytest.raises(error):
            await tree.lookup(parent, name)
    entity = await walk(tree, "acme")
    with pytest.raises(ProjectNotFound):
        await tree.lookup(entity.inode, "nothing")
    assert set(registry.calls) == {"check_entity", "check_project"}
    assert not LISTINGS & set(registry.calls)


@trio_test
async def test_version_contents_load_once_then_inline(registry: SlowRegistry) -> None:
    tree = make_tree(registry)
    v1 = await walk(tree, "acme", "vision", "ds:v1")
    registry.gate = threading.Event()
    found: dict[str, Node] = {}

    async def one(name: str) -> None:
        found[name] = await tree.lookup(v1.inode, name)

    async with trio.open_nursery() as nursery:
        for name in ("README.md", "train"):
            for _ in range(3):
                nursery.start_soon(one, name)
        await trio.testing.wait_all_tasks_blocked()
        registry.gate.set()
    assert registry.calls["load_contents"] == 1
    assert found["README.md"].kind is Kind.FILE and found["train"].kind is Kind.DIR
    before = registry.calls.copy()
    train = found["train"]
    assert [n for n, _ in await tree.listdir(train.inode)] == ["a.txt", "b.txt", "sub"]
    assert (await walk(tree, "acme", "vision", "ds:v1", "train", "sub", "c.txt")).kind is Kind.FILE
    with pytest.raises(EntryNotFound):
        await tree.lookup(train.inode, "missing")
    assert registry.calls == before  # contents loaded: list_dir/get_entry answered inline
    v0 = await walk(tree, "acme", "vision", "ds:v0")
    await tree.listdir(v0.inode)
    assert registry.calls["load_contents"] == 2  # one load per version


# -- the inode table stays on the loop ---------------------------------------------------------------------


@trio_test
async def test_inode_table_changes_only_on_the_trio_thread(registry: SlowRegistry, clock: MockClock) -> None:
    tree = make_tree(registry)
    nodes = ThreadCheckingDict(tree._nodes)
    by_key = ThreadCheckingDict(tree._by_key)
    tree._nodes, tree._by_key = nodes, by_key
    loop_thread = threading.get_ident()

    async def browse(*path: str) -> None:
        node = await walk(tree, *path)
        if node.kind is Kind.ALIAS:
            await tree.readlink(node.inode)
        elif node.kind is not Kind.FILE:
            for _, child in await tree.listdir(node.inode):
                tree.remember(child)
        await tree.xattrs(node)

    for _ in range(2):
        async with trio.open_nursery() as nursery:
            for path in (
                (),
                ("acme",),
                ("acme", "vision"),
                ("acme", "vision", "ds:latest"),
                ("acme", "vision", "ds:v1"),
                ("acme", "vision", "ds:v1", "train"),
                ("acme", "vision", "ds:v0", "train", "sub", "c.txt"),
                ("beta",),
            ):
                nursery.start_soon(functools.partial(browse, *path))
        clock.jump(TTL)  # the second round re-asks everything
    for inode in list(nodes):
        tree.forget(inode, 10**6)
    assert registry.thread_errors == []
    assert sum(registry.calls.values()) > 10
    assert len(nodes.threads) > 20 and len(by_key.threads) > 20
    assert set(nodes.threads) == set(by_key.threads) == {loop_thread}


# -- a local registry is asked inline ------------------------------------------------------------------------


class InlineRegistry(SlowRegistry):
    kind = "fake-local"
    local = True

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def _call(self, name: str) -> None:
        self.threads.add(threading.get_ident())
        with self._lock:
            self.calls[name] += 1


@trio_test
async def test_a_local_registry_is_asked_inline_and_never_cached() -> None:
    registry = InlineRegistry()
    tree = make_tree(registry)
    for _ in range(2):
        v1 = await walk(tree, "acme", "vision", "ds:v1")
        await tree.listdir(v1.inode)
    assert registry.threads == {threading.get_ident()}
    assert registry.calls == Counter(check_entity=2, check_project=2, resolve=2, load_contents=1)
    assert tree.meta.stats.cache_hits == 0


# -- lineage and manifest.json: asked through Meta ------------------------------------------------------


class LineageRegistry(SlowRegistry):
    """SlowRegistry with lineage (counted, failing on demand) and a manifest that waits at the gate."""

    def logged_by(self, version: VersionInfo) -> RunInfo | None:
        self._call("logged_by")
        return RunInfo("acme", "vision", "r1", "r1", "train", "finished", 0)

    def used_by(self, version: VersionInfo) -> list[RunInfo]:
        self._call("used_by")
        return [RunInfo("acme", "vision", "r2", "r2", "eval", "finished", 0)]

    def write_manifest(self, version: VersionInfo, out: IO[bytes]) -> int:
        self._call("manifest")
        return super().write_manifest(version, out)


@trio_test
@pytest.mark.allow_log(r"lineage of acme/vision/ds:v0 is unknown: lineage table damaged")
async def test_lineage_is_one_question_with_one_error_policy() -> None:
    registry = LineageRegistry()
    tree = make_tree(registry)
    v1 = await walk(tree, "acme", "vision", "ds:v1")
    attrs = await tree.xattrs(v1)
    assert (attrs["user.artifact.logged_by"], attrs["user.artifact.used_by"]) == (b"acme/vision/r1", b"acme/vision/r2")
    assert v1.version is not None
    provenance = await tree.provenance(v1.version)  # what info.json adds: the same answer, not asked again
    assert provenance["logged_by"]["id"] == "r1" and [r["id"] for r in provenance["used_by"]] == ["r2"]
    assert (registry.calls["logged_by"], registry.calls["used_by"]) == (1, 1)
    registry.failures["logged_by"] = FetchError("lineage table damaged")
    v0 = await walk(tree, "acme", "vision", "ds:v0")
    assert v0.version is not None
    attrs = await tree.xattrs(v0)  # unknown, for the xattrs and for info.json alike
    assert "user.artifact.logged_by" not in attrs and "user.artifact.used_by" not in attrs
    assert await tree.provenance(v0.version) == {"logged_by": None, "used_by": []}


@trio_test
async def test_manifest_json_is_built_once_under_the_meta_limiter() -> None:
    registry = LineageRegistry()
    tree = make_tree(registry, meta=Meta(registry, alias_ttl=TTL, max_threads=1))
    v1 = await walk(tree, "acme", "vision", "ds:v1")
    assert v1.version is not None
    registry.gate = threading.Event()
    built: list[bytes] = []

    async def one() -> None:
        made = await tree.meta.manifest_json(v1.version)  # type: ignore[arg-type]
        built.append(os.pread(made.fd, 1 << 20, 0))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        assert tree.meta.limiter.borrowed_tokens == 1  # the build holds Meta's one thread
        registry.gate.set()
    assert registry.calls["manifest"] == 1 and len(built) == 3 and len(set(built)) == 1
    assert b'"contents"' in built[0]
