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

Runs and lineage (``runs``, ``version_created_by``, ``version_used_by``) came after the first
schema.  Opening a registry writes nothing, so a registry made before them gets their tables
from the first write that needs them (:meth:`LocalRegistry._write` with ``lineage=True``, inside
that write's transaction; ``PRAGMA user_version`` says they exist), and until then every read
of lineage answers "none known".
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import ctypes
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

from ..defaults import GC_GRACE
from ..errors import (
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
from ..fsutil import make_temp, remove_stale, walk_files
from ..manifest import ALGORITHMS, MANIFEST_ALGORITHM, MD5, Entry, artifact_digest, b64_digest, hex_from_b64, new_hasher
from ..names import LATEST, Ref, check_alias, check_entry_path, check_name, split_dir
from ..references import reference_source
from .base import BlobSource, CollectionInfo, DirEntry, LogResult, Registry, RunInfo, VersionInfo

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
    ref TEXT, birth_artifact_id TEXT, extra TEXT,
    PRIMARY KEY (version_id, parent, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dirs (
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    parent TEXT NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (version_id, parent, name)) WITHOUT ROWID;
"""

#: ``PRAGMA user_version`` of a registry whose lineage tables exist (0: made before them).
LINEAGE_VERSION = 1
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
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._read_only = False
        self._lineage = False  # True once the lineage tables are known to exist
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
    def _write(self, *, lineage: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction: ``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK``).
        ``lineage``: the transaction writes runs or lineage, so their tables are created first
        if this registry predates them (in the same transaction, so concurrent writers migrate
        once and a failed write leaves the registry as it was)."""
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise RegistryError(f"registry {self.root} is busy or unwritable: {exc}") from exc
        try:
            migrated = lineage and not self._lineage and self._migrate_lineage(db)
            yield db
            db.execute("COMMIT")
            if lineage:
                self._lineage = True
            if migrated:
                log.info("registry %s: added the runs and lineage tables", self.root)
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise RegistryError(f"registry {self.root}: {exc}") from exc
            raise

    @staticmethod
    def _migrate_lineage(db: sqlite3.Connection) -> bool:
        """Create the lineage tables unless ``user_version`` says they exist.  Idempotent; runs
        inside the caller's write transaction.  True when it created them."""
        if int(db.execute("PRAGMA user_version").fetchone()[0]) >= LINEAGE_VERSION:
            return False
        for statement in _LINEAGE_SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {LINEAGE_VERSION}")
        return True

    def _has_lineage(self) -> bool:
        """Whether the lineage tables exist (another process may have made them since we looked:
        one pragma read until they do, nothing after)."""
        if not self._lineage:
            self._lineage = int(self._db().execute("PRAGMA user_version").fetchone()[0]) >= LINEAGE_VERSION
        return self._lineage

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
                f"SELECT {_VERSION_COLUMNS} {_VERSION_FROM} "
                "WHERE c.project_id = ? AND v.state != 'DELETED' ORDER BY c.name, v.version_index",
                (pid,),
            )
            .fetchall()
        )
        return [self._version_from_row(r) for r in rows]

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

    def _version_from_row(self, row: Sequence[Any]) -> VersionInfo:
        self._pks[row[1]] = row[0]
        return VersionInfo(
            id=row[1],
            entity=row[2],
            project=row[3],
            name=row[4],
            type=row[5],
            version_index=row[6],
            aliases=self._aliases_of(row[0]),
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
        )

    def versions(self, entity: str, project: str, name: str) -> list[VersionInfo]:
        cid = self._collection_id(entity, project, name)
        rows = (
            self._db()
            .execute(
                f"SELECT {_VERSION_COLUMNS} {_VERSION_FROM} "
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
        row = self._db().execute(f"SELECT {_VERSION_COLUMNS} {_VERSION_FROM} WHERE v.id = ?", (pk,)).fetchone()
        if row is None:
            raise ArtifactNotFound(f"artifact version {pk} vanished")
        return self._version_from_row(row)

    def resolve(self, ref: Ref) -> VersionInfo:
        return self._version_by_pk(self._version_pk(ref))

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
        fd, tmp = make_temp(self._tmp_dir())
        try:
            with open(fd, "wb", closefd=True) as out, open(src, "rb") as f:
                while chunk := f.read(CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            digest = b64_digest(hasher)
            final = self.blob_path(alg, digest)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.chmod(tmp, 0o444)
            # Replace even an existing blob: ours is known good, the old one may have rotted, and
            # the fresh mtime tells gc() that a log is using it.
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
                    drain(4 * workers)
                drain(0)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
        _syncfs(self.objects)  # the blobs are on disk before a version can name them
        logged.extend(referenced)
        return self._commit(ref, logged, type, aliases, description, metadata, digest_algorithm, extra, run_id)

    def _check_type(self, ref: Ref, type: str) -> None:
        try:
            cid = self._collection_id(ref.entity, ref.project, ref.name)
        except NotFound:
            return
        existing = self._db().execute("SELECT type FROM collections WHERE id = ?", (cid,)).fetchone()[0]
        if existing != type:
            raise Conflict(f"artifact {ref.collection} has type {existing!r}, not {type!r}")

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

        with self._write(lineage=run_id is not None) as db:
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
                    "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                    (
                        (
                            pk,
                            *split_dir(f.path),
                            f.digest,
                            f.size,
                            f.ref,
                            extra_json(f),
                        )
                        for f in logged
                    ),
                )
                db.executemany("INSERT INTO dirs VALUES (?, ?, ?)", ((pk, *split_dir(d)) for d in dirs))
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
            if description is not None:
                db.execute("UPDATE versions SET description = ? WHERE id = ?", (description, pk))
            if metadata is not None:
                db.execute("UPDATE versions SET metadata = ? WHERE id = ?", (json.dumps(metadata), pk))
            db.execute("UPDATE versions SET updated_at = ? WHERE id = ?", (now_ns(), pk))
        return self._version_by_pk(pk)

    def delete(self, ref: Ref, *, delete_aliases: bool = False) -> VersionInfo:
        """Delete one version.  Refused while aliases other than ``latest`` name it, unless
        ``delete_aliases``.  ``latest`` moves to the newest remaining version.

        Like W&B, this is a soft delete: the version disappears from every lookup and listing
        (state ``DELETED``), but its entries and blobs stay until :meth:`gc`, so a mount that
        is reading it keeps reading it."""
        with self._write() as db:
            pk = self._version_pk(ref)
            version = self._version_by_pk(pk)
            others = [a for a in version.aliases if a != LATEST]
            if others and not delete_aliases:
                raise Conflict(
                    f"artifact {version.ref} still has aliases {', '.join(others)}: "
                    "remove them first or pass --delete-aliases"
                )
            cid = db.execute("SELECT collection_id FROM versions WHERE id = ?", (pk,)).fetchone()[0]
            ts = now_ns()
            db.execute("UPDATE versions SET state = 'DELETED', updated_at = ? WHERE id = ?", (ts, pk))
            db.execute("DELETE FROM aliases WHERE version_id = ?", (pk,))
            newest = db.execute(
                "SELECT id FROM versions WHERE collection_id = ? AND state != 'DELETED' "
                "ORDER BY version_index DESC LIMIT 1",
                (cid,),
            ).fetchone()
            if newest is not None:
                self._move_aliases(db, cid, int(newest[0]), [LATEST], ts)
        return version

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
        with self._write(lineage=True) as db:
            pk = self._pk_of(version)
            if db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                raise RunNotFound(f"run {run_id!r} not found in registry {self.root}")
            db.execute("INSERT OR IGNORE INTO version_used_by VALUES (?, ?, ?)", (pk, run_id, now_ns()))

    def _row_of(self, version: VersionInfo) -> int | None:
        """The versions row of ``version`` by its id, deleted or not (lineage outlives a soft
        delete until gc); None once gc purged it."""
        pk = self._pks.get(version.id)
        if pk is None:
            row = self._db().execute("SELECT id FROM versions WHERE artifact_id = ?", (version.id,)).fetchone()
            pk = None if row is None else int(row[0])
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
                f"SELECT {_VERSION_COLUMNS} {_VERSION_FROM} JOIN {table} l ON l.version_id = v.id "
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


def _syncfs(path: str) -> None:
    """Flush the filesystem holding ``path`` (Linux ``syncfs``; ``sync`` elsewhere).  One call
    per log is far cheaper than an fsync per blob (measured: 27 vs 143 us per 4 KiB file)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    os.sync()


def check_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidMetadata("metadata must be a JSON object")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidMetadata(f"metadata is not JSON-serialisable: {exc}") from exc
    return metadata


def _check_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """A run's config: a JSON object (W&B stores it as JSON too)."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise InvalidArgument("a run's config must be a dict")
    try:
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"a run's config is not JSON-serialisable: {exc}") from exc
    return config


def _dirs_of(paths: Iterable[str]) -> set[str]:
    dirs: set[str] = set()
    for path in paths:
        parent = split_dir(path)[0]
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = split_dir(parent)[0]
    return dirs
