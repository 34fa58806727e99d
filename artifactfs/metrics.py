"""A mount's counters as numbers a person or Prometheus reads.

The counters themselves live where they are counted: :class:`artifactfs.fetcher.Stats` (cache
hits, fetches, bytes, verify failures, per-backend latency as a :class:`Histogram`), and
:data:`RETRIES` here for the HTTP downloader's retries, which run in worker threads far from any
fetcher (one daemon serves one mount, so a process-wide counter is the mount's).  This module
imports nothing from the package, so any module may count into it.

:func:`snapshot` gathers them into one JSON document (what ``artifactfs stats --json`` prints and
the daemon's control socket answers, see :mod:`artifactfs.admin`); :func:`prometheus` renders a
snapshot in the Prometheus text exposition format (version 0.0.4) for ``--metrics-port``;
:func:`table` renders it for a terminal.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

#: Upper bounds (seconds) of the latency histogram's buckets: a cached hash of a small file
#: (milliseconds) up to a multi-gigabyte download with retries (minutes).
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class Histogram:
    """Cumulative-bucket histogram of durations, Prometheus style.  Touched only on the trio loop."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * len(LATENCY_BUCKETS)  # per bucket (not cumulative); +Inf is count
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        index = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        if index < len(self.buckets):
            self.buckets[index] += 1
        self.count += 1
        self.sum += seconds

    def to_json(self) -> dict[str, Any]:
        cumulative: dict[str, int] = {}
        running = 0
        for bound, n in zip(LATENCY_BUCKETS, self.buckets, strict=True):
            running += n
            cumulative[f"{bound:g}"] = running
        cumulative["+Inf"] = self.count
        return {"count": self.count, "sum": round(self.sum, 6), "buckets": cumulative}


class Counter:
    """A process-wide counter that worker threads increment."""

    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.value += n


#: HTTP requests tried again after a transient failure (artifactfs.http).
RETRIES = Counter()

#: Seconds the loop monitor asks to sleep between checkpoints while the mount serves requests.
LOOP_INTERVAL = 0.01
#: ... and once no request has come for LOOP_QUIET seconds: an idle daemon wakes 4 times a
#: second, not 100 (at 100 it spent ~4% of a core doing nothing).
LOOP_IDLE_INTERVAL = 0.25
LOOP_QUIET = 1.0


class Activity:
    """Requests the mount's handlers have started (counted on the loop: no lock)."""

    __slots__ = ("requests",)

    def __init__(self) -> None:
        self.requests = 0


#: The mount's requests, counted by ``ops``' error boundary, read by :class:`LoopMonitor`.
ACTIVITY = Activity()


