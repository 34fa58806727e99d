"""Scale cases (``scripts/bench --scale``): a million-entry W&B version, and the index builder
alone on a ten-million-entry synthetic manifest.

* ``builder``: a synthetic manifest of ``--builder-entries`` (10,000,000) entries in 10,000
  directories is written to disk and indexed by :func:`artifactfs.index.build_index` in a
  child process: build time, index size and the child's peak RSS.
* ``wandb``: tests/wandb_server.py (in this process) serves a version of ``--entries``
  (1,000,000) tiny files in directories of 1,000.  Measured: the ``mount`` command to the first
  byte of one file with an empty cache (manifest download and index build included), the same
  after a remount on that cache (index found on disk and checked), ``ls`` of one directory of
  1,000, ``find`` of the whole version (first pass and warm) against ``scripts/ceiling.py``
  over the same tree on disk, the daemon's RSS and peak RSS, and then three such versions open
  at once, each walked by ``find``.
* ``local``: the same tree logged to a local registry (once; two more versions are links of it,
  which copy its rows), its contents answered from the registry's own rows: the first byte,
  ``ls``, ``find`` (first pass and warm, taking turns with the ceiling's), and the daemon's RSS
  with one and with three versions walked.

Usage: ``.venv/bin/python scripts/bench_scale.py [--dir DIR] [--entries N] [--builder-entries N]
[--only builder,wandb,local]``.  Root is not needed (the page cache is not dropped: the figures
are those of a warm machine, as a remount on a busy node is).  With ``--dir``, the tree on disk
and the logged local registry are kept there and used again by the next run with the same
``--entries`` (a log of a million files takes minutes).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
PY = sys.executable
KEY = "5ca1e" + "0" * 35
MiB = 1 << 20


def rss_mib(pid: int) -> tuple[float, float]:
    """``(VmRSS, VmHWM)`` of a process in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) / 1024
    return out["VmRSS"], out["VmHWM"]


def find_versions(figs: dict[str, float], case: str, versions: list[Path], pid: int) -> None:
    """``find`` over each of ``versions`` (all mounted at once) in turn: the time, and the
    daemon's RSS after it, as ``<case>.find_3_versions_s`` and ``<case>.rss/hwm_3_versions_mib``."""
    start = time.perf_counter()
    for version in versions:
        subprocess.run(["find", str(version)], check=True, stdout=subprocess.DEVNULL)
    figs[f"{case}.find_3_versions_s"] = time.perf_counter() - start
    figs[f"{case}.rss_3_versions_mib"], figs[f"{case}.hwm_3_versions_mib"] = rss_mib(pid)
    print(
        f"{len(versions)} versions open, each walked by find ({figs[f'{case}.find_3_versions_s']:.1f} s): daemon RSS "
        f"{figs[f'{case}.rss_3_versions_mib']:.0f} MiB (peak {figs[f'{case}.hwm_3_versions_mib']:.0f})",
        flush=True,
    )


def timed(cmd: list[str] | str) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, shell=isinstance(cmd, str), check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


# -- the builder alone ---------------------------------------------------------------------------


def write_manifest(path: Path, n: int, per_dir: int = 1000) -> int:
    """A W&B manifest of ``n`` entries (sorted paths, as the SDK writes them); returns its size."""
    with open(path, "w") as f:
        f.write('{"version": 1, "storagePolicy": "wandb-storage-policy-v1", ')
        f.write('"storagePolicyConfig": {"storageLayout": "V2"}, "contents": {')
        for i in range(n):
            digest = base64.b64encode(hashlib.md5(b"%d" % i).digest()).decode()
            sep = "," if i else ""
            f.write(f'{sep}"train/d{i // per_dir:05d}/{i:08d}.jpg": {{"digest": "{digest}", "size": {100 + i % 900}}}')
        f.write("}}")
    return path.stat().st_size


