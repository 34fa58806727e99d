"""Progress bars for commands run at a terminal (``log``, ``get``), quiet everywhere else.

The bar is :class:`ProgressBar` (tqdm: bytes, files, rate, ETA), shown only when
stderr is a terminal and ``--quiet`` was not given, so scripts, CI logs and pipes see nothing
but the command's own output.  (Not to be confused with :class:`artifactfs.sources.Progress`, the
bytes-received callback a download reports to.)
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

from .fsutil import walk_files


class ProgressBar:
    """A tqdm bar (bytes, files, rate) when stderr is a terminal; nothing otherwise."""

    quiet = False  # the CLI's --quiet (artifactfs.progress.set_quiet): no bar even at a terminal

    def __init__(self, total_bytes: int, total_files: int, desc: str, enabled: bool | None = None) -> None:
        self._bar: Any = None
        self._files = 0
        self._total_files = total_files
        self._lock = threading.Lock()
        if enabled is None:
            enabled = _stderr_is_tty() and not ProgressBar.quiet
        if enabled and total_files:
            import tqdm

            self._bar = tqdm.tqdm(
                total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False
            )
            self._bar.set_postfix_str(f"0/{total_files} files")

    def done(self, size: int) -> None:
        if self._bar is None:
            return
        with self._lock:
            self._files += 1
            self._bar.update(size)
            self._bar.set_postfix_str(f"{self._files}/{self._total_files} files", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.refresh()  # the final counts, whatever the last redraw showed
            self._bar.close()


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def set_quiet(quiet: bool) -> None:
    """``--quiet``: no bar in this process, even at a terminal."""
    ProgressBar.quiet = quiet


def tracked_files(src: str, desc: str) -> Iterator[tuple[str, str]]:
    """``walk_files(src)`` with a bar over the files' bytes.

    A first pass stats every file for the totals (cheap next to hashing them).  A file counts
    as done once the registry takes the next one: the local registry hashes a bounded window of
    files in parallel, so the bar runs at most that window ahead of the hashing."""
    files = list(walk_files(src))
    sizes = []
    for _path, local in files:
        try:
            sizes.append(os.stat(local).st_size)
        except OSError:
            sizes.append(0)  # the registry reports it when it reads it
    bar = ProgressBar(sum(sizes), len(files), desc)
    try:
        for item, size in zip(files, sizes, strict=True):
            yield item
            bar.done(size)
    finally:
        bar.close()
