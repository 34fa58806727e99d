"""What a remote backend keeps of its versions' manifests, written once for any of them.

A backend gives three callables: ``fetch(version, fd)`` (writes the manifest document into
an empty file),
``fetch_urls(version, paths) -> {path: url}`` (download URLs for some files) and, optionally,
``sizer(version, depth)`` (sizes of reference entries recorded with size 0).  This module keeps:

* **manifests on disk** under ``cache_dir/manifests``: the JSON as fetched (``<key>.json``) and
  its index (``<key>-<checksum>.index``, :mod:`artifactfs.index`), keyed by artifact id and
  digest.  A remount opens the index after checking it (checksum, key, artifact digest): no
  fetch, no parse.  A damaged index is rebuilt from the JSON; a damaged JSON is fetched again.
  Nothing is kept, nor served, unless the whole manifest passed every check.
* **a bounded set of open indexes** in memory (least recently used closed first): an index
  holds no entries, only SQLite connections with a small page cache each.
* **download URLs**, asked for in batches (the wanted file and the next files of its directory
  that have none, the order a directory walk reads them), kept up to ``url_max_age`` and at
  most ``max_urls``; a URL another thread is asking for is waited for, not asked for twice.

Without a cache directory, manifests and indexes live in a private temporary directory removed
by :meth:`ManifestKeeper.close`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import IO

from ..errors import ArtifactFSError, EntryNotFound, FetchError, ManifestError
from ..fsutil import fsync_dir, make_temp, pid_alive
from ..index import ManifestIndex, build_index, index_key, open_index
from ..manifest import MD5, XXH128, Entry, Manifest, write_json
from .base import DirEntry, VersionInfo

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 1 << 30  # a million-entry manifest is ~150 MB; refuse anything absurd
MANIFEST_XXH128 = "MANIFEST_XXH128"

Fetch = Callable[[VersionInfo, int], None]
FetchUrls = Callable[[VersionInfo, list[str]], dict[str, str]]
#: ``sizer(version, depth)`` -> ``size(path, ref, digest)`` for that version's build, or None.
Sizer = Callable[[VersionInfo, int], Callable[[str, str, str], int | None] | None]


class ManifestKeeper:
    """Manifests, their indexes and file URLs of one remote registry.  Thread-safe."""

    def __init__(
        self,
        cache_dir: str | None,
        fetch: Fetch,
        fetch_urls: FetchUrls,
        *,
        sizer: Sizer | None = None,
        max_loaded: int = 16,
        url_batch: int = 100,
        max_urls: int = 20000,
        url_max_age: float = 45 * 60.0,
        url_wait: float = 60.0,
    ) -> None:
        self._own_dir = cache_dir is None
        if cache_dir is None:
            self.directory = tempfile.mkdtemp(prefix="artifactfs-manifests-")
        else:
            self.directory = os.path.join(cache_dir, "manifests")
        self._fetch = fetch
        self._fetch_urls = fetch_urls
        self._sizer = sizer
        self.max_loaded = max_loaded
        self.url_batch = url_batch
        self.max_urls = max_urls
        self.url_max_age = url_max_age
        self.url_wait = url_wait
        self._lock = threading.Lock()
        self._open: OrderedDict[str, ManifestIndex] = OrderedDict()  # artifact id -> index (LRU)
        self._loading: dict[str, threading.Lock] = {}
        self._urls: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._url_waits: dict[tuple[str, str], threading.Event] = {}
        self._ahead: set[threading.Event] = set()  # the events of requests asked ahead (prepare)
        if not self._own_dir:
            remove_dead_temps(self.directory)

    def close(self) -> None:
        with self._lock:
            self._open.clear()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- indexes --------------------------------------------------------------------------------

    def loaded(self, version: VersionInfo) -> bool:
        """Cheap, no I/O: whether ``version``'s index is open (its queries are then local)."""
        return version.id in self._open

    def loaded_index(self, artifact_id: str) -> ManifestIndex | None:
        return self._open.get(artifact_id)

    def json_path(self, version: VersionInfo) -> str:
        return os.path.join(self.directory, index_key(version.id, version.digest) + ".json")

    def load(self, version: VersionInfo) -> ManifestIndex:
        """``version``'s index, opened (checked) or built (fetching the manifest if it is not
        on disk); one build per artifact however many ask at once."""
        index = self._open.get(version.id)
        if index is not None:
            with self._lock, contextlib.suppress(KeyError):
                self._open.move_to_end(version.id)
            return index
        with self._lock:
            gate = self._loading.setdefault(version.id, threading.Lock())
        with gate:
            index = self._open.get(version.id)
            if index is not None:
                return index
            try:
                index = self.open_or_build(version)
                with self._lock:
                    self._open[version.id] = index
                    while len(self._open) > max(1, self.max_loaded):
                        self._open.popitem(last=False)
            finally:
                with self._lock:
                    self._loading.pop(version.id, None)
        log.debug("%s: manifest index open (%d entries)", version.ref, index.count)
        return index

    def open_or_build(self, version: VersionInfo, depth: int = 0) -> ManifestIndex:
        """The checked index of ``version`` from disk, else built from the kept JSON, else from
        a fresh fetch.  Not kept open here (see :meth:`load`)."""
        key = index_key(version.id, version.digest)
        index = open_index(self.directory, key, version.digest)
        if index is not None:
            return index
        path = self.json_path(version)
        if os.path.exists(path):
            try:
                return self._build(version, path, key, depth)
            except ManifestError as exc:  # damaged on disk: fetch it again
                log.warning("cached manifest of %s is unusable (%s): fetching it again", version.ref, exc)
                with contextlib.suppress(OSError):
                    os.unlink(path)
            except OSError as exc:
                log.warning("cannot read cached manifest %s: %s", path, exc.strerror or exc)
        fd, tmp = make_temp(self.directory, ".tmp", os.O_RDWR)
        try:
            try:
                self._fetch(version, fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            index = self._build(version, tmp, key, depth)
            # Kept only once it passed every check (the index's included).
            os.replace(tmp, path)
            fsync_dir(self.directory)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return index

    def _build(self, version: VersionInfo, json_path: str, key: str, depth: int) -> ManifestIndex:
        alg = XXH128 if version.digest_algorithm == MANIFEST_XXH128 else MD5
        sizer = self._sizer(version, depth) if self._sizer is not None else None
        started = time.monotonic()
        path = build_index(
            json_path,
            self.directory,
            key,
            expect_digest=version.digest,
            alg=alg,
            what=f"manifest of {version.ref}",
            sizer=sizer,
        )
        index = open_index(self.directory, key, version.digest)
        if index is None:  # removed or damaged at once: cannot happen unless the disk fails
            raise ManifestError(f"manifest of {version.ref}: its index {os.path.basename(path)} cannot be read back")
        log.info("%s: manifest indexed (%d entries, %.1f s)", version.ref, index.count, time.monotonic() - started)
        return index

    def index(self, version: VersionInfo) -> ManifestIndex:
        return self.load(version)

    # -- queries (a registry's list_dir / get_entry / iter_entries / manifest) -------------------

    def list_dir(self, version: VersionInfo, path: str) -> list[DirEntry]:
        children = self.load(version).list_dir(path)
        if children is None:
            raise EntryNotFound(f"{version.ref}: no directory {path!r}")
        return [DirEntry(c.name, c.entry) for c in children]

    def get_entry(self, version: VersionInfo, path: str) -> DirEntry:
        found = self.load(version).get(path)
        if found is None:
            raise EntryNotFound(f"{version.ref}: no entry {path!r}")
        return DirEntry(found.name, found.entry)

    def iter_entries(self, version: VersionInfo) -> Iterator[Entry]:
        return self.load(version).iter_entries()

    def _open_now(self, version: VersionInfo) -> ManifestIndex | None:
        """The open index from one look (another thread may close it any time: the object
        stays usable); its LRU place moved only if ``_lock`` is free at once.  No waiting: the
        mount asks this on its trio loop, and an index is immutable on disk (no locks)."""
        index = self._open.get(version.id)
        if index is not None and self._lock.acquire(blocking=False):
            try:
                if version.id in self._open:
                    self._open.move_to_end(version.id)
            finally:
                self._lock.release()
        return index

    def list_dir_now(self, version: VersionInfo, path: str) -> list[DirEntry] | None:
        """``list_dir`` from an open index, or None if it is not open."""
        index = self._open_now(version)
        if index is None:
            return None
        children = index.list_dir(path)
        if children is None:
            raise EntryNotFound(f"{version.ref}: no directory {path!r}")
        return [DirEntry(c.name, c.entry) for c in children]

    def get_entry_now(self, version: VersionInfo, path: str) -> DirEntry | None:
        """``get_entry`` from an open index, or None if it is not open."""
        index = self._open_now(version)
        if index is None:
            return None
        found = index.get(path)
        if found is None:
            raise EntryNotFound(f"{version.ref}: no entry {path!r}")
        return DirEntry(found.name, found.entry)

    def manifest(self, version: VersionInfo) -> Manifest:
        index = self.load(version)
        manifest = Manifest(
            storage_policy=index.storage_policy, storage_policy_config=dict(index.storage_policy_config)
        )
        for entry in index.iter_entries():
            manifest.entries[entry.path] = entry
        return manifest

    def write_manifest(self, version: VersionInfo, out: IO[bytes]) -> int:
        """:meth:`manifest`'s JSON streamed into ``out`` from the index (never all in memory)."""
        index = self.load(version)
        return write_json(out, index.iter_entries(), index.storage_policy, index.storage_policy_config)

    # -- file URLs ------------------------------------------------------------------------------

    def forget_url(self, version: VersionInfo, path: str, url: str) -> None:
        with self._lock:
            known = self._urls.get((version.id, path))
            if known is not None and known[0] == url:
                del self._urls[(version.id, path)]

    def _cached_url(self, key: tuple[str, str]) -> str | None:
        """A URL asked for less than ``url_max_age`` ago.  Called with ``_lock`` held."""
        known = self._urls.get(key)
        if known is None:
            return None
        if time.monotonic() - known[1] > self.url_max_age:
            del self._urls[key]
            return None
        self._urls.move_to_end(key)
        return known[0]

    def url(self, version: VersionInfo, entry: Entry, *, fresh: bool) -> str:
        """A download URL for ``entry``: cached, or asked for in a batch with the next files of
        its directory that have none yet (``fresh``: for this file alone).  A request for it
        already on the way is waited for, unless it was asked ahead (:meth:`prepare`, a large
        page in the background): then it is asked for again, with whatever of the batch is not
        on the way, so that a reader never waits behind background work."""
        key = (version.id, entry.path)
        for _ in range(3):
            if not fresh:  # the usual case (asked ahead): no directory listing for the batch
                with self._lock:
                    url = self._cached_url(key)
                if url is not None:
                    return url
            event = threading.Event()
            following = [] if fresh else self._following(version, entry)
            with self._lock:  # cache, in-flight and batch looked at together: no URL asked twice
                url = None if fresh else self._cached_url(key)
                if url is not None:
                    return url
                wait = None if fresh else self._url_waits.get(key)
                if wait is not None and wait in self._ahead:
                    wait = None  # asked ahead, in a large page: a reader asks its own, never waits behind it
                names = [] if wait is not None else [entry.path] if fresh else self._batch(version, entry, following)
                for name in names:
                    self._url_waits.setdefault((version.id, name), event)
            if wait is not None:
                wait.wait(self.url_wait)
                continue
            try:
                urls = self._fetch_urls(version, names)
                self._keep_urls(version, urls)
            finally:
                with self._lock:
                    for name in names:
                        if self._url_waits.get((version.id, name)) is event:
                            del self._url_waits[(version.id, name)]
                event.set()
            found = urls.get(entry.path)
            if found is None:
                raise FetchError(f"{version.ref}/{entry.path}: the server lists no file {entry.path!r} in it")
            return found
        raise FetchError(f"{version.ref}/{entry.path}: no download URL (waited for another request)")

    def _keep_urls(self, version: VersionInfo, urls: dict[str, str]) -> None:
        """Keep ``urls`` (entry path -> signed URL) as asked now, the oldest dropped past
        :attr:`max_urls`."""
        now = time.monotonic()
        with self._lock:
            for name, url in urls.items():
                self._urls[(version.id, name)] = (url, now)
                self._urls.move_to_end((version.id, name))
            while len(self._urls) > self.max_urls:
                self._urls.popitem(last=False)

    def prepare(self, version: VersionInfo, entries: list[Entry], page: int) -> int:
        """Ask for the URLs of those of ``entries`` that have none (and none on the way), in
        requests of up to ``page`` names; the number asked for.  Errors are left to the
        fetches that need the URLs (they ask again, file by file's batch)."""
        with self._lock:
            names = [
                e.path
                for e in entries
                if e.ref is None
                and self._cached_url((version.id, e.path)) is None
                and (version.id, e.path) not in self._url_waits
            ]
        asked = 0
        for start in range(0, len(names), page):
            chunk = names[start : start + page]
            event = threading.Event()
            with self._lock:
                chunk = [
                    n for n in chunk if (version.id, n) not in self._url_waits and (version.id, n) not in self._urls
                ]
                for name in chunk:
                    self._url_waits[(version.id, name)] = event
                if chunk:
                    self._ahead.add(event)
            if not chunk:
                continue
            try:
                urls = self._fetch_urls(version, chunk)
                self._keep_urls(version, urls)
                asked += len(chunk)
            except ArtifactFSError as exc:
                log.debug("%s: URLs asked ahead: %s", version.ref, exc)
                return asked
            finally:
                with self._lock:
                    for name in chunk:
                        if self._url_waits.get((version.id, name)) is event:
                            del self._url_waits[(version.id, name)]
                    self._ahead.discard(event)
                event.set()
        return asked

    def _following(self, version: VersionInfo, entry: Entry) -> list[Entry]:
        """The files after ``entry`` in its directory, from the open index (none if it is not
        open: only ``entry`` is asked for then).  Asked before ``_lock`` is taken."""
        index = self._open.get(version.id)
        if index is None or self.url_batch <= 1:
            return []
        try:
            return index.following(entry.path, 2 * self.url_batch)
        except (ArtifactFSError, OSError) as exc:
            log.debug("%s: no batch after %s: %s", version.ref, entry.path, exc)
            return []

    def _batch(self, version: VersionInfo, entry: Entry, following: list[Entry]) -> list[str]:
        """``entry`` and up to ``url_batch - 1`` of ``following`` (name order: the order ``ls``,
        ``find`` and data loaders walk a directory) that have no URL yet.  ``_lock`` held."""
        names = [entry.path]
        for e in following:
            if len(names) >= self.url_batch:
                break
            key = (version.id, e.path)
            if e.ref is None and key not in self._urls and key not in self._url_waits:
                names.append(e.path)
        return names


def remove_dead_temps(directory: str) -> None:
    """Delete temp files (``<pid>-<random>.tmp``: a manifest being fetched, an index being
    built) whose writer is dead, e.g. a daemon killed during a build.  Nothing trusts them, but
    an index build's temp file can be as large as the index."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        pid, sep, _ = name.partition("-")
        if not (name.endswith(".tmp") and sep and pid.isdigit()) or pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))
            log.info("removed %s, left by a dead process", name)


__all__ = ["MAX_MANIFEST_BYTES", "ManifestKeeper"]
