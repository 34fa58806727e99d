"""Where an entry's bytes come from: the data-path types shared by the registries (which make
sources), the transfer adapters (which fill files) and the store (which verifies what they wrote).

This module sits below the registry package: it imports only :mod:`artifactfs.errors`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Protocol

from .errors import FetchError


class Progress(Protocol):
    """What a download tells the store while it writes, so the store can hash as bytes arrive."""

    def advance(self, end: int) -> None:
        """Bytes ``[0, end)`` of the file are written and will not change."""

    def restart(self) -> None:
        """The file was truncated to 0 and is being written again from the start."""

    def wrote(self, offset: int, data: bytes) -> None:
        """``data`` was just written at ``offset`` by the one stream writing the file in order
        (not by parallel parts): a hasher may hash it from memory instead of reading it back."""


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
    fallback: BlobSource | None = None  # tried when this source fails or mismatches
    # A cheap first try whose failure is no news (the fallback, the ordinary path, says what
    # is wrong): logged at DEBUG, not as a warning.
    optimistic: bool = False

    def chain(self) -> Iterator[BlobSource]:
        """This source, then its fallbacks in order."""
        source: BlobSource | None = self
        while source is not None:
            yield source
            source = source.fallback

    def stream(self) -> IO[bytes]:
        """The bytes as a readable stream, whichever kind of source this is."""
        if self.open is not None:
            return self.open()
        if self.local_path is None:
            raise FetchError(f"no source for {self.description}")
        return os.fdopen(open_blob(self.local_path, self.description), "rb")


def open_blob(path: str, what: str) -> int:
    """A read-only descriptor of the blob file at ``path`` (a local registry's, or one about to
    be verified); FetchError saying whether it is missing or unreadable otherwise."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise FetchError(f"blob of {what} is missing ({path})") from exc
    except OSError as exc:
        raise FetchError(f"cannot open blob of {what}: {exc.strerror or exc}") from exc
