"""The local registry: SQLite metadata plus a content-addressed blob store in one directory.

Layout::

    <root>/registry.sqlite              entities, projects, collections, versions, aliases, entries,
                                        runs and lineage
    <root>/objects/md5/<hex[:2]>/<hex[2:]>      blobs, named by the hex of their MD5
    <root>/objects/xxh128/...                   blobs of XXH128 artifacts
    <root>/objects/tmp/                         blobs being written (renamed into place when whole)

Writes are atomic: a blob is streamed into ``objects/tmp`` while it is hashed and renamed into
place only when complete, so a blob path always holds the bytes its name promises (unless the
disk itself corrupts them; readers verify anyway).  A version and its entries and aliases are
committed in one ``BEGIN IMMEDIATE`` transaction, so concurrent writers get distinct version
numbers and a killed writer leaves no partial version.

Directory listings of a version come from indexed rows (``entries`` and ``dirs`` keyed by
``(version, parent, name)``), never from a whole manifest in memory.

Runs and lineage (``runs``, ``version_created_by``, ``version_used_by``; ``PRAGMA user_version``
1) and links (``portfolios``, ``version_links``; user_version 2) came after the first schema.
Opening a registry writes nothing, so a registry made before them gets their tables from the
first write that needs them (:meth:`LocalRegistry._write` with ``lineage=True`` or
``links=True``, inside that write's transaction; user_version says which exist), and until then
every read of lineage answers "none known" and every version "no source".

A link (:meth:`LocalRegistry.link`, W&B's ``Artifact.link``) is a version of a linked
collection (a portfolio, which numbers its own members) whose content is the source version's:
its ``versions`` row and its ``entries`` and ``dirs`` rows are copies of the source's, made in
the link's transaction, and ``version_links`` names the source.  Copying the rows (one
``INSERT ... SELECT`` per table, no blob is touched) keeps every read, listing and gc query
exactly as it is for any version, and lets the source's rows be purged without the link's going
with them; the price is the rows' size again per link (about 100 bytes an entry).
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import functools
import getpass
import inspect
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..checks import FAIL, OK, Check
from ..defaults import GC_GRACE, is_builtin_registry
from ..digests import b64_digest, new_hasher
from ..errors import (
    ArtifactFSError,
    ArtifactNotFound,
    Conflict,
    EntityNotFound,
    EntryNotFound,
    InvalidArgument,
    InvalidMetadata,
    InvalidPath,
    InvalidReference,
    InvalidReferenceEntry,
    ManifestError,
    NotFound,
    ProjectNotFound,
    RegistryError,
    RunNotFound,
    SourceError,
)
from ..fsutil import remove_stale, syncfs, walk_files
from ..index import Child, Listing
from ..manifest import ALGORITHMS, MANIFEST_ALGORITHM, MD5, Entry, artifact_digest, hex_from_b64
from ..names import LATEST, Ref, check_alias, check_entry_path, check_name, json_object_text, split_dir
from ..references import reference_source
from ..sources import BlobSource
from .base import CollectionInfo, DirEntry, LogResult, Registry, RunInfo, VersionInfo

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CHUNK = 1 << 20
_TMP_MAX_AGE = 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entities (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS projects (
    id INTEGER PRIMARY KEY, entity_id INTEGER NOT NULL REFERENCES entities(id),
    name TEXT NOT NULL, created_at INTEGER NOT NULL, UNIQUE (entity_id, name));
CREATE TABLE IF NOT EXISTS collections (
    id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL, type TEXT NOT NULL, description TEXT NOT NULL DEFAULT '',
    next_index INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL,
    UNIQUE (project_id, name));
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, collection_id INTEGER NOT NULL REFERENCES collections(id),
    version_index INTEGER NOT NULL, artifact_id TEXT NOT NULL UNIQUE,
    digest TEXT NOT NULL, digest_algorithm TEXT NOT NULL, commit_hash TEXT NOT NULL,
    description TEXT NOT NULL, metadata TEXT NOT NULL, state TEXT NOT NULL,
    size INTEGER NOT NULL, file_count INTEGER NOT NULL, storage_policy_config TEXT NOT NULL,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    UNIQUE (collection_id, version_index));
CREATE TABLE IF NOT EXISTS aliases (
    collection_id INTEGER NOT NULL REFERENCES collections(id), alias TEXT NOT NULL,
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    PRIMARY KEY (collection_id, alias));
CREATE INDEX IF NOT EXISTS aliases_version ON aliases (version_id);
CREATE TABLE IF NOT EXISTS entries (
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    parent TEXT NOT NULL, name TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL,
    ref TEXT, birth_artifact_id TEXT, extra TEXT, id INTEGER,
    PRIMARY KEY (version_id, parent, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dirs (
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    parent TEXT NOT NULL, name TEXT NOT NULL, id INTEGER,
    PRIMARY KEY (version_id, parent, name)) WITHOUT ROWID;
"""

# Entry ids (meta ``entry_ids``): every file and directory of a version has an integer ``id``,
# unique within the version (files 1..F, then directories), so that a mount makes a node's
# inode from it and answers lookups, listings and stat from these rows, holding a bounded
# working set (see tree.py).  A registry made before them gets them from
# :meth:`LocalRegistry.add_entry_ids` (the mount's start, or the first write that adds rows),
# in one transaction.  The ``id`` columns are appended by ``ALTER TABLE``, as an older
# registry gets them.
_ENTRY_ID_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS entries_id ON entries (version_id, id);
CREATE UNIQUE INDEX IF NOT EXISTS dirs_id ON dirs (version_id, id);
"""

#: ``PRAGMA user_version`` of a registry whose lineage tables exist (0: made before them).
LINEAGE_VERSION = 1
#: ``PRAGMA user_version`` of a registry whose link tables exist (as well as the lineage tables).
LINKS_VERSION = 2
#: Run ids as W&B makes them: 8 characters of [a-z0-9].
RUN_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
RUN_STATES = ("running", "finished", "failed", "crashed")

# Run ids are unique in the registry (W&B: within a project); the project is the run's own.  A
# version has one creating run, or several when runs logged identical content (the version is
# not logged again: ``logged_by`` is the first of them); ``used_by`` keeps a run's first use.
_LINEAGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, project_id INTEGER NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL, job_type TEXT NOT NULL, state TEXT NOT NULL, config TEXT NOT NULL,
    created_at INTEGER NOT NULL, finished_at INTEGER);
CREATE INDEX IF NOT EXISTS runs_project ON runs (project_id, created_at);
CREATE TABLE IF NOT EXISTS version_created_by (
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    run_id TEXT NOT NULL REFERENCES runs(id), logged_at INTEGER NOT NULL,
    PRIMARY KEY (version_id, run_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS version_created_by_run ON version_created_by (run_id);
CREATE TABLE IF NOT EXISTS version_used_by (
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    run_id TEXT NOT NULL REFERENCES runs(id), used_at INTEGER NOT NULL,
    PRIMARY KEY (version_id, run_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS version_used_by_run ON version_used_by (run_id);
"""

# A portfolio (W&B's linked collection) takes links and nothing else; a version in
# ``version_links`` is a link, a membership of its portfolio whose content is the source's.
_LINKS_SCHEMA = """
CREATE TABLE IF NOT EXISTS portfolios (
    collection_id INTEGER PRIMARY KEY REFERENCES collections(id), created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS version_links (
    version_id INTEGER PRIMARY KEY REFERENCES versions(id) ON DELETE CASCADE,
    source_version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    linked_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS version_links_source ON version_links (source_version_id);
"""

#: The tables each ``PRAGMA user_version`` brings, in order (each level has the ones below it).
_MIGRATIONS = (
    (LINEAGE_VERSION, _LINEAGE_SCHEMA, "the runs and lineage tables"),
    (LINKS_VERSION, _LINKS_SCHEMA, "the link tables"),
)

_RUN_COLUMNS = "r.id, e.name, p.name, r.name, r.job_type, r.state, r.created_at, r.config"
_RUN_FROM = "FROM runs r JOIN projects p ON r.project_id = p.id JOIN entities e ON p.entity_id = e.id"

_VERSION_COLUMNS = """
    v.id, v.artifact_id, e.name, p.name, c.name, c.type, v.version_index, v.digest,
    v.digest_algorithm, v.commit_hash, v.created_at, v.updated_at, v.description, v.metadata,
    v.size, v.state, v.file_count, v.storage_policy_config
"""
_VERSION_FROM = """
    FROM versions v JOIN collections c ON v.collection_id = c.id
    JOIN projects p ON c.project_id = p.id JOIN entities e ON p.entity_id = e.id
"""
# Every version read, with the row id of its source as the last column (NULL: not a link).
_SELECT_VERSIONS = f"""SELECT {_VERSION_COLUMNS}, lk.source_version_id {_VERSION_FROM}
    LEFT JOIN version_links lk ON lk.version_id = v.id"""
