"""Benchmarks behind the figures quoted in the issues' closing notes.

Every figure is measured in this run; ratios compare figures of the same run (the machine
drifts).  Needs root for dropping the page cache (``/proc/sys/vm/drop_caches``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from artifactfs.names import parse_ref
from artifactfs.registry import open_registry

MiB = 1 << 20
PY = sys.executable


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sh(cmd: str, **kw: object) -> None:
    subprocess.run(["bash", "-c", cmd], check=True, **kw)  # type: ignore[call-overload]


def afs(*args: str) -> str:
    return subprocess.run([PY, "-m", "artifactfs", *args], check=True, capture_output=True, text=True).stdout


def make_tree(root: Path, files: int, size: int) -> None:
    root.mkdir(parents=True)
    block = os.urandom(size)
    for i in range(files):
        sub = root / f"d{i % 16:02d}"
        sub.mkdir(exist_ok=True)
        # distinct content per file: a counter prefix changes the digest
        (sub / f"f{i:06d}.bin").write_bytes(i.to_bytes(8, "little") + block[8:])


class Mounted:
    def __init__(self, registry: Path, mnt: Path, cache: Path, *extra: str) -> None:
        self.mnt = mnt
        mnt.mkdir(exist_ok=True)
        afs("mount", str(registry), str(mnt), "--cache-dir", str(cache), "--log-level", "WARNING", *extra)

    def stats(self) -> dict[str, int]:
        return json.loads(os.getxattr(self.mnt, "user.artifactfs.stats"))  # type: ignore[no-any-return]

    def close(self) -> None:
        afs("umount", str(self.mnt))
        time.sleep(0.3)


def mbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / MiB / seconds:8.0f} MiB/s ({seconds:6.2f} s)"


def bench_log(work: Path, quick: bool) -> None:
    total = (256 if quick else 1024) * MiB
    n = 256
    src = work / "logsrc"
    make_tree(src, n, total // n)
    print(f"\n## log of a {total // MiB} MiB tree ({n} files of {total // n // MiB} MiB)")
    print("(page cache dropped before each run)")
    reg = work / "logreg"
    drop_caches()
    t_log = timed(lambda: afs("log", str(src), "bench/log/tree", "--type", "dataset", "--registry", str(reg)))
    dst = work / "cpdst"
    drop_caches()
    t_cp = timed(lambda: sh(f"cp -r {src} {dst} && find {dst} -type f -print0 | xargs -0 md5sum -b > /dev/null"))
    print(f"artifactfs log                 {mbps(total, t_log)}")
    print(f"cp -r + md5sum -b              {mbps(total, t_cp)}")
    print(f"ratio log / (cp + md5sum)      {t_log / t_cp:.2f}x the time")
    drop_caches()
    t_relog = timed(lambda: afs("log", str(src), "bench/log/tree", "--type", "dataset", "--registry", str(reg)))
    print(f"re-log of unchanged tree       {mbps(total, t_relog)} (hash only, no new version)")
    shutil.rmtree(dst)
    shutil.rmtree(src)


def read_file(path: Path) -> None:
    sh(f"cat '{path}' > /dev/null")


def bench_seq(work: Path, quick: bool) -> None:
    size = (256 if quick else 1024) * MiB
    src = work / "seqsrc"
    src.mkdir()
    with open(src / "big.bin", "wb") as f:
        for _ in range(size // (16 * MiB)):
            f.write(os.urandom(16 * MiB))
    reg = work / "seqreg"
    afs("log", str(src), "bench/seq/big", "--type", "model", "--registry", str(reg))
    blob = next((reg / "objects" / "md5").rglob("*"), None)
    blobs = [p for p in (reg / "objects" / "md5").rglob("*") if p.is_file()]
    assert blob is not None and len(blobs) == 1
    print(f"\n## sequential read of a {size // MiB} MiB file (cat > /dev/null)")
    raw_cold = raw_warm = 0.0
    drop_caches()
    raw_cold = timed(lambda: read_file(blobs[0]))
    raw_warm = timed(lambda: read_file(blobs[0]))
    print(f"cat of the blob on disk, cold  {mbps(size, raw_cold)}")
    print(f"cat of the blob on disk, warm  {mbps(size, raw_warm)}")
    for mode in ("verify-in-place", "copy"):
        cache = work / f"seqcache-{mode}"
        m = Mounted(reg, work / "seqmnt", cache, "--local-blobs", mode)
        path = m.mnt / "bench/seq/big:v0/big.bin"
        try:
            drop_caches()
            first = timed(lambda path=path: read_file(path))
            drop_caches()
            cached_cold = timed(lambda path=path: read_file(path))
            warm = timed(lambda path=path: read_file(path))
            stats = m.stats()
        finally:
            m.close()
        print(f"[{mode}] first read (verify)      {mbps(size, first)}")
        print(f"[{mode}] cached, kernel cache dropped {mbps(size, cached_cold)}")
        print(f"[{mode}] kernel-cached re-read    {mbps(size, warm)}")
        if mode == "copy":
            cached = [p for p in cache.rglob("*.val")]
            drop_caches()
            c_cold = timed(lambda cached=cached: read_file(cached[0]))
            c_warm = timed(lambda cached=cached: read_file(cached[0]))
            print(f"[copy] cat of the cache file, cold {mbps(size, c_cold)}")
            print(f"[copy] cat of the cache file, warm {mbps(size, c_warm)}")
        print(f"[{mode}] stats {stats}")
    shutil.rmtree(src)


def bench_small(work: Path, quick: bool) -> None:
    n = 2000 if quick else 10000
    src = work / "smallsrc"
    make_tree(src, n, 4096)
    reg = work / "smallreg"
    afs("log", str(src), "bench/small/files", "--type", "dataset", "--registry", str(reg))
    print(f"\n## cat of {n} files of 4 KiB (find | xargs cat > /dev/null)")
    cat_all = "find {} -type f -print0 | xargs -0 cat > /dev/null"
    drop_caches()
    raw_cold = timed(lambda: sh(cat_all.format(src)))
    raw_warm = timed(lambda: sh(cat_all.format(src)))
    print(f"raw directory, cold            {raw_cold:6.2f} s")
    print(f"raw directory, warm            {raw_warm:6.2f} s")
    # The same bytes read from the registry's blob files, in the order the mount reads them:
    # content addressing scatters them over 256 directories, which costs on a cold disk.
    blob_list = work / "blobs.txt"
    reg_api = open_registry(str(reg))
    try:
        v = reg_api.resolve(parse_ref("bench/small/files:v0"))
        paths = sorted((e.path, str(reg_api.local_path(e))) for e in reg_api.iter_entries(v))
    finally:
        reg_api.close()
    blob_list.write_text("".join(p + "\0" for _, p in paths))
    drop_caches()
    blobs_cold = timed(lambda: sh(f"xargs -0 cat < {blob_list} > /dev/null"))
    print(f"registry blobs in path order, cold {blobs_cold:6.2f} s")
    for mode in ("verify-in-place", "copy"):
        m = Mounted(reg, work / "smallmnt", work / f"smallcache-{mode}", "--local-blobs", mode)
        root = m.mnt / "bench/small/files:v0"
        try:
            drop_caches()
            first = timed(lambda root=root: sh(cat_all.format(root)))
            drop_caches()
            second = timed(lambda root=root: sh(cat_all.format(root)))
            third = timed(lambda root=root: sh(cat_all.format(root)))
        finally:
            m.close()
        print(f"[{mode}] mount, first read (verify)     {first:6.2f} s  ({first / raw_cold:.1f}x raw cold)")
        print(f"[{mode}] mount, cached, kernel dropped  {second:6.2f} s  ({second / raw_cold:.1f}x raw cold)")
        print(f"[{mode}] mount, kernel-cached           {third:6.2f} s  ({third / raw_warm:.1f}x raw warm)")
    shutil.rmtree(src)


def bench_rand(work: Path, quick: bool) -> None:
    """4 KiB random reads that reach the daemon (page cache dropped, distinct blocks)."""
    size = 256 * MiB
    src = work / "randsrc"
    src.mkdir()
    (src / "r.bin").write_bytes(os.urandom(size))
    reg = work / "randreg"
    afs("log", str(src), "bench/rand/r", "--type", "dataset", "--registry", str(reg))
    count = 5000 if quick else 20000
    blocks = random.Random(1).sample(range(size // 4096), count)
    blob = next(p for p in (reg / "objects" / "md5").rglob("*") if p.is_file())
    print(f"\n## {count} random 4 KiB preads on distinct blocks: mount's page cache dropped, blob warm")
    for label, extra in (("inline pread", ()), ("pread in a thread", ("--pread-in-thread",))):
        m = Mounted(reg, work / "randmnt", work / "randcache", *extra)
        path = m.mnt / "bench/rand/r:v0/r.bin"
        try:
            read_file(path)  # verify once; the blob is then trusted
            drop_caches()
            read_file(blob)  # the backing blob in the page cache: measure the daemon, not the disk
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            start = time.perf_counter()
            for b in blocks:
                os.pread(fd, 4096, b * 4096)
            elapsed = time.perf_counter() - start
            os.close(fd)
        finally:
            m.close()
        print(f"{label:20s} {count / elapsed:8.0f} IOPS ({elapsed:.2f} s)")
    shutil.rmtree(src)


HTTP_SERVER = """
import sys
sys.path.insert(0, "tests")
from fault_server import FaultServer
server = FaultServer()
with open(sys.argv[1], "rb") as f:
    data = f.read()
