"""The measuring stick: artifactfs against a plain directory and the pyfuse3 ceiling, same run.

Every case runs several times and reports the median with min-max; every ratio compares
figures of this run (the machine drifts 20-30% over an hour).  Baselines:

* ``plain``: the same files in an ordinary directory;
* ``ceiling``: ``scripts/ceiling.py``, a minimal pyfuse3 filesystem over that directory
  (precomputed attributes, inline ``pread``, ``keep_cache``, year-long timeouts, getxattr
  answered ENOATTR, or ENOSYS for the ``xattrs off`` comparison), started and stopped here.

Ratios are speed ratios, ``baseline time / artifactfs time`` (1.0 = as fast as the baseline;
for throughput and IOPS the same thing).  Data is built once per run under ``--dir`` (a real
disk): one 1 GiB file (MD5 and XXH128 artifacts), 10,000 files of 1-64 KiB in nested
directories, and a 100,000-entry artifact of tiny files (its ``log`` is a case).  ``--quick``
uses smaller data and fewer runs.  Needs root (drops the page cache, raises read-ahead).

``--json PATH`` writes ``{"machine": ..., "figures": {name: {median, min, max, runs, unit}},
"ratios": {name: {value, baseline, target, met}}}`` under stable names.  ``--profile DIR``
runs each artifactfs daemon under cProfile (``mount --profile``) and leaves one ``.prof`` per
mount in DIR.  The W&B cases (``--only wandb``) are ``scripts/bench_wandb.py``'s.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nginx_blobs import Nginx  # scripts/nginx_blobs.py, shared with scripts/bench_wandb.py

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
KiB = 1 << 10
PY = sys.executable
CEILING = str(ROOT / "scripts" / "ceiling.py")


# -- helpers -----------------------------------------------------------------------------------


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def sh(cmd: str) -> None:
    subprocess.run(["bash", "-c", cmd], check=True)


def timed_sh(cmd: str) -> float:
    start = time.perf_counter()
    sh(cmd)
    return time.perf_counter() - start


def afs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "artifactfs", *args], check=True, capture_output=True, text=True, cwd=ROOT)


def _gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return
        except OSError:
            return
        time.sleep(0.05)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Figure:
    values: list[float]
    unit: str

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def text(self) -> str:
        med, lo, hi = self.median, min(self.values), max(self.values)
        fmt = "{:,.0f}" if self.unit in ("files/s", "IOPS", "MB", "B") else "{:.3g}"
        spread = "" if len(self.values) == 1 else f" ({fmt.format(lo)}-{fmt.format(hi)})"
        return f"{fmt.format(med)} {self.unit}{spread}"


@dataclass
class Ratio:
    value: float
    afs: str
    baseline: str
    target: float | None  # a speed ratio to reach (>=), or for "max" ratios a bound (<=)
    higher_is_better: bool = True
    absolute: bool = False  # value is a figure (files/s, MB), not a ratio

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target


@dataclass
class Results:
    figures: dict[str, Figure] = field(default_factory=dict)
    ratios: dict[str, Ratio] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, values: list[float], unit: str = "s") -> None:
        self.figures[name] = Figure(values, unit)
        print(f"  {name:<40} {self.figures[name].text()}", flush=True)

    def ratio(self, name: str, afs_name: str, base_name: str, target: float | None) -> None:
        a, b = self.figures.get(afs_name), self.figures.get(base_name)
        if a is None or b is None:
            return
        # Times: baseline / ours.  Rates: ours / baseline.  Either way >1 means faster than it.
        value = b.median / a.median if a.unit == "s" else a.median / b.median
        self.ratios[name] = Ratio(value, afs_name, base_name, target)

    def bound(self, name: str, afs_name: str, limit: float) -> None:
        a = self.figures.get(afs_name)
        if a is not None:
            self.ratios[name] = Ratio(a.median, afs_name, "", limit, higher_is_better=False)

    def table(self) -> str:
        lines = ["| ratio | value | artifactfs | baseline | target | met |", "|---|---|---|---|---|---|"]
        for name, r in self.ratios.items():
            a = self.figures[r.afs].text()
            b = self.figures[r.baseline].text() if r.baseline else ""
            unit = "" if r.absolute or not r.higher_is_better else " x"
            op = ">=" if r.higher_is_better else "<="
            target = "" if r.target is None else f"{op} {r.target:g}{unit}"
            if r.absolute or not r.higher_is_better:
                value = f"{r.value:,.0f}" if r.value >= 100 else f"{r.value:.3g}"
            else:
                value = f"{r.value:.2f} x"
            met = "" if r.met is None else ("yes" if r.met else "no")
            lines.append(f"| {name} | {value} | {a} | {b} | {target} | {met} |")
        return "\n".join(lines)

    def to_json(self, machine: dict[str, Any]) -> dict[str, Any]:
        return {
            "machine": machine,
            "info": self.info,
            "figures": {
                n: {
                    "median": f.median,
                    "min": min(f.values),
                    "max": max(f.values),
                    "runs": len(f.values),
                    "unit": f.unit,
                }
                for n, f in self.figures.items()
            },
            "ratios": {
                n: {"value": r.value, "artifactfs": r.afs, "baseline": r.baseline, "target": r.target, "met": r.met}
                for n, r in self.ratios.items()
            },
        }


# -- mounts ------------------------------------------------------------------------------------


@dataclass
class Bench:
    work: Path
    runs: int
    quick: bool
    profile: Path | None
    wan: str | None = None  # --wan LAT_MS,MBPS for the W&B cases
    res: Results = field(default_factory=Results)
    _n: int = 0

    def mountpoint(self) -> Path:
        self._n += 1
        path = self.work / f"mnt{self._n}"
        path.mkdir()
        return path

    @contextlib.contextmanager
    def artifactfs(self, registry: Path, *extra: str, cache: Path | None = None) -> Iterator[tuple[Path, int]]:
        """A background ``artifactfs mount`` (fresh cache unless given): ``(mountpoint, pid)``."""
        mnt = self.mountpoint()
        cache = cache or self.work / f"cache{self._n}"
        args = ["mount", str(registry), str(mnt), "--cache-dir", str(cache), "--log-level", "WARNING", *extra]
        if self.profile is not None:
            args += ["--profile", str(self.profile / f"mount{self._n}-{'_'.join(extra) or 'default'}.prof")]
        out = afs(*args)
        m = re.search(r"\(pid (\d+)\)", out.stderr)
        assert m, out.stderr
        pid = int(m.group(1))
        try:
            yield mnt, pid
        finally:
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
            _gone(pid)
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True)

    @contextlib.contextmanager
    def ceiling(self, src: Path, xattrs: str = "enoattr") -> Iterator[Path]:
        mnt = self.mountpoint()
        proc = subprocess.Popen(
            [PY, CEILING, str(src), str(mnt), "--xattrs", xattrs], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ok"
            os.stat(mnt)
            yield mnt
        finally:
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True)

    def interleaved(self, case: str, cmds: dict[str, str], cold: bool = False) -> None:
        """Each of ``cmds`` once per run, in turn (page cache dropped before each if ``cold``);
        the figures are ``case.<variant>``."""
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(self.runs):
            for variant, cmd in cmds.items():
                if cold:
                    drop_caches()
                times[variant].append(timed_sh(cmd))
        for variant, values in times.items():
            self.res.add(f"{case}.{variant}", values)

    def repeat(self, cmd: str, cold: bool = False, runs: int | None = None) -> list[float]:
        out = []
        for _ in range(runs or self.runs):
            if cold:
                drop_caches()
            out.append(timed_sh(cmd))
        return out


# -- data --------------------------------------------------------------------------------------


def make_small(root: Path, n: int) -> None:
    """``n`` files of 1-64 KiB, distinct content, in nested directories (a/b, 100 per leaf)."""
    rnd = random.Random(8)
    block = os.urandom(64 * KiB)
    for i in range(n):
        d = root / f"part{i // 2000:02d}" / f"shard{(i // 100) % 20:02d}"
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        size = rnd.randint(1, 64) * KiB
        (d / f"{i:06d}.bin").write_bytes(i.to_bytes(8, "little") + block[8:size])


def make_many(root: Path, dirs: int, per_dir: int) -> None:
    """``dirs * per_dir`` tiny files (16-24 bytes, distinct)."""
    for d in range(dirs):
        sub = root / f"d{d:04d}"
        sub.mkdir(parents=True)
        for f in range(per_dir):
            (sub / f"f{f:03d}.txt").write_bytes(b"%d/%d\n" % (d, f))


def make_big(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        chunk = os.urandom(16 * MiB)
        for i in range(size // len(chunk)):
            f.write(i.to_bytes(8, "little") + chunk[8:])


def log(src: Path, ref: str, registry: Path, *extra: str) -> float:
    start = time.perf_counter()
    afs("log", str(src), ref, "--type", "dataset", "--registry", str(registry), *extra)
    return time.perf_counter() - start


# -- cases ---------------------------------------------------------------------------------------

PREFETCH = 16  # --prefetch of the prefetching variants
FIND = "find {} -type f | wc -l > /dev/null"
LSR = "ls -lR {} > /dev/null"
CAT = "find {} -type f -print0 | xargs -0 cat > /dev/null"


def case_tree(b: Bench) -> None:
    """find and ls -lR of the 100,000-entry artifact; log of it; RSS after find + stat."""
    dirs = 100 if b.quick else 1000
    src = b.work / "many"
    make_many(src, dirs, 100)
    n = dirs * 100
    reg = b.work / "reg-many"
    print(f"\n## {n:,} tiny files: log, find, ls -lR, RSS", flush=True)
    t = log(src, "bench/tree/many", reg)
    b.res.add("log.tiny_files_per_s", [n / t], "files/s")
    try:
        t_sdk = _wandb_add_dir(src, 2000 if b.quick else 20000)
    except Exception as exc:  # the SDK is a test dependency; the case is skipped without it
        print(f"  (wandb add_dir skipped: {exc})")
    else:
        b.res.add("log.wandb_add_dir_files_per_s", [t_sdk], "files/s")
    with contextlib.ExitStack() as stack:
        # Every variant mounted at once and measured in turn within each run: the machine is
        # shared and drifts, so neighbours in time are what compare fairly.
        roots = {
            "plain": src,
            "ceiling": stack.enter_context(b.ceiling(src, "enoattr")),
            "ceiling_noxattr": stack.enter_context(b.ceiling(src, "enosys")),
            "artifactfs": stack.enter_context(b.artifactfs(reg, "--xattrs", "on"))[0] / "bench/tree/many:v0",
            "artifactfs_noxattr": stack.enter_context(b.artifactfs(reg, "--xattrs", "off"))[0] / "bench/tree/many:v0",
        }
        for root in roots.values():
            sh(FIND.format(root))  # warm: the kernel's entries, the daemon's nodes
        b.interleaved("find", {k: FIND.format(v) for k, v in roots.items() if not k.endswith("noxattr")})
        b.interleaved("lsR", {k: LSR.format(v) for k, v in roots.items()})
    # A fresh daemon: walk and stat every entry once, then its resident memory.
    with b.artifactfs(reg) as (mnt, pid):
        root = mnt / "bench/tree/many:v0"
        sh(f"find {root} -printf '%s\\n' > /dev/null")
        b.res.add("rss.after_find_stat_mb", [rss_mb(pid)], "MB")
    shutil.rmtree(src)


def _wandb_add_dir(src: Path, limit: int) -> float:
    """Files/s of the wandb SDK's ``Artifact.add_dir`` on the first ``limit`` files of ``src``
    (offline: it hashes and stages, as ``log`` does)."""
    sub = src.parent / "many-sdk"
    sub.mkdir()
    count = 0
    for d in sorted(src.iterdir()):
        if count >= limit:
            break
        shutil.copytree(d, sub / d.name)
        count += sum(1 for _ in d.iterdir())
    code = (
        "import sys, time, wandb\n"
        "a = wandb.Artifact('bench', type='dataset')\n"
        "t = time.perf_counter(); a.add_dir(sys.argv[1]); print(time.perf_counter() - t)\n"
    )
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CACHE_DIR=str(src.parent / "wandb-cache"))
    env["WANDB_DATA_DIR"] = str(src.parent / "wandb-data")
    out = subprocess.run(
        [PY, "-c", code, str(sub)], check=True, capture_output=True, text=True, env=env, cwd=src.parent
    )
    shutil.rmtree(sub)
    return count / float(out.stdout.strip().splitlines()[-1])


def case_small(b: Bench) -> None:
    n = 1000 if b.quick else 10000
    src = b.work / "small"
    make_small(src, n)
    reg = b.work / "reg-small"
    log(src, "bench/small/files", reg)
    print(f"\n## cat of {n:,} files of 1-64 KiB (find | xargs cat)", flush=True)
    with contextlib.ExitStack() as stack:
        roots: dict[str, Path] = {"plain": src, "ceiling": stack.enter_context(b.ceiling(src))}
        for name, extra in (("artifactfs", ()), ("artifactfs_prefetch", ("--prefetch", str(PREFETCH)))):
            mnt, _pid = stack.enter_context(b.artifactfs(reg, *extra))
            roots[name] = mnt / "bench/small/files:v0"
            drop_caches()
            b.res.add(f"small_first.{name}", [timed_sh(CAT.format(roots[name]))])
        cmds = {k: CAT.format(v) for k, v in roots.items()}
        # The registry's blob files themselves, cat in the order the mount serves them: content
        # addressing scatters them over 256 directories, which a cold disk feels.
        cmds["blobs"] = f"xargs -0 cat < {_blob_list(reg, 'bench/small/files:v0', b.work / 'blobs.txt')} > /dev/null"
        b.interleaved("small_cold", cmds, cold=True)
        b.interleaved("small_warm", {k: CAT.format(v) for k, v in roots.items()})


def _blob_list(reg: Path, ref: str, out: Path) -> Path:
    """A NUL-separated list of the blob files of ``ref``'s entries, in path order."""
    from artifactfs.names import parse_ref
    from artifactfs.registry import open_registry

    registry = open_registry(str(reg))
    try:
        v = registry.resolve(parse_ref(ref))
        paths = sorted((e.path, str(registry.local_path(e))) for e in registry.iter_entries(v))
    finally:
        registry.close()
    out.write_text("".join(p + "\0" for _, p in paths))
    return out


