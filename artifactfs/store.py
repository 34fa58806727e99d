"""The verified blob store: a content-addressed, size-bounded, multi-process cache on diskcache.

Keys are content addresses (``md5/<hex>``, ``xxh128/<hex>``), so a blob shared by several
versions, artifacts or mounts is stored and fetched once.  Nothing enters the cache before its
bytes have hashed to the digest the manifest promises (every hash is taken in
:mod:`artifactfs.digests`).  :meth:`BlobStore.obtain` is the one sequence every reader follows
(the mount's fetcher, ``download()``, ``artifactfs://``): a blob in place, trusted or hashed;
else the cached blob, opened or hashed again; else a source filled into the cache:

* :meth:`BlobStore.fill` writes a source into a temp file under the cache directory while
  hashing it, and only on a match *adopts* the temp file into diskcache (a rename, not a copy:
  see :class:`_AdoptingDisk`).  On a mismatch the temp file is deleted and
  :class:`~artifactfs.errors.DigestMismatch` raised.  A stream is hashed as it is copied; a
  download that writes at offsets (ranged, parallel HTTP) is hashed as its contiguous prefix
  grows, and to the end once it returns (:func:`~artifactfs.digests.write_verified`).
* :meth:`BlobStore.verify_in_place` serves a blob that already sits in a local file (the local
  registry's blob store) without copying it: it hashes the file once and records the file's
  identity (device, inode, size, mtime, ctime) in the cache.  The record is trusted only while
  that identity is unchanged: any write to the file changes its ctime and forces a new hash.

All methods block (disk I/O, hashing); the fetcher runs them in worker threads, except
:meth:`BlobStore.obtain` with ``quick``, which it calls on the trio loop: that runs only
:meth:`BlobStore.open_cached` and :meth:`BlobStore.open_trusted` (and hashes a small blob in
place, with no record).  Those two never write SQLite and never wait for it: they read
``cache.db`` on a connection whose busy timeout is :data:`QUICK_TIMEOUT` and take "busy" as a
miss (the caller's worker thread then asks again, and may wait), and they only *note* a use of a
blob in memory; the uses reach ``cache.db`` in one transaction per :meth:`BlobStore.flush_uses`,
which the daemon runs in a worker thread every :data:`USE_FLUSH_INTERVAL` seconds and every
eviction runs first.  A worker touches only its own file descriptors and the diskcache handle,
which is thread- and process-safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, overload

import diskcache

from . import defaults
from .digests import fd_holds, hash_fd, write_verified
from .errors import BlobChanged, CacheError, DigestMismatch, DiskFull, FetchError
from .fsutil import CACHE_INDEX, DISK_FULL, claim_cache_dir, fsync_dir, make_temp, pid_alive, syncfs
from .manifest import Entry
from .sources import BlobSource, open_blob

log = logging.getLogger(__name__)

DEFAULT_SIZE_LIMIT = defaults.CACHE_SIZE
_TRUST_PREFIX = "trust/"  # in-place blobs: key -> (path, *identity)
_CACHED_PREFIX = "cached/"  # cache files: key -> (path, *identity) taken once the file was adopted
#: Seconds a read of cache.db made on the trio loop may wait for a lock another process holds;
#: past that the answer is "busy", taken as a miss.  (In WAL mode a reader waits only in rare
#: cases, e.g. a connection in exclusive locking mode; a write transaction never blocks it.)
QUICK_TIMEOUT = 0.01
#: Seconds between the daemon's writes of blob uses (access times) into cache.db.
USE_FLUSH_INTERVAL = 10.0
_ROOM_SLACK = 1 << 20  # free space kept beyond a blob's size for SQLite's journal and directories
_NOFOLLOW = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK  # a FIFO planted there must not block
#: Blobs lying in place up to this size are hashed once per process, with no trust record (on the
#: trio loop too): hashing 64 KiB costs about what a thread hop does, and far less than writing a record.
INLINE_VERIFY_MAX = 64 * 1024
#: How :meth:`BlobStore.obtain` had a blob: its trust record held, hashed where it lies, from the
#: cache (opened, or hashed again), or fetched into the cache.
Outcome = Literal["trusted", "verified", "cached", "fetched"]


class Blob:
    """An open, verified blob: ``pread`` serves bytes from it.

    A blob backed by a file carries the identity (device, inode, size, mtime, ctime) the file had
    when its bytes were verified.  Every ``pread`` checks, after reading, that the file still has
    it (one ``fstat``, about a microsecond): a file truncated, extended or overwritten behind our
    back (a stray writer, a disk that lost a write) changes its size, mtime or ctime, and the
    bytes just read are refused with :class:`~artifactfs.errors.BlobChanged` instead of served.
    The check follows the read so that a write racing with it is seen too.
    """

    __slots__ = ("_data", "_fd", "identity", "pending", "size")

    def __init__(
        self,
        fd: int | None = None,
        data: bytes | None = None,
        size: int = 0,
        identity: Identity | None = None,
        pending: _Pending | None = None,
    ) -> None:
        self._fd = fd
        self._data = data
        self.size = size
        self.identity = identity
        # A blob served before its group commit: its temp file is renamed into the cache by the
        # batch, which moves its ctime (and nothing else).  That one move is accepted, to the
        # identity the batch found after its rename (_Pending.placed), and no other.
        self.pending = pending

    def pread(self, size: int, offset: int) -> bytes:
        if self._data is not None:
            return self._data[offset : offset + size]
        assert self._fd is not None
        try:
            data = os.pread(self._fd, size, offset)
            self._check()
        except OSError as exc:
            raise FetchError(f"reading a cached blob failed: {exc.strerror or exc}") from exc
        return data

    def preadinto(self, buffer: memoryview, offset: int) -> int:
        """:meth:`pread` into ``buffer`` (a writable byte view) with no copy: the number of
        bytes read, each checked as :meth:`pread` checks them."""
        if self._data is not None:
            data = self._data[offset : offset + len(buffer)]
            buffer[: len(data)] = data
            return len(data)
        assert self._fd is not None
        try:
            count = os.preadv(self._fd, [buffer], offset)
            self._check()
        except OSError as exc:
            raise FetchError(f"reading a cached blob failed: {exc.strerror or exc}") from exc
        return count

    def _check(self) -> None:
        """BlobChanged unless the open file still has the identity it was verified with."""
        if self.identity is None:
            return
        assert self._fd is not None
        st = os.fstat(self._fd)
        now = _identity(st)
        if now != self.identity:
            pending = self.pending
            if pending is not None and now[:4] == self.identity[:4]:
                if pending.placed is None and pending.moving:
                    return  # its batch is renaming it this instant (placed follows at once)
                if now == pending.placed:  # renamed into the cache by its batch
                    self.identity, self.pending = now, None
                    return
            if not (st.st_nlink == 0 and now[:4] == self.identity[:4]):
                raise BlobChanged("a verified blob changed on disk after it was verified")
            # Unlinked (evicted, or a deleted version's blob purged by gc) while we hold
            # it: unlinking moves only the ctime, and no one can open it by name again.
            self.identity = now

    def fileno(self) -> int | None:
        """The open file's descriptor (None for bytes held in memory): for copying it whole
        (``Artifact.download`` reflinks it); check :meth:`pread` afterwards, which proves the
        file still has its verified identity."""
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            try:  # not contextlib.suppress: a data loader closes thousands of blobs a second
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


Identity = tuple[int, int, int, int, int]


@dataclass(slots=True)
class _Adopt:
    """A value for ``Cache.set(read=True)`` that is moved into the cache instead of copied.
    ``final`` is set to the path it was moved to."""

    path: str
    final: str = ""


class _AdoptingDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache's file storage, plus adoption of a finished temp file by rename.

    Stock ``set(key, file, read=True)`` copies the file into the cache directory: a second full
    write of every blob.  The temp file already lives inside the cache directory, so a rename
    gives diskcache the same on-disk state (a ``.val`` file it owns, counted in its size) for free.

    ``store`` only names the file (``_Adopt.final``); the caller renames the temp file there
    once ``set`` has committed the row (:func:`_place`).  Row first, file second: a crash between
    the two leaves a row whose file is missing (a miss: fetched again), never a file no row
    names (which nothing would ever delete).
    """

    def filename(self, key: Any = diskcache.core.UNKNOWN, value: Any = diskcache.core.UNKNOWN) -> tuple[str, str]:
        """An adopted blob's name: ``xx/<random>.val``, one level of 256 directories, which stay
        (diskcache's own ``xx/yy/<random>.val`` made a new directory for almost every blob of a
        cache of thousands: an inode allocated, and three ``mkdir`` calls, per blob)."""
        if isinstance(value, _Adopt):
            hex_name = os.urandom(16).hex()
            filename = os.path.join(hex_name[:2], hex_name[2:] + ".val")
            return filename, os.path.join(self._directory, filename)
        names: tuple[str, str] = super().filename(key, value)
        return names

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if isinstance(value, _Adopt):
            filename, full_path = self.filename(key, value)
            value.final = full_path
            return os.stat(value.path).st_size, diskcache.core.MODE_BINARY, filename, None
        return super().store(value, read, key)


