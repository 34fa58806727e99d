"""Registry backends behind one interface, and the one table that names them.

A registry *spec* is what users type wherever a registry is named (``mount``, ``ls``, ``info``,
``get``, ``verify``, ``Api(registry=...)``).  Each backend is one module of this package, named
by one line of :data:`BACKENDS`: its spec syntax and help text, whether it keeps anything in the
cache directory, and the module, which offers :class:`BackendModule` (open a spec, check one,
doctor's checks, create one for a first log).  Nothing outside this package names a backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..checks import Check
from .base import CollectionInfo, DirEntry, LogResult, Registry, VersionInfo

__all__ = [
    "BACKENDS",
    "Backend",
    "CollectionInfo",
    "DirEntry",
    "LogResult",
    "Registry",
    "VersionInfo",
    "backend_of",
    "check_spec",
    "create_for_log",
    "doctor_checks",
    "open_registry",
    "registry_help",
]


class BackendModule(Protocol):
    """What a backend's module offers; ``rest`` is the spec after ``NAME:`` (None when there is
    none), or the whole spec for the backend without a name (a local directory)."""

    def open_spec(self, rest: str | None, *, create: bool, cache_dir: str | None, checked: bool = False) -> Registry:
        """The registry; ``create``: a first log may create it.  May check credentials, unless
        ``checked`` says that this was done a moment ago (by a background mount's launcher)."""

    def check_spec(self, rest: str | None) -> None:
        """InvalidArgument for what must be refused before the spec reaches a command line or a
        log (credentials in it); the rest is checked when it is opened."""

    def doctor_checks(self, rest: str | None, cache_dir: str) -> list[Check]:
        """``artifactfs doctor``'s lines about this registry; nothing is changed."""

    def create_for_log(self, rest: str | None) -> None:
        """Make the registry exist if a first log creates it (``init()``), else nothing."""


@dataclass(frozen=True, slots=True)
class Backend:
    """One line of :data:`BACKENDS`."""

    name: str  # the spec's prefix word (``wandb`` in ``wandb:https://host``); "" matches any spec
    syntax: str  # the spec's forms, as help shows them
    help: str  # what the spec names, and where its credentials come from
    keeps_in_cache: bool  # keeps what it fetched (manifests) in the cache directory, claimed first
    load: Callable[[], BackendModule]  # imports the module only when the backend is used

    def matches(self, spec: str) -> bool:
        return not self.name or spec == self.name or spec.startswith(self.name + ":")

    def rest(self, spec: str) -> str | None:
        if not self.name:
            return spec
        return spec[len(self.name) + 1 :] or None


def _wandb() -> BackendModule:
    from . import wandb

    return wandb


def _local() -> BackendModule:
    from . import local

    return local


#: Every backend, tried in order: the first whose name prefixes a spec opens it.
BACKENDS: tuple[Backend, ...] = (
    Backend("wandb", "'wandb' or 'wandb:https://HOST[:PORT]'", "the W&B server in $WANDB_BASE_URL, else the W&B cloud, or a self-hosted W&B server; W&B credentials come from $WANDB_API_KEY or ~/.netrc, never from the command line", True, _wandb),  # noqa: E501
    Backend("", "DIR", "a local registry directory (./wandb for one named wandb)", False, _local),
)  # fmt: skip


def backend_of(spec: str | os.PathLike[str]) -> Backend:
    text = os.fspath(spec)
    return next(b for b in BACKENDS if b.matches(text))


def registry_help() -> str:
    """The help text of a registry spec argument, from :data:`BACKENDS`."""
    forms = "; ".join(f"{b.syntax}: {b.help}" for b in BACKENDS)
    return f"registry spec: {forms}"


def open_registry(
    spec: str | os.PathLike[str], *, create: bool = False, cache_dir: str | None = None, checked: bool = False
) -> Registry:
    """The registry that ``spec`` names.

    ``create``: make a local registry that does not exist yet (``log``).  ``cache_dir``: where
    a backend that keeps things in the cache keeps what it may keep for ever (manifests, keyed
    by artifact id and digest); without it nothing is kept between processes.  A remote backend
    checks its credentials and that the server speaks its protocol here, so a mount fails at
    once, in one line; ``checked``: not again, this was done a moment ago (a background mount's
    daemon, after its launcher).
    """
    text = os.fspath(spec)
    backend = backend_of(text)
    return backend.load().open_spec(
        backend.rest(text), create=create, cache_dir=cache_dir if backend.keeps_in_cache else None, checked=checked
    )


def check_spec(spec: str) -> None:
    """Refuse a spec that must not reach a command line or a log (see :class:`BackendModule`)."""
    backend = backend_of(spec)
    backend.load().check_spec(backend.rest(spec))


def doctor_checks(spec: str, cache_dir: str) -> list[Check]:
    backend = backend_of(spec)
    return backend.load().doctor_checks(backend.rest(spec), cache_dir)


def create_for_log(spec: str) -> None:
    """Create the registry ``spec`` names if a first log creates it and it does not exist."""
    backend = backend_of(spec)
    backend.load().create_for_log(backend.rest(spec))
