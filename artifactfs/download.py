"""``Artifact.download``/``checkout``: verified files placed under a root, and nowhere else.

Where the bytes come from:

* A remote registry's blobs and every reference entry go through the mount's verified cache
  (:class:`~artifactfs.store.BlobStore` at ``$ARTIFACTFS_CACHE_DIR``, or the ``cache_dir`` given
  to ``Api``): a blob the mount (or an earlier download) already verified is not fetched again,
  and a blob fetched here is there for the next mount.  Nothing enters the cache unverified.
* A local registry's blobs already lie verified-in-place on this disk; copying them into the
  cache too would store every byte twice.  They are cloned straight from the registry's blob
  file, and the *copy* is hashed before it is renamed into place: the hash reads the very bytes
  that will sit at the destination, so a corrupt blob (or a corrupt copy) never lands.

How a file is placed: a temp file is created in the destination directory, filled by reflink
(``FICLONE``: shares extents copy-on-write, so editing the copy never touches the cache) or, where
the filesystem cannot, by ``copy_file_range``/``sendfile``/``pread``+``write``; then renamed over
the name.  Never a hard link: an edit of a hard-linked file would edit the cached blob itself.

Why nothing lands outside ``root``: every entry path is validated (no absolute path, ``..``,
``.``, empty segment, NUL), and each directory below ``root`` is opened relative to its parent's
descriptor with ``O_NOFOLLOW``, so a symlink already inside ``root`` (``root/train -> /etc``)
is refused instead of followed; the final rename replaces a symlink at the leaf rather than
writing through it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import logging
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

from .digests import fd_holds, hash_fd, write_verified
from .errors import ArtifactFSError, DigestMismatch, FetchError, InvalidPath
from .manifest import Entry
from .names import check_entry_path
from .progress import ProgressBar
from .references import content_entry
from .registry.base import Registry, VersionInfo
from .sources import open_blob
from .store import Blob, BlobStore

log = logging.getLogger(__name__)

#: ``_IOW(0x94, 9, int)``: clone a whole file's extents into another (btrfs, XFS, bcachefs...).
FICLONE = 0x40049409
#: errnos meaning "this filesystem (pair) cannot clone / copy_file_range here": fall back.
_NO_CLONE = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS, errno.EBADF, errno.EPERM}
_CHUNK = 1 << 20
DEFAULT_WORKERS = 8
#: Fetches in flight while the engine fills the cache ahead of the placing: as ``artifactfs
#: prefetch`` (nothing else runs; on a 30 ms WAN 64 hide the latency better than 16).
FETCH_AHEAD = 64
TMP_SUFFIX = ".artifactfs-tmp"


def _fail(what: str, exc: OSError) -> FetchError:
    return FetchError(f"writing {what} failed: {exc.strerror or exc}")


def clone_or_copy(src_fd: int, dst_fd: int, size: int) -> str:
    """Make the empty file ``dst_fd`` a copy of the first ``size`` bytes of ``src_fd``:
    ``"reflink"`` when the filesystem shared the extents, else ``"copy"``."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        if os.fstat(dst_fd).st_size == size:
            return "reflink"
        os.ftruncate(dst_fd, 0)  # the source is longer than its entry: copy only the prefix
    except OSError as exc:
        if exc.errno not in _NO_CLONE:
            raise
    offset = 0
    use_cfr, use_sendfile = True, True
    while offset < size:
        count = min(size - offset, 64 * _CHUNK)
        n = 0
        if use_cfr:
            try:
                n = os.copy_file_range(src_fd, dst_fd, count, offset, offset)
            except OSError as exc:
                if exc.errno not in _NO_CLONE:
                    raise
                use_cfr = False
                continue
        elif use_sendfile:
            try:
                os.lseek(dst_fd, offset, os.SEEK_SET)
                n = os.sendfile(dst_fd, src_fd, offset, count)
            except OSError as exc:
                if exc.errno not in _NO_CLONE:
                    raise
                use_sendfile = False
                continue
        else:
            data = os.pread(src_fd, min(count, _CHUNK), offset)
            view = memoryview(data)
            pos = offset
            while view:
                written = os.pwrite(dst_fd, view, pos)
                view, pos = view[written:], pos + written
            n = len(data)
        if n == 0:
            raise FetchError(f"source ended after {offset} of {size} bytes")
        offset += n
    return "copy"


