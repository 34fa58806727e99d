"""The registry interface: what the mount, the CLI and the API need from a backend.

A registry answers questions about entities, projects, artifact collections, versions and
aliases, and tells where an entry's bytes can be had (:class:`BlobSource`).  It never serves
bytes itself: the fetcher and the store do that, and verify them first.
"""

from __future__ import annotations

import abc
import datetime as _dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from .. import defaults
from ..errors import ArtifactNotFound, ReadOnly, RunNotFound
from ..index import Contents
from ..manifest import MD5, Entry, Manifest, write_json
from ..names import Ref
from ..sources import BlobSource


def iso_time(ns: int) -> str:
    """Nanoseconds since the epoch -> ``2026-11-27T17:35:29.123456Z`` (as W&B prints times)."""
    dt = _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class OrgInfo:
    """An organization (W&B): its display name and the entity that holds its registries (the
    ``wandb-registry-<name>`` projects); the two may differ (``Acme Corp`` / ``acme-org``)."""

    name: str
    entity: str

    def __contains__(self, name: object) -> bool:
        return name in (self.name, self.entity)


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    entity: str
    project: str
    name: str
    type: str
    description: str
    created_at_ns: int
    version_count: int


#: ``VersionInfo.state`` (and ``user.artifact.state``) of a version deleted from its registry.
DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One immutable artifact version (what W&B calls an Artifact)."""

    id: str
    entity: str
    project: str
    name: str  # the collection name, without ":vN"
    type: str
    version_index: int
    aliases: tuple[str, ...]
    digest: str
    digest_algorithm: str
    commit_hash: str
    created_at_ns: int
    updated_at_ns: int
    description: str
    metadata: dict[str, Any] = field(hash=False)
    size: int
    state: str
    file_count: int
    storage_policy_config: dict[str, Any] = field(hash=False, default_factory=dict)
    #: Set when this version is a link (a member of a linked collection, W&B's portfolio): the
    #: version it links, as ``entity/project/name:vN`` where that was logged.  None otherwise.
    source: Ref | None = None

    @property
    def version(self) -> str:
        return f"v{self.version_index}"

    @property
    def ref(self) -> Ref:
        return Ref(self.entity, self.project, self.name, self.version)

    @property
    def source_version(self) -> str:
        """The version as its source collection numbers it (its own for a version that is no link)."""
        return self.source.tag if self.source is not None and self.source.tag else self.version

    @property
    def source_qualified_name(self) -> str:
        """``entity/project/name:vN`` where the version was logged (W&B's ``source_qualified_name``;
        entity and project are empty when the reader may not see the source project, as W&B's)."""
        return str(self.source) if self.source is not None else str(self.ref)

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.entity, self.project, self.name, self.version_index)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "entity": self.entity,
            "project": self.project,
            "name": self.name,
            "qualified_name": str(self.ref),
            "type": self.type,
            "version": self.version,
            "aliases": list(self.aliases),
            "digest": self.digest,
            "digest_algorithm": self.digest_algorithm,
            "commit_hash": self.commit_hash,
            "created_at": iso_time(self.created_at_ns),
            "updated_at": iso_time(self.updated_at_ns),
            "description": self.description,
            "metadata": self.metadata,
            "size": self.size,
            "state": self.state,
            "file_count": self.file_count,
            "source": None if self.source is None else str(self.source),
            "source_version": self.source_version,
            "source_qualified_name": self.source_qualified_name,
        }


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run, as lineage names it: the run that logged a version, or one that used it.

    ``id`` is the run's unique id inside its project (W&B's GraphQL ``name``, e.g. ``3kx9p2ab``);
    ``name`` is its display name (W&B's ``displayName``), which need not be unique."""

    entity: str
    project: str
    id: str
    name: str
    job_type: str
    state: str
    created_at_ns: int
    config: dict[str, Any] = field(hash=False, default_factory=dict)

    @property
    def path(self) -> str:
        """``entity/project/id``, as W&B's ``Api().run(path)`` takes it."""
        return f"{self.entity}/{self.project}/{self.id}"

    def to_json(self) -> dict[str, Any]:
        return {
            "entity": self.entity,
            "project": self.project,
            "id": self.id,
            "name": self.name,
            "job_type": self.job_type,
            "state": self.state,
            "created_at": iso_time(self.created_at_ns),
            "config": self.config,
        }


@dataclass(frozen=True, slots=True)
class DirEntry:
    """A name inside a version directory: a file (``entry`` set) or a directory (``entry`` None)."""

    name: str
    entry: Entry | None


@dataclass(frozen=True, slots=True)
class LogResult:
    version: VersionInfo
    created: bool  # False when the content equalled the latest version's


class Registry(abc.ABC):
    """A source of artifact metadata and blobs.

    Every method may block and may be a slow network round trip, unless ``local`` says they are
    all cheap local I/O.  The mount calls a non-local registry from worker threads under a
    limiter of its own, shares one call among concurrent askers of the same key and caches
    namespace answers for ``--alias-ttl``; it never calls one on the trio loop.  Methods must be
    thread-safe.
    """

    kind: str = "registry"
    batched_gets: bool = False  # whether get_small fetches anything (the fetch engine batches then)
    #: True when every metadata call is cheap local I/O (tens of microseconds): the mount then
    #: answers inline instead of paying a thread hop.
    local: bool = False
    #: True when versions can be logged and aliases edited through this registry.
    writable: bool = False

    @property
    def spec(self) -> str:
        """The registry spec that names this registry (for logs and ``open_registry``)."""
        return self.kind

    # -- namespace ------------------------------------------------------------------------------

    @abc.abstractmethod
    def entities(self) -> list[str]:
        """The entities the mount root lists (others may still resolve by name)."""

    @abc.abstractmethod
    def projects(self, entity: str) -> list[str]: ...

    def organizations(self) -> list[OrgInfo]:
        """The organizations the signed-in user belongs to (none where the registry has none)."""
        return []

    def org_entity(self, org_or_entity: str | None, entity: str) -> str | None:
        """The entity of the organization that holds registries for a path (W&B's
        ``resolve_org_entity_name``): ``org_or_entity`` is the organization's display name or
        entity name, or None (then the one organization of ``entity``, a team's or the user's);
        ``entity`` is the user's or a team's entity.  InvalidReference when none or several
        fit.  None where the registry has no organizations: a registry path is then an ordinary
        ``entity/project`` path."""
        return None

    @abc.abstractmethod
    def check_entity(self, entity: str) -> None:
        """EntityNotFound unless ``entity`` exists: one cheap call, not a listing."""

    @abc.abstractmethod
    def check_project(self, entity: str, project: str) -> None:
        """ProjectNotFound (or EntityNotFound) unless the project exists: one cheap call."""

    @abc.abstractmethod
    def collections(self, entity: str, project: str) -> list[CollectionInfo]: ...

    @abc.abstractmethod
    def versions(self, entity: str, project: str, name: str) -> list[VersionInfo]: ...

    @abc.abstractmethod
    def project_versions(self, entity: str, project: str) -> list[VersionInfo]:
        """Every live version of every collection of a project, with its aliases: what a
        project directory lists.  A bounded number of calls, not one per collection."""

    @abc.abstractmethod
    def resolve(self, ref: Ref) -> VersionInfo:
        """The version that ``ref`` (``name:vN`` or ``name:alias``) names now."""

    def version_by_id(self, artifact_id: str) -> VersionInfo:
        """The live version whose ``id`` is ``artifact_id``; ArtifactNotFound if there is none.
        This fallback walks every listed project (one ``project_versions`` call each): a backend
        that can look an id up directly overrides it."""
        for entity in self.entities():
            for project in self.projects(entity):
                for version in self.project_versions(entity, project):
                    if version.id == artifact_id:
                        return version
        raise ArtifactNotFound(f"no artifact version with id {artifact_id!r} in the {self.kind} registry {self.spec}")

    # -- version content ------------------------------------------------------------------------

    def contents_loaded(self, version: VersionInfo) -> bool:
        """True when ``list_dir``/``get_entry``/``iter_entries`` of ``version`` are cheap now.
        Cheap itself (no I/O): the mount asks it on the trio loop."""
        return True

    def load_contents(self, version: VersionInfo) -> None:  # noqa: B027 - optional hook
        """Fetch what ``list_dir``/``get_entry`` need (a remote manifest).  May block."""

    @abc.abstractmethod
    def iter_entries(self, version: VersionInfo) -> Iterator[Entry]: ...

    @abc.abstractmethod
    def list_dir(self, version: VersionInfo, path: str) -> list[DirEntry]:
        """Children of directory ``path`` ('' is the version root), sorted by name."""

    @abc.abstractmethod
    def get_entry(self, version: VersionInfo, path: str) -> DirEntry:
        """The file or directory at ``path`` inside ``version``; EntryNotFound if none."""

    def contents_index(self, version: VersionInfo) -> Contents | None:
        """``version``'s contents as an index on disk (:class:`artifactfs.index.Contents`: a
        remote manifest's index file when it is open, a local registry's own rows), else None.
        No waiting: asked on the trio loop.  A mount then makes content nodes from it on demand
        instead of holding one per entry (see tree.py)."""
        return None

    def prepare_mount(self) -> None:  # noqa: B027 - optional hook
        """Bring what a mount reads up to date before it serves (a local registry made before
        entry ids gets them).  May write and take seconds: the daemon calls it once, at start."""

    def list_dir_now(self, version: VersionInfo, path: str) -> list[DirEntry] | None:
        """``list_dir``, if it can be answered at once (no I/O, no wait for a lock another
        thread may hold); None when it cannot (contents not loaded).  Asked on the trio loop.
        This default trusts :meth:`contents_loaded`; a backend whose loaded contents another
        thread may evict between the two calls answers from one look at its memory instead."""
        return self.list_dir(version, path) if self.contents_loaded(version) else None

    def get_entry_now(self, version: VersionInfo, path: str) -> DirEntry | None:
        """``get_entry`` answered at once, or None: as :meth:`list_dir_now`."""
        return self.get_entry(version, path) if self.contents_loaded(version) else None

    def local_path(self, entry: Entry) -> str | None:
        """Where ``entry``'s bytes already lie on this machine, if the registry keeps them in a
        file that may be verified and served in place.  Pure: no I/O (asked on the trio loop)."""
        return None

    @abc.abstractmethod
    def blob_source(self, version: VersionInfo, entry: Entry) -> BlobSource:
        """Where ``entry``'s bytes can be had.  May block (it may ask a server for a URL): the
        fetcher calls it in a worker thread, and only after a cache miss."""

    def get_small(
        self, version: VersionInfo, entries: list[Entry], concurrency: int, idle: Callable[[], None] | None = None
    ) -> Iterator[tuple[Entry, bytes | None]]:
        """For the fetch engine: the bytes of small ``entries`` fetched many at once on this
        thread (a remote backend: plain GETs of presigned URLs, :func:`artifactfs.transfer.get_many`),
        each yielded as it arrives, unverified (the store verifies them).  ``None`` for an
        entry not fetched this way or whose GET failed: the engine fetches it through
        :meth:`blob_source`, whose path owns retries and fresh URLs.  May block: called in a
        worker thread; the caller consumes it to the end.  ``idle``: called whenever it is about
        to wait for the network.  Default: none fetched here."""
        for entry in entries:
            yield entry, None

    def prepare_sources(self, version: VersionInfo, entries: list[Entry]) -> None:  # noqa: B027 - optional hook
        """Ask ahead for what :meth:`blob_source` of these entries will need (a remote backend:
        their download URLs, in large pages), so that the fetches that follow find it ready.
        A hint: it may do nothing, and errors are the fetches' to report.  May block: the fetch
        engine calls it in a worker thread."""

    def manifest(self, version: VersionInfo) -> Manifest:
        manifest = Manifest(storage_policy_config=dict(version.storage_policy_config))
        for entry in self.iter_entries(version):
            manifest.entries[entry.path] = entry
        return manifest

    def write_manifest(self, version: VersionInfo, out: IO[bytes]) -> int:
        """:meth:`manifest`'s JSON (``Manifest.dumps``, the same bytes) streamed into ``out``,
        the entries never all in memory; the bytes written.  May block."""
        return write_json(out, self.iter_entries(version), storage_policy_config=version.storage_policy_config)

    # -- writes (a read-only registry refuses them with a message that names the limit) -------

    def _refuse(self, what: str) -> ReadOnly:
        return ReadOnly(f"{what}: the {self.kind} registry {self.spec} is read-only here")

    def log_files(
        self,
        files: Iterable[tuple[str, str]],
        ref: Ref,
        *,
        type: str,
        aliases: Iterable[str] = (),
        description: str = "",
        metadata: dict[str, Any] | None = None,
        digest_algorithm: str = MD5,
        workers: int | None = None,
        references: Iterable[Entry] = (),
        run_id: str | None = None,
    ) -> LogResult:
        """Log ``(entry path, local file)`` pairs and reference entries as a new version;
        ``run_id`` names the run that logs it (see :meth:`logged_by`)."""
        raise self._refuse("logging a new version")

    def add_alias(self, ref: Ref, alias: str) -> VersionInfo:
        raise self._refuse("adding an alias")

    def remove_alias(self, ref: Ref, alias: str) -> VersionInfo:
        raise self._refuse("removing an alias")

    def update(
        self, ref: Ref, *, description: str | None = None, metadata: dict[str, Any] | None = None
    ) -> VersionInfo:
        """Change a version's description and/or metadata (its content never changes)."""
        raise self._refuse("editing a version")

    def delete(self, ref: Ref, *, delete_aliases: bool = False) -> VersionInfo:
        raise self._refuse("deleting a version")

    def link(self, ref: Ref, target: str, aliases: Iterable[str] = ()) -> VersionInfo:
        """Link ``ref``'s version into the collection ``target`` (``entity/project/name``; W&B
        calls a collection of links a portfolio) with ``aliases``; the version as the target
        collection numbers it.  The content is not copied: the link names the same version."""
        raise self._refuse("linking a version")

    def gc(self, *, grace: float = defaults.GC_GRACE) -> tuple[int, int, int]:
        """``(versions purged, blobs removed, bytes freed)``."""
        raise self._refuse("garbage collection")

    # -- lineage (a registry that records no runs knows none) -----------------------------------

    def logged_by(self, version: VersionInfo) -> RunInfo | None:
        """The run that logged ``version``, or None when none is known."""
        return None

    def used_by(self, version: VersionInfo) -> list[RunInfo]:
        """The runs that used ``version`` as an input (none known: an empty list)."""
        return []

    def run_outputs(self, run: RunInfo) -> list[VersionInfo]:
        """The live versions ``run`` logged, in the order it logged them."""
        return []

    def run_inputs(self, run: RunInfo) -> list[VersionInfo]:
        """The live versions ``run`` used, in the order it first used them."""
        return []

    def runs(self, entity: str, project: str) -> list[RunInfo]:
        """The runs of a project, oldest first."""
        return []

    def run(self, entity: str, project: str, run_id: str) -> RunInfo:
        """The run ``run_id`` of ``entity/project``; RunNotFound if there is none."""
        raise RunNotFound(f"run {entity}/{project}/{run_id} not found")

    def default_entity(self) -> str | None:
        """The entity a path without one falls back to, after the current run and
        ``$WANDB_ENTITY`` (W&B: the signed-in user's default entity); None when there is none.
        May block (a backend may have to ask its server)."""
        return None

    # -- runs (writes: refused by a registry that cannot record them) ----------------------------

    def create_run(
        self,
        entity: str,
        project: str,
        *,
        name: str | None = None,
        job_type: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> RunInfo:
        """Start a run (state ``running``) in ``entity/project``, creating both if need be."""
        raise self._refuse("creating a run")

    def finish_run(self, run: RunInfo, state: str = "finished") -> None:
        """End ``run`` with ``state`` (``finished``, ``failed`` or ``crashed``) and store its
        ``config`` as it is now.  A run that has already ended keeps its state."""
        raise self._refuse("finishing a run")

    def record_use(self, run_id: str, version: VersionInfo) -> None:
        """Record that the run ``run_id`` used ``version`` as an input (once per run and version)."""
        raise self._refuse("recording an artifact's use")

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
