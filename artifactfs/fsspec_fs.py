"""``artifactfs://``: the verified cache as an fsspec filesystem, for Python without FUSE.

``fsspec.open("artifactfs://acme/vision/ds:v1/train/000001.txt")`` and every library that reads
through fsspec (pandas, pyarrow, HF ``datasets``, Dask, universal-pathlib) read artifact files
with no mount, no root and no ``/dev/fuse``.  The protocol is registered through the
``fsspec.specs`` entry point (``pyproject.toml``) and, once this module is imported, in-process
too (:func:`register`).

URL grammar (``docs/FSSPEC.md``)::

    artifactfs://                                   entities
    artifactfs://ENTITY                             projects
    artifactfs://ENTITY/PROJECT                     NAME:vN and NAME:ALIAS of every artifact
    artifactfs://ENTITY/PROJECT/NAME:vN[/PATH]      a version (immutable), and a path inside it
    artifactfs://ENTITY/PROJECT/NAME:ALIAS[/PATH]   the version the alias names (see below)

Storage options: ``registry`` (a spec: ``DIR``, ``wandb``, ``wandb:URL``; default
``$ARTIFACTFS_REGISTRY``), ``cache_dir`` (default ``$ARTIFACTFS_CACHE_DIR``), ``alias_ttl``
(seconds an alias's answer is kept, default the mount's ``--alias-ttl``).

Bytes: the same verified cache as the mount and ``Artifact.download``
(:func:`artifactfs.download.open_verified_blob`): a local registry's blob is hashed where it
lies and trusted while its identity holds; a remote blob is fetched once into the cache,
verified before it is adopted, and opened from there afterwards.  An open file is the verified
cache file's descriptor: reads are ``pread`` plus the one ``fstat`` that proves the file is still
the one verified.

Aliases: a filesystem instance resolves ``NAME:ALIAS`` on first use and keeps the answer for
``alias_ttl`` seconds (``invalidate_cache()`` forgets it); an open file reads the version it was
opened in for as long as it is open; a pickled instance (a Dask task) carries its answers, and
they hold in the process that unpickles it until ``invalidate_cache()``, so the workers read the
version the client resolved.  Errors are Python's: ``FileNotFoundError``,
``PermissionError`` for every write, ``OSError(EIO)`` for a digest mismatch.
"""

from __future__ import annotations

import datetime as _dt
import errno
import functools
import importlib.util
import io
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fsspec import AbstractFileSystem, register_implementation

from . import defaults
from .client import Client
from .download import open_verified_blob
from .errors import (
    ArtifactFSError,
    AuthError,
    BlobChanged,
    DigestMismatch,
    InvalidArgument,
    InvalidPath,
    InvalidReference,
    NotFound,
    ReadOnly,
)
from .manifest import Entry
from .names import Ref, check_alias, check_name, parse_version
from .references import content_entry
from .registry import backend_of
from .registry.base import DirEntry, Registry, VersionInfo
from .store import INLINE_VERIFY_MAX, Blob, BlobStore

PROTOCOL = "artifactfs"
T = TypeVar("T")
_ENTRY_MEMO_MAX = 200_000  # entries remembered per filesystem instance (cleared past it)
#: fsspec's own options of every filesystem (AbstractFileSystem, DirCache), accepted and passed on.
_FSSPEC_OPTIONS = frozenset({"use_listings_cache", "listings_expiry_time", "max_paths", "asynchronous", "loop"})
_READ_AHEAD = 64 * 1024  # what readline reads ahead at a time (and the blocksize fsspec caches see)


def _translate(exc: ArtifactFSError, path: str) -> OSError:
    """The one conversion of artifactfs's errors into Python's for ``artifactfs://``."""
    text = str(exc)
    if isinstance(exc, (NotFound, InvalidReference, InvalidPath)):
        # A name that cannot exist does not exist: the mount answers ENOENT for it too.
        return FileNotFoundError(errno.ENOENT, text, path)
    if isinstance(exc, ReadOnly):
        return PermissionError(errno.EROFS, text, path)
    if isinstance(exc, AuthError):
        return PermissionError(errno.EACCES, text, path)
    if isinstance(exc, DigestMismatch):
        return OSError(errno.EIO, text, path)
    if isinstance(exc, InvalidArgument):
        return OSError(errno.EINVAL, text, path)
    return OSError(exc.errno, text, path)


