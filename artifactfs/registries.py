"""W&B Registry in the Python API: ``Api().registries()`` and ``Api().registry(name)``.

A registry is the project ``wandb-registry-<name>`` of an organization's entity (see
``docs/DESIGN.md``); these objects only name it and ask the backend the questions any project
answers (its collections, its versions), so they work over any registry that has the project.
"""

from __future__ import annotations

from .artifact import Artifact
from .client import Client
from .names import REGISTRY_PREFIX
from .registry import CollectionInfo
from .registry.base import OrgInfo


class Registry:
    """One registry of an organization, as W&B's ``wandb.apis.public.Registry``: ``name`` (without
    the prefix), ``full_name`` (the project), ``entity`` (the organization's), ``organization``
    (its display name); ``collections()`` and ``versions()`` list what it holds."""

    def __init__(self, api: Client, org: OrgInfo, name: str) -> None:
        self._api = api
        self._org = org
        self.name = name

    @property
    def full_name(self) -> str:
        return REGISTRY_PREFIX + self.name

    @property
    def entity(self) -> str:
        return self._org.entity

    @property
    def organization(self) -> str:
        return self._org.name

    @property
    def path(self) -> list[str]:
        return [self.entity, self.full_name]

    def collections(self) -> list[CollectionInfo]:
        """The registry's collections, by name."""
        return self._api.registry.collections(self.entity, self.full_name)

    def versions(self) -> list[Artifact]:
        """Every version of every collection of the registry (collections by name, oldest
        version first), each named as the registry numbers it."""
        versions = self._api.registry.project_versions(self.entity, self.full_name)
        return [Artifact.of_version(self._api, v) for v in versions]

    def __repr__(self) -> str:
        return f"<Registry {self.entity}/{self.full_name}>"


class Registries(list[Registry]):
    """The registries ``Api().registries()`` found, with the SDK's chained listings."""

    def collections(self) -> list[CollectionInfo]:
        return [c for r in self for c in r.collections()]

    def versions(self) -> list[Artifact]:
        return [v for r in self for v in r.versions()]