def _copy_blob(blob: Blob, fd: int, size: int) -> None:
    offset = 0
    while offset < size:
        data = blob.pread(min(_CHUNK, size - offset), offset)
        if not data:
            raise FetchError(f"cached blob ended after {offset} of {size} bytes")
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written


def open_verified_blob(store: BlobStore, registry: Registry, version: VersionInfo, entry: Entry) -> Blob:
    """The verified blob of ``entry``, as the mount serves it (:meth:`BlobStore.obtain`): a local
    registry's blob verified where it lies, anything else out of the cache ``store`` (opened, or
    hashed again if its identity moved), else fetched from the registry's source into the cache,
    verified on the way.  Blocks (hashing, network): call it from a worker thread."""
    local = registry.local_path(entry)
    check = content_entry(entry)

    def what() -> str:
        return f"{version.ref}/{entry.path}"

    return store.obtain(check.cache_key, check, what, partial(registry.blob_source, version, entry), local=local)[0]


class SafeRoot:
    """A destination directory, opened once; directories below it are opened relative to their
    parent's descriptor and never through a symlink."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            os.makedirs(path, exist_ok=True)
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidPath(f"cannot use {path} as a download root: {exc.strerror or exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def __enter__(self) -> SafeRoot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def split(self, path: str) -> tuple[list[str], str]:
        """``a/b/c.txt`` -> ``(["a", "b"], "c.txt")``, after the checks that keep it inside root."""
        check_entry_path(path)
        parts = path.split("/")
        for part in parts:  # check_entry_path promises this; a join below relies on it
            if part in ("", ".", "..") or "/" in part or "\x00" in part:
                raise InvalidPath(f"invalid entry path {path!r}")
        return parts[:-1], parts[-1]

    def open_dir(self, parts: Sequence[str], *, create: bool) -> int | None:
        """A descriptor of ``root/parts...`` (created if ``create``), or None if it does not
        exist; InvalidPath if any of it is a symlink or not a directory."""
        fd = os.dup(self.fd)
        try:
            for depth, part in enumerate(parts):
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                try:
                    child = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=fd)
                    try:
                        child = os.open(part, flags, dir_fd=fd)
                    except OSError as exc:
                        raise self._not_a_dir(fd, parts[: depth + 1], exc) from exc
                except OSError as exc:
                    raise self._not_a_dir(fd, parts[: depth + 1], exc) from exc
                os.close(fd)
                fd = child
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        return fd

    def _not_a_dir(self, parent_fd: int, parts: Sequence[str], exc: OSError) -> ArtifactFSError:
        shown = os.path.join(self.path, *parts)
        try:
            st = os.stat(parts[-1], dir_fd=parent_fd, follow_symlinks=False)
        except OSError:
            return InvalidPath(f"cannot open directory {shown}: {exc.strerror or exc}")
        if stat.S_ISLNK(st.st_mode):
            return InvalidPath(
                f"{shown} is a symlink: refusing to write through it (it could lead outside {self.path})"
            )
        return InvalidPath(f"{shown} exists and is not a directory")


def matches_at(dir_fd: int, name: str, entry: Entry) -> bool:
    """Whether ``dir_fd/name`` is a regular file (not a symlink) holding ``entry``'s bytes."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        return fd_holds(fd, entry)
    except OSError:
        return False
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Job:
    """One content address and the entry paths that hold it (a blob is got once per download)."""

    entry: Entry  # the first entry with this content (its source is asked)
    check: Entry  # what the bytes are verified against (content_entry for a reference)
    paths: tuple[str, ...]