@dataclass(slots=True)
class _Pending:
    """A verified temp file waiting for its batch."""

    key: str
    adopt: _Adopt
    identity: Identity  # of the temp file after it was verified (its ctime moves on the rename)
    what: str
    moving: bool = False  # its batch is renaming it
    placed: Identity | None = None  # its identity right after that rename (only the ctime moved)


#: Called with each step of a batch (tests/test_crash.py kills the process there); None: nothing.
_batch_hook: Any = None


def _step(name: str) -> None:
    if _batch_hook is not None:
        _batch_hook(name)


class _Committer:
    """Group commit: many fills share one sync round and one SQLite transaction.

    A fill writes and verifies its temp file, hands it here and returns the blob at once, served
    from its descriptor (:attr:`Blob.pending`: the rename to come moves only its ctime).  This
    thread takes everything handed in (up to ``max_batch``, after waiting ``delay`` for more)
    and, in this order:

    1. ``syncfs`` of the cache's filesystem: the batch's bytes are durable;
    2. one transaction: the batch's rows, each naming the file it will be renamed to;
    3. the renames (a crash before them leaves rows whose files never arrived: misses);
    4. ``syncfs`` again: the renames are durable;
    5. one transaction: the identity records that let an open trust a file without hashing it.

    So after a crash a file is trusted only if its record was committed after its bytes (and its
    name) were durable; anything else is a miss (no row, or a row without its file) or a file that
    is hashed before use (a row without a record).  Until step 5 an open finds the pending file
    here (:meth:`open_pending`) by its temp or final name, with the identity it was verified
    with.  A batch that fails is dropped (temp files removed, rows deleted): its blobs were
    served and will be fetched again on the next miss.
    """

    def __init__(self, store: BlobStore, max_batch: int = 512, delay: float = 0.02) -> None:
        self.store = store
        self.max_batch = max_batch
        self.delay = delay
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._pending: dict[str, _Pending] = {}
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.committed = 0

    def submit(self, item: _Pending) -> None:
        with self._cond:
            if self._closed:
                raise CacheError("the blob cache is closed")
            self._queue.append(item)
            self._pending[item.key] = item
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="artifactfs-commit", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def open_pending(self, key: str) -> Blob | None:
        item = self._pending.get(key)
        if item is None:
            return None
        for path in (item.adopt.final, item.adopt.path):
            if not path:
                continue
            try:
                fd = os.open(path, _NOFOLLOW)
            except OSError:
                continue
            try:
                now = _identity(os.fstat(fd))
            except OSError:
                now = None
            if now is not None and now[:4] == item.identity[:4]:
                return Blob(fd=fd, size=item.identity[2], identity=item.identity, pending=item)
            os.close(fd)
        return None

    def flush(self) -> None:
        """Wait until everything handed in so far is committed (or dropped)."""
        with self._cond:
            while self._queue or self._busy:
                self._cond.wait()

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
            time.sleep(self.delay)  # let the fills of this moment join the batch
            with self._cond:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                self._busy = True
            try:
                self._commit(batch)
            except Exception:  # never let the committer die: drop the batch, keep serving
                log.exception("group commit of %d blobs failed", len(batch))
                self._drop(batch, None)
            finally:
                with self._cond:
                    for item in batch:
                        if self._pending.get(item.key) is item:
                            del self._pending[item.key]
                    self._busy = False
                    self._cond.notify_all()

    def _commit(self, batch: list[_Pending]) -> None:
        store, cache = self.store, self.store._cache
        _step("start")
        syncfs(store.tmp)  # 1. the bytes
        _step("synced")
        try:
            with cache.transact(retry=True):  # 2. the rows
                for item in batch:
                    cache.set(item.key, item.adopt, read=True)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            log.warning("cannot keep %d verified blobs in the cache (%s): served, not kept", len(batch), exc)
            self._drop(batch, None)
            return
        _step("rows")
        placed: list[_Pending] = []
        for item in batch:  # 3. the files
            try:
                item.moving = True
                _place(item.adopt)
            except OSError as exc:
                log.warning("cannot keep %s in the cache (%s): served, not kept", item.what, exc)
                self._drop([item], item.key)
                continue
            placed.append(item)
            with contextlib.suppress(OSError):  # none: no record, so it is hashed before reuse
                item.placed = _identity(os.stat(item.adopt.final, follow_symlinks=False))
        _step("renamed")
        placed = [item for item in placed if self._still_indexed(item)]
        syncfs(store.tmp)  # 4. the names
        _step("synced2")
        records: list[tuple[_Pending, Identity]] = []
        for item in placed:
            identity = item.placed
            if identity is not None and identity[:4] == item.identity[:4]:
                records.append((item, identity))
        try:
            with cache.transact(retry=True):  # 5. the records that let an open trust them
                for item, identity in records:
                    cache.set(_CACHED_PREFIX + item.key, (item.adopt.final, *identity))
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            log.warning(
                "cached %d blobs but could not record them (%s): each is hashed before reuse", len(records), exc
            )
            records = []
        _step("recorded")
        now = time.monotonic()
        for item, identity in records:
            store._memo[item.key] = (item.adopt.final, identity, now)
        self.batches += 1
        self.committed += len(records)
        if batch:
            store._make_room(keep=batch[-1].key)

    def _still_indexed(self, item: _Pending) -> bool:
        """Whether the row that names ``item``'s file is still there after the rename: a fill
        making room (another thread) may have evicted it in between, and then the file it
        would have deleted arrived afterwards; it is removed, so no file is left unindexed."""
        cache = self.store._cache
        try:
            db_key, raw = cache._disk.put(item.key)
            row = cache._sql("SELECT filename FROM Cache WHERE key = ? AND raw = ?", (db_key, raw)).fetchone()
        except (sqlite3.Error, diskcache.Timeout):
            row = None
        if row is not None and row[0] is not None and os.path.join(cache.directory, row[0]) == item.adopt.final:
            return True
        with contextlib.suppress(OSError):
            os.unlink(item.adopt.final)
        return False

    def _drop(self, batch: list[_Pending], committed: str | None) -> None:
        for item in batch:
            with contextlib.suppress(OSError):
                os.unlink(item.adopt.path)
        if committed is not None:
            with contextlib.suppress(sqlite3.Error, diskcache.Timeout):
                self.store._cache.delete(committed)