server.add("/blob", data)
server.add("/throttled", data, rate=float(sys.argv[2]))
print(server.port, flush=True)
sys.stdin.read()  # until the parent closes our stdin
server.close()
"""


def bench_http(work: Path, quick: bool) -> None:
    """A blob from an HTTP server on 127.0.0.1 (another process) into the verified cache: one
    stream against parallel ranges (default policy: 16 MiB parts, 4 workers), from an unlimited
    server and from one that sends each response at most at ``rate`` (as object stores limit
    each connection)."""
    from artifactfs.http import DEFAULT_POLICY, Policy
    from artifactfs.manifest import Entry, digest_bytes
    from artifactfs.references import reference_source
    from artifactfs.store import BlobStore

    size = (64 if quick else 256) * MiB
    rate = 64 * MiB
    data = os.urandom(size)
    (work / "http-blob").write_bytes(data)
    server = [PY, "-c", HTTP_SERVER, str(work / "http-blob"), str(rate)]
    proc = subprocess.Popen(server, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    single = Policy(parallel_threshold=1 << 62)
    ranged = Policy(parallel_threshold=min(DEFAULT_POLICY.parallel_threshold, size))

    def fill(entry: Entry, policy: Policy) -> float:
        cache = work / "http-cache"
        store = BlobStore(str(cache))
        try:
            source = reference_source(entry, policy=policy)
            return timed(lambda: store.fill(entry.cache_key, entry, source, "blob").close())
        finally:
            store.close()
            shutil.rmtree(cache)

    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        print(f"\n## http: a {size // MiB} MiB reference from a server on 127.0.0.1 into the verified cache")
        for path, label in (("blob", "unlimited"), ("throttled", f"{rate // MiB} MiB/s per connection")):
            entry = Entry("blob", digest_bytes(data), size, ref=f"http://127.0.0.1:{port}/{path}")
            for name, policy in (("one stream", single), ("parallel ranges", ranged)):
                best = min(fill(entry, policy) for _ in range(2))
                print(f"{label:<28} {name:<16} {mbps(size, best)}")
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller data (for a smoke run)")
    parser.add_argument("--only", default="log,seq,small,rand,http")
    parser.add_argument("--dir", default="/var/tmp", help="where to put the data (a real disk, not tmpfs)")
    args = parser.parse_args()
    benches = {"log": bench_log, "seq": bench_seq, "small": bench_small, "rand": bench_rand, "http": bench_http}
    if os.geteuid() != 0 and args.only != "http":
        sys.exit("scripts/bench needs root (it drops the page cache)")
    with tempfile.TemporaryDirectory(prefix="artifactfs-bench.", dir=args.dir) as tmp:
        work = Path(tmp)
        print(f"# artifactfs bench, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, data in {work}")
        try:
            for name in args.only.split(","):
                benches[name](work, args.quick)
        finally:
            with open("/proc/mounts") as f:
                for line in f:
                    mnt = line.split()[1]
                    if mnt.startswith(str(work)):
                        subprocess.run(["fusermount3", "-u", "-z", mnt], check=False)


if __name__ == "__main__":
    main()
