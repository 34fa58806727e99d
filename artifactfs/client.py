"""The core of the Python API: one registry, the verified blob cache, and W&B's path rules.

:class:`Client` is what :class:`~artifactfs.artifact.Artifact` and ``Run`` hold and ask: the
registry (opened on first use), the blob store downloads share with the mount, short paths
resolved to versions (entity and project from ``overrides``, the current run, the environment,
the registry), versions by id, and a new version logged.  :class:`~artifactfs.api.Api` builds the
W&B-shaped listings on it; this module knows nothing of ``Artifact`` or ``Run`` (it sits below
them), so they may build a default ``Client`` without importing the API above.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import active_runs
from .defaults import CACHE_SIZE, default_cache_dir, default_registry
from .errors import InvalidArgument, InvalidReference, NotFound
from .fsutil import CACHE_INDEX, claim_cache_dir
from .manifest import Entry
from .names import (
    LATEST,
    Ref,
    env_organization,
    is_registry_project,
    parse_ref,
    resolve_artifact_path,
    resolve_entity,
    resolve_project_path,
)
from .registry import Registry, VersionInfo, open_registry
from .registry.base import RunInfo
from .store import BlobStore

__all__ = ["Client", "NewContent", "open_cache", "open_spec"]


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


def open_cache(cache_dir: str) -> BlobStore:
    """The mount's verified blob cache at ``cache_dir``, for a reader that is not a mount: an
    existing cache keeps the limit its mount (or ``artifactfs cache``) gave it; a new one gets
    the mount's default.  Blobs the fetch engine fills ahead (``download()``) are kept by the
    store's group commit, as a mount's are."""
    known = os.path.exists(os.path.join(cache_dir, CACHE_INDEX))
    return BlobStore(cache_dir, None if known else CACHE_SIZE, group_commit=True)


@dataclass(frozen=True, slots=True)
class NewContent:
    """A new artifact's content as a registry logs it (``Artifact.to_log``)."""

    collection: str  # the artifact's name, without a version
    files: list[tuple[str, str]]  # (entry path, local file)
    references: list[Entry]