class Downloader:
    """Places a version's entries under a root; see the module docstring."""

    def __init__(
        self,
        registry: Registry,
        version: VersionInfo,
        open_store: Callable[[], BlobStore],
        *,
        workers: int = DEFAULT_WORKERS,
        progress: bool | None = None,
        use_cache: bool = True,
    ) -> None:
        self.registry = registry
        self.use_cache = use_cache
        self.version = version
        self._open_store = open_store
        self.workers = max(1, workers)
        self.progress = progress
        self.placed = {"reflink": 0, "copy": 0, "kept": 0}
        self._lock = threading.Lock()

    def run(self, root: str, entries: Iterable[Entry]) -> None:
        jobs: dict[str, tuple[Entry, list[Entry]]] = {}
        for entry in entries:
            check = content_entry(entry)
            jobs.setdefault(check.cache_key, (check, []))[1].append(entry)
        todo = [Job(group[0], check, tuple(e.path for e in group)) for check, group in jobs.values()]
        with SafeRoot(root) as dest:
            for job in todo:  # every path is checked before anything is written
                for path in job.paths:
                    dest.split(path)
            if self.use_cache and not self.registry.local:
                self._fetch_ahead(root, todo)
            bar = ProgressBar(
                sum(j.check.size * len(j.paths) for j in todo),
                sum(len(j.paths) for j in todo),
                self.version.name,
                self.progress,
            )
            try:
                with concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="download") as pool:
                    futures = [pool.submit(self._job, dest, job, bar) for job in todo]
                    errors: list[BaseException] = []
                    for fut in futures:
                        exc = fut.exception()
                        if exc is not None:
                            errors.append(exc)
                    if errors:
                        raise errors[0]
            finally:
                bar.close()

    def _fetch_ahead(self, root: str, todo: list[Job]) -> None:
        """Fetch the remote blobs that the placing will need into the cache first, through the
        fetch engine (:data:`FETCH_AHEAD` at once, each verified, kept by the store's group
        commit; the mount's and ``artifactfs prefetch``'s path): the placing then finds them
        cached.  A job whose destination files all have the right size already is left to the
        placing, which checks their content.  The first blob that failed here fails the
        download, with its error (nothing was placed yet)."""
        wanted: list[Entry] = []
        for job in todo:
            for path in job.paths:
                try:
                    st = os.lstat(os.path.join(root, *path.split("/")))
                except OSError:
                    wanted.append(job.entry)
                    break
                if not stat.S_ISREG(st.st_mode) or st.st_size != job.check.size:
                    wanted.append(job.entry)
                    break
        if len(wanted) < 2 or _in_trio():
            return
        import trio

        from .engine import Engine
        from .fetcher import Fetcher

        store = self._open_store()
        fetcher = Fetcher(self.registry, store, log_failures=False)
        engine = Engine(fetcher, self.registry, mode="off", concurrency=FETCH_AHEAD)
        try:
            failed = trio.run(engine.fetch_all, self.version, wanted)
        finally:
            store.commit_pending()  # kept in the cache before anything is placed from it
        if failed:
            raise failed[0][1]

    def _job(self, dest: SafeRoot, job: Job, bar: ProgressBar) -> None:
        pending: list[tuple[int, str, str]] = []  # (dir fd, leaf, path) still to write
        try:
            for path in job.paths:
                parts, leaf = dest.split(path)
                dir_fd = dest.open_dir(parts, create=True)
                assert dir_fd is not None
                if matches_at(dir_fd, leaf, job.check):
                    os.close(dir_fd)
                    self._count("kept")
                    bar.done(job.check.size)
                else:
                    pending.append((dir_fd, leaf, path))
            if not pending:
                return
            local = self.registry.local_path(job.entry) if self.registry.local and job.entry.ref is None else None
            if local is not None:
                for dir_fd, leaf, path in pending:
                    self._place_local(local, dir_fd, leaf, job.check, f"{self.version.ref}/{path}")
                    bar.done(job.check.size)
                return
            if not self.use_cache:  # skip_cache=True: straight from the source, verified, into root
                for dir_fd, leaf, path in pending:
                    self._place_uncached(job, dir_fd, leaf, f"{self.version.ref}/{path}")
                    bar.done(job.check.size)
                return
            blob = open_verified_blob(self._open_store(), self.registry, self.version, job.entry)
            try:
                for dir_fd, leaf, path in pending:
                    self._place_blob(blob, dir_fd, leaf, job.check, f"{self.version.ref}/{path}")
                    bar.done(job.check.size)
            finally:
                blob.close()
        finally:
            for dir_fd, _, _ in pending:
                with contextlib.suppress(OSError):
                    os.close(dir_fd)

    def _count(self, how: str) -> None:
        with self._lock:
            self.placed[how] += 1

    def _write(self, dir_fd: int, leaf: str, what: str, fill: Callable[[int], None]) -> None:
        tmp = f".{secrets.token_hex(8)}{TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        except OSError as exc:
            raise _fail(what, exc) from exc
        try:
            try:
                fill(fd)
            finally:
                os.close(fd)
            try:
                os.rename(tmp, leaf, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    raise InvalidPath(f"{what}: a directory is in the way") from exc
                raise _fail(what, exc) from exc
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise

    def _place_blob(self, blob: Blob, dir_fd: int, leaf: str, entry: Entry, what: str) -> None:
        def fill(fd: int) -> None:
            # Blob.fileno() (store.py) gives the verified file itself, for a reflink; without it
            # the bytes are copied through pread, which checks the identity on every read.
            fileno = getattr(blob, "fileno", None)
            src = fileno() if callable(fileno) else None
            try:
                if src is None:
                    _copy_blob(blob, fd, entry.size)
                    how = "copy"
                else:
                    how = clone_or_copy(src, fd, entry.size)
            except OSError as exc:
                raise _fail(what, exc) from exc
            blob.pread(0, 0)  # BlobChanged unless the cached file still is the one verified
            self._count(how)

        self._write(dir_fd, leaf, what, fill)

    def _place_uncached(self, job: Job, dir_fd: int, leaf: str, what: str) -> None:
        source = self.registry.blob_source(self.version, job.entry)

        def fill(fd: int) -> None:
            sources = list(source.chain())
            for index, candidate in enumerate(sources):
                try:
                    write_verified(candidate, fd, job.check, what)
                    break
                except (FetchError, DigestMismatch):
                    if index == len(sources) - 1:
                        raise
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
            self._count("copy")

        self._write(dir_fd, leaf, what, fill)

    def _place_local(self, local: str, dir_fd: int, leaf: str, entry: Entry, what: str) -> None:
        def fill(fd: int) -> None:
            src = open_blob(local, what)
            try:
                size = os.fstat(src).st_size
                if size != entry.size:
                    raise DigestMismatch(what, f"{entry.digest} ({entry.size} bytes)", f"(not hashed) ({size} bytes)")
                how = clone_or_copy(src, fd, entry.size)
            except OSError as exc:
                raise _fail(what, exc) from exc
            finally:
                os.close(src)
            actual, got = hash_fd(fd, entry.alg, limit=entry.size)
            if (actual, got) != (entry.digest, entry.size):
                raise DigestMismatch(what, f"{entry.digest} ({entry.size} bytes)", f"{actual} ({got} bytes)")
            self._count(how)

        self._write(dir_fd, leaf, what, fill)


def _in_trio() -> bool:
    """Whether this thread runs a trio loop (``trio.run`` cannot be nested)."""
    import trio

    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


def remove_others(root: str, keep: set[str]) -> int:
    """``checkout``: delete every file below ``root`` whose path is not in ``keep``, and the
    directories left empty.  Symlinks are removed as names (never followed), and nothing outside
    ``root`` is touched.  Returns the number of names removed."""
    removed = 0
    keep_dirs = {p.rsplit("/", i)[0] for p in keep for i in range(1, p.count("/") + 1)}
    with SafeRoot(root) as dest:
        removed += _prune(dest.fd, "", keep, keep_dirs)
    return removed


def _prune(dir_fd: int, prefix: str, keep: set[str], keep_dirs: set[str]) -> int:
    removed = 0
    with os.scandir(dir_fd) as it:
        names = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in names:
        path = prefix + name
        if is_dir:
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                removed += _prune(child, path + "/", keep, keep_dirs)
                empty = not os.listdir(child)
            finally:
                os.close(child)
            if path not in keep_dirs and empty:
                with contextlib.suppress(OSError):
                    os.rmdir(name, dir_fd=dir_fd)
                    removed += 1
        elif path not in keep:
            os.unlink(name, dir_fd=dir_fd)
            removed += 1
    return removed