@contextmanager
def _errors(path: str) -> Iterator[None]:
    try:
        yield
    except ArtifactFSError as exc:
        raise _translate(exc, path) from exc


def _refuse(path: str = "") -> PermissionError:
    return PermissionError(errno.EROFS, "artifactfs:// is read-only", path)


def _seconds(ns: int) -> float:
    return ns / 1e9


@dataclass(frozen=True, slots=True)
class _Target:
    """A file of a version, ready to open: its entry, content address, local blob (a local
    registry's, verified in place) and whether its trust record is kept on disk."""

    entry: Entry
    key: str
    local: str | None
    persisted: bool


class ArtifactFile(io.RawIOBase):
    """A read-only, seekable file over a verified blob (its open cache or registry file).

    ``readline`` (and iterating over lines) reads ahead in chunks, kept in the object: the bytes
    of a version never change, so what was read ahead stays right wherever the file seeks.  A
    pickled (or copied) file opens the same version's file again at its position: it never
    shares this one's descriptor.  ``blocksize`` and ``_fetch_range`` let fsspec's
    ``blockcache::`` wrap it (reads are local, verified bytes already)."""

    blocksize = _READ_AHEAD

    def __init__(
        self,
        blob: Blob,
        path: str,
        version: VersionInfo,
        again: Callable[[], Blob] | None = None,
        fs: ArtifactFileSystem | None = None,
    ) -> None:
        super().__init__()
        self._blob = blob
        self._again = again  # the blob verified again, for a read that finds its file changed
        self._fs = fs  # to open it again when pickled
        self.size = blob.size
        self.path = path
        self.name = path
        self.mode = "rb"
        self.version = version
        self._pos = 0
        self._ahead = b""  # bytes read ahead by readline, from file offset _ahead_at
        self._ahead_at = 0

    def __reduce__(self) -> Any:
        if self.closed:
            raise ValueError(f"cannot pickle a closed file ({self.path})")
        if self._fs is None:
            raise TypeError(f"cannot pickle {self.path}: it was not opened through an ArtifactFileSystem")
        v = self.version
        inner = self.path.split("/", 3)[3]
        return _reopen, (self._fs, f"{v.entity}/{v.project}/{v.name}:{v.version}/{inner}", self._pos)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._checkClosed()
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise OSError(errno.EINVAL, "negative seek position", self.path)
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        left = self.size - self._pos
        if size is None or size < 0 or size > left:
            size = left
        if size <= 0:
            return b""
        data = self._pread(size, self._pos)
        self._pos += len(data)
        return data

    def _pread(self, size: int, pos: int) -> bytes:
        return self._from_blob(lambda: self._blob.pread(size, pos))

    def _from_blob(self, read: Callable[[], T]) -> T:
        """``read()`` of the blob (it reads ``self._blob`` when called), again once from the
        blob verified anew if its file changed; errors as OSError."""
        try:
            return read()
        except BlobChanged as exc:
            self._renew(exc)
            try:
                return read()
            except ArtifactFSError as err:
                raise _translate(err, self.path) from err
        except ArtifactFSError as exc:
            raise _translate(exc, self.path) from exc

    def _fetch_range(self, start: int, end: int) -> bytes:
        """Bytes ``start:end`` (fsspec's block caches ask for them so)."""
        self._checkClosed()
        start, end = max(0, start), min(end, self.size)
        return self._pread(end - start, start) if end > start else b""

    def readline(self, size: int | None = -1) -> bytes:
        self._checkClosed()
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        parts: list[bytes] = []
        pos = self._pos
        while pos < end:
            if not self._ahead_at <= pos < self._ahead_at + len(self._ahead):
                self._ahead, self._ahead_at = self._pread(min(_READ_AHEAD, self.size - pos), pos), pos
            off = pos - self._ahead_at
            stop = min(len(self._ahead), end - self._ahead_at)
            newline = self._ahead.find(b"\n", off, stop)
            if newline >= 0:
                parts.append(self._ahead[off : newline + 1])
                pos = self._ahead_at + newline + 1
                break
            parts.append(self._ahead[off:stop])
            pos = self._ahead_at + stop
        self._pos = pos
        return b"".join(parts)

    def _renew(self, exc: BlobChanged) -> None:
        """The blob's file is not the one verified any more (a re-open that was not checked at
        open, or a file changed behind the cache): verify it again (hashed, or fetched) and go on
        from the new one, whose bytes are the same content; EIO if that cannot be had."""
        if self._again is None:
            raise _translate(exc, self.path) from exc
        self._blob.close()
        self._blob = self._again()  # raises OSError, translated, when it fails
        self._again = None  # once: a file that keeps changing answers EIO

    def readall(self) -> bytes:
        return self.read()

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def readinto(self, buffer: Any) -> int:
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self.size - self._pos))
        if count == 0:
            return 0
        got = self._from_blob(lambda: self._blob.preadinto(view[:count], self._pos))
        self._pos += got
        return got

    def write(self, data: Any) -> int:
        raise _refuse(self.path)

    def truncate(self, size: int | None = None) -> int:
        raise _refuse(self.path)

    def close(self) -> None:
        if not self.closed:
            self._blob.close()
        super().close()

    @property
    def closed(self) -> bool:
        return bool(io.RawIOBase.closed.__get__(self))

    @closed.setter
    def closed(self, value: bool) -> None:
        """fsspec's block cache marks a file closed so (after closing it)."""
        if value:
            self.close()