class _RegistryDefaults:
    """The registry's default entity for path resolution, asked (and the registry opened) only
    when a path leaves the entity out and neither the caller nor ``$WANDB_ENTITY`` gives one."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def default_entity(self) -> str | None:
        return self._client.registry.default_entity()


class Client:
    """One registry and the blob cache, with W&B's path rules (see :class:`~artifactfs.api.Api`
    for the arguments)."""

    def __init__(
        self,
        registry: str | os.PathLike[str] | dict[str, Any] | None = None,
        *,
        cache_dir: str | None = None,
        overrides: dict[str, Any] | None = None,
        timeout: int | None = None,
        api_key: str | None = None,
    ) -> None:
        if isinstance(registry, dict):
            overrides, registry = registry, None
        self._spec = os.fspath(registry) if registry is not None else default_registry()
        self._cache_dir = cache_dir
        self._overrides = dict(overrides or {})
        self._registry: Registry | None = None
        self._store: BlobStore | None = None
        self._lock = threading.Lock()

    @property
    def registry(self) -> Registry:
        """The registry, opened on first use (thread-safe: opened once)."""
        registry = self._registry
        if registry is None:
            with self._lock:
                if self._registry is None:
                    self._registry = open_spec(self._spec, cache_dir=self._cache_dir)
                registry = self._registry
        return registry

    @property
    def cache_dir(self) -> str:
        return os.path.abspath(self._cache_dir or default_cache_dir())

    def blob_store(self) -> BlobStore:
        """The mount's verified cache, opened once (thread-safe: download workers call it)."""
        store = self._store
        if store is None:
            with self._lock:
                if self._store is None:
                    self._store = open_cache(self.cache_dir)
                store = self._store
        return store

    def close(self) -> None:
        """Close the registry and the cache handle (each opened again on its next use)."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
            if self._registry is not None:
                self._registry.close()
                self._registry = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paths -----------------------------------------------------------------------------------

    @property
    def default_entity(self) -> str | None:
        try:
            return resolve_entity(self.given()[0], registry_defaults=_RegistryDefaults(self))
        except InvalidReference:
            return None

    def given(self) -> tuple[str | None, str | None]:
        """The entity and project that come before the environment: ``overrides``, then the
        current run's."""
        run = active_runs.current()
        entity = self._overrides.get("entity") or (run.entity if run is not None else None)
        project = self._overrides.get("project") or (run.project if run is not None else None)
        return entity, project

    @property
    def registry_defaults(self) -> _RegistryDefaults:
        """The registry's default entity, asked only when a path needs it."""
        return _RegistryDefaults(self)

    def entity_project(self, path: str | None) -> tuple[str, str]:
        """``entity/project``, ``project`` or None/"" -> (entity, project), defaults filled in."""
        entity, project = self.given()
        return resolve_project_path(path, entity=entity, project=project, registry_defaults=self.registry_defaults)

    def ref(self, path: str, default_tag: str | None = LATEST) -> Ref:
        """An artifact path of 1, 2 or 3 parts, as W&B takes it; a registry path
        (``[ORG/]wandb-registry-NAME/collection[:alias]``) names the organization's entity."""
        entity, project = self.given()
        collection, sep, tag = path.partition(":")
        parts = collection.split("/")
        if len(parts) in (2, 3) and is_registry_project(parts[-2]):
            org = parts[0] if len(parts) == 3 else env_organization()
            org_entity = self.registry.org_entity(org, self.settings_entity())
            if org_entity is not None:
                path = f"{org_entity}/{parts[-2]}/{parts[-1]}{sep}{tag}"
        return resolve_artifact_path(
            path, entity=entity, project=project, registry_defaults=self.registry_defaults, default_tag=default_tag
        )

    def settings_entity(self) -> str:
        """The entity W&B resolves an organization from: the run's or ``overrides``', else
        ``$WANDB_ENTITY``, else the signed-in user's."""
        return resolve_entity(self.given()[0], registry_defaults=self.registry_defaults)

    # -- versions --------------------------------------------------------------------------------

    def resolve(self, name: str, type: str | None = None) -> tuple[VersionInfo, str | None]:
        """The version ``name`` (a path as :meth:`ref` takes it) names, and the alias or ``vN``
        it was named by (None when it named none).  InvalidArgument if its type is not ``type``."""
        ref = self.ref(name)
        version = self.registry.resolve(ref)
        if type is not None and version.type != type:
            raise InvalidArgument(f"artifact {version.ref} has type {version.type!r}, not {type!r}")
        return version, ref.tag if ":" in name else None

    def version_by_id(self, artifact_id: str) -> VersionInfo | None:
        """The version with ``id``, or None (the registry's ``version_by_id``)."""
        try:
            return self.registry.version_by_id(artifact_id)
        except NotFound:
            return None

    def log_new(
        self,
        content: NewContent,
        project: str | None,
        aliases: Iterable[str],
        *,
        type: str,
        description: str,
        metadata: dict[str, Any],
        digest_algorithm: str,
        run: RunInfo | None = None,
    ) -> VersionInfo:
        """Log ``content`` as a new version into ``[entity/]project`` (defaults as for paths;
        ``run``'s project when ``run`` logs it and no project is given); a local registry that
        does not exist yet is created."""
        if isinstance(aliases, str):
            aliases = [aliases]
        if run is not None and project is None:
            project = f"{run.entity}/{run.project}"
        if self._registry is None:
            self._registry = open_spec(self._spec, create=True, cache_dir=self._cache_dir)
        entity, proj = self.entity_project(project)
        ref = parse_ref(f"{entity}/{proj}/{content.collection}")
        extra: dict[str, Any] = {} if run is None else {"run_id": run.id}
        result = self.registry.log_files(
            content.files,
            ref,
            type=type,
            aliases=list(dict.fromkeys(aliases)),
            description=description,
            metadata=metadata,
            digest_algorithm=digest_algorithm,
            references=content.references,
            **extra,
        )
        return result.version
