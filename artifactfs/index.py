"""A version's manifest as an on-disk index: built once, streaming, then queried in place.

A W&B manifest of a million entries is ~150 MB of JSON; parsed whole into Python objects it
costs over a gigabyte.  Here it is parsed as a stream (``ijson`` with its C backend, yajl2_c:
one entry object at a time) into an SQLite file, and the mount asks that file for one
directory's children, one path, or the files after a path, never holding the manifest itself.

The file (format :data:`FORMAT`)::

    meta(key, value)         format, key, digest, algorithm, count, size, storage policy (+ config)
    nodes(id, parent, name, dir, digest, size, ref, birth, extra)     one row per file and directory
        UNIQUE (parent, name)   lookups and listings in name order (readdir offsets), and the one
                                check that refuses a duplicate path or a path that is both a file
                                and a directory
    dirs(id, path)  UNIQUE (path)   a directory's row id by its path ('' is 0, the root)

Trust: an index is named ``<key>-<xxh128 of the file>.index`` and written to a temp file,
fsynced, checksummed and renamed (then the directory is fsynced), so a reader sees a whole index
or none.  :func:`open_index` hashes the file before it is used (XXH128: ~30 ms for a
million-entry index in the page cache) and checks the key and artifact digest it records: a
damaged or foreign index is deleted, and the caller builds it again from the manifest.  The
build computes the artifact digest of what it indexed (W&B's ``path:digest`` lines in path
order) and refuses a manifest whose digest is not the version's, so what the index serves is
exactly what the digest names.

Readers open the file read-only with ``immutable=1``: no locks, no journal, nothing another
process can hold, so queries are safe on the mount's trio loop (each is a few B-tree page
reads, tens of microseconds).  Each thread gets its own connection, with a small page cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import urllib.parse
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol

import ijson
import xxhash

from .digests import new_hasher
from .errors import ArtifactFSError, ManifestError
from .fsutil import fsync_dir, make_temp
from .manifest import DIGEST_HEADER, MD5, STORAGE_POLICY, Entry, entry_fields

log = logging.getLogger(__name__)

FORMAT = 1
SUFFIX = ".index"
_BATCH = 20_000  # rows per executemany during a build
_READ_CHUNK = 1 << 20

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE nodes (
    id INTEGER PRIMARY KEY, parent INTEGER NOT NULL, name TEXT NOT NULL, dir INTEGER NOT NULL,
    digest TEXT, size INTEGER, ref TEXT, birth TEXT, extra TEXT);
CREATE TABLE dirs (id INTEGER PRIMARY KEY, path TEXT NOT NULL);
"""
_INDEXES = """
CREATE UNIQUE INDEX nodes_name ON nodes (parent, name);
CREATE UNIQUE INDEX dirs_path ON dirs (path);
"""
_COLUMNS = "id, name, dir, digest, size, ref, birth, extra"


class IndexDamaged(ArtifactFSError):
    """An index file that is not whole or not the one asked for (it is rebuilt, never served)."""


@dataclass(frozen=True, slots=True)
class Child:
    """A name in an indexed directory: ``entry`` for a file, None for a directory.  ``id`` is
    the node's row id, stable for the life of the index (a readdir offset may use it)."""

    id: int
    name: str
    entry: Entry | None


