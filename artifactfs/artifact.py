"""``Artifact``: W&B's ``wandb.Artifact``, over any registry (see :mod:`artifactfs.api`).

A new artifact is assembled in memory (``add_file``, ``add_dir``, ``add_reference``, ``new_file``,
``add``): each file is hashed when it is added, so ``digest``/``size``/``manifest`` are known
before logging, the same path added twice with the same content is accepted and with other
content refused with ``ValueError`` (:class:`~artifactfs.wandb_errors.PathConflict`), as in W&B.  Once
logged (``Api.log_artifact``, ``Run.log_artifact``, ``save()``) the content is immutable
(:class:`~artifactfs.wandb_errors.ArtifactFinalizedError`); ``description``, ``metadata`` and
``aliases`` stay editable and ``save()`` stores the change.

Reading (``download``, ``checkout``, ``get_path(...).download()``, ``file``, ``get``) goes
through :mod:`artifactfs.download`: verified bytes, the mount's cache shared, nothing written
outside the root.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any

from . import active_runs
from .client import Client, NewContent
from .digests import fd_holds, hash_fd
from .download import Downloader, remove_others
from .errors import (
    ArtifactFSError,
    EntryNotFound,
    InvalidArgument,
    InvalidPath,
    InvalidReferenceEntry,
    NotFound,
    ReadOnly,
    RunNotActive,
    SourceError,
)
from .fsutil import walk_files
from .manifest import MD5, XXH128, Entry, Manifest, hex_from_b64
from .names import (
    LATEST,
    check_alias,
    check_entry_path,
    check_name,
    env_organization,
    is_registry_project,
    json_object_text,
    parse_ref,
    resolve_artifact_path,
)
from .references import checksum_reference, content_entry, file_path, reference_name
from .registry import CollectionInfo, Registry, VersionInfo
from .registry.base import RunInfo, iso_time
from .table import SUFFIX as TABLE_SUFFIX
from .table import Table
from .wandb_errors import (
    ArtifactFinalizedError,
    ArtifactNotLoggedError,
    EntryFileNotFound,
    EntryKeyError,
    InvalidValue,
    PathConflict,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

__all__ = ["Artifact", "ArtifactFile", "ArtifactManifestEntry", "Run", "VerificationError"]

POLICIES = ("mutable", "immutable")


class VerificationError(InvalidValue):
    """A directory's files do not match an artifact's manifest (W&B raises ValueError here)."""


@dataclass(frozen=True, eq=False)
class ArtifactManifestEntry(Entry):
    """A manifest entry of an artifact (W&B's ``ArtifactManifestEntry``): the :class:`Entry`
    fields, ``local_path`` for a file added to a new artifact, and ``download()`` of one verified
    file for an entry of a logged artifact."""

    local_path: str | None = field(default=None, compare=False)
    artifact: Artifact | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, entry: Entry, artifact: Artifact | None, local_path: str | None = None) -> ArtifactManifestEntry:
        return cls(
            entry.path, entry.digest, entry.size, entry.ref, entry.birth_artifact_id, entry.extra, local_path, artifact
        )

    @property
    def name(self) -> str:
        return self.path

    def plain(self) -> Entry:
        return Entry(self.path, self.digest, self.size, self.ref, self.birth_artifact_id, self.extra)

    def download(self, root: str | os.PathLike[str] | None = None, skip_cache: bool | None = None) -> str:
        """Download this one file, verified, under ``root`` (default: the artifact's download
        root); its path.  ArtifactNotLoggedError for an entry of a new artifact."""
        if self.artifact is None or self.artifact._version is None:
            raise ArtifactNotLoggedError("'ArtifactManifestEntry.download' used prior to logging artifact")
        root_path = self.artifact._root(root)
        self.artifact._download_entries(root_path, [self.plain()])
        return os.path.join(root_path, *self.path.split("/"))

    def ref_target(self) -> str:
        """The URI of a reference entry; ValueError for an uploaded file (as W&B)."""
        if self.ref is None:
            raise InvalidValue(f"{self.path} is not a reference entry")
        return self.ref

    def ref_url(self) -> str:
        """``wandb-artifact://<hex id>/<path>``: how W&B refers to another artifact's entry."""
        if self.artifact is None or self.artifact.id is None:
            raise ArtifactNotLoggedError("'ArtifactManifestEntry.ref_url' used prior to logging artifact")
        try:
            hex_id = base64.b64decode(self.artifact.id, validate=True).hex()
        except ValueError:
            hex_id = self.artifact.id
        return f"wandb-artifact://{hex_id}/{urllib.parse.quote(self.path)}"


class ArtifactFile:
    """One file of a logged artifact as ``Artifact.files()`` yields it (W&B's ``File``):
    ``name`` (the entry path), ``size``, ``md5`` (base64, as W&B's GraphQL gives it; None for an
    XXH128 entry), ``digest``, ``mimetype`` and ``download()``."""

    def __init__(self, artifact: Artifact, entry: Entry) -> None:
        self._artifact = artifact
        self.entry = entry

    @property
    def name(self) -> str:
        return self.entry.path

    @property
    def path(self) -> str:
        return self.entry.path

    @property
    def size(self) -> int:
        return self.entry.size

    @property
    def md5(self) -> str | None:
        return self.entry.digest if self.entry.alg == MD5 else None

    @property
    def digest(self) -> str:
        return self.entry.digest

    @property
    def mimetype(self) -> str:
        import mimetypes

        return mimetypes.guess_type(self.entry.path)[0] or "application/octet-stream"

    @property
    def url(self) -> str:
        return self.entry.ref or ""

    @property
    def direct_url(self) -> str:
        return self.url

    @property
    def path_uri(self) -> str:
        return self.entry.ref or ""

    def download(self, root: str = ".", replace: bool = False, exist_ok: bool = False) -> IO[str]:
        """Download the file (verified) to ``root/name`` and return it opened for reading, as
        W&B's ``File.download``.  ``ValueError`` if it exists and neither ``replace`` nor
        ``exist_ok`` is given; with ``exist_ok`` an existing file is returned as it is."""
        path = os.path.join(root, *self.entry.path.split("/"))
        if os.path.lexists(path) and not replace:
            if not exist_ok:
                raise InvalidValue(f"File already exists, pass replace=True to overwrite: {path}")
            return open(path)
        self._artifact._download_entries(os.path.abspath(root), [self.entry])
        return open(path)

    def __repr__(self) -> str:
        return f"<File {self.entry.path} ({self.entry.size} bytes)>"


@dataclass
class _Added:
    entry: Entry
    local: str | None  # the file to log; None for a reference
    identity: tuple[int, ...] = ()  # the file's (dev, ino, size, mtime, ctime) when it was hashed


def _file_identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Artifact:
    """An artifact version: a new one being assembled, or one read from a registry.

    ``Artifact(name, type, description=None, metadata=None, incremental=False, use_as=None,
    storage_region=None, digest_algorithm="MD5")``, as ``wandb.Artifact``."""

    def __init__(
        self,
        name: str,
        type: str,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        incremental: bool = False,
        use_as: str | None = None,
        storage_region: str | None = None,
        digest_algorithm: str = MD5,
    ) -> None:
        if incremental:
            raise InvalidArgument("incremental artifacts are not supported: log a complete new Artifact")
        if digest_algorithm not in (MD5, XXH128):
            raise InvalidValue(f"unsupported digest_algorithm {digest_algorithm!r} (MD5 or XXH128)")
        self._name = check_name(name, "artifact name")
        self._type = check_name(type, "type")
        self._description = description
        self._metadata: dict[str, Any] = _check_metadata(metadata)
        self._digest_algorithm = digest_algorithm
        self._added: dict[str, _Added] = {}
        self._objs: dict[int, tuple[Any, ArtifactManifestEntry]] = {}
        self._aliases: list[str] = []
        self._api: Client | None = None
        self._version: VersionInfo | None = None
        self._final = False
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._tag: str | None = None  # the alias or version it was fetched by (its ``name`` keeps it)

    # -- construction from a registry --------------------------------------------------------

    @classmethod
    def of_version(cls, api: Client, version: VersionInfo, tag: str | None = None) -> Artifact:
        """``version`` as an Artifact; ``tag`` is the alias or ``vN`` the caller named it by,
        which its ``name`` keeps (W&B: ``Api().artifact("ds:best").name == "ds:best"``)."""
        art = cls(version.name, version.type, version.description, version.metadata)
        art._tag = tag
        art._attach(api, version)
        return art

    def _attach(self, api: Client, version: VersionInfo) -> None:
        self._api = api
        self._version = version
        self._type = version.type
        self._description = version.description
        self._metadata = dict(version.metadata)
        self._aliases = list(version.aliases)
        self._digest_algorithm = version.digest_algorithm or MD5
        self._added = {}
        self._objs = {}
        self._final = True
        self._drop_tmp()

    def _drop_tmp(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @classmethod
    def from_id(cls, artifact_id: str, client: Client | None = None) -> Artifact | None:
        """The logged artifact whose ``id`` is ``artifact_id``, or None (as W&B)."""
        api = client if client is not None else Client()
        version = api.version_by_id(artifact_id)
        return None if version is None else cls.of_version(api, version)

    @staticmethod
    def expected_type(client: Client | None, name: str, entity_name: str, project_name: str) -> str | None:
        """The type of the artifact ``entity_name/project_name/name`` (``:latest`` unless the
        name has a ``:``), or None when there is no such artifact."""
        api = client if client is not None else Client()
        ref = name if ":" in name else f"{name}:{LATEST}"
        try:
            return api.resolve(f"{entity_name}/{project_name}/{ref}")[0].type
        except NotFound:
            return None

    # -- state -----------------------------------------------------------------------------------

    def _logged_version(self, what: str = "") -> VersionInfo:
        if self._version is None:
            shown = f"Artifact.{what}" if what else "this"
            raise ArtifactNotLoggedError(
                f"{shown!r} used prior to logging artifact {self._name!r}: log it first "
                "(run.log_artifact, Api().log_artifact or save())"
            )
        return self._version

    def _not_final(self, what: str) -> None:
        if self._final or self._version is not None:
            raise ArtifactFinalizedError(
                f"'Artifact.{what}' used on logged artifact {self.name!r}: a logged artifact's content is "
                "immutable (create a new Artifact to log a new version)"
            )

    def _reg(self) -> Registry:
        assert self._api is not None
        return self._api.registry

    def _with_contents(self) -> tuple[Registry, VersionInfo]:
        """The registry and the version, with the version's entries at hand (a remote backend
        fetches the manifest once here)."""
        version = self._logged_version()
        reg = self._reg()
        if not reg.contents_loaded(version):
            reg.load_contents(version)
        return reg, version

    def is_draft(self) -> bool:
        return self._version is None

    def finalize(self) -> None:
        """Refuse further changes to the content (logging does this)."""
        self._final = True

    def wait(self, timeout: int | None = None) -> Artifact:
        """Logging here is synchronous: the logged artifact itself (ArtifactNotLoggedError for
        one that was never logged, as W&B)."""
        self._logged_version("wait")
        return self

    # -- attributes ------------------------------------------------------------------------------

    @property
    def id(self) -> str | None:
        return None if self._version is None else self._version.id

    @property
    def entity(self) -> str:
        return self._logged_version("entity").entity

    @property
    def project(self) -> str:
        return self._logged_version("project").project

    @property
    def name(self) -> str:
        """The bare name before it is logged; then ``name:vN``, or ``name:alias`` when it was
        fetched by that alias (as W&B)."""
        if self._version is None:
            return self._name
        return f"{self._name}:{self._tag or self._version.version}"

    @property
    def qualified_name(self) -> str:
        v = self._logged_version("qualified_name")
        return f"{v.entity}/{v.project}/{self.name}"

    @property
    def version(self) -> str:
        return self._logged_version("version").version

    @property
    def collection(self) -> CollectionInfo:
        v = self._logged_version("collection")
        for col in self._reg().collections(v.entity, v.project):
            if col.name == v.name:
                return col
        return CollectionInfo(v.entity, v.project, v.name, v.type, "", v.created_at_ns, 0)

    @property
    def collection_name(self) -> str:
        return self._name

    # A link (Registry.link) is reported by the registry as a version of the target collection;
    # ``VersionInfo.source`` names the version that was logged (None: this is that version).
    def _source(self) -> tuple[str, str, str, str]:
        v = self._logged_version("source_entity")
        src = v.source
        if src is not None:
            return src.entity, src.project, src.name, src.tag or v.version
        return v.entity, v.project, v.name, v.version

    @property
    def source_entity(self) -> str:
        return self._source()[0]

    @property
    def source_project(self) -> str:
        return self._source()[1]

    @property
    def source_name(self) -> str:
        if self._version is None:
            return self._name
        _, _, name, version = self._source()
        return f"{name}:{version}"

    @property
    def source_qualified_name(self) -> str:
        return f"{self.source_entity}/{self.source_project}/{self.source_name}"

    @property
    def source_version(self) -> str:
        return self._source()[3]

    @property
    def source_collection(self) -> CollectionInfo:
        return self.collection

    @property
    def is_link(self) -> bool:
        if self._version is None:
            return False
        e, p, n, _ = self._source()
        v = self._version
        return (e, p, n) != (v.entity, v.project, v.name)

    @property
    def linked_artifacts(self) -> list[Artifact]:
        self._logged_version("linked_artifacts")
        return []

    @property
    def source_artifact(self) -> Artifact:
        if not self.is_link:
            return self
        assert self._api is not None
        return Artifact.of_version(self._api, *self._api.resolve(self.source_qualified_name))

    @property
    def type(self) -> str:
        return self._type

    @property
    def url(self) -> str:
        """No web app serves artifactfs registries: empty (W&B's value when it has no URL)."""
        self._logged_version("url")
        return ""

    @property
    def description(self) -> str | None:
        return self._description

    @description.setter
    def description(self, value: str | None) -> None:
        if value is not None and not isinstance(value, str):
            raise InvalidValue("description must be a string or None")
        self._description = value

    @property
    def metadata(self) -> dict[str, Any]:
        """Editable in place or by replacement; ``save()`` stores it on a logged artifact."""
        return self._metadata

    @metadata.setter
    def metadata(self, value: dict[str, Any]) -> None:
        self._metadata = _check_metadata(value)

    @property
    def ttl(self) -> None:
        """Versions here never expire: None (no TTL policy)."""
        return None

    @ttl.setter
    def ttl(self, value: Any) -> None:
        if value is not None:
            raise InvalidArgument("artifact TTL policies are not supported: versions live until deleted")

    @property
    def aliases(self) -> list[str]:
        """Editable (append, remove, replace); ``save()`` stores the change.  ``latest`` is
        managed by the registry; version names (``v3``) are not aliases."""
        self._logged_version("aliases")
        return self._aliases

    @aliases.setter
    def aliases(self, value: list[str]) -> None:
        self._logged_version("aliases")
        if isinstance(value, str):
            raise InvalidValue("aliases must be a list of strings, not one string")
        self._aliases = [check_alias(a) if a != LATEST else a for a in value]

    @property
    def tags(self) -> list[str]:
        self._logged_version("tags")
        return []

    @tags.setter
    def tags(self, value: list[str]) -> None:
        if value:
            raise InvalidArgument("artifact tags are not supported (use aliases or metadata)")

    @property
    def distributed_id(self) -> str | None:
        return None

    @property
    def incremental(self) -> bool:
        return False

    @property
    def use_as(self) -> str | None:
        return None

    @property
    def state(self) -> str:
        """``PENDING`` before logging, then the registry's (``COMMITTED``, ``DELETED``)."""
        return "PENDING" if self._version is None else self._version.state

    @property
    def manifest(self) -> Manifest:
        """The manifest: the entries added so far, or a logged version's (a fresh copy each
        time: a logged artifact's manifest cannot change)."""
        if self._version is None:
            manifest = Manifest()
            for path in sorted(self._added):
                manifest.entries[path] = self._added[path].entry
            return manifest
        reg, version = self._with_contents()
        return reg.manifest(version)

    @property
    def digest_algorithm(self) -> str:
        return self._digest_algorithm

    @property
    def digest(self) -> str:
        if self._version is None:
            return self.manifest.digest(self._digest_algorithm)
        return self._version.digest

    @property
    def size(self) -> int:
        if self._version is None:
            return sum(a.entry.size for a in self._added.values())
        return self._version.size

    @property
    def file_count(self) -> int:
        return self._logged_version("file_count").file_count

    @property
    def commit_hash(self) -> str:
        return self._logged_version("commit_hash").commit_hash

    @property
    def created_at(self) -> str:
        return iso_time(self._logged_version("created_at").created_at_ns)

    @property
    def updated_at(self) -> str:
        return iso_time(self._logged_version("updated_at").updated_at_ns)

    @property
    def linked_at(self) -> str | None:
        self._logged_version("linked_at")
        return None

    @property
    def history_step(self) -> int | None:
        self._logged_version("history_step")
        return None

    def __repr__(self) -> str:
        return f"<Artifact {self.id or self.name}>"

    # -- building a new artifact -----------------------------------------------------------------

    def _entry_for(self, path: str, digest: str, size: int) -> Entry:
        extra = {"alg": XXH128} if self._digest_algorithm == XXH128 else {}
        return Entry(path, digest, size, extra=extra)

    def _put(self, added: _Added, overwrite: bool) -> ArtifactManifestEntry:
        path = check_entry_path(added.entry.path)
        old = self._added.get(path)
        if old is not None and not overwrite:
            if old.entry.digest != added.entry.digest or old.entry.ref != added.entry.ref:
                raise PathConflict(
                    f"Cannot add the same path twice with different content: {path!r} "
                    f"(already {old.entry.digest}, now {added.entry.digest})"
                )
            return ArtifactManifestEntry.of(old.entry, self, old.local)
        prefix = path + "/"
        for other in self._added:
            if other.startswith(prefix) or path.startswith(other + "/"):
                raise PathConflict(f"entry path {path!r} and {other!r}: one would be a directory of the other")
        self._added[path] = added
        return ArtifactManifestEntry.of(added.entry, self, added.local)

    def add_file(
        self,
        local_path: str | os.PathLike[str],
        name: str | None = None,
        is_tmp: bool | None = False,
        skip_cache: bool | None = False,
        policy: str | None = "mutable",
        overwrite: bool = False,
    ) -> ArtifactManifestEntry:
        """Add a local file (hashed now) as ``name`` (default: its base name).  ``is_tmp``
        replaces the first part of the file name by the content's hex digest (20 characters),
        as W&B does for temporary files.  Returns the entry."""
        self._not_final("add_file")
        if (policy or "mutable") not in POLICIES:
            raise InvalidValue(f"Invalid policy {policy!r}. Policy may only be `mutable` or `immutable`.")
        local = os.fspath(local_path)
        if not os.path.isfile(local):
            raise SourceError(f"{local!r} is not a file")
        try:
            fd = os.open(local, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceError(f"cannot read {local!r}: {exc.strerror or exc}") from exc
        try:
            before = _file_identity(os.fstat(fd))
            digest, size = hash_fd(fd, self._digest_algorithm)
            if _file_identity(os.fstat(fd)) != before:
                raise SourceError(f"{local!r} changed while it was hashed")
        finally:
            os.close(fd)
        path = name if name is not None else os.path.basename(local)
        path = path.replace(os.sep, "/") if os.sep != "/" else path
        if is_tmp:
            head, _, leaf = path.rpartition("/")
            parts = leaf.split(".")
            parts[0] = hex_from_b64(digest)[:20]
            path = (head + "/" if head else "") + ".".join(parts)
        return self._put(_Added(self._entry_for(path, digest, size), local, before), overwrite)

    def add_dir(
        self,
        local_path: str | os.PathLike[str],
        name: str | None = None,
        skip_cache: bool | None = False,
        policy: str | None = "mutable",
        merge: bool = False,
    ) -> None:
        """Add every file below ``local_path``, under ``name/`` if given.  A path added before
        with other content is refused (ValueError) unless ``merge``."""
        self._not_final("add_dir")
        local = os.fspath(local_path)
        if not os.path.isdir(local):
            raise SourceError(f"{local!r} is not a directory")
        prefix = name.strip("/") + "/" if name else ""
        for path, full in walk_files(local):
            self.add_file(full, prefix + path, policy=policy, overwrite=merge)

    @contextlib.contextmanager
    def new_file(self, name: str, mode: str = "x", encoding: str | None = None) -> Iterator[IO[Any]]:
        """Open a new file to write; when the block ends it is added to the artifact as ``name``."""
        self._not_final("new_file")
        check_entry_path(name)
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="artifactfs-new-")
        path = os.path.join(self._tmp.name, *name.split("/"))
        if name in self._added:
            raise PathConflict(f"File with name {name!r} already exists in the artifact")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            f = open(path, mode, encoding=encoding)  # noqa: SIM115 - closed by the with below
        except FileExistsError as exc:
            raise PathConflict(f"File with name {name!r} already exists at {path!r}") from exc
        with f:
            yield f
        self.add_file(path, name)

    def add(self, obj: Any, name: str, overwrite: bool = False) -> ArtifactManifestEntry:
        """Add a :class:`~artifactfs.table.Table` as ``name.table.json`` (W&B's file format).
        Other W&B media types are refused (:class:`~artifactfs.wandb_errors.UnsupportedMediaType`)."""
        self._not_final("add")
        if not isinstance(obj, Table):
            kind = type(obj).__name__
            raise UnsupportedMediaType(
                f"Artifact.add of a {kind} is not supported: artifactfs stores Table objects "
                "(W&B's images, audio, video, HTML and other media types are not implemented)"
            )
        known = self._objs.get(id(obj))
        if known is not None:
            return known[1]
        path = Table.with_suffix(name)
        if path in self._added and overwrite:
            del self._added[path]
        with self.new_file(path, mode="w" if overwrite else "x", encoding="utf-8") as f:
            f.write(obj.dumps())
        entry = ArtifactManifestEntry.of(self._added[path].entry, self, self._added[path].local)
        self._objs[id(obj)] = (obj, entry)
        return entry

    def __setitem__(self, name: str, item: Any) -> ArtifactManifestEntry:
        return self.add(item, name)

    def add_reference(
        self, uri: str, name: str | None = None, checksum: bool = True, max_objects: int | None = None
    ) -> list[ArtifactManifestEntry]:
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
        self._not_final("add_reference")
        if not isinstance(uri, str):
            raise InvalidReferenceEntry(
                "add_reference takes a URI string (references to another artifact's entry are not supported)"
            )
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
        else:
            default = reference_name(uri)  # InvalidReferenceEntry for a scheme that cannot be fetched
            if not (name or default):
                raise InvalidPath("the URL path names no file: pass name=")
            items.append((name or default, uri))
        for path, ref in items:  # every name is checked before anything is fetched
            check_entry_path(path)
            old = self._added.get(path)
            if old is not None and old.entry.ref != ref:
                raise PathConflict(f"Cannot add the same path twice with different content: {path!r}")
        added: list[Entry] = []
        for path, ref in items:
            digest, size, extra = checksum_reference(ref, self._digest_algorithm)
            added.append(Entry(path, digest, size, ref=ref, extra=extra))
        return [self._put(_Added(entry, None), False) for entry in added]

    def remove(self, item: str | Entry) -> None:
        """Remove an entry (or every entry below a directory) from a new artifact."""
        self._not_final("remove")
        path = item.path if isinstance(item, Entry) else os.fspath(item).strip("/")
        gone = [p for p in self._added if p == path or p.startswith(path + "/")]
        if not gone:
            raise EntryFileNotFound(f"no such file or directory in the artifact: {path!r}")
        for p in gone:
            del self._added[p]

    def get_added_local_path_name(self, local_path: str) -> str | None:
        for path, added in self._added.items():
            if added.local == local_path:
                return path
        return None

    # -- logging and editing ---------------------------------------------------------------------

    def _check_unchanged(self) -> None:
        """SourceError if a file changed since it was added: W&B would log the content it had
        then (it copies every file to a staging area); here files are read when logged, so a
        changed one is refused rather than logged with other bytes than ``digest`` promised."""
        for path, added in sorted(self._added.items()):
            if added.local is None or not added.identity:
                continue
            try:
                now = _file_identity(os.stat(added.local))
            except OSError as exc:
                raise SourceError(f"{added.local!r} (entry {path}) is gone since it was added: {exc.strerror}") from exc
            if now != added.identity:
                raise SourceError(
                    f"{added.local!r} (entry {path}) changed since it was added to the artifact: add it again"
                )

    def to_log(self) -> NewContent:
        """What logging this new artifact hands the registry (``Registry.log_files``): its
        files and reference entries.  ReadOnly once it is logged; SourceError if an added file
        changed since it was added.  (:meth:`log_through` calls it, then :meth:`logged_as`.)"""
        if self._version is not None:
            raise ReadOnly(f"{self.qualified_name} is already logged: a logged artifact is immutable")
        self._check_unchanged()
        added = sorted(self._added.items())
        return NewContent(
            collection=self._name,
            files=[(p, a.local) for p, a in added if a.local is not None],
            references=[a.entry for _, a in added if a.local is None],
        )

    def logged_as(self, api: Client, version: VersionInfo) -> None:
        """This new artifact is now ``version``, logged through ``api``."""
        self._attach(api, version)

    def log_through(
        self, client: Client, project: str | None, aliases: Iterable[str] = (), *, run: RunInfo | None = None
    ) -> Artifact:
        """Log this new artifact through ``client`` into ``[entity/]project`` (``run``: the run
        that logs it, for lineage); it is now logged (``Api.log_artifact``, ``Run.log_artifact``)."""
        content = self.to_log()
        version = client.log_new(
            content,
            project,
            aliases,
            type=self.type,
            description=self.description or "",
            metadata=self.metadata,
            digest_algorithm=self.digest_algorithm,
            run=run,
        )
        self.logged_as(client, version)
        return self

    def save(self, project: str | None = None, settings: Any = None) -> None:
        """New artifact: log it (through the current run if there is one, else into
        ``project``, ``$WANDB_PROJECT`` or the registry's default).  Logged artifact: store the
        changes to ``description``, ``metadata`` and ``aliases``."""
        if self._version is None:
            current = active_runs.current()
            if isinstance(current, Run) and project is None:
                current.log_artifact(self)
                return
            self.log_through(self._api or Client(), project)
            return
        reg = self._reg()
        v = self._version
        wanted = list(dict.fromkeys(self._aliases))
        for alias in v.aliases:
            if alias not in wanted and alias != LATEST:
                v = reg.remove_alias(v.ref, alias)
        for alias in wanted:
            if alias not in v.aliases and alias != LATEST:
                v = reg.add_alias(v.ref, alias)
        description = self._description or ""
        if description != v.description or self._metadata != v.metadata:
            v = reg.update(v.ref, description=description, metadata=self._metadata)
        else:
            v = reg.resolve(v.ref)
        assert self._api is not None
        self._attach(self._api, v)

    def delete(self, delete_aliases: bool = False) -> None:
        """Delete this version (Conflict while it has aliases, unless ``delete_aliases``)."""
        version = self._logged_version("delete")
        self._reg().delete(version.ref, delete_aliases=delete_aliases)

    def link(self, target_path: str, aliases: Iterable[str] | None = None) -> Artifact:
        """Link this version into the collection ``target_path`` (``[[entity/]project/]name``;
        missing parts from this artifact) with ``aliases``; the linked artifact.  A registry
        target (``[ORG/]wandb-registry-NAME/collection``) goes to the organization's entity, as
        W&B resolves it: ORG (display or entity name), else ``$WANDB_ORGANIZATION``, else the
        one organization of this artifact's source entity (see ``Api.artifact``)."""
        v = self._logged_version("link")
        if isinstance(aliases, str):
            aliases = [aliases]
        parts = target_path.split("/")
        if not 1 <= len(parts) <= 3 or ":" in parts[-1]:
            raise InvalidValue(f"invalid link target {target_path!r}: expected [[entity/]project/]collection")
        if len(parts) >= 2 and is_registry_project(parts[-2]):
            assert self._api is not None
            org = parts[0] if len(parts) == 3 else env_organization()
            org_entity = self._reg().org_entity(org, self.source_entity or v.entity)
            if org_entity is not None:
                parts = [org_entity, *parts[-2:]]
        full = [v.entity, v.project][: 3 - len(parts)] + parts
        for part, what in zip(full, ("entity", "project", "collection name"), strict=True):
            check_name(part, what)
        assert self._api is not None
        linked = self._reg().link(v.ref, "/".join(full), [check_alias(a) for a in aliases or ()])
        return Artifact.of_version(self._api, linked)

    def unlink(self) -> None:
        self._logged_version("unlink")
        if not self.is_link:
            raise InvalidValue(f"{self.qualified_name} is not a link")
        self.delete()

    def json_encode(self) -> dict[str, Any]:
        """W&B's JSON form of an artifact reference (``artifactVersion``)."""
        self._logged_version("json_encode")
        return {
            "_type": "artifactVersion",
            "_version": "v0",
            "id": self.id,
            "version": self.source_version,
            "sequenceName": self.source_name.split(":")[0],
            "usedAs": None,
        }

    # -- lineage ---------------------------------------------------------------------------------

    def _run(self, info: RunInfo) -> Run:
        assert self._api is not None
        return Run.from_info(self._api, info)

    def logged_by(self) -> Run | None:
        """The run that logged this version (a ``Run``), or None when none is known."""
        version = self._logged_version("logged_by")
        info = self._reg().logged_by(version)
        return None if info is None else self._run(info)

    def used_by(self) -> list[Run]:
        """The runs that used this version as an input."""
        version = self._logged_version("used_by")
        return [self._run(info) for info in self._reg().used_by(version)]

    # -- content of a logged version -------------------------------------------------------------

    def files(self, names: Iterable[str] | None = None, per_page: int = 50) -> list[ArtifactFile]:
        """The files of the version (W&B's ``File`` fields: ``name``, ``size``, ``md5``...), in path
        order; only those named in ``names`` if given."""
        reg, version = self._with_contents()
        entries = sorted(reg.iter_entries(version), key=lambda e: e.path)
        if names is not None:
            wanted = set(names)
            entries = [e for e in entries if e.path in wanted]
        return [ArtifactFile(self, e) for e in entries]

    def get_entry(self, name: str) -> ArtifactManifestEntry:
        """The entry ``name`` (KeyError-compatible EntryKeyError if there is none)."""
        reg, version = self._with_contents()
        path = check_entry_path(os.fspath(name))
        try:
            found = reg.get_entry(version, path)
        except EntryNotFound as exc:
            raise EntryKeyError(f"{path!r} not found in {self.qualified_name}") from exc
        if found.entry is None:
            raise EntryKeyError(f"{path!r} is a directory of {self.qualified_name}, not a file")
        return ArtifactManifestEntry.of(found.entry, self)

    def get_path(self, name: str) -> ArtifactManifestEntry:
        """The entry ``name``; ``.download()`` fetches that one file, verified."""
        self._logged_version("get_path")
        return self.get_entry(name)

    def get(self, name: str) -> Table | None:
        """The Table stored by ``add(table, name)`` (``name.table.json``), or None if the
        artifact holds no object of that name."""
        reg, version = self._with_contents()
        for candidate in (Table.with_suffix(name), name):
            try:
                found = reg.get_entry(version, check_entry_path(candidate))
            except EntryNotFound:
                continue
            if found.entry is None:
                continue
            if not candidate.endswith(TABLE_SUFFIX):
                if candidate.endswith(".json"):
                    raise UnsupportedMediaType(
                        f"{candidate}: only W&B Table objects ({TABLE_SUFFIX}) can be read back by get()"
                    )
                continue
            data = self._read_entry(found.entry)
            try:
                obj = json.loads(data)
            except ValueError as exc:
                raise InvalidArgument(f"{candidate} is not valid JSON: {exc}") from exc
            return Table.from_json(obj)
        for suffix in (".image-file.json", ".audio-file.json", ".html-file.json", ".video-file.json"):
            try:
                if reg.get_entry(version, check_entry_path(name + suffix)).entry is not None:
                    raise UnsupportedMediaType(f"{name + suffix}: W&B media of this type is not supported by get()")
            except EntryNotFound:
                pass
        return None

    def __getitem__(self, name: str) -> Table | None:
        return self.get(name)

    def _read_entry(self, entry: Entry) -> bytes:
        """One entry's bytes, verified, through a private temp directory."""
        with tempfile.TemporaryDirectory(prefix="artifactfs-get-") as tmp:
            self._download_entries(tmp, [entry])
            with open(os.path.join(tmp, *entry.path.split("/")), "rb") as f:
                return f.read()

    def _root(self, root: str | os.PathLike[str] | None) -> str:
        if root is not None:
            return os.path.abspath(os.fspath(root))
        env = os.environ.get("WANDB_ARTIFACT_DIR")
        base = env if env else os.path.join(".", "artifacts")
        return os.path.abspath(os.path.join(base, self.source_name))  # as W&B: where it was logged

    def _download_entries(self, root: str, entries: Iterable[Entry], *, use_cache: bool = True) -> None:
        reg, version = self._with_contents()
        assert self._api is not None
        Downloader(reg, version, self._api.blob_store, use_cache=use_cache).run(root, list(entries))

    def download(
        self,
        root: str | os.PathLike[str] | None = None,
        allow_missing_references: bool = False,
        skip_cache: bool | None = None,
        path_prefix: str | None = None,
        multipart: bool | None = None,
    ) -> str:
        """Place every file (or those under ``path_prefix``) under ``root``, verified; return root.

        Files already in ``root`` with the right content are kept; others in the way are
        replaced; files not in the artifact are left alone (``checkout`` removes them).  Blobs
        come from, and go into, the mount's cache (:mod:`artifactfs.download`); with
        ``skip_cache`` they are fetched straight into ``root`` (verified) and not cached.
        ``allow_missing_references`` and ``multipart`` are accepted and ignored: a reference that
        cannot be fetched fails the download, and large files are fetched in parallel ranges
        whatever ``multipart`` says."""
        root_path = self._root(root)
        self._logged_version("download")
        entries = [
            e.entry for e in self.files() if path_prefix is None or e.entry.path.startswith(path_prefix.lstrip("/"))
        ]
        self._download_entries(root_path, entries, use_cache=not skip_cache)
        return root_path

    def checkout(self, root: str | None = None) -> str:
        """``download``, then delete the files in ``root`` that are not in the artifact (never
        following a symlink out of ``root``)."""
        root_path = self.download(root)
        remove_others(root_path, {f.name for f in self.files()})
        return root_path

    def verify(self, root: str | None = None) -> None:
        """Raise VerificationError (a ValueError) unless ``root`` holds exactly this artifact's
        files (reference entries included: their content digest is known here)."""
        root_path = self._root(root)
        expected = {f.name: f.entry for f in self.files()}
        found = {path for path, _ in walk_files(root_path)} if os.path.isdir(root_path) else set()
        problems = [f"missing {p}" for p in sorted(expected.keys() - found)]
        problems += [f"unexpected {p}" for p in sorted(found - expected.keys())]
        for path in sorted(expected.keys() & found):
            if not _matches(os.path.join(root_path, *path.split("/")), expected[path]):
                problems.append(f"content of {path} differs from digest {expected[path].digest}")
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise VerificationError(f"{root_path} does not match {self.qualified_name}: {shown}")

    def file(self, root: str | None = None) -> str:
        """Download the artifact's only file; its path (ValueError if it holds more than one)."""
        files = self.files()
        if len(files) != 1:
            raise InvalidValue(
                f"{self.qualified_name} holds {len(files)} files, not one: call .download() for all of them, "
                "or .get_entry(name).download() for one"
            )
        root_path = self._root(root)
        self._download_entries(root_path, [files[0].entry])
        return os.path.join(root_path, *files[0].name.split("/"))


def _matches(path: str, entry: Entry) -> bool:
    """Whether ``path`` (symlinks followed, as the walk of the directory does) holds ``entry``."""
    try:
        check = content_entry(entry)
    except ArtifactFSError:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fd_holds(fd, check)
    except OSError:
        return False
    finally:
        os.close(fd)


def _check_metadata(metadata: Any) -> dict[str, Any]:
    """A copy of ``metadata`` if JSON can carry it (W&B refuses the rest)."""
    return {} if metadata is None else dict(json.loads(json_object_text(metadata)))


class Run:
    """A run: one started by :func:`~artifactfs.run.init` (live: it may log, use and finish), or
    one read from the registry (``Api().run(path)``, ``Artifact.logged_by()``; :meth:`from_info`).
    It lives here, beside :class:`Artifact`, because each hands out the other (its inputs and
    outputs; the run that logged or used a version); :mod:`artifactfs.run` starts and ends runs."""

    def __init__(self, api: Client, info: RunInfo, *, live: bool = False, owns_api: bool = False) -> None:
        self._api = api
        self._info = info
        self._live = live
        self._owns_api = owns_api
        self._finished = False
        #: The run's config, stored when it finishes (W&B syncs ``run.config`` the same way).
        self.config: dict[str, Any] = dict(info.config)

    @classmethod
    def from_info(cls, api: Client, info: RunInfo) -> Run:
        """A run read from ``api``'s registry (it cannot :meth:`finish`)."""
        return cls(api, info)

    @classmethod
    def start(cls, api: Client, info: RunInfo, *, owns_api: bool, make_current: bool) -> Run:
        """The live run ``info`` that this process just created through ``api`` (closed when the
        run ends if ``owns_api``); the current run if ``make_current``."""
        started = cls(api, info, live=True, owns_api=owns_api)
        active_runs.start(started, make_current=make_current)
        return started

    # -- attributes -----------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def entity(self) -> str:
        return self._info.entity

    @property
    def project(self) -> str:
        return self._info.project

    @property
    def job_type(self) -> str:
        return self._info.job_type

    @property
    def state(self) -> str:
        return self._info.state

    @property
    def path(self) -> list[str]:
        """``[entity, project, id]``, as W&B's public ``Run.path``."""
        return [self.entity, self.project, self.id]

    @property
    def created_at(self) -> str:
        return iso_time(self._info.created_at_ns)

    @property
    def info(self) -> RunInfo:
        """The run as the registry knows it (with ``config`` as it is now)."""
        return dataclasses.replace(self._info, config=dict(self.config))

    def __repr__(self) -> str:
        return f"<Run {self._info.path} ({self.state})>"

    # -- lineage --------------------------------------------------------------------------------

    def _check_active(self, what: str) -> None:
        if self._finished:
            raise RunNotActive(f"run {self._info.path} has finished: {what} refused (start another with init())")

    def log_artifact(
        self,
        artifact_or_path: Artifact | str | os.PathLike[str],
        name: str | None = None,
        type: str | None = None,
        aliases: list[str] | None = None,
    ) -> Artifact:
        """Log an artifact as an output of this run, into the run's project.  A path (a file, a
        directory or a reference URI) becomes an artifact named ``run-<id>-<basename>`` of type
        ``unspecified`` unless ``name``/``type`` say otherwise, as wandb does."""
        self._check_active("log_artifact")
        if isinstance(artifact_or_path, Artifact):
            artifact = artifact_or_path
        elif isinstance(artifact_or_path, (str, os.PathLike)):
            artifact = self._artifact_of_path(os.fspath(artifact_or_path), name, type)
        else:
            raise InvalidValue("log_artifact takes an Artifact or a path (a file, a directory or a reference URI)")
        return artifact.log_through(self._api, f"{self.entity}/{self.project}", aliases or (), run=self._info)

    def _artifact_of_path(self, path: str, name: str | None, type: str | None) -> Artifact:
        base = os.path.basename(os.path.normpath(path)) if "://" not in path else path.rstrip("/").rsplit("/", 1)[-1]
        artifact = Artifact(name or f"run-{self.id}-{base}", type or "unspecified")
        if "://" in path:
            artifact.add_reference(path)
        elif os.path.isdir(path):
            artifact.add_dir(path)
        elif os.path.isfile(path):
            artifact.add_file(path)
        else:
            raise InvalidValue(f"{path!r} is not a file, a directory or a reference URI")
        return artifact

    def use_artifact(
        self, artifact_or_name: Artifact | str, type: str | None = None, aliases: list[str] | None = None
    ) -> Artifact:
        """Record an artifact version as an input of this run and return it.

        A name is ``[[entity/]project/]name[:alias|:vN]`` (default alias ``latest``); a missing
        entity or project is the run's.  A logged :class:`Artifact` is used as it is; a new one
        is logged by this run first (with ``aliases``) and then used, as wandb does."""
        self._check_active("use_artifact")
        registry = self._api.registry
        if isinstance(artifact_or_name, str):
            ref = resolve_artifact_path(
                artifact_or_name,
                entity=self.entity,
                project=self.project,
                registry_defaults=registry,
                default_tag=LATEST,
            )
            version = registry.resolve(ref)
            if type is not None and version.type != type:
                raise InvalidValue(f"artifact {version.ref} has type {version.type!r}, not {type!r}")
        elif isinstance(artifact_or_name, Artifact):
            artifact = artifact_or_name
            if artifact.id is None:
                artifact = self.log_artifact(artifact, aliases=aliases)
            version = registry.resolve(parse_ref(artifact.qualified_name))
            # Ids are only unique within a registry (a local one numbers its rows): the digest too.
            if (version.id, version.digest) != (artifact.id, artifact.digest):
                raise InvalidValue(
                    f"artifact {artifact.qualified_name} (id {artifact.id}) is not in the run's registry "
                    f"{registry.spec}: that name is another version there"
                )
        else:
            raise InvalidValue('use_artifact takes an artifact name ("ds:latest") or an Artifact')
        registry.record_use(self.id, version)
        return Artifact.of_version(self._api, version)

    def logged_artifacts(self) -> list[Artifact]:
        """The versions this run logged, in the order it logged them."""
        return [Artifact.of_version(self._api, v) for v in self._api.registry.run_outputs(self._info)]

    def used_artifacts(self) -> list[Artifact]:
        """The versions this run used, in the order it first used them."""
        return [Artifact.of_version(self._api, v) for v in self._api.registry.run_inputs(self._info)]

    # -- lifecycle ------------------------------------------------------------------------------

    def finish(self, exit_code: int | None = None) -> None:
        """End the run: state ``finished``, or ``failed`` for a non-zero ``exit_code``; its
        ``config`` is stored.  Finishing again does nothing."""
        if not self._live:
            raise InvalidArgument(f"run {self._info.path} was not started by init() in this process")
        self._end("failed" if exit_code else "finished")

    def _end(self, state: str) -> None:
        if not active_runs.end(self):
            return
        self._finished = True
        try:
            self._api.registry.finish_run(self.info, state)
            self._info = dataclasses.replace(self.info, state=state)
        finally:
            if self._owns_api:
                self._api.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish(0 if exc_type is None else 1)
