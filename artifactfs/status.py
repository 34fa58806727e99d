"""The client side of running mounts: which artifactfs mounts this machine has, and what their
daemons answer (the ``status`` and ``stats`` commands; ``cache info`` and ``pin`` find mounts
here too).

Mounts are found in ``/proc/mounts`` (type ``fuse.artifactfs``) and matched with the records their
daemons keep (:mod:`artifactfs.admin`, which also says why there is a record and a socket); a
daemon is asked over its control socket, or, when its record cannot be read here, through the
root's ``user.artifactfs.stats`` xattr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from . import metrics
from .admin import ROOT_RUNTIME, RUNTIME_ENV, MountRecord, runtime_dir
from .errors import ArtifactFSError, InvalidArgument
from .fsutil import mounted

T = TypeVar("T")


def _search_dirs() -> list[str]:
    """Runtime directories whose records this user may read: its own, and root's (world-readable
    records; the sockets in it stay root's)."""
    dirs = [runtime_dir()]
    if ROOT_RUNTIME not in dirs and os.path.isdir(ROOT_RUNTIME) and RUNTIME_ENV not in os.environ:
        dirs.append(ROOT_RUNTIME)
    return dirs


# -- mounts on this machine -----------------------------------------------------------------------


@dataclass
class MountEntry:
    """An artifactfs mount in /proc/mounts, with its record when one can be read."""

    mountpoint: str
    user_id: int | None
    record: MountRecord | None

    @property
    def state(self) -> str:
        if self.record is None:
            return "no record (mounted by another user, or its daemon was killed)"
        if not self.record.alive():
            return f"daemon {self.record.pid} is gone: run 'artifactfs umount {self.mountpoint}'"
        return "serving"


def _records() -> dict[str, MountRecord]:
    """Every readable record, by mount point; records of dead daemons whose mount is gone are
    removed when we may."""
    found: dict[str, MountRecord] = {}
    live = {path for path, _ in mounted()}
    for directory in _search_dirs():
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            if not name.endswith(".json"):
                continue
            path = os.path.join(directory, name)
            record = MountRecord.load(path)
            if record is None:
                continue
            if not record.alive() and record.mountpoint not in live:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    os.unlink(record.socket)
                continue
            if record.mountpoint not in found or record.alive():
                found[record.mountpoint] = record
    return found


def list_mounts() -> list[MountEntry]:
    """This machine's artifactfs mounts (from /proc/mounts), each with its record if readable."""
    records = _records()
    out = []
    for path, opts in mounted():
        uid = opts.get("user_id")
        out.append(MountEntry(path, int(uid) if uid and uid.isdigit() else None, records.get(path)))
    return out


def find_mount(path: str) -> MountEntry:
    """The artifactfs mount whose mount point is ``path`` or holds it; InvalidArgument with what
    to do otherwise."""
    target = os.path.realpath(path)
    best: MountEntry | None = None
    for entry in list_mounts():
        root = entry.mountpoint
        if (target == root or target.startswith(root.rstrip("/") + "/")) and (
            best is None or len(root) > len(best.mountpoint)
        ):
            best = entry
    if best is None:
        raise InvalidArgument(f"{path} is not on an artifactfs mount (list them with 'artifactfs status')")
    return best


# -- asking a daemon ------------------------------------------------------------------------------------


def query(entry: MountEntry, command: str = "stats", timeout: float = 10.0) -> bytes:
    """Ask a mount's daemon ``command`` over its control socket."""
    record = entry.record
    if record is None:
        raise InvalidArgument(
            f"{entry.mountpoint}: no record of its daemon in {' or '.join(_search_dirs())}: it was mounted by "
            f"another user (uid {entry.user_id}; run this as that user) or its daemon was killed "
            f"(artifactfs umount {entry.mountpoint})"
        )
    if not record.alive():
        raise InvalidArgument(
            f"{entry.mountpoint}: its daemon (pid {record.pid}) is gone: unmount it with "
            f"'artifactfs umount {entry.mountpoint}' and mount again"
        )
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(timeout)
            sock.connect(record.socket)
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except PermissionError as exc:
        raise InvalidArgument(
            f"{entry.mountpoint}: its control socket belongs to uid {record.uid}: run this as that user (or root)"
        ) from exc
    except OSError as exc:
        raise InvalidArgument(
            f"{entry.mountpoint}: its daemon (pid {record.pid}) does not answer on {record.socket}: "
            f"{exc.strerror or exc} (its log: {record.log_file or 'stderr of its service'})"
        ) from exc
    return b"".join(chunks)


def stats(path: str) -> dict[str, Any]:
    """The JSON snapshot of the mount holding ``path``.  A mount whose record is not readable
    here (its daemon keeps it in another runtime directory) is asked through the root's
    ``user.artifactfs.stats`` xattr instead, which has the counters but not the process."""
    entry = find_mount(path)
    if entry.record is None:
        fallback = _xattr_stats(entry)
        if fallback is not None:
            return fallback
    raw = query(entry, "stats")
    try:
        data: dict[str, Any] = json.loads(raw)
    except ValueError as exc:
        raise ArtifactFSError(f"{entry.mountpoint}: its daemon answered no JSON ({len(raw)} bytes)") from exc
    if "error" in data:
        raise ArtifactFSError(f"{entry.mountpoint}: {data['error']}")
    return data