class Listing:
    """A directory's children in name order, compact (~20 bytes an entry instead of ~200 as
    Python tuples): the names as UTF-8 joined by ``/`` (which no name holds), their ids, and
    their sizes, -1 for a directory.  A name's position is its readdir offset: a listing of an
    immutable version is the same every time it is made, so an offset stays valid across a
    listing dropped from a cache and made again."""

    __slots__ = ("ids", "names", "sizes")

    def __init__(self, names: bytes, ids: array, sizes: array) -> None:  # type: ignore[type-arg]
        self.names = names
        self.ids = ids
        self.sizes = sizes

    @classmethod
    def of(cls, rows: Iterable[tuple[int, str, int, int | None]]) -> Listing:
        """From ``(id, name, is_dir, size)`` rows in name order."""
        rows = list(rows)
        ids = [r[0] for r in rows]
        sizes = [-1 if r[2] else (r[3] or 0) for r in rows]
        return cls(
            "/".join([r[1] for r in rows]).encode(),
            array("I" if not ids or max(ids) < 1 << 32 else "Q", ids),
            array("i" if not sizes or max(sizes) < 1 << 31 else "q", sizes),
        )

    def __len__(self) -> int:
        return len(self.ids)

    def split_names(self) -> list[bytes]:
        """The names, as the kernel gets them."""
        return self.names.split(b"/") if self.ids else []

    @property
    def nbytes(self) -> int:
        """Roughly what it holds in memory."""
        return 200 + len(self.names) + self.ids.itemsize * len(self.ids) + self.sizes.itemsize * len(self.sizes)


class Contents(Protocol):
    """A version's files and directories as a mount asks for them, with an integer id per
    node that is stable for the life of the version (0 is the root): :class:`ManifestIndex`
    (a remote manifest's index file) and a local registry's own rows
    (``registry.local.LocalContents``).  Answers come from disk, not from memory held per entry;
    they are quick enough to ask on the mount's loop."""

    count: int

    def get(self, path: str) -> Child | None:
        """The file or directory at ``path`` ('' is the root); None if there is none."""

    def by_id(self, node_id: int) -> tuple[str, Child] | None:
        """``(path, child)`` of the node ``node_id`` (0: the root), or None."""

    def listing(self, path: str) -> Listing | None:
        """Directory ``path``'s children, compact, in name order; None if it is no directory."""

    def list_dir(self, path: str, after: str | None = None, limit: int = -1) -> list[Child] | None:
        """Children of directory ``path`` in name order (after ``after``, at most ``limit``)."""

    def following(self, path: str, limit: int) -> list[Entry]:
        """Up to ``limit`` files after ``path`` in its directory (name order)."""


def index_key(artifact_id: str, digest: str) -> str:
    """The name stem of a version's index: its artifact id and digest (hex of SHA-256)."""
    import hashlib

    return hashlib.sha256(f"{artifact_id}\n{digest}".encode()).hexdigest()[:40]


def file_sum(path: str) -> str:
    """XXH128 of a whole file (hex)."""
    h = xxhash.xxh3_128()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


# -- reading ------------------------------------------------------------------------------------