#: Blob directories this process made or found (at most 256 per cache directory): a fill into one
#: of them renames at once, with no ``mkdir`` first.
_made_dirs: set[str] = set()


def _place(adopt: _Adopt) -> None:
    """Rename the adopted temp file to the name its committed row gives it.  diskcache removes a
    directory once it is empty (eviction of a neighbour, in any process), so it is made again if
    need be (0700)."""
    sub = os.path.dirname(adopt.final)
    for attempt in (1, 2, 3):
        if sub not in _made_dirs:
            with contextlib.suppress(FileExistsError):
                os.mkdir(sub, 0o700)
            _made_dirs.add(sub)
        try:
            os.rename(adopt.path, adopt.final)
            return
        except FileNotFoundError:
            if attempt == 3 or not os.path.exists(adopt.path):
                raise
            _made_dirs.discard(sub)


class BlobStore:
    """The cache directory (mode 0700) and the rules for what may enter it."""

    def __init__(
        self,
        directory: str,
        size_limit: int | None = DEFAULT_SIZE_LIMIT,
        *,
        defer_uses: bool = False,
        group_commit: bool = False,
    ) -> None:
        """``size_limit`` None keeps the limit the directory last had (``artifactfs cache``
        opens a directory that mounts are using without changing it).  ``defer_uses``: the
        owner runs :meth:`flush_uses` itself, off the trio loop (the mount daemon); otherwise a
        use noted :data:`USE_FLUSH_INTERVAL` s after the last flush flushes them in the caller's
        thread (an API or fsspec reader, which may wait)."""
        self.directory = os.path.abspath(directory)
        self.defer_uses = defer_uses
        self._flushed_at = time.monotonic()
        try:
            claim_cache_dir(self.directory)
            self.tmp = os.path.join(self.directory, "tmp")
            _own_dir(self.tmp)
            _no_symlink(os.path.join(self.directory, CACHE_INDEX))
            self._cache = diskcache.Cache(
                self.directory,
                **({} if size_limit is None else {"size_limit": size_limit}),
                eviction_policy="least-recently-used",
                disk=_AdoptingDisk,
                cull_limit=0,  # no batch culls on set: _make_room evicts what is needed
            )
            # SQLite creates its files 0644 (less the umask); its -wal and -shm files copy the
            # database's mode, so one chmod keeps them all 0600.
            for name in (CACHE_INDEX, f"{CACHE_INDEX}-wal", f"{CACHE_INDEX}-shm"):
                _no_symlink(os.path.join(self.directory, name))
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(os.path.join(self.directory, name), 0o600)
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot use cache directory {self.directory}: {exc}") from exc
        # Per-process memo of what this store has already found and proven: key -> (file path,
        # its verified identity, monotonic time it was proven).  An open it answers asks no
        # SQLite at all.  Cache file names are random and never reused, so a memo path that
        # still opens with the same identity is still the verified blob.
        # Cache files and in-place blobs are remembered apart (a key may be both).
        self._memo: dict[str, tuple[str, Identity, float]] = {}
        self._trusted: dict[str, tuple[str, Identity, float]] = {}
        # Blobs used since the last flush_uses: key -> time.time() of the latest use.  Written by
        # single assignments (the loop, workers); flush_uses swaps it for a new dict.
        self._uses: dict[str, float] = {}
        self._readers = threading.local()  # per thread: a read-only connection, short busy timeout
        self._reader_connections: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self.busy_misses = 0  # quick reads that found cache.db locked (answered as misses)
        # Group commit (the mount daemon): fills hand their verified temp files to one committer
        # thread and are served at once; see _Committer.
        self._committer = _Committer(self) if group_commit else None

    def commit_pending(self) -> None:
        """Wait until every fill handed to the group commit so far is kept (or dropped)."""
        if self._committer is not None:
            self._committer.flush()

    def close(self) -> None:
        if self._committer is not None:
            self._committer.close()  # every pending fill committed (or dropped) first
        with contextlib.suppress(Exception):  # bookkeeping: never a reason to fail a close
            self.flush_uses()
        with self._readers_lock:
            for con in self._reader_connections:
                with contextlib.suppress(sqlite3.Error):
                    con.close()
            self._reader_connections.clear()
        self._readers = threading.local()
        self._cache.close()

    # -- quick reads (safe on the trio loop) ----------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._readers, "con", None)
        if con is None:
            con = sqlite3.connect(
                os.path.join(self.directory, CACHE_INDEX),
                timeout=QUICK_TIMEOUT,
                isolation_level=None,
                check_same_thread=False,  # closed by close(), from whichever thread
            )
            con.execute("PRAGMA query_only = ON")
            self._readers.con = con
            with self._readers_lock:
                self._reader_connections.append(con)
        return con

    def _quick_rows(self, *keys: str) -> dict[str, tuple[str | None, Any]]:
        """``key -> (filename, value)`` of the rows of ``keys`` that exist, read without writing
        (no access time) and without waiting more than :data:`QUICK_TIMEOUT` for a lock;
        ``value`` is a record (a tuple) or None.  sqlite3.Error when cache.db is busy."""
        disk = self._cache._disk
        wanted: dict[object, str] = {}
        params: list[object] = []
        for key in keys:
            db_key, raw = disk.put(key)
            wanted[db_key] = key
            params += [db_key, raw]
        where = " OR ".join(["(key = ? AND raw = ?)"] * len(keys))
        rows = (
            self._reader()
            .execute(
                f"SELECT key, filename, mode, value FROM Cache WHERE ({where}) "
                "AND (expire_time IS NULL OR expire_time > ?)",
                (*params, time.time()),
            )
            .fetchall()
        )
        out: dict[str, tuple[str | None, Any]] = {}
        for db_key, filename, mode, value in rows:
            record = None
            if filename is None and mode == diskcache.core.MODE_PICKLE and value is not None:
                try:  # our records: tuples pickled by diskcache into the row itself
                    record = pickle.loads(value)
                except Exception:  # a damaged row: no record
                    record = None
            if db_key in wanted:
                out[wanted[db_key]] = (filename, record)
        return out

    def _used(self, key: str) -> None:
        """Note a use of ``key``'s blob (its LRU position); written by :meth:`flush_uses`."""
        self._uses[key] = time.time()
        if not self.defer_uses and time.monotonic() - self._flushed_at >= USE_FLUSH_INTERVAL:
            self.flush_uses()

    def flush_uses(self) -> int:
        """Write the blobs used since the last flush into cache.db (their access times, which
        order eviction and ``cache prune`` in every process), in one transaction; how many.
        Blocks, up to diskcache's timeout, while another process holds cache.db: a worker
        thread's job (the daemon's, every :data:`USE_FLUSH_INTERVAL` s), and every eviction's
        first step.  Uses that could not be written are kept for the next flush."""
        self._flushed_at = time.monotonic()
        uses, self._uses = self._uses, {}
        items = list(uses.items())  # one C-level copy: a late use noted in the old dict is lost
        if not items:
            return 0
        cache = self._cache
        try:
            with cache.transact():
                for key, at in items:
                    db_key, raw = cache._disk.put(key)
                    cache._sql(
                        "UPDATE Cache SET access_time = MAX(access_time, ?) WHERE key = ? AND raw = ?",
                        (at, db_key, raw),
                    )
        except (sqlite3.Error, diskcache.Timeout) as exc:
            for key, at in items:
                self._uses.setdefault(key, at)
            log.info("cannot record %d blob uses in the cache index yet: %s", len(items), exc or type(exc).__name__)
            return 0
        return len(items)

    def quick_volume(self) -> int | None:
        """:attr:`volume` as a quick read (None when cache.db is busy): safe on the trio loop."""
        try:
            con = self._reader()
            ((pages,),) = con.execute("PRAGMA page_count").fetchall()
            ((size,),) = con.execute("SELECT value FROM Settings WHERE key = 'size'").fetchall()
        except (sqlite3.Error, ValueError):
            return None
        return int(pages) * int(self._cache._page_size) + int(size)

    @property
    def volume(self) -> int:
        try:
            return int(self._cache.volume())
        except (sqlite3.Error, diskcache.Timeout) as exc:
            raise CacheError(f"cannot read the size of the cache {self.directory}: {exc}") from exc

    @property
    def size_limit(self) -> int:
        """``--cache-size``: the bytes the cache keeps before it evicts."""
        return int(self._cache.size_limit)

    def __contains__(self, key: str) -> bool:
        try:
            return key in self._cache
        except (sqlite3.Error, diskcache.Timeout) as exc:
            raise CacheError(f"cannot read the cache index {self.directory}: {exc}") from exc

    @overload
    def obtain(
        self,
        key: str,
        entry: Entry,
        what: Callable[[], str],
        source: Callable[[], BlobSource],
        *,
        local: str | None = None,
        quick: Literal[False] = False,
        group: bool = False,
    ) -> tuple[Blob, Outcome]: ...

    @overload
    def obtain(
        self,
        key: str,
        entry: Entry,
        what: Callable[[], str],
        source: Callable[[], BlobSource],
        *,
        local: str | None = None,
        quick: Literal[True],
        group: bool = False,
    ) -> tuple[Blob, Outcome] | None: ...

    def obtain(
        self,
        key: str,
        entry: Entry,
        what: Callable[[], str],
        source: Callable[[], BlobSource],
        *,
        local: str | None = None,
        quick: bool = False,
        group: bool = False,
    ) -> tuple[Blob, Outcome] | None:
        """The verified blob of ``entry`` (content address ``key``), and how it was had: the one
        sequence every reader follows.  ``what()`` names the blob in messages; like ``source()``
        it is asked only where the sequence goes past what a quick open answers.

        * ``local``, a file where the bytes already lie (a local registry's blob): opened if its
          trust record still holds, else hashed where it lies (:meth:`verify_in_place`; up to
          :data:`INLINE_VERIFY_MAX` bytes with no record, once per process);
        * else the cached blob: opened if its file provably is the one verified, else hashed
          again, kept on a match and evicted on a mismatch (:meth:`open_verified`);
        * else ``source()``, asked only now (it may be a network call), filled into the cache,
          verified on the way (:meth:`fill`; ``group``: kept by the group commit).

        ``quick``: only what is cheap and never waits, for the trio loop (records read quickly,
        a busy ``cache.db`` taken as a miss; a small local blob hashed): None where the rest of
        the sequence is needed.  Otherwise it blocks: call it from a worker thread."""
        if local is not None:
            small = entry.size <= INLINE_VERIFY_MAX
            blob = self.open_trusted(key, local, persisted=not small)
            if blob is not None:
                return blob, "trusted"
            if quick and not small:
                return None
            return self.verify_in_place(key, entry, local, what(), persist=not small), "verified"
        blob = self.open_cached(key) if quick else self.open_verified(key, entry, what())
        if blob is not None:
            return blob, "cached"
        if quick:
            return None
        return self.fill(key, entry, source(), what(), group=group), "fetched"

    def _cached_file(self, key: str) -> str | None:
        """Worker thread: the path of ``key``'s cache file in diskcache's index (a read, which
        may wait for a busy cache.db), noting a use of it; None if there is none.  The file is
        not opened here: diskcache's ``get(read=True)`` would follow a symlink planted in its
        place (or block on a FIFO); callers open it themselves with ``O_NOFOLLOW``."""
        cache = self._cache
        db_key, raw = cache._disk.put(key)
        row = cache._sql("SELECT filename FROM Cache WHERE key = ? AND raw = ?", (db_key, raw)).fetchone()
        if row is None or row[0] is None:
            return None
        self._used(key)
        return os.path.join(cache.directory, str(row[0]))

    def open_cached(self, key: str, *, lazy: bool = False) -> Blob | None:
        """The cached blob for ``key``, opened, if its file is provably the one that was verified
        (same identity as recorded when it was adopted); else None.  Notes a use of it.
        Cheap and never waiting (an ``open``, an ``fstat``, at most one quick SQLite read, no
        write): the fetcher calls it on the trio loop.  A busy cache.db is a miss.  A cached
        file whose identity does not match is left for :meth:`open_verified`.  ``lazy``: a blob
        this process already proved is opened without the ``fstat``, and its first ``pread``
        proves it instead (``BlobChanged`` if it moved: then ask again without ``lazy``)."""
        memo = self._memo.get(key)
        if memo is not None:
            blob = _open_if(memo[0], memo[1], _NOFOLLOW, lazy=lazy)
            if blob is not None:
                self._used(key)
                return blob
            self._memo.pop(key, None)
        if self._committer is not None:
            blob = self._committer.open_pending(key)
            if blob is not None:
                return blob
        try:
            rows = self._quick_rows(key, _CACHED_PREFIX + key)
        except sqlite3.Error:  # busy, or a damaged index: a miss
            self.busy_misses += 1
            return None
        filename = rows.get(key, (None, None))[0]
        record = rows.get(_CACHED_PREFIX + key, (None, None))[1]
        if filename is None or not isinstance(record, tuple):
            return None
        path = os.path.join(self._cache.directory, filename)
        if record[0] != path:
            return None
        # O_NOFOLLOW for the file itself; a directory on its path swapped for a symlink leads
        # to another inode, which the identity refuses.
        blob = _open_if(path, tuple(record[1:]), _NOFOLLOW)
        if blob is None:
            return None
        assert blob.identity is not None
        self._memo[key] = (path, blob.identity, time.monotonic())
        self._used(key)
        return blob

    def open_verified(self, key: str, entry: Entry, what: str) -> Blob | None:
        """Worker thread: the cached blob for ``key`` after hashing it again, or None.

        For a cached file that :meth:`open_cached` could not prove (its size, inode, mtime or
        ctime moved since it was adopted, or its record was lost in a crash): hash it; on a match
        record its new identity and serve it, on a mismatch evict it (the caller fetches it
        again).  A symlink or anything but a regular file in its place is evicted unread."""
        blob = self.open_cached(key)
        if blob is not None:
            return blob
        try:
            path = self._cached_file(key)
        except (sqlite3.Error, diskcache.Timeout):
            return None
        if path is None:
            return None
        try:
            fd = os.open(path, _NOFOLLOW)
        except FileNotFoundError:  # evicted meanwhile by another process
            return None
        except OSError as exc:  # ELOOP: a symlink planted in its place
            self._evict(key, f"cached blob of {what} cannot be opened safely ({path}: {exc.strerror or exc})")
            return None
        try:
            st = os.fstat(fd)
            before = _identity(st)
            if not (fd_holds(fd, entry) and _identity(os.fstat(fd)) == before):
                os.close(fd)
                self._evict(key, f"cached blob of {what} is corrupt ({path})")
                return None
            try:
                self._cache.set(_CACHED_PREFIX + key, (path, *before), retry=True)
            except (OSError, sqlite3.Error) as exc:  # a full disk: the bytes are right all the same
                log.warning("cannot record the identity of the cached blob of %s (%s): serving it", what, exc)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.close(fd)
            if isinstance(exc, (OSError, sqlite3.Error, diskcache.Timeout)):
                raise FetchError(f"checking the cached blob of {what} failed: {exc}") from exc
            raise
        log.info("cached blob of %s changed identity but its bytes are right: trusting it again", what)
        self._memo[key] = (path, before, time.monotonic())
        return Blob(fd=fd, size=before[2], identity=before)

    def _evict(self, key: str, reason: str) -> None:
        """Drop ``key``'s cache file (unlinked by diskcache: a symlink itself, never its target)."""
        log.warning("%s: fetching it again", reason)
        self._memo.pop(key, None)
        try:
            self._cache.delete(key, retry=True)
            self._cache.delete(_CACHED_PREFIX + key, retry=True)
        except (sqlite3.Error, diskcache.Timeout) as exc:
            raise FetchError(f"cannot evict a damaged cache entry: {exc or type(exc).__name__}") from exc

    def fill(self, key: str, entry: Entry, source: BlobSource, what: str, *, group: bool = False) -> Blob:
        """Write ``source``'s bytes into the cache if they hash to ``entry.digest``; return the blob.

        ``source`` is tried first, then each of its fallbacks (``source.chain()``): a source that
        fails or whose bytes mismatch is logged and the next one tried; the last error is raised."""
        sources = list(source.chain())
        for index, candidate in enumerate(sources):
            try:
                return self._fill(key, entry, candidate, what, group)
            except (FetchError, DigestMismatch) as exc:
                if index == len(sources) - 1:
                    raise
                level = logging.DEBUG if candidate.optimistic else logging.WARNING
                log.log(level, "%s: %s: trying %s", candidate.description, exc, sources[index + 1].description)
        raise AssertionError("a source chain is never empty")

    def _fill(self, key: str, entry: Entry, source: BlobSource, what: str, group: bool = False) -> Blob:
        self._room_for(entry.size, what)
        try:
            fd, path = make_temp(self.tmp, ".part", os.O_RDWR)
        except OSError as exc:
            raise self._write_failed(exc, what, entry.size) from exc
        adopt = _Adopt(path)
        committer = self._committer if group else None
        try:
            try:
                size = write_verified(source, fd, entry, what)
                # Durable before visible (unless its batch makes it so): the bytes reach the disk
                # before the rename makes them a cache entry, and the rename reaches it before
                # the record that vouches for them.
                if committer is None:
                    os.fsync(fd)
                identity = _identity(os.fstat(fd))
            except DiskFull as exc:
                raise self._write_failed(exc.__cause__ or exc, what, entry.size) from exc
            except OSError as exc:
                raise self._write_failed(exc, what, entry.size) from exc
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        if committer is not None:
            # Verified: served from its descriptor now; kept once its batch commits.
            pending = _Pending(key, adopt, identity, what)
            committer.submit(pending)
            return Blob(fd=fd, size=size, identity=identity, pending=pending)
        # Verified and synced: from here on the bytes are served, kept or not.
        committed = False
        try:
            self._cache.set(key, adopt, read=True)  # the row, naming a file that is not there yet
            committed = True
            _place(adopt)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            return self._serve_unkept(fd, adopt, key if committed else None, size, what, exc)
        except BaseException:
            os.close(fd)
            raise
        try:
            fsync_dir(os.path.dirname(adopt.final))
            identity = _identity(os.fstat(fd))  # after the rename, which moves the ctime
            self._cache.set(_CACHED_PREFIX + key, (adopt.final, *identity))
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            # Kept, but with no record vouching for it: the next open hashes it before use.
            log.warning("cached %s but could not record it (%s): it is hashed again before it is reused", what, exc)
            try:
                identity = _identity(os.fstat(fd))
            except OSError as err:
                os.close(fd)
                raise FetchError(f"caching {what} failed: {err.strerror or err}") from err
        except BaseException:
            os.close(fd)
            raise
        self._make_room(keep=key)
        return Blob(fd=fd, size=size, identity=identity)

    def _serve_unkept(
        self, fd: int, adopt: _Adopt, committed: str | None, size: int, what: str, exc: BaseException
    ) -> Blob:
        """The verified temp file could not be adopted (a full disk refused SQLite's write, the
        index is busy or damaged, the rename failed): serve it from its descriptor without
        keeping it.  Its name is removed, and so is a row committed for it (``committed``), so
        nothing unrecorded stays in the cache directory."""
        with contextlib.suppress(OSError):
            os.unlink(adopt.path)
        if committed is not None:
            with contextlib.suppress(sqlite3.Error, diskcache.Timeout):
                self._cache.delete(committed)
        try:
            identity = _identity(os.fstat(fd))
        except OSError as err:
            os.close(fd)
            raise FetchError(f"caching {what} failed: {err.strerror or err}") from err
        log.warning("cannot keep %s in the cache (%s): serving it verified, from a file that is not kept", what, exc)
        return Blob(fd=fd, size=size, identity=identity)

    def _write_failed(self, exc: BaseException, what: str, size: int) -> FetchError:
        """The error for a failed write into the cache directory: DiskFull when its disk is
        full (with the free space in the message), else a FetchError."""
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            free = _free_bytes(self.tmp)
            shown = "unknown" if free is None else f"{free:,} bytes"
            return DiskFull(
                f"no space left in the cache directory {self.directory} for {what} ({size:,} bytes; "
                f"{shown} free): nothing of it was kept; free space or lower --cache-size"
            )
        if isinstance(exc, OSError):
            return FetchError(f"caching {what} failed: {exc.strerror or exc}")
        return FetchError(f"caching {what} failed: {exc}")

    def _room_for(self, size: int, what: str) -> None:
        """Before a fill: refuse a blob larger than the cache's whole disk (it can never be
        verified there), and evict least recently used blobs while the disk has less free space
        than the blob needs.  (The size limit, ``--cache-size``, is kept by :meth:`_make_room`.)
        Best effort: a blob held open by a reader frees its space only once it is closed."""
        try:
            st = os.statvfs(self.tmp)
        except OSError:
            return
        total = st.f_blocks * st.f_frsize
        if total and size > total:
            raise DiskFull(
                f"{what} ({size:,} bytes) is larger than the disk of the cache directory {self.directory} "
                f"({total:,} bytes): it cannot be verified there, so it is not served; use a larger --cache-dir"
            )
        free = st.f_bavail * st.f_frsize
        if free >= size + _ROOM_SLACK:
            return
        deficit = size + _ROOM_SLACK - free
        if self._committer is not None:
            # Blobs waiting for their batch hold space and cannot be evicted yet: commit them first.
            self._committer.flush()
        self.flush_uses()  # evict by the latest uses, ours included
        evicted = 0
        try:
            while deficit > 0:
                freed = self._evict_oldest()
                if freed is None:
                    break
                deficit -= freed
                evicted += 1
        except (diskcache.Timeout, sqlite3.Error) as exc:
            log.warning("cache eviction for free space failed: %s", exc)
        if evicted:
            log.info("evicted %d cached blobs to make room for %s (%d bytes)", evicted, what, size)

    def _make_room(self, keep: str) -> None:
        """Evict least recently used items, one at a time, until the cache fits its size limit.

        diskcache's own culling (``cull_limit`` in ``set``, ``Cache.cull``) deletes a whole batch
        of the oldest items once the limit is passed, however little room is needed, and may
        delete the item just stored (with 3 items and a limit of 2.5 it empties the cache).
        """
        cache = self._cache
        try:
            if cache.volume() <= cache.size_limit:
                return
            self.flush_uses()  # evict by the latest uses, ours included
            while cache.volume() > cache.size_limit:
                if self._evict_oldest(keep) is None:
                    return
        except (diskcache.Timeout, sqlite3.Error) as exc:  # the blob is stored; eviction can wait
            log.warning("cache eviction failed: %s", exc)

    def _evict_oldest(self, keep: str = "") -> int | None:
        """Evict the least recently used blob other than ``keep``: its file and row, its
        identity record and this process's memo of it.  Its size, or None when there is none (or
        another process deleted it first).  The one eviction step of :meth:`_room_for`,
        :meth:`_make_room` and :meth:`prune`; sqlite3.Error and diskcache.Timeout pass."""
        row = self._cache._sql(
            "SELECT key, size FROM Cache WHERE filename IS NOT NULL AND key != ? ORDER BY access_time LIMIT 1",
            (keep,),
        ).fetchone()
        if row is None or not self._cache.delete(row[0], retry=True):
            return None
        self._cache.delete(_CACHED_PREFIX + row[0], retry=True)
        self._memo.pop(row[0], None)
        return int(row[1])

    def open_trusted(self, key: str, path: str, *, persisted: bool = True, lazy: bool = False) -> Blob | None:
        """``path`` opened, if a trust record says it was verified and it has not changed since.

        Without ``persisted`` only this process's memo is asked (no SQLite read).  ``lazy``: as
        for :meth:`open_cached`, a blob this process already proved is checked by its first
        ``pread`` instead of at once."""
        memo = self._trusted.get(key)
        if memo is not None and memo[0] == path:
            if lazy:
                return _open_if(path, memo[1], lazy=True)
            identity: tuple[int, ...] = memo[1]
        elif not persisted:
            return None
        else:
            try:  # a quick read: asked on the trio loop; a busy cache.db is a miss
                record = self._quick_rows(_TRUST_PREFIX + key).get(_TRUST_PREFIX + key, (None, None))[1]
            except sqlite3.Error:
                self.busy_misses += 1
                return None
            if not isinstance(record, tuple) or record[0] != path:
                return None
            identity = tuple(record[1:])
        blob = _open_if(path, identity)
        if blob is None:
            self._trusted.pop(key, None)
            return None
        assert blob.identity is not None
        if memo is None or memo[0] != path or memo[1] != blob.identity:
            self._trusted[key] = (path, blob.identity, time.monotonic())
        return blob

    def verify_in_place(self, key: str, entry: Entry, path: str, what: str, *, persist: bool = True) -> Blob:
        """Open ``path``, hash it, and on a match remember its identity as trusted: in this
        process, and with ``persist`` also in the cache directory for later mounts."""
        fd = open_blob(path, what)
        try:
            return self._verify_fd(fd, key, entry, path, what, persist)
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, (OSError, sqlite3.Error, diskcache.Timeout)):
                raise FetchError(f"verifying {what} failed: {exc}") from exc
            raise

    def _verify_fd(self, fd: int, key: str, entry: Entry, path: str, what: str, persist: bool) -> Blob:
        trust_key = _TRUST_PREFIX + key
        before = _identity(os.fstat(fd))
        if before[2] != entry.size:  # never hash a blob of the wrong size (it could be huge)
            actual, size = "(not hashed)", before[2]
        else:
            actual, size = hash_fd(fd, entry.alg, limit=entry.size)
            if _identity(os.fstat(fd)) != before:
                raise FetchError(f"blob of {what} changed while it was verified")
        if actual != entry.digest or size != entry.size:
            self._trusted.pop(key, None)
            if persist:  # inline (small blobs, on the trio loop) no record was ever written
                self._cache.delete(trust_key)
            raise DigestMismatch(what, f"{entry.digest} ({entry.size} bytes)", f"{actual} ({size} bytes)")
        if persist:
            self._cache.set(trust_key, (path, *before))
            self._make_room(keep=trust_key)
        self._trusted[key] = (path, before, time.monotonic())  # only once the record is stored
        return Blob(fd=fd, size=size, identity=before)

    def usage(self) -> dict[str, int]:
        """What the directory holds: ``blobs`` (cached files) and their ``blob_bytes``,
        ``records`` (trust and identity records), ``size_limit``, ``volume`` (all of it)."""
        try:
            blobs, blob_bytes = self._cache._sql(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM Cache WHERE filename IS NOT NULL"
            ).fetchone()
            (records,) = self._cache._sql("SELECT COUNT(*) FROM Cache WHERE filename IS NULL").fetchone()
            volume = self.volume
        except (sqlite3.Error, diskcache.Timeout) as exc:
            raise CacheError(f"cannot read the cache index in {self.directory}: {exc}") from exc
        limit = int(self._cache.size_limit)
        return {"blobs": blobs, "blob_bytes": blob_bytes, "records": records, "size_limit": limit, "volume": volume}

    def prune(self, max_size: int) -> tuple[int, int]:
        """Evict least recently used blobs until the cached files hold at most ``max_size``
        bytes; ``(blobs evicted, bytes freed)``.

        Safe while mounts use the directory: eviction unlinks a file and deletes its rows, and a
        reader holding the blob open keeps reading it through its descriptor (an unlinked file
        stays readable, and :meth:`Blob.pread` accepts an unlink, which moves only the ctime);
        the next open of that content is a miss and fetches it again, verified."""
        cache = self._cache
        evicted = freed = 0
        self.flush_uses()
        try:
            while True:
                (total,) = cache._sql("SELECT COALESCE(SUM(size), 0) FROM Cache WHERE filename IS NOT NULL").fetchone()
                if total <= max_size:
                    break
                size = self._evict_oldest()
                if size is None:
                    break
                evicted += 1
                freed += size
        except (sqlite3.Error, diskcache.Timeout) as exc:
            raise CacheError(f"pruning the cache in {self.directory} failed: {exc}") from exc
        return evicted, freed

    def clear(self) -> tuple[int, int]:
        """Evict every blob (as :meth:`prune` to 0) and forget every trust record, so local
        registry blobs are hashed again on their next open; ``(blobs evicted, bytes freed)``."""
        evicted, freed = self.prune(0)
        try:
            for key in list(self._cache.iterkeys()):
                if isinstance(key, str) and key.startswith((_TRUST_PREFIX, _CACHED_PREFIX)):
                    self._cache.delete(key, retry=True)
        except (sqlite3.Error, diskcache.Timeout) as exc:
            raise CacheError(f"clearing the cache in {self.directory} failed: {exc}") from exc
        self._trusted.clear()
        return evicted, freed

    def clean_tmp(self, max_age: float = 3600.0) -> None:
        """Delete temp files of fills that died: at once when the process named in the file
        (``<pid>-<random>.part``) is gone, else (a pid reused, another pid namespace) once they
        are ``max_age`` seconds old.  They were never served: only adopted files are."""
        cutoff = time.time() - max_age
        me = os.getpid()
        with contextlib.suppress(OSError), os.scandir(self.tmp) as it:
            for item in it:
                with contextlib.suppress(OSError):
                    pid_text = item.name.partition("-")[0]
                    pid = int(pid_text) if pid_text.isdigit() else 0
                    if (pid and pid != me and not pid_alive(pid)) or item.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(item.path)


