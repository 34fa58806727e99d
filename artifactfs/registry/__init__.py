"""Registry backends behind one interface, and the one function that picks a backend.

A registry *spec* is what users type wherever a registry is named (``mount``, ``ls``, ``info``,
``get``, ``verify``, ``Api(registry=...)``):

* ``DIR``: a local registry directory (SQLite metadata + content-addressed blobs);
* ``wandb``: the W&B server in ``$WANDB_BASE_URL`` (default: the W&B cloud);
* ``wandb:https://host[:port]``: a self-hosted W&B server.

Nothing outside this package names a concrete backend.
"""

from __future__ import annotations

import os

from .base import CollectionInfo, DirEntry, LogResult, Registry, VersionInfo

__all__ = [
    "CollectionInfo",
    "DirEntry",
    "LogResult",
    "Registry",
    "VersionInfo",
    "is_wandb_spec",
    "open_registry",
]

WANDB = "wandb"


def is_wandb_spec(spec: str | os.PathLike[str]) -> bool:
    text = os.fspath(spec)
    return text == WANDB or text.startswith(WANDB + ":")


def open_registry(spec: str | os.PathLike[str], *, create: bool = False, cache_dir: str | None = None) -> Registry:
    """The registry that ``spec`` names.

    ``create``: make a local registry that does not exist yet (``log``).  ``cache_dir``: where
    a remote backend keeps what it may keep for ever (manifests, keyed by artifact id and
    digest); without it nothing is kept between processes.  A remote backend checks its
    credentials and that the server speaks W&B here, so a mount fails at once, in one line.
    """
    if is_wandb_spec(spec):
        from .wandb import WandbRegistry

        base_url = os.fspath(spec)[len(WANDB) + 1 :] or None
        return WandbRegistry(base_url=base_url, cache_dir=cache_dir)
    from .local import LocalRegistry

    return LocalRegistry(spec, create=create)
