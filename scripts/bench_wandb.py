"""W&B figures (issue 6): a FUSE mount of a W&B server against curl and the wandb SDK.

Four comparisons, every figure measured in this run against the same server, ratios between
figures of this run (the machine drifts between runs); 1-3 on loopback, 4 on an emulated WAN:

1. ``cat`` of one big file (1 GiB; 256 MiB with ``--quick``) through a fresh mount, against
   ``curl`` of the same presigned URL with the mount's parallelism (``artifactfs.http``: 16 MiB
   ranges, 4 at a time, for objects of 64 MiB or more), against one curl stream, against the
   SDK's ``Artifact.download()``, and against ``md5sum`` of the same bytes on local disk: the
   mount hashes every byte before serving it, so its bound is the slower of the download and
   the hash.
2. ``cat`` of 10,000 small files (1-64 KiB, nested directories; 2,000 with ``--quick``) through
   a fresh mount, one reader and 8 (the mount fetches under a limiter of 8 threads), and one
   reader with ``--prefetch 8`` where the mount has it, against curl of the same URLs with the
   same parallelism and against ``download()``.
3. From ``artifactfs mount`` (background mode: the command returns once the mount answers) to
   the first byte of one file of a 100,000-entry artifact (20,000 with ``--quick``), cold
   cache (the manifest must be fetched), against ``download()`` of the whole artifact, capped.

4. ``--wan LAT_MS,MBPS`` (default 30,100): the W&B test server and nginx (its blobs) behind
   ``scripts/wan_proxy.py``, which delays every request by LAT_MS and caps each connection's
   body rate at MBPS.  One artifact of 4,000 files of 1-64 KiB under ``small/`` (50
   directories) and a 512 MiB ``model.bin`` (1,000 files and 128 MiB with ``--quick``); an
   *epoch* is every small file read once, shuffled, by 8 threads.  Cases, each against the SDK
   in the same run: ``download(path_prefix="small")`` then epoch 1 on local disk against epoch 1
   on a fresh mount; the first batch (64 files) ready; epoch 2 (against local disk and the
   pyfuse3 ceiling, ``scripts/ceiling.py``, over the same files); ``model.bin``: ``download()``
   of it against ``md5sum`` on a fresh mount and ``curl`` with the mount's parallel ranges;
   the whole version: ``download()`` against ``artifactfs prefetch`` and our
   ``Artifact.download()``; sparse use (1% of a 10,000-file version at random: bytes fetched
   over bytes read); a scan of one directory of many (``cp -r``, ``tar``: bytes fetched over
   the directory's).  The daemon's CPU seconds per fetched file (``/proc/PID/stat``) are printed
   here and for part 2 (loopback).  ``--cases`` runs some of these cases only (``model`` for
   the model file, ``batch`` for epoch 1 and the first batch without epoch 2, and so on).

The server is tests/wandb_server.py, in this process, with every file in memory.  It is pure
Python (a ThreadingHTTPServer) sharing this machine's cores with the clients, so curl's figures
are also the server's ceiling: nothing can read faster than curl does here.  Two of its
per-request costs that a real server does not have are memoised below (see ``_MemoMd5``).

Each table line: the median of N runs (3; 1 with ``--quick``) with min-max, the throughput, the
median's ratio to the section's reference line (time / reference time: above 1 is slower), and
the median CPU seconds of the client (the commands run, plus the mount's daemon; the SDK's whole
process) and of the server (this process).  The machine is shared: the load average is printed
before each part, and CPU seconds are the steadier figures when it is high.

Each run uses a fresh mount with an empty cache directory and an empty SDK cache, and (as
root) drops the page cache before each timed command.  Mounts are unmounted with
``fusermount3 -u`` (``-z`` if that fails) and their daemons waited for; only processes started
here are ever killed.

Run: ``.venv/bin/python scripts/bench_wandb.py [--quick] [--runs N] [--json PATH]`` (as root),
or ``scripts/bench --only wandb``; about 40 minutes on 2 cores (the SDK's download of the
100,000 files is most of it), 5 with ``--quick``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import wandb_server  # noqa: E402  (tests/ is put on sys.path just above)
from wandb_server import ArtifactRecord, WandbServer  # noqa: E402

from artifactfs.manifest import digest_bytes, hex_from_b64  # noqa: E402
from artifactfs.transfer import Policy  # noqa: E402

MiB = 1 << 20
KiB = 1 << 10
PY = sys.executable
KEY = "b3nch" * 8  # 40 characters: the SDK checks the length
ENTITY, PROJECT = "acme", "bench"
PART = 16 * MiB  # artifactfs.transfer.Policy: part_size, workers, parallel_threshold
STREAMS = Policy().workers  # curl gets the mount's parallel ranges
READERS = 8  # artifactfs.meta.DEFAULT_THREADS: the mount's fetch limiter


# ----------------------------------------------------------------------------- the server


class _MemoMd5:
    """Stands in for ``hashlib`` and ``digest_bytes`` inside tests/wandb_server.py.

    The test server hashes a whole blob on every request (the ETag of a range request, the
    ``md5`` field of every file URL it lists): 2 s of its one GIL per request for a 1 GiB blob,
    a cost no real server has, which would make it the bottleneck of every big-file figure.
    Digests of large objects are computed once per object (the object is kept, so its id is not
    reused; the big part sends one HEAD before timing anything, so no timed request pays for the
    first one); small objects are hashed as before.
    """

    MIN = 1 * MiB

    def __init__(self) -> None:
        self._md5: dict[int, tuple[bytes, Any]] = {}
        self._digest: dict[tuple[int, str], tuple[bytes, str]] = {}

    def md5(self, data: bytes = b"", *, usedforsecurity: bool = True) -> Any:
        if len(data) < self.MIN:
            return hashlib.md5(data, usedforsecurity=usedforsecurity)
        hit = self._md5.get(id(data))
        if hit is None or hit[0] is not data:
            hit = (data, hashlib.md5(data, usedforsecurity=False))
            self._md5[id(data)] = hit
        return hit[1].copy()

    def digest_bytes(self, data: bytes, alg: str = "MD5") -> str:
        if len(data) < self.MIN:
            return digest_bytes(data, alg)
        hit = self._digest.get((id(data), alg))
        if hit is None or hit[0] is not data:
            hit = (data, digest_bytes(data, alg))
            self._digest[(id(data), alg)] = hit
        return hit[1]

    def __getattr__(self, name: str) -> Any:
        return getattr(hashlib, name)


def start_server() -> WandbServer:
    memo = _MemoMd5()
    setattr(wandb_server, "hashlib", memo)  # noqa: B010  (patching a module, on purpose)
    setattr(wandb_server, "digest_bytes", memo.digest_bytes)  # noqa: B010
    return WandbServer(api_key=KEY, viewer_entity=ENTITY, url_ttl=24 * 3600.0).start()


def file_url(server: WandbServer, rec: ArtifactRecord, path: str) -> str:
    """The presigned URL the server hands out for ``path`` (as in ``WandbServer._file_node``)."""
    hexkey = hex_from_b64(rec.file_digests[path])
    return server.url + server.sign(f"/files/{hexkey}/{urllib.parse.quote(path)}")


def small_files(n: int, seed: int) -> dict[str, bytes]:
    """``n`` files of 1-64 KiB, 100 per directory, two levels deep; distinct contents."""
    rng = random.Random(seed)
    pool = os.urandom(64 * KiB + 4096)
    files = {}
    for i in range(n):
        size = rng.randint(1 * KiB, 64 * KiB)
        off = rng.randrange(4096)
        files[f"d{i // 1000:02d}/s{(i // 100) % 10}/f{i:06d}.bin"] = (
            i.to_bytes(8, "little") + pool[off : off + size - 8]
        )
    return files


def tiny_files(n: int, seed: int) -> dict[str, bytes]:
    """``n`` files of 16-512 bytes, 100 per directory, two levels deep; distinct contents."""
    rng = random.Random(seed)
    return {
        f"d{i // 10000:02d}/s{(i // 100) % 100:02d}/f{i:06d}.txt": f"{i}\n".encode() * rng.randint(2, 64)
        for i in range(n)
    }


# ----------------------------------------------------------------------------- measuring


def can_drop() -> bool:
    return os.geteuid() == 0


def drop_caches() -> None:
    if not can_drop():
        return
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def sh(cmd: str) -> None:
    """``cmd`` in bash, its output discarded (what is timed is reading, not a terminal)."""
    subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], check=True, stdout=subprocess.DEVNULL)


def proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system, all threads) of a running process, 0 if it is gone."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    """One timed command: wall seconds, the client's CPU seconds (the children waited for, plus
    the mount's daemon when there is one) and the server's (this process: the test server)."""

    seconds: float
    client_cpu: float | None = None
    server_cpu: float | None = None


@contextlib.contextmanager
def measuring(daemon: int | None = None, drop: bool = True) -> Iterator[list[Sample]]:
    """Time the ``with`` body; the Sample is appended to the yielded list when it ends."""
    out: list[Sample] = []
    if drop:
        drop_caches()
    d0 = proc_cpu(daemon)
    s0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    yield out
    seconds = time.perf_counter() - start
    s1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    client = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime + proc_cpu(daemon) - d0
    out.append(Sample(seconds, client, s1.ru_utime + s1.ru_stime - s0.ru_utime - s0.ru_stime))


def timed_sh(cmd: str, daemon: int | None = None, drop: bool = True) -> Sample:
    """Run ``cmd`` (page cache dropped first when ``drop`` and root) and measure it."""
    with measuring(daemon, drop) as got:
        sh(cmd)
    return got[0]


@dataclass
class Figure:
    key: str
    label: str
    nbytes: int | None = None
    samples: list[Sample] = field(default_factory=list)
    capped: bool = False  # the samples hold the cap: the real time is longer

    @property
    def runs(self) -> list[float]:
        return [s.seconds for s in self.samples]

    def median(self) -> float:
        return statistics.median(self.runs)

    def cpu(self, which: str) -> float | None:
        values = [getattr(s, which) for s in self.samples if getattr(s, which) is not None]
        return statistics.median(values) if values else None


class Figures:
    def __init__(self) -> None:
        self.all: dict[str, Figure] = {}
        self.info: dict[str, Any] = {}

    def add(
        self, key: str, label: str, sample: Sample | float, nbytes: int | None = None, capped: bool = False
    ) -> None:
        fig = self.all.setdefault(key, Figure(key, label, nbytes))
        fig.samples.append(sample if isinstance(sample, Sample) else Sample(sample))
        fig.capped = fig.capped or capped

    def table(self, keys: list[str], ref: str) -> None:
        """One line per figure: median (min-max), throughput, time / the reference's time, and
        the medians of the client's and the server's CPU seconds."""
        base = self.all.get(ref)
        head = "/ " + ref.rsplit(".", 1)[-1]
        print(
            f"{'':64s} {'median':>9s} {'(min - max)':>15s} {'MiB/s':>6s} {head:>13s}",
            f"{'CPU: client':>11s} {'server':>6s}",
        )
        for key in keys:
            fig = self.all.get(key)
            if fig is None:
                continue
            med = fig.median()
            gt = ">" if fig.capped else " "
            spread = f"({min(fig.runs):.2f}-{max(fig.runs):.2f})"
            rate = f"{fig.nbytes / MiB / med:6.0f}" if fig.nbytes else ""
            ratio = f"{gt}{med / base.median():.2f}x" if base is not None and key != ref else ""
            client, server = fig.cpu("client_cpu"), fig.cpu("server_cpu")
            cpu = f"{client:11.2f}" if client is not None else " " * 11
            cpu += f" {server:6.2f}" if server is not None else ""
            print(f"{fig.label:64s} {gt}{med:7.2f} s {spread:>15s} {rate:>6s} {ratio:>13s} {cpu}")

    def to_json(self) -> dict[str, Any]:
        """``name: median seconds`` (None when capped), with ``name.runs``, ``name.capped_at``
        and the CPU medians as ``name.client_cpu_s`` / ``name.server_cpu_s``."""
        out: dict[str, Any] = dict(self.info)
        for key, fig in self.all.items():
            out[key] = None if fig.capped else round(fig.median(), 4)
            out[key + ".runs"] = [round(r, 4) for r in fig.runs]
            if fig.capped:
                out[key + ".capped_at"] = round(fig.median(), 1)
            for which in ("client_cpu", "server_cpu"):
                value = fig.cpu(which)
                if value is not None:
                    out[f"{key}.{which}_s"] = round(value, 3)
        return out


# ----------------------------------------------------------------------------- clients


def base_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", NETRC=str(work / "no-netrc"), WANDB_API_KEY=KEY)
    return env


class Mount:
    """``artifactfs mount wandb:URL`` in background mode, fresh cache and empty SDK cache."""

    def __init__(
        self, server: WandbServer, work: Path, name: str, log_level: str = "WARNING", extra: tuple[str, ...] = ()
    ) -> None:
        self.mnt = work / f"{name}-mnt"
        self.cache = work / f"{name}-cache"
        self.sdk_cache = work / f"{name}-wandb-cache"
        for d in (self.mnt, self.sdk_cache):
            d.mkdir()
        env = base_env(work)
        env["WANDB_CACHE_DIR"] = str(self.sdk_cache)
        cmd = [PY, "-m", "artifactfs", "mount", f"wandb:{server.url}", str(self.mnt), "--cache-dir", str(self.cache)]
        start = time.perf_counter()
        proc = subprocess.run([*cmd, "--log-level", log_level, *extra], env=env, capture_output=True, text=True)
        self.mount_s = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"artifactfs mount failed ({proc.returncode}): {proc.stderr.strip()}")
        match = re.search(r"\(pid (\d+)\)", proc.stderr)
        self.pid = int(match.group(1)) if match else None
        self.log_file = self.cache / "mount.log"

    def stats(self) -> dict[str, Any]:
        return json.loads(os.getxattr(self.mnt, "user.artifactfs.stats"))  # type: ignore[no-any-return]

    def close(self) -> None:
        if subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True).returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        if self.pid is not None:  # the daemon this mount started: wait for it, kill it if it lingers
            deadline = time.monotonic() + 30
            while _alive(self.pid, str(self.mnt)) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(self.pid, str(self.mnt)):
                os.kill(self.pid, signal.SIGKILL)
        shutil.rmtree(self.cache, ignore_errors=True)
        shutil.rmtree(self.sdk_cache, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.mnt.rmdir()


def _mount_has(option: str) -> bool:
    """Whether this artifactfs's ``mount`` knows ``option`` (the bench also measures older ones)."""
    out = subprocess.run([PY, "-m", "artifactfs", "mount", "--help"], capture_output=True, text=True).stdout
    return option in out