def _identity(st: os.stat_result) -> Identity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _open_if(
    path: str, identity: tuple[int, ...], flags: int = os.O_RDONLY | os.O_CLOEXEC, *, lazy: bool = False
) -> Blob | None:
    """``path`` opened as a blob if the file still has ``identity``; else None.  ``lazy``: open it
    without checking now; its first :meth:`Blob.pread` checks (BlobChanged if it moved)."""
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    if lazy:
        return Blob(fd, None, identity[2], identity)  # type: ignore[arg-type]  # an Identity
    try:
        now: tuple[int, ...] | None = _identity(os.fstat(fd))
    except OSError:
        now = None
    if now != identity:
        os.close(fd)
        return None
    return Blob(fd, None, identity[2], identity)  # type: ignore[arg-type]  # an Identity


def _free_bytes(path: str) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _own_dir(path: str) -> None:
    """Make ``path`` a real directory of ours (0700).  A symlink found in its place (planted in
    the cache directory) is removed, not followed: temp files must not be written elsewhere."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.mkdir(path, 0o700)
        return
    if stat.S_ISLNK(st.st_mode):
        log.warning("%s is a symlink: replacing it with a directory", path)
        os.unlink(path)
        os.mkdir(path, 0o700)
        return
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise CacheError(f"{path} is not a directory of this user: refusing the cache directory")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def _no_symlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise CacheError(f"{path} is a symlink: refusing the cache directory")
