"""Load test: many concurrent readers on one mount for minutes, while the registry changes.

Builds a local registry (``--files`` small files of 1-16 KiB in nested directories, one
``--big-mib`` file, and a small collection ``moving`` whose versions are logged while the test
runs), mounts it (``--local-blobs``, default ``copy``: every blob goes through the cache) and
starts ``--processes`` x ``--threads`` readers (default 4 x 8 = 32).  Each reader loops until
the deadline, choosing each time one of:

* ``seq-small``: a whole small file, compared with its source file;
* ``rand-big``: a random range (4 KiB-1 MiB) of the big file, compared with the source's bytes;
* ``seq-big``: 64 MiB of the big file from a random offset, in 1 MiB reads, compared likewise;
* ``alias``: ``moving:best`` (or ``:latest``) resolved with ``readlink``, then a file of that
  version, compared with what that version must hold.

Half of the reads first drop the file's pages (``posix_fadvise(DONTNEED)``) so they reach the
daemon instead of the kernel's page cache.  Meanwhile the driver moves the alias ``best``
every second and logs a new version of ``moving`` every ``--log-every`` seconds.  Every second
it samples the daemon's RSS (VmRSS, peak VmHWM) and open descriptors.

The summary also gives the daemon's loop stalls (``artifactfs stats --json``: how late its event
loop ran a task that asks to run every 10 ms), since the mount and during the run.  With
``--contend`` the mount's cache is shared the way a node shares it: a second mount of the same
registry on the same cache directory is read (a reader thread, through a new file each time),
``artifactfs cache prune`` runs in a loop (down to half the small files' bytes, so it evicts
and the mounts fetch again), and every 10 s another process holds ``cache.db`` in an exclusive
SQLite transaction for 2 s (what a long prune does).  Both mounts' stalls are reported.

Exit status 0 only with zero errors and zero mismatches (and, with ``--contend``, no own loop
stall of 100 ms or more during the run on either mount: a stall less the time the kernel kept the
loop's thread waiting for a CPU, which on a machine loaded by others is not the daemon's doing;
all stalls are reported too).  Prints a summary (``--json PATH`` also
writes it).  Usage: ``scripts/stress --minutes 3``; ``--smoke`` is a 20-second run on
small data (scripts/test may run it).  Needs /dev/fuse and fusermount3.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from artifactfs.names import parse_ref  # noqa: E402
from artifactfs.registry.local import LocalRegistry  # noqa: E402

PY = sys.executable
MiB = 1 << 20
KiB = 1 << 10
ENV = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT)}
MOVING_FILES = 20


# -- data -----------------------------------------------------------------------------------------


def moving_content(version: int, i: int) -> bytes:
    """What file ``i`` of ``moving:v<version>`` holds: readers check alias reads against it."""
    seed = f"moving v{version} file {i}\n".encode()
    return seed * (1 + (version * 7 + i) % 50)


def build(work: Path, n_files: int, big_mib: int) -> tuple[Path, Path, list[str]]:
    """Source trees and a registry; returns (registry, source of ds:v0, small file paths)."""
    src = work / "src"
    rng = random.Random(1234)
    small: list[str] = []
    for i in range(n_files):
        rel = f"d{i % 100:02d}/e{(i // 100) % 10}/{i:05d}.bin"
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(1 * KiB, 16 * KiB)))
        small.append(rel)
    with open(src / "big.bin", "wb") as f:
        for _ in range(big_mib):
            f.write(rng.randbytes(MiB))
    registry = work / "registry"
    cli("log", str(src), "stress/load/ds", "--type", "dataset", "--registry", str(registry))
    reg = LocalRegistry(registry)
    try:
        log_moving(work, reg, 0)
        reg.add_alias(parse_ref("stress/load/moving:v0"), "best")
    finally:
        reg.close()
    return registry, src, small


def log_moving(work: Path, reg: LocalRegistry, version: int) -> None:
    """Log version ``version`` of ``moving`` (in process: a CLI start costs seconds under load)."""
    src = work / f"moving{version}"
    src.mkdir()
    for i in range(MOVING_FILES):
        (src / f"f{i:02d}.txt").write_bytes(moving_content(version, i))
    result = reg.log_dir(src, parse_ref("stress/load/moving"), type="dataset")
    assert result.version.version_index == version, result.version.ref
    shutil.rmtree(src)


def cli(*args: str) -> str:
    proc = subprocess.run([PY, "-m", "artifactfs", *args], capture_output=True, text=True, env=ENV, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"artifactfs {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


# -- the mount ------------------------------------------------------------------------------------


def loop_stats(mnt: Path) -> dict[str, Any]:
    """The daemon's loop monitor (``artifactfs stats --json``): ``interval_seconds``,
    ``max_stall_seconds`` and the ``stalls`` histogram, since the mount started."""
    loop: dict[str, Any] = json.loads(cli("stats", str(mnt), "--json"))["loop"]
    return loop


def stalls_over(loop: dict[str, Any], bound: float = 0.1, which: str = "stalls") -> int:
    hist = loop[which]
    return int(hist["count"]) - int(hist["buckets"][f"{bound:g}"])


def stall_summary(start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    """Stalls during the run (the histograms' differences): all of them, and ``own`` ones, less
    the time the kernel kept the loop's thread waiting for a CPU (what the daemon is to blame for)."""
    return {
        "max_stall_ms_since_mount": round(end["max_stall_seconds"] * 1000, 2),
        "max_own_stall_ms_since_mount": round(end["max_own_stall_seconds"] * 1000, 2),
        "checkpoints_in_run": end["stalls"]["count"] - start["stalls"]["count"],
        "stalls_over_100ms_in_run": stalls_over(end) - stalls_over(start),
        "stalls_over_10ms_in_run": stalls_over(end, 0.01) - stalls_over(start, 0.01),
        "own_stalls_over_100ms_in_run": stalls_over(end, 0.1, "own_stalls") - stalls_over(start, 0.1, "own_stalls"),
        "own_stalls_over_10ms_in_run": stalls_over(end, 0.01, "own_stalls") - stalls_over(start, 0.01, "own_stalls"),
        "cpu_wait_s_in_run": round(end["cpu_wait_seconds"] - start["cpu_wait_seconds"], 3),
    }


HOLDER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
con.execute("BEGIN EXCLUSIVE")
time.sleep(float(sys.argv[2]))
con.execute("ROLLBACK")
"""


@dataclass
class Contention:
    """What ``--contend`` did, and what went wrong doing it."""

    prunes: int = 0
    evicted: int = 0
    holds: int = 0
    second_mount_reads: int = 0
    problems: list[str] = field(default_factory=list)


def contend(
    cache: Path, mnt2: Path, src: Path, small: list[str], prune_to: int, deadline: float, out: Contention
) -> list[threading.Thread]:
    """Start the ``--contend`` threads: prune loop, cache.db holder, second-mount reader."""

    def prune() -> None:
        while time.time() < deadline:
            try:
                text = cli("cache", "prune", "--cache-dir", str(cache), "--max-size", str(prune_to))
                out.prunes += 1
                out.evicted += int(text.split()[1]) if text.startswith("evicted ") else 0
            except BaseException as exc:  # SystemExit from cli(): reported, fails the run
                out.problems.append(f"prune: {exc}")
            time.sleep(0.5)

    def hold() -> None:
        while time.time() + 12 < deadline:
            time.sleep(10)
            proc = subprocess.run([PY, "-c", HOLDER, str(cache / "cache.db"), "2"], capture_output=True, text=True)
            if proc.returncode != 0:
                out.problems.append(f"holder: {proc.stderr.strip()[-300:]}")
            out.holds += 1

    def read_second() -> None:
        rng = random.Random(99)
        ds = mnt2 / "stress" / "load" / "ds:v0"
        while time.time() < deadline:
            rel = rng.choice(small)
            try:
                if _read_range(ds / rel, 0, 1 << 30, True) != (src / rel).read_bytes():
                    out.problems.append(f"second mount: {rel} differs")
                out.second_mount_reads += 1
            except OSError as exc:
                out.problems.append(f"second mount: {rel}: {exc}")

    threads = [threading.Thread(target=fn, daemon=True) for fn in (prune, hold, read_second)]
    for t in threads:
        t.start()
    return threads


def mount(registry: Path, mnt: Path, cache: Path, log_file: Path, local_blobs: str) -> subprocess.Popen[bytes]:
    ready_r, ready_w = os.pipe()
    cmd = [PY, "-m", "artifactfs", "mount", str(registry), str(mnt), "--foreground", "--cache-dir", str(cache)]
    cmd += ["--local-blobs", local_blobs, "--alias-ttl", "0.5", "--ready-fd", str(ready_w)]
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, pass_fds=(ready_w,), env=ENV)
    os.close(ready_w)
    with os.fdopen(ready_r, "rb") as ready:
        if not select.select([ready], [], [], 60)[0] or not ready.read().startswith(b"ok"):
            proc.kill()
            raise SystemExit(f"the mount did not come up: {log_file.read_text(errors='replace')[-2000:]}")
    return proc


def unmount(mnt: Path, proc: subprocess.Popen[bytes]) -> None:
    if subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- readers --------------------------------------------------------------------------------------


@dataclass
class Counts:
    ops: dict[str, int] = field(default_factory=dict)
    bytes_read: int = 0
    errors: int = 0
    mismatches: int = 0
    samples: list[str] = field(default_factory=list)  # the first few problems, for the report

    def add(self, other: Counts) -> None:
        for k, v in other.ops.items():
            self.ops[k] = self.ops.get(k, 0) + v
        self.bytes_read += other.bytes_read
        self.errors += other.errors
        self.mismatches += other.mismatches
        self.samples += other.samples[: max(0, 10 - len(self.samples))]


def _read_range(path: Path, offset: int, length: int, drop: bool, chunk: int = MiB) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        if drop:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        parts = []
        pos = offset
        while pos < offset + length:
            data = os.pread(fd, min(chunk, offset + length - pos), pos)
            if not data:
                break
            parts.append(data)
            pos += len(data)
        return b"".join(parts)
    finally:
        os.close(fd)


def _source_range(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def reader(seed: int, mnt: Path, src: Path, small: list[str], big_size: int, deadline: float) -> Counts:
    rng = random.Random(seed)
    counts = Counts()
    ds = mnt / "stress" / "load" / "ds:v0"
    project = mnt / "stress" / "load"
    while time.time() < deadline:
        kind = rng.choice(["seq-small", "seq-small", "rand-big", "rand-big", "seq-big", "alias"])
        drop = rng.random() < 0.5
        try:
            if kind == "seq-small":
                rel = rng.choice(small)
                got = _read_range(ds / rel, 0, 1 << 30, drop)
                want = (src / rel).read_bytes()
            elif kind == "rand-big" or kind == "seq-big":
                length = rng.randint(4 * KiB, MiB) if kind == "rand-big" else min(64 * MiB, big_size)
                offset = rng.randrange(0, max(1, big_size - length))
                got = _read_range(ds / "big.bin", offset, length, drop)
                want = _source_range(src / "big.bin", offset, length)
            else:
                alias = rng.choice(["best", "latest"])
                target = os.readlink(project / f"moving:{alias}")
                version = int(target.rsplit(":v", 1)[1])
                i = rng.randrange(MOVING_FILES)
                got = _read_range(project / target / f"f{i:02d}.txt", 0, 1 << 20, drop)
                want = moving_content(version, i)
            counts.ops[kind] = counts.ops.get(kind, 0) + 1
            counts.bytes_read += len(got)
            if got != want:
                counts.mismatches += 1
                if len(counts.samples) < 10:
                    counts.samples.append(f"{kind}: {len(got)} bytes differ from the {len(want)} expected")
        except OSError as exc:
            counts.errors += 1
            if len(counts.samples) < 10:
                counts.samples.append(f"{kind}: {exc}")
    return counts


def reader_process(
    index: int, threads: int, mnt: Path, src: Path, small: list[str], big_size: int, deadline: float, out: Any
) -> None:
    results: list[Counts] = []

    def run(seed: int) -> None:
        results.append(reader(seed, mnt, src, small, big_size, deadline))

    pool = [threading.Thread(target=run, args=(index * 1000 + t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    total = Counts()
    for r in results:
        total.add(r)
    out.put(asdict(total))


# -- the driver -----------------------------------------------------------------------------------


def sample(pid: int) -> tuple[int, int, int]:
    """(VmRSS, VmHWM) in KiB and the number of open descriptors of ``pid``."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm, len(os.listdir(f"/proc/{pid}/fd"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8, help="reader threads per process")
    parser.add_argument("--local-blobs", choices=("copy", "verify-in-place"), default="copy")
    parser.add_argument("--log-every", type=float, default=10.0, help="seconds between new versions of 'moving'")
    parser.add_argument("--dir", type=Path, help="work directory (default: a new temp dir, removed afterwards)")
    parser.add_argument("--smoke", action="store_true", help="20 s on 500 files and a 64 MiB file")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument(
        "--contend",
        action="store_true",
        help="also a second mount on the same cache, a 'cache prune' loop and cache.db held 2 s every 10 s",
    )
    args = parser.parse_args()
    if args.smoke:
        args.minutes, args.files, args.big_mib, args.log_every = 20 / 60, 500, 64, 3.0
    work = Path(tempfile.mkdtemp(prefix="artifactfs-stress-", dir=args.dir))
    mnt, cache, log_file = work / "mnt", work / "cache", work / "mount.log"
    mnt2, log_file2 = work / "mnt2", work / "mount2.log"
    mnt.mkdir()
    mnt2.mkdir()
    (work / "run").mkdir(mode=0o700)
    ENV["ARTIFACTFS_RUNTIME_DIR"] = str(work / "run")  # `artifactfs stats` finds these daemons only
    proc: subprocess.Popen[bytes] | None = None
    proc2: subprocess.Popen[bytes] | None = None
    contention = Contention()
    try:
        t0 = time.monotonic()
        registry, src, small = build(work, args.files, args.big_mib)
        print(f"built {args.files} files + {args.big_mib} MiB in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        proc = mount(registry, mnt, cache, log_file, args.local_blobs)
        if args.contend:
            proc2 = mount(registry, mnt2, cache, log_file2, args.local_blobs)
        loop_start = loop_stats(mnt)
        loop2_start = loop_stats(mnt2) if args.contend else None
        duration = args.minutes * 60
        deadline = time.time() + duration
        if args.contend:
            prune_to = sum((src / rel).stat().st_size for rel in small) // 2
            contend(cache, mnt2, src, small, prune_to, deadline, contention)
        queue: Any = multiprocessing.get_context("fork").Queue()
        readers = [
            multiprocessing.get_context("fork").Process(
                target=reader_process,
                args=(p, args.threads, mnt, src, small, args.big_mib * MiB, deadline, queue),
            )
            for p in range(args.processes)
        ]
        for r in readers:
            r.start()
        peak_rss = peak_hwm = peak_fds = 0
        first_rss = None
        moves = logs = 0
        version = 0
        next_log = time.time() + args.log_every
        mutation_errors: list[str] = []
        reg = LocalRegistry(registry)
        while time.time() < deadline:
            rss, hwm, fds = sample(proc.pid)
            first_rss = first_rss if first_rss is not None else rss
            peak_rss, peak_hwm, peak_fds = max(peak_rss, rss), max(peak_hwm, hwm), max(peak_fds, fds)
            try:
                for _ in range(4):  # four alias moves a second
                    reg.add_alias(parse_ref(f"stress/load/moving:v{random.randint(0, version)}"), "best")
                    moves += 1
                    time.sleep(0.25)
                if time.time() >= next_log:
                    log_moving(work, reg, version + 1)
                    version += 1
                    logs += 1
                    next_log = time.time() + args.log_every
            except Exception as exc:  # reported, and fails the run
                mutation_errors.append(f"{type(exc).__name__}: {exc}")
        reg.close()
        total = Counts()
        for _ in readers:
            total.add(Counts(**queue.get(timeout=600)))
        for r in readers:
            r.join()
        time.sleep(1)  # the --contend threads end by the deadline (a holder within its 2 s)
        rss, hwm, fds = sample(proc.pid)
        stats = json.loads(os.getxattr(mnt, "user.artifactfs.stats"))
        loop = stall_summary(loop_start, loop_stats(mnt))
        loop2 = stall_summary(loop2_start, loop_stats(mnt2)) if loop2_start is not None else None
        daemon_alive = proc.poll() is None
        summary = {
            "minutes": round(duration / 60, 2),
            "readers": args.processes * args.threads,
            "processes": args.processes,
            "threads_per_process": args.threads,
            "local_blobs": args.local_blobs,
            "files": args.files,
            "big_mib": args.big_mib,
            "ops": total.ops,
            "reads": sum(total.ops.values()),
            "bytes_read": total.bytes_read,
            "mib_per_s": round(total.bytes_read / MiB / duration, 1),
            "errors": total.errors,
            "mismatches": total.mismatches,
            "problems": total.samples,
            "alias_moves": moves,
            "versions_logged": logs,
            "mutation_errors": mutation_errors,
            "daemon_rss_kib": {"first": first_rss, "peak": peak_rss, "hwm": max(peak_hwm, hwm), "last": rss},
            "daemon_fds": {"peak": peak_fds, "last": fds},
            "daemon_alive": daemon_alive,
            "daemon_stats": stats,
            "loop": loop,
            "tracebacks_in_log": log_file.read_text(errors="replace").count("Traceback"),
        }
        if args.contend:
            summary["contention"] = {**asdict(contention), "problems": contention.problems[:10]}
            summary["second_mount_loop"] = loop2
            summary["tracebacks_in_log"] += log_file2.read_text(errors="replace").count("Traceback")
    finally:
        if proc is not None:
            unmount(mnt, proc)
        if proc2 is not None:
            unmount(mnt2, proc2)
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    ok = (
        total.errors == 0
        and total.mismatches == 0
        and daemon_alive
        and not mutation_errors
        and summary["tracebacks_in_log"] == 0
        and not (args.contend and (contention.problems or loop["own_stalls_over_100ms_in_run"]))
        and not (loop2 is not None and loop2["own_stalls_over_100ms_in_run"])
    )
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