class ManifestIndex:
    """One index file, read-only.  Thread-safe: each thread queries through its own connection."""

    def __init__(self, path: str, meta: dict[str, str]) -> None:
        self.path = path
        self.key = meta["key"]
        self.digest = meta["digest"]
        self.count = int(meta["count"])
        self.size = int(meta["size"])
        self.storage_policy = meta["storage_policy"]
        self.storage_policy_config: dict[str, Any] = json.loads(meta["storage_policy_config"])
        self._local = threading.local()
        self._dir_paths: dict[int, str] = {0: ""}

    def __repr__(self) -> str:
        return f"ManifestIndex({os.path.basename(self.path)!r}, {self.count} entries)"

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = _connect(self.path)
            db.execute("PRAGMA cache_size = -1024")
            self._local.db = db
        return db

    def close(self) -> None:
        """Close this thread's connection (others close when their thread's state goes)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def dir_id(self, path: str) -> int | None:
        """The row id of directory ``path`` ('' is the root, 0); None if it is not one."""
        if path == "":
            return 0
        row = self._db().execute("SELECT id FROM dirs WHERE path = ?", (path,)).fetchone()
        return None if row is None else int(row[0])

    def dir_path(self, dir_id: int) -> str:
        known = self._dir_paths.get(dir_id)
        if known is None:
            row = self._db().execute("SELECT path FROM dirs WHERE id = ?", (dir_id,)).fetchone()
            if row is None:
                raise IndexDamaged(f"{self.path}: no directory {dir_id}")
            known = row[0]
            if len(self._dir_paths) > 4096:
                self._dir_paths.clear()
                self._dir_paths[0] = ""
            self._dir_paths[dir_id] = known
        return known

    def _child(self, parent_path: str, row: tuple[Any, ...]) -> Child:
        rid, name, is_dir, digest, size, ref, birth, extra = row
        if is_dir:
            return Child(rid, name, None)
        path = f"{parent_path}/{name}" if parent_path else name
        return Child(rid, name, Entry(path, digest, size, ref, birth, json.loads(extra) if extra else {}))

    def get(self, path: str) -> Child | None:
        """The file or directory at ``path`` ('' is the root); None if there is none."""
        if path == "":
            return Child(0, "", None)
        if path[0] == "/" or path[-1] == "/" or "//" in path:
            return None  # "/a" would otherwise find "a"
        parent, _, name = path.rpartition("/")
        pid = self.dir_id(parent)
        if pid is None:
            return None
        row = self._db().execute(f"SELECT {_COLUMNS} FROM nodes WHERE parent = ? AND name = ?", (pid, name)).fetchone()
        return None if row is None else self._child(parent, row)

    def by_id(self, node_id: int) -> tuple[str, Child] | None:
        """``(path, child)`` of the node with row id ``node_id`` (0: the root), or None."""
        if node_id == 0:
            return "", Child(0, "", None)
        row = self._db().execute(f"SELECT parent, {_COLUMNS} FROM nodes WHERE id = ?", (node_id,)).fetchone()
        if row is None:
            return None
        parent = self.dir_path(row[0])
        child = self._child(parent, row[1:])
        return (f"{parent}/{child.name}" if parent else child.name), child

    def list_dir(self, path: str, after: str | None = None, limit: int = -1) -> list[Child] | None:
        """Children of directory ``path`` in name order, those after the name ``after`` when it
        is given, at most ``limit`` (-1: all).  None if ``path`` is no directory."""
        pid = self.dir_id(path)
        if pid is None:
            return None
        if after is None:
            rows = self._db().execute(
                f"SELECT {_COLUMNS} FROM nodes WHERE parent = ? ORDER BY name LIMIT ?", (pid, limit)
            )
        else:
            rows = self._db().execute(
                f"SELECT {_COLUMNS} FROM nodes WHERE parent = ? AND name > ? ORDER BY name LIMIT ?",
                (pid, after, limit),
            )
        return [self._child(path, row) for row in rows]

    def listing(self, path: str) -> Listing | None:
        """The children of directory ``path`` as a compact :class:`Listing`: what a readdir
        needs, without making entries.  None if ``path`` is no directory."""
        pid = self.dir_id(path)
        if pid is None:
            return None
        rows = self._db().execute("SELECT id, name, dir, size FROM nodes WHERE parent = ? ORDER BY name", (pid,))
        return Listing.of(rows.fetchall())

    def following(self, path: str, limit: int) -> list[Entry]:
        """Up to ``limit`` files after ``path`` in its directory (name order)."""
        parent, _, name = path.rpartition("/")
        out: list[Entry] = []
        after = name
        while len(out) < limit:
            page = self.list_dir(parent, after, limit - len(out))  # subdirectories skipped: ask again
            if not page:
                break
            out.extend(c.entry for c in page if c.entry is not None)
            after = page[-1].name
        return out[:limit]

    def iter_entries(self) -> Iterator[Entry]:
        """Every file, in row order (the manifest's order), with its full path."""
        db = _connect(self.path)  # its own connection: a long walk, maybe in another thread
        try:
            for row in db.execute(f"SELECT parent, {_COLUMNS} FROM nodes WHERE dir = 0 ORDER BY id"):
                child = self._child(self.dir_path(row[0]), row[1:])
                assert child.entry is not None
                yield child.entry
        finally:
            db.close()


def _connect(path: str) -> sqlite3.Connection:
    uri = "file:" + urllib.parse.quote(path) + "?mode=ro&immutable=1"
    return sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)


