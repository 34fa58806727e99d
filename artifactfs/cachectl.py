"""``artifactfs cache info|prune|clear``: the blob cache, looked at and trimmed by hand.

Everything goes through :class:`artifactfs.store.BlobStore`, the same code the mounts use, so
it is safe while mounts run on the directory: eviction unlinks files and deletes their rows in
one SQLite transaction each, a reader that holds a blob open keeps reading it through its file
descriptor, and the next open of an evicted blob is a miss that fetches and verifies it again.
The directory's size limit is left as the mounts set it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any

from .errors import InvalidArgument
from .metrics import human_bytes


def _tree_size(path: str) -> tuple[int, int]:
    """(files, bytes) below ``path``."""
    files = size = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            try:
                size += os.lstat(os.path.join(dirpath, name)).st_size
                files += 1
            except OSError:
                pass
    return files, size


def _open(directory: str) -> Any:
    """The cache's store, or None when there is no cache yet: no directory, or one that holds
    only what a mount writes before its first blob (its log, manifests, temp files)."""
    from .fsutil import CACHE, CACHE_INDEX, OURS, cache_dir_kind
    from .store import BlobStore

    if not os.path.isdir(directory):
        return None
    kind = cache_dir_kind(directory)
    if kind == OURS:
        return None
    if kind != CACHE:
        raise InvalidArgument(
            f"{directory} is not an artifactfs cache directory (no {CACHE_INDEX}): name the one your mounts use "
            "with --cache-dir (see 'artifactfs status')"
        )
    return BlobStore(directory, size_limit=None)


def info(directory: str) -> dict[str, Any]:
    from .status import iter_records

    out: dict[str, Any] = {"cache_dir": directory, "exists": False}
    store = _open(directory)
    if store is None:
        return out
    out["exists"] = True
    try:
        out.update(store.usage())
    finally:
        store.close()
    out["tmp_files"], out["tmp_bytes"] = _tree_size(os.path.join(directory, "tmp"))
    out["manifest_files"], out["manifest_bytes"] = _tree_size(os.path.join(directory, "manifests"))
    disk = shutil.disk_usage(directory)
    out["disk_free"], out["disk_total"] = disk.free, disk.total
    out["mounts"] = sorted(r.mountpoint for r in iter_records() if os.path.abspath(r.cache_dir) == directory)
    return out


def cmd_cache(args: argparse.Namespace) -> int:
    directory = os.path.abspath(args.cache_dir)
    if args.action == "info":
        data = info(directory)
        if args.json:
            print(json.dumps(data, indent=2, sort_keys=True))
        elif not data["exists"]:
            print(f"no cache yet at {directory}: the first mount (or download) creates it")
        else:
            print(f"cache dir    {directory}")
            print(
                f"blobs        {data['blobs']} ({human_bytes(data['blob_bytes'])} of {human_bytes(data['size_limit'])})"
            )
            print(f"records      {data['records']} (trust and identity records)")
            print(f"manifests    {data['manifest_files']} ({human_bytes(data['manifest_bytes'])})")
            print(f"temp files   {data['tmp_files']} ({human_bytes(data['tmp_bytes'])}; downloads in progress or dead)")
            print(f"disk free    {human_bytes(data['disk_free'])} of {human_bytes(data['disk_total'])}")
            print(f"used by      {', '.join(data['mounts']) or '-'}")
        return 0
    if args.action == "prune" and args.max_size is None:
        raise InvalidArgument("cache prune needs --max-size SIZE (for example --max-size 10G; 0 evicts every blob)")
    if args.action == "clear" and args.max_size is not None:
        raise InvalidArgument("cache clear takes no --max-size (use cache prune --max-size SIZE)")
    store = _open(directory)
    if store is None:
        print(f"{directory}: no cache yet: nothing to do", file=sys.stderr)
        return 0
    try:
        evicted, freed = store.prune(args.max_size) if args.action == "prune" else store.clear()
        left = store.usage()
    finally:
        store.close()
    what = "evicted" if args.action == "prune" else "cleared"
    print(
        f"{what} {evicted} blobs ({human_bytes(freed)}); {left['blobs']} left ({human_bytes(left['blob_bytes'])})"
        + ("; trust records forgotten" if args.action == "clear" else "")
    )
    return 0
