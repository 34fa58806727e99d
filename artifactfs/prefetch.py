"""``artifactfs prefetch REF [PATH_PREFIX]``: warm the cache a mount reads from, ahead of time.

Every entry of the version (or those under ``PATH_PREFIX``) goes through the mount's fetch
engine (:meth:`artifactfs.engine.Engine.fetch_all`, the fetcher's ``warm``), so the result
is exactly what a mount on the same cache directory finds: remote blobs fetched and verified
into the cache, local registry blobs hashed where they lie (a trust record for those over 64 KiB,
which a mount then serves without hashing again) and read into the page cache.  ``--jobs``
fetches run at once (default 64: four times the mount's engine, since nothing else runs; on the
emulated 30 ms WAN 64 took 9.7-10.0 s where 16 took 14.1-15.2 s); fetched blobs are kept by the
store's group commit (one sync round and two transactions a batch, the last batch committed
before the command returns).  A bar on a terminal shows bytes and files.  Entries that fail are
counted and named in the log; the command then exits non-zero, and the cache keeps everything
that did verify.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import trio

from . import defaults
from .engine import Engine
from .errors import FetchError
from .fetcher import Fetcher
from .fsutil import claim_cache_dir
from .manifest import Entry
from .names import parse_ref
from .progress import ProgressBar
from .registry.base import Registry, VersionInfo
from .store import BlobStore

log = logging.getLogger(__name__)

# The command is all the work there is (no reader to give way to): 64 in flight, four times the
# mount's engine, hide a WAN's latency better (docs/PERFORMANCE.md).
DEFAULT_JOBS = 64


def select(registry: Registry, version: VersionInfo, prefix: str) -> list[Entry]:
    """The entries of ``version`` whose path starts with ``prefix``, in path order."""
    if not registry.contents_loaded(version):
        registry.load_contents(version)
    return sorted((e for e in registry.iter_entries(version) if e.path.startswith(prefix)), key=lambda e: e.path)


async def warm(fetcher: Fetcher, version: VersionInfo, entries: list[Entry], jobs: int, bar: ProgressBar) -> list[str]:
    """Fetch ``entries`` through the fetch engine, ``jobs`` at once; the paths that failed."""

    def done(entry: Entry) -> None:
        bar.done(entry.size)

    engine = Engine(fetcher, fetcher.registry, mode="off", concurrency=jobs)
    failed = await engine.fetch_all(version, entries, on_done=done)
    for entry, exc in failed:
        log.error("%s/%s: %s", version.ref, entry.path, exc)
    return [entry.path for entry, _ in failed]


def cmd_prefetch(args: argparse.Namespace) -> int:
    from .api import open_spec

    ref = parse_ref(args.ref, default_tag="latest")
    cache_dir = os.path.abspath(args.cache_dir)
    claim_cache_dir(cache_dir)
    registry = open_spec(args.registry, cache_dir=cache_dir)
    try:
        version = registry.resolve(ref)
        entries = select(registry, version, args.path_prefix or "")
        # Group commit: one sync round and two transactions a batch; close() commits the last one.
        store = BlobStore(cache_dir, args.cache_size, group_commit=True)
        try:
            fetcher = Fetcher(
                registry,
                store,
                serve_local_in_place=args.local_blobs == "verify-in-place",
                max_threads=args.jobs,
            )
            bar = ProgressBar(sum(e.size for e in entries), len(entries), f"prefetch {version.ref}")
            try:
                failed = trio.run(warm, fetcher, version, entries, args.jobs, bar)
            finally:
                bar.close()
            stats = fetcher.stats
        finally:
            store.close()
    finally:
        registry.close()
    done = len(entries) - len(failed)
    print(
        f"{version.ref}: {done} of {len(entries)} files ready in {cache_dir} "
        f"({stats.fetches} fetched, {stats.fetched_bytes} bytes; {stats.verified_in_place} verified in place, "
        f"{stats.trusted_in_place + stats.cache_hits} already there)",
        file=sys.stderr,
    )
    if failed:
        raise FetchError(f"{len(failed)} of {len(entries)} files of {version.ref} could not be fetched: see the log")
    print(str(version.ref))
    return 0


def _jobs(text: str) -> int:
    from .errors import InvalidArgument

    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(f"invalid number of jobs {text!r}") from None
    if value < 1:
        raise InvalidArgument(f"invalid number of jobs {text!r}: must be >= 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``artifactfs prefetch`` beyond the common ones (registry, cache dir)."""
    from .options import argparse_type, parse_size

    parser.add_argument("ref", help="ENTITY/PROJECT/NAME[:ALIAS|:vN] (default alias: latest)")
    parser.add_argument("path_prefix", nargs="?", default="", help="only entries whose path starts with this")
    parser.add_argument(
        "--jobs",
        type=argparse_type(_jobs),
        default=DEFAULT_JOBS,
        help=f"files fetched at once (default {DEFAULT_JOBS})",
    )
    parser.add_argument(
        "--cache-size",
        type=argparse_type(parse_size),
        default=defaults.CACHE_SIZE,
        metavar="SIZE",
        help="the cache's size limit, as the mount gives it (default: the mount's default)",
    )
    parser.add_argument(
        "--local-blobs",
        choices=("verify-in-place", "copy"),
        default=defaults.LOCAL_BLOBS,
        help="as the mount that will read them is told (default: the mount's default)",
    )