# The same on a registry that has no link tables yet.
_SELECT_VERSIONS_UNLINKED = f"SELECT {_VERSION_COLUMNS}, NULL {_VERSION_FROM}"


def now_ns() -> int:
    return time.time_ns()


@dataclass(frozen=True, slots=True)
class LoggedFile:
    path: str
    digest: str
    size: int
    ref: str | None = None  # reference entries: the URI of the bytes, which stay there
    extra: dict[str, Any] | None = None  # None: the artifact's default (``alg`` or nothing)


_T = TypeVar("_T")


def _translate_sqlite_errors(cls: type[_T]) -> type[_T]:
    """Class decorator: every public method of ``cls`` turns a ``sqlite3.Error`` (a corrupt or
    vanished database, a disk error, a lock held too long) into
    :class:`~artifactfs.errors.RegistryError`, so nothing above the registry sees sqlite3.
    Generator methods are wrapped so that errors raised while they are iterated are caught too.
    Nested calls translate once: a RegistryError passes through the outer wrapper untouched."""
    for name, value in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(value):
            setattr(cls, name, _translating(value))
    return cls


def _database_error(registry: Any, exc: sqlite3.Error) -> RegistryError:
    return RegistryError(f"registry database {registry.db_path}: {exc}")


def _translating(fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(self, *args, **kwargs)
            except sqlite3.Error as exc:
                raise _database_error(self, exc) from exc

        return generator

    @functools.wraps(fn)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise _database_error(self, exc) from exc

    return method


@_translate_sqlite_errors
class LocalRegistry(Registry):
    """A registry directory on this machine.  Safe for several processes at once."""

    kind = "local"
    local = True
    writable = True

    def __init__(self, root: str | os.PathLike[str], *, create: bool = False) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.db_path = os.path.join(self.root, "registry.sqlite")
        self.objects = os.path.join(self.root, "objects")
        if not os.path.exists(self.db_path):
            if not create:
                raise RegistryError(f"no registry at {self.root} (registry.sqlite is missing)")
            os.makedirs(os.path.join(self.objects, "tmp"), exist_ok=True)
        self._local = threading.local()
        self._pks: dict[str, int] = {}  # artifact id -> versions row id
        self._blob_dirs: set[str] = set()  # objects/<alg>/<xx> directories known to exist
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._read_only = False
        self._level = 0  # the PRAGMA user_version known to be reached (it never goes down)
        self._sources: dict[int, Ref] = {}  # versions row id -> its ref (never changes)
        self._ids = False  # every entry has an id (meta ``entry_ids``; it never goes away)
        self._contents: dict[int, LocalContents] = {}  # versions row id -> its contents for a mount
        try:
            self._init_schema()
        except sqlite3.Error as exc:
            raise RegistryError(f"registry database {self.db_path} is unusable: {exc}") from exc

    # -- connections ----------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._connect()
            except sqlite3.Error as exc:
                raise RegistryError(f"cannot open registry database {self.db_path}: {exc}") from exc
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _connect(self) -> sqlite3.Connection:
        if not self._read_only:
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA busy_timeout = 60000")
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA schema_version").fetchall()
                return conn
            except sqlite3.OperationalError as exc:
                conn.close()
                if os.access(self.root, os.W_OK) and os.access(self.db_path, os.W_OK):
                    raise
                # A registry we may not write (another user's, a read-only volume): WAL readers
                # need to write its -shm file, so read it as an immutable snapshot instead.
                log.warning("registry %s is read-only here: reading it as a snapshot (%s)", self.root, exc)
                self._read_only = True
        uri = "file:" + urllib.parse.quote(self.db_path) + "?mode=ro&immutable=1"
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)

    @contextlib.contextmanager
    def _write(self, *, lineage: bool = False, links: bool = False, ids: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction: ``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK``).
        ``lineage``/``links``: the transaction writes runs or lineage / links, so their tables
        are created first if this registry predates them (in the same transaction, so concurrent
        writers migrate once and a failed write leaves the registry as it was).  ``ids``: it
        adds entries, so every entry gets its id first if the registry predates them."""
        need = LINKS_VERSION if links else LINEAGE_VERSION if lineage else 0
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise RegistryError(f"registry {self.root} is busy or unwritable: {exc}") from exc
        try:
            migrated = self._migrate(db, need) if need > self._level else []
            if ids and not self._ids:
                started = time.monotonic()
                numbered = _number_entries(db)
                if numbered is not None:
                    migrated.append(f"ids to its {numbered:,} entries ({time.monotonic() - started:.1f} s)")
            yield db
            db.execute("COMMIT")
            self._level = max(self._level, need)
            self._ids = self._ids or ids
            for what in migrated:
                log.info("registry %s: added %s", self.root, what)
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise RegistryError(f"registry {self.root}: {exc}") from exc
            raise

    @staticmethod
    def _migrate(db: sqlite3.Connection, need: int) -> list[str]:
        """Create the tables of every ``user_version`` level up to ``need`` that the registry
        has not reached.  Idempotent; runs inside the caller's write transaction.  What it
        added, for the log."""
        level = int(db.execute("PRAGMA user_version").fetchone()[0])
        added = []
        for version, schema, what in _MIGRATIONS:
            if level < version <= need:
                for statement in schema.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {version}")
                added.append(what)
        return added

    def _reached(self, level: int) -> bool:
        """Whether the tables of ``user_version`` ``level`` exist (another process may have made
        them since we looked: one pragma read until they do, nothing after).  Inside a write
        transaction the answer is that transaction's and is not kept: its migration may still
        roll back, and other threads' connections do not see it yet."""
        if self._level >= level:
            return True
        db = self._db()
        found = int(db.execute("PRAGMA user_version").fetchone()[0])
        if not db.in_transaction:
            self._level = max(self._level, found)
        return found >= level

    def _has_lineage(self) -> bool:
        return self._reached(LINEAGE_VERSION)

    def _has_links(self) -> bool:
        return self._reached(LINKS_VERSION)

    def _has_ids(self) -> bool:
        """Whether every entry has its id (another process may have added them since we looked:
        one read of ``meta`` until they are there, nothing after)."""
        if self._ids:
            return True
        db = self._db()
        found = db.execute("SELECT 1 FROM meta WHERE key = 'entry_ids'").fetchone() is not None
        if found and not db.in_transaction:
            self._ids = True
        return found

    def add_entry_ids(self) -> bool:
        """Give every entry and directory of a registry made before entry ids its id, in one
        transaction (a crash leaves the registry as it was; seconds for millions of entries).
        False when there was nothing to do; RegistryError when the registry cannot be written."""
        if self._has_ids():
            return False
        if self._read_only:
            raise RegistryError(f"registry {self.root} is read-only here")
        with self._write(ids=True):
            pass
        return True

    def prepare_mount(self) -> None:
        if self._has_ids():
            return
        try:
            self.add_entry_ids()
        except RegistryError as exc:
            log.warning(
                "registry %s has no entry ids and cannot be given them (%s): a mount keeps a node per "
                "entry the kernel holds (memory grows with the entries walked)",
                self.root,
                exc,
            )

    def contents_index(self, version: VersionInfo) -> LocalContents | None:
        """``version``'s rows as a mount's index (:class:`LocalContents`), or None when its
        entries have no ids (a registry that could not be given them)."""
        pk = self._pk_of(version)
        contents = self._contents.get(pk)
        if contents is None:
            if not self._has_ids():
                return None
            db = self._db()
            for table in ("entries", "dirs"):
                # Rows without an id (added by an older artifactfs after the upgrade): served as before.
                if db.execute(f"SELECT 1 FROM {table} WHERE version_id = ? AND id IS NULL", (pk,)).fetchone():
                    return None
            contents = self._contents[pk] = LocalContents(self, pk, version.file_count)
        return contents

    def _select_versions(self) -> str:
        """``SELECT <version columns, source row id> FROM ...`` for this registry's schema."""
        return _SELECT_VERSIONS if self._has_links() else _SELECT_VERSIONS_UNLINKED

    def _init_schema(self) -> None:
        try:
            row = self._db().execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except (sqlite3.OperationalError, RegistryError):
            row = None  # a new database: create the schema below
        if row is not None:
            if row[0] != str(SCHEMA_VERSION):
                raise RegistryError(f"registry {self.root} has schema {row[0]}, expected {SCHEMA_VERSION}")
            return  # opening an existing registry writes nothing
        self._db().execute("PRAGMA journal_mode = WAL")  # persistent: set once, at creation
        with self._write(lineage=True) as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            _number_entries(db)  # none yet: the id indexes and the mark
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise RegistryError(f"registry {self.root} has schema {row[0]}, expected {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # -- reads ----------------------------------------------------------------------------------

    def entities(self) -> list[str]:
        return [r[0] for r in self._db().execute("SELECT name FROM entities ORDER BY name")]

    def _entity_id(self, entity: str) -> int:
        row = self._db().execute("SELECT id FROM entities WHERE name = ?", (entity,)).fetchone()
        if row is None:
            raise EntityNotFound(f"entity {entity!r} not found")
        return int(row[0])

    def _project_id(self, entity: str, project: str) -> int:
        eid = self._entity_id(entity)
        row = self._db().execute("SELECT id FROM projects WHERE entity_id = ? AND name = ?", (eid, project)).fetchone()
        if row is None:
            raise ProjectNotFound(f"project {entity}/{project} not found")
        return int(row[0])

    def _collection_id(self, entity: str, project: str, name: str) -> int:
        pid = self._project_id(entity, project)
        row = self._db().execute("SELECT id FROM collections WHERE project_id = ? AND name = ?", (pid, name)).fetchone()
        if row is None:
            raise ArtifactNotFound(f"artifact {entity}/{project}/{name} not found")
        return int(row[0])

    @property
    def spec(self) -> str:
        return self.root

    def check_entity(self, entity: str) -> None:
        self._entity_id(entity)

    def check_project(self, entity: str, project: str) -> None:
        self._project_id(entity, project)

    def project_versions(self, entity: str, project: str) -> list[VersionInfo]:
        pid = self._project_id(entity, project)
        rows = (
            self._db()
            .execute(
                f"{self._select_versions()} "
                "WHERE c.project_id = ? AND v.state != 'DELETED' ORDER BY c.name, v.version_index",
                (pid,),
            )
            .fetchall()
        )
        # Every alias of the project in one query, not one per version: a project listing is
        # asked inline, on the mount's loop.
        aliases: dict[int, list[str]] = {}
        for version_pk, alias in self._db().execute(
            "SELECT a.version_id, a.alias FROM aliases a JOIN collections c ON a.collection_id = c.id "
            "WHERE c.project_id = ? ORDER BY a.alias = 'latest' DESC, a.alias",
            (pid,),
        ):
            aliases.setdefault(version_pk, []).append(alias)
        return [self._version_from_row(r, tuple(aliases.get(r[0], ()))) for r in rows]

    def projects(self, entity: str) -> list[str]:
        eid = self._entity_id(entity)
        rows = self._db().execute("SELECT name FROM projects WHERE entity_id = ? ORDER BY name", (eid,))
        return [r[0] for r in rows]

    def collections(self, entity: str, project: str) -> list[CollectionInfo]:
        pid = self._project_id(entity, project)
        rows = self._db().execute(
            """SELECT c.name, c.type, c.description, c.created_at,
                      (SELECT count(*) FROM versions v WHERE v.collection_id = c.id AND v.state != 'DELETED')
               FROM collections c WHERE c.project_id = ? ORDER BY c.name""",
            (pid,),
        )
        return [CollectionInfo(entity, project, r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def _aliases_of(self, version_pk: int) -> tuple[str, ...]:
        rows = self._db().execute(
            "SELECT alias FROM aliases WHERE version_id = ? ORDER BY alias = 'latest' DESC, alias",
            (version_pk,),
        )
        return tuple(r[0] for r in rows)

    def _version_from_row(self, row: Sequence[Any], aliases: tuple[str, ...] | None = None) -> VersionInfo:
        self._pks[row[1]] = row[0]
        return VersionInfo(
            id=row[1],
            entity=row[2],
            project=row[3],
            name=row[4],
            type=row[5],
            version_index=row[6],
            aliases=self._aliases_of(row[0]) if aliases is None else aliases,
            digest=row[7],
            digest_algorithm=row[8],
            commit_hash=row[9],
            created_at_ns=row[10],
            updated_at_ns=row[11],
            description=row[12],
            metadata=json.loads(row[13]),
            size=row[14],
            state=row[15],
            file_count=row[16],
            storage_policy_config=json.loads(row[17]),
            source=None if row[18] is None else self._ref_of_pk(int(row[18])),
        )

    def _ref_of_pk(self, pk: int) -> Ref:
        """``entity/project/name:vN`` of the versions row ``pk`` (deleted or not; names and
        indexes never change, so the answer is kept)."""
        ref = self._sources.get(pk)
        if ref is None:
            row = (
                self._db()
                .execute(f"SELECT e.name, p.name, c.name, v.version_index {_VERSION_FROM} WHERE v.id = ?", (pk,))
                .fetchone()
            )
            if row is None:
                raise ArtifactNotFound(f"artifact version {pk} vanished")
            ref = self._sources[pk] = Ref(row[0], row[1], row[2], f"v{row[3]}")
        return ref

    def versions(self, entity: str, project: str, name: str) -> list[VersionInfo]:
        cid = self._collection_id(entity, project, name)
        rows = (
            self._db()
            .execute(
                f"{self._select_versions()} "
                "WHERE v.collection_id = ? AND v.state != 'DELETED' ORDER BY v.version_index",
                (cid,),
            )
            .fetchall()
        )
        return [self._version_from_row(r) for r in rows]

    def _version_pk(self, ref: Ref) -> int:
        if ref.tag is None:
            raise InvalidReference(f"artifact reference {ref} names no version or alias")
        cid = self._collection_id(ref.entity, ref.project, ref.name)
        index = ref.version_index
        db = self._db()
        if index is not None:
            row = db.execute(
                "SELECT id FROM versions WHERE collection_id = ? AND version_index = ? AND state != 'DELETED'",
                (cid, index),
            ).fetchone()
            if row is None:
                raise ArtifactNotFound(f"artifact {ref} not found: no version {ref.tag}")
        else:
            row = db.execute(
                "SELECT version_id FROM aliases WHERE collection_id = ? AND alias = ?", (cid, ref.tag)
            ).fetchone()
            if row is None:
                raise ArtifactNotFound(f"artifact {ref} not found: no alias {ref.tag!r}")
        return int(row[0])

    def _version_by_pk(self, pk: int) -> VersionInfo:
        row = self._db().execute(f"{self._select_versions()} WHERE v.id = ?", (pk,)).fetchone()
        if row is None:
            raise ArtifactNotFound(f"artifact version {pk} vanished")
        return self._version_from_row(row)

    def resolve(self, ref: Ref) -> VersionInfo:
        return self._version_by_pk(self._version_pk(ref))

    def version_by_id(self, artifact_id: str) -> VersionInfo:
        """The live version whose ``id`` is ``artifact_id`` (one lookup in the unique index of
        ``versions.artifact_id``); ArtifactNotFound for an unknown or deleted one.  A link has
        an id of its own here (W&B gives a link its source's id)."""
        row = (
            self._db()
            .execute(f"{self._select_versions()} WHERE v.artifact_id = ? AND v.state != 'DELETED'", (artifact_id,))
            .fetchone()
        )
        if row is None:
            raise ArtifactNotFound(f"no artifact version with id {artifact_id!r} in registry {self.root}")
        return self._version_from_row(row)

    def _source_pk(self, pk: int) -> int | None:
        """The row id of the version that the version ``pk`` links, or None when it is no link."""
        if not self._has_links():
            return None
        row = self._db().execute("SELECT source_version_id FROM version_links WHERE version_id = ?", (pk,)).fetchone()
        return None if row is None else int(row[0])

    def _is_portfolio(self, cid: int) -> bool:
        if not self._has_links():
            return False
        return self._db().execute("SELECT 1 FROM portfolios WHERE collection_id = ?", (cid,)).fetchone() is not None

    def _artifact_pks(self, pk: int, *, live: bool = True) -> list[int]:
        """The rows that are one artifact as W&B sees it: the logged version ``pk`` (or the
        source of the link ``pk``) first, then its links, oldest first (only live ones with
        ``live``)."""
        source = self._source_pk(pk) or pk
        if not self._has_links():
            return [source]
        rows = self._db().execute(
            "SELECT l.version_id FROM version_links l JOIN versions v ON l.version_id = v.id "
            "WHERE l.source_version_id = ? AND (v.state != 'DELETED' OR NOT ?) ORDER BY l.version_id",
            (source, live),
        )
        return [source, *(int(r[0]) for r in rows)]

    def aliases(self, entity: str, project: str) -> dict[tuple[str, str], int]:
        """Every alias of a project: ``(collection, alias) -> version index``."""
        pid = self._project_id(entity, project)
        rows = self._db().execute(
            """SELECT c.name, a.alias, v.version_index FROM aliases a
               JOIN collections c ON a.collection_id = c.id JOIN versions v ON a.version_id = v.id
               WHERE c.project_id = ?""",
            (pid,),
        )
        return {(r[0], r[1]): r[2] for r in rows}

    def _pk_of(self, version: VersionInfo) -> int:
        # Row ids never come back (AUTOINCREMENT), so a remembered id -> row mapping stays right
        # even after the version is deleted: its entries are gone and lookups find nothing.
        pk = self._pks.get(version.id)
        return pk if pk is not None else self._version_pk(version.ref)

    @staticmethod
    def _entry_from_row(parent: str, row: Sequence[Any]) -> Entry:
        # Rows are ours, but a hand-edited or corrupt database must not smuggle "../" into a
        # path that download() joins onto a directory or the mount shows as a name.
        path = check_entry_path(f"{parent}/{row[0]}" if parent else row[0])
        return Entry(path, row[1], row[2], row[3], row[4], json.loads(row[5]) if row[5] else {})

    def iter_entries(self, version: VersionInfo) -> Iterator[Entry]:
        pk = self._pk_of(version)
        rows = self._db().execute(
            "SELECT parent, name, digest, size, ref, birth_artifact_id, extra FROM entries WHERE version_id = ?",
            (pk,),
        )
        for row in rows:
            yield self._entry_from_row(row[0], row[1:])

    def list_dir(self, version: VersionInfo, path: str) -> list[DirEntry]:
        pk = self._pk_of(version)
        db = self._db()
        if path and not (_is_lookup_path(path) and self._is_dir(pk, path)):
            raise EntryNotFound(f"{version.ref}: no directory {path!r}")
        out = [
            DirEntry(r[0], None)
            for r in db.execute("SELECT name FROM dirs WHERE version_id = ? AND parent = ?", (pk, path))
        ]
        out.extend(
            DirEntry(r[0], self._entry_from_row(path, r))
            for r in db.execute(
                "SELECT name, digest, size, ref, birth_artifact_id, extra FROM entries "
                "WHERE version_id = ? AND parent = ?",
                (pk, path),
            )
        )
        out.sort(key=lambda d: d.name)
        return out

    def _is_dir(self, pk: int, path: str) -> bool:
        parent, name = split_dir(path)
        row = (
            self._db()
            .execute("SELECT 1 FROM dirs WHERE version_id = ? AND parent = ? AND name = ?", (pk, parent, name))
            .fetchone()
        )
        return row is not None

    def get_entry(self, version: VersionInfo, path: str) -> DirEntry:
        pk = self._pk_of(version)
        if path == "":
            return DirEntry("", None)
        if not _is_lookup_path(path):  # "/a" would otherwise find "a"
            raise EntryNotFound(f"{version.ref}: no entry {path!r}")
        parent, name = split_dir(path)
        row = (
            self._db()
            .execute(
                "SELECT name, digest, size, ref, birth_artifact_id, extra FROM entries "
                "WHERE version_id = ? AND parent = ? AND name = ?",
                (pk, parent, name),
            )
            .fetchone()
        )
        if row is not None:
            return DirEntry(name, self._entry_from_row(parent, row))
        if self._is_dir(pk, path):
            return DirEntry(name, None)
        raise EntryNotFound(f"{version.ref}: no entry {path!r}")

    def blob_path(self, alg: str, digest: str) -> str:
        hexd = hex_from_b64(digest)
        return os.path.join(self.objects, alg.lower(), hexd[:2], hexd[2:])

    def local_path(self, entry: Entry) -> str | None:
        return None if entry.ref is not None else self.blob_path(entry.alg, entry.digest)

    def blob_source(self, version: VersionInfo, entry: Entry) -> BlobSource:
        if entry.ref is not None:
            return reference_source(entry)
        return BlobSource(f"{version.ref}/{entry.path}", local_path=self.blob_path(entry.alg, entry.digest))

    # -- writes ---------------------------------------------------------------------------------

    def _tmp_dir(self) -> str:
        path = os.path.join(self.objects, "tmp")
        os.makedirs(path, exist_ok=True)
        return path

    def _clean_tmp(self) -> None:
        remove_stale(self._tmp_dir(), _TMP_MAX_AGE)

    def store_file(self, src: str, alg: str = MD5) -> tuple[str, int]:
        """Copy ``src`` into the blob store while hashing it; return ``(b64 digest, size)``.

        The bytes stored are exactly the bytes hashed (one read), so a file that changes while
        it is logged cannot leave a blob whose content differs from its name.
        """
        hasher = new_hasher(alg)
        size = 0
        # Per file only what must be: a log of many tiny files is bound by syscalls, so plain
        # descriptors instead of file objects, fchmod, and each blob directory made once.
        tmp_dir = os.path.join(self.objects, "tmp")
        if tmp_dir not in self._blob_dirs:
            os.makedirs(tmp_dir, exist_ok=True)
            self._blob_dirs.add(tmp_dir)
        tmp = os.path.join(tmp_dir, f"{os.getpid()}-{secrets.token_hex(8)}.tmp")  # as fsutil.make_temp names them
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    while chunk := os.read(src_fd, CHUNK):
                        hasher.update(chunk)
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view) :]
                        size += len(chunk)
                finally:
                    os.close(src_fd)
                os.fchmod(fd, 0o444)
            finally:
                os.close(fd)
            digest = b64_digest(hasher)
            final = self.blob_path(alg, digest)
            parent = os.path.dirname(final)
            if parent not in self._blob_dirs:
                os.makedirs(parent, exist_ok=True)
                self._blob_dirs.add(parent)
            # Replace even an existing blob: ours is known good, the old one may have rotted, and
            # the fresh mtime tells gc() that a log is using it.
            try:
                os.replace(tmp, final)
            except FileNotFoundError:  # its directory was removed since we made it
                os.makedirs(parent, exist_ok=True)
                os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return digest, size

    def log_dir(
        self,
        src: str | os.PathLike[str],
        ref: Ref,
        *,
        type: str,
        aliases: Iterable[str] = (),
        description: str = "",
        metadata: dict[str, Any] | None = None,
        digest_algorithm: str = MD5,
        workers: int | None = None,
        run_id: str | None = None,
    ) -> LogResult:
        """Log every regular file below ``src`` as a new version of ``ref``'s collection."""
        src = os.fspath(src)
        if not os.path.isdir(src):
            raise SourceError(f"source directory {src!r} does not exist or is not a directory")
        files = walk_files(src)
        return self.log_files(
            files,
            ref,
            type=type,
            aliases=aliases,
            description=description,
            metadata=metadata,
            digest_algorithm=digest_algorithm,
            workers=workers,
            run_id=run_id,
        )

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
        """Log ``(entry path, local file)`` pairs, and reference entries (``ref`` set, content
        digest and size already computed, e.g. by
        :func:`artifactfs.references.checksum_reference`).  Files are hashed in parallel threads
        (hashlib releases the GIL), with a bounded number in flight so memory stays flat.
        ``run_id``: the run that logs the version (RunNotFound, before anything is copied, if
        there is no such run); it is recorded even when the content equals the latest version's
        and no new version is made."""
        check_name(type, "type")
        aliases = [check_alias(a) for a in aliases]
        if digest_algorithm not in ALGORITHMS:
            raise InvalidArgument(f"unsupported digest algorithm {digest_algorithm!r}")
        metadata = check_metadata(metadata)
        referenced = [_reference_row(e) for e in references]
        self._check_type(ref, type)  # before copying a whole tree; _commit checks again
        if run_id is not None:
            self._check_run(run_id)
        self._clean_tmp()
        extra = {} if digest_algorithm == MD5 else {"alg": digest_algorithm}
        workers = workers or min(8, 2 * (os.cpu_count() or 1))
        logged: list[LoggedFile] = []
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="log") as pool:
            pending: dict[concurrent.futures.Future[tuple[str, int]], str] = {}

            def drain(limit: int) -> None:
                while len(pending) > limit:
                    done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                    for fut in done:
                        path = pending.pop(fut)
                        try:
                            digest, size = fut.result()
                        except OSError as exc:
                            raise SourceError(f"cannot read {path!r}: {exc.strerror or exc}") from exc
                        logged.append(LoggedFile(path, digest, size))

            try:
                for path, local in files:
                    check_entry_path(path)
                    pending[pool.submit(self.store_file, local, digest_algorithm)] = path
                    if len(pending) >= 8 * workers:
                        # Collect in batches: a wait() per file over the whole window (a lock per
                        # future) made a log of tiny files mostly lock traffic between threads.
                        drain(4 * workers)
                drain(0)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
        syncfs(self.objects)  # the blobs are on disk before a version can name them
        logged.extend(referenced)
        return self._commit(ref, logged, type, aliases, description, metadata, digest_algorithm, extra, run_id)

    def _check_type(self, ref: Ref, type: str) -> None:
        try:
            cid = self._collection_id(ref.entity, ref.project, ref.name)
        except NotFound:
            return
        self._check_loggable(ref, cid)
        existing = self._db().execute("SELECT type FROM collections WHERE id = ?", (cid,)).fetchone()[0]
        if existing != type:
            raise Conflict(f"artifact {ref.collection} has type {existing!r}, not {type!r}")

    def _check_loggable(self, ref: Ref, cid: int) -> None:
        if self._is_portfolio(cid):
            raise Conflict(f"artifact {ref.collection} is a linked collection: versions are linked into it, not logged")

    def _commit(
        self,
        ref: Ref,
        logged: list[LoggedFile],
        type: str,
        aliases: list[str],
        description: str,
        metadata: dict[str, Any],
        alg: str,
        extra: dict[str, Any],
        run_id: str | None = None,
    ) -> LogResult:
        seen: set[str] = set()
        for f in logged:
            if f.path in seen:
                raise ManifestError(f"entry path {f.path!r} appears twice")
            seen.add(f.path)
        dirs = _dirs_of(f.path for f in logged)
        clash = dirs & seen
        if clash:
            raise ManifestError(f"entry path {sorted(clash)[0]!r} is both a file and a directory")
        digest = artifact_digest(((f.path, f.digest) for f in logged), alg)
        size = sum(f.size for f in logged)
        ts = now_ns()

        def extra_json(f: LoggedFile) -> str | None:
            own = extra if f.extra is None else f.extra
            return json.dumps(own) if own else None

        with self._write(lineage=run_id is not None, ids=True) as db:
            cid = self._ensure_collection(db, ref, type, description, ts)
            latest = db.execute(
                "SELECT v.id, v.digest FROM aliases a JOIN versions v ON a.version_id = v.id "
                "WHERE a.collection_id = ? AND a.alias = 'latest'",
                (cid,),
            ).fetchone()
            if latest is not None and latest[1] == digest:
                pk = int(latest[0])
                self._move_aliases(db, cid, pk, aliases, ts)
                created = False
            else:
                index = db.execute("SELECT next_index FROM collections WHERE id = ?", (cid,)).fetchone()[0]
                db.execute("UPDATE collections SET next_index = ? WHERE id = ?", (index + 1, cid))
                cur = db.execute(
                    """INSERT INTO versions (collection_id, version_index, artifact_id, digest,
                       digest_algorithm, commit_hash, description, metadata, state, size, file_count,
                       storage_policy_config, created_at, updated_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'COMMITTED', ?, ?, ?, ?, ?)""",
                    (
                        cid,
                        index,
                        "pending-" + secrets.token_hex(8),
                        digest,
                        MANIFEST_ALGORITHM[alg],
                        secrets.token_hex(10),
                        description,
                        json.dumps(metadata),
                        size,
                        len(logged),
                        json.dumps({"storageLayout": "V2"}),
                        ts,
                        ts,
                    ),
                )
                pk = int(cur.lastrowid or 0)
                artifact_id = base64.b64encode(f"Artifact:{pk}".encode()).decode()
                db.execute("UPDATE versions SET artifact_id = ? WHERE id = ?", (artifact_id, pk))
                db.executemany(
                    "INSERT INTO entries (version_id, parent, name, digest, size, ref, birth_artifact_id, extra, id) "
                    "VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                    (
                        (
                            pk,
                            *split_dir(f.path),
                            f.digest,
                            f.size,
                            f.ref,
                            extra_json(f),
                            number,
                        )
                        for number, f in enumerate(logged, 1)
                    ),
                )
                db.executemany(
                    "INSERT INTO dirs (version_id, parent, name, id) VALUES (?, ?, ?, ?)",
                    ((pk, *split_dir(d), number) for number, d in enumerate(dirs, len(logged) + 1)),
                )
                self._move_aliases(db, cid, pk, [LATEST, *aliases], ts)
                created = True
            if run_id is not None:
                if db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                    raise RunNotFound(f"run {run_id!r} not found in registry {self.root}")
                db.execute("INSERT OR IGNORE INTO version_created_by VALUES (?, ?, ?)", (pk, run_id, ts))
        return LogResult(self._version_by_pk(pk), created)

    @staticmethod
    def _ensure_project(db: sqlite3.Connection, entity: str, project: str, ts: int) -> int:
        db.execute("INSERT OR IGNORE INTO entities (name, created_at) VALUES (?, ?)", (entity, ts))
        eid = db.execute("SELECT id FROM entities WHERE name = ?", (entity,)).fetchone()[0]
        db.execute("INSERT OR IGNORE INTO projects (entity_id, name, created_at) VALUES (?, ?, ?)", (eid, project, ts))
        return int(db.execute("SELECT id FROM projects WHERE entity_id = ? AND name = ?", (eid, project)).fetchone()[0])

    def _ensure_collection(self, db: sqlite3.Connection, ref: Ref, type: str, description: str, ts: int) -> int:
        pid = self._ensure_project(db, ref.entity, ref.project, ts)
        row = db.execute(
            "SELECT id, type FROM collections WHERE project_id = ? AND name = ?", (pid, ref.name)
        ).fetchone()
        if row is None:
            cur = db.execute(
                "INSERT INTO collections (project_id, name, type, description, created_at) VALUES (?, ?, ?, ?, ?)",
                (pid, ref.name, type, description, ts),
            )
            return int(cur.lastrowid or 0)
        self._check_loggable(ref, int(row[0]))
        if row[1] != type:
            raise Conflict(f"artifact {ref.collection} has type {row[1]!r}, not {type!r}")
        return int(row[0])

    @staticmethod
    def _move_aliases(db: sqlite3.Connection, cid: int, pk: int, aliases: Iterable[str], ts: int) -> None:
        for alias in aliases:
            old = db.execute(
                "SELECT version_id FROM aliases WHERE collection_id = ? AND alias = ?", (cid, alias)
            ).fetchone()
            if old is not None and old[0] == pk:
                continue
            db.execute(
                "INSERT INTO aliases VALUES (?, ?, ?) ON CONFLICT (collection_id, alias) "
                "DO UPDATE SET version_id = excluded.version_id",
                (cid, alias, pk),
            )
            ids = [pk] if old is None else [pk, old[0]]
            db.executemany("UPDATE versions SET updated_at = ? WHERE id = ?", ((ts, i) for i in ids))

    def add_alias(self, ref: Ref, alias: str) -> VersionInfo:
        """Point ``alias`` at ``ref``'s version (moving it from another version if need be)."""
        check_alias(alias)
        if alias == LATEST:
            raise Conflict("alias 'latest' is managed by the registry: it always names the newest version")
        with self._write() as db:
            pk = self._version_pk(ref)
            cid = db.execute("SELECT collection_id FROM versions WHERE id = ?", (pk,)).fetchone()[0]
            self._move_aliases(db, cid, pk, [alias], now_ns())
        return self._version_by_pk(pk)

    def remove_alias(self, ref: Ref, alias: str) -> VersionInfo:
        check_alias(alias)
        if alias == LATEST:
            raise Conflict("alias 'latest' is managed by the registry and cannot be removed")
        with self._write() as db:
            pk = self._version_pk(ref)
            cur = db.execute("DELETE FROM aliases WHERE version_id = ? AND alias = ?", (pk, alias))
            if cur.rowcount == 0:
                raise ArtifactNotFound(f"artifact {ref} has no alias {alias!r}")
            db.execute("UPDATE versions SET updated_at = ? WHERE id = ?", (now_ns(), pk))
        return self._version_by_pk(pk)

    def update(
        self, ref: Ref, *, description: str | None = None, metadata: dict[str, Any] | None = None
    ) -> VersionInfo:
        """Change a version's description and/or metadata (its content never changes)."""
        if metadata is not None:
            metadata = check_metadata(metadata)
        with self._write() as db:
            pk = self._version_pk(ref)
            # W&B keeps them per artifact: a link and its source show the same, so both change.
            group = self._artifact_pks(pk)
            if description is not None:
                db.executemany("UPDATE versions SET description = ? WHERE id = ?", ((description, p) for p in group))
            if metadata is not None:
                text = json.dumps(metadata)
                db.executemany("UPDATE versions SET metadata = ? WHERE id = ?", ((text, p) for p in group))
            ts = now_ns()
            db.executemany("UPDATE versions SET updated_at = ? WHERE id = ?", ((ts, p) for p in group))
        return self._version_by_pk(pk)

    def delete(self, ref: Ref, *, delete_aliases: bool = False) -> VersionInfo:
        """Delete one version.  Refused while aliases other than ``latest`` name it, unless
        ``delete_aliases``.  ``latest`` moves to the newest remaining version.

        Like W&B, this is a soft delete: the version disappears from every lookup and listing
        (state ``DELETED``), but its entries and blobs stay until :meth:`gc`, so a mount that
        is reading it keeps reading it.

        As W&B does with links: deleting a link (``ref`` names a member of a linked collection)
        only unlinks it, with its aliases whatever ``delete_aliases`` says; the source and its
        other links stay.  Deleting a logged version deletes the artifact, so its links go with
        it, and their aliases count as its own."""
        with self._write() as db:
            pk = self._version_pk(ref)
            version = self._version_by_pk(pk)
            ts = now_ns()
            if version.source is not None:
                self._drop(db, pk, ts)
                return version
            group = self._artifact_pks(pk)
            held = [a for a in version.aliases if a != LATEST]
            for link_pk in group[1:]:
                link = self._version_by_pk(link_pk)
                held.extend(f"{link.ref.collection}:{a}" for a in link.aliases if a != LATEST)
            if held and not delete_aliases:
                raise Conflict(
                    f"artifact {version.ref} still has aliases {', '.join(held)}: "
                    "remove them first or pass --delete-aliases"
                )
            for member in group:
                self._drop(db, member, ts)
        return version

    def _drop(self, db: sqlite3.Connection, pk: int, ts: int) -> None:
        """Soft-delete the version ``pk`` and its aliases; ``latest`` of its collection moves to
        the newest live version left."""
        cid = db.execute("SELECT collection_id FROM versions WHERE id = ?", (pk,)).fetchone()[0]
        db.execute("UPDATE versions SET state = 'DELETED', updated_at = ? WHERE id = ?", (ts, pk))
        db.execute("DELETE FROM aliases WHERE version_id = ?", (pk,))
        newest = db.execute(
            "SELECT id FROM versions WHERE collection_id = ? AND state != 'DELETED' "
            "ORDER BY version_index DESC LIMIT 1",
            (cid,),
        ).fetchone()
        if newest is not None:
            self._move_aliases(db, cid, int(newest[0]), [LATEST], ts)

    def link(self, ref: Ref, target: str, aliases: Iterable[str] = ()) -> VersionInfo:
        """Link ``ref``'s version into the linked collection ``target`` (``entity/project/name``;
        ``project/name`` and ``name`` take the rest from the version), as W&B's
        ``Artifact.link``: the collection (a portfolio, with the version's type) is made on
        first use, with its entity and project if need be, and numbers its members itself; a
        new member gets the next index there, ``latest`` moves to it, and ``aliases`` are set.
        Linking a version that is already a member returns that member, with ``aliases`` set
        (``latest`` stays where it is).  Linking a link links its source.  Conflict for a
        collection of logged versions or a linked collection of another type.

        The member's content is the source's: its rows are copied in this transaction (see the
        module's docstring), so it reads, mounts and verifies like any version."""
        names = [check_alias(a) for a in aliases if a != LATEST]
        _link_parts(target)  # a malformed target fails before anything else
        ts = now_ns()
        with self._write(links=True, ids=True) as db:
            source_pk = self._version_pk(ref)
            source_pk = self._source_pk(source_pk) or source_pk
            source = self._version_by_pk(source_pk)
            to = _link_target(target, source)
            pid = self._ensure_project(db, to.entity, to.project, ts)
            row = db.execute("SELECT id, type FROM collections WHERE project_id = ? AND name = ?", (pid, to.name))
            found = row.fetchone()
            if found is None:
                cur = db.execute(
                    "INSERT INTO collections (project_id, name, type, description, created_at) VALUES (?, ?, ?, '', ?)",
                    (pid, to.name, source.type, ts),
                )
                cid = int(cur.lastrowid or 0)
                db.execute("INSERT INTO portfolios VALUES (?, ?)", (cid, ts))
            else:
                cid = int(found[0])
                if not self._is_portfolio(cid):
                    raise Conflict(
                        f"artifact {to} holds logged versions: only a linked collection takes links "
                        "(link into a new name)"
                    )
                if found[1] != source.type:
                    raise Conflict(f"linked collection {to} has type {found[1]!r}; {source.ref} is a {source.type!r}")
            member = db.execute(
                "SELECT v.id FROM version_links l JOIN versions v ON l.version_id = v.id "
                "WHERE l.source_version_id = ? AND v.collection_id = ? AND v.state != 'DELETED'",
                (source_pk, cid),
            ).fetchone()
            if member is not None:
                pk = int(member[0])
                self._move_aliases(db, cid, pk, names, ts)
            else:
                pk = self._copy_version(db, source_pk, cid, ts)
                self._move_aliases(db, cid, pk, [LATEST, *names], ts)
                db.execute("UPDATE versions SET updated_at = ? WHERE id = ?", (ts, source_pk))
        return self._version_by_pk(pk)

    @staticmethod
    def _copy_version(db: sqlite3.Connection, source_pk: int, cid: int, ts: int) -> int:
        """A new version of collection ``cid`` (its next index) whose row, entries and directories
        are copies of ``source_pk``'s, recorded as its link; its row id.  Everything that says what
        the content is (digest, commit hash, sizes, description, metadata, creation time) is
        the source's: it is the same artifact."""
        index = db.execute("SELECT next_index FROM collections WHERE id = ?", (cid,)).fetchone()[0]
        db.execute("UPDATE collections SET next_index = ? WHERE id = ?", (index + 1, cid))
        cur = db.execute(
            """INSERT INTO versions (collection_id, version_index, artifact_id, digest,
               digest_algorithm, commit_hash, description, metadata, state, size, file_count,
               storage_policy_config, created_at, updated_at)
               SELECT ?, ?, ?, digest, digest_algorithm, commit_hash, description, metadata, state,
                      size, file_count, storage_policy_config, created_at, ?
               FROM versions WHERE id = ?""",
            (cid, index, "pending-" + secrets.token_hex(8), ts, source_pk),
        )
        pk = int(cur.lastrowid or 0)
        artifact_id = base64.b64encode(f"Artifact:{pk}".encode()).decode()
        db.execute("UPDATE versions SET artifact_id = ? WHERE id = ?", (artifact_id, pk))
        db.execute(
            "INSERT INTO entries (version_id, parent, name, digest, size, ref, birth_artifact_id, extra, id) "
            "SELECT ?, parent, name, digest, size, ref, birth_artifact_id, extra, id FROM entries WHERE version_id = ?",
            (pk, source_pk),
        )
        db.execute(
            "INSERT INTO dirs (version_id, parent, name, id) SELECT ?, parent, name, id FROM dirs WHERE version_id = ?",
            (pk, source_pk),
        )
        db.execute("INSERT INTO version_links VALUES (?, ?, ?)", (pk, source_pk, ts))
        return pk

    # -- runs and lineage -------------------------------------------------------------------------

    def default_entity(self) -> str | None:
        """The registry's only entity when it has exactly one; otherwise the OS user name (the
        entity a first run or log creates), or None when that is not a valid entity name."""
        names = self.entities()
        if len(names) == 1:
            return names[0]
        try:
            user = getpass.getuser()
        except (OSError, KeyError):  # no $USER/$LOGNAME and no passwd entry for our uid
            return None
        try:
            return check_name(user, "entity")
        except InvalidReference:
            return None

    @staticmethod
    def _run_from_row(row: Sequence[Any]) -> RunInfo:
        return RunInfo(
            entity=row[1],
            project=row[2],
            id=row[0],
            name=row[3],
            job_type=row[4],
            state=row[5],
            created_at_ns=row[6],
            config=json.loads(row[7]),
        )

    def _check_run(self, run_id: str) -> None:
        if (
            not self._has_lineage()
            or self._db().execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None
        ):
            raise RunNotFound(f"run {run_id!r} not found in registry {self.root}")

    def create_run(
        self,
        entity: str,
        project: str,
        *,
        name: str | None = None,
        job_type: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> RunInfo:
        """Start a run: a new id of 8 random base-36 characters (as W&B makes them), state
        ``running``; ``entity/project`` are created if they do not exist (as ``wandb.init``
        creates a project).  ``name`` defaults to the id, ``job_type`` to ``""``."""
        check_name(entity, "entity")
        check_name(project, "project")
        config_json = json.dumps(_check_config(config))
        ts = now_ns()
        with self._write(lineage=True) as db:
            pid = self._ensure_project(db, entity, project, ts)
            while True:
                run_id = "".join(secrets.choice(RUN_ID_ALPHABET) for _ in range(8))
                if db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                    break
            db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, 'running', ?, ?, NULL)",
                (run_id, pid, name or run_id, job_type or "", config_json, ts),
            )
        return RunInfo(entity, project, run_id, name or run_id, job_type or "", "running", ts, json.loads(config_json))

    def finish_run(self, run: RunInfo, state: str = "finished") -> None:
        if state not in RUN_STATES[1:]:
            raise InvalidArgument(f"a run ends as {', '.join(RUN_STATES[1:])}, not {state!r}")
        config_json = json.dumps(_check_config(run.config))
        with self._write(lineage=True) as db:
            row = db.execute("SELECT state FROM runs WHERE id = ?", (run.id,)).fetchone()
            if row is None:
                raise RunNotFound(f"run {run.path} not found")
            if row[0] == "running":
                db.execute(
                    "UPDATE runs SET state = ?, config = ?, finished_at = ? WHERE id = ?",
                    (state, config_json, now_ns(), run.id),
                )

    def record_use(self, run_id: str, version: VersionInfo) -> None:
        """Recorded for the artifact: using a link records a use of its source (as W&B, where a
        link is the same artifact)."""
        with self._write(lineage=True) as db:
            pk = self._pk_of(version)
            pk = self._source_pk(pk) or pk
            if db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                raise RunNotFound(f"run {run_id!r} not found in registry {self.root}")
            db.execute("INSERT OR IGNORE INTO version_used_by VALUES (?, ?, ?)", (pk, run_id, now_ns()))

    def _row_of(self, version: VersionInfo) -> int | None:
        """The versions row that holds the lineage of ``version`` (the source's, for a link), by
        its id, deleted or not (lineage outlives a soft delete until gc); None once gc purged it."""
        pk = self._pks.get(version.id)
        if pk is None:
            row = self._db().execute("SELECT id FROM versions WHERE artifact_id = ?", (version.id,)).fetchone()
            pk = None if row is None else int(row[0])
        if pk is not None and version.source is not None:
            pk = self._source_pk(pk) or pk
        return pk

    def logged_by(self, version: VersionInfo) -> RunInfo | None:
        if not self._has_lineage():
            return None
        row = (
            self._db()
            .execute(
                f"SELECT {_RUN_COLUMNS} FROM version_created_by l JOIN runs r ON l.run_id = r.id "
                "JOIN projects p ON r.project_id = p.id JOIN entities e ON p.entity_id = e.id "
                "WHERE l.version_id = ? ORDER BY l.logged_at, r.id LIMIT 1",
                (self._row_of(version),),
            )
            .fetchone()
        )
        return None if row is None else self._run_from_row(row)

    def used_by(self, version: VersionInfo) -> list[RunInfo]:
        if not self._has_lineage():
            return []
        rows = self._db().execute(
            f"SELECT {_RUN_COLUMNS} FROM version_used_by u JOIN runs r ON u.run_id = r.id "
            "JOIN projects p ON r.project_id = p.id JOIN entities e ON p.entity_id = e.id "
            "WHERE u.version_id = ? ORDER BY u.used_at, r.id",
            (self._row_of(version),),
        )
        return [self._run_from_row(r) for r in rows.fetchall()]

    def _run_versions(self, table: str, at: str, run: RunInfo) -> list[VersionInfo]:
        if not self._has_lineage():
            return []
        self.run(run.entity, run.project, run.id)  # RunNotFound for a run of another project
        rows = (
            self._db()
            .execute(
                f"{self._select_versions()} JOIN {table} l ON l.version_id = v.id "
                f"WHERE l.run_id = ? AND v.state != 'DELETED' ORDER BY l.{at}, v.id",
                (run.id,),
            )
            .fetchall()
        )
        return [self._version_from_row(r) for r in rows]

    def run_outputs(self, run: RunInfo) -> list[VersionInfo]:
        return self._run_versions("version_created_by", "logged_at", run)

    def run_inputs(self, run: RunInfo) -> list[VersionInfo]:
        return self._run_versions("version_used_by", "used_at", run)

    def runs(self, entity: str, project: str) -> list[RunInfo]:
        pid = self._project_id(entity, project)
        if not self._has_lineage():
            return []
        rows = self._db().execute(
            f"SELECT {_RUN_COLUMNS} {_RUN_FROM} WHERE r.project_id = ? ORDER BY r.created_at, r.id", (pid,)
        )
        return [self._run_from_row(r) for r in rows.fetchall()]

    def run(self, entity: str, project: str, run_id: str) -> RunInfo:
        row = None
        if self._has_lineage():
            row = (
                self._db()
                .execute(
                    f"SELECT {_RUN_COLUMNS} {_RUN_FROM} WHERE r.id = ? AND e.name = ? AND p.name = ?",
                    (run_id, entity, project),
                )
                .fetchone()
            )
        if row is None:
            raise RunNotFound(f"run {entity}/{project}/{run_id} not found")
        return self._run_from_row(row)

    def gc(self, *, grace: float = GC_GRACE) -> tuple[int, int, int]:
        """Purge deleted versions, then blobs no entry uses that are older than ``grace`` seconds
        (younger ones may belong to a log that has not committed yet).  Returns
        ``(versions purged, blobs removed, bytes freed)``."""
        with self._write() as db:
            purged = db.execute("DELETE FROM versions WHERE state = 'DELETED'").rowcount
            used = {r[0] for r in db.execute("SELECT DISTINCT digest FROM entries")}
        self._clean_tmp()
        cutoff = time.time() - grace
        removed = freed = 0
        for alg in ALGORITHMS:
            top = os.path.join(self.objects, alg.lower())
            for dirpath, _, filenames in os.walk(top):
                for fname in filenames:
                    full = os.path.join(dirpath, fname)
                    hexd = os.path.basename(dirpath) + fname
                    try:
                        digest = base64.b64encode(bytes.fromhex(hexd)).decode()
                        st = os.stat(full)
                    except (ValueError, OSError):
                        continue
                    if digest not in used and st.st_mtime < cutoff:
                        with contextlib.suppress(OSError):
                            os.unlink(full)
                            removed += 1
                            freed += st.st_size
        return purged, removed, freed


