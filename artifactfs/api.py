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

import re
from collections.abc import Iterable
from typing import Any

from .artifact import Artifact, ArtifactFile, ArtifactManifestEntry, Run, VerificationError
from .client import Client, open_cache, open_spec
from .errors import ArtifactNotFound, InvalidArgument, NotFound
from .names import REGISTRY_PREFIX, env_organization, is_registry_project, resolve_entity, resolve_run_path
from .registries import Registries
from .registries import Registry as OrgRegistry
from .registry import CollectionInfo
from .registry.base import OrgInfo, RunInfo
from .table import Table

__all__ = [
    "Api",
    "Artifact",
    "ArtifactFile",
    "ArtifactManifestEntry",
    "Table",
    "VerificationError",
    "open_cache",
    "open_spec",
]


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


class Api(Client):
    """Entry point, as ``wandb.Api``: look up, list and log artifacts; runs of a registry.

    ``registry`` is a registry spec (``DIR``, ``wandb``, ``wandb:https://host[:port]``; default
    ``$ARTIFACTFS_REGISTRY`` or ``~/.local/share/artifactfs/registry``).  ``cache_dir``: the
    verified blob cache that downloads share with the mount (default ``$ARTIFACTFS_CACHE_DIR`` or
    ``~/.cache/artifactfs``); a remote backend also keeps manifests there when it is given.
    ``overrides`` (``{"entity": ..., "project": ...}``) as W&B's, also accepted as the first
    positional argument as ``wandb.Api(overrides)`` passes it.  The registry is opened on first
    use; a local one that does not exist yet is created by the first log.  The registry, the
    cache and the path rules are :class:`~artifactfs.client.Client`'s.
    """

    def __enter__(self) -> Api:
        return self

    # -- organizations' registries (W&B Registry) ------------------------------------------------

    def _organization(self, organization: str | None) -> OrgInfo:
        """The organization ``organization`` names (display or entity name), else
        ``$WANDB_ORGANIZATION``'s, else the one of the settings' entity.  A registry without
        organizations (local) has one of its own: the settings' entity, or the entity named."""
        org = organization or env_organization()
        entity = self.settings_entity()
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
        version, tag = self.resolve(name, type)
        return Artifact.of_version(self, version, tag)

    def artifact_exists(self, name: str, type: str | None = None) -> bool:
        try:
            self.artifact(name, type)
        except (NotFound, InvalidArgument):
            return False
        return True

    def artifact_collection_exists(self, name: str, type: str) -> bool:
        ref = self.ref(name, default_tag=None)
        try:
            cols = self.registry.collections(ref.entity, ref.project)
        except NotFound:
            return False
        return any(c.name == ref.name and c.type == type for c in cols)

    def artifacts(self, type_name: str, name: str, per_page: int = 50, tags: Any = None) -> list[Artifact]:
        """Every version of the collection ``[[entity/]project/]name`` of type ``type_name``, oldest first."""
        ref = self.ref(name, default_tag=None)
        versions = self.registry.versions(ref.entity, ref.project, ref.name)
        return [Artifact.of_version(self, v) for v in versions if v.type == type_name]

    def artifact_versions(self, type_name: str, name: str, per_page: int = 50) -> list[Artifact]:
        return self.artifacts(type_name, name, per_page)

    def artifact_collections(
        self, project_name: str | None = None, type_name: str | None = None, per_page: int = 50
    ) -> list[CollectionInfo]:
        """The collections of ``[entity/]project`` (of ``type_name`` if given)."""
        entity, project = self.entity_project(project_name)
        cols = self.registry.collections(entity, project)
        return [c for c in cols if type_name is None or c.type == type_name]

    def artifact_collection(self, type_name: str, name: str) -> CollectionInfo:
        ref = self.ref(name, default_tag=None)
        for col in self.artifact_collections(f"{ref.entity}/{ref.project}", type_name):
            if col.name == ref.name:
                return col
        raise ArtifactNotFound(f"no collection {ref} of type {type_name!r}")

    def artifact_types(self, project: str | None = None) -> list[str]:
        return sorted({c.type for c in self.artifact_collections(project)})

    def artifact_type(self, type_name: str, project: str | None = None) -> str:
        if type_name not in self.artifact_types(project):
            raise ArtifactNotFound(f"no artifact type {type_name!r} in {project or 'the default project'}")
        return type_name

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
        return artifact.log_through(self, project, aliases, run=run)

    # -- runs ------------------------------------------------------------------------------------

    def runs(self, path: str | None = None, filters: Any = None, order: Any = None, per_page: int = 50) -> list[Run]:
        """The runs of ``[entity/]project`` (oldest first), as ``Run`` objects."""
        entity, project = self.entity_project(path)
        return [Run.from_info(self, info) for info in self.registry.runs(entity, project)]

    def run(self, path: str = "") -> Run:
        """The run ``[[entity/]project/]run_id`` (also W&B's ``entity/project/runs/id`` and ``project:id``)."""
        entity, project = self.given()
        ent, proj, run_id = resolve_run_path(
            path, entity=entity, project=project, registry_defaults=self.registry_defaults
        )
        return Run.from_info(self, self.registry.run(ent, proj, run_id))
