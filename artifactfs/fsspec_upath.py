"""``UPath("artifactfs://ENTITY/PROJECT/NAME:vN/PATH")`` (universal-pathlib): a path over
:class:`artifactfs.fsspec_fs.ArtifactFileSystem`.  Registered with universal-pathlib through its
``universal_pathlib.implementations`` entry point, and in-process by
:func:`artifactfs.fsspec_fs.register` when universal-pathlib is installed."""

from __future__ import annotations

from upath import UPath


class ArtifactPath(UPath):
    """A read-only path into an artifact version: reading, listing, globbing and ``stat`` go
    through ``artifactfs://``; every write raises ``PermissionError``."""

    __slots__ = ()