BUILD = """
import json, resource, sys, time
from artifactfs.index import build_index, open_index
t = time.perf_counter()
path = build_index(sys.argv[1], sys.argv[2], "k")
build_s = time.perf_counter() - t
t = time.perf_counter()
index = open_index(sys.argv[2], "k", "")
open_s = time.perf_counter() - t
t = time.perf_counter()
listing = index.list_dir(sys.argv[3])
ls_s = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_SELF)
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so a child forked from a big
# process would report its parent's size.
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
print(json.dumps({"build_s": build_s, "build_cpu_s": ru.ru_utime + ru.ru_stime, "open_s": open_s,
                  "ls_1000_s": ls_s, "entries": index.count,
                  "index_bytes": __import__("os").path.getsize(path), "listed": len(listing),
                  "peak_rss_mib": hwm}))
"""


def case_builder(work: Path, n: int) -> dict[str, float]:
    src = work / f"manifest-{n}.json"
    print(f"\n## index builder alone: synthetic manifest of {n:,} entries", flush=True)
    start = time.perf_counter()
    size = write_manifest(src, n)
    print(f"manifest written: {size / MiB:,.0f} MiB in {time.perf_counter() - start:.0f} s", flush=True)
    out = work / "index-out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    probe = f"train/d{min(42, (n - 1) // 1000):05d}"  # a directory of 1,000 (write_manifest's)
    proc = subprocess.run(
        [PY, "-c", BUILD, str(src), str(out), probe], env=env, capture_output=True, text=True, check=True
    )
    got = json.loads(proc.stdout)
    got["manifest_bytes"] = size
    print(
        f"build {got['build_s']:.1f} s ({got['build_cpu_s']:.1f} s CPU), index {got['index_bytes'] / MiB:,.0f} MiB "
        f"({got['index_bytes'] / n:.0f} B/entry), peak RSS {got['peak_rss_mib']:.0f} MiB; "
        f"open (checksum) {got['open_s']:.2f} s, list of 1,000 {got['ls_1000_s'] * 1000:.1f} ms",
        flush=True,
    )
    src.unlink()
    shutil.rmtree(out)
    return {f"builder.{k}": v for k, v in got.items()}


# -- a million-entry W&B version -----------------------------------------------------------------


def env_for(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        LC_ALL="C.UTF-8",
        LANG="C.UTF-8",
        NETRC=str(work / "no-netrc"),
        WANDB_API_KEY=KEY,
        WANDB_CACHE_DIR=str(work / "sdk-cache"),
        PYTHONPATH=str(ROOT),
    )
    return env


@contextlib.contextmanager
def mount(url: str, work: Path, mnt: Path, cache: Path) -> Iterator[tuple[int, float]]:
    """A background ``artifactfs mount``: ``(daemon pid, seconds the mount command took)``."""
    mnt.mkdir(exist_ok=True)
    cmd = [PY, "-m", "artifactfs", "mount", f"wandb:{url}", str(mnt), "--cache-dir", str(cache)]
    start = time.perf_counter()
    proc = subprocess.run([*cmd, "--log-level", "WARNING"], env=env_for(work), capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"mount failed: {proc.stderr.strip()}")
    m = re.search(r"\(pid (\d+)\)", proc.stderr)
    assert m, proc.stderr
    pid = int(m.group(1))
    try:
        yield pid, took
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        deadline = time.monotonic() + 60
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True)


@contextlib.contextmanager
def ceiling(src: Path, mnt: Path) -> Iterator[int]:
    mnt.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [PY, str(ROOT / "scripts" / "ceiling.py"), str(src), str(mnt)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ok"
        yield proc.pid
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        proc.wait(timeout=60)


def files_of(n: int, per_dir: int = 1000) -> dict[str, bytes]:
    return {f"d{i // per_dir:04d}/f{i % per_dir:04d}.txt": b"%d\n" % i for i in range(n)}


def warm_finds(target: Path, ceiling_mnt: Path, runs: int) -> tuple[float, float, list[float], list[float]]:
    """Warm ``find``s of ``target`` and of the ceiling, taking turns (the machine is shared;
    neighbours in time compare fairly): ``(median, ceiling median, runs, ceiling runs)``."""
    mine: list[float] = []
    theirs: list[float] = []
    for _ in range(runs):
        mine.append(timed(["find", str(target)]))
        theirs.append(timed(["find", str(ceiling_mnt)]))
    return statistics.median(mine), statistics.median(theirs), mine, theirs


def case_scale(work: Path, n: int, parts: set[str], runs: int, keep: bool) -> dict[str, float]:
    """The tree of ``n`` files on disk and the ceiling over it, then the W&B and local cases."""
    figs: dict[str, float] = {}
    src = work / f"tree-{n}"
    done = work / f"tree-{n}.done"
    if done.exists():
        print(f"tree on disk for the ceiling: kept from an earlier run ({src})", flush=True)
    else:
        start = time.perf_counter()
        for path, data in files_of(n).items():
            p = src / path
            if not p.parent.exists():
                p.parent.mkdir(parents=True)
            p.write_bytes(data)
        print(f"tree on disk for the ceiling: {time.perf_counter() - start:.0f} s", flush=True)
    with ceiling(src, work / "ceiling") as ceiling_pid:
        if "wandb" in parts:
            figs.update(case_wandb(work, n, ceiling_pid, runs=runs))
        if "local" in parts:
            figs.update(case_local(work, src, n, runs=runs, keep=keep))
    if keep:
        done.touch()
    else:
        shutil.rmtree(src)
    return figs


def case_wandb(work: Path, n: int, ceiling_pid: int, versions: int = 3, runs: int = 3) -> dict[str, float]:
    import wandb_server

    figs: dict[str, float] = {}
    print(f"\n## a {n:,}-entry W&B version (1,000 per directory), tests/wandb_server.py in this process", flush=True)
    files = files_of(n)
    stack = contextlib.ExitStack()
    server = wandb_server.WandbServer(api_key=KEY, viewer_entity="acme", url_ttl=24 * 3600.0).start()
    stack.callback(server.stop)
    with stack:
        start = time.perf_counter()
        recs = [server.add_artifact("acme", "scale", f"ds{k}", "dataset", files) for k in range(versions)]
        print(
            f"server ready: {time.perf_counter() - start:.0f} s, manifest {len(recs[0].manifest_bytes) / MiB:.0f} MiB"
        )
        figs["wandb.manifest_bytes"] = len(recs[0].manifest_bytes)
        cache = work / "cache"
        mnt = work / "mnt"
        v = mnt / "acme" / "scale" / "ds0:v0"
        ndirs = max(1, n // 1000)
        d1, d2, d3 = (f"d{ndirs * k // 10:04d}" for k in (5, 6, 7))

        # cold: empty cache, manifest fetched and indexed
        with mount(server.url, work, mnt, cache) as (pid, took):
            start = time.perf_counter()
            subprocess.run(["head", "-c1", str(v / d1 / "f0007.txt")], check=True, stdout=subprocess.DEVNULL)
            figs["wandb.first_byte_cold_s"] = took + time.perf_counter() - start
            figs["wandb.first_byte_cold_rss_mib"], figs["wandb.first_byte_cold_hwm_mib"] = rss_mib(pid)
        print(f"cold: mount to first byte {figs['wandb.first_byte_cold_s']:.2f} s", flush=True)

        # remount on that cache: the index is found on disk and checked
        with mount(server.url, work, mnt, cache) as (pid, took):
            start = time.perf_counter()
            subprocess.run(["head", "-c1", str(v / d2 / "f0008.txt")], check=True, stdout=subprocess.DEVNULL)
            figs["wandb.first_byte_remount_s"] = took + time.perf_counter() - start
            figs["wandb.first_byte_remount_rss_mib"] = rss_mib(pid)[0]
            print(f"remount: mount to first byte {figs['wandb.first_byte_remount_s']:.2f} s", flush=True)
            figs["wandb.ls_1000_s"] = timed(["ls", str(v / d3)])
            figs["wandb.ls_1000_warm_s"] = timed(["ls", str(v / d3)])
            figs["wandb.find_first_s"] = timed(["find", str(v)])
            figs["ceiling.find_first_s"] = timed(["find", str(work / "ceiling")])
            warm: dict[str, list[float]] = {}
            figs["wandb.find_warm_s"], figs["ceiling.find_warm_s"], warm["wandb"], warm["ceiling"] = warm_finds(
                v, work / "ceiling", runs
            )
            figs["wandb.find_rss_mib"], figs["wandb.find_hwm_mib"] = rss_mib(pid)
            figs["ceiling.rss_mib"] = rss_mib(ceiling_pid)[0]
            figs["find_first_vs_ceiling"] = figs["ceiling.find_first_s"] / figs["wandb.find_first_s"]
            figs["find_warm_vs_ceiling"] = figs["ceiling.find_warm_s"] / figs["wandb.find_warm_s"]
            print(
                f"ceiling find: first {figs['ceiling.find_first_s']:.1f} s, warm {figs['ceiling.find_warm_s']:.2f} s "
                f"(runs {', '.join(f'{x:.2f}' for x in warm['ceiling'])}; RSS {figs['ceiling.rss_mib']:.0f} MiB); "
                f"artifactfs warm runs {', '.join(f'{x:.2f}' for x in warm['wandb'])}; artifactfs/ceiling speed: "
                f"first {figs['find_first_vs_ceiling']:.2f}x, warm {figs['find_warm_vs_ceiling']:.2f}x",
                flush=True,
            )
            print(
                f"ls of 1,000: {figs['wandb.ls_1000_s']:.3f} s; find: first {figs['wandb.find_first_s']:.1f} s, "
                f"warm {figs['wandb.find_warm_s']:.1f} s; daemon RSS {figs['wandb.find_rss_mib']:.0f} MiB "
                f"(peak {figs['wandb.find_hwm_mib']:.0f})",
                flush=True,
            )
            # three versions open at once, each walked by find
            for k in range(1, versions):
                timed(["head", "-c1", str(mnt / "acme" / "scale" / f"ds{k}:v0" / "d0001" / "f0001.txt")])
            find_versions(figs, "wandb", [mnt / "acme" / "scale" / f"ds{k}:v0" for k in range(versions)], pid)

    del files
    return figs


def case_local(work: Path, src: Path, n: int, versions: int = 3, runs: int = 3, keep: bool = False) -> dict[str, float]:
    """The same tree logged to a local registry (its contents are its own SQLite, no manifest):
    the first byte, ls, find against the ceiling, and the daemon's RSS with one version walked
    and with ``versions`` walked (the others are links of the first: copies of its rows)."""
    figs: dict[str, float] = {}
    reg = work / f"registry-{n}"
    print(f"\n## the same {n:,} files in a local registry", flush=True)
    if (reg / "done").exists():
        print(f"registry kept from an earlier run ({reg})", flush=True)
    else:
        shutil.rmtree(reg, ignore_errors=True)
        start = time.perf_counter()
        subprocess.run(
            [PY, "-m", "artifactfs", "log", str(src), "acme/scale/ds", "--type", "dataset", "--registry", str(reg)],
            check=True,
            capture_output=True,
            env=env_for(work),
        )
        figs["local.log_s"] = time.perf_counter() - start
        start = time.perf_counter()
        link = "from artifactfs.registry.local import LocalRegistry; from artifactfs.names import parse_ref\n"
        link += f"r = LocalRegistry({str(reg)!r})\n"
        link += "".join(f"r.link(parse_ref('acme/scale/ds:v0'), 'ds{k}')\n" for k in range(1, versions))
        subprocess.run([PY, "-c", link], check=True, env=env_for(work))
        figs["local.link_s"] = time.perf_counter() - start
        print(f"log {figs['local.log_s']:.0f} s, {versions - 1} links {figs['local.link_s']:.0f} s", flush=True)
        (reg / "done").touch()
    ndirs = max(1, n // 1000)
    d1, d3 = (f"d{ndirs * k // 10:04d}" for k in (5, 7))
    mnt = work / "local-mnt"
    mnt.mkdir(exist_ok=True)
    cache = work / "local-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [PY, "-m", "artifactfs", "mount", str(reg), str(mnt), "--cache-dir", str(cache)]
    start = time.perf_counter()
    proc = subprocess.run([*cmd, "--log-level", "WARNING"], env=env_for(work), capture_output=True, text=True)
    took = time.perf_counter() - start
    m = re.search(r"\(pid (\d+)\)", proc.stderr)
    assert proc.returncode == 0 and m, proc.stderr
    pid = int(m.group(1))
    project = mnt / "acme" / "scale"
    v = project / "ds:v0"
    try:
        start = time.perf_counter()
        subprocess.run(["head", "-c1", str(v / d1 / "f0007.txt")], check=True, stdout=subprocess.DEVNULL)
        figs["local.first_byte_s"] = took + time.perf_counter() - start
        figs["local.ls_1000_s"] = timed(["ls", str(v / d3)])
        figs["local.find_first_s"] = timed(["find", str(v)])  # the ceiling's first pass is behind it: no ratio
        warm: dict[str, list[float]] = {}
        figs["local.find_warm_s"], figs["ceiling.local_find_warm_s"], warm["local"], warm["ceiling"] = warm_finds(
            v, work / "ceiling", runs
        )
        figs["local.find_rss_mib"], figs["local.find_hwm_mib"] = rss_mib(pid)
        figs["local.find_warm_vs_ceiling"] = figs["ceiling.local_find_warm_s"] / figs["local.find_warm_s"]
        print(
            f"mount to first byte {figs['local.first_byte_s']:.2f} s; ls of 1,000 {figs['local.ls_1000_s']:.3f} s; "
            f"find: first {figs['local.find_first_s']:.1f} s, "
            f"warm runs {', '.join(f'{x:.2f}' for x in warm['local'])} (ceiling "
            f"{', '.join(f'{x:.2f}' for x in warm['ceiling'])}): warm {figs['local.find_warm_vs_ceiling']:.2f}x the "
            f"ceiling; daemon RSS {figs['local.find_rss_mib']:.0f} MiB (peak {figs['local.find_hwm_mib']:.0f})",
            flush=True,
        )
        find_versions(figs, "local", [*(project / f"ds{k}:v0" for k in range(1, versions)), v], pid)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        deadline = time.monotonic() + 60
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
    if not keep:
        shutil.rmtree(reg)
    return figs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="work directory on a real disk (default: a temp directory)")
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--builder-entries", type=int, default=10_000_000)
    ap.add_argument("--only", default="builder,wandb,local")
    ap.add_argument("--no-local", action="store_true", help="skip the local-registry case (its log takes minutes)")
    ap.add_argument("--runs", type=int, default=3, help="warm finds of the mount and the ceiling, in turn")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="artifactfs-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# scale cases, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load {os.getloadavg()[0]:.1f}, work {work}")
    print(f"command: cd {ROOT} && {' '.join([PY, *sys.argv])}")
    figs: dict[str, float] = {}
    parts = set(args.only.split(","))
    if args.no_local:
        parts.discard("local")
    unknown = parts - {"builder", "wandb", "local"}
    if unknown:
        raise SystemExit(f"unknown part {sorted(unknown)[0]!r}")
    try:
        if "builder" in parts:
            figs.update(case_builder(work, args.builder_entries))
        if parts & {"wandb", "local"}:
            figs.update(case_scale(work, args.entries, parts, args.runs, keep=bool(args.dir)))
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    figs["bench_peak_rss_mib"] = rss_mib(os.getpid())[1]
    print("\n" + json.dumps(figs, indent=1, sort_keys=True))
    if args.json:
        Path(args.json).write_text(json.dumps(figs, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
