"""The one exception hierarchy of artifactfs.

Every error that artifactfs raises on purpose is an :class:`ArtifactFSError`.  Each class knows
the errno that the mount answers with and the level it is logged at; the FUSE layer
(:mod:`artifactfs.ops`) is the only place that turns them into ``FUSEError``, and the CLI is the
only place that turns them into a one-line message and an exit status.

The classes W&B code catches by W&B's names (``ArtifactNotLoggedError``, ``ValueError``,
``KeyError``...) are in :mod:`artifactfs.wandb_errors`, each a subclass of one here.

Foreign exceptions (``OSError`` from the disk, ``sqlite3.Error``, ``requests`` errors) are
translated at the edge of the module that meets them, with ``raise ... from exc``.
"""

from __future__ import annotations

import errno as _errno
import logging


class ArtifactFSError(Exception):
    """Base class.  ``errno`` is what a FUSE request fails with; ``log_level`` how loud it is;
    ``exit_status`` what the CLI exits with after printing the one-line message (1 for every
    class; 2 is argparse's, for a command line it cannot parse)."""

    errno: int = _errno.EIO
    log_level: int = logging.ERROR
    exit_status: int = 1
    logged: bool = False  # True once logged where it was met: the errno boundary then says it at DEBUG


class InvalidReference(ArtifactFSError):
    """An artifact reference (``entity/project/name:alias``) or a name in it (entity, project,
    artifact name, alias, type) is malformed, or a command needs a form of it that was not given
    (``log`` with ``:alias``, ``alias add`` without one).  Only for artifact references and names:
    other bad input raises :class:`InvalidArgument` or one of its subclasses."""

    errno = _errno.EINVAL
    log_level = logging.DEBUG


class InvalidArgument(ArtifactFSError):
    """A value the caller gave is malformed or unsupported and is not an artifact reference or
    name: a registry spec, a mount option (``-o`` or a flag), a digest algorithm, an argument a
    call does not accept in the state it is in (``save()`` of a new artifact without a project,
    ``Api.artifact(type=...)`` naming another type).  Raised before anything is changed."""

    errno = _errno.EINVAL
    log_level = logging.DEBUG


class InvalidMetadata(InvalidArgument):
    """Artifact metadata (``--metadata``, ``Artifact.metadata``) that W&B would refuse: not valid
    JSON, not a JSON object, or holding values JSON cannot carry (NaN, Infinity, objects)."""


class InvalidReferenceEntry(InvalidArgument):
    """A reference entry (an entry whose bytes stay at a URI: ``Artifact.add_reference``) that
    artifactfs cannot serve verified: a URI scheme it does not fetch, a ``file://`` URI of another
    host, no URI, or a digest that is not a content hash (``checksum=False``, an ETag)."""


class ArtifactNotLogged(InvalidArgument):
    """Something that needs a logged version (its version, digest, files) was asked of a new
    ``Artifact`` that is not logged yet (W&B raises ``ArtifactNotLoggedError`` here)."""


class InvalidPath(ArtifactFSError):
    """A manifest entry path is unsafe or malformed (absolute, ``..``, NUL, empty segment...)."""

    errno = _errno.EINVAL


class ManifestError(ArtifactFSError):
    """A manifest document cannot be parsed or breaks the manifest v1 rules."""


class NotFound(ArtifactFSError):
    """A name that does not exist.  Routine on a filesystem, so logged at DEBUG."""

    errno = _errno.ENOENT
    log_level = logging.DEBUG


class EntityNotFound(NotFound):
    """No such entity in the registry."""


class ProjectNotFound(NotFound):
    """No such project in the entity."""


class ArtifactNotFound(NotFound):
    """No such artifact collection, version or alias."""


class EntryNotFound(NotFound):
    """No such file or directory inside an artifact version."""


class RunNotFound(NotFound):
    """No such run in the project (``Api().run(path)``, a run id given to the registry)."""


class RunNotActive(InvalidArgument):
    """A run was needed and there is none that may still log or use artifacts: the module-level
    ``log_artifact``/``use_artifact`` before ``init()`` (wandb raises "You must call
    wandb.init() before ..." there), or a method of a run that has already finished."""


class Conflict(ArtifactFSError):
    """The request contradicts the registry's state (a collection's type, a protected alias...)."""

    errno = _errno.EEXIST


class ReadOnly(ArtifactFSError):
    """A write was attempted on something immutable: the mount, a logged version (adding files
    to it, logging it again), or a registry this backend can only read (``log``, ``alias``,
    ``delete``, ``gc`` against it)."""

    errno = _errno.EROFS
    log_level = logging.DEBUG


class SourceError(ArtifactFSError):
    """The input to ``log`` (a source directory or file) is missing or unreadable."""

    errno = _errno.ENOENT


class DigestMismatch(ArtifactFSError):
    """Content did not hash to the digest its manifest promises.  Nothing of it is served."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"digest mismatch for {what}: manifest says {expected}, content is {actual}")
        self.what = what
        self.expected = expected
        self.actual = actual


class FetchError(ArtifactFSError):
    """Content could not be fetched (network fault, missing blob, server error)."""


class DiskFull(FetchError):
    """Verified bytes could not be written: the disk they go to is full (ENOSPC, EDQUOT), or a
    blob is larger than the whole cache disk.  A read through the mount answers EIO (the blob
    cannot be served verified without a place to verify it); nothing partial is kept."""


class AuthError(ArtifactFSError):
    """Credentials were missing or refused.  The message never contains the secret."""

    errno = _errno.EACCES


class RegistryError(ArtifactFSError):
    """The registry store is unusable (missing, corrupt database, wrong schema)."""


class CacheError(ArtifactFSError):
    """The blob cache is unusable: its directory is not ours (not a directory, another user's,
    a symlink, a non-empty directory that is no cache), or its index cannot be read or changed
    (``cache.db`` corrupt, unwritable, or held by another process past the busy timeout)."""


class MountError(ArtifactFSError):
    """The mount cannot be set up (mount point, /dev/fuse, fusermount3)."""


class BlobChanged(FetchError):
    """A verified blob's file changed under us (truncated, extended or overwritten: its size,
    inode, mtime or ctime moved).  Bytes read from it are not served; the blob is verified again
    or fetched again."""


class SourceChanged(FetchError):
    """A reference entry's source no longer holds what was logged: the server's ETag (or the
    object's version) differs from the one recorded in the manifest, so its bytes cannot be the
    entry's.  Raised before the body is downloaded; nothing of it is cached."""