def find_index(directory: str, key: str) -> str | None:
    """The path of ``key``'s index in ``directory``, if one was kept."""
    prefix = key + "-"
    try:
        with os.scandir(directory) as it:
            for item in it:
                if item.name.startswith(prefix) and item.name.endswith(SUFFIX):
                    return item.path
    except FileNotFoundError:
        return None
    return None


def open_index(directory: str, key: str, digest: str) -> ManifestIndex | None:
    """``key``'s index from ``directory`` after checking it (checksum, format, key, digest);
    None when there is none.  A damaged one is deleted (and logged), and None returned: the
    caller builds it again."""
    path = find_index(directory, key)
    if path is None:
        return None
    try:
        return check_index(path, key, digest)
    except IndexDamaged as exc:
        log.warning("manifest index %s is damaged (%s): building it again", os.path.basename(path), exc)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None


def check_index(path: str, key: str, digest: str) -> ManifestIndex:
    """The index at ``path``, or IndexDamaged if its content is not what its name promises."""
    name = os.path.basename(path)
    want = name[len(key) + 1 : -len(SUFFIX)]
    try:
        actual = file_sum(path)
    except OSError as exc:
        raise IndexDamaged(f"cannot read it: {exc.strerror or exc}") from None
    if actual != want:
        raise IndexDamaged("its checksum does not match")
    try:
        db = _connect(path)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise IndexDamaged(f"not readable: {exc}") from None
    if meta.get("format") != str(FORMAT):
        raise IndexDamaged(f"format {meta.get('format')!r}, expected {FORMAT}")
    if meta.get("key") != key or (digest and meta.get("digest") != digest):
        raise IndexDamaged("it indexes another manifest")
    try:
        return ManifestIndex(path, meta)
    except (KeyError, ValueError) as exc:
        raise IndexDamaged(f"incomplete metadata ({exc})") from None


# -- building -----------------------------------------------------------------------------------


class _Map(dict):  # type: ignore[type-arg]
    """ijson's object type during a build: refuses a key seen twice in one object (json.loads
    would keep the last silently, so a manifest could show one entry and verify another)."""

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self:
            raise ManifestError(f"manifest: duplicate key {key[:300]!r}")
        super().__setitem__(key, value)


_TOP_FIELDS = frozenset(("version", "storagePolicy", "storagePolicyConfig"))


def _top_level(f: IO[bytes]) -> dict[str, Any]:
    """The manifest's top-level fields other than ``contents`` (and whether it has one), read
    with ijson's event stream but without building ``contents``.  When every field a manifest
    has came before ``contents`` (the order the SDK writes), the rest is not read here: events
    are a Python loop (~1 s per million entries), and the ``contents`` pass parses the whole
    document anyway (a key after ``contents`` is then not looked at)."""
    out: dict[str, Any] = {}
    contents = 0
    f.seek(0)
    events = ijson.parse(f, use_float=True)
    try:
        prefix, event, value = next(events)
    except StopIteration:
        raise ManifestError("manifest: empty document") from None
    if event != "start_map":
        raise ManifestError("manifest: expected a JSON object")
    for prefix, event, value in events:
        if prefix == "" and event == "map_key":
            if value in out or (value == "contents" and contents):
                raise ManifestError(f"manifest: duplicate key {value[:300]!r}")
            if value == "contents":
                contents += 1
                if out.keys() >= _TOP_FIELDS:
                    break
                # ijson cannot skip a value, but the C backend's items() filter discards
                # events below a prefix in C: the caller reads contents with kvitems.
                continue
            out[value] = _value_after(events, value)
    out["\0contents"] = contents
    return out


def _value_after(events: Iterator[tuple[str, str, Any]], key: str) -> Any:
    builder = ijson.ObjectBuilder(map_type=_Map)
    depth = 0
    for _prefix, event, value in events:
        builder.event(event, value)
        if event in ("start_map", "start_array"):
            depth += 1
        elif event in ("end_map", "end_array"):
            depth -= 1
        if depth == 0:
            return builder.value
    raise ManifestError(f"manifest: truncated after {key!r}")


