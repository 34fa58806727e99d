"""A Python API that follows W&B's (``wandb.Api``, ``wandb.Artifact``), over any registry.

``import artifactfs as wandb`` is meant to be the only change W&B artifact code needs::

    import artifactfs as wandb

    art = wandb.Artifact("imagenet-mini", type="dataset", metadata={"rows": 6})
    art.add_dir("./data")
    art.add_reference("https://example.com/labels.csv")          # fetched once now, hashed
    wandb.Api().log_artifact(art, "acme/vision", aliases=["best"])  # acme/vision/imagenet-mini:v0

    ds = wandb.Api().artifact("vision/imagenet-mini:best")     # entity from the run, $WANDB_ENTITY...
    ds.version, ds.aliases, ds.digest, ds.metadata
    root = ds.download()            # ./artifacts/imagenet-mini:v0, every file verified
    ds.verify(root)                 # ValueError (VerificationError) if root differs
    ds.aliases.append("production"); ds.save()

The registry is ``Api(registry=SPEC)`` or ``$ARTIFACTFS_REGISTRY``; downloads share the mount's
verified cache (``cache_dir``, default ``$ARTIFACTFS_CACHE_DIR``).  Paths of 1, 2 or 3 parts
(``name``, ``project/name``, ``entity/project/name``, each with ``:alias`` or ``:vN``) take the
missing entity and project from ``Api(overrides=...)``, then the current run, then
``$WANDB_ENTITY``/``$WANDB_PROJECT``, then the registry's default entity (and W&B's default
project, ``uncategorized``).
"""

from __future__ import annotations

import importlib
import os
import re
import threading
from collections.abc import Iterable
from typing import Any

from .artifact import Artifact, ArtifactFile, ArtifactManifestEntry, VerificationError, _current_run
from .defaults import CACHE_SIZE, default_cache_dir, default_registry
from .errors import ArtifactFSError, InvalidArgument, InvalidReference, NotFound
from .fsutil import CACHE_INDEX, claim_cache_dir
from .names import (
    LATEST,
    REGISTRY_PREFIX,
    Ref,
    env_organization,
    is_registry_project,
    parse_ref,
    resolve_artifact_path,
    resolve_entity,
    resolve_project_path,
    resolve_run_path,
)
from .registries import Registries
from .registries import Registry as OrgRegistry
from .registry import CollectionInfo, Registry, VersionInfo, open_registry
from .registry.base import OrgInfo, RunInfo
from .store import BlobStore
from .table import Table

__all__ = [
    "Api",
    "Artifact",
    "ArtifactFile",
    "ArtifactManifestEntry",
    "Table",
    "VerificationError",
    "open_spec",
]


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
    the mount's default."""
    known = os.path.exists(os.path.join(cache_dir, CACHE_INDEX))
    return BlobStore(cache_dir, None if known else CACHE_SIZE)


class _RegistryDefaults:
    """The registry's default entity for path resolution, asked (and the registry opened) only
    when a path leaves the entity out and neither the caller nor ``$WANDB_ENTITY`` gives one."""

    def __init__(self, api: Api) -> None:
        self._api = api

    def default_entity(self) -> str | None:
        return self._api.registry.default_entity()


def _name_matches(filter: dict[str, Any] | None, name: str) -> bool:
    if not filter:
        return True
    if set(filter) != {"name"}:
        raise InvalidArgument(f"unsupported registry filter {filter!r}: only {{'name': NAME or {{'$regex': RE}}}}")
    cond = filter["name"]
    if isinstance(cond, str):
        return cond.removeprefix(REGISTRY_PREFIX) == name
    if isinstance(cond, dict) and set(cond) == {"$regex"}:
        return re.search(str(cond["$regex"]), name) is not None
    raise InvalidArgument(f"unsupported registry filter {filter!r}: only {{'name': NAME or {{'$regex': RE}}}}")


