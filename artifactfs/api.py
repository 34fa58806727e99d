"""A Python API that follows the W&B Artifact API, over any registry (``Api(registry=SPEC)``).

::

    from artifactfs import Api, Artifact

    art = Artifact("imagenet-mini", type="dataset", metadata={"rows": 6})
    art.add_dir("./data")
    art.add_reference("https://example.com/labels.csv")              # fetched once now, hashed
    logged = Api().log_artifact(art, "acme/vision", aliases=["best"])     # acme/vision/imagenet-mini:v0

    ds = Api().artifact("acme/vision/imagenet-mini:best")
    ds.version, ds.aliases, ds.digest, ds.metadata
    root = ds.download()            # ./artifacts/imagenet-mini:v0, every file verified
    ds.verify(root)                 # ValueError (VerificationError) if root differs
    ds.aliases.append("production"); ds.save()

Downloads copy each blob while hashing it and rename it into place only on a match, so a
download never leaves a file whose bytes differ from the manifest.  Reference entries
(``add_reference``) are hashed when they are added, so they are verified like any other file
when read or downloaded.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import secrets
import stat
import urllib.parse
from collections.abc import Iterable
from typing import Any

from .defaults import default_registry
from .errors import (
    ArtifactFSError,
    ArtifactNotLogged,
    InvalidArgument,
    InvalidPath,
    InvalidReferenceEntry,
    ReadOnly,
    SourceError,
)
from .fsutil import claim_cache_dir, walk_files
from .manifest import MD5, Entry, Manifest, hash_fd
from .names import LATEST, check_entry_path, check_name, parse_ref
from .references import HTTP_SCHEMES, S3_SCHEME, checksum_reference, file_path
from .registry import CollectionInfo, Registry, VersionInfo, open_registry
from .registry.base import iso_time
from .store import write_verified

__all__ = ["Api", "Artifact", "VerificationError", "open_spec"]


def open_spec(spec: str, *, create: bool = False, cache_dir: str | None = None) -> Registry:
    """:func:`~artifactfs.registry.open_registry`, and the cache directory claimed
    (:func:`~artifactfs.fsutil.claim_cache_dir`) before a remote backend keeps manifests in it.
    A local registry keeps nothing there, so nothing is created for it."""
    registry = open_registry(spec, create=create, cache_dir=cache_dir)
    if cache_dir is not None and not registry.local:
        try:
            claim_cache_dir(os.path.abspath(cache_dir))
        except BaseException:
            registry.close()
            raise
    return registry


class VerificationError(ArtifactFSError, ValueError):
    """A directory's files do not match an artifact's manifest (W&B raises ValueError here)."""


class Api:
    """Entry point, as ``wandb.Api``: look up, list and log artifacts in a registry.

    ``registry`` is a registry spec (``DIR``, ``wandb``, ``wandb:https://host[:port]``; default
    ``$ARTIFACTFS_REGISTRY`` or ``~/.local/share/artifactfs/registry``).  ``cache_dir``: where a
    remote backend may keep manifests between processes (default: nowhere).  The registry is
    opened on first use; a local one that does not exist yet is created by the first log.
    """

    def __init__(self, registry: str | os.PathLike[str] | None = None, *, cache_dir: str | None = None) -> None:
        self._spec = os.fspath(registry) if registry is not None else default_registry()
        self._cache_dir = cache_dir
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = open_spec(self._spec, cache_dir=self._cache_dir)
        return self._registry

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def artifact(self, name: str, type: str | None = None) -> Artifact:
        """``entity/project/name[:alias|:vN]`` (default alias ``latest``)."""
        version = self.registry.resolve(parse_ref(name, default_tag=LATEST))
        if type is not None and version.type != type:
            raise InvalidArgument(f"artifact {version.ref} has type {version.type!r}, not {type!r}")
        return Artifact._logged(self, version)

    def artifact_exists(self, name: str, type: str | None = None) -> bool:
        try:
            self.artifact(name, type)
        except ArtifactFSError:
            return False
        return True

    def artifacts(self, type_name: str, name: str) -> list[Artifact]:
        """Every version of the collection ``entity/project/name``, oldest first."""
        ref = parse_ref(name)
        versions = self.registry.versions(ref.entity, ref.project, ref.name)
        return [Artifact._logged(self, v) for v in versions if v.type == type_name]

    def artifact_collections(self, project_name: str, type_name: str | None = None) -> list[CollectionInfo]:
        entity, _, project = project_name.partition("/")
        cols = self.registry.collections(check_name(entity, "entity"), check_name(project, "project"))
        return [c for c in cols if type_name is None or c.type == type_name]

    def artifact_types(self, project: str) -> list[str]:
        return sorted({c.type for c in self.artifact_collections(project)})

    def log_artifact(self, artifact: Artifact, project: str, aliases: Iterable[str] = ()) -> Artifact:
        """Log a new ``Artifact`` into ``entity/project``; returns the logged version."""
        if artifact._version is not None:
            raise ReadOnly(f"{artifact.qualified_name} is already logged: a logged artifact is immutable")
        ref = parse_ref(f"{project}/{artifact._name}")
        if self._registry is None:
            self._registry = open_spec(self._spec, create=True, cache_dir=self._cache_dir)
        registry = self._registry
        result = registry.log_files(
            artifact._files,
            ref,
            type=artifact.type,
            aliases=[*artifact._aliases, *aliases],
            description=artifact.description or "",
            metadata=artifact.metadata,
            digest_algorithm=artifact._digest_algorithm,
            references=artifact._references,
        )
        artifact._attach(self, result.version)
        return artifact


class Artifact:
    """An artifact version: a new one being assembled, or one read from the registry."""

    def __init__(
        self,
        name: str,
        type: str,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        digest_algorithm: str = MD5,
    ) -> None:
        self._name = check_name(name, "artifact name")
        self.type = check_name(type, "type")
        self.description = description
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._digest_algorithm = digest_algorithm
        self._files: list[tuple[str, str]] = []
        self._references: list[Entry] = []
        self._paths: set[str] = set()
        self._aliases: list[str] = []
        self._api: Api | None = None
        self._version: VersionInfo | None = None

    @classmethod
    def _logged(cls, api: Api, version: VersionInfo) -> Artifact:
        art = cls(version.name, version.type, version.description, version.metadata)
        art._attach(api, version)
        return art

    def _attach(self, api: Api, version: VersionInfo) -> None:
        self._api = api
        self._version = version
        self.description = version.description
        self.metadata = dict(version.metadata)
        self._aliases = list(version.aliases)
        self._files = []
        self._references = []

    def _logged_version(self) -> VersionInfo:
        if self._version is None:
            raise ArtifactNotLogged(f"artifact {self._name!r} is not logged yet")
        return self._version

    def _reg(self) -> Registry:
        assert self._api is not None
        return self._api.registry

    def _contents(self) -> tuple[Registry, VersionInfo]:
        """The registry and the version, with the version's entries at hand (a remote backend
        fetches the manifest once here)."""
        reg, version = self._reg(), self._logged_version()
        if not reg.contents_loaded(version):
            reg.load_contents(version)
        return reg, version

    # -- building a new artifact ----------------------------------------------------------------

    def add_file(self, local_path: str | os.PathLike[str], name: str | None = None) -> Entry | None:
        if self._version is not None:
            raise ReadOnly("a logged artifact is immutable: create a new Artifact")
        local = os.fspath(local_path)
        if not os.path.isfile(local):
            raise SourceError(f"{local!r} is not a file")
        self._add(name or os.path.basename(local), local)
        return None

    def add_dir(self, local_path: str | os.PathLike[str], name: str | None = None) -> None:
        if self._version is not None:
            raise ReadOnly("a logged artifact is immutable: create a new Artifact")
        local = os.fspath(local_path)
        if not os.path.isdir(local):
            raise SourceError(f"{local!r} is not a directory")
        prefix = name.strip("/") + "/" if name else ""
        for path, full in walk_files(local):
            self._add(prefix + path, full)

    def add_reference(
        self, uri: str, name: str | None = None, checksum: bool = True, max_objects: int | None = None
    ) -> list[Entry]:
        """Add entries whose bytes stay at ``uri`` (``file://``, ``http://``, ``https://``, ``s3://``).

        The content is fetched once, now, and its digest (MD5, or XXH128 for an XXH128
        artifact) and size become the entry's, so reads are verified like any other file.
        An http(s) entry is named after the last segment of the URL path unless ``name`` is
        given, and keeps the server's ETag in ``extra.etag``.  An ``s3://bucket/key`` entry (one
        object, through boto3: ``pip install artifactfs[s3]``) is named after the key's last
        segment and keeps the ETag and version in ``extra``.  A ``file://`` directory adds one
        entry per file below it (under ``name/`` if given; at most ``max_objects``).

        ``checksum=False`` is refused: such an entry's digest would be the URI or an ETag, not
        its content, so its bytes could never be verified before they are served.
        """
        if self._version is not None:
            raise ReadOnly("a logged artifact is immutable: create a new Artifact")
        if not checksum:
            raise InvalidReferenceEntry(
                "add_reference(checksum=False) is not supported: artifactfs serves only verified bytes, "
                "and an entry without a content digest could never be verified"
            )
        url = urllib.parse.urlsplit(uri)
        items: list[tuple[str, str]] = []  # (entry path, ref)
        if url.scheme == "file":
            local = file_path(uri)
            if os.path.isdir(local):
                prefix = name.strip("/") + "/" if name else ""
                for path, full in walk_files(local):
                    if max_objects is not None and len(items) >= max_objects:
                        raise SourceError(f"{local!r} holds more than max_objects={max_objects} files")
                    items.append((prefix + path, "file://" + urllib.parse.quote(os.path.abspath(full))))
            elif os.path.isfile(local):
                items.append((name or os.path.basename(local), uri))
            else:
                raise SourceError(f"{local!r} is not a file or directory")
        elif url.scheme in (*HTTP_SCHEMES, S3_SCHEME):
            default = os.path.basename(url.path if url.scheme == S3_SCHEME else urllib.parse.unquote(url.path))
            if not (name or default):
                raise InvalidPath("the URL path names no file: pass name=")
            items.append((name or default, uri))
        else:
            raise InvalidReferenceEntry(f"reference scheme {url.scheme!r} is not supported (file, http, https, s3)")
        for path, _ in items:  # every name is checked before anything is fetched
            self._check_new_path(path)
        added: list[Entry] = []
        for path, ref in items:
            digest, size, extra = checksum_reference(ref, self._digest_algorithm)
            added.append(Entry(path, digest, size, ref=ref, extra=extra))
        for entry in added:
            self._paths.add(entry.path)
            self._references.append(entry)
        return added

    def _check_new_path(self, path: str) -> None:
        check_entry_path(path)
        if path in self._paths:
            raise InvalidPath(f"entry path {path!r} is already in the artifact")

    def _add(self, path: str, local: str) -> None:
        self._check_new_path(path)
        self._paths.add(path)
        self._files.append((path, local))

    def save(self, project: str | None = None) -> Artifact:
        """New artifact: log it into ``project`` (``entity/project``).  Logged artifact: store
        changes to ``aliases``, ``description`` and ``metadata``."""
        if self._version is None:
            if project is None:
                raise InvalidArgument("save() of a new artifact needs project='entity/project'")
            api = self._api or Api()
            return api.log_artifact(self, project)
        reg = self._reg()
        v = self._version
        wanted = list(dict.fromkeys(self._aliases))
        for alias in v.aliases:
            if alias not in wanted and alias != LATEST:
                reg.remove_alias(v.ref, alias)
        for alias in wanted:
            if alias not in v.aliases and alias != LATEST:
                reg.add_alias(v.ref, alias)
        v = reg.update(v.ref, description=self.description or "", metadata=self.metadata)
        self._attach(self._api, v)  # type: ignore[arg-type]
        return self

    # -- attributes of a logged version ---------------------------------------------------------

    @property
    def id(self) -> str | None:
        return None if self._version is None else self._version.id

    @property
    def entity(self) -> str:
        return self._logged_version().entity

    @property
    def project(self) -> str:
        return self._logged_version().project

    @property
    def name(self) -> str:
        """``name:vN`` once logged (as W&B), the bare name before."""
        return self._name if self._version is None else f"{self._name}:{self._version.version}"

    @property
    def source_name(self) -> str:
        return self.name

    @property
    def collection_name(self) -> str:
        return self._name

    @property
    def qualified_name(self) -> str:
        v = self._logged_version()
        return f"{v.entity}/{v.project}/{self.name}"

    @property
    def version(self) -> str:
        return self._logged_version().version

    @property
    def aliases(self) -> list[str]:
        """Editable; ``save()`` stores the change.  ``latest`` is managed by the registry."""
        return self._aliases

    @aliases.setter
    def aliases(self, value: list[str]) -> None:
        self._aliases = list(value)

    @property
    def digest(self) -> str:
        return self._logged_version().digest

    @property
    def size(self) -> int:
        return self._logged_version().size

    @property
    def file_count(self) -> int:
        return self._logged_version().file_count

    @property
    def state(self) -> str:
        return "PENDING" if self._version is None else self._version.state

    @property
    def commit_hash(self) -> str:
        return self._logged_version().commit_hash

    @property
    def created_at(self) -> str:
        return iso_time(self._logged_version().created_at_ns)

    @property
    def updated_at(self) -> str:
        return iso_time(self._logged_version().updated_at_ns)

    @property
    def manifest(self) -> Manifest:
        reg, version = self._contents()
        return reg.manifest(version)

    def files(self, names: Iterable[str] | None = None) -> list[Entry]:
        reg, version = self._contents()
        entries = sorted(reg.iter_entries(version), key=lambda e: e.path)
        if names is not None:
            wanted = set(names)
            entries = [e for e in entries if e.path in wanted]
        return entries

    def get_entry(self, name: str) -> Entry:
        reg, version = self._contents()
        found = reg.get_entry(version, check_entry_path(name))
        if found.entry is None:
            raise InvalidPath(f"{name!r} is a directory of {self.qualified_name}")
        return found.entry

    def delete(self, delete_aliases: bool = False) -> None:
        self._reg().delete(self._logged_version().ref, delete_aliases=delete_aliases)

    def __repr__(self) -> str:
        return f"<Artifact {self.qualified_name if self._version else self._name}>"

    # -- content --------------------------------------------------------------------------------

    def _default_root(self) -> str:
        return os.path.join(".", "artifacts", self.name)

    def download(
        self, root: str | os.PathLike[str] | None = None, *, path_prefix: str | None = None, max_workers: int = 8
    ) -> str:
        """Copy every file (or those under ``path_prefix``) into ``root``, verified; return root.

        Files already in ``root`` with the right content are kept as they are.
        """
        root = os.path.abspath(os.fspath(root) if root is not None else self._default_root())
        version = self._logged_version()
        entries = [e for e in self.files() if path_prefix is None or e.path.startswith(path_prefix)]
        os.makedirs(root, exist_ok=True)
        with concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="download") as pool:
            for fut in [pool.submit(self._download_one, version, e, root) for e in entries]:
                fut.result()
        return root

    def _download_one(self, version: VersionInfo, entry: Entry, root: str) -> None:
        dest = _inside(root, os.path.join(root, *entry.path.split("/")))
        if _matches(dest, entry):
            return
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        source = self._reg().blob_source(version, entry)
        what = f"{version.ref}/{entry.path}"
        tmp = f"{dest}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            try:
                write_verified(source, fd, entry, what)
            finally:
                os.close(fd)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def checkout(self, root: str | os.PathLike[str] | None = None) -> str:
        """``download``, then delete files in ``root`` that are not in the artifact."""
        root = self.download(root)
        keep = {os.path.join(root, *e.path.split("/")) for e in self.files()}
        for dirpath, _, filenames in os.walk(root, topdown=False):
            for fname in filenames:
                full = os.path.join(dirpath, fname)
                if full not in keep:
                    os.unlink(full)
            if dirpath != root and not os.listdir(dirpath):
                os.rmdir(dirpath)
        return root

    def verify(self, root: str | os.PathLike[str] | None = None) -> None:
        """Raise VerificationError unless ``root`` holds exactly this artifact's files."""
        root = os.path.abspath(os.fspath(root) if root is not None else self._default_root())
        expected = {e.path: e for e in self.files()}
        found = {path for path, _ in walk_files(root)} if os.path.isdir(root) else set()
        problems = [f"missing {p}" for p in sorted(expected.keys() - found)]
        problems += [f"unexpected {p}" for p in sorted(found - expected.keys())]
        for path in sorted(expected.keys() & found):
            if not _matches(os.path.join(root, *path.split("/")), expected[path], follow=True):
                problems.append(f"content of {path} differs from digest {expected[path].digest}")
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise VerificationError(f"{root} does not match {self.qualified_name}: {shown}")


def _matches(path: str, entry: Entry, *, follow: bool = False) -> bool:
    """Whether ``path`` holds ``entry``'s bytes.  A download never counts a symlink as the file
    (it replaces it); ``verify`` follows links, as the walk of the directory does."""
    try:
        fd = os.open(path, os.O_RDONLY | (0 if follow else os.O_NOFOLLOW))
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
            return False
        return hash_fd(fd, entry.alg, limit=entry.size) == (entry.digest, entry.size)
    except OSError:
        return False
    finally:
        os.close(fd)


def _inside(root: str, path: str) -> str:
    """``path`` if its real location is inside ``root``: symlinks already in the destination
    (``root/train -> /elsewhere``) must not carry a download out of it."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise InvalidPath(f"{path} resolves outside {root} (through a symlink): refusing to write there")
    return path
