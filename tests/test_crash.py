"""Crash safety and a full cache disk (issue 9, item 2).

A daemon killed with SIGKILL in the middle of a large download or of a burst of small fills, a
cache directory on a disk that fills up (a small tmpfs), and ``artifactfs log`` running while a
mount reads the same registry: after each, every file reads right through a mount (a remount on
the same cache directory where the daemon died), every blob left in the cache hashes to its key,
and no partial temp file is adopted.

The store-level tests drive :class:`~artifactfs.store.BlobStore` directly; the others use real
mounts (``mounter``), read with ``md5sum``/``cat`` and Python.  tmpfs tests need root (they mount
one); they skip without it, except in CI.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveEnv, Mount, Mounter, force_unmount, is_mounted, run_cli, tmpfs_mount, write_tree
from test_store import entry_for, source
from test_store import read_all as blob_bytes

from artifactfs.errors import CacheError, DiskFull
from artifactfs.names import parse_ref
from artifactfs.registry.local import LocalRegistry
from artifactfs.store import BlobStore

MiB = 1 << 20
ENV = LiveEnv(LC_ALL="C.UTF-8", LANG="C.UTF-8")  # the test's environment when used


# -- helpers ----------------------------------------------------------------------------------------


def tmpfs(path: Path, size: str = "8m") -> contextlib.AbstractContextManager[Path]:
    return tmpfs_mount(path, size)


def cache_rows(cache_dir: Path) -> list[tuple[str, str]]:
    """``(key, file)`` of every blob row in a cache directory (diskcache's index, read-only)."""
    conn = sqlite3.connect(f"file:{cache_dir / 'cache.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT key, filename FROM Cache WHERE filename IS NOT NULL").fetchall()
    finally:
        conn.close()
    return [(k, str(cache_dir / f)) for k, f in rows]


def assert_cache_is_sound(cache_dir: Path) -> int:
    """Every blob the cache holds hashes to its key, and no file under the cache directory is
    outside the index (temp files excepted: those are never served).  A row whose file never
    arrived (killed between the row's commit and the rename) is a miss, not a blob: the store
    commits the row first on purpose.  Returns the count of blobs present."""
    rows = cache_rows(cache_dir)
    indexed = set()
    for key, path in rows:
        alg, _, hexd = key.partition("/")
        assert alg == "md5", key
        try:
            with open(path, "rb") as f:
                assert hashlib.md5(f.read()).hexdigest() == hexd, f"{path} does not hash to {key}"
        except FileNotFoundError:
            continue
        indexed.add(path)
    for dirpath, _, names in os.walk(cache_dir):
        if os.path.basename(dirpath) in ("tmp", "manifests"):
            continue
        for name in names:
            if name.endswith(".val"):
                assert os.path.join(dirpath, name) in indexed, f"an unindexed blob file {name}"
    return len(indexed)


def md5sums(paths: list[Path], timeout: float = 120) -> dict[Path, str | None]:
    """``md5sum`` of each path (None for a file md5sum could not read)."""
    out: dict[Path, str | None] = {}
    for start in range(0, len(paths), 200):
        chunk = paths[start : start + 200]
        proc = subprocess.run(["md5sum", *map(str, chunk)], capture_output=True, text=True, env=ENV, timeout=timeout)
        sums = dict(reversed(line.split("  ", 1)) for line in proc.stdout.splitlines())
        for p in chunk:
            out[p] = sums.get(str(p))
    return out


def log_tree(registry: Path, src: Path, ref: str) -> None:
    reg = LocalRegistry(registry, create=True)
    try:
        reg.log_dir(src, parse_ref(ref), type="dataset")
    finally:
        reg.close()


def kill_daemon(m: Mount) -> None:
    """SIGKILL the daemon and clear its dead mount (``fusermount3 -u -z``)."""
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(timeout=60)
    if is_mounted(m.path):
        subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)
    assert not is_mounted(m.path)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- the store on a full disk -----------------------------------------------------------------------


