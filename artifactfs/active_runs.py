"""The runs this process started and have not finished, and the current one (W&B's ``wandb.run``).

The lowest piece of the Python API: :class:`~artifactfs.client.Client` takes a missing entity
and project from the current run, :meth:`Artifact.save` logs through it, and
:mod:`artifactfs.run` (``init``, ``finish``) starts and ends runs.  It knows a run only as a
:class:`RunScope` (where it logs), so it imports nothing of the API above it; ``Run`` itself
(:mod:`artifactfs.artifact`) is one.
"""

from __future__ import annotations

import threading
from typing import Protocol


class RunScope(Protocol):
    """What the API below the runs asks of a run: the entity and project it logs into."""

    @property
    def entity(self) -> str: ...

    @property
    def project(self) -> str: ...


_lock = threading.Lock()
_current: RunScope | None = None
_active: list[RunScope] = []  # runs started in this process that have not finished, oldest first


def current() -> RunScope | None:
    """The current run, or None."""
    return _current


def active() -> list[RunScope]:
    """The runs started in this process that have not finished, oldest first."""
    with _lock:
        return list(_active)


def start(run: RunScope, *, make_current: bool) -> None:
    """``run`` has started (and is the current one if ``make_current``)."""
    global _current
    with _lock:
        _active.append(run)
        if make_current:
            _current = run


def end(run: RunScope) -> bool:
    """``run`` has ended: it is neither active nor current any more.  False if it had already
    ended (or never started here), so that only one caller finishes it."""
    global _current
    with _lock:
        if _current is run:
            _current = None
        if run not in _active:
            return False
        _active.remove(run)
        return True
