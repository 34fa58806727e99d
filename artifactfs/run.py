"""Runs, as ``wandb.init()`` makes them: what logged an artifact version and what used one.

::

    import artifactfs

    with artifactfs.init(project="vision", job_type="train", config={"lr": 0.1}) as run:
        ds = run.use_artifact("ds:latest")                    # input: recorded as used by the run
        model = artifactfs.Artifact("model", type="model")
        model.add_file("model.pt")
        run.log_artifact(model, aliases=["best"])             # output: logged by the run
    # the run has finished ("failed" had the block raised)

A run lives in the registry (the local registry stores it; W&B runs are read through the W&B
backend, and creating one there is refused as a write).  Its id is 8 random base-36 characters,
as W&B makes them; ``name`` defaults to the id.  Entity and project default as ``wandb.init``
has them: ``$WANDB_ENTITY``, else the registry's default entity; ``$WANDB_PROJECT``, else
``uncategorized`` (:mod:`artifactfs.names`).  A short artifact path given to
:meth:`Run.use_artifact` takes its missing entity and project from the run.

As in wandb: ``init()`` while a run of this process is active returns that run
(``reinit="return_previous"``; ``"finish_previous"`` finishes it first, ``"create_new"`` starts
another one without making it current); the module-level :func:`log_artifact`,
:func:`use_artifact` and :func:`finish` act on the current run (:func:`current_run`), and the first
two raise :class:`~artifactfs.errors.RunNotActive` when there is none (wandb: "You must call
wandb.init() before wandb.log_artifact()").  A run still active when the interpreter exits is
finished then: ``failed`` if an uncaught exception ended the program, else ``finished``.
Arguments wandb refuses with ``ValueError`` (a type that does not match, a path that is no file)
raise :class:`~artifactfs.wandb_errors.InvalidValue`, which is one.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import logging
import os
import sys
import threading
from types import TracebackType
from typing import Any, Literal

from .api import Api, Artifact
from .defaults import default_registry
from .errors import ArtifactFSError, InvalidArgument, RunNotActive
from .names import LATEST, parse_ref, resolve_artifact_path, resolve_entity, resolve_project
from .registry import create_for_log
from .registry.base import RunInfo, iso_time
from .wandb_errors import InvalidValue

log = logging.getLogger(__name__)

__all__ = ["Run", "current_run", "finish", "init", "log_artifact", "use_artifact"]

Reinit = Literal["default", "return_previous", "finish_previous", "create_new"]

_lock = threading.Lock()
#: The current run (wandb's ``wandb.run``): the one the module-level functions act on, or None.
run: Run | None = None
_active: list[Run] = []  # runs init() started in this process that have not finished
_atexit_registered = False


class Run:
    """A run: one started by :func:`init` (live: it may log, use and finish), or one read from
    the registry (``Api().run(path)``, ``Artifact.logged_by()``; :meth:`from_info`)."""

    def __init__(self, api: Api, info: RunInfo, *, live: bool = False, owns_api: bool = False) -> None:
        self._api = api
        self._info = info
        self._live = live
        self._owns_api = owns_api
        self._finished = False
        #: The run's config, stored when it finishes (W&B syncs ``run.config`` the same way).
        self.config: dict[str, Any] = dict(info.config)

    @classmethod
    def from_info(cls, api: Api, info: RunInfo) -> Run:
        """A run read from ``api``'s registry (it cannot :meth:`finish`)."""
        return cls(api, info)

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
        return self._api.log_artifact(artifact, f"{self.entity}/{self.project}", aliases or (), run=self._info)

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
        return Artifact._logged(self._api, version)

    def logged_artifacts(self) -> list[Artifact]:
        """The versions this run logged, in the order it logged them."""
        return [Artifact._logged(self._api, v) for v in self._api.registry.run_outputs(self._info)]

    def used_artifacts(self) -> list[Artifact]:
        """The versions this run used, in the order it first used them."""
        return [Artifact._logged(self._api, v) for v in self._api.registry.run_inputs(self._info)]

    # -- lifecycle ------------------------------------------------------------------------------

    def finish(self, exit_code: int | None = None) -> None:
        """End the run: state ``finished``, or ``failed`` for a non-zero ``exit_code``; its
        ``config`` is stored.  Finishing again does nothing."""
        if not self._live:
            raise InvalidArgument(f"run {self._info.path} was not started by init() in this process")
        self._end("failed" if exit_code else "finished")

    def _end(self, state: str) -> None:
        global run
        with _lock:
            if self._finished:
                return
            self._finished = True
            if self in _active:
                _active.remove(self)
            if run is self:
                run = None
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


