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
W&B's ``wandb.run`` is :func:`current_run` here: this module is ``artifactfs.run``, so a
global ``run`` in it would be one name for two things (the package attribute is the module).  The
current run is kept in :mod:`artifactfs.active_runs`, below the API, which
:class:`~artifactfs.client.Client` (default entity and project) and ``Artifact.save()`` ask.
Arguments wandb refuses with ``ValueError`` (a type that does not match, a path that is no file)
raise :class:`~artifactfs.wandb_errors.InvalidValue`, which is one.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
import threading
from typing import Any, Literal

from . import active_runs
from .api import Api
from .artifact import Artifact, Run
from .defaults import default_registry
from .errors import ArtifactFSError, RunNotActive
from .names import resolve_entity, resolve_project
from .registry import create_for_log
from .wandb_errors import InvalidValue

log = logging.getLogger(__name__)

__all__ = ["Run", "active", "current_run", "finish", "init", "log_artifact", "use_artifact"]

Reinit = Literal["default", "return_previous", "finish_previous", "create_new"]

_atexit_lock = threading.Lock()
_atexit_registered = False


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
    if reinit not in ("default", "return_previous", "finish_previous", "create_new"):
        raise InvalidValue(f"reinit must be return_previous, finish_previous or create_new, not {reinit!r}")
    if reinit in ("default", "return_previous"):
        live = _active()
        if live:
            previous = live[-1]
            log.info("init(): run %s is still active: returning it (reinit=%r)", previous.info.path, reinit)
            return previous
    elif reinit == "finish_previous":
        for previous in _active():
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
    started = Run.start(api, info, owns_api=owns_api, make_current=reinit != "create_new")
    log.info("started run %s (%s)", info.path, info.name)
    _register_atexit()
    return started


def current_run() -> Run | None:
    """The run the module-level functions act on (wandb's ``wandb.run``), or None."""
    current = active_runs.current()
    return current if isinstance(current, Run) else None


def active() -> list[Run]:
    """The runs :func:`init` started in this process that have not finished, oldest first."""
    return _active()


def _active() -> list[Run]:
    return [r for r in active_runs.active() if isinstance(r, Run)]


def _require(what: str) -> Run:
    current = current_run()
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
    current = current_run()
    if current is not None:
        current.finish(exit_code)


def _register_atexit() -> None:
    global _atexit_registered
    with _atexit_lock:
        if not _atexit_registered:
            atexit.register(_finish_at_exit)
            _atexit_registered = True


def _finish_at_exit() -> None:
    """Finish what is still active: ``failed`` when an uncaught exception ends the program (the
    interpreter sets ``sys.last_type`` before the exit handlers run), else ``finished``."""
    exit_code = 1 if getattr(sys, "last_type", None) is not None else 0
    for started in _active():
        try:
            started.finish(exit_code)
        except ArtifactFSError as exc:
            log.warning("could not finish run %s at exit: %s", started.info.path, exc)