def test_blob_larger_than_the_cache_disk_is_refused_unwritten(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk") as disk:
        store = BlobStore(str(disk / "cache"))
        try:
            data = os.urandom(12 * MiB)
            entry = entry_for(data)
            with pytest.raises(DiskFull, match="larger than the disk of the cache directory"):
                store.fill(entry.cache_key, entry, source(data), "big")
            assert os.listdir(store.tmp) == []
            assert entry.cache_key not in store
        finally:
            store.close()


def test_full_disk_mid_write_leaves_nothing(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk") as disk:
        store = BlobStore(str(disk / "cache"))
        try:
            # Something else took most of the disk: nothing of ours to evict.
            with open(disk / "filler", "wb") as f:
                f.write(b"\0" * (5 * MiB))
            data = os.urandom(4 * MiB)
            entry = entry_for(data)
            with pytest.raises(DiskFull, match="no space left in the cache directory") as info:
                store.fill(entry.cache_key, entry, source(data), "mid")
            assert "free" in str(info.value) and info.value.errno == errno.EIO
            assert os.listdir(store.tmp) == []
            assert entry.cache_key not in store
            os.unlink(disk / "filler")  # room again: the same fill now succeeds
            blob = store.fill(entry.cache_key, entry, source(data), "mid")
            blob.close()
            assert blob_bytes(store, entry.cache_key) == data
        finally:
            store.close()


def test_full_disk_evicts_least_recently_used_blobs_first(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk") as disk:
        store = BlobStore(str(disk / "cache"))  # the default size limit (50 GiB) is no help here
        try:
            blobs = [os.urandom(2 * MiB) for _ in range(3)]
            for data in blobs:
                store.fill(entry_for(data).cache_key, entry_for(data), source(data), "x").close()
                time.sleep(0.01)  # distinct access times
            big = os.urandom(3 * MiB)
            store.fill(entry_for(big).cache_key, entry_for(big), source(big), "big").close()
            assert blob_bytes(store, entry_for(big).cache_key) == big
            assert entry_for(blobs[0]).cache_key not in store  # the oldest made room
            assert blob_bytes(store, entry_for(blobs[2]).cache_key) == blobs[2]
            assert os.listdir(store.tmp) == []
            assert assert_cache_is_sound(disk / "cache") >= 2
        finally:
            store.close()


def test_verified_file_that_cannot_be_adopted_is_served_unkept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite refusing the write (a full disk: "database or disk is full") after the bytes were
    verified: the read is served from the temp file's descriptor, and the file is not kept."""
    store = BlobStore(str(tmp_path / "cache"))
    try:
        data = os.urandom(300_000)
        entry = entry_for(data)
        real_set = store._cache.set

        def full_set(key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
            if key == entry.cache_key:
                raise sqlite3.OperationalError("database or disk is full")
            return real_set(key, value, *args, **kwargs)

        monkeypatch.setattr(store._cache, "set", full_set)
        with caplog.at_level(logging.WARNING, logger="artifactfs.store"):
            blob = store.fill(entry.cache_key, entry, source(data), "unkept")
        try:
            assert blob.pread(len(data) + 1, 0) == data
            assert blob.pread(10, 1000) == data[1000:1010]
        finally:
            blob.close()
        assert "cannot keep unkept in the cache" in caplog.text
        assert entry.cache_key not in store
        assert os.listdir(store.tmp) == []
        assert [f for f in Path(store.directory).rglob("*.val")] == []
    finally:
        store.close()


def test_lost_identity_record_keeps_the_blob_but_rehashes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = BlobStore(str(tmp_path / "cache"))
    try:
        data = os.urandom(200_000)
        entry = entry_for(data)
        real_set = store._cache.set

        def no_record(key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
            if key.startswith("cached/"):
                raise sqlite3.OperationalError("database or disk is full")
            return real_set(key, value, *args, **kwargs)

        monkeypatch.setattr(store._cache, "set", no_record)
        with caplog.at_level(logging.WARNING, logger="artifactfs.store"):
            store.fill(entry.cache_key, entry, source(data), "norecord").close()
        assert "could not record it" in caplog.text
        monkeypatch.setattr(store._cache, "set", real_set)
        assert store.open_cached(entry.cache_key) is None  # not vouched for: never served inline
        blob = store.open_verified(entry.cache_key, entry, "norecord")  # hashed, right: kept
        assert blob is not None and blob.pread(len(data), 0) == data
        blob.close()
        assert blob_bytes(store, entry.cache_key) == data
    finally:
        store.close()


# -- symlinks and odd files planted in the cache directory -----------------------------------------


@pytest.mark.parametrize("target", ["wrong bytes", "right bytes", "fifo"])
def test_planted_symlink_or_fifo_in_place_of_a_cache_file_is_never_followed(
    tmp_path: Path, target: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    store = BlobStore(str(cache))
    data = os.urandom(100_000)
    entry = entry_for(data)
    store.fill(entry.cache_key, entry, source(data), "x").close()
    store.close()
    ((_, val),) = cache_rows(cache)
    outside = tmp_path / "outside"
    if target == "fifo":
        os.unlink(val)
        os.mkfifo(val)
    else:
        outside.write_bytes(os.urandom(len(data)) if target == "wrong bytes" else data)
        os.unlink(val)
        os.symlink(outside, val)
    store = BlobStore(str(cache))  # a new process: no memo
    try:
        assert store.open_cached(entry.cache_key) is None  # returns at once, even for a FIFO
        with caplog.at_level(logging.WARNING, logger="artifactfs.store"):
            assert store.open_verified(entry.cache_key, entry, "x") is None  # evicted unread
        assert "fetching it again" in caplog.text
        assert not os.path.lexists(val)  # the link itself was removed ...
        if target != "fifo":
            assert outside.exists()  # ... never its target
        blob = store.fill(entry.cache_key, entry, source(data), "x")
        blob.close()
        assert blob_bytes(store, entry.cache_key) == data
    finally:
        store.close()


def test_planted_symlink_for_the_temp_directory_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    BlobStore(str(cache)).close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rmdir(cache / "tmp")
    os.symlink(elsewhere, cache / "tmp")
    with caplog.at_level(logging.WARNING, logger="artifactfs.store"):
        store = BlobStore(str(cache))
    try:
        assert "is a symlink" in caplog.text
        assert (cache / "tmp").is_dir() and not (cache / "tmp").is_symlink()
        data = b"some bytes" * 1000
        store.fill(entry_for(data).cache_key, entry_for(data), source(data), "x").close()
        assert os.listdir(elsewhere) == []
    finally:
        store.close()


def test_planted_symlink_for_the_index_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    BlobStore(str(cache)).close()
    victim = tmp_path / "victim.db"
    os.replace(cache / "cache.db", victim)
    os.symlink(victim, cache / "cache.db")
    with pytest.raises(CacheError, match="is a symlink"):
        BlobStore(str(cache))


# -- real mounts ----------------------------------------------------------------------------------


@pytest.mark.fuse
@pytest.mark.allow_log(r"larger than the disk of the cache directory")
def test_full_cache_disk_through_a_copy_mode_mount(mounter: Mounter, tmp_path: Path) -> None:
    """A cache directory on an 8 MiB tmpfs: a file larger than the disk is EIO with one clear
    line; files that fit, together four times the disk, read right (LRU blobs evicted for room);
    a remount on the same disk reads them all right again; the cache holds only verified blobs."""
    files = {"big.bin": os.urandom(12 * MiB)}
    files.update({f"mid/{i}.bin": os.urandom(3 * MiB) for i in range(4)})
    files.update({f"small/{i:03d}.txt": os.urandom(3000) for i in range(40)})
    src = write_tree(tmp_path / "src", files)
    log_tree(tmp_path / "reg", src, "acme/vision/ds")
    with tmpfs(tmp_path / "disk") as disk:
        cache = disk / "cache"
        m = mounter(tmp_path / "reg", "--local-blobs", "copy", cache_dir=cache)
        v0 = m.path / "acme" / "vision" / "ds:v0"
        proc = subprocess.run(["cat", str(v0 / "big.bin")], capture_output=True, env=ENV, timeout=60)
        assert proc.returncode != 0 and b"Input/output error" in proc.stderr
        assert "larger than the disk of the cache directory" in m.log()
        assert os.listdir(cache / "tmp") == []
        expected = {v0 / rel: hashlib.md5(data).hexdigest() for rel, data in files.items() if rel != "big.bin"}
        assert md5sums(sorted(expected)) == expected
        assert m.proc.poll() is None
        m.unmount()  # its last batch of fills committed: the index is checked at rest
        assert assert_cache_is_sound(cache) >= 2

        again = mounter(tmp_path / "reg", "--local-blobs", "copy", cache_dir=cache, mountpoint=m.path)
        assert md5sums(sorted(expected)) == expected
        again.unmount()  # pending fills (temp files served before their batch) committed or dropped
        assert os.listdir(cache / "tmp") == []
        assert assert_cache_is_sound(cache) >= 2
        assert "is corrupt" not in again.log() and "Traceback" not in again.log()


@pytest.mark.fuse
def test_sigkill_during_a_burst_of_small_fills(mounter: Mounter, tmp_path: Path) -> None:
    files = {f"d{i % 10}/{i:05d}.txt": os.urandom(4096 + i) for i in range(2000)}
    src = write_tree(tmp_path / "src", files)
    log_tree(tmp_path / "reg", src, "acme/vision/many")
    m = mounter(tmp_path / "reg", "--local-blobs", "copy")
    v0 = m.path / "acme" / "vision" / "many:v0"
    readers = subprocess.Popen(
        f"find {v0} -type f -print0 | xargs -0 -P 8 -n 20 cat > /dev/null",
        shell=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        wait_for(lambda: len(cache_rows(m.cache_dir)) >= 300, 120, "a few hundred fills")
        kill_daemon(m)  # mid-burst: fills in flight in eight worker threads
    finally:
        readers.wait(timeout=60)
    kept = assert_cache_is_sound(m.cache_dir)
    # Fills are kept by group commit: the batch being committed when the daemon died (its rows
    # committed, its files not yet renamed) is lost (misses); every earlier batch is kept.
    assert 0 < kept <= 2000
    again = mounter(tmp_path / "reg", "--local-blobs", "copy", cache_dir=m.cache_dir, mountpoint=m.path)
    assert [n for n in os.listdir(m.cache_dir / "tmp") if n.startswith(f"{m.proc.pid}-")] == []  # dead writer's
    v0 = again.path / "acme" / "vision" / "many:v0"
    expected = {v0 / rel: hashlib.md5(data).hexdigest() for rel, data in files.items()}
    assert md5sums(sorted(expected)) == expected
    stats = again.stats()
    # each blob not kept fetched once (by a reader or the engine warming the walk), the kept ones found
    assert stats["fetches"] == 2000 - kept and stats["cache_hits"] >= kept, stats
    assert stats["digest_mismatches"] == 0
    assert "is corrupt" not in again.log() and "Traceback" not in again.log()
    again.unmount()  # the batch of fills the engine warmed committed: the index is checked at rest
    assert_cache_is_sound(m.cache_dir)


@pytest.mark.fuse
@pytest.mark.parametrize("mib", [8, 80], ids=["one-stream", "parallel-ranges"])
def test_sigkill_during_a_large_download(
    mounter: Mounter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mib: int
) -> None:
    """A W&B test server trickles a file (8 MiB: one stream; 80 MiB: 16 MiB ranges written at
    their offsets by four threads, the first one trickled); the daemon is killed with part of it
    written.  The remount never serves the part: it fetches the file again and it reads right."""
    from wandb_server import WandbServer

    key = "c0ffee" + "0" * 34
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    for name in ("WANDB_BASE_URL", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    big = os.urandom(mib * MiB)
    with WandbServer(api_key=key, viewer_entity="acme") as server:
        server.add_artifact("acme", "vision", "model", "model", {"model.pt": big, "small.txt": b"small\n"})
        server.faults.slow_body(1 * MiB, times=1, match="model.pt")
        m = mounter(f"wandb:{server.url}")  # type: ignore[arg-type]
        path = m.path / "acme" / "vision" / "model:v0" / "model.pt"
        reader = subprocess.Popen(["md5sum", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        try:

            def partly_written() -> bool:
                return any(p.stat().st_size > MiB for p in (m.cache_dir / "tmp").glob("*.part"))

            wait_for(partly_written, 120, "a partly written download")
            kill_daemon(m)
        finally:
            out, _ = reader.communicate(timeout=60)
        assert hashlib.md5(big).hexdigest().encode() not in out  # the reader got an error, not bytes
        assert ("md5/" + hashlib.md5(big).hexdigest()) not in dict(cache_rows(m.cache_dir))
        server.faults.clear()
        server.reset_log()

        again = mounter(f"wandb:{server.url}", cache_dir=m.cache_dir, mountpoint=m.path)  # type: ignore[arg-type]
        assert os.listdir(m.cache_dir / "tmp") == []  # the dead daemon's part was removed, not adopted
        got = md5sums([path, path.parent / "small.txt"])
        assert got == {
            path: hashlib.md5(big).hexdigest(),
            path.parent / "small.txt": hashlib.md5(b"small\n").hexdigest(),
        }
        assert again.stats()["fetches"] == 2 and again.stats()["digest_mismatches"] == 0
        assert "is corrupt" not in again.log() and "Traceback" not in again.log()
        assert any("model.pt" in r.path for r in server.file_requests())  # fetched again, whole
        assert_cache_is_sound(m.cache_dir)
        again.unmount()


@pytest.mark.fuse
def test_log_and_a_mount_at_once_never_show_a_partial_version(mounter: Mounter, tmp_path: Path) -> None:
    """``artifactfs log`` of 300-file versions, one of them killed half-way, while readers walk
    every version that appears in the mount: each version they see is whole (all 300 files, all
    of one log), and the killed log's version never appears."""
    n_files = 300
    reg = tmp_path / "reg"
    log_tree(reg, write_tree(tmp_path / "seed", {"x": b"seed"}), "acme/vision/other")

    def make_src(k: int) -> Path:
        return write_tree(
            tmp_path / f"src{k}", {f"d{i % 7}/{i:04d}.txt": f"log {k} file {i}\n".encode() for i in range(n_files)}
        )

    m = mounter(reg, "--alias-ttl", "0.1")
    project = m.path / "acme" / "vision"
    stop = threading.Event()
    seen: dict[str, int] = {}
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                names = [n for n in os.listdir(project) if n.startswith("ds:v")]
            except OSError as exc:
                problems.append(f"listdir: {exc}")
                return
            for name in names:
                if name in seen:
                    continue
                version = project / name
                found = sorted(str(p.relative_to(version)) for p in version.rglob("*.txt"))
                if len(found) != n_files:
                    problems.append(f"{name}: {len(found)} files")
                    continue
                contents = {rel: (version / rel).read_bytes() for rel in found}
                logs = {c.split()[1] for c in contents.values()}
                if len(logs) != 1:
                    problems.append(f"{name}: files of several logs {logs}")
                    continue
                k = int(logs.pop())
                for rel, data in contents.items():
                    i = int(rel.split("/")[1].split(".")[0])
                    if data != f"log {k} file {i}\n".encode():
                        problems.append(f"{name}/{rel}: {data!r}")
                seen[name] = k
            time.sleep(0.05)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    killed: int | None = None
    try:
        for k in range(6):
            src = make_src(k)
            cmd = ["log", str(src), "acme/vision/ds", "--type", "dataset", "--registry", str(reg)]
            if k == 3:  # killed half-way through its blobs: its version must never appear
                (src / "zz").mkdir()
                (src / "zz" / "big.bin").write_bytes(os.urandom(200 * MiB))
                proc = subprocess.Popen([sys.executable, "-m", "artifactfs", *cmd], env=ENV)
                tmp = reg / "objects" / "tmp"
                wait_for(lambda p=proc, t=tmp: p.poll() is not None or (t.is_dir() and any(t.iterdir())), 120, "log")
                time.sleep(0.1)
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=60)
                killed = k if proc.returncode == -signal.SIGKILL else None
            else:
                run_cli(*cmd)
        wait_for(lambda: len(seen) >= 5 or bool(problems), 120, "readers to see every version")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert problems == []
    assert killed == 3, "the log was not killed half-way"
    assert len(seen) == 5, seen
    assert killed not in seen.values()
    assert m.proc.poll() is None
    force_unmount(m.path)


def test_row_whose_file_never_arrived_is_a_miss(tmp_path: Path) -> None:
    """A daemon killed between committing a blob's row and renaming its file into place (the
    order the store uses, so no file is ever left that no row names): a miss, fetched again."""
    cache = tmp_path / "cache"
    store = BlobStore(str(cache))
    data = os.urandom(100_000)
    entry = entry_for(data)
    store.fill(entry.cache_key, entry, source(data), "x").close()
    store.close()
    ((_, val),) = cache_rows(cache)
    os.unlink(val)
    store = BlobStore(str(cache))
    try:
        assert store.open_cached(entry.cache_key) is None
        assert store.open_verified(entry.cache_key, entry, "x") is None
        store.fill(entry.cache_key, entry, source(data), "x").close()
        assert blob_bytes(store, entry.cache_key) == data
        assert assert_cache_is_sound(cache) == 1
    finally:
        store.close()


# -- group commit: kill points inside a batch -------------------------------------------------------

GROUP_FILL = """
import os, sys
sys.path.insert(0, {tests!r})
from test_store import entry_for, source
from artifactfs import store as store_mod

point = sys.argv[2]
store_mod._batch_hook = lambda step: os._exit(9) if step == point else None
store = store_mod.BlobStore(sys.argv[1], group_commit=True)
for i in range(int(sys.argv[3])):
    data = bytes([i]) * (1000 + i)
    entry = entry_for(data)
    blob = store.fill(entry.cache_key, entry, source(data), "x", group=True)  # served before its batch commits
    assert blob.pread(blob.size + 1, 0) == data
    blob.close()
store.close()  # the batch commits here (or the process dies at the kill point)
"""

BATCH_STEPS = ["start", "synced", "rows", "renamed", "synced2", "recorded", "none"]


@pytest.mark.parametrize("point", BATCH_STEPS)
def test_sigkill_inside_a_group_commit_batch(tmp_path: Path, point: str) -> None:
    """A process killed at each step of a batch (before the sync, after it, after the rows,
    after the renames, after the second sync, after the records) leaves a cache where a blob is
    trusted without hashing only if its record was committed after its bytes and its name were
    durable; the others are misses (fetched again) or hashed before use, never wrong bytes."""
    cache = tmp_path / "cache"
    n = 12
    tests = str(Path(__file__).parent)
    script = GROUP_FILL.format(tests=tests)
    env = {**ENV, "PYTHONPATH": str(Path(tests).parent)}
    proc = subprocess.run([sys.executable, "-c", script, str(cache), point, str(n)], env=env, timeout=120)
    assert proc.returncode == (0 if point == "none" else 9)
    assert_cache_is_sound(cache)
    store = BlobStore(str(cache))
    try:
        store.clean_tmp(max_age=0)
        trusted = hashed = missed = 0
        for i in range(n):
            data = bytes([i]) * (1000 + i)
            entry = entry_for(data)
            blob = store.open_cached(entry.cache_key)
            if blob is not None:
                trusted += 1
            else:
                blob = store.open_verified(entry.cache_key, entry, "x")
                if blob is None:
                    missed += 1
                    continue
                hashed += 1
            try:
                assert blob.pread(blob.size + 1, 0) == data
            finally:
                blob.close()
        expected = {
            "start": (0, 0, n),
            "synced": (0, 0, n),
            "rows": (0, 0, n),  # rows whose files never arrived
            "renamed": (0, n, 0),  # files without records: hashed, then trusted again
            "synced2": (0, n, 0),
            "recorded": (n, 0, 0),
            "none": (n, 0, 0),
        }[point]
        assert (trusted, hashed, missed) == expected
        assert not os.listdir(cache / "tmp")
    finally:
        store.close()