def _link_parts(target: str) -> list[str]:
    parts = target.split("/")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise InvalidReference(f"invalid link target {target!r}: expected [[ENTITY/]PROJECT/]NAME")
    if ":" in parts[-1]:
        raise InvalidReference(f"link target {target!r} names a version: expected [[ENTITY/]PROJECT/]NAME")
    return parts


def _link_target(target: str, source: VersionInfo) -> Ref:
    """The collection ``target`` names, its missing entity and project taken from ``source``
    (as W&B takes the entity from the artifact being linked)."""
    parts = _link_parts(target)
    full = [source.entity, source.project][: 3 - len(parts)] + parts
    for part, what in zip(full, ("entity", "project", "artifact name"), strict=True):
        check_name(part, what)
    return Ref(full[0], full[1], full[2])


def _reference_row(entry: Entry) -> LoggedFile:
    """A reference entry, checked: it must carry a URI and a content digest (16 bytes, MD5 or
    XXH128), since an entry whose bytes cannot be verified could never be served."""
    check_entry_path(entry.path)
    if not entry.ref:
        raise InvalidReferenceEntry(f"reference entry {entry.path!r} has no ref URI")
    if entry.alg not in ALGORITHMS:
        raise InvalidReferenceEntry(f"reference entry {entry.path!r}: unsupported digest algorithm {entry.alg!r}")
    try:
        hex_from_b64(entry.digest)
    except ManifestError as exc:
        raise InvalidReferenceEntry(
            f"reference entry {entry.path!r} has no content digest ({entry.digest!r}): it could never be verified"
        ) from exc
    return LoggedFile(entry.path, entry.digest, entry.size, entry.ref, dict(entry.extra))