def init(
    entity: str | None = None,
    project: str | None = None,
    name: str | None = None,
    job_type: str | None = None,
    config: dict[str, Any] | argparse.Namespace | None = None,
    *,
    reinit: Reinit = "default",
    registry: str | os.PathLike[str] | Api | None = None,
    cache_dir: str | None = None,
) -> Run:
    """Start a run and make it the current one (see the module doc for defaults and ``reinit``).

    ``registry``: a registry spec (default ``$ARTIFACTFS_REGISTRY`` or
    ``~/.local/share/artifactfs/registry``; a local one is created if it does not exist) or an
    :class:`Api` whose registry to use."""
    global run
    if reinit not in ("default", "return_previous", "finish_previous", "create_new"):
        raise InvalidValue(f"reinit must be return_previous, finish_previous or create_new, not {reinit!r}")
    if reinit in ("default", "return_previous"):
        with _lock:
            previous = _active[-1] if _active else None
        if previous is not None:
            log.info("init(): run %s is still active: returning it (reinit=%r)", previous._info.path, reinit)
            return previous
    elif reinit == "finish_previous":
        with _lock:
            previous_runs = list(_active)
        for previous in previous_runs:
            previous.finish()
    if isinstance(config, argparse.Namespace):
        config = vars(config)
    owns_api = not isinstance(registry, Api)
    if isinstance(registry, Api):
        api = registry
    else:
        spec = os.fspath(registry) if registry is not None else default_registry()
        create_for_log(spec)  # wandb.init() creates what it logs into
        api = Api(spec, cache_dir=cache_dir)
    try:
        reg = api.registry
        info = reg.create_run(
            resolve_entity(entity, registry_defaults=reg),
            resolve_project(project),
            name=name,
            job_type=job_type,
            config=dict(config or {}),
        )
    except BaseException:
        if owns_api:
            api.close()
        raise
    started = Run(api, info, live=True, owns_api=owns_api)
    log.info("started run %s (%s)", info.path, info.name)
    with _lock:
        _active.append(started)
        if reinit != "create_new":
            run = started
        _register_atexit()
    return started


def current_run() -> Run | None:
    """The run the module-level functions act on (wandb's ``wandb.run``), or None."""
    return run


def _require(what: str) -> Run:
    current = run
    if current is None:
        raise RunNotActive(f"call artifactfs.init() before artifactfs.{what}()")
    return current


def log_artifact(
    artifact_or_path: Artifact | str | os.PathLike[str],
    name: str | None = None,
    type: str | None = None,
    aliases: list[str] | None = None,
) -> Artifact:
    """:meth:`Run.log_artifact` of the current run (RunNotActive if there is none)."""
    return _require("log_artifact").log_artifact(artifact_or_path, name, type, aliases)


def use_artifact(
    artifact_or_name: Artifact | str, type: str | None = None, aliases: list[str] | None = None
) -> Artifact:
    """:meth:`Run.use_artifact` of the current run (RunNotActive if there is none)."""
    return _require("use_artifact").use_artifact(artifact_or_name, type, aliases)


def finish(exit_code: int | None = None) -> None:
    """Finish the current run, if there is one (as ``wandb.finish()``)."""
    current = run
    if current is not None:
        current.finish(exit_code)


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_finish_at_exit)
        _atexit_registered = True


def _finish_at_exit() -> None:
    """Finish what is still active: ``failed`` when an uncaught exception ends the program (the
    interpreter sets ``sys.last_type`` before the exit handlers run), else ``finished``."""
    state = "failed" if getattr(sys, "last_type", None) is not None else "finished"
    with _lock:
        runs = list(_active)
    for active in runs:
        try:
            active._end(state)
        except ArtifactFSError as exc:
            log.warning("could not finish run %s at exit: %s", active._info.path, exc)