class LoopMonitor:
    """How long the mount's trio loop keeps a task waiting: a checkpoint task asks to wake every
    ``interval`` seconds, and each time it runs records how much later than that it ran (its
    *stall*; the gap between two checkpoints is ``interval`` plus the stall).  A handler that
    blocks the loop (a lock, a busy SQLite, a long hash) shows as a stall of its length, and so
    does a machine whose kernel kept the loop's thread waiting for a CPU.  The second part is
    measured too, where Linux tells it (``/proc/thread-self/schedstat``: the thread's run-queue
    wait): the *own* stall is the stall less that wait, what this process alone is to blame for
    (a handler's work or wait, or the GIL held by its own threads).  Touched only on the loop.

    Once no request has come for ``quiet`` seconds (:data:`ACTIVITY`), it checkpoints every
    ``idle_interval`` instead, and again every ``interval`` from the first checkpoint after a
    request: a stall in the first ``idle_interval`` after a quiet spell is seen only where it
    covers a checkpoint (any stall longer than ``idle_interval`` is)."""

    __slots__ = (
        "activity",
        "cpu_wait",
        "idle_interval",
        "interval",
        "max_own_stall",
        "max_stall",
        "own_stalls",
        "quiet",
        "stalls",
    )

    def __init__(
        self,
        interval: float = LOOP_INTERVAL,
        idle_interval: float = LOOP_IDLE_INTERVAL,
        quiet: float = LOOP_QUIET,
        activity: Activity = ACTIVITY,
    ) -> None:
        self.interval = interval
        self.idle_interval = max(interval, idle_interval)
        self.quiet = quiet
        self.activity = activity
        self.max_stall = 0.0
        self.stalls = Histogram()
        self.max_own_stall = 0.0
        self.own_stalls = Histogram()
        self.cpu_wait = 0.0  # seconds the loop's thread waited for a CPU, in all

    def observe(self, stall: float, cpu_wait: float = 0.0) -> None:
        self.stalls.observe(stall)
        self.max_stall = max(self.max_stall, stall)
        own = max(0.0, stall - cpu_wait)
        self.own_stalls.observe(own)
        self.max_own_stall = max(self.max_own_stall, own)
        self.cpu_wait += cpu_wait

    async def run(self) -> None:
        """Checkpoint until cancelled (a task in the daemon's nursery, so on the loop's thread)."""
        import trio  # only the daemon needs it

        interval, clock = self.interval, time.perf_counter
        fd = _open_schedstat()
        try:
            last, waited = clock(), _run_queue_wait(fd)
            seen, busy = self.activity.requests, trio.current_time()
            while True:
                await trio.sleep(interval)
                now, waited_now = clock(), _run_queue_wait(fd)
                self.observe(max(0.0, now - last - interval), waited_now - waited)
                last, waited = now, waited_now
                if self.activity.requests != seen:
                    seen, busy = self.activity.requests, trio.current_time()
                interval = self.interval if trio.current_time() - busy < self.quiet else self.idle_interval
        finally:
            if fd is not None:
                os.close(fd)

    def to_json(self) -> dict[str, Any]:
        return {
            "interval_seconds": self.interval,
            "max_stall_seconds": round(self.max_stall, 6),
            "stalls": self.stalls.to_json(),
            "max_own_stall_seconds": round(self.max_own_stall, 6),
            "own_stalls": self.own_stalls.to_json(),
            "cpu_wait_seconds": round(self.cpu_wait, 6),
        }