class ArtifactFileSystem(AbstractFileSystem):  # type: ignore[misc]  # fsspec has no type hints
    """fsspec's view of a registry: see the module docstring."""

    protocol = PROTOCOL
    root_marker = ""
    cachable = True

    def __init__(
        self,
        registry: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        alias_ttl: float = defaults.ALIAS_TTL,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - _FSSPEC_OPTIONS)
        if unknown:  # a misspelt "registry" must not read the default registry instead
            raise TypeError(
                f"{PROTOCOL}:// takes the options registry, cache_dir and alias_ttl (and fsspec's own), "
                f"not {', '.join(map(repr, unknown))}"
            )
        super().__init__(registry=registry, cache_dir=cache_dir, alias_ttl=alias_ttl, **kwargs)
        spec = os.fspath(registry) if registry is not None else defaults.default_registry()
        # A local registry's directory, absolute: a pickled copy may be opened in another
        # working directory (a Dask worker's).
        self.spec = os.path.abspath(spec) if not backend_of(spec).name else spec
        self.cache_dir = os.path.abspath(
            os.fspath(cache_dir) if cache_dir is not None else defaults.default_cache_dir()
        )
        self.alias_ttl = float(alias_ttl)
        # The registry and the verified cache, opened on first use: the Python API's core.
        self._client = Client(self.spec, cache_dir=self.cache_dir)
        self._lock = threading.Lock()
        # (entity, project, name, tag) -> (version, wall-clock time resolved); versions for ever
        self._versions: dict[tuple[str, str, str, str], tuple[VersionInfo, float]] = {}
        # (version id, path) -> DirEntry: a version's content never changes
        self._entries: dict[tuple[str, str], DirEntry] = {}
        self._namespace: dict[tuple[str, ...], tuple[list[dict[str, Any]], float]] = {}
        self._targets: dict[tuple[str, str], _Target] = {}
        # path -> (its version's key in _versions, that version, target): a re-open's fast path
        self._opened: dict[str, tuple[tuple[str, str, str, str], VersionInfo, _Target]] = {}
        self._flights: dict[str, list[Any]] = {}  # cache key -> [lock, users]: one fetch per blob

    # -- lifetime --------------------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        try:
            return self._client.registry
        except ArtifactFSError as exc:
            raise _translate(exc, self.spec) from exc

    @property
    def store(self) -> BlobStore:
        try:
            return self._client.blob_store()
        except ArtifactFSError as exc:
            raise _translate(exc, self.cache_dir) from exc

    def close(self) -> None:
        """Close the registry and the cache handle (reopened on next use)."""
        self._client.close()

    def __reduce__(self) -> Any:
        # Workers get the alias answers this instance has, so they read the same versions.
        with self._lock:
            pins = {k: v[0] for k, v in self._versions.items() if parse_version(k[3]) is None}
        origin = (os.getpid(), id(self))
        args, options = self.storage_args, dict(self.storage_options)
        given = args[0] if args else options.get("registry")
        if given is not None and os.fspath(given) != self.spec:  # relative: made absolute here
            named = dict(zip(("registry", "cache_dir", "alias_ttl"), args, strict=False))
            args, options = (), {**named, **options, "registry": self.spec}
        return _restore, (type(self), args, options, pins, origin)

    def _adopt(self, pins: dict[tuple[str, str, str, str], VersionInfo]) -> None:
        """Take the alias answers of an unpickled copy: they hold until :meth:`invalidate_cache`
        or the next unpickled copy that brings other answers (not for ``alias_ttl``: a task
        started minutes after the client resolved the alias still reads the client's version)."""
        with self._lock:
            for key, version in pins.items():
                self._versions[key] = (version, math.inf)  # fresh until invalidated, as a version

    def invalidate_cache(self, path: str | None = None) -> None:
        """Forget alias answers and namespace listings (versions' contents never change)."""
        with self._lock:
            self._versions = {k: v for k, v in self._versions.items() if parse_version(k[3]) is not None}
            self._namespace.clear()
        super().invalidate_cache(path)

    # -- paths -----------------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, str) and path[:1] != "/" and path[-1:] != "/" and not path.startswith(PROTOCOL):
            return path  # already bare (the common case: fsspec strips before it calls us)
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        text = str(super()._strip_protocol(path))
        return text.strip("/")

    @staticmethod
    def _split(path: str) -> list[str]:
        parts = path.split("/") if path else []
        suspect = "//" in path or "/." in path or path[:1] == "."  # else no part is "", "." or ".."
        if suspect and any(part in ("", ".", "..") for part in parts):
            raise FileNotFoundError(errno.ENOENT, "no such path", path)
        return parts

    def _version(self, entity: str, project: str, spec: str, path: str) -> VersionInfo:
        """The version ``NAME:vN`` or ``NAME:ALIAS`` names (an alias: kept ``alias_ttl`` s)."""
        name, sep, tag = spec.partition(":")
        if not sep:
            raise FileNotFoundError(errno.ENOENT, "expected NAME:vN or NAME:ALIAS", path)
        key = (entity, project, name, tag)
        known = self._versions.get(key)
        now = time.time()
        if known is not None and now - known[1] < self.alias_ttl:  # a version's time is +inf
            return known[0]
        pinned = parse_version(tag) is not None
        with _errors(path):
            for part, what in ((entity, "entity"), (project, "project"), (name, "artifact name")):
                check_name(part, what)
            if not pinned:
                check_alias(tag)
            version = self.registry.resolve(Ref(entity, project, name, tag))
        with self._lock:
            self._versions[key] = (version, math.inf if pinned else now)
        return version

    def _locate(self, path: str) -> tuple[VersionInfo, str] | None:
        """``(version, path inside it)``, or None for a path above every version."""
        parts = self._split(path)
        if len(parts) < 3:
            return None
        return self._version(parts[0], parts[1], parts[2], path), "/".join(parts[3:])

    def _entry(self, version: VersionInfo, inner: str, path: str) -> DirEntry:
        key = (version.id, inner)
        found = self._entries.get(key)
        if found is None:
            with _errors(path):
                registry = self.registry
                if not registry.contents_loaded(version):
                    registry.load_contents(version)
                found = registry.get_entry(version, inner)
            with self._lock:
                if len(self._entries) >= _ENTRY_MEMO_MAX:
                    self._entries.clear()
                self._entries[key] = found
        return found

    # -- metadata --------------------------------------------------------------------------------

    @staticmethod
    def _file_info(name: str, entry: Entry, version: VersionInfo) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": name,
            "size": entry.size,
            "type": "file",
            "mtime": _seconds(version.created_at_ns),
            "created": _seconds(version.created_at_ns),
            "digest": entry.digest,
            "digest_algorithm": entry.alg,
            "version": str(version.ref),
        }
        if entry.ref is not None:
            info["ref"] = entry.ref
        return info

    @staticmethod
    def _dir_info(name: str, version: VersionInfo | None = None, **extra: Any) -> dict[str, Any]:
        info: dict[str, Any] = {"name": name, "size": 0, "type": "directory", **extra}
        if version is not None:
            info["mtime"] = info["created"] = _seconds(version.created_at_ns)
            info["version"] = str(version.ref)
            info["artifact_digest"] = version.digest
        return info

    def _namespace_listing(self, parts: list[str], path: str) -> list[dict[str, Any]]:
        key = tuple(parts)
        known = self._namespace.get(key)
        now = time.time()
        if known is not None and now - known[1] < self.alias_ttl:
            return known[0]
        registry = self.registry
        with _errors(path):
            if not parts:
                out = [self._dir_info(entity) for entity in registry.entities()]
            elif len(parts) == 1:
                check_name(parts[0], "entity")
                registry.check_entity(parts[0])
                out = [self._dir_info(f"{parts[0]}/{p}") for p in registry.projects(parts[0])]
            else:
                check_name(parts[0], "entity")
                check_name(parts[1], "project")
                out = self._project_listing(parts[0], parts[1], now)
        with self._lock:
            self._namespace[key] = (out, now)
        return out

    def _project_listing(self, entity: str, project: str, now: float) -> list[dict[str, Any]]:
        """``NAME:vN`` and ``NAME:ALIAS`` of every artifact, as the mount's project directory; an
        alias is a directory marked ``islink`` whose ``destination`` is its version."""
        versions = self.registry.project_versions(entity, project)
        out: dict[str, dict[str, Any]] = {}
        base = f"{entity}/{project}"
        for v in versions:
            out[f"{v.name}:{v.version}"] = self._dir_info(f"{base}/{v.name}:{v.version}", v)
        answers: dict[tuple[str, str, str, str], tuple[VersionInfo, float]] = {}
        for v in versions:
            for alias in v.aliases:
                if f"{v.name}:{alias}" in out or parse_version(alias) is not None:
                    continue
                destination = f"{base}/{v.name}:{v.version}"
                out[f"{v.name}:{alias}"] = self._dir_info(
                    f"{base}/{v.name}:{alias}", v, islink=True, destination=destination
                )
                answers[(entity, project, v.name, alias)] = (v, now)
        with self._lock:  # the listing answered them: the same answer for a path through them
            for key, answer in answers.items():
                known = self._versions.get(key)
                if known is None or known[1] != math.inf:  # answers carried by a pickle stay
                    self._versions[key] = answer
        return [out[name] for name in sorted(out)]

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        located = self._locate(path)
        if located is None:
            listing = self._namespace_listing(self._split(path), path)
        else:
            version, inner = located
            found = self._entry(version, inner, path)
            if found.entry is not None:
                listing = [self._file_info(path, found.entry, version)]
            else:
                with _errors(path):
                    children = self.registry.list_dir(version, inner)
                listing = []
                for child in children:
                    name = f"{path}/{child.name}"
                    if child.entry is None:
                        listing.append(self._dir_info(name, version))
                    else:
                        listing.append(self._file_info(name, child.entry, version))
                    with self._lock:
                        self._entries.setdefault((version.id, f"{inner}/{child.name}" if inner else child.name), child)
        if detail:
            return listing
        return [info["name"] for info in listing]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        parts = self._split(path)
        registry = self.registry
        if not parts:
            return self._dir_info("")
        if len(parts) == 1:
            with _errors(path):
                check_name(parts[0], "entity")
                registry.check_entity(parts[0])
            return self._dir_info(path)
        if len(parts) == 2:
            with _errors(path):
                check_name(parts[0], "entity")
                check_name(parts[1], "project")
                registry.check_project(parts[0], parts[1])
            return self._dir_info(path)
        version = self._version(parts[0], parts[1], parts[2], path)
        if len(parts) == 3:
            tag = parts[2].partition(":")[2]
            if parse_version(tag) is None:
                destination = f"{parts[0]}/{parts[1]}/{version.name}:{version.version}"
                return self._dir_info(path, version, islink=True, destination=destination)
            return self._dir_info(path, version)
        found = self._entry(version, "/".join(parts[3:]), path)
        if found.entry is None:
            return self._dir_info(path, version)
        return self._file_info(path, found.entry, version)

    def walk(
        self, path: str, maxdepth: int | None = None, topdown: bool = True, on_error: Any = "omit", **kwargs: Any
    ) -> Any:
        """As fsspec's, but an alias (``islink``) is listed and never descended into, as
        ``find`` on the mount does not follow its symlinks: a version is walked once."""
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        path = self._strip_protocol(path)
        detail = kwargs.pop("detail", False)
        try:
            listing = self.ls(path, detail=True, **kwargs)
        except OSError as exc:
            if on_error == "raise":
                raise
            if callable(on_error):
                on_error(exc)
            return
        dirs: dict[str, dict[str, Any]] = {}
        files: dict[str, dict[str, Any]] = {}
        descend: list[str] = []
        for info in listing:
            name = info["name"].rsplit("/", 1)[-1]
            if info["name"] == path:
                files[""] = info
            elif info["type"] == "directory":
                dirs[name] = info
                if not info.get("islink"):
                    descend.append(name)
            else:
                files[name] = info
        shown_dirs: Any = dirs if detail else list(dirs)
        shown_files: Any = files if detail else list(files)
        if topdown:
            yield path, shown_dirs, shown_files
            names = [d for d in (shown_dirs if isinstance(shown_dirs, list) else list(shown_dirs)) if d in descend]
        else:
            names = descend
        if maxdepth is not None:
            maxdepth -= 1
            if maxdepth < 1:
                if not topdown:
                    yield path, shown_dirs, shown_files
                return
        for name in names:
            yield from self.walk(
                f"{path}/{name}" if path else name, maxdepth, topdown, on_error, detail=detail, **kwargs
            )
        if not topdown:
            yield path, shown_dirs, shown_files

    def created(self, path: str) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self.info(path).get("created", 0.0), tz=_dt.UTC)

    def modified(self, path: str) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self.info(path).get("mtime", 0.0), tz=_dt.UTC)

    def ukey(self, path: str) -> str:
        info = self.info(path)
        return str(info.get("digest") or info.get("destination") or info["name"])

    # -- bytes -----------------------------------------------------------------------------------

    def _target(self, version: VersionInfo, inner: str, path: str) -> _Target:
        """What opening ``inner`` needs, worked out once per version and path."""
        memo = (version.id, inner)
        target = self._targets.get(memo)
        if target is None:
            found = self._entry(version, inner, path)
            if found.entry is None:
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            with _errors(path):
                check = content_entry(found.entry)
                local = self.registry.local_path(check)
            target = _Target(found.entry, check.cache_key, local, check.size > INLINE_VERIFY_MAX)
            with self._lock:
                if len(self._targets) >= _ENTRY_MEMO_MAX:
                    self._targets.clear()
                self._targets[memo] = target
        return target

    def _blob(self, version: VersionInfo, target: _Target, path: str, lazy: bool = False) -> Blob:
        """The verified blob: at once if the cache (or a trust record) proves it (the fast path:
        an ``open`` and an ``fstat``; ``lazy``: a blob this process proved before is opened with
        no ``fstat``, its first read proves it), else fetched or hashed by one thread while the
        others that want it wait (:func:`~artifactfs.download.open_verified_blob`)."""
        store = self.store
        try:
            if target.local is not None:
                blob = store.open_trusted(target.key, target.local, persisted=target.persisted, lazy=lazy)
            else:
                blob = store.open_cached(target.key, lazy=lazy)
        except ArtifactFSError as exc:
            raise _translate(exc, path) from exc
        if blob is not None:
            return blob
        key = target.key
        with self._lock:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = [threading.Lock(), 0]
            flight[1] += 1
        try:
            with flight[0], _errors(path):
                return open_verified_blob(store, self.registry, version, target.entry)
        finally:
            with self._lock:
                flight[1] -= 1
                if flight[1] == 0:
                    del self._flights[key]

    def open(
        self,
        path: Any,
        mode: str = "rb",
        block_size: Any = None,
        cache_options: Any = None,
        compression: Any = None,
        **kwargs: Any,
    ) -> Any:
        if mode == "rb" and compression is None and not kwargs and isinstance(path, str):
            # fsspec's open adds nothing to a plain binary read.  A path opened before (its
            # version still the answer) goes straight to its blob: the epoch of a data loader.
            hit = self._opened.get(path)
            if hit is not None:
                vkey, version, target = hit
                known = self._versions.get(vkey)
                if known is not None and known[0] is version and time.time() - known[1] < self.alias_ttl:
                    blob = self._blob(version, target, path, lazy=True)
                    return ArtifactFile(blob, path, version, functools.partial(self._blob, version, target, path), self)
            return self._open(path)
        return super().open(path, mode, block_size, cache_options, compression, **kwargs)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: Any = None,
        autocommit: bool = True,
        cache_options: Any = None,
        **kwargs: Any,
    ) -> ArtifactFile:
        given = path
        path = self._strip_protocol(path)
        if mode != "rb" and any(c in mode for c in "wax+"):
            raise _refuse(path)
        if mode != "rb" and (set(mode) - set("rbt") or "r" not in mode):
            raise ValueError(f"invalid mode {mode!r}: artifact files open for reading ('rb', or 'r' for text)")
        hit = self._opened.get(path)
        if hit is not None:  # opened before: valid while its version is still the path's answer
            vkey, version, target = hit
            known = self._versions.get(vkey)
            if known is not None and known[0] is version and time.time() - known[1] < self.alias_ttl:
                blob = self._blob(version, target, path, lazy=True)
                return ArtifactFile(blob, path, version, functools.partial(self._blob, version, target, path), self)
        located = self._locate(path)
        if located is None:
            self.info(path)  # FileNotFoundError for a name that does not exist
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        version, inner = located
        target = self._target(version, inner, path)
        blob = self._blob(version, target, path)
        parts = path.split("/", 3)
        name, _, tag = parts[2].partition(":")
        with self._lock:
            if len(self._opened) >= _ENTRY_MEMO_MAX:
                self._opened.clear()
            self._opened[path] = ((parts[0], parts[1], name, tag), version, target)
            if given != path:  # as given (with the protocol): the next open of it finds it too
                self._opened[given] = self._opened[path]
        return ArtifactFile(blob, path, version, functools.partial(self._blob, version, target, path), self)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        with self._open(path) as f:
            size = f.size
            begin = 0 if start is None else (start if start >= 0 else max(0, size + start))
            stop = size if end is None else (end if end >= 0 else max(0, size + end))
            if stop <= begin:
                return b""
            f.seek(begin)
            return f.read(stop - begin)

    # -- writes: refused ---------------------------------------------------------------------------

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        raise _refuse(path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        raise _refuse(path)

    def rmdir(self, path: str) -> None:
        raise _refuse(path)

    def rm_file(self, path: str) -> None:
        raise _refuse(path)

    def _rm(self, path: str) -> None:
        raise _refuse(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        raise _refuse(str(path))

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        raise _refuse(path2)

    def mv(self, path1: Any, path2: Any, recursive: bool = False, maxdepth: int | None = None, **kwargs: Any) -> None:
        raise _refuse(str(path1))

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        raise _refuse(path)

    def put_file(self, lpath: str, rpath: str, callback: Any = None, mode: str = "overwrite", **kwargs: Any) -> None:
        raise _refuse(rpath)

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        raise _refuse(path)


def _reopen(fs: ArtifactFileSystem, path: str, pos: int) -> ArtifactFile:
    """A pickled :class:`ArtifactFile`: its version's file opened again, at its position."""
    f = fs._open(path)
    f.seek(pos)
    return f


def _restore(
    cls: type[ArtifactFileSystem],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    pins: dict[tuple[str, str, str, str], VersionInfo],
    origin: tuple[int, int],
) -> ArtifactFileSystem:
    fs = cls(*args, **kwargs)  # fsspec's instance for these options in this process
    if (os.getpid(), id(fs)) != origin:  # not the very instance that was pickled: it has its own
        fs._adopt(pins)
    return fs


def register() -> None:
    """Register ``artifactfs://`` with fsspec in this process (the entry point does it for an
    installed package; this covers a source checkout)."""
    register_implementation(PROTOCOL, ArtifactFileSystem, clobber=True)
    if importlib.util.find_spec("upath") is not None:  # universal-pathlib is optional
        from upath.registry import register_implementation as register_path

        register_path(PROTOCOL, "artifactfs.fsspec_upath.ArtifactPath", clobber=True)


register()