def _is_lookup_path(path: str) -> bool:
    """Whether ``path`` is a canonical entry path (only those are looked up)."""
    try:
        check_entry_path(path)
    except InvalidPath:
        return False
    return True


def _json_object(value: dict[str, Any] | None, what: str, error: type[InvalidArgument]) -> dict[str, Any]:
    """``value`` (None: empty) if it is a dict that JSON can hold; else ``error`` naming ``what``."""
    if value is None:
        return {}
    json_object_text(value, what, error)
    return value


def check_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    return _json_object(metadata, "metadata", InvalidMetadata)


def _check_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """A run's config: a JSON object (W&B stores it as JSON too)."""
    return _json_object(config, "a run's config", InvalidArgument)


def _dirs_of(paths: Iterable[str]) -> set[str]:
    dirs: set[str] = set()
    for path in paths:
        parent = split_dir(path)[0]
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = split_dir(parent)[0]
    return dirs


# -- entry ids and a version's contents as a mount's index -----------------------------------------


def _number_entries(db: sqlite3.Connection) -> int | None:
    """Inside a write transaction: give every entry and directory its id (a version's files
    1..F in path order, then its directories), index them, and mark the registry; the number of
    entries numbered, or None if the mark was there already.  Idempotent, and atomic with the
    transaction (a crash or an error rolls all of it back)."""
    if db.execute("SELECT 1 FROM meta WHERE key = 'entry_ids'").fetchone() is not None:
        return None
    for table in ("entries", "dirs"):
        if "id" not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN id INTEGER")
        db.execute(f"DROP INDEX IF EXISTS {table}_id")  # numbered afresh, without transient clashes
    numbered = db.execute(
        """UPDATE entries SET id = n.number FROM (
               SELECT version_id AS v, parent AS p, name AS nm,
                      row_number() OVER (PARTITION BY version_id ORDER BY parent, name) AS number
               FROM entries) AS n
           WHERE entries.version_id = n.v AND entries.parent = n.p AND entries.name = n.nm"""
    ).rowcount
    db.execute("CREATE UNIQUE INDEX entries_id ON entries (version_id, id)")
    db.execute(
        """UPDATE dirs SET id = n.number + coalesce((SELECT max(e.id) FROM entries e WHERE e.version_id = n.v), 0)
           FROM (SELECT version_id AS v, parent AS p, name AS nm,
                        row_number() OVER (PARTITION BY version_id ORDER BY parent, name) AS number
                 FROM dirs) AS n
           WHERE dirs.version_id = n.v AND dirs.parent = n.p AND dirs.name = n.nm"""
    )
    for statement in _ENTRY_ID_INDEXES.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("INSERT OR REPLACE INTO meta VALUES ('entry_ids', '1')")
    return max(numbered, 0)


