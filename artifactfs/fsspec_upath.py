"""``UPath("artifactfs://ENTITY/PROJECT/NAME:vN/PATH")`` (universal-pathlib): a path over
:class:`artifactfs.fsspec_fs.ArtifactFileSystem`.  Registered with universal-pathlib through its
``universal_pathlib.implementations`` entry point, and in-process by
:func:`artifactfs.fsspec_fs.register` when universal-pathlib is installed."""

from __future__ import annotations

from upath import UPath

# The filesystem class, imported (and registered with fsspec) before universal-pathlib picks
# this protocol's path rules: it takes them from a class already imported, and for a protocol it
# finds none for it falls back, once per process, to generic rules that cut names wrong.
from . import fsspec_fs  # noqa: F401


class ArtifactPath(UPath):
    """A read-only path into an artifact version: reading, listing, globbing and ``stat`` go
    through ``artifactfs://``; every write raises ``PermissionError``."""

    __slots__ = ()