def _open_schedstat() -> int | None:
    """The calling thread's scheduler statistics (Linux), or None where there are none."""
    try:
        return os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _run_queue_wait(fd: int | None) -> float:
    """Seconds the thread has waited on a run queue (the second field), 0 when unknown."""
    if fd is None:
        return 0.0
    try:
        return int(os.pread(fd, 128, 0).split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


# name in the snapshot's "counters" -> (Prometheus metric, type, help)
_METRICS: dict[str, tuple[str, str, str]] = {
    "cache_hits": ("artifactfs_cache_hits_total", "counter", "Blobs opened from the cache without a fetch."),
    "cache_misses": (
        "artifactfs_cache_misses_total",
        "counter",
        "Reads that needed a fetch or a hash before a blob could be served.",
    ),
    "fetches": ("artifactfs_fetches_total", "counter", "Blobs downloaded or copied into the cache."),
    "fetched_bytes": ("artifactfs_fetched_bytes_total", "counter", "Bytes downloaded or copied into the cache."),
    "served_bytes": (
        "artifactfs_served_bytes_total",
        "counter",
        "Bytes answered to read requests (re-reads from the kernel page cache never reach the daemon).",
    ),
    "verified_in_place": (
        "artifactfs_verified_in_place_total",
        "counter",
        "Local registry blobs hashed where they lie.",
    ),
    "trusted_in_place": (
        "artifactfs_trusted_in_place_total",
        "counter",
        "Local registry blobs served on a matching trust record.",
    ),
    "digest_mismatches": (
        "artifactfs_verify_failures_total",
        "counter",
        "Blobs whose bytes did not hash to the manifest digest (answered EIO).",
    ),
    "fetch_errors": ("artifactfs_fetch_errors_total", "counter", "Fetches that failed (network, disk, auth)."),
    "retries": ("artifactfs_retries_total", "counter", "HTTP requests tried again after a transient failure."),
    "fetches_in_flight": ("artifactfs_fetches_in_flight", "gauge", "Fetches or hashes running now."),
    "cache_index_busy": (
        "artifactfs_cache_index_busy_total",
        "counter",
        "Cache lookups made on the event loop that found cache.db locked by another process (answered as misses).",
    ),
    "cache_bytes": ("artifactfs_cache_bytes", "gauge", "Bytes held by the blob cache directory."),
    "cache_limit_bytes": ("artifactfs_cache_limit_bytes", "gauge", "The blob cache's size limit."),
    "uptime_seconds": ("artifactfs_uptime_seconds", "gauge", "Seconds since the mount started."),
}


def counters(stats: Mapping[str, Any], *, in_flight: int, volume: int, size_limit: int) -> dict[str, Any]:
    """The flat counters of a snapshot from a fetcher's ``Stats.to_json()`` and live values."""
    out: dict[str, Any] = {k: v for k, v in stats.items() if k != "latency"}
    out["cache_misses"] = (
        out.get("fetches", 0) + out.get("verified_in_place", 0) + out.get("digest_mismatches", 0)
        + out.get("fetch_errors", 0)
    )  # fmt: skip
    out["retries"] = RETRIES.value
    out["fetches_in_flight"] = in_flight
    out["cache_bytes"] = volume
    out["cache_limit_bytes"] = size_limit
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus(snapshot: Mapping[str, Any]) -> str:
    """Prometheus text format (0.0.4) of a :func:`snapshot`-shaped document."""
    labels = f'mountpoint="{_escape(str(snapshot.get("mountpoint", "")))}"'
    lines: list[str] = []
    values = dict(snapshot.get("counters", {}))
    values["uptime_seconds"] = snapshot.get("uptime_seconds", 0)
    for key, (metric, kind, text) in _METRICS.items():
        if key not in values:
            continue
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}", f"{metric}{{{labels}}} {values[key]}"]
    latency = snapshot.get("latency", {})
    metric = "artifactfs_fetch_seconds"
    lines += [
        f"# HELP {metric} Seconds a read waited from a cache miss to a verified blob, per backend "
        "(fetches made ahead of reads are not in it).",
        f"# TYPE {metric} histogram",
    ]
    for backend, hist in sorted(latency.items()):
        both = f'{labels},backend="{_escape(backend)}"'
        for bound, n in sorted(hist["buckets"].items(), key=lambda kv: float(kv[0])):
            lines.append(f'{metric}_bucket{{{both},le="{bound}"}} {n}')
        lines.append(f"{metric}_sum{{{both}}} {hist['sum']}")
        lines.append(f"{metric}_count{{{both}}} {hist['count']}")
    loop = snapshot.get("loop")
    if loop:
        for key, metric, kind, text in (
            ("max_stall_seconds", "artifactfs_loop_max_stall_seconds", "gauge",
             "The longest time the mount's event loop kept a 10 ms timer waiting."),
            ("max_own_stall_seconds", "artifactfs_loop_max_own_stall_seconds", "gauge",
             "The longest such stall less the time the kernel kept the loop's thread waiting for a CPU."),
            ("cpu_wait_seconds", "artifactfs_loop_cpu_wait_seconds_total", "counter",
             "Seconds the loop's thread waited for a CPU (Linux schedstat)."),
        ):  # fmt: skip
            lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}", f"{metric}{{{labels}}} {loop[key]}"]
        for key, metric, text in (
            ("stalls", "artifactfs_loop_stall_seconds",
             "How late the event loop ran a task that asked to run every 10 ms."),
            ("own_stalls", "artifactfs_loop_own_stall_seconds",
             "Those stalls less the time the kernel kept the loop's thread waiting for a CPU."),
        ):  # fmt: skip
            hist = loop[key]
            lines += [f"# HELP {metric} {text}", f"# TYPE {metric} histogram"]
            for bound, n in sorted(hist["buckets"].items(), key=lambda kv: float(kv[0])):
                lines.append(f'{metric}_bucket{{{labels},le="{bound}"}} {n}')
            lines.append(f"{metric}_sum{{{labels}}} {hist['sum']}")
            lines.append(f"{metric}_count{{{labels}}} {hist['count']}")
    info = "artifactfs_mount_info"
    registry = _escape(str(snapshot.get("registry", "")))
    lines += [
        f"# HELP {info} The mount's registry and process.",
        f"# TYPE {info} gauge",
        f'{info}{{{labels},registry="{registry}",pid="{snapshot.get("pid", "")}"}} 1',
    ]
    return "\n".join(lines) + "\n"


