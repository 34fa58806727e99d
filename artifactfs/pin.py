"""Pins: the exact version (``entity/project/name:vN`` and its digest) behind a path on a mount.

A training script reads ``/mnt/a/acme/vision/ds:latest/...``; the alias moves when a new version
is logged, so "latest" does not say what was read.  :func:`pin` resolves the path (aliases are
symlinks, so ``realpath`` already names ``ds:vN``) and asks the version directory for its digest
(the ``user.artifact.digest`` xattr, or the registry when the mount has xattrs off).  Record the
pin with the run; later ``MOUNT/acme/vision/ds:vN`` (or ``artifactfs get acme/vision/ds:vN``)
gives exactly those bytes, and the digest proves it: a version's digest is a hash of its
manifest, and every byte served is verified against the manifest.

``artifactfs pin PATH`` prints it; ``artifactfs info REF --pin`` resolves a reference instead.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass

from .errors import ArtifactNotFound, EntryNotFound, InvalidArgument
from .names import parse_ref
from .registry.base import DELETED


@dataclass(frozen=True)
class Pin:
    """The exact version behind a path on a mount."""

    artifact: str  # entity/project/name:vN
    digest: str  # the version's digest (W&B's artifact digest)
    entry: str | None  # the path inside the version, when a file or directory inside it was named
    entry_digest: str | None  # the file's digest (None for a directory)
    mountpoint: str
    registry: str | None  # the mount's registry spec, when its record is readable

    def __str__(self) -> str:
        return f"{self.artifact}\t{self.digest}" + (f"\t{self.entry}" if self.entry else "")

    def to_json(self) -> dict[str, str | None]:
        return asdict(self)


def _xattr(path: str, name: str) -> str | None:
    try:
        return os.getxattr(path, name).decode()
    except OSError:  # ENODATA, or ENOSYS/ENOTSUP with --xattrs off
        return None


def pin(path: str | os.PathLike[str]) -> Pin:
    """The pin of ``path`` (a version directory, or anything inside one, through aliases too)."""
    from .status import find_mount

    text = os.fspath(path)
    mount = find_mount(text)
    if not os.path.exists(text):  # a typo must not be recorded as a pin
        raise EntryNotFound(f"{text}: no such file or directory on {mount.mountpoint}")
    real = os.path.realpath(text)
    parts = os.path.relpath(real, mount.mountpoint).split(os.sep)
    if len(parts) < 3 or parts[0] == "." or ":" not in parts[2]:
        raise InvalidArgument(
            f"{text} is not inside an artifact version on {mount.mountpoint}: name "
            "MOUNT/ENTITY/PROJECT/NAME:ALIAS or a path inside it"
        )
    version_dir = os.path.join(mount.mountpoint, *parts[:3])
    ref = parse_ref("/".join(parts[:3]))
    if ref.tag is None or not ref.tag.startswith("v") or not ref.tag[1:].isdigit():
        raise InvalidArgument(f"{version_dir} is not a version directory (NAME:vN)")
    registry = mount.record.registry if mount.record is not None else None
    if _xattr(version_dir, "user.artifact.state") == DELETED:  # a mount serves it until gc
        raise ArtifactNotFound(
            f"{'/'.join(parts[:3])} was deleted from the registry ({version_dir} serves it until gc): "
            "a pin of it could not be reproduced"
        )
    digest = _xattr(version_dir, "user.artifact.digest")
    if digest is None:
        digest = _digest_from_registry(registry, "/".join(parts[:3]), mount.mountpoint)
    entry = "/".join(parts[3:]) or None
    entry_digest = _xattr(real, "user.artifact.entry.digest") if entry is not None and os.path.isfile(real) else None
    return Pin("/".join(parts[:3]), digest, entry, entry_digest, mount.mountpoint, registry)


def _digest_from_registry(registry: str | None, ref: str, mountpoint: str) -> str:
    if registry is None:
        raise InvalidArgument(
            f"{mountpoint} has xattrs off and its registry is unknown here (no readable mount record): "
            f"run 'artifactfs info {ref} --pin --registry SPEC' with the mount's registry"
        )
    from .registry import open_registry

    reg = open_registry(registry)
    try:
        return reg.resolve(parse_ref(ref)).digest
    finally:
        reg.close()


def cmd_pin(args: argparse.Namespace) -> int:
    pins = [pin(path) for path in args.paths]
    if args.json:
        data = [p.to_json() for p in pins]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    else:
        for p in pins:
            print(p)
    return 0
