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
* While the registry cannot answer (a server unreachable or failing: ``RegistryError``), a
  question whose answer has outlived its TTL gets that last answer again, so a training job that
  walks ``entity/project/name:vN/...`` keeps opening files it has cached.  An answer past its TTL
  is asked again in the background: its asker waits for the call ``STALE_WAIT`` (2 s) at most,
  then is served the last answer (a server that is down or slow costs it no retries); once a
  call failed, such askers are answered at once while one call at a time (a *probe*) asks the
  registry again, until one succeeds.  Such an answer counts for ``STALE_TTL`` (5 s), so that
  what the probe brings back shows soon.  "No such thing" and refused credentials are answers,
  not failures: they are raised.  A question never answered before still waits for the registry
  (and fails).

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
from .errors import ArtifactFSError, RegistryError
from .fsutil import make_temp
from .index import Contents
from .names import Ref
from .registry.base import DirEntry, Registry, RunInfo, VersionInfo

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_THREADS = 8
#: How long past its TTL an answer is kept to be served again while the registry fails.
STALE_KEPT = 3600.0
#: How long an asker that holds a last answer waits for the registry before it is served that.
STALE_WAIT = 2.0
#: How long such an answer, served again, counts as current (the kernel is told the same): short,
#: so that what a probe brings back shows soon.
STALE_TTL = 5.0


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
    stale_answers: int = 0  # answers past their TTL served again while the registry failed

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
        self._failing = False  # the registry's last answer to a cached question was a failure
        self._probing = False  # a background call is asking it again

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
        if hit is not None and now < hit.expires:
            self.stats.cache_hits += 1
            return cast(Answer[T], hit)
        if hit is not None:
            return cast(Answer[T], await self._refresh(key, fn, args, hit))
        try:
            answer = await self._flight(key, fn, args, cache=True)
        except RegistryError as exc:
            self._failed(exc)
            raise
        self._recovered()
        return cast(Answer[T], answer)

    async def _refresh(
        self, key: Hashable, fn: Callable[..., Any], args: tuple[Any, ...], last: Answer[Any]
    ) -> Answer[Any]:
        """``key`` asked again, its last answer ``last`` past its TTL.  The call runs in the
        background; the asker waits for it at most STALE_WAIT, then is served ``last`` again
        (the call's answer is kept when it comes).  While the registry fails, the asker is
        served ``last`` at once and one probe at a time asks."""
        if not self._failing:
            flight = self._inflight.get(key) or self._start(key, fn, args)
            with trio.move_on_after(STALE_WAIT):
                await flight.done.wait()
            if flight.finished:
                return Answer(flight.value, flight.expires)
            if flight.error is not None and not isinstance(flight.error, RegistryError):
                raise flight.error.with_traceback(None)  # an answer: gone, or refused
        elif key not in self._inflight and not self._probing:
            self._start(key, fn, args, probe=True)
        self.stats.stale_answers += 1
        return self._renewed(key, last)

    def _renewed(self, key: Hashable, last: Answer[Any]) -> Answer[Any]:
        """``last`` served again for a short while (STALE_TTL; the kernel is told the same)."""
        answer = Answer(last.value, trio.current_time() + min(self.alias_ttl, STALE_TTL))
        self._cache[key] = answer
        return answer

    def _failed(self, exc: RegistryError) -> None:
        if not self._failing:
            log.warning("%s: serving the last answers past --alias-ttl until the registry answers again", exc)
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.warning("the registry answers again")
        self._failing = False

    def _start(self, key: Hashable, fn: Callable[..., Any], args: tuple[Any, ...], *, probe: bool = False) -> _Flight:
        """The call ``fn(*args)`` for ``key`` as a flight run in the background (askers may
        join it or stop waiting); its answer is kept.  "No such thing" or refused credentials
        drop the last answer; a RegistryError marks the registry failing, a success ends it.
        ``probe``: the one probe of a failing registry."""
        flight = _Flight()
        self._inflight[key] = flight
        if probe:
            self._probing = True

        async def run() -> None:
            try:
                await self._lead(key, flight, fn, args, cache=True, abandon=True)
            except RegistryError as exc:
                self._failed(exc)
            except ArtifactFSError as exc:
                log.info("%s: %s", key, exc)
                self._cache.pop(key, None)
                self._recovered()
            except Exception:  # a system task must not raise
                log.exception("asking the registry %r failed", key)
            else:
                self._recovered()
            finally:
                if probe:
                    self._probing = False

        trio.lowlevel.spawn_system_task(run, name=f"artifactfs meta {key!r}")
        return flight

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
        return await self._lead(key, flight, fn, args, cache)

    async def _lead(
        self,
        key: Hashable,
        flight: _Flight,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        cache: bool,
        abandon: bool = False,
    ) -> Answer[Any]:
        """Make the call of ``flight`` (registered for ``key``), then end it for its askers.
        ``abandon``: a background call, left to its thread when the mount stops (a registry
        that is down could otherwise hold the unmount for its whole retry budget)."""
        try:
            self.stats.calls += 1
            value = await trio.to_thread.run_sync(fn, *args, limiter=self._limiter, abandon_on_cancel=abandon)
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
            # Names asked once and never again would otherwise stay for the life of the mount;
            # an answer is kept STALE_KEPT past its TTL, to be served while the registry fails.
            for k in [k for k, a in self._cache.items() if a.expires + STALE_KEPT <= now]:
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
