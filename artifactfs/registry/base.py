"""The registry interface: what the mount, the CLI and the API need from a backend.

A registry answers questions about entities, projects, artifact collections, versions and
aliases, and tells where an entry's bytes can be had (:class:`BlobSource`).  It never serves
bytes itself: the fetcher and the store do that, and verify them first.
"""

from __future__ import annotations

import abc
import datetime as _dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from ..errors import FetchError
from ..manifest import Entry, Manifest
from ..names import Ref


def iso_time(ns: int) -> str:
    """Nanoseconds since the epoch -> ``2026-11-27T17:35:29.123456Z`` (as W&B prints times)."""
    dt = _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    entity: str
    project: str
    name: str
    type: str
    description: str
    created_at_ns: int
    version_count: int


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

    @property
    def version(self) -> str:
        return f"v{self.version_index}"

    @property
    def ref(self) -> Ref:
        return Ref(self.entity, self.project, self.name, self.version)

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
        }


@dataclass(frozen=True, slots=True)
class DirEntry:
    """A name inside a version directory: a file (``entry`` set) or a directory (``entry`` None)."""

    name: str
    entry: Entry | None


class Progress(Protocol):
    """What a download tells the store while it writes, so the store can hash as bytes arrive."""

    def advance(self, end: int) -> None:
        """Bytes ``[0, end)`` of the file are written and will not change."""

    def restart(self) -> None:
        """The file was truncated to 0 and is being written again from the start."""


class Download(Protocol):
    def __call__(self, fd: int, what: str, progress: Progress) -> None:
        """Write the entry's bytes into ``fd`` (empty; opened read-write) at their offsets,
        never more than the entry's size; call ``progress`` as the written prefix grows.  May
        raise :class:`~artifactfs.errors.FetchError`; no thread may write to ``fd`` after it
        returns or raises."""


@dataclass(frozen=True, slots=True)
class BlobSource:
    """Where an entry's bytes come from.

    ``local_path`` is set when the bytes already sit in a file on this machine (the local
    registry's blob store): the store may verify that file in place instead of copying it.
    ``open`` returns a readable binary stream; it may raise
    :class:`~artifactfs.errors.FetchError`.  ``download`` writes the bytes into a file itself,
    possibly out of order (ranged, parallel, resumed HTTP: :func:`artifactfs.http.download`).
    Whatever the kind, the store verifies the bytes before anything is served.
    """

    description: str
    local_path: str | None = None
    open: Callable[[], IO[bytes]] | None = None
    download: Download | None = None

    def stream(self) -> IO[bytes]:
        """The bytes as a readable stream, whichever kind of source this is."""
        if self.open is not None:
            return self.open()
        if self.local_path is None:
            raise FetchError(f"no source for {self.description}")
        try:
            return open(self.local_path, "rb")
        except FileNotFoundError as exc:
            raise FetchError(f"blob of {self.description} is missing ({self.local_path})") from exc
        except OSError as exc:
            raise FetchError(f"cannot open blob of {self.description}: {exc.strerror or exc}") from exc


class Registry(abc.ABC):
    """A source of artifact metadata and blobs.  Methods are blocking; call them from threads
    when they may touch the network."""

    kind: str = "registry"

    @abc.abstractmethod
    def entities(self) -> list[str]: ...

    @abc.abstractmethod
    def projects(self, entity: str) -> list[str]: ...

    @abc.abstractmethod
    def collections(self, entity: str, project: str) -> list[CollectionInfo]: ...

    @abc.abstractmethod
    def versions(self, entity: str, project: str, name: str) -> list[VersionInfo]: ...

    @abc.abstractmethod
    def resolve(self, ref: Ref) -> VersionInfo:
        """The version that ``ref`` (``name:vN`` or ``name:alias``) names now."""

    @abc.abstractmethod
    def iter_entries(self, version: VersionInfo) -> Iterator[Entry]: ...

    @abc.abstractmethod
    def list_dir(self, version: VersionInfo, path: str) -> list[DirEntry]:
        """Children of directory ``path`` ('' is the version root), sorted by name."""

    @abc.abstractmethod
    def get_entry(self, version: VersionInfo, path: str) -> DirEntry:
        """The file or directory at ``path`` inside ``version``; EntryNotFound if none."""

    @abc.abstractmethod
    def blob_source(self, version: VersionInfo, entry: Entry) -> BlobSource: ...

    def manifest(self, version: VersionInfo) -> Manifest:
        manifest = Manifest(storage_policy_config=dict(version.storage_policy_config))
        for entry in self.iter_entries(version):
            manifest.entries[entry.path] = entry
        return manifest

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