def build_index(
    manifest_path: str,
    directory: str,
    key: str,
    *,
    expect_digest: str = "",
    alg: str = MD5,
    what: str = "manifest",
    sizer: Callable[[str, str, str], int | None] | None = None,
) -> str:
    """Index the manifest JSON at ``manifest_path`` into ``directory`` as ``key``'s index and
    return its path.  Checks what ``Manifest.loads``/``from_json`` check (version, entry paths
    and fields, duplicate keys, a path that is both a file and a directory) and, when
    ``expect_digest`` is given, that the entries hash to it: ManifestError otherwise, and
    nothing is kept.  ``sizer(path, ref, digest)`` gives a reference entry recorded with size 0
    its real size (W&B's ``wandb-artifact://`` references), or None to keep 0."""
    fd, tmp = make_temp(directory, ".tmp")
    os.close(fd)
    try:
        with open(manifest_path, "rb") as f:
            try:
                top = _top_level(f)
            except ijson.JSONError as exc:
                raise ManifestError(f"{what}: not valid JSON ({str(exc)[:200]})") from None
            except RecursionError:
                raise ManifestError(f"{what}: nested too deeply") from None
            version = top.get("version")
            if version != 1:
                raise ManifestError(f"{what}: unsupported version {version!r} (expected 1)")
            policy = top.get("storagePolicy", STORAGE_POLICY)
            if not isinstance(policy, str):
                raise ManifestError(f"{what}: invalid storagePolicy")
            config = top.get("storagePolicyConfig") or {}
            if not isinstance(config, dict):
                raise ManifestError(f"{what}: invalid storagePolicyConfig")
            if top["\0contents"] != 1:
                raise ManifestError(f"{what}: missing or invalid contents")
            f.seek(0)
            digest, count, size = _load(f, tmp, alg, what, sizer)
        if expect_digest and digest != expect_digest:
            raise ManifestError(
                f"{what} does not match the artifact digest (artifact {expect_digest}, manifest {digest}): refusing it"
            )
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            meta = {
                "format": str(FORMAT),
                "key": key,
                "digest": digest,
                "algorithm": alg,
                "count": str(count),
                "size": str(size),
                "storage_policy": policy,
                "storage_policy_config": json.dumps(config, sort_keys=True),
            }
            db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        finally:
            db.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        final = os.path.join(directory, f"{key}-{file_sum(tmp)}{SUFFIX}")
        os.replace(tmp, final)
        fsync_dir(directory)
        return final
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _load(
    f: IO[bytes], tmp: str, alg: str, what: str, sizer: Callable[[str, str, str], int | None] | None
) -> tuple[str, int, int]:
    """Stream ``contents`` into a new database at ``tmp``: ``(artifact digest, count, size)``."""
    db = sqlite3.connect(tmp, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        db.execute("PRAGMA cache_size = -32768")  # 32 MiB: the build's memory is bounded by it
        db.execute("PRAGMA temp_store = FILE")
        db.executescript(_SCHEMA)
        db.execute("BEGIN")
        dirs: dict[str, int] = {"": 0}
        rows: list[tuple[Any, ...]] = []
        dir_rows: list[tuple[int, str]] = []
        hasher = new_hasher(alg)
        hasher.update(DIGEST_HEADER)
        ordered = True
        last = ""
        lines: list[str] = []  # "path:digest" lines not hashed yet (hashed a batch at a time)
        next_id = 1
        count = total = 0
        try:
            items = ijson.kvitems(f, "contents", use_float=True)
            for path, obj in items:
                digest, size, ref, birth, fields = entry_fields(path, obj)
                extra = json.dumps(fields, ensure_ascii=False) if fields else None
                if ref is not None and not size and sizer is not None:
                    size = sizer(path, ref, digest) or 0
                if ordered:
                    if path > last:
                        lines.append(f"{path}:{digest}\n")
                        last = path
                    else:
                        ordered = False
                parent, _, name = path.rpartition("/")
                pid = dirs.get(parent)
                if pid is None:
                    pid, next_id = _add_dirs(parent, dirs, rows, dir_rows, next_id)
                rows.append((next_id, pid, name, 0, digest, size, ref, birth, extra))
                next_id += 1
                count += 1
                total += size
                if len(rows) >= _BATCH:
                    _flush(db, rows, dir_rows)
                    hasher.update("".join(lines).encode())
                    lines.clear()
        except ijson.JSONError as exc:
            raise ManifestError(f"{what}: not valid JSON ({str(exc)[:200]})") from None
        except RecursionError:
            raise ManifestError(f"{what}: nested too deeply") from None
        _flush(db, rows, dir_rows)
        hasher.update("".join(lines).encode())
        del lines
        db.execute("COMMIT")
        try:
            db.executescript(_INDEXES)
        except sqlite3.IntegrityError:
            raise ManifestError(f"{what}: {_clash(db)} is both a file and a directory, or named twice") from None
        if not ordered:
            hasher = _digest_in_path_order(db, alg)
        del dirs
        return hasher.hexdigest(), count, total
    finally:
        db.close()


def _add_dirs(
    parent: str, dirs: dict[str, int], rows: list[tuple[Any, ...]], dir_rows: list[tuple[int, str]], next_id: int
) -> tuple[int, int]:
    """Add directory ``parent`` and its missing ancestors: ``(its id, next free id)``."""
    missing = []
    d = parent
    while d not in dirs:
        missing.append(d)
        d = d.rpartition("/")[0]
    for d in reversed(missing):
        up, _, leaf = d.rpartition("/")
        dirs[d] = next_id
        rows.append((next_id, dirs[up], leaf, 1, None, None, None, None, None))
        dir_rows.append((next_id, d))
        next_id += 1
    return dirs[parent], next_id


def _flush(db: sqlite3.Connection, rows: list[tuple[Any, ...]], dir_rows: list[tuple[int, str]]) -> None:
    db.executemany("INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.executemany("INSERT INTO dirs VALUES (?, ?)", dir_rows)
    rows.clear()
    dir_rows.clear()


def _clash(db: sqlite3.Connection) -> str:
    row = db.execute(
        "SELECT n.parent, n.name FROM nodes n GROUP BY n.parent, n.name HAVING count(*) > 1 LIMIT 1"
    ).fetchone()
    if row is None:
        return "a path"
    parent = db.execute("SELECT path FROM dirs WHERE id = ?", (row[0],)).fetchone()
    path = f"{parent[0]}/{row[1]}" if parent and parent[0] else row[1]
    return repr(path[:300])


def _digest_in_path_order(db: sqlite3.Connection, alg: str) -> Any:
    """The artifact digest of a manifest whose entries were not in path order.  A walk of the
    directories with each one's children ordered by ``name`` for files and ``name/`` for
    directories visits files in the order of their full paths (``'/'`` sorts by its byte like
    any other), holding one directory's names per level, never the whole manifest."""
    hasher = new_hasher(alg)
    hasher.update(DIGEST_HEADER)
    stack: list[tuple[int | None, str]] = [(0, "")]  # a directory (id, path) or a line (None, text)
    while stack:
        dir_id, text = stack.pop()
        if dir_id is None:
            hasher.update(text.encode())
            continue
        kids = db.execute("SELECT id, name, dir, digest FROM nodes WHERE parent = ?", (dir_id,)).fetchall()
        kids.sort(key=lambda k: k[1] + "/" if k[2] else k[1])
        for rid, name, is_dir, digest in reversed(kids):
            path = f"{text}/{name}" if text else name
            stack.append((rid, path) if is_dir else (None, f"{path}:{digest}\n"))
    return hasher


__all__ = [
    "FORMAT",
    "Child",
    "Contents",
    "IndexDamaged",
    "Listing",
    "ManifestIndex",
    "build_index",
    "check_index",
    "find_index",
    "index_key",
    "open_index",
]