def human_bytes(n: float) -> str:
    """``n`` bytes for people (``512 B``, ``1.5 KiB``, ``3.0 GiB``): the one such form of every command."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def quantile(hist: Mapping[str, Any], q: float) -> float | None:
    """The upper bound of the bucket holding the ``q`` quantile (None when empty or beyond the
    last bound): what a histogram can honestly say."""
    count = int(hist.get("count", 0))
    if count == 0:
        return None
    rank = q * count
    # Keys are bounds as text ("0.005", "+Inf"), in any order once a JSON round trip sorted them.
    for bound, n in sorted(hist["buckets"].items(), key=lambda kv: float(kv[0])):
        if n >= rank:
            return None if bound == "+Inf" else float(bound)
    return None


def table(snapshot: Mapping[str, Any]) -> str:
    """A terminal table of a snapshot: one counter a line, then latency per backend."""
    c = snapshot.get("counters", {})
    hits, misses = c.get("cache_hits", 0), c.get("cache_misses", 0)
    ratio = f"{100 * hits / (hits + misses):.1f}%" if hits + misses else "-"
    if snapshot.get("pid") is None:  # counters read through the xattr: no daemon record
        rows = [("mount", f"{snapshot.get('mountpoint')} (counters from its xattr: its daemon's record is not here)")]
    else:
        rows = [
            ("mount", f"{snapshot.get('mountpoint')} (pid {snapshot.get('pid')}, up {_duration(snapshot)})"),
            ("registry", str(snapshot.get("registry"))),
            ("cache", f"{snapshot.get('cache_dir')}: {human_bytes(c.get('cache_bytes', 0))} "
                      f"of {human_bytes(c.get('cache_limit_bytes', 0))}"),
        ]  # fmt: skip
    rows += [
        ("cache hits", f"{hits} ({ratio})"),
        ("cache misses", str(misses)),
        ("fetches", f"{c.get('fetches', 0)} ({human_bytes(c.get('fetched_bytes', 0))})"),
        ("fetches in flight", str(c.get("fetches_in_flight", "-"))),
        ("bytes served", human_bytes(c.get("served_bytes", 0))),
        ("verified in place", f"{c.get('verified_in_place', 0)} (trusted again: {c.get('trusted_in_place', 0)})"),
        ("verify failures", str(c.get("digest_mismatches", 0))),
        ("fetch errors", str(c.get("fetch_errors", 0))),
        ("retries", str(c.get("retries", "-"))),
    ]  # fmt: skip
    for backend, hist in sorted(snapshot.get("latency", {}).items()):
        mean = hist["sum"] / hist["count"] if hist["count"] else 0.0
        p50, p99 = quantile(hist, 0.5), quantile(hist, 0.99)
        rows.append(
            (
                f"latency {backend}",
                f"{hist['count']} reads waited, mean {mean * 1000:.1f} ms, p50 <= {_bound(p50)}, p99 <= {_bound(p99)}",
            )
        )
    loop = snapshot.get("loop")
    if loop:
        hist, own = loop["stalls"], loop["own_stalls"]
        rows.append(
            (
                "loop stalls",
                f"max {loop['max_stall_seconds'] * 1000:.1f} ms, p99 <= {_bound(quantile(hist, 0.99))}, "
                f"{_late(hist)} of {hist['count']} checkpoints late by 100 ms or more",
            )
        )
        rows.append(
            (
                "  not waiting for a CPU",
                f"max {loop['max_own_stall_seconds'] * 1000:.1f} ms, p99 <= {_bound(quantile(own, 0.99))}, "
                f"{_late(own)} late by 100 ms or more (the loop waited {loop['cpu_wait_seconds']:.1f} s for a CPU)",
            )
        )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _late(hist: Mapping[str, Any], bound: float = 0.1) -> int:
    """Observations of ``bound`` seconds or more in a histogram."""
    return int(hist["count"]) - int(hist["buckets"].get(f"{bound:g}", 0))


def _bound(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


def _duration(snapshot: Mapping[str, Any]) -> str:
    return duration(float(snapshot.get("uptime_seconds", 0)))


def duration(seconds: float) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12s``."""
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {s}s"
    return f"{s}s"