class LocalContents:
    """One version's files and directories as a mount asks for them (:class:`artifactfs.index.
    Contents`), answered from the registry's own rows by ``(version, parent, name)`` and by
    ``(version, id)``: nothing is held per entry.  Queries run on the asking thread's
    connection (the mount's loop: each is a few B-tree page reads)."""

    def __init__(self, registry: LocalRegistry, pk: int, count: int) -> None:
        self._registry = registry
        self._pk = pk
        self.count = count

    def _child(self, parent: str, row: Sequence[Any]) -> Child:
        """A child from ``(id, name, digest, size, ref, birth_artifact_id, extra)``."""
        return Child(row[0], row[1], LocalRegistry._entry_from_row(parent, row[1:]))

    def _is_dir(self, path: str) -> bool:
        return path == "" or (_is_lookup_path(path) and self._registry._is_dir(self._pk, path))

    def get(self, path: str) -> Child | None:
        if path == "":
            return Child(0, "", None)
        if not _is_lookup_path(path):
            return None
        parent, name = split_dir(path)
        db = self._registry._db()
        row = db.execute(
            f"SELECT id, {_ENTRY_COLUMNS} FROM entries WHERE version_id = ? AND parent = ? AND name = ?",
            (self._pk, parent, name),
        ).fetchone()
        if row is not None:
            return self._child(parent, row)
        row = db.execute(
            "SELECT id FROM dirs WHERE version_id = ? AND parent = ? AND name = ?", (self._pk, parent, name)
        ).fetchone()
        return None if row is None else Child(row[0], name, None)

    def by_id(self, node_id: int) -> tuple[str, Child] | None:
        if node_id == 0:
            return "", Child(0, "", None)
        db = self._registry._db()
        row = db.execute(
            f"SELECT parent, id, {_ENTRY_COLUMNS} FROM entries WHERE version_id = ? AND id = ?", (self._pk, node_id)
        ).fetchone()
        if row is not None:
            child = self._child(row[0], row[1:])
            assert child.entry is not None
            return child.entry.path, child
        row = db.execute(
            "SELECT parent, name FROM dirs WHERE version_id = ? AND id = ?", (self._pk, node_id)
        ).fetchone()
        if row is None:
            return None
        path = check_entry_path(f"{row[0]}/{row[1]}" if row[0] else row[1])
        return path, Child(node_id, row[1], None)

    def listing(self, path: str) -> Listing | None:
        if not self._is_dir(path):
            return None
        rows = self._registry._db().execute(
            "SELECT id, name, 0, size FROM entries WHERE version_id = ?1 AND parent = ?2 "
            "UNION ALL SELECT id, name, 1, 0 FROM dirs WHERE version_id = ?1 AND parent = ?2 ORDER BY 2",
            (self._pk, path),
        )
        return Listing.of(rows.fetchall())

    def list_dir(self, path: str, after: str | None = None, limit: int = -1) -> list[Child] | None:
        if not self._is_dir(path):
            return None
        low = "" if after is None else after
        db = self._registry._db()
        files = db.execute(
            f"SELECT id, {_ENTRY_COLUMNS} FROM entries WHERE version_id = ? AND parent = ? AND name > ? "
            "ORDER BY name LIMIT ?",
            (self._pk, path, low, limit),
        )
        out = [self._child(path, row) for row in files]
        dirs = db.execute(
            "SELECT id, name FROM dirs WHERE version_id = ? AND parent = ? AND name > ? ORDER BY name LIMIT ?",
            (self._pk, path, low, limit),
        )
        out.extend(Child(row[0], row[1], None) for row in dirs)
        out.sort(key=lambda c: c.name)
        return out if limit < 0 else out[:limit]

    def following(self, path: str, limit: int) -> list[Entry]:
        parent, name = split_dir(path)
        rows = self._registry._db().execute(
            f"SELECT id, {_ENTRY_COLUMNS} FROM entries WHERE version_id = ? AND parent = ? AND name > ? "
            "ORDER BY name LIMIT ?",
            (self._pk, parent, name, limit),
        )
        return [child.entry for child in (self._child(parent, row) for row in rows) if child.entry is not None]