def case_big(b: Bench) -> None:
    size = (128 if b.quick else 1024) * MiB
    src = b.work / "big" / "big.bin"
    make_big(src, size)
    reg = b.work / "reg-big"
    log(src.parent, "bench/big/file", reg)
    log(src.parent, "bench/big/filex", reg, "--digest-algorithm", "XXH128")
    print(f"\n## one file of {size // MiB} MiB (cat > /dev/null; md5sum)", flush=True)
    cat = "cat {} > /dev/null"
    # First reads: a fresh mount (fresh cache) each time, page cache dropped, against md5sum.
    firsts: dict[str, list[float]] = {
        "big_first.artifactfs": [],
        "big_first_xxh128.artifactfs": [],
        "big_md5sum.plain": [],
    }
    for _ in range(b.runs):
        for ref, name in (("bench/big/file:v0", "big_first"), ("bench/big/filex:v0", "big_first_xxh128")):
            with b.artifactfs(reg) as (mnt, _pid):
                drop_caches()
                firsts[f"{name}.artifactfs"].append(timed_sh(cat.format(mnt / ref / "big.bin")))
        drop_caches()
        firsts["big_md5sum.plain"].append(timed_sh(f"md5sum {src} > /dev/null"))
    for name, values in firsts.items():
        b.res.add(name, values)
    with contextlib.ExitStack() as stack:
        mnt, _pid = stack.enter_context(b.artifactfs(reg))
        paths = {
            "plain": src,
            "ceiling": stack.enter_context(b.ceiling(src.parent)) / "big.bin",
            "artifactfs": mnt / "bench/big/file:v0/big.bin",
        }
        sh(cat.format(paths["artifactfs"]))  # verified: from now on served from the trusted blob
        b.interleaved("big_cold", {k: cat.format(v) for k, v in paths.items()}, cold=True)
        for path in paths.values():
            sh(cat.format(path))
        b.interleaved("big_warm", {k: cat.format(v) for k, v in paths.items()})
    os.unlink(src)