def _xattr_stats(entry: MountEntry) -> dict[str, Any] | None:
    try:
        stats = json.loads(os.getxattr(entry.mountpoint, "user.artifactfs.stats"))
    except (OSError, ValueError):  # xattrs off, another user's mount, a dead daemon
        return None
    if not isinstance(stats, dict):
        return None
    latency = stats.get("latency", {})
    return {
        "mountpoint": entry.mountpoint,
        "registry": None,
        "cache_dir": None,
        "pid": None,
        "source": "xattr",
        # Only what the xattr carries: not the daemon's retries, fetches in flight or cache size.
        "counters": {
            k: v
            for k, v in metrics.counters(stats, in_flight=0, volume=0, size_limit=0).items()
            if k in stats or k == "cache_misses"
        },
        "latency": latency if isinstance(latency, dict) else {},
    }


# -- commands ---------------------------------------------------------------------------------------


def status_rows() -> list[dict[str, Any]]:
    rows = []
    now = time.time()
    for entry in list_mounts():
        r = entry.record
        rows.append(
            {
                "mountpoint": entry.mountpoint,
                "registry": r.registry if r else None,
                "cache_dir": r.cache_dir if r else None,
                "pid": r.pid if r else None,
                "uptime_seconds": round(now - r.started_at, 1) if r else None,
                "uid": entry.user_id,
                "log_file": r.log_file if r else None,
                "metrics_port": r.metrics_port if r else None,
                "options": r.options if r else None,
                "state": entry.state,
            }
        )
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    rows = status_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no artifactfs mounts on this machine", file=sys.stderr)
        return 0
    head = ("MOUNTPOINT", "REGISTRY", "CACHE DIR", "PID", "UPTIME", "STATE")
    table = [head]
    for row in rows:
        uptime = metrics.duration(row["uptime_seconds"]) if row["uptime_seconds"] is not None else "-"
        table.append(
            (
                row["mountpoint"],
                row["registry"] or "-",
                row["cache_dir"] or "-",
                str(row["pid"] or "-"),
                uptime,
                row["state"],
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(head) - 1)]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    if args.watch is None:
        snap = stats(args.mountpoint)
        print(json.dumps(snap, indent=2, sort_keys=True) if args.json else metrics.table(snap))
        return 0
    interval = max(0.1, args.watch)
    previous: dict[str, Any] | None = None
    tty = sys.stdout.isatty()
    with _Stopper() as stopper:
        while True:
            answer = stopper.call(lambda: stats(args.mountpoint))
            if answer is None:
                return 0
            snap = answer
            if args.json:
                text = json.dumps(snap, sort_keys=True)  # JSON lines
            else:
                text = ("\x1b[H\x1b[2J" if tty else "\n") + metrics.table(snap) + "\n" + _rates(previous, snap)
            with stopper.interruptible():
                print(text, flush=True)
            previous = snap
            if stopper.wait([], interval):
                return 0
    return 0  # stopped while writing


class _Stopped(Exception):
    """A stop signal came while output was blocked."""


class _Stopper:
    """``stats --watch`` stops on SIGINT or SIGTERM (exit 0) whatever it is waiting for: the
    refresh interval, a daemon slow to answer (the question runs in a thread, abandoned on a
    signal), a path lookup on a busy mount, or a full stdout.  The handlers are installed even
    where the signal was ignored (a shell's background job ignores SIGINT)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.stopped = False
        self._raise = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stopper:
        self._old = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> bool:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        os.close(self._r)
        os.close(self._w)
        return exc[0] is _Stopped

    def _handle(self, signum: int, frame: object) -> None:
        self.stopped = True
        with contextlib.suppress(OSError):
            os.write(self._w, b"x")
        if self._raise:
            raise _Stopped

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A signal raises out of the block (a write to a full pipe would otherwise be retried)."""
        if self.stopped:
            raise _Stopped
        self._raise = True
        try:
            yield
        finally:
            self._raise = False

    def wait(self, fds: list[int], timeout: float | None) -> bool:
        """Until a signal (True), one of ``fds`` is readable or ``timeout`` passed (False)."""
        if not self.stopped:
            select.select([self._r, *fds], [], [], timeout)
        return self.stopped

    def call(self, fn: Callable[[], T]) -> T | None:
        """``fn()`` in a thread; None if a signal came first (the thread is left to the exit)."""
        done_r, done_w = os.pipe()
        box: list[Any] = []

        def run() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:  # handed to the caller's thread
                box.append((False, exc))
            finally:
                os.write(done_w, b"x")

        threading.Thread(target=run, name="artifactfs-stats", daemon=True).start()
        while not box:
            if self.wait([done_r], None):
                return None
        os.close(done_r)
        os.close(done_w)
        ok, value = box[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]


def _rates(previous: dict[str, Any] | None, now: dict[str, Any]) -> str:
    if previous is None:
        return "rates: (after the next refresh)"
    seconds = now["uptime_seconds"] - previous["uptime_seconds"]
    if seconds <= 0:
        return "rates: -"
    a, b = previous["counters"], now["counters"]
    fetched = (b["fetched_bytes"] - a["fetched_bytes"]) / seconds
    served = (b["served_bytes"] - a["served_bytes"]) / seconds
    return f"rates: fetched {metrics.human_bytes(fetched)}/s, served {metrics.human_bytes(served)}/s"


def iter_records() -> Iterator[MountRecord]:
    """Records of live daemons (for ``cache info``: which mounts use a cache directory)."""
    for record in _records().values():
        if record.alive():
            yield record