_ENTRY_COLUMNS = "name, digest, size, ref, birth_artifact_id, extra"


# -- the backend (registry/__init__.py's table) ---------------------------------------------------


def open_spec(rest: str | None, *, create: bool, cache_dir: str | None, checked: bool = False) -> LocalRegistry:
    """The local registry in directory ``rest`` (it keeps nothing in a cache directory;
    ``checked`` changes nothing: opening it asks no server)."""
    return LocalRegistry(rest or ".", create=create)


def check_spec(rest: str | None) -> None:
    """A directory: nothing in it to refuse before it is opened."""


def create_for_log(rest: str | None) -> None:
    """A first log into a directory that holds no registry creates one there."""
    root = rest or "."
    if not os.path.exists(os.path.join(root, "registry.sqlite")):
        LocalRegistry(root, create=True).close()


def doctor_checks(rest: str | None, cache_dir: str) -> list[Check]:
    name = "registry"
    spec = rest or "."
    path = os.path.abspath(spec)
    if not os.path.lexists(path) and is_builtin_registry(spec):
        # A fresh machine: nothing named, nothing logged yet.  A registry someone named that is
        # not there is a typo or a missing volume: that one fails below.
        return [Check(name, OK, f"no registry yet at {path} (the default): the first 'artifactfs log' creates it")]
    if not os.path.isdir(path):
        return [
            Check(
                name,
                FAIL,
                f"no registry at {path}",
                "log a first artifact into it (artifactfs log DIR ENTITY/PROJECT/NAME --type dataset) or name "
                "another one with --registry or $ARTIFACTFS_REGISTRY",
            )
        ]
    try:
        registry = LocalRegistry(path)
    except ArtifactFSError as exc:
        return [Check(name, FAIL, str(exc), "check the path and its permissions (ls -l)")]
    try:
        entities = registry.entities()
    except ArtifactFSError as exc:
        return [Check(name, FAIL, f"{path}: {exc}", "check the registry's database (artifactfs ls)")]
    finally:
        registry.close()
    return [Check(name, OK, f"local registry {path} ({len(entities)} entities)")]