def _preads(path: Path, blocks: list[int]) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        start = time.perf_counter()
        for blk in blocks:
            os.pread(fd, 4096, blk * 4096)
        return len(blocks) / (time.perf_counter() - start)
    finally:
        os.close(fd)


def case_rand(b: Bench) -> None:
    """4 KiB random reads: through the daemon (mount's page cache dropped, blob warm) and of a
    kernel-cached file, against the plain file warm and the ceiling."""
    size = (64 if b.quick else 256) * MiB
    src = b.work / "rand" / "r.bin"
    make_big(src, size)
    reg = b.work / "reg-rand"
    log(src.parent, "bench/rand/r", reg)
    count = 5000 if b.quick else 20000
    rnd = random.Random(1)
    print(f"\n## {count:,} random 4 KiB preads in a {size // MiB} MiB file", flush=True)
    blob = next(p for p in (reg / "objects" / "md5").rglob("*") if p.is_file())
    with contextlib.ExitStack() as stack:
        mnt, _pid = stack.enter_context(b.artifactfs(reg))
        paths = {
            "plain": src,
            "ceiling": stack.enter_context(b.ceiling(src.parent)) / "r.bin",
            "artifactfs": mnt / "bench/rand/r:v0/r.bin",
        }
        sh(f"cat {paths['artifactfs']} > /dev/null")  # verified once, then trusted
        daemon: dict[str, list[float]] = {"ceiling": [], "artifactfs": []}
        for _ in range(b.runs):
            for name in daemon:
                drop_caches()
                sh(f"cat {blob} {src} > /dev/null")  # the backing files warm: the daemon, not the disk
                daemon[name].append(_preads(paths[name], rnd.sample(range(size // 4096), count)))
        for name, values in daemon.items():
            b.res.add(f"rand_daemon.{name}", values, "IOPS")
        for path in paths.values():
            sh(f"cat {path} > /dev/null")
        warm: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(b.runs):
            for name, path in paths.items():
                warm[name].append(_preads(path, rnd.sample(range(size // 4096), count)))
        for name, values in warm.items():
            b.res.add(f"rand_warm.{name}", values, "IOPS")
    os.unlink(src)


@contextlib.contextmanager
def blobs_from_nginx(bw: Any, work: Path) -> Iterator[Nginx | None]:
    """scripts/bench_wandb.py as it is, with its server's file URLs (what the mount, the SDK and
    curl download) pointing at nginx; without nginx, as it is."""
    if shutil.which("nginx") is None:
        print("  (nginx is not installed: blobs come from the Python test server; apt-get install nginx-light)")
        yield None
        return
    nginx = Nginx(work)
    start_server, file_url = bw.start_server, bw.file_url

    def start() -> Any:
        server = start_server()
        add, node = server.add_artifact, server._file_node

        def add_artifact(*args: Any, **kwargs: Any) -> Any:
            rec = add(*args, **kwargs)
            nginx.put(rec)
            return rec

        def file_node(rec: Any, path: str) -> dict[str, Any]:
            out: dict[str, Any] = node(rec, path)
            out["url"] = out["directUrl"] = nginx.url + out["url"][len(server.url) :]
            return out

        server.add_artifact, server._file_node = add_artifact, file_node
        return server

    bw.start_server = start
    bw.file_url = lambda server, rec, path: nginx.url + file_url(server, rec, path)[len(server.url) :]
    try:
        yield nginx
    finally:
        bw.start_server, bw.file_url = start_server, file_url
        nginx.close()


def bench_delta(bw: Any, server: Any, work: Path, figs: Any, runs: int, quick: bool, cap: float) -> None:
    """v1 after v0: the bytes a mount fetches for v1 of an artifact whose v0 it has read, when
    1% of the files changed (content addressing: the other 99% are cache hits)."""
    n = 2000 if quick else 10000
    v0 = bw.small_files(n, seed=11)
    paths = sorted(v0)
    changed = paths[:: max(1, n // (n // 100))][: n // 100]
    v1 = dict(v0)
    for path in changed:
        v1[path] = os.urandom(len(v0[path]))
    server.add_artifact(bw.ENTITY, bw.PROJECT, "delta", "dataset", v0)
    server.add_artifact(bw.ENTITY, bw.PROJECT, "delta", "dataset", v1)
    changed_bytes = sum(len(v1[p]) for p in changed)
    print(f"\n## v1 after v0: {n} files, {len(changed)} changed ({changed_bytes} bytes)", flush=True)
    k = "wandb.delta."
    for _ in range(runs):
        m = bw.Mount(server, work, "delta")
        try:
            base = m.mnt / bw.ENTITY / bw.PROJECT
            sh(CAT.format(base / "delta:v0"))
            before = m.stats()["fetched_bytes"]
            start = time.perf_counter()
            sh(CAT.format(base / "delta:v1"))
            figs.add(k + "v1_read_s", "read all of v1 after v0", time.perf_counter() - start)
            figs.add(k + "v1_fetched_bytes", "bytes fetched for v1", float(m.stats()["fetched_bytes"] - before))
        finally:
            m.close()
    figs.info[k + "changed_bytes"] = changed_bytes


def case_wandb(b: Bench) -> None:
    """The remote cases: scripts/bench_wandb.py's (first read of 1 GiB against curl and md5sum,
    10,000 small files against the SDK's download(), first byte in a 100,000-entry artifact),
    with the blobs served by nginx, plus v1-after-v0; their figures and ratios join this run's."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_wandb as bw  # type: ignore[import-not-found]

    bw.PARTS.setdefault("delta", functools.partial(bench_delta, bw))
    with blobs_from_nginx(bw, b.work) as nginx:
        if b.wan:
            bw.set_wan(b.wan, sys.exit)
        result = bw.run(b.work, b.quick, runs=b.runs, parts="big,small,many,delta,wan")
    figures = result["figures"]
    b.res.info["wandb.blob_server"] = "nginx" if nginx is not None else "python"
    for key, value in figures.items():
        if key.endswith(".runs") and isinstance(value, list) and value:
            name = key[: -len(".runs")]
            unit = "B" if name.endswith("_bytes") else "s"
            b.res.add(name, [float(v) for v in value], unit)
        elif not isinstance(value, list) and key.startswith("wandb.") and key.count(".") == 2:
            b.res.info.setdefault(key, value)


def _epoch(read: Callable[[str], int], paths: list[str], seed: int, cpu: list[float] | None = None) -> float:
    """Seconds to read every path once, shuffled, with 8 threads (a data loader's epoch); the
    CPU seconds this process spent on it (every thread) are appended to ``cpu``."""
    import concurrent.futures

    order = list(paths)
    random.Random(seed).shuffle(order)
    start, start_cpu = time.perf_counter(), time.process_time()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        total = sum(pool.map(read, order, chunksize=32))
    elapsed = time.perf_counter() - start
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    assert total > 0
    return elapsed


def _read_plain(path: str) -> int:
    with open(path, "rb") as f:
        return len(f.read())


def case_fsspec(b: Bench) -> None:
    """``artifactfs://`` (fsspec, no FUSE), in this process, against the same files read with
    ``open`` from local disk: an epoch over the small files (8 threads, shuffled) once their blobs
    are verified; a first epoch (fresh cache, page cache dropped) against the mount's; random
    range reads of a big file after its verification against ``os.pread``."""
    sys.path.insert(0, str(ROOT))
    from artifactfs.fsspec_fs import ArtifactFileSystem

    n = 1000 if b.quick else 10000
    src = b.work / "small"
    reg = b.work / "reg-small"
    if not reg.exists():  # made by case_small when it ran first
        make_small(src, n)
        log(src, "bench/small/files", reg)
    rel = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    plain = [str(src / r) for r in rel]
    urls = [f"bench/small/files:v0/{r}" for r in rel]
    runs = max(b.runs, 5)
    print(f"\n## artifactfs:// epoch over {n:,} files of 1-64 KiB (8 threads, shuffled)", flush=True)

    def fresh() -> ArtifactFileSystem:
        ArtifactFileSystem.clear_instance_cache()
        b._n += 1
        return ArtifactFileSystem(registry=str(reg), cache_dir=str(b.work / f"cache{b._n}"))

    firsts: dict[str, list[float]] = {"fsspec_first.artifactfs": [], "fsspec_first.mount": []}
    for i in range(b.runs):
        fs = fresh()

        def read_afs(path: str, fs: ArtifactFileSystem = fs) -> int:
            with fs.open(path) as f:
                return len(f.read())

        drop_caches()
        firsts["fsspec_first.artifactfs"].append(_epoch(read_afs, urls, i))
        fs.close()
        with b.artifactfs(reg) as (mnt, _pid):
            drop_caches()
            firsts["fsspec_first.mount"].append(_epoch(_read_plain, [str(mnt / u) for u in urls], i))
    for name, values in firsts.items():
        b.res.add(name, values)

    fs = fresh()

    def read(path: str) -> int:
        with fs.open(path) as f:
            return len(f.read())

    _epoch(read, urls, 0)  # verified (and in the page cache), as after a first epoch
    _epoch(_read_plain, plain, 0)
    times: dict[str, list[float]] = {"fsspec_epoch.artifactfs": [], "fsspec_epoch.plain": []}
    cpu: dict[str, list[float]] = {"fsspec_epoch_cpu.artifactfs": [], "fsspec_epoch_cpu.plain": []}
    for i in range(runs):  # in turn, the first of the pair alternating
        pair = [("plain", _read_plain, plain), ("artifactfs", read, urls)]
        for name, reader, paths in pair if i % 2 == 0 else pair[::-1]:
            times[f"fsspec_epoch.{name}"].append(_epoch(reader, paths, i, cpu[f"fsspec_epoch_cpu.{name}"]))
    for name, values in [*times.items(), *cpu.items()]:
        b.res.add(name, values)
    fs.close()

    size = (64 if b.quick else 256) * MiB
    big = b.work / "fsbig" / "big.bin"
    make_big(big, size)
    log(big.parent, "bench/fsbig/file", reg)
    print(f"\n## artifactfs:// random range reads of one file of {size // MiB} MiB, after verification", flush=True)
    fs = fresh()
    rnd = random.Random(3)
    fd = os.open(big, os.O_RDONLY)
    try:
        with fs.open("bench/fsbig/file:v0/big.bin") as f:
            assert len(f.read()) == size  # the first read verifies it; the page cache is warm
            for label, length, count in (("4k", 4 * KiB, 20000), ("1m", MiB, 400)):
                offsets = [rnd.randrange(0, size - length) for _ in range(count)]
                rates: dict[str, list[float]] = {"artifactfs": [], "plain": [], "cat_file": []}
                cpu_rates: dict[str, list[float]] = {"artifactfs": [], "plain": [], "cat_file": []}
                for _ in range(runs):
                    # The variants take turns every 20 ranges, so a burst of load on this shared
                    # machine falls on all of them alike.
                    # Wall time, and this thread's CPU time (what the reads cost, whatever else
                    # runs on the machine: the wall time here swings with its load).
                    spent = {variant: 0.0 for variant in rates}
                    used = {variant: 0.0 for variant in rates}
                    for chunk in range(0, count, 20):
                        part = offsets[chunk : chunk + 20]
                        t0, c0 = time.perf_counter(), time.thread_time()
                        for off in part:
                            os.pread(fd, length, off)
                        t1, c1 = time.perf_counter(), time.thread_time()
                        for off in part:
                            f.seek(off)
                            f.read(length)
                        t2, c2 = time.perf_counter(), time.thread_time()
                        for off in part[:5]:
                            fs.cat_file("bench/fsbig/file:v0/big.bin", off, off + length)
                        t3, c3 = time.perf_counter(), time.thread_time()
                        for variant, wall, cpu_s in (
                            ("plain", t1 - t0, c1 - c0),
                            ("artifactfs", t2 - t1, c2 - c1),
                            ("cat_file", (t3 - t2) * 4, (c3 - c2) * 4),
                        ):
                            spent[variant] += wall
                            used[variant] += cpu_s
                    for variant in rates:
                        rates[variant].append(count / spent[variant])
                        cpu_rates[variant].append(count / used[variant])
                for variant, values in rates.items():
                    b.res.add(f"fsspec_range_{label}.{variant}", values, "IOPS")
                for variant, values in cpu_rates.items():
                    b.res.add(f"fsspec_range_{label}_cpu.{variant}", values, "IOPS")
    finally:
        os.close(fd)
        fs.close()
        os.unlink(big)


CASES: dict[str, Callable[[Bench], None]] = {
    "tree": case_tree,
    "small": case_small,
    "big": case_big,
    "rand": case_rand,
    "wandb": case_wandb,
    "fsspec": case_fsspec,
}


def ratios(r: Results) -> None:
    r.ratio("find vs ceiling", "find.artifactfs", "find.ceiling", 0.8)
    r.ratio("ls -lR vs ceiling (xattrs on)", "lsR.artifactfs", "lsR.ceiling", 0.9)
    r.ratio("ls -lR xattrs off vs ceiling ENOSYS", "lsR.artifactfs_noxattr", "lsR.ceiling_noxattr", 0.8)
    r.ratio("find vs plain", "find.artifactfs", "find.plain", None)
    r.ratio("ls -lR vs plain (xattrs on)", "lsR.artifactfs", "lsR.plain", None)
    r.ratio("ls -lR xattrs off vs plain", "lsR.artifactfs_noxattr", "lsR.plain", None)
    r.ratio("small cat, page cache dropped, vs ceiling", "small_cold.artifactfs", "small_cold.ceiling", 0.9)
    r.ratio("small cat, kernel warm, vs ceiling", "small_warm.artifactfs", "small_warm.ceiling", 0.9)
    r.ratio("small cat, dropped, --prefetch, vs ceiling", "small_cold.artifactfs_prefetch", "small_cold.ceiling", 0.9)
    r.ratio("small cat, warm, --prefetch, vs ceiling", "small_warm.artifactfs_prefetch", "small_warm.ceiling", 0.9)
    r.ratio("small cat, first read, vs ceiling dropped", "small_first.artifactfs", "small_cold.ceiling", None)
    r.ratio(
        "small cat, first read, --prefetch, vs ceiling dropped",
        "small_first.artifactfs_prefetch",
        "small_cold.ceiling",
        None,
    )
    r.ratio("small cat, page cache dropped, vs plain", "small_cold.artifactfs", "small_cold.plain", None)
    r.ratio(
        "small cat, page cache dropped, vs cat of the blob files", "small_cold.artifactfs", "small_cold.blobs", None
    )
    r.ratio("small cat, kernel warm, vs plain", "small_warm.artifactfs", "small_warm.plain", None)
    r.ratio("1 GiB page cache dropped vs cold cat", "big_cold.artifactfs", "big_cold.plain", 0.9)
    r.ratio("1 GiB kernel warm vs warm cat", "big_warm.artifactfs", "big_warm.plain", 0.85)
    r.ratio("1 GiB first read vs md5sum", "big_first.artifactfs", "big_md5sum.plain", 0.9)
    r.ratio("1 GiB XXH128 first read vs cold cat", "big_first_xxh128.artifactfs", "big_cold.plain", 0.8)
    r.ratio("4 KiB random, kernel-cached, vs plain warm", "rand_warm.artifactfs", "rand_warm.plain", 0.8)
    r.ratio("4 KiB random, kernel-cached, vs ceiling", "rand_warm.artifactfs", "rand_warm.ceiling", None)
    r.ratio("4 KiB random through the daemon vs ceiling", "rand_daemon.artifactfs", "rand_daemon.ceiling", None)
    r.ratio("1 GiB page cache dropped vs ceiling", "big_cold.artifactfs", "big_cold.ceiling", None)
    r.ratio("1 GiB kernel warm vs ceiling", "big_warm.artifactfs", "big_warm.ceiling", None)
    r.ratio("artifactfs:// epoch of small files vs local disk", "fsspec_epoch.artifactfs", "fsspec_epoch.plain", 0.8)
    r.ratio("artifactfs:// first epoch vs the mount's", "fsspec_first.artifactfs", "fsspec_first.mount", 0.9)
    r.ratio("artifactfs:// 1 MiB range reads vs pread", "fsspec_range_1m.artifactfs", "fsspec_range_1m.plain", 0.9)
    r.ratio("artifactfs:// 4 KiB range reads vs pread", "fsspec_range_4k.artifactfs", "fsspec_range_4k.plain", None)
    r.ratio(
        "artifactfs:// epoch, CPU time, vs local disk", "fsspec_epoch_cpu.artifactfs", "fsspec_epoch_cpu.plain", None
    )
    r.ratio(
        "artifactfs:// 1 MiB ranges, CPU time, vs pread",
        "fsspec_range_1m_cpu.artifactfs",
        "fsspec_range_1m_cpu.plain",
        None,
    )
    r.ratio(
        "artifactfs:// 4 KiB ranges, CPU time, vs pread",
        "fsspec_range_4k_cpu.artifactfs",
        "fsspec_range_4k_cpu.plain",
        None,
    )
    r.ratio("artifactfs:// cat_file 1 MiB ranges vs pread", "fsspec_range_1m.cat_file", "fsspec_range_1m.plain", None)
    r.bound("daemon RSS after find+stat (MB)", "rss.after_find_stat_mb", 300)
    r.ratio("log of tiny files vs wandb add_dir", "log.tiny_files_per_s", "log.wandb_add_dir_files_per_s", None)
    if "log.tiny_files_per_s" in r.figures:
        f = r.figures["log.tiny_files_per_s"]
        r.ratios["log of tiny files (files/s)"] = Ratio(f.median, "log.tiny_files_per_s", "", 5000, absolute=True)


def remote_ratios(r: Results) -> None:
    k = "wandb.cat_1g."
    r.ratio("W&B 1 GiB first read vs the slower of curl and md5sum", k + "mount_s", k + "bound_s", 0.9)
    r.ratio("W&B 1 GiB first read vs SDK download()", k + "mount_s", k + "sdk_download_s", None)
    k = "wandb.small_10k."
    r.ratio("W&B whole artifact, 8 readers, vs SDK download() (>= 2 x: <= 0.5 x its time)", k + "mount_p8_s",
            k + "sdk_download_s", 2.0)  # fmt: skip
    r.ratio("W&B whole artifact, 1 reader, vs SDK download()", k + "mount_p1_s", k + "sdk_download_s", None)
    r.bound("W&B first byte in a 100,000-entry artifact (s)", "wandb.first_byte_100k.first_byte_s", 1.0)
    fetched = r.figures.get("wandb.delta.v1_fetched_bytes")
    changed = r.info.get("wandb.delta.changed_bytes")
    if fetched is not None and changed:
        r.figures["wandb.delta.v1_fetched_per_changed"] = Figure([v / changed for v in fetched.values], "x")
        r.bound("W&B v1 after v0: bytes fetched / bytes changed", "wandb.delta.v1_fetched_per_changed", 1.05)
    r.bound("W&B daemon CPU ms per fetched small file, loopback, 8 readers",
            "wandb.small_10k.cpu_ms_per_file_mount_p8_s", 1.0)  # fmt: skip
    k = "wandb.wan."  # scripts/bench_wandb.py part 4: the emulated WAN (--wan)
    r.ratio("WAN epoch 1 vs SDK download(small) + epoch 1", k + "mount_epoch1_s", k + "sdk_then_epoch1_s", 2.0)
    r.ratio("WAN first batch vs SDK", k + "mount_first_batch_s", k + "sdk_first_batch_s", 8.0)
    r.ratio("WAN epoch 2 vs the pyfuse3 ceiling", k + "mount_epoch2_s", k + "ceiling_epoch2_s", 0.9)
    r.ratio("WAN model.bin first read vs SDK download()", k + "mount_model_s", k + "sdk_model_s", 2.0)
    r.ratio("WAN artifactfs prefetch vs SDK download()", k + "prefetch_all_s", k + "sdk_all_s", 2.0)
    r.ratio("WAN Artifact.download() vs SDK download()", k + "ours_download_all_s", k + "sdk_all_s", 2.0)
    r.bound("WAN sparse: bytes fetched / bytes read", k + "sparse_fetched_per_read", 1.2)


def machine() -> dict[str, Any]:
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    fuse = subprocess.run(["fusermount3", "-V"], capture_output=True, text=True).stdout.strip()
    import pyfuse3

    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyfuse3": pyfuse3.__version__,
        "fusermount3": fuse,
        "load_before": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller data and fewer runs (under 90 s)")
    parser.add_argument(
        "--only", help=f"comma-separated cases: {', '.join(CASES)} (default: all but wandb, which takes ~40 min)"
    )
    parser.add_argument("--runs", type=int, help="runs per case (default 3; --quick 2)")
    parser.add_argument("--dir", default="/var/tmp", help="where to put the data (a real disk, not tmpfs)")
    parser.add_argument("--json", metavar="PATH", help="write the figures and ratios as JSON")
    parser.add_argument("--profile", metavar="DIR", help="cProfile every artifactfs daemon into DIR")
    parser.add_argument(
        "--wan",
        metavar="LAT_MS,MBPS",
        help="the emulated WAN of the W&B cases (default 30,100): every request delayed, every connection capped",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="only the scale cases (scripts/bench_scale.py: a 1,000,000-entry version on W&B and in a local "
        "registry, three of each walked, the index builder on 10,000,000 entries; ~25 min); its options follow "
        "--scale's own (--entries, --builder-entries, --only, --dir)",
    )
    args, rest = parser.parse_known_args()
    if args.scale:
        os.execv(
            PY, [PY, str(ROOT / "scripts" / "bench_scale.py"), *rest, *(["--json", args.json] if args.json else [])]
        )
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if os.geteuid() != 0:
        sys.exit("scripts/bench needs root (it drops the page cache)")
    profile = Path(args.profile).resolve() if args.profile else None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    info = machine()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="artifactfs-bench.", dir=args.dir) as tmp:
        b = Bench(Path(tmp), args.runs or (2 if args.quick else 3), args.quick, profile, args.wan)
        print(f"# artifactfs bench, {info['date']}, {info['cores']} cores, {info['kernel']}, data in {tmp}")
        try:
            only = args.only or "tree,small,big,rand,fsspec"
            for name in only.split(","):
                CASES[name](b)
        finally:
            with open("/proc/mounts") as f:
                for line in f:
                    mnt = line.split()[1]
                    if mnt.startswith(tmp):
                        subprocess.run(["fusermount3", "-u", "-z", mnt], check=False)
    ratios(b.res)
    remote_ratios(b.res)
    info["seconds"] = round(time.perf_counter() - started, 1)
    print(f"\n# ratios (speed: baseline time / artifactfs time), {info['seconds']} s\n")
    print(b.res.table())
    if args.json:
        Path(args.json).write_text(json.dumps(b.res.to_json(info), indent=2) + "\n")


if __name__ == "__main__":
    main()
