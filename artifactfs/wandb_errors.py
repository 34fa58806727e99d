"""The exception names of W&B's artifact API, for code written against ``wandb``.

Each class is one of :mod:`artifactfs.errors` (so it has an errno, a log level and an exit
status, and ``except ArtifactFSError`` catches it) and also the builtin W&B derives it from
(``AttributeError``, ``ValueError``, ``TypeError``, ``KeyError``, ``FileNotFoundError``), so code
that catches what W&B raises catches these.  Raised by :mod:`artifactfs.artifact` and
:mod:`artifactfs.run`.
"""

from __future__ import annotations

import errno as _errno
import logging

from .errors import (
    ArtifactFSError,
    ArtifactNotLogged,
    EntryNotFound,
    InvalidArgument,
    InvalidPath,
    ReadOnly,
)

__all__ = [
    "ArtifactFinalizedError",
    "ArtifactNotLoggedError",
    "ArtifactStatusError",
    "EntryFileNotFound",
    "EntryKeyError",
    "InvalidValue",
    "PathConflict",
    "UnsupportedMediaType",
]


class ArtifactStatusError(ArtifactFSError, AttributeError):
    """Something was asked of an ``Artifact`` in the wrong state: W&B's base of the two below,
    which W&B derives from ``AttributeError`` (so ``hasattr(draft, "version")`` is False)."""

    errno = _errno.EINVAL
    log_level = logging.DEBUG


class ArtifactNotLoggedError(ArtifactNotLogged, ArtifactStatusError):
    """W&B's name: an attribute or method that needs a logged version (``version``, ``get``,
    ``get_path``, ``logged_by``, ``download``...) was used on an ``Artifact`` not logged yet."""


class ArtifactFinalizedError(ReadOnly, ArtifactStatusError):
    """W&B's name: ``add*``/``new_file``/``remove``/``__setitem__`` on a logged artifact, whose
    content is immutable (create a new ``Artifact`` to log a new version)."""


class PathConflict(InvalidPath, ValueError):
    """An entry path added twice to a new ``Artifact`` with different content (W&B raises
    ``ValueError`` here; the same content twice is accepted, as in W&B)."""


class InvalidValue(InvalidArgument, ValueError):
    """An argument W&B refuses with ``ValueError`` (``Artifact.file()`` of a many-file
    artifact, an unknown ``policy``), so code written for W&B catches it as it did."""


class UnsupportedMediaType(InvalidArgument, TypeError):
    """``Artifact.add``/``__setitem__`` of an object other than a ``Table`` (W&B's other media
    types, images, audio, HTML..., are not implemented; W&B raises ``TypeError`` for an object of
    no media type at all)."""


class EntryKeyError(EntryNotFound, KeyError):
    """``Artifact.get_path``/``get_entry`` of a name the artifact does not hold (W&B raises
    ``KeyError``)."""

    def __str__(self) -> str:  # KeyError's own __str__ would quote the message
        return str(self.args[0]) if self.args else ""


class EntryFileNotFound(EntryNotFound, FileNotFoundError):  # type: ignore[misc]  # errno: ours (ENOENT) wins
    """``Artifact.remove`` of a path the new artifact does not hold (W&B raises
    ``FileNotFoundError``)."""

    def __str__(self) -> str:  # OSError's own __str__ would show "None"-filled fields
        return str(self.args[0]) if self.args else ""
