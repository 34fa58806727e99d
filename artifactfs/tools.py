"""The operator's commands: ``status``, ``stats``, ``cache``, ``doctor`` and ``pin``.

Registered by :func:`add_tool_commands` from :func:`artifactfs.cli.build_parser`; each command's
module is imported only when it runs (``stats`` needs no pyfuse3, ``doctor`` no registry until it
checks one).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

from .options import argparse_type, parse_size


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(f"artifactfs.{module}"), name)(args))

    return run


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}: must be finite and > 0")
    return value


def add_tool_commands(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "status", parents=[common], help="list this machine's artifactfs mounts (registry, cache dir, PID, uptime)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_lazy("status", "cmd_status"))

    p = sub.add_parser("stats", parents=[common], help="a mount's counters: cache hits, bytes, failures, latency")
    p.add_argument("mountpoint", help="the mount point (or any path on the mount)")
    p.add_argument("--json", action="store_true", help="the snapshot as JSON (with --watch: one JSON line each time)")
    p.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=_interval,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until SIGINT or SIGTERM (exit 0)",
    )
    p.set_defaults(func=_lazy("status", "cmd_stats"))

    p = sub.add_parser("cache", parents=[common], help="show, prune or clear the blob cache (safe while mounted)")
    p.add_argument("action", choices=("info", "prune", "clear"))
    p.add_argument(
        "--max-size",
        type=argparse_type(parse_size),
        metavar="SIZE",
        help="prune: evict least recently used blobs until the cache holds at most SIZE (10G, 512M, 0)",
    )
    p.add_argument("--json", action="store_true", help="info: as JSON")
    p.set_defaults(func=_lazy("cachectl", "cmd_cache"))

    p = sub.add_parser("doctor", parents=[common], help="check FUSE, the registry, credentials and the cache dir")
    p.add_argument("--mountpoint", help="also check that this directory can be mounted on")
    p.set_defaults(func=_lazy("doctor", "cmd_doctor"))

    p = sub.add_parser("pin", parents=[common], help="the exact entity/project/name:vN and digest of a path on a mount")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a path on an artifactfs mount (through aliases too)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_lazy("pin", "cmd_pin"))