def _alive(pid: int, mnt: str) -> bool:
    """Whether ``pid`` is still our daemon (its command line names the mount point)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return mnt.encode() in f.read()
    except OSError:
        return False


@contextlib.contextmanager
def mounted(server: WandbServer, work: Path, name: str, *extra: str) -> Iterator[Mount]:
    m = Mount(server, work, name, extra=extra)
    try:
        yield m
    finally:
        m.close()


SDK_DOWNLOAD = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    import wandb
    api = wandb.Api()
    art = api.artifact(sys.argv[1])
    t1 = time.perf_counter()
    print(json.dumps({"setup_s": t1 - t0}), flush=True)
    art.download(sys.argv[2], **({"path_prefix": sys.argv[3]} if len(sys.argv) > 3 else {}))
    t2 = time.perf_counter()
    print(json.dumps({"download_s": t2 - t1}), flush=True)
    """
)


@dataclass
class SdkResult:
    download: Sample  # the download() call, timed inside the process (the cap when capped)
    process: Sample  # the whole process: interpreter, import, Api(), artifact(), download()
    capped: bool


def sdk_download(
    server: WandbServer, work: Path, name: str, root: Path, cap: float, path_prefix: str | None = None
) -> SdkResult:
    """``wandb.Api().artifact(name).download(root)`` in a subprocess with an empty SDK cache.

    ``download()`` gets ``cap`` seconds from its start; after that the process group (the
    process and anything it started, all in a session of their own) is killed and the result
    is capped.  CPU seconds are the whole process's."""
    tmp = work / "sdk-home"
    tmp.mkdir()
    env = base_env(work)
    env.update(
        WANDB_BASE_URL=server.url,
        WANDB_CACHE_DIR=str(tmp / "cache"),
        WANDB_DATA_DIR=str(tmp / "data"),
        WANDB_CONFIG_DIR=str(tmp / "config"),
        WANDB_ARTIFACT_DIR=str(tmp / "artifacts"),
        HOME=str(tmp / "home"),
        NETRC=str(tmp / "home" / ".netrc"),
        WANDB_SILENT="true",
        WANDB_MODE="online",
        WANDB_DISABLE_CODE="true",
    )
    capped = False
    inside: float | None = None
    try:
        with measuring() as got:
            proc = subprocess.Popen(
                [PY, "-c", SDK_DOWNLOAD, name, str(root), *([path_prefix] if path_prefix else [])],
                env=env,
                cwd=tmp,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            try:
                assert proc.stdout is not None and proc.stderr is not None
                if not proc.stdout.readline():  # set up (import, Api, artifact): the cap starts now
                    proc.wait(timeout=60)
                    raise RuntimeError(f"SDK failed ({proc.returncode}): {proc.stderr.read()[-3000:]}")
                try:
                    out, err = proc.communicate(timeout=cap)
                except subprocess.TimeoutExpired:
                    capped = True
                    _kill_group(proc.pid)
                    proc.communicate()
                else:
                    if proc.returncode != 0:
                        raise RuntimeError(f"SDK failed ({proc.returncode}): {err[-3000:]}")
                    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
                    inside = float(json.loads(lines[-1])["download_s"])
            finally:
                if proc.poll() is None:
                    _kill_group(proc.pid)
                    proc.wait()
                _kill_group(proc.pid)  # anything the SDK left behind in its session
        whole = got[0]
        download = Sample(cap if capped or inside is None else inside, whole.client_cpu, whole.server_cpu)
        return SdkResult(download, whole, capped)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    """SIGKILL every process of process group ``pgid`` (one we made with start_new_session)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue


def curl_config(path: Path, items: list[tuple[str, str, str | None]], create_dirs: bool = False) -> None:
    """A curl config: one group per (url, output, range).  (In parallel mode the progress meter
    obeys the groups' ``no-progress-meter``; ``silent`` there would turn it on again.)"""
    lines = []
    for url, out, rng in items:
        lines += ["no-progress-meter", "fail", f'url = "{url}"', f'output = "{out}"']
        if rng:
            lines.append(f'range = "{rng}"')
        if create_dirs:  # per group, like every option but the global ones
            lines.append("create-dirs")
        lines.append("next")
    path.write_text("\n".join(lines[:-1]) + "\n")


def parallel(n: int) -> str:
    return f"--parallel --parallel-max {n} " if n > 1 else ""


# ----------------------------------------------------------------------------- 1. one big file


def bench_big(server: WandbServer, work: Path, figs: Figures, runs: int, quick: bool, cap: float) -> None:
    size = (256 if quick else 1024) * MiB
    data = os.urandom(size)
    rec = server.add_artifact(ENTITY, PROJECT, "big", "model", {"big.bin": data})
    url = file_url(server, rec, "big.bin")
    # The test server hashes the blob for its ETag on the first request (memoised afterwards):
    # a HEAD now, so that no timed request pays for it.
    urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=120).close()
    expect = hashlib.md5(data).hexdigest()
    local = work / "big.bin"
    local.write_bytes(data)
    del data
    parts = [(a, min(a + PART, size) - 1) for a in range(0, size, PART)]
    null_cfg, files_cfg, one_cfg = work / "big-null.curl", work / "big-files.curl", work / "big-one.curl"
    partdir, one = work / "big-parts", work / "big-one.bin"
    curl_config(null_cfg, [(url, "/dev/null", f"{a}-{b}") for a, b in parts])
    curl_config(files_cfg, [(url, str(partdir / f"p{i:04d}"), f"{a}-{b}") for i, (a, b) in enumerate(parts)])
    curl_config(one_cfg, [(url, str(one), None)])
    ranges = f"curl, {len(parts)} ranges of 16 MiB, {STREAMS} at a time"
    figs.info["wandb.cat_1g.bytes"] = size
    print(f"\n## 1. cold cat of one {size // MiB} MiB file ({runs} run(s))", flush=True)
    k = "wandb.cat_1g."
    for run in range(runs):
        figs.add(k + "md5sum_cold_s", "md5sum of the file on local disk, cold", timed_sh(f"md5sum {local}"), size)
        warm = timed_sh(f"md5sum {local}", drop=False)
        figs.add(k + "md5sum_warm_s", "md5sum of the file on local disk, page-cached", warm, size)
        figs.add(k + "curl_null_s", ranges + " -> /dev/null", timed_sh(f"curl {parallel(STREAMS)}-K {null_cfg}"), size)
        partdir.mkdir()
        figs.add(k + "curl_files_s", ranges + " -> files", timed_sh(f"curl {parallel(STREAMS)}-K {files_cfg}"), size)
        if run == 0:
            got = subprocess.run(f"cat {partdir}/p* | md5sum", shell=True, capture_output=True, text=True).stdout
            assert got.split()[0] == expect, "curl ranges: wrong bytes"
        shutil.rmtree(partdir)
        figs.add(k + "curl_one_s", "curl, one stream -> file", timed_sh(f"curl -K {one_cfg}"), size)
        one.unlink()

        with mounted(server, work, "big") as m:
            figs.add(k + "mount_cmd_s", "artifactfs mount (the command, background mode)", m.mount_s)
            path = m.mnt / ENTITY / PROJECT / "big:v0" / "big.bin"
            figs.add(k + "mount_s", "artifactfs mount: cat, fresh cache", timed_sh(f"cat {path}", m.pid), size)
            if run == 0:
                print(f"mount stats after run 1: { {n: v for n, v in m.stats().items() if n != 'latency'} }")
                got = subprocess.run(["md5sum", str(path)], capture_output=True, text=True, check=True).stdout
                assert got.split()[0] == expect, "mount: wrong bytes"

        root = work / "big-sdk"
        res = sdk_download(server, work, f"{ENTITY}/{PROJECT}/big:v0", root, cap)
        figs.add(
            k + "sdk_download_s", "SDK download() (timed inside; CPU: whole process)", res.download, size, res.capped
        )
        figs.add(k + "sdk_process_s", "SDK whole process (python -c: import, Api, download)", res.process)
        if run == 0 and not res.capped:
            got = subprocess.run(["md5sum", str(root / "big.bin")], capture_output=True, text=True).stdout
            assert got.split()[0] == expect, "SDK: wrong bytes"
        shutil.rmtree(root, ignore_errors=True)
        print(f"run {run + 1}/{runs} done", flush=True)
    local.unlink()

    bound = max(figs.all[k + "curl_files_s"].median(), figs.all[k + "md5sum_warm_s"].median())
    figs.add(k + "bound_s", "bound: the slower of curl -> files and md5sum (warm)", bound, size)
    keys = ["mount_cmd_s", "mount_s", "bound_s", "curl_null_s", "curl_files_s", "curl_one_s"]
    keys += ["md5sum_cold_s", "md5sum_warm_s", "sdk_download_s", "sdk_process_s"]
    print()
    figs.table([k + x for x in keys], k + "mount_s")
    print(f"server ceiling (curl -> /dev/null): {size / MiB / figs.all[k + 'curl_null_s'].median():.0f} MiB/s")


# ----------------------------------------------------------------------------- 2. small files


def bench_small(server: WandbServer, work: Path, figs: Figures, runs: int, quick: bool, cap: float) -> None:
    n = 2000 if quick else 10000
    files = small_files(n, seed=6)
    total = sum(len(b) for b in files.values())
    rec = server.add_artifact(ENTITY, PROJECT, "small", "dataset", files)
    del files
    out = work / "small-curl"
    cfg = work / "small.curl"
    curl_config(cfg, [(file_url(server, rec, p), str(out / p), None) for p in sorted(rec.files)], create_dirs=True)
    figs.info["wandb.small_10k.files"] = n
    figs.info["wandb.small_10k.bytes"] = total
    print(
        f"\n## 2. cat of {n} files of 1-64 KiB ({total / MiB:.0f} MiB, 100 per directory) ({runs} run(s))", flush=True
    )
    k = "wandb.small_10k."
    variants: list[tuple[int, tuple[str, ...]]] = [(1, ()), (READERS, ())]
    if _mount_has("--prefetch"):  # the mount's answer to one reader: it fetches the next files itself
        variants.append((1, ("--prefetch", str(READERS))))
    for run in range(runs):
        for readers in (1, READERS):
            out.mkdir()
            sample = timed_sh(f"curl {parallel(readers)}-K {cfg}")
            figs.add(k + f"curl_p{readers}_s", f"curl, {readers} at a time -> files", sample, total)
            if run == 0:
                got = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
                assert got == total, f"curl: {got} bytes, not {total}"
            shutil.rmtree(out)
        for readers, extra in variants:
            with mounted(server, work, "small", *extra) as m:
                root = m.mnt / ENTITY / PROJECT / "small:v0"
                xargs = "xargs -0 cat" if readers == 1 else f"xargs -0 -P{readers} -n 64 cat"
                cpu0, fetches0 = proc_cpu(m.pid), m.stats()["fetches"]
                sample = timed_sh(f"find {root} -type f -print0 | {xargs}", m.pid)
                cpu1, fetches1 = proc_cpu(m.pid), m.stats()["fetches"]
                key = f"mount_p{readers}" + "".join(a.strip("-") for a in extra) + "_s"
                label = f"artifactfs mount{''.join(' ' + a for a in extra)}: find | {xargs}, fresh cache"
                figs.add(k + key, label, sample, total)
                if fetches1 > fetches0:  # daemon CPU (from /proc/PID/stat) over files it fetched
                    per_file = 1000 * (cpu1 - cpu0) / (fetches1 - fetches0)
                    figs.add(k + "cpu_ms_per_file_" + key, f"  daemon CPU ms per fetched file ({key})", per_file)
                if run == 0 and readers == READERS:
                    stats = {n: v for n, v in m.stats().items() if n != "latency"}
                    print(f"mount stats after run 1 (-P{readers}): {stats}")
        root = work / "small-sdk"
        res = sdk_download(server, work, f"{ENTITY}/{PROJECT}/small:v0", root, cap)
        figs.add(
            k + "sdk_download_s", "SDK download() (timed inside; CPU: whole process)", res.download, total, res.capped
        )
        figs.add(k + "sdk_process_s", "SDK whole process", res.process)
        if run == 0 and not res.capped:
            got = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
            assert got == total, f"SDK: {got} bytes, not {total}"
        shutil.rmtree(root, ignore_errors=True)
        print(f"run {run + 1}/{runs} done", flush=True)
    keys = ["mount_p1_s", f"mount_p1prefetch{READERS}_s", f"mount_p{READERS}_s", "curl_p1_s", f"curl_p{READERS}_s"]
    keys += ["sdk_download_s", "sdk_process_s"]
    print()
    figs.table([k + x for x in keys], k + f"mount_p{READERS}_s")
    for key, fig in figs.all.items():
        if key.startswith(k + "cpu_ms_per_file_"):
            print(f"{fig.label:64s} {fig.median():7.2f} ms  (target <= 1 ms)")
    best = min(figs.all[k + f"curl_p{r}_s"].median() for r in (1, READERS))
    print(f"server ceiling (curl, the faster of 1 and {READERS} at a time): {n / best:.0f} files/s")


# ----------------------------------------------------------------------------- 3. first byte


def bench_many(server: WandbServer, work: Path, figs: Figures, runs: int, quick: bool, cap: float) -> None:
    n = 20000 if quick else 100000
    rec = server.add_artifact(ENTITY, PROJECT, "many", "dataset", tiny_files(n, seed=7))
    first = sorted(rec.files)[0]
    figs.info["wandb.first_byte_100k.entries"] = n
    figs.info["wandb.first_byte_100k.manifest_bytes"] = len(rec.manifest_bytes)
    print(
        f"\n## 3. first byte of one file of a {n}-entry artifact (manifest {len(rec.manifest_bytes) / MiB:.1f} MiB), "
        f"from the mount command, cold; SDK capped at {cap:.0f} s ({runs} run(s))",
        flush=True,
    )
    k = "wandb.first_byte_100k."
    sdk_capped = False
    for run in range(runs):
        m: Mount | None = None
        try:
            with measuring() as got:  # the page cache dropped, then the mount command starts
                m = Mount(server, work, "many")
                start = time.perf_counter()
                sh(f"head -c1 {m.mnt / ENTITY / PROJECT / 'many:v0' / first} >/dev/null")
                head_s = time.perf_counter() - start
                daemon_cpu = proc_cpu(m.pid)
        finally:
            if m is not None:
                m.close()
        total = got[0]
        client = (total.client_cpu or 0.0) + daemon_cpu  # the daemon is no child of ours
        label = "artifactfs mount + head -c1 of one file (total)"
        figs.add(k + "first_byte_s", label, Sample(total.seconds, client, total.server_cpu))
        figs.add(k + "mount_cmd_s", "  of which the mount command (background mode)", m.mount_s)
        figs.add(k + "after_mount_s", "  of which head -c1 after the mount returned", head_s)
        if sdk_capped:
            print(f"run {run + 1}/{runs}: SDK skipped (capped in an earlier run)")
        else:
            root = work / "many-sdk"
            res = sdk_download(server, work, f"{ENTITY}/{PROJECT}/many:v0", root, cap)
            figs.add(k + "sdk_download_s", f"SDK download() of all {n} files", res.download, None, res.capped)
            if not res.capped:
                figs.add(k + "sdk_process_s", "SDK whole process", res.process)
            sdk_capped = res.capped
            shutil.rmtree(root, ignore_errors=True)
        print(f"run {run + 1}/{runs} done", flush=True)
    print()
    keys = ["first_byte_s", "mount_cmd_s", "after_mount_s", "sdk_download_s", "sdk_process_s"]
    figs.table([k + x for x in keys], k + "first_byte_s")


# ----------------------------------------------------------------------------- 4. an emulated WAN

WAN = (30.0, 100.0)  # --wan LAT_MS,MBPS: every request delayed, every connection's body rate capped
# --cases: which cases of part 'wan' run.  "batch" is "epoch" without the epoch-2 figures (the
# SDK's download(small) and epoch 1 on disk, the mount's epoch 1 with its first batch).
WAN_CASES = ("epoch", "batch", "model", "version", "sparse", "scan")
CASES: set[str] = set(WAN_CASES)
BATCH = 64  # the first batch of a data loader

EPOCH = textwrap.dedent(
    """
    import json, os, random, sys, threading, time
    root, listing, seed, threads, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    paths = [os.path.join(root, p) for p in open(listing).read().split("\\n") if p]
    random.Random(seed).shuffle(paths)
    lock = threading.Lock()
    state = {"next": 0, "done": 0, "bytes": 0, "first": None}
    start = time.perf_counter()

    def worker():
        while True:
            with lock:
                i = state["next"]
                state["next"] += 1
            if i >= len(paths):
                return
            with open(paths[i], "rb") as f:
                n = 0
                while True:
                    data = f.read(1 << 20)
                    if not data:
                        break
                    n += len(data)
            with lock:
                state["done"] += 1
                state["bytes"] += n
                if state["done"] == min(batch, len(paths)):
                    state["first"] = time.perf_counter() - start

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(json.dumps({"epoch_s": time.perf_counter() - start, "first_s": state["first"], "bytes": state["bytes"]}))
    """
)


def epoch(
    root: Path, listing: Path, seed: int, daemon: int | None = None, drop: bool = True
) -> tuple[Sample, dict[str, Any]]:
    """Every file of ``listing`` (paths under ``root``) read once, shuffled, by READERS threads."""
    with measuring(daemon, drop) as got:
        out = subprocess.run(
            [PY, "-c", EPOCH, str(root), str(listing), str(seed), str(READERS), str(BATCH)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return Sample(result["epoch_s"], got[0].client_cpu, got[0].server_cpu), result


@contextlib.contextmanager
def wan_server(work: Path, latency_ms: float, mbps: float) -> Iterator[tuple[WandbServer, str]]:
    """A W&B test server and (when installed) nginx for its blobs, each behind
    scripts/wan_proxy.py: ``server.url`` is the proxy's, and so is every file URL it hands out.
    Yields the server and what serves blobs ("nginx" or "python")."""
    memo = _MemoMd5()
    setattr(wandb_server, "hashlib", memo)  # noqa: B010
    setattr(wandb_server, "digest_bytes", memo.digest_bytes)  # noqa: B010
    server = WandbServer(api_key=KEY, viewer_entity=ENTITY, url_ttl=24 * 3600.0).start()
    nginx: Any = None
    proxy: subprocess.Popen[str] | None = None
    try:
        if shutil.which("nginx") is not None:
            from nginx_blobs import Nginx  # type: ignore[import-not-found]  # scripts/nginx_blobs.py

            nginx = Nginx(work)
            if os.geteuid() == 0:  # it stands for a remote server: see scripts/wan_proxy.py's priority
                os.setpriority(os.PRIO_PROCESS, nginx.proc.pid, -10)
        direct = server.url
        blobs = nginx.url if nginx is not None else direct
        proxy = subprocess.Popen(
            [PY, str(ROOT / "scripts" / "wan_proxy.py"), "--latency-ms", str(latency_ms), "--mbps", str(mbps),
             direct.rpartition("//")[2], blobs.rpartition("//")[2]],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert proxy.stdout is not None
        line = proxy.stdout.readline().split()
        if not line or line[0] != "ports":
            raise RuntimeError("scripts/wan_proxy.py did not start")
        api_url, blob_url = (f"http://127.0.0.1:{p}" for p in line[1:3])
        server.url = api_url  # the manifest URLs it hands out, and what clients are told
        add, node = server.add_artifact, server._file_node

        def add_artifact(*args: Any, **kwargs: Any) -> Any:
            rec = add(*args, **kwargs)
            if nginx is not None:
                nginx.put(rec)
            return rec

        def file_node(rec: Any, path: str) -> dict[str, Any]:
            out: dict[str, Any] = node(rec, path)
            out["url"] = out["directUrl"] = blob_url + out["url"][len(server.url) :]
            return out

        server.add_artifact, server._file_node = add_artifact, file_node  # type: ignore[method-assign]
        server.blob_url = blob_url  # type: ignore[attr-defined]
        yield server, "nginx" if nginx is not None else "python"
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait()
        server.stop()
        if nginx is not None:
            nginx.close()


def fetched_bytes(m: Mount) -> int:
    return int(m.stats()["fetched_bytes"])


def settle(m: Mount, quiet: float = 1.0, limit: float = 60.0) -> None:
    """Wait until the mount's fetched bytes stop growing for ``quiet`` seconds (background
    work that a case started is counted in that case)."""
    deadline = time.monotonic() + limit
    last = fetched_bytes(m)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = fetched_bytes(m)
        if now == last:
            return
        last = now


def wan_epochs(
    server: WandbServer,
    wd: Path,
    figs: Figures,
    name: str,
    listing: Path,
    small_bytes: int,
    run: int,
    cap: float,
    full: bool,
) -> None:
    """The epoch cases: the SDK's download(small) then epoch 1 on local disk, against epoch 1 on
    a fresh mount (and the first batch of each); with ``full``, epoch 2 on local disk, on the
    pyfuse3 ceiling and on the mount too."""
    k = "wandb.wan."
    # -- the SDK: download(path_prefix="small"), then the epochs on local disk
    root = wd / "sdk-small"
    res = sdk_download(server, wd, name, root, cap, path_prefix="small")
    figs.add(k + "sdk_small_download_s", "SDK download(path_prefix='small')", res.download, small_bytes)
    s1, e1 = epoch(root / "small", listing, seed=run)
    figs.add(k + "sdk_epoch1_s", "  then epoch 1 on local disk (page cache dropped)", s1, small_bytes)
    total = res.download.seconds + s1.seconds
    figs.add(k + "sdk_then_epoch1_s", "SDK download(small) + epoch 1 on local disk", total, small_bytes)
    figs.add(k + "sdk_first_batch_s", f"SDK: first batch ({BATCH} files) ready", res.download.seconds + e1["first_s"])
    if full:
        s2, _ = epoch(root / "small", listing, seed=run + 100, drop=False)
        figs.add(k + "sdk_epoch2_s", "SDK: epoch 2 on local disk (page-cached)", s2, small_bytes)
        # the pyfuse3 ceiling over the same files, epoch 2 (kernel cache warm)
        cmnt = wd / "ceiling-mnt"
        cmnt.mkdir()
        ceiling = subprocess.Popen([PY, str(ROOT / "scripts" / "ceiling.py"), str(root / "small"), str(cmnt)],
                                   stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert ceiling.stdout is not None
            ceiling.stdout.readline()
            epoch(cmnt, listing, seed=run, drop=False)
            c2, _ = epoch(cmnt, listing, seed=run + 100, drop=False)
            figs.add(k + "ceiling_epoch2_s", "pyfuse3 ceiling (scripts/ceiling.py): epoch 2, warm", c2, small_bytes)
        finally:
            subprocess.run(["fusermount3", "-u", str(cmnt)], check=False)
            ceiling.wait()
            cmnt.rmdir()
    shutil.rmtree(root, ignore_errors=True)

    # -- the mount: epoch 1 from a fresh mount, then epoch 2
    with mounted(server, wd, "epoch") as m:
        vroot = m.mnt / ENTITY / PROJECT / "train:v0" / "small"
        cpu0, st0 = proc_cpu(m.pid), m.stats()
        s1, e1 = epoch(vroot, listing, seed=run, daemon=m.pid)
        cpu1, st1 = proc_cpu(m.pid), m.stats()
        figs.add(k + "mount_epoch1_s", "artifactfs: epoch 1 on a fresh mount", s1, small_bytes)
        figs.add(
            k + "mount_first_batch_s",
            f"artifactfs: mount + first batch ({BATCH} files)",
            m.mount_s + e1["first_s"],
        )
        fetched = st1["fetches"] - st0["fetches"]
        if fetched:
            figs.add(k + "daemon_cpu_ms_per_file", "artifactfs daemon CPU ms per fetched file (epoch 1)",
                     1000 * (cpu1 - cpu0) / fetched)  # fmt: skip
        if full:
            s2, _ = epoch(vroot, listing, seed=run + 100, daemon=m.pid, drop=False)
            figs.add(k + "mount_epoch2_s", "artifactfs: epoch 2 (kernel cache warm)", s2, small_bytes)
        if run == 0:
            print(f"mount stats after epochs: { {n: v for n, v in m.stats().items() if n != 'latency'} }")


def bench_wan(server0: WandbServer, work: Path, figs: Figures, runs: int, quick: bool, cap: float) -> None:
    lat, mbps = WAN
    n_small, n_dirs = (1000, 25) if quick else (4000, 50)
    model_size = (128 if quick else 512) * MiB
    n_sparse = 2000 if quick else 10000
    rng = random.Random(14)
    pool = os.urandom(64 * KiB + 4096)
    files: dict[str, bytes] = {}
    for i in range(n_small):
        size = rng.randint(1 * KiB, 64 * KiB)
        off = rng.randrange(4096)
        files[f"small/c{i % n_dirs:02d}/f{i:05d}.bin"] = i.to_bytes(8, "little") + pool[off : off + size - 8]
    small_paths = sorted(files)
    small_bytes = sum(len(files[p]) for p in small_paths)
    model = os.urandom(model_size)
    model_md5 = hashlib.md5(model).hexdigest()
    files["model.bin"] = model
    sparse = small_files(n_sparse, seed=15) if CASES & {"sparse", "scan"} else {}
    wd = work / "wan"
    wd.mkdir()
    print(
        f"\n## 4. emulated WAN: every request +{lat:g} ms, {mbps:g} MB/s per connection (scripts/wan_proxy.py); "
        f"{n_small} files of 1-64 KiB under small/ in {n_dirs} dirs ({small_bytes / MiB:.0f} MiB) + model.bin "
        f"({model_size // MiB} MiB); epoch = {READERS} threads reading each small file once, shuffled ({runs} run(s)); "
        f"cases: {','.join(c for c in WAN_CASES if c in CASES)}",
        flush=True,
    )
    with wan_server(wd, lat, mbps) as (server, blobs):
        print(f"(blobs served by {blobs}; GraphQL by tests/wandb_server.py; both behind the proxy)")
        rec = server.add_artifact(ENTITY, PROJECT, "train", "dataset", files)
        del files, model
        srec = server.add_artifact(ENTITY, PROJECT, "sparse", "dataset", sparse) if sparse else None
        sparse_sizes = {p: len(b) for p, b in sparse.items()}
        del sparse
        listing = wd / "small.list"
        listing.write_text("\n".join(p[len("small/") :] for p in small_paths) + "\n")
        name = f"{ENTITY}/{PROJECT}/train:v0"
        k = "wandb.wan."
        figs.info[k + "latency_ms"], figs.info[k + "mbps"], figs.info[k + "blob_server"] = lat, mbps, blobs
        # curl with the mount's parallel ranges, through the proxy, for the model file
        url = server.blob_url + file_url(server, rec, "model.bin")[len(server.url) :]  # type: ignore[attr-defined]
        parts = [(a, min(a + PART, model_size) - 1) for a in range(0, model_size, PART)]
        partdir = wd / "parts"
        files_cfg = wd / "model-files.curl"
        curl_config(files_cfg, [(url, str(partdir / f"p{i:04d}"), f"{a}-{b}") for i, (a, b) in enumerate(parts)])
        for run in range(runs):
            if CASES & {"epoch", "batch"}:
                wan_epochs(server, wd, figs, name, listing, small_bytes, run, cap, full="epoch" in CASES)
            if "model" in CASES:
                # -- model.bin: SDK download() of it, the mount's first read, curl with the same ranges
                root = wd / "sdk-model"
                res = sdk_download(server, wd, name, root, cap, path_prefix="model.bin")
                figs.add(k + "sdk_model_s", "SDK download(path_prefix='model.bin')", res.download, model_size)
                local = root / "model.bin"
                figs.add(
                    k + "md5sum_model_s",
                    "md5sum model.bin on local disk, page-cached",
                    timed_sh(f"md5sum {local}", drop=False),
                    model_size,
                )
                if run == 0:
                    got = subprocess.run(["md5sum", str(local)], capture_output=True, text=True).stdout.split()[0]
                    assert got == model_md5, "SDK: wrong bytes"
                shutil.rmtree(root, ignore_errors=True)
                partdir.mkdir()
                figs.add(k + "curl_model_s", f"curl, {len(parts)} ranges of 16 MiB, {STREAMS} at a time -> files",
                         timed_sh(f"curl {parallel(STREAMS)}-K {files_cfg}"), model_size)  # fmt: skip
                shutil.rmtree(partdir)
                with mounted(server, wd, "model") as m:
                    path = m.mnt / ENTITY / PROJECT / "train:v0" / "model.bin"
                    with measuring(m.pid) as got_s:
                        out = subprocess.run(["md5sum", str(path)], capture_output=True, text=True, check=True).stdout
                    assert out.split()[0] == model_md5, "mount: wrong bytes"
                    figs.add(k + "mount_model_s", "artifactfs: md5sum model.bin, fresh mount", got_s[0], model_size)

            if "version" in CASES:
                # -- the whole version ahead of a job
                root = wd / "sdk-all"
                res = sdk_download(server, wd, name, root, cap)
                figs.add(k + "sdk_all_s", "SDK download() of the whole version", res.download, small_bytes + model_size)
                shutil.rmtree(root, ignore_errors=True)
                cache = wd / "prefetch-cache"
                env = base_env(wd)
                sample = timed_cmd([PY, "-m", "artifactfs", "prefetch", "--registry", f"wandb:{server.url}",
                                    "--cache-dir", str(cache), name], env)  # fmt: skip
                figs.add(
                    k + "prefetch_all_s", "artifactfs prefetch of the whole version", sample, small_bytes + model_size
                )
                shutil.rmtree(cache, ignore_errors=True)
                root = wd / "ours-all"
                env.update(ARTIFACTFS_REGISTRY=f"wandb:{server.url}", ARTIFACTFS_CACHE_DIR=str(cache))
                code = f"import artifactfs as wandb; wandb.Api().artifact({name!r}).download({str(root)!r})"
                sample = timed_cmd([PY, "-c", code], env)
                figs.add(k + "ours_download_all_s", "artifactfs Artifact.download() of the whole version (process)",
                         sample, small_bytes + model_size)  # fmt: skip
                shutil.rmtree(root, ignore_errors=True)
                shutil.rmtree(cache, ignore_errors=True)

            if "sparse" in CASES:
                # -- sparse use: 1% of a 10,000-file version at random
                picked = random.Random(run).sample(sorted(sparse_sizes), max(1, n_sparse // 100))
                plist = wd / "sparse.list"
                plist.write_text("\n".join(picked) + "\n")
                read = sum(sparse_sizes[p] for p in picked)
                with mounted(server, wd, "sparse") as m:
                    sample, _ = epoch(m.mnt / ENTITY / PROJECT / "sparse:v0", plist, seed=run, daemon=m.pid)
                    settle(m, quiet=2.0)
                    figs.add(
                        k + "sparse_s",
                        f"artifactfs: {len(picked)} random files of {n_sparse} ({READERS} threads)",
                        sample,
                        read,
                    )
                    figs.add(k + "sparse_fetched_per_read", "  bytes fetched / bytes read", fetched_bytes(m) / read)

            if "scan" in CASES:
                # -- a scan of one directory of many: cp -r and tar
                tops = sorted({p.split("/")[0] for p in sparse_sizes})
                scan = {"cp": tops[min(3, len(tops) - 2)], "tar": tops[min(4, len(tops) - 1)]}
                for tool, sub in scan.items():
                    dir_bytes = sum(v for p, v in sparse_sizes.items() if p.startswith(sub + "/"))
                    with mounted(server, wd, f"scan-{tool}") as m:
                        src = m.mnt / ENTITY / PROJECT / "sparse:v0"
                        dest = wd / "scan-out"
                        cmd = (
                            f"cp -r --no-preserve=mode {src / sub} {dest}"
                            if tool == "cp"
                            else f"tar -cf - -C {src} {sub} | cat >/dev/null"
                        )
                        sample = timed_sh(cmd, m.pid)
                        figs.add(
                            k + f"scan_{tool}_s",
                            f"artifactfs: {cmd.split()[0]} of {sub}/ (1 of {n_sparse // 1000} dirs)",
                            sample,
                            dir_bytes,
                        )
                        settle(m, quiet=2.0)
                        figs.add(
                            k + f"scan_{tool}_fetched_per_read",
                            "  bytes fetched / bytes of the directory",
                            fetched_bytes(m) / dir_bytes,
                        )
                        shutil.rmtree(dest, ignore_errors=True)
                root = wd / "sdk-scan"
                res = sdk_download(server, wd, f"{ENTITY}/{PROJECT}/sparse:v0", root, cap, path_prefix=scan["cp"])
                figs.add(k + "sdk_scan_s", f"SDK download(path_prefix={scan['cp']!r})", res.download)
                shutil.rmtree(root, ignore_errors=True)

            print(f"run {run + 1}/{runs} done", flush=True)
        del srec
    print()
    keys = ["sdk_small_download_s", "sdk_epoch1_s", "sdk_then_epoch1_s", "mount_epoch1_s", "sdk_first_batch_s",
            "mount_first_batch_s", "sdk_epoch2_s", "ceiling_epoch2_s", "mount_epoch2_s", "sdk_model_s",
            "curl_model_s", "md5sum_model_s", "mount_model_s", "sdk_all_s", "prefetch_all_s", "ours_download_all_s",
            "sparse_s", "scan_cp_s", "scan_tar_s", "sdk_scan_s"]  # fmt: skip
    figs.table([k + x for x in keys], k + "sdk_then_epoch1_s")
    wan_ratios(figs)


def timed_cmd(cmd: list[str], env: dict[str, str]) -> Sample:
    with measuring() as got:
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return got[0]


def wan_ratios(figs: Figures) -> None:
    """The issue's speed ratios (baseline time / ours), each with its target."""
    k = "wandb.wan."

    def med(key: str) -> float | None:
        fig = figs.all.get(k + key)
        return fig.median() if fig is not None else None

    def line(label: str, base: float | None, ours: float | None, target: float) -> None:
        if base is None or ours is None or ours <= 0:
            return
        ratio = base / ours
        print(f"  {label:70s} {ratio:6.2f} x  (target >= {target:g}: {'met' if ratio >= target else 'NOT met'})")
        figs.info[k + "ratio." + re.sub(r"\W+", "_", label.lower()).strip("_")] = round(ratio, 3)

    print("\nspeed ratios (baseline time / artifactfs time):")
    line("epoch 1 on the mount vs SDK download(small) + epoch 1", med("sdk_then_epoch1_s"), med("mount_epoch1_s"), 2.0)
    line("first batch", med("sdk_first_batch_s"), med("mount_first_batch_s"), 8.0)
    line("epoch 2 vs the pyfuse3 ceiling", med("ceiling_epoch2_s"), med("mount_epoch2_s"), 0.9)
    line("epoch 2 vs local disk", med("sdk_epoch2_s"), med("mount_epoch2_s"), 0.0)
    line("model.bin first read vs SDK download()", med("sdk_model_s"), med("mount_model_s"), 2.0)
    bound = max(med("curl_model_s") or 0.0, med("md5sum_model_s") or 0.0)
    line("model.bin first read vs the slower of md5sum and curl (within 1.2 x)", bound, med("mount_model_s"), 1 / 1.2)
    line("artifactfs prefetch vs SDK download()", med("sdk_all_s"), med("prefetch_all_s"), 2.0)
    line("artifactfs Artifact.download() vs SDK download()", med("sdk_all_s"), med("ours_download_all_s"), 2.0)
    for key in ("sparse_fetched_per_read", "scan_cp_fetched_per_read", "scan_tar_fetched_per_read"):
        value = med(key)
        if value is not None:
            print(f"  {key:70s} {value:6.2f} x" + ("  (target <= 1.2)" if key.startswith("sparse") else ""))
    cpu = med("daemon_cpu_ms_per_file")
    if cpu is not None:
        print(f"  {'daemon CPU per fetched small file (WAN epoch 1)':70s} {cpu:6.2f} ms")


# ----------------------------------------------------------------------------- main

PARTS: dict[str, Callable[[WandbServer, Path, Figures, int, bool, float], None]] = {
    "big": bench_big,
    "small": bench_small,
    "many": bench_many,
    "wan": bench_wan,
}


def run(
    work: Path,
    quick: bool,
    *,
    runs: int | None = None,
    parts: str = "big,small,many,wan",
    sdk_cap: float = 600.0,
    json_path: str | None = None,
) -> dict[str, Any]:
    """Run the chosen parts in ``work`` (a directory on a real disk); returns the figures."""
    runs = runs if runs is not None else (1 if quick else 3)
    print(f"\n# W&B: artifactfs mount vs curl vs wandb SDK {_sdk_version()}, {runs} run(s) per figure")
    print(
        f"date {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} cores, kernel {platform.release()}, "
        f"curl {_curl_version()}"
    )
    print(f"command: cd {ROOT} && {shlex.join([PY, *sys.argv])}")
    print(f"source: {_source()}")
    if not can_drop():
        print("(not root: the page cache is NOT dropped between runs)")
    print("(server: tests/wandb_server.py in this process, files in memory; pure Python, shares the 2 cores)")
    print(f"data: {work} on {_filesystem(work)}")
    figs = Figures()
    load_before = os.getloadavg()[0]
    server = start_server()
    try:
        for name in parts.split(","):
            print(f"\n(load average {_load()} before {name!r}: other work here skews wall times more than CPU times)")
            PARTS[name](server, work, figs, runs, quick, sdk_cap)
            figs.info[f"wandb.load_after_{name}"] = os.getloadavg()[0]
        if server.handler_errors:
            print(f"server handler errors: {server.handler_errors[0]}")
    finally:
        server.stop()
        _unmount_all(work)
    result = {
        "machine": {
            "nproc": os.cpu_count(),
            "kernel": platform.release(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_before": load_before,
        },
        "quick": quick,
        "runs": runs,
        "command": shlex.join([PY, *sys.argv]),
        "source": _source(),
        "figures": figs.to_json(),
    }
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"figures written to {json_path}")
    return result


def set_wan(text: str, error: Callable[[str], Any]) -> None:
    """``--wan LAT_MS,MBPS``."""
    global WAN
    try:
        lat, mbps = (float(x) for x in text.split(","))
    except ValueError:
        error(f"--wan {text!r}: expected LAT_MS,MBPS (for example 30,100)")
        return
    if lat < 0 or mbps <= 0:
        error(f"--wan {text!r}: latency >= 0 and a rate > 0")
        return
    WAN = (lat, mbps)


def bench(work: Path, quick: bool, runs: int | None = None) -> dict[str, Any]:
    """scripts/bench.py's ``--only wandb``: every part; returns what ``--json`` would write."""
    return run(work, quick, runs=runs)


def _unmount_all(work: Path) -> None:
    with open("/proc/mounts") as f:
        for line in f:
            mnt = line.split()[1]
            if mnt.startswith(str(work)) and subprocess.run(["fusermount3", "-u", mnt]).returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", mnt], check=False)


def _filesystem(path: Path) -> str:
    """The filesystem that holds ``path``, and for ext4 whether it has a journal.  Without one
    (this VM's root), the kernel checks each free inode it considers against the time it was
    deleted (``find_inode_bit``/``recently_deleted``), so files created soon after thousands
    were deleted (the bench's own clean-up between cases) cost far more kernel CPU: up to three
    times the daemon's CPU per small file in docs/PERFORMANCE.md's runs."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    fstype = source = "?"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[2] == dev:
                rest = fields[fields.index("-") + 1 :]
                fstype, source = rest[0], rest[1]
    if fstype != "ext4":
        return f"{fstype} ({source})"
    name = os.path.basename(os.path.realpath(source))
    journal = any(n.rpartition("-")[0] == name for n in os.listdir("/proc/fs/jbd2"))
    if journal:
        return f"ext4 with a journal ({source})"
    return (
        f"ext4 WITHOUT a journal ({source}): files made soon after many were deleted cost extra kernel "
        "CPU (ext4's recently_deleted check): the daemon's CPU per file is inflated (PERFORMANCE.md)"
    )


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def _source() -> str:
    """The commit measured, and whether artifactfs/ has changes not committed."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "artifactfs"], capture_output=True, text=True
        )
    except OSError:
        return "unknown (no git)"
    if head.returncode != 0:
        return f"{ROOT} (not a git checkout)"
    changed = len(dirty.stdout.splitlines())
    return f"commit {head.stdout.strip()}" + (f", {changed} uncommitted file(s) under artifactfs/" if changed else "")


def _sdk_version() -> str:
    try:
        from importlib.metadata import version

        return version("wandb")
    except Exception:
        return "?"


def _curl_version() -> str:
    out = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split()
    return out[1] if len(out) > 1 else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB, 2,000 and 20,000 files, 1 run")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3, 1 with --quick)")
    parser.add_argument("--only", default="big,small,many,wan", help="comma-separated: big,small,many,wan")
    parser.add_argument(
        "--wan",
        default=",".join(f"{x:g}" for x in WAN),
        help="LAT_MS,MBPS of the emulated WAN of part 'wan' (default %(default)s)",
    )
    parser.add_argument(
        "--cases",
        default=",".join(WAN_CASES),
        help="comma-separated cases of part 'wan' (default: all of %(default)s); 'batch' is 'epoch' without epoch 2",
    )
    parser.add_argument("--sdk-cap", type=float, default=600.0, help="seconds the SDK's download() may take")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--dir", default="/var/tmp", help="where to put the data (a real disk, not tmpfs)")
    args = parser.parse_args()
    set_wan(args.wan, parser.error)
    cases = {c for c in args.cases.split(",") if c}
    if not cases or cases - set(WAN_CASES):
        parser.error(f"--cases {args.cases!r}: choose from {','.join(WAN_CASES)}")
    CASES.clear()
    CASES.update(cases)
    for name in args.only.split(","):
        if name not in PARTS:
            parser.error(f"unknown part {name!r} (choose from {','.join(PARTS)})")
    with tempfile.TemporaryDirectory(prefix="artifactfs-bench-wandb.", dir=args.dir) as tmp:
        run(Path(tmp), args.quick, runs=args.runs, parts=args.only, sdk_cap=args.sdk_cap, json_path=args.json)


if __name__ == "__main__":
    main()
