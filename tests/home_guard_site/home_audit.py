"""The audit hook of the home guard (see tests/home_guard.py): reports every path under a real
home that a Python process of the test suite opens, lists, creates, renames or removes."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# event -> the positions of its path arguments
_EVENTS = {
    "open": (0,),
    "os.listdir": (0,),
    "os.scandir": (0,),
    "os.mkdir": (0,),
    "os.rmdir": (0,),
    "os.remove": (0,),
    "os.rename": (0, 1),
    "os.link": (0, 1),
    "os.symlink": (1,),
    "os.truncate": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.utime": (0,),
    "os.chdir": (0,),
    "shutil.copyfile": (0, 1),
    "shutil.rmtree": (0,),
    "sqlite3.connect": (0,),
}


def install(homes: list[str], report: Callable[[str], None]) -> None:
    """Call ``report("EVENT PATH (pid N)")`` for each path under one of ``homes`` that is not
    Python's own installation or the repository (either may live in a home)."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, _ROOT}
    allowed = tuple(sorted({os.path.realpath(p) for p in prefixes} | prefixes))
    watched = tuple(homes)
    local = threading.local()  # no report of the report's own open

    def under(path: str, roots: tuple[str, ...]) -> bool:
        return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)

    def hook(event: str, args: tuple[object, ...]) -> None:
        positions = _EVENTS.get(event)
        if positions is None or getattr(local, "busy", False):
            return
        for i in positions:
            raw = args[i] if i < len(args) else None
            if isinstance(raw, (str, bytes, os.PathLike)):
                try:
                    path = os.path.abspath(os.fsdecode(raw))
                except (TypeError, ValueError):
                    continue
                if under(path, watched) and not under(path, allowed):
                    local.busy = True
                    try:
                        report(f"{event} {path} (pid {os.getpid()})")
                    finally:
                        local.busy = False

    sys.addaudithook(hook)
