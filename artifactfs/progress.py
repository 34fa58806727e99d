"""Progress bars for commands run at a terminal (``log``, ``get``), quiet everywhere else.

The bar is :class:`artifactfs.download.Progress` (tqdm: bytes, files, rate, ETA), shown only when
stderr is a terminal and ``--quiet`` was not given, so scripts, CI logs and pipes see nothing
but the command's own output.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from .download import Progress
from .fsutil import walk_files


def set_quiet(quiet: bool) -> None:
    """``--quiet``: no bar in this process, even at a terminal."""
    Progress.quiet = quiet


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
    bar = Progress(sum(sizes), len(files), desc)
    try:
        for item, size in zip(files, sizes, strict=True):
            yield item
            bar.done(size)
    finally:
        bar.close()
