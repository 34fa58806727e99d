"""The mount's async view of a registry's metadata: slow backends without a stalled loop.

Every :class:`~artifactfs.registry.base.Registry` method may be a network round trip (W&B's
GraphQL API: tens to hundreds of milliseconds).  pyfuse3 runs all handlers on one trio loop, so a
blocking call there stalls every request of the mount.  This layer sits between the inode table
(:mod:`tree`) and the registry and decides, per registry, how a question is asked:

* ``registry.local`` (SQLite on this machine, tens of microseconds): inline on the loop.  A
  ``trio.to_thread`` hop costs more than the answer (docs/DESIGN.md, "Inline vs thread").
* otherwise: in a worker thread under this layer's own ``CapacityLimiter`` (not the fetcher's,
  so a burst of downloads cannot starve ``ls`` and the other way round), several at once.
  Concurrent askers of the same key share one call (single flight: one :class:`_Flight` per
  key); an error is handed to every waiter of that call and then forgotten, so the next asker
  tries again.  Answers of namespace questions (does this entity/project exist, what does a
  root/entity/project directory list, what does ``name:alias`` point to) are kept for
  ``alias_ttl`` seconds, keyed by the question they answer; the kernel is told the same TTL,
  so nothing is served older than an alias may be.

Concurrency rules: only the trio loop touches ``_cache`` and ``_inflight`` (a worker thread runs
the registry call and nothing else), and only ``await`` points interleave.  Times come from
``trio.current_time()``, so tests drive expiry with ``trio.testing.MockClock``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import trio

from . import defaults
from .errors import ArtifactFSError
from .fsutil import make_temp
from .index import Contents
from .names import Ref
from .registry.base import DirEntry, Registry, RunInfo, VersionInfo

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_THREADS = 8


@dataclass(frozen=True, slots=True)
class Answer(Generic[T]):
    """A registry answer and the loop time until which it counts as current."""

    value: T
    expires: float


@dataclass(eq=False, slots=True)
class _Flight:
    """One registry call in progress; its askers wait on ``done``."""

    done: trio.Event = field(default_factory=trio.Event)
    value: Any = None
    expires: float = 0.0
    error: Exception | None = None
    finished: bool = False  # False after ``done``: the caller was cancelled, ask again


@dataclass(frozen=True, slots=True)
class Lineage:
    """The run that logged a version (None when none is known) and the runs that used it."""

    logged_by: RunInfo | None = None
    used_by: tuple[RunInfo, ...] = ()


@dataclass
class MetaStats:
    calls: int = 0  # registry calls made (inline or in a thread)
    cache_hits: int = 0  # answers served from the TTL cache
    joined: int = 0  # askers that shared another asker's call in progress

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


class MadeFile:
    """An open file that has no name any more (made, then unlinked): its descriptor is closed
    when the object goes."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int = 0) -> None:
        self.fd = fd
        self.size = size

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class Meta:
    """Asks a :class:`Registry` for metadata on behalf of the trio loop.  See the module doc."""

    def __init__(
        self,
        registry: Registry,
        *,
        alias_ttl: float = defaults.ALIAS_TTL,
        max_threads: int = DEFAULT_THREADS,
        scratch_dir: str | None = None,
    ) -> None:
        self.registry = registry
        self.alias_ttl = alias_ttl
        self.scratch_dir = scratch_dir  # where manifest.json files are made (None: the system's temp dir)
        self.inline = registry.local
        self.stats = MetaStats()
        self._limiter = trio.CapacityLimiter(max_threads)
        self._inflight: dict[Hashable, _Flight] = {}
        self._cache: dict[Hashable, Answer[Any]] = {}
        self._next_sweep = 0.0

    @property
    def limiter(self) -> trio.CapacityLimiter:
        return self._limiter

    # -- the two primitives -----------------------------------------------------------------------

    async def call(self, key: Hashable, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``: inline for a local registry, else in a worker thread, one call per
        ``key`` however many ask at once.  Nothing is cached."""
        if self.inline:
            self.stats.calls += 1
            return fn(*args)
        return cast(T, (await self._flight(key, fn, args, cache=False)).value)

    async def cached(self, key: Hashable, fn: Callable[..., T], *args: Any) -> Answer[T]:
        """Like :meth:`call`, but a non-local registry's answer is kept for ``alias_ttl`` seconds
        under ``key``.  The answer carries when it stops being current (for a local registry,
        ``alias_ttl`` from now: it is asked afresh every time)."""
        now = trio.current_time()
        if self.inline:
            self.stats.calls += 1
            return Answer(fn(*args), now + self.alias_ttl)
        hit = self._cache.get(key)
        if hit is not None:
            if now < hit.expires:
                self.stats.cache_hits += 1
                return cast(Answer[T], hit)
            del self._cache[key]
        return cast(Answer[T], await self._flight(key, fn, args, cache=True))

    async def _flight(self, key: Hashable, fn: Callable[..., Any], args: tuple[Any, ...], cache: bool) -> Answer[Any]:
        while True:
            flight = self._inflight.get(key)
            if flight is None:
                break
            self.stats.joined += 1
            await flight.done.wait()
            if flight.error is not None:
                # One exception object re-raised to every waiter: drop the leader's traceback.
                raise flight.error.with_traceback(None)
            if flight.finished:
                return Answer(flight.value, flight.expires)
            # The caller that made the call was cancelled before it ended: ask again.
        flight = _Flight()
        self._inflight[key] = flight
        try:
            self.stats.calls += 1
            value = await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            del self._inflight[key]
            flight.done.set()
        now = trio.current_time()
        flight.value, flight.expires, flight.finished = value, now + self.alias_ttl, True
        answer = Answer(value, flight.expires)
        if cache:
            self._store(key, answer)
            self._prime(key, value, answer.expires)
        return answer

    # -- the TTL cache --------------------------------------------------------------------------------

    def _store(self, key: Hashable, answer: Answer[Any]) -> None:
        old = self._cache.get(key)
        if old is None or old.expires <= answer.expires:
            self._cache[key] = answer
        now = trio.current_time()
        if now >= self._next_sweep:
            # Names asked once and never again would otherwise stay for the life of the mount.
            for k in [k for k, a in self._cache.items() if a.expires <= now]:
                del self._cache[k]
            self._next_sweep = now + self.alias_ttl

    def _prime(self, key: Hashable, value: Any, expires: float) -> None:
        """A listing also answers existence questions about what it lists: remember those too,
        so ``ls project; cat project/ds:v3/x`` asks the registry once, not twice."""
        if not isinstance(key, tuple) or not key:
            return
        kind = key[0]
        if kind == "entities":
            for entity in value:
                self._store(("entity", entity), Answer(None, expires))
        elif kind == "projects":
            entity = key[1]
            self._store(("entity", entity), Answer(None, expires))
            for project in value:
                self._store(("project", entity, project), Answer(None, expires))
        elif kind == "project_versions":
            entity, project = key[1], key[2]
            self._store(("entity", entity), Answer(None, expires))
            self._store(("project", entity, project), Answer(None, expires))
            for v in value:
                answer = Answer(v, expires)
                self._store(("resolve", Ref(v.entity, v.project, v.name, v.version)), answer)
                for alias in v.aliases:
                    self._store(("resolve", Ref(v.entity, v.project, v.name, alias)), answer)

    # -- the questions the tree asks ------------------------------------------------------------------

    async def check_entity(self, entity: str) -> None:
        """EntityNotFound unless ``entity`` exists (one cheap call; never a listing)."""
        await self.cached(("entity", entity), self.registry.check_entity, entity)

    async def check_project(self, entity: str, project: str) -> None:
        await self.cached(("project", entity, project), self.registry.check_project, entity, project)

    async def entities(self) -> Answer[list[str]]:
        return await self.cached(("entities",), self.registry.entities)

    async def projects(self, entity: str) -> Answer[list[str]]:
        return await self.cached(("projects", entity), self.registry.projects, entity)

    async def project_versions(self, entity: str, project: str) -> Answer[list[VersionInfo]]:
        return await self.cached(("project_versions", entity, project), self.registry.project_versions, entity, project)

    async def resolve(self, ref: Ref) -> Answer[VersionInfo]:
        return await self.cached(("resolve", ref), self.registry.resolve, ref)

    async def load_contents(self, version: VersionInfo) -> None:
        """Make ``list_dir``/``get_entry`` of ``version`` cheap (a remote manifest fetch): one
        call per version id however many ask; the registry keeps what it loaded."""
        if not self.registry.contents_loaded(version):
            await self.call(("contents", version.id), self.registry.load_contents, version)

    async def contents_index(self, version: VersionInfo) -> Contents | None:
        """``version``'s contents as an index on disk, the contents loaded first if they were
        not; None when the registry has none for it (a local registry without entry ids)."""
        index = self.registry.contents_index(version)
        if index is None and not self.registry.contents_loaded(version):
            await self.load_contents(version)
            index = self.registry.contents_index(version)
        return index

    async def list_dir(self, version: VersionInfo, path: str) -> list[DirEntry]:
        """The entries of the directory ``path`` of ``version``."""
        reg = self.registry
        listing: list[DirEntry] = await self._contents(version, reg.list_dir, reg.list_dir_now, path)
        return listing

    async def get_entry(self, version: VersionInfo, path: str) -> DirEntry:
        """The file or directory at ``path`` of ``version``; EntryNotFound if none."""
        reg = self.registry
        found: DirEntry = await self._contents(version, reg.get_entry, reg.get_entry_now, path)
        return found

    async def _contents(
        self,
        version: VersionInfo,
        fn: Callable[[VersionInfo, str], T],
        now: Callable[[VersionInfo, str], T | None],
        path: str,
    ) -> T:
        """``fn(version, path)``: answered inline by ``now`` (its ``_now`` form: from memory, no
        I/O, no lock waited for) once the version's contents are loaded (one load per version
        id, shared by concurrent askers)."""
        answer = now(version, path)
        if answer is None:
            await self.load_contents(version)
            answer = now(version, path)
            if answer is None:
                # Loaded and already evicted again (a registry's bounded manifest cache under
                # pressure): ask in a thread rather than reload it on the loop.
                return await self.call((fn.__name__, version.id, path), fn, version, path)
        return answer

    async def lineage(self, version: VersionInfo) -> Lineage:
        """Who logged ``version`` and who used it: one question (kept for ``alias_ttl`` like the
        namespace's).  A registry that cannot answer (a damaged lineage table, a failed call)
        leaves it unknown, logged once per asking: lineage never fails what it decorates
        (``info.json``, the version's xattrs)."""
        registry = self.registry

        def ask() -> Lineage:
            return Lineage(registry.logged_by(version), tuple(registry.used_by(version)))

        try:
            return (await self.cached(("lineage", version.id), ask)).value
        except ArtifactFSError as exc:
            log.warning("lineage of %s is unknown: %s", version.ref, exc)
            return Lineage()

    async def manifest_json(self, version: VersionInfo) -> MadeFile:
        """``version``'s manifest as W&B writes it (``manifest.json``), in an already unlinked
        temp file under ``scratch_dir`` (nothing is left behind, even by a crash).  Every entry
        walked and serialised, streaming (memory does not grow with the manifest): seconds for
        a huge manifest, so in a worker thread under this layer's limiter whatever the
        registry, one build per version however many ask."""
        await self.load_contents(version)
        registry = self.registry
        scratch = self.scratch_dir or tempfile.gettempdir()

        def build() -> MadeFile:
            fd, path = make_temp(scratch, ".tmp", os.O_RDWR)
            os.unlink(path)
            made = MadeFile(fd)
            with open(os.dup(fd), "wb") as out:
                made.size = registry.write_manifest(version, out)
            return made

        answer = await self._flight(("manifest_json", version.id), build, (), cache=False)
        made: MadeFile = answer.value
        return made