class Api:
    """Entry point, as ``wandb.Api``: look up, list and log artifacts; runs of a registry.

    ``registry`` is a registry spec (``DIR``, ``wandb``, ``wandb:https://host[:port]``; default
    ``$ARTIFACTFS_REGISTRY`` or ``~/.local/share/artifactfs/registry``).  ``cache_dir``: the
    verified blob cache that downloads share with the mount (default ``$ARTIFACTFS_CACHE_DIR`` or
    ``~/.cache/artifactfs``); a remote backend also keeps manifests there when it is given.
    ``overrides`` (``{"entity": ..., "project": ...}``) as W&B's, also accepted as the first
    positional argument as ``wandb.Api(overrides)`` passes it.  The registry is opened on first
    use; a local one that does not exist yet is created by the first log.
    """

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
        if self._registry is None:
            self._registry = open_spec(self._spec, cache_dir=self._cache_dir)
        return self._registry

    @property
    def cache_dir(self) -> str:
        return os.path.abspath(self._cache_dir or default_cache_dir())

    def blob_store(self) -> BlobStore:
        """The mount's verified cache, opened once (thread-safe: download workers call it)."""
        with self._lock:
            if self._store is None:
                self._store = open_cache(self.cache_dir)
            return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paths -----------------------------------------------------------------------------------

    @property
    def default_entity(self) -> str | None:
        try:
            return resolve_entity(self._given()[0], registry_defaults=_RegistryDefaults(self))
        except InvalidReference:
            return None

    def _given(self) -> tuple[str | None, str | None]:
        """The entity and project that come before the environment: ``Api(overrides=...)``,
        then the current run's."""
        run = _current_run()
        entity = self._overrides.get("entity") or getattr(run, "entity", None)
        project = self._overrides.get("project") or getattr(run, "project", None)
        return entity, project

    def _entity_project(self, path: str | None) -> tuple[str, str]:
        """``entity/project``, ``project`` or None/"" -> (entity, project), defaults filled in."""
        entity, project = self._given()
        return resolve_project_path(path, entity=entity, project=project, registry_defaults=_RegistryDefaults(self))

    def _ref(self, path: str, default_tag: str | None = LATEST) -> Ref:
        """An artifact path of 1, 2 or 3 parts, as W&B takes it; a registry path
        (``[ORG/]wandb-registry-NAME/collection[:alias]``) names the organization's entity."""
        entity, project = self._given()
        collection, sep, tag = path.partition(":")
        parts = collection.split("/")
        if len(parts) in (2, 3) and is_registry_project(parts[-2]):
            org = parts[0] if len(parts) == 3 else env_organization()
            org_entity = self.registry.org_entity(org, self._settings_entity())
            if org_entity is not None:
                path = f"{org_entity}/{parts[-2]}/{parts[-1]}{sep}{tag}"
        return resolve_artifact_path(
            path, entity=entity, project=project, registry_defaults=_RegistryDefaults(self), default_tag=default_tag
        )

    def _settings_entity(self) -> str:
        """The entity W&B resolves an organization from: the run's or ``overrides``', else
        ``$WANDB_ENTITY``, else the signed-in user's."""
        return resolve_entity(self._given()[0], registry_defaults=_RegistryDefaults(self))

    # -- organizations' registries (W&B Registry) ------------------------------------------------

    def _organization(self, organization: str | None) -> OrgInfo:
        """The organization ``organization`` names (display or entity name), else
        ``$WANDB_ORGANIZATION``'s, else the one of the settings' entity.  A registry without
        organizations (local) has one of its own: the settings' entity, or the entity named."""
        org = organization or env_organization()
        entity = self._settings_entity()
        org_entity = self.registry.org_entity(org, entity)
        if org_entity is None:
            return OrgInfo(org or entity, resolve_entity(org or entity))
        name = next((o.name for o in self.registry.organizations() if o.entity == org_entity), org or org_entity)
        return OrgInfo(name, org_entity)

    def registries(self, organization: str | None = None, filter: dict[str, Any] | None = None) -> Registries:
        """The organization's registries the viewer may see, by name (``Registry`` objects; a
        list with ``collections()`` and ``versions()`` of them all).  ``filter``: W&B's
        ``{"name": NAME}`` or ``{"name": {"$regex": RE}}`` on the registry name.  (W&B's
        ``Api.registry(name)`` is ``registries(filter={"name": name})[0]`` here: ``Api.registry``
        is the backend.)"""
        org = self._organization(organization)
        names = [p[len(REGISTRY_PREFIX) :] for p in self.registry.projects(org.entity) if is_registry_project(p)]
        found = [OrgRegistry(self, org, n) for n in names if _name_matches(filter, n)]
        return Registries(found)

    # -- artifacts -------------------------------------------------------------------------------

    def artifact(self, name: str, type: str | None = None) -> Artifact:
        """``[[entity/]project/]name[:alias|:vN]`` (default alias ``latest``); a registry's
        ``[ORG/]wandb-registry-NAME/collection[:alias]`` as W&B resolves it (the organization from
        ORG, its display or entity name, else ``$WANDB_ORGANIZATION``, else the one organization
        of ``$WANDB_ENTITY`` or the signed-in user).  Its ``name`` keeps the alias given."""
        ref = self._ref(name)
        version = self.registry.resolve(ref)
        if type is not None and version.type != type:
            raise InvalidArgument(f"artifact {version.ref} has type {version.type!r}, not {type!r}")
        return Artifact._logged(self, version, ref.tag if ":" in name else None)

    def artifact_exists(self, name: str, type: str | None = None) -> bool:
        try:
            self.artifact(name, type)
        except (NotFound, InvalidArgument):
            return False
        return True

    def artifact_collection_exists(self, name: str, type: str) -> bool:
        ref = self._ref(name, default_tag=None)
        try:
            cols = self.registry.collections(ref.entity, ref.project)
        except NotFound:
            return False
        return any(c.name == ref.name and c.type == type for c in cols)

    def artifacts(self, type_name: str, name: str, per_page: int = 50, tags: Any = None) -> list[Artifact]:
        """Every version of the collection ``[[entity/]project/]name`` of type ``type_name``, oldest first."""
        ref = self._ref(name, default_tag=None)
        versions = self.registry.versions(ref.entity, ref.project, ref.name)
        return [Artifact._logged(self, v) for v in versions if v.type == type_name]

    def artifact_versions(self, type_name: str, name: str, per_page: int = 50) -> list[Artifact]:
        return self.artifacts(type_name, name, per_page)

    def artifact_collections(
        self, project_name: str | None = None, type_name: str | None = None, per_page: int = 50
    ) -> list[CollectionInfo]:
        """The collections of ``[entity/]project`` (of ``type_name`` if given)."""
        entity, project = self._entity_project(project_name)
        cols = self.registry.collections(entity, project)
        return [c for c in cols if type_name is None or c.type == type_name]

    def artifact_collection(self, type_name: str, name: str) -> CollectionInfo:
        ref = self._ref(name, default_tag=None)
        for col in self.artifact_collections(f"{ref.entity}/{ref.project}", type_name):
            if col.name == ref.name:
                return col
        from .errors import ArtifactNotFound

        raise ArtifactNotFound(f"no collection {ref} of type {type_name!r}")

    def artifact_types(self, project: str | None = None) -> list[str]:
        return sorted({c.type for c in self.artifact_collections(project)})

    def artifact_type(self, type_name: str, project: str | None = None) -> str:
        if type_name not in self.artifact_types(project):
            from .errors import ArtifactNotFound

            raise ArtifactNotFound(f"no artifact type {type_name!r} in {project or 'the default project'}")
        return type_name

    def version_by_id(self, artifact_id: str) -> VersionInfo | None:
        """The version with ``id``, or None (the registry's ``version_by_id``)."""
        try:
            return self.registry.version_by_id(artifact_id)
        except NotFound:
            return None

    def log_artifact(
        self,
        artifact: Artifact,
        project: str | None = None,
        aliases: Iterable[str] = (),
        *,
        run: RunInfo | None = None,
    ) -> Artifact:
        """Log a new ``Artifact`` into ``[entity/]project`` (defaults as for paths); ``run`` is
        the run that logs it (lineage).  Returns the artifact, now logged."""
        content = artifact.to_log()
        if isinstance(aliases, str):
            aliases = [aliases]
        if run is not None and project is None:
            project = f"{run.entity}/{run.project}"
        if self._registry is None:
            try:
                self._registry = open_spec(self._spec, create=True, cache_dir=self._cache_dir)
            except ArtifactFSError:
                raise
        entity, proj = self._entity_project(project)
        ref = parse_ref(f"{entity}/{proj}/{content.collection}")
        extra: dict[str, Any] = {} if run is None else {"run_id": run.id}
        result = self.registry.log_files(
            content.files,
            ref,
            type=artifact.type,
            aliases=list(dict.fromkeys(aliases)),
            description=artifact.description or "",
            metadata=artifact.metadata,
            digest_algorithm=artifact.digest_algorithm,
            references=content.references,
            **extra,
        )
        artifact.logged_as(self, result.version)
        return artifact

    # -- runs ------------------------------------------------------------------------------------

    def _run_obj(self, info: RunInfo) -> Any:
        return importlib.import_module("artifactfs.run").Run.from_info(self, info)

    def runs(self, path: str | None = None, filters: Any = None, order: Any = None, per_page: int = 50) -> list[Any]:
        """The runs of ``[entity/]project`` (oldest first), as ``Run`` objects."""
        entity, project = self._entity_project(path)
        return [self._run_obj(info) for info in self.registry.runs(entity, project)]

    def run(self, path: str = "") -> Any:
        """The run ``[[entity/]project/]run_id`` (also W&B's ``entity/project/runs/id`` and ``project:id``)."""
        entity, project = self._given()
        ent, proj, run_id = resolve_run_path(
            path, entity=entity, project=project, registry_defaults=_RegistryDefaults(self)
        )
        return self._run_obj(self.registry.run(ent, proj, run_id))
