"""Real FUSE mounts: the filesystem as ordinary tools and programs see it.

Every test mounts a registry with the ``mounter`` fixture (a ``mount --foreground`` daemon in a
subprocess, unmounted afterwards) and drives it through coreutils, attr tools or Python I/O.
Counters come from the root's ``user.artifactfs.stats`` attribute.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import mmap
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PY, SAMPLE_FILES, LiveEnv, Mount, Mounter, force_unmount, is_mounted, run_cli, write_tree
from fault_server import Fault, FaultServer

from artifactfs import Api, Artifact
from artifactfs.errors import CacheError, MountError
from artifactfs.names import parse_ref
from artifactfs.registry.local import LocalRegistry

pytestmark = pytest.mark.fuse

MiB = 1 << 20
ENV = LiveEnv(LC_ALL="C.UTF-8", LANG="C.UTF-8")  # the test's environment when used
EROFS_TEXT = "Read-only file system"
CORRUPT = "train/000002.txt"  # a file of ds:v1 whose content no other file shares


# -- helpers --------------------------------------------------------------------------------------


def sh(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="surrogateescape",
        cwd=cwd,
        env=ENV,
        timeout=60,
    )


def ok(*cmd: str | Path, cwd: Path | None = None) -> str:
    proc = sh(*cmd, cwd=cwd)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}: {proc.stderr}"
    return proc.stdout


def project(m: Mount) -> Path:
    return m.path / "acme" / "vision"


def v1(m: Mount) -> Path:
    return project(m) / "ds:v1"


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def blob_path(registry: Path, data: bytes) -> Path:
    hexd = hashlib.md5(data).hexdigest()
    return registry / "objects" / "md5" / hexd[:2] / hexd[2:]


def overwrite_blob(path: Path, data: bytes) -> None:
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.write(data)
    path.chmod(0o444)


def cache_keys(cache_dir: Path) -> set[str]:
    """The keys in a blob cache (diskcache's SQLite index, opened read-only)."""
    conn = sqlite3.connect(f"file:{cache_dir / 'cache.db'}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT key FROM Cache")}
    finally:
        conn.close()


def version_info(registry: Path, ref: str) -> dict[str, object]:
    out = run_cli("info", ref, "--json", "--registry", str(registry)).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def created_at_ns(registry: Path, ref: str) -> int:
    reg = LocalRegistry(registry)
    try:
        return reg.resolve(parse_ref(ref)).created_at_ns
    finally:
        reg.close()


def getfattr(path: Path) -> dict[str, bytes]:
    """``getfattr -d -m -`` of one path, values decoded from ``-e hex``."""
    out = ok("getfattr", "-d", "-m", "-", "-e", "hex", "--absolute-names", path)
    attrs: dict[str, bytes] = {}
    for line in out.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        attrs[name] = bytes.fromhex(value[2:]) if value.startswith("0x") else b""
    return attrs


def mount_options(path: Path) -> list[str]:
    target = os.path.realpath(path)
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if parts[1].encode().decode("unicode_escape") == target:
                return parts[3].split(",")
    raise AssertionError(f"{path} is not in /proc/mounts")


def read_all(root: Path) -> dict[str, bytes]:
    """Every regular file below ``root`` (not following symlinks), by relative path."""
    out: dict[str, bytes] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = Path(dirpath) / name
            out[full.relative_to(root).as_posix()] = full.read_bytes()
    return out


def expect_errno(code: int, fn: object, *args: object) -> None:
    with pytest.raises(OSError) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.errno == code, f"{fn}{args}: {info.value!r}, expected {errno.errorcode[code]}"


@pytest.fixture
def mounted(mounter: Mounter, sample_registry: tuple[Path, Path]) -> tuple[Mount, Path]:
    """The sample registry mounted with default options; returns (mount, source tree of ds:v1)."""
    reg, src = sample_registry
    return mounter(reg), src


# -- what tools see -------------------------------------------------------------------------------


def test_ls_shows_the_layout(mounted: tuple[Mount, Path]) -> None:
    m, _ = mounted
    assert ok("ls", "-A", m.path).splitlines() == ["acme"]
    assert ok("ls", "-A", m.path / "acme").splitlines() == ["vision"]
    assert ok("ls", "-A", project(m)).splitlines() == [
        "ds:best",
        "ds:latest",
        "ds:v0",
        "ds:v1",
        "model:latest",
        "model:v0",
    ]
    top = sorted({rel.split("/")[0] for rel in SAMPLE_FILES})
    assert ok("ls", "-A", v1(m)).splitlines() == sorted(top)
    long = ok("ls", "-l", project(m)).splitlines()[1:]
    assert any(line.startswith("dr-xr-xr-x") and line.endswith(" ds:v1") for line in long), long
    assert any(line.startswith("l") and line.endswith(" ds:latest -> ds:v1") for line in long), long
    assert any(line.startswith("l") and line.endswith(" ds:best -> ds:v0") for line in long), long


def test_find_lists_every_file_and_dir(mounted: tuple[Mount, Path]) -> None:
    m, _ = mounted
    files = set(ok("find", v1(m), "-type", "f", "-printf", "%P\\n").splitlines())
    assert files == set(SAMPLE_FILES)
    dirs = set(ok("find", v1(m), "-mindepth", "1", "-type", "d", "-printf", "%P\\n").splitlines())
    assert dirs == {"train", "train/deep", "train/deep/er", "train/deep/er/still", "with space"}
    links = set(ok("find", project(m), "-type", "l", "-printf", "%P\\n").splitlines())
    assert links == {"ds:latest", "ds:best", "model:latest"}


def test_stat_reports_types_and_sizes(mounted: tuple[Mount, Path]) -> None:
    m, _ = mounted
    for rel, data in SAMPLE_FILES.items():
        size, kind = ok("stat", "--printf", "%s\\t%F", v1(m) / rel).split("\t")
        assert int(size) == len(data), rel
        assert kind == ("regular empty file" if not data else "regular file"), rel
    assert ok("stat", "--printf", "%F", v1(m) / "train") == "directory"
    assert ok("stat", "--printf", "%F", project(m) / "ds:latest") == "symbolic link"
    # stat -L follows the alias into the version directory: the same inode as ds:v1.
    assert ok("stat", "-L", "--printf", "%i", project(m) / "ds:latest") == ok("stat", "--printf", "%i", v1(m))


def test_du_counts_sizes_and_blocks(mounted: tuple[Mount, Path]) -> None:
    m, _ = mounted
    apparent = ok("du", "-s", "-b", v1(m)).split()[0]
    assert int(apparent) == sum(len(d) for d in SAMPLE_FILES.values())
    blocks = ok("du", "-s", "-B1", v1(m)).split()[0]
    assert int(blocks) == sum((len(d) + 511) // 512 * 512 for d in SAMPLE_FILES.values())


def test_cp_r_copies_the_version(mounted: tuple[Mount, Path], tmp_path: Path) -> None:
    m, src = mounted
    dest = tmp_path / "copy"
    ok("cp", "-r", v1(m), dest)
    assert read_all(dest) == SAMPLE_FILES
    proc = sh("diff", "-r", dest, src)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_diff_r_mount_equals_source(mounted: tuple[Mount, Path]) -> None:
    m, src = mounted
    proc = sh("diff", "-r", v1(m), src)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = sh("diff", "-r", f"{project(m) / 'ds:latest'}/", src)  # through the alias symlink
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ds:v0 differs from the v1 source: diff must notice (the check above is not vacuous).
    assert sh("diff", "-r", project(m) / "ds:v0", src).returncode == 1


def test_md5sum_matches_source(mounted: tuple[Mount, Path]) -> None:
    m, src = mounted
    rels = sorted(SAMPLE_FILES)
    out = ok("md5sum", "--", *rels, cwd=v1(m)).splitlines()
    assert len(out) == len(rels)
    for rel, line in zip(rels, out, strict=True):
        digest, name = line.split("  ", 1)
        assert name == rel
        assert digest == hashlib.md5((src / rel).read_bytes()).hexdigest(), rel


def test_readlink_of_aliases(mounted: tuple[Mount, Path]) -> None:
    m, _ = mounted
    assert ok("readlink", project(m) / "ds:latest").strip() == "ds:v1"
    assert ok("readlink", project(m) / "ds:best").strip() == "ds:v0"
    assert os.readlink(project(m) / "model:latest") == "model:v0"
    assert os.path.realpath(project(m) / "ds:best") == str(project(m) / "ds:v0")
    assert (project(m) / "ds:best" / "README.md").read_bytes() == b"# v0\n"


def test_getfattr_of_a_version_dir(mounted: tuple[Mount, Path]) -> None:
    m, _ = mounted
    for tag, aliases, metadata, files in (("v1", "latest", {}, len(SAMPLE_FILES)), ("v0", "best", {"rows": 1}, 2)):
        attrs = getfattr(project(m) / f"ds:{tag}")
        info = version_info(m.registry, f"acme/vision/ds:{tag}")
        assert attrs["user.artifact.digest"].decode() == info["digest"]
        assert json.loads(attrs["user.artifact.metadata"]) == metadata
        assert attrs["user.artifact.aliases"].decode() == aliases
        assert attrs["user.artifact.version"].decode() == tag
        assert attrs["user.artifact.id"].decode() == info["id"]
        assert attrs["user.artifact.type"] == b"dataset"
        assert attrs["user.artifact.file_count"].decode() == str(files)
        assert attrs["user.artifact.created_at"].decode() == info["created_at"]


def test_getfattr_of_a_file(mounted: tuple[Mount, Path]) -> None:
    m, _ = mounted
    for rel in ("README.md", "with space/ünïcødé name.txt", "empty", "train/deep/er/still/x.bin"):
        attrs = getfattr(v1(m) / rel)
        assert attrs["user.artifact.entry.digest"].decode() == md5_b64(SAMPLE_FILES[rel]), rel
        assert attrs["user.artifact.entry.size"].decode() == str(len(SAMPLE_FILES[rel])), rel
        assert "user.artifact.entry.ref" not in attrs
    assert os.getxattr(v1(m) / "README.md", "user.artifact.entry.size") == b"9"


def test_read_at_offsets(mounted: tuple[Mount, Path], tmp_path: Path) -> None:
    m, _ = mounted
    data = (tmp_path / "model" / "model.pt").read_bytes()
    path = project(m) / "model:v0" / "model.pt"
    cases = [(299_990, 100), (131_072, 5000), (0, 1), (131_071, 2), (4095, 200_000), (1, 10), (300_000, 10)]
    cases += [(400_000, 10), (77_777, 0), (12_345, 300_000)]
    with open(path, "rb") as f:
        for off, n in cases:
            f.seek(off)
            assert f.read(n) == data[off : off + n], (off, n)
            assert f.tell() == min(off + n, max(off, len(data)))
        f.seek(-10, os.SEEK_END)
        assert f.read() == data[-10:]
    with open(path, "rb", buffering=0) as raw:
        fd = raw.fileno()
        for off, n in cases:
            assert os.pread(fd, n, off) == data[off : off + n], (off, n)


def test_mmap_of_a_file(mounted: tuple[Mount, Path], tmp_path: Path) -> None:
    m, _ = mounted
    data = (tmp_path / "model" / "model.pt").read_bytes()
    with (
        open(project(m) / "model:v0" / "model.pt", "rb") as f,
        mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm,
    ):
        assert len(mm) == len(data)
        assert mm[250_000:250_100] == data[250_000:250_100]
        assert mm[:] == data
        assert mm.find(data[123_456:123_490]) == data.find(data[123_456:123_490])
    with open(v1(m) / "train/deep/er/still/x.bin", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert mm[:] == SAMPLE_FILES["train/deep/er/still/x.bin"]


def test_listing_and_stat_do_not_fetch(mounted: tuple[Mount, Path]) -> None:
    m, _ = mounted
    out = ok("ls", "-lRA", m.path)
    assert "ünïcødé name.txt" in out and "model.pt" in out
    paths = ok("find", m.path).splitlines()
    assert len(paths) > len(SAMPLE_FILES)
    ok("find", m.path, "-exec", "stat", "{}", "+")
    ok("du", "-s", m.path)
    ok("du", "-s", "-b", m.path)
    stats = m.stats()
    assert stats["verified_in_place"] == 0
    assert stats["fetches"] == 0
    assert stats["trusted_in_place"] == stats["cache_hits"] == 0
    # The counters do count: reading one file verifies exactly that blob.
    assert (v1(m) / "README.md").read_bytes() == SAMPLE_FILES["README.md"]
    assert m.stats()["verified_in_place"] == 1


def test_modes_owner_and_mtime(mounted: tuple[Mount, Path]) -> None:
    m, _ = mounted
    created = {name: created_at_ns(m.registry, f"acme/vision/{name}") for name in ("ds:v0", "ds:v1", "model:v0")}
    assert len(set(created.values())) == 3
    seen = {"dir": 0, "file": 0, "link": 0}
    for dirpath, dirs, files in os.walk(m.path):
        for name in [*dirs, *files]:
            path = Path(dirpath) / name
            st = os.lstat(path)
            assert st.st_uid == os.getuid(), path
            assert st.st_gid == os.getgid(), path
            rel = path.relative_to(project(m)).parts if path.is_relative_to(project(m)) else ()
            if stat.S_ISLNK(st.st_mode):
                seen["link"] += 1
                continue
            if stat.S_ISDIR(st.st_mode):
                seen["dir"] += 1
                assert stat.S_IMODE(st.st_mode) == 0o555, path
            else:
                assert stat.S_ISREG(st.st_mode), path
                seen["file"] += 1
                assert stat.S_IMODE(st.st_mode) == 0o444, path
            if rel:
                assert st.st_mtime_ns == created[rel[0]], path
    assert seen == {"dir": 11, "file": len(SAMPLE_FILES) + 2 + 1, "link": 3}
    assert stat.S_IMODE(os.stat(m.path).st_mode) == 0o555
    assert os.stat(m.path).st_uid == os.getuid()


# -- read-only ------------------------------------------------------------------------------------

EROFS_COMMANDS = {
    "touch-new": ("touch", "ds:v1/new.txt"),
    "touch-existing": ("touch", "ds:v1/README.md"),
    "touch-in-project": ("touch", "new.txt"),
    "rm": ("rm", "-f", "ds:v1/README.md"),
    "rm-r": ("rm", "-rf", "ds:v1/train"),
    "mkdir": ("mkdir", "ds:v1/newdir"),
    "mkdir-version": ("mkdir", "ds:v7"),
    "mv": ("mv", "ds:v1/README.md", "ds:v1/README2.md"),
    "mv-version": ("mv", "ds:v0", "ds:v9"),
    "chmod": ("chmod", "644", "ds:v1/README.md"),
    "setfattr": ("setfattr", "-n", "user.note", "-v", "x", "ds:v1/README.md"),
    "setfattr-version": ("setfattr", "-n", "user.artifact.digest", "-v", "x", "ds:v1"),
    "ln-s": ("ln", "-s", "ds:v0", "ds:mine"),
}


@pytest.mark.parametrize("cmd", EROFS_COMMANDS.values(), ids=EROFS_COMMANDS.keys())
def test_writes_fail_with_erofs(mounted: tuple[Mount, Path], cmd: tuple[str, ...]) -> None:
    m, _ = mounted
    proc = sh(*cmd, cwd=project(m))
    assert proc.returncode != 0
    assert EROFS_TEXT in proc.stderr, proc.stderr
    # Nothing changed.
    assert read_all(v1(m)) == SAMPLE_FILES
    assert os.getxattr(v1(m) / "README.md", "user.artifact.entry.size") == b"9"
    assert sorted(os.listdir(project(m))) == ["ds:best", "ds:latest", "ds:v0", "ds:v1", "model:latest", "model:v0"]
    assert stat.S_IMODE(os.stat(v1(m) / "README.md").st_mode) == 0o444


def _open(path: Path, mode: str) -> None:
    with open(path, mode):
        pass


PY_WRITES = {
    "open-w": lambda p: _open(p / "README.md", "w"),
    "open-a": lambda p: _open(p / "README.md", "a"),
    "open-r+": lambda p: _open(p / "README.md", "r+"),
    "open-w-new": lambda p: _open(p / "new.txt", "wb"),
    "open-x": lambda p: _open(p / "new.txt", "x"),
    "os.open-trunc": lambda p: os.open(p / "README.md", os.O_RDONLY | os.O_TRUNC),
    "truncate": lambda p: os.truncate(p / "README.md", 0),
    "truncate-grow": lambda p: os.truncate(p / "README.md", 100),
    "unlink": lambda p: os.unlink(p / "README.md"),
    "rmdir": lambda p: os.rmdir(p / "train/deep/er/still"),
    "utime": lambda p: os.utime(p / "README.md", (0, 0)),
    "setxattr": lambda p: os.setxattr(p / "README.md", "user.x", b"1"),
    "removexattr": lambda p: os.removexattr(p / "README.md", "user.artifact.entry.size"),
    "rename": lambda p: os.rename(p / "README.md", p / "train/README.md"),
    "link": lambda p: os.link(p / "README.md", p / "hard"),
}


@pytest.mark.parametrize("op", PY_WRITES.values(), ids=PY_WRITES.keys())
def test_python_writes_fail_with_erofs(mounted: tuple[Mount, Path], op: object) -> None:
    m, _ = mounted
    expect_errno(errno.EROFS, op, v1(m))
    assert read_all(v1(m)) == SAMPLE_FILES
    assert not (v1(m) / "new.txt").exists()


ENOENT_PATHS = {
    "entity": "nosuch",
    "project": "acme/nosuch",
    "artifact-name": "acme/vision/nosuch:v0",
    "alias": "acme/vision/ds:nosuch",
    "version": "acme/vision/ds:v99",
    "empty-tag": "acme/vision/ds:",
    "path-in-version": "acme/vision/ds:v1/nosuch.txt",
    "deep-path": "acme/vision/ds:v1/train/deep/nosuch",
    "path-via-alias": "acme/vision/ds:latest/nosuch.txt",
    "no-colon": "acme/vision/ds",
    "no-colon-model": "acme/vision/model",
}


@pytest.mark.parametrize("rel", ENOENT_PATHS.values(), ids=ENOENT_PATHS.keys())
def test_unknown_names_are_enoent(mounted: tuple[Mount, Path], rel: str) -> None:
    m, _ = mounted
    expect_errno(errno.ENOENT, os.lstat, m.path / rel)
    expect_errno(errno.ENOENT, os.stat, m.path / rel)  # again: the kernel's negative entry
    expect_errno(errno.ENOENT, open, m.path / rel, "rb")
    proc = sh("ls", m.path / rel)
    assert proc.returncode != 0 and "No such file or directory" in proc.stderr


# -- verification ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["verify-in-place", "copy"])
@pytest.mark.allow_log(r"digest mismatch")
def test_corrupted_blob_gives_eio_until_repaired(
    mounter: Mounter, sample_registry: tuple[Path, Path], mode: str
) -> None:
    reg, _ = sample_registry
    good = SAMPLE_FILES[CORRUPT]
    bad = bytearray(good)
    bad[1234] ^= 0x20
    blob = blob_path(reg, good)
    overwrite_blob(blob, bytes(bad))
    backoff = 5.0  # generous: the second read must come within it, even on a loaded machine
    m = mounter(reg, "--local-blobs", mode, "--failure-backoff", str(backoff))
    path = v1(m) / CORRUPT

    t0 = time.monotonic()
    expect_errno(errno.EIO, path.read_bytes)
    failed_by = time.monotonic()  # the failure was remembered between t0 and now
    overwrite_blob(blob, good)  # repaired, but the failure is remembered for --failure-backoff
    expect_errno(errno.EIO, path.read_bytes)
    assert time.monotonic() - t0 < backoff, "too slow to observe the backoff window"

    # The other files of the same version are fine.
    for rel in ("README.md", "train/000001.txt", "train/deep/er/still/x.bin", "with space/ünïcødé name.txt"):
        assert (v1(m) / rel).read_bytes() == SAMPLE_FILES[rel], rel
    stats = m.stats()
    assert stats["digest_mismatches"] == 1
    assert stats["fetch_errors"] == 0
    log = m.log()
    assert "digest mismatch" in log
    assert md5_b64(good) in log and md5_b64(bytes(bad)) in log
    # One line for the failure, not one more for each read it failed (two here, and the kernel's).
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "digest mismatch" in errors[0], errors
    key = "md5/" + hashlib.md5(good).hexdigest()
    keys = cache_keys(m.cache_dir)
    assert key not in keys and f"trust/{key}" not in keys
    if mode == "copy":
        assert stats["fetches"] == 4 and stats["verified_in_place"] == 0
        assert "md5/" + hashlib.md5(SAMPLE_FILES["README.md"]).hexdigest() in keys
        assert os.listdir(m.cache_dir / "tmp") == []  # the failed fill left no temp file
    else:
        assert stats["verified_in_place"] == 4 and stats["fetches"] == 0

    time.sleep(max(0.0, failed_by + backoff + 0.3 - time.monotonic()))
    assert path.read_bytes() == good
    stats = m.stats()
    assert stats["digest_mismatches"] == 1
    if mode == "copy":
        assert stats["fetches"] == 5
        assert key in cache_keys(m.cache_dir)
    else:
        assert stats["verified_in_place"] == 5
        # blobs up to 64 KiB are hashed inline once per mount and never get a trust record
        assert f"trust/{key}" not in cache_keys(m.cache_dir)


@pytest.fixture
def big_registry(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(20 * MiB + 12_345)
    src = write_tree(tmp_path / "bigsrc", {"big.bin": data, "small.txt": b"small\n"})
    reg = LocalRegistry(tmp_path / "bigreg", create=True)
    try:
        reg.log_dir(src, parse_ref("acme/vision/big"), type="dataset")
    finally:
        reg.close()
    return tmp_path / "bigreg", data


@pytest.mark.parametrize("mode", ["verify-in-place", "copy"])
def test_concurrent_readers_share_one_fetch(mounter: Mounter, big_registry: tuple[Path, bytes], mode: str) -> None:
    reg, data = big_registry
    m = mounter(reg, "--local-blobs", mode)
    path = project(m) / "big:v0" / "big.bin"
    want = hashlib.md5(data).hexdigest()
    n = 16
    barrier = threading.Barrier(n)
    results: list[str | BaseException] = [""] * n

    def reader(i: int) -> None:
        try:
            with open(path, "rb", buffering=0) as f:
                barrier.wait(timeout=30)
                # Each reader starts at its own offset, so the kernel sends many reads at once.
                start = i * len(data) // n
                f.seek(start)
                tail = f.read()
                f.seek(0)
                head = f.read(start)
            results[i] = hashlib.md5(head + tail).hexdigest()
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [want] * n
    stats = m.stats()
    if mode == "copy":
        assert stats["fetches"] == 1
        assert stats["fetched_bytes"] == len(data)
        assert stats["verified_in_place"] == 0
    else:
        assert stats["verified_in_place"] == 1
        assert stats["fetches"] == 0
    assert stats["digest_mismatches"] == stats["fetch_errors"] == 0
    assert " ERROR " not in m.log(), m.log()


def test_shared_file_is_stored_once_in_copy_mode(mounter: Mounter, tmp_path: Path) -> None:
    shared = os.urandom(50_000)
    a = write_tree(tmp_path / "a", {"shared.bin": shared, "a.txt": b"only in v0\n"})
    b = write_tree(tmp_path / "b", {"data/shared-too.bin": shared, "b.txt": b"only in v1\n"})
    reg = LocalRegistry(tmp_path / "reg", create=True)
    try:
        reg.log_dir(a, parse_ref("acme/vision/ds"), type="dataset")
        reg.log_dir(b, parse_ref("acme/vision/ds"), type="dataset")
    finally:
        reg.close()
    m = mounter(tmp_path / "reg", "--local-blobs", "copy")
    assert (project(m) / "ds:v0" / "shared.bin").read_bytes() == shared
    assert (project(m) / "ds:v1" / "data" / "shared-too.bin").read_bytes() == shared
    stats = m.stats()
    assert stats["fetches"] == 1
    assert stats["fetched_bytes"] == len(shared)
    assert stats["cache_hits"] >= 1
    blobs = [k for k in cache_keys(m.cache_dir) if k.startswith("md5/")]
    assert blobs == ["md5/" + hashlib.md5(shared).hexdigest()]


@pytest.mark.parametrize("mode", ["verify-in-place", "copy"])
def test_remount_reuses_the_cache(mounter: Mounter, sample_registry: tuple[Path, Path], mode: str) -> None:
    reg, src1 = sample_registry
    model = (src1.parent / "model" / "model.pt").read_bytes()  # 300,000 bytes: over 64 KiB
    small = len({d for d in SAMPLE_FILES.values() if d})  # distinct non-empty small blobs
    first = mounter(reg, "--local-blobs", mode)
    assert read_all(v1(first)) == SAMPLE_FILES
    assert (first.path / "acme/vision/model:v0/model.pt").read_bytes() == model
    before = first.stats()
    done = before["fetches"] if mode == "copy" else before["verified_in_place"]
    assert done == small + 1  # each distinct non-empty blob once
    first.unmount()
    assert first.proc.returncode == 0
    assert stat.S_IMODE(os.stat(first.cache_dir).st_mode) == 0o700

    second = mounter(reg, "--local-blobs", mode, cache_dir=first.cache_dir)
    assert read_all(v1(second)) == SAMPLE_FILES
    assert (second.path / "acme/vision/model:v0/model.pt").read_bytes() == model
    after = second.stats()
    assert after["fetches"] == 0
    if mode == "copy":
        assert after["cache_hits"] == done
        assert after["verified_in_place"] == 0
    else:
        # the big blob's trust record is reused; small ones are re-hashed (cheaper than a record)
        assert after["trusted_in_place"] == 1
        assert after["verified_in_place"] == small
    assert stat.S_IMODE(os.stat(second.cache_dir).st_mode) == 0o700


def read_uncached(path: Path) -> bytes:
    """The file's bytes, read through the filesystem rather than the kernel's page cache (the
    mount keeps it across opens)."""
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return f.read()


def test_cache_size_evicts_the_least_recently_used_blob(
    mounter: Mounter, sample_registry: tuple[Path, Path], tmp_path: Path
) -> None:
    reg, src1 = sample_registry
    model1 = (src1.parent / "model" / "model.pt").read_bytes()
    model2 = os.urandom(300_000)
    registry = LocalRegistry(reg)
    try:
        registry.log_dir(
            write_tree(tmp_path / "model2", {"model.pt": model2}), parse_ref("acme/vision/model2"), type="model"
        )
    finally:
        registry.close()
    key1, key2 = (f"md5/{hashlib.md5(d).hexdigest()}" for d in (model1, model2))

    def blobs() -> set[str]:
        return {k for k in cache_keys(m.cache_dir) if k.startswith("md5/")}

    def blob_files() -> list[Path]:
        return list(m.cache_dir.rglob("*.val"))

    # room for one 300 KB model (and diskcache's database), not for two
    m = mounter(reg, "--local-blobs", "copy", "--cache-size", "400K")
    path1, path2 = project(m) / "model:v0" / "model.pt", project(m) / "model2:v0" / "model.pt"
    assert read_uncached(path1) == model1
    assert blobs() == {key1} and len(blob_files()) == 1
    assert read_uncached(path2) == model2
    assert blobs() == {key2} and len(blob_files()) == 1
    assert m.stats()["fetches"] == 2

    assert read_uncached(path1) == model1  # evicted: fetched again, and model 2 makes room
    stats = m.stats()
    assert stats["fetches"] == 3 and stats["cache_hits"] == 0
    assert blobs() == {key1} and len(blob_files()) == 1
    assert stats["fetch_errors"] == stats["digest_mismatches"] == 0


def test_existing_cache_dir_is_made_private(
    mounter: Mounter, sample_registry: tuple[Path, Path], tmp_path: Path
) -> None:
    reg, _ = sample_registry
    cache = tmp_path / "shared-cache"
    cache.mkdir(mode=0o755)
    cache.chmod(0o755)
    m = mounter(reg, cache_dir=cache)
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    assert (v1(m) / "README.md").read_bytes() == SAMPLE_FILES["README.md"]


# -- http(s) reference entries --------------------------------------------------------------------


@pytest.mark.allow_log(r"digest mismatch")
def test_http_reference_entries(mounter: Mounter, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 77)
    other = os.urandom(200_000)
    with FaultServer() as server:
        url = server.add("/bucket/data.bin", data, etag='"d1"')
        other_url = server.add("/bucket/other.bin", other)
        src = write_tree(tmp_path / "src", {"README.md": b"a normal file\n"})
        with Api(tmp_path / "reg") as api:
            art = Artifact("refs", type="dataset")
            art.add_dir(src)
            art.add_reference(url, name="remote/data.bin")
            art.add_reference(other_url, name="remote/other.bin")
            api.log_artifact(art, "acme/vision")
        assert len(server.gets()) == 2  # each reference fetched once, when logged
        server.reset()

        m = mounter(tmp_path / "reg")
        version = project(m) / "refs:v0"
        path = version / "remote" / "data.bin"
        # metadata is answered from the manifest: no request reaches the server
        listing = ok("ls", "-l", version / "remote")
        assert f" {len(data)} " in listing and f" {len(other)} " in listing
        assert ok("stat", "-c", "%s", path).strip() == str(len(data))
        ref = ok("getfattr", "--only-values", "-n", "user.artifact.entry.ref", path)
        assert ref == f"http://127.0.0.1:{server.port}/bucket/data.bin"  # no query string
        assert server.gets() == []

        # content: one GET, verified, then served from the cache
        assert ok("md5sum", path).split()[0] == hashlib.md5(data).hexdigest()
        assert read_uncached(path) == data
        assert (version / "README.md").read_bytes() == b"a normal file\n"
        assert [(s.path, s.status) for s in server.gets()] == [("/bucket/data.bin", 200)]

        # a corrupted body is EIO, logged, and not cached
        server.plan("/bucket/other.bin", Fault(corrupt=True))
        expect_errno(errno.EIO, (version / "remote" / "other.bin").read_bytes)
        stats = m.stats()
        assert stats["digest_mismatches"] == 1 and stats["fetches"] == 1
        log = m.log()
        assert "digest mismatch: acme/vision/refs:v0/remote/other.bin" in log
        assert "secret" not in log
        m.unmount()
        assert "md5/" + hashlib.md5(other).hexdigest() not in cache_keys(m.cache_dir)

        # a second mount on the same cache directory serves the blob without any request
        server.reset()
        again = mounter(tmp_path / "reg", cache_dir=m.cache_dir)
        assert (project(again) / "refs:v0" / "remote" / "data.bin").read_bytes() == data
        assert server.gets() == []
        assert again.stats()["cache_hits"] == 1 and again.stats()["fetches"] == 0


# -- lifecycle ------------------------------------------------------------------------------------


def test_sigkill_then_umount_and_mount_again(mounter: Mounter, sample_registry: tuple[Path, Path]) -> None:
    reg, _ = sample_registry
    m = mounter(reg)
    assert (v1(m) / "README.md").read_bytes() == SAMPLE_FILES["README.md"]
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(timeout=60)
    assert is_mounted(m.path)
    expect_errno(errno.ENOTCONN, os.listdir, m.path)  # a dead mount: nobody answers
    proc = run_cli("umount", str(m.path), check=False)
    assert proc.returncode == 0, proc.stderr
    assert not is_mounted(m.path)
    assert os.listdir(m.path) == []

    again = mounter(reg, mountpoint=m.path)
    assert again.path == m.path and is_mounted(m.path)
    assert (v1(again) / "README.md").read_bytes() == SAMPLE_FILES["README.md"]


def _until_serving(m: Mount) -> None:
    """Until the daemon logged its mount: its signal handler is installed by then."""
    deadline = time.monotonic() + 60
    while "mounted " not in m.log():
        assert time.monotonic() < deadline, m.log()
        time.sleep(0.02)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_unmounts_cleanly(mounter: Mounter, sample_registry: tuple[Path, Path], signum: int) -> None:
    reg, _ = sample_registry
    m = mounter(reg)
    _until_serving(m)
    assert (v1(m) / "README.md").read_bytes() == SAMPLE_FILES["README.md"]
    m.proc.send_signal(signum)
    assert m.proc.wait(timeout=60) == 0, m.log()
    assert not is_mounted(m.path)
    assert os.listdir(m.path) == []
    assert "Traceback" not in m.log()


@pytest.mark.parametrize("second", [False, True], ids=["reader-finishes", "second-signal"])
def test_a_signal_lets_a_busy_reader_finish(mounter: Mounter, sample_registry: tuple[Path, Path], second: bool) -> None:
    """SIGTERM while a reader is busy: the mount point is detached at once (nothing new
    opens), the open file reads on to its end with the right bytes, and the daemon exits 0 once
    it is closed.  A second signal stops at once: the reader gets ENOTCONN, never wrong bytes."""
    reg, _ = sample_registry
    m = mounter(reg)
    _until_serving(m)
    data = SAMPLE_FILES[CORRUPT]
    f = open(v1(m) / CORRUPT, "rb", buffering=0)  # noqa: SIM115  # closed below, ENOTCONN or not
    try:
        assert f.read(100) == data[:100]
        m.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while is_mounted(m.path):  # detached at once ...
            assert time.monotonic() < deadline, m.log()
            time.sleep(0.02)
        assert not (m.path / "acme").exists()  # ... nothing new opens ...
        assert m.proc.poll() is None  # ... and the daemon serves the open file
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        if second:
            m.proc.send_signal(signal.SIGTERM)
            assert m.proc.wait(timeout=60) == 0, m.log()
            with pytest.raises(OSError) as info:
                os.pread(f.fileno(), 100, 2000)
            assert info.value.errno == errno.ENOTCONN
        else:
            assert os.pread(f.fileno(), 100, 2000) == data[2000:2100]
            assert f.read() == data[100:]
            time.sleep(0.2)
            assert m.proc.poll() is None  # still open: still serving
    finally:
        with contextlib.suppress(OSError):  # after the second signal, close is ENOTCONN too
            f.close()
    if not second:
        assert m.proc.wait(timeout=60) == 0, m.log()  # closed: the kernel ends the connection
    assert "Traceback" not in m.log()


def _daemon_pids(mountpoint: Path, tmp_path: Path) -> list[int]:
    """Our daemons for ``mountpoint``: pgrep by the unique path, confirmed by the cmdline."""
    out = subprocess.run(["pgrep", "-f", str(mountpoint)], capture_output=True, text=True).stdout
    pids = []
    for pid in map(int, out.split()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(tmp_path) in cmdline and "artifactfs" in cmdline:
            pids.append(pid)
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@contextlib.contextmanager
def _background_cleanup(mountpoint: Path, tmp_path: Path) -> Iterator[None]:
    try:
        yield
    finally:
        force_unmount(mountpoint)
        for pid in _daemon_pids(mountpoint, tmp_path):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_umount_refuses_what_is_not_an_artifactfs_mount(tmp_path: Path, require_fuse: None) -> None:
    """``artifactfs umount`` of a path where no artifactfs mount stands is refused, and anything
    else mounted there is left as it was (``fusermount3 -u -z`` as root would detach it)."""
    plain = tmp_path / "plain"
    plain.mkdir()
    proc = run_cli("umount", str(plain), check=False)
    assert proc.returncode == 1 and "is not an artifactfs mount" in proc.stderr, proc.stderr
    if os.geteuid() != 0:
        return
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(other)], check=True)
    try:
        (other / "kept").write_text("still here")
        with open(other / "kept") as busy:  # busy: only a lazy unmount could take it
            proc = run_cli("umount", str(other), check=False)
            assert proc.returncode == 1 and "is not an artifactfs mount" in proc.stderr, proc.stderr
            assert os.path.ismount(other) and busy.read() == "still here"
    finally:
        subprocess.run(["umount", str(other)], capture_output=True)
    assert not os.path.ismount(other)


def test_background_mount_and_umount(sample_registry: tuple[Path, Path], tmp_path: Path, require_fuse: None) -> None:
    reg, _ = sample_registry
    mnt = tmp_path / "bg-mnt"
    mnt.mkdir()
    cache = tmp_path / "bg-cache"
    with _background_cleanup(mnt, tmp_path):
        proc = run_cli("mount", str(reg), str(mnt), "--cache-dir", str(cache), check=False)
        assert proc.returncode == 0, proc.stderr
        assert os.listdir(mnt) == ["acme"]  # ready when the command returns
        assert (mnt / "acme/vision/ds:v1/README.md").read_bytes() == SAMPLE_FILES["README.md"]
        pids = _daemon_pids(mnt, tmp_path)
        assert len(pids) == 1 and _alive(pids[0])
        assert (cache / "mount.log").exists()

        proc = run_cli("umount", str(mnt), check=False)
        assert proc.returncode == 0, proc.stderr
        assert not is_mounted(mnt)
        deadline = time.monotonic() + 60
        while _alive(pids[0]):
            assert time.monotonic() < deadline, "the daemon did not exit after umount"
            time.sleep(0.05)
        assert "Traceback" not in (cache / "mount.log").read_text()


def test_background_daemon_is_detached_and_keeps_nothing_of_its_caller(
    sample_registry: tuple[Path, Path], tmp_path: Path, require_fuse: None
) -> None:
    """The daemon (a fork of the mount command) leads its own session, reads /dev/null, writes
    to its log, and holds no descriptor the caller gave the command: a pipe left open in it
    would keep the caller's reader waiting for ever."""
    reg, _ = sample_registry
    mnt = tmp_path / "bg-mnt"
    mnt.mkdir()
    cache = tmp_path / "bg-cache"
    held_r, held_w = os.pipe()
    try:
        with _background_cleanup(mnt, tmp_path):
            cmd = [PY, "-m", "artifactfs", "mount", str(reg), str(mnt), "--cache-dir", str(cache)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, pass_fds=(held_w,))
            assert proc.returncode == 0, proc.stderr
            (pid,) = _daemon_pids(mnt, tmp_path)
            assert f"(pid {pid})" in proc.stderr
            assert os.getsid(pid) == pid and os.getsid(pid) != os.getsid(0)
            fds = {int(n): os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")}
            assert fds[0] == os.devnull
            assert fds[1] == fds[2] == str(cache / "mount.log")
            held = os.readlink(f"/proc/self/fd/{held_w}")
            assert held not in fds.values(), fds
            os.close(held_w)
            held_w = -1
            assert os.read(held_r, 1) == b""  # no writer left: the daemon did not keep it
            assert (mnt / "acme/vision/ds:v1/README.md").read_bytes() == SAMPLE_FILES["README.md"]
            run_cli("umount", str(mnt))
    finally:
        os.close(held_r)
        if held_w >= 0:
            os.close(held_w)


@pytest.mark.parametrize("case", ["mountpoint-missing", "mountpoint-not-empty", "registry-missing"])
def test_background_mount_failures(
    sample_registry: tuple[Path, Path], tmp_path: Path, require_fuse: None, case: str
) -> None:
    reg, _ = sample_registry
    mnt = tmp_path / "bg-mnt"
    if case != "mountpoint-missing":
        mnt.mkdir()
    if case == "mountpoint-not-empty":
        (mnt / "file").write_text("x")
    if case == "registry-missing":
        reg = tmp_path / "no-registry"
    with _background_cleanup(mnt, tmp_path):
        proc = run_cli("mount", str(reg), str(mnt), "--cache-dir", str(tmp_path / "bg-cache"), check=False)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("artifactfs: error: ")
        assert "Traceback" not in proc.stderr
        expected = {"mountpoint-missing": "does not exist", "mountpoint-not-empty": "not empty"}
        assert expected.get(case, "no registry") in lines[0]
        assert not is_mounted(mnt)
        assert _daemon_pids(mnt, tmp_path) == []


def test_background_mount_refuses_a_foreign_cache_dir_untouched(
    sample_registry: tuple[Path, Path], tmp_path: Path, require_fuse: None
) -> None:
    """--cache-dir pointed at a directory of other files (~ by mistake): one line, exit 1, and
    the directory left exactly as it was: no chmod, no mount.log written into it."""
    reg, _ = sample_registry
    mnt = tmp_path / "bg-mnt"
    mnt.mkdir()
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine\n")
    foreign.chmod(0o755)
    with _background_cleanup(mnt, tmp_path):
        proc = run_cli("mount", str(reg), str(mnt), "--cache-dir", str(foreign), check=False)
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "not an artifactfs cache" in lines[0], proc.stderr
        assert os.listdir(foreign) == ["notes.txt"]
        assert stat.S_IMODE(os.stat(foreign).st_mode) == 0o755
        assert not is_mounted(mnt)
        assert _daemon_pids(mnt, tmp_path) == []


def test_background_mount_without_fusermount3(sample_registry: tuple[Path, Path], tmp_path: Path) -> None:
    reg, _ = sample_registry
    mnt = tmp_path / "bg-mnt"
    mnt.mkdir()
    env = {**ENV, "PATH": "/nonexistent"}
    env.pop("ARTIFACTFS_REGISTRY", None)
    with _background_cleanup(mnt, tmp_path):
        proc = subprocess.run(
            [sys.executable, "-m", "artifactfs", "mount", str(reg), str(mnt), "--cache-dir", str(tmp_path / "c")],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("artifactfs: error: ") and "fusermount3" in lines[0]
        assert "Traceback" not in proc.stderr
        assert proc.stdout == ""
        assert not is_mounted(mnt)
        assert _daemon_pids(mnt, tmp_path) == []


def test_check_fuse_without_dev_fuse(monkeypatch: pytest.MonkeyPatch) -> None:
    from artifactfs import mount

    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: False if os.fspath(p) == "/dev/fuse" else real_exists(p))
    with pytest.raises(MountError, match="/dev/fuse"):
        mount.check_fuse()


WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"


def _wandb_env(tmp_path: Path, key: str | None) -> dict[str, str]:
    """The environment of a W&B mount: the key (if any) in WANDB_API_KEY, no netrc, no SDK cache."""
    env = {k: v for k, v in ENV.items() if k not in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY")}
    env.update(NETRC=str(tmp_path / "no-netrc"), WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"))
    if key is not None:
        env["WANDB_API_KEY"] = key
    return env


def test_background_wandb_mount_keeps_the_key_off_the_command_line(tmp_path: Path, require_fuse: None) -> None:
    """``mount wandb:URL``: the daemon gets the spec on its command line and the key only through
    the environment it inherits (``ps`` shows every user a command line, not an environment)."""
    from wandb_server import WandbServer

    mnt = tmp_path / "bg-mnt"
    mnt.mkdir()
    cache = tmp_path / "bg-cache"
    with WandbServer(api_key=WANDB_KEY, viewer_entity="acme") as server, _background_cleanup(mnt, tmp_path):
        server.add_artifact("acme", "vision", "ds", "dataset", {"a.txt": b"hello\n"}, aliases=["best"])
        proc = subprocess.run(
            [sys.executable, "-m", "artifactfs", "mount", f"wandb:{server.url}", str(mnt), "--cache-dir", str(cache)],
            capture_output=True,
            text=True,
            env=_wandb_env(tmp_path, WANDB_KEY),
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert WANDB_KEY not in proc.stderr
        assert (mnt / "acme" / "vision" / "ds:best" / "a.txt").read_bytes() == b"hello\n"
        [pid] = _daemon_pids(mnt, tmp_path)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert f"wandb:{server.url}".encode() in cmdline
        assert not any(WANDB_KEY.encode() in arg for arg in cmdline), cmdline
        assert f"WANDB_API_KEY={WANDB_KEY}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert WANDB_KEY not in (cache / "mount.log").read_text()
        assert run_cli("umount", str(mnt), check=False).returncode == 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("case", ["wrong-key", "no-key", "unreachable"])
def test_background_wandb_mount_failures_are_reported_before_daemonising(
    tmp_path: Path, require_fuse: None, case: str
) -> None:
    """Refused credentials, missing credentials and an unreachable server fail the ``mount``
    command itself, in one line, before any daemon exists (no daemon log is even written)."""
    from wandb_server import WandbServer

    mnt = tmp_path / "bg-mnt"
    mnt.mkdir()
    cache = tmp_path / "bg-cache"
    wrong = "f" * 40
    key = {"wrong-key": wrong, "no-key": None, "unreachable": WANDB_KEY}[case]
    with WandbServer(api_key=WANDB_KEY, viewer_entity="acme") as server, _background_cleanup(mnt, tmp_path):
        url = f"http://127.0.0.1:{_closed_port()}" if case == "unreachable" else server.url
        proc = subprocess.run(
            [sys.executable, "-m", "artifactfs", "mount", f"wandb:{url}", str(mnt), "--cache-dir", str(cache)],
            capture_output=True,
            text=True,
            env=_wandb_env(tmp_path, key),
            timeout=120,
        )
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("artifactfs: error: "), proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""
        assert url in lines[0] or "127.0.0.1" in lines[0], lines[0]
        assert WANDB_KEY not in proc.stderr and wrong not in proc.stderr
        assert not is_mounted(mnt)
        assert _daemon_pids(mnt, tmp_path) == []
        assert not (cache / "mount.log").exists()


def test_background_mount_refuses_a_mount_point_in_use(
    mounter: Mounter, sample_registry: tuple[Path, Path], tmp_path: Path
) -> None:
    reg, _ = sample_registry
    first = mounter(reg)
    try:
        proc = run_cli("mount", str(reg), str(first.path), "--cache-dir", str(tmp_path / "bg-cache"), check=False)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "already a mount point" in lines[0], proc.stderr
        assert _daemon_pids(first.path, tmp_path) == [first.proc.pid]
        assert (v1(first) / "README.md").read_bytes() == SAMPLE_FILES["README.md"]  # still served
    finally:
        for pid in _daemon_pids(first.path, tmp_path):
            if pid != first.proc.pid:
                os.kill(pid, signal.SIGKILL)


# -- names ----------------------------------------------------------------------------------------


def test_awkward_names_are_listed_and_readable(mounted: tuple[Mount, Path]) -> None:
    m, _ = mounted
    root = v1(m)
    assert read_all(root) == SAMPLE_FILES
    names = os.listdir(root)
    assert ".hidden" in names and "latest" in names and "colon:inside.txt" in names and "with space" in names
    assert ".hidden" not in ok("ls", root).splitlines()
    assert os.listdir(root / "with space") == ["ünïcødé name.txt"]
    assert ok("cat", root / "with space" / "ünïcødé name.txt") == "héllo wörld\n"
    assert ok("cat", root / "colon:inside.txt") == SAMPLE_FILES["colon:inside.txt"].decode()
    # ds:v1/latest is the file named latest, not an alias.
    assert stat.S_ISREG(os.lstat(root / "latest").st_mode)
    assert (root / "latest").read_bytes() == SAMPLE_FILES["latest"]
    assert os.listdir(root / "train/deep/er/still") == ["x.bin"]
    assert (root / "train/deep/er/still/x.bin").read_bytes() == SAMPLE_FILES["train/deep/er/still/x.bin"]
    assert (root / "empty").read_bytes() == b""


# -- registry changes under a mount -----------------------------------------------------------------


def test_alias_move_is_seen_after_the_ttl(mounter: Mounter, sample_registry: tuple[Path, Path]) -> None:
    reg, _ = sample_registry
    m = mounter(reg, "--alias-ttl", "1")
    best = project(m) / "ds:best"
    assert os.readlink(best) == "ds:v0"
    assert (best / "README.md").read_bytes() == b"# v0\n"
    assert os.getxattr(project(m) / "ds:v1", "user.artifact.aliases") == b"latest"

    run_cli("alias", "add", "acme/vision/ds:v1", "best", "--registry", str(reg))
    time.sleep(1.3)
    assert os.readlink(best) == "ds:v1"
    assert ok("readlink", best).strip() == "ds:v1"
    assert (best / "README.md").read_bytes() == SAMPLE_FILES["README.md"]
    assert read_all(Path(f"{best}/")) == SAMPLE_FILES
    assert os.getxattr(project(m) / "ds:v1", "user.artifact.aliases") == b"latest,best"
    assert os.getxattr(project(m) / "ds:v0", "user.artifact.aliases") == b""


def test_new_version_appears_after_the_ttl(
    mounter: Mounter, sample_registry: tuple[Path, Path], tmp_path: Path
) -> None:
    reg, _ = sample_registry
    m = mounter(reg, "--alias-ttl", "1")
    latest = project(m) / "ds:latest"
    assert os.readlink(latest) == "ds:v1"
    assert (latest / "README.md").read_bytes() == SAMPLE_FILES["README.md"]
    expect_errno(errno.ENOENT, os.stat, project(m) / "ds:v2")  # a negative entry the kernel keeps

    src2 = write_tree(tmp_path / "src2", {"README.md": b"# v2\n", "new.txt": b"new\n"})
    run_cli("log", str(src2), "acme/vision/ds", "--type", "dataset", "--registry", str(reg))
    time.sleep(1.3)
    # stat before listing: a readdirplus listing would replace the negative entry anyway.
    assert stat.S_ISDIR(os.stat(project(m) / "ds:v2").st_mode)
    assert os.readlink(latest) == "ds:v2"
    assert "ds:v2" in os.listdir(project(m))
    assert (latest / "README.md").read_bytes() == b"# v2\n"
    assert sorted(os.listdir(latest)) == ["README.md", "new.txt"]
    assert os.getxattr(project(m) / "ds:v1", "user.artifact.aliases") == b""


def _read_error(path: Path) -> int | None:
    """The errno of reading ``path`` (bypassing the page cache), or None if it reads."""
    try:
        read_uncached(path)
    except OSError as exc:
        return exc.errno
    return None


@pytest.mark.allow_log(r"artifactfs\.ops: read: ", r"fetch failed: ", r"its entries are gone from the registry")
def test_deleted_version_under_a_mount(mounter: Mounter, sample_registry: tuple[Path, Path]) -> None:
    """``artifactfs delete`` is soft: an open file keeps reading, the version leaves the
    listing after --alias-ttl; ``gc`` then removes its content, and new reads of it fail
    cleanly while the daemon and the other versions carry on."""
    reg, _ = sample_registry
    m = mounter(reg, "--alias-ttl", "1")
    version = v1(m)
    data = SAMPLE_FILES[CORRUPT]  # content only ds:v1 has
    unread = "train/deep/er/still/x.bin"  # ditto, never opened before the delete
    assert "ds:v1" in os.listdir(project(m))
    with open(version / CORRUPT, "rb", buffering=0) as f:
        assert f.read(100) == data[:100]
        run_cli("delete", "acme/vision/ds:v1", "--registry", str(reg))
        assert f.read() == data[100:]  # the open file keeps reading
        time.sleep(1.3)  # past --alias-ttl
        names = os.listdir(project(m))
        assert "ds:v1" not in names and "ds:v0" in names, names
        assert os.readlink(project(m) / "ds:latest") == "ds:v0"
        # a path that was looked up keeps its version, which says it was deleted
        assert os.getxattr(version, "user.artifact.state") == b"DELETED"
        assert os.getxattr(version, "user.artifact.aliases") == b""
        proc = run_cli("pin", str(version), check=False)
        assert proc.returncode == 1 and "acme/vision/ds:v1 was deleted from the registry" in proc.stderr
        # soft-deleted: still readable by whoever holds it, until gc
        assert os.pread(f.fileno(), 50, 1000) == data[1000:1050]
        assert (version / unread).read_bytes() == SAMPLE_FILES[unread]
        listed = "with space/ünïcødé name.txt"  # listed, never looked up nor opened
        assert os.listdir(version / "with space") == ["ünïcødé name.txt"]

        proc = run_cli("gc", "--grace", "0", "--registry", str(reg))
        assert proc.stdout.startswith("purged 1 deleted versions"), proc.stdout
        assert not blob_path(reg, data).exists()
        # The file already open still reads (the daemon holds the blob open) ...
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(f.fileno(), 50, 2000) == data[2000:2050]
    # ... but new reads fail with an errno, not a hang or a crash: a file the kernel already
    # knows has lost its blob (EIO), a file only listed has lost its entry (EIO: its name was
    # shown), a name never looked up is gone (ENOENT).
    assert _read_error(version / CORRUPT) == errno.EIO
    assert _read_error(version / unread) == errno.EIO
    assert _read_error(version / listed) == errno.EIO
    assert _read_error(version / "README.md") == errno.ENOENT
    assert m.stats()["fetch_errors"] >= 1
    assert m.proc.poll() is None, m.log()
    assert (project(m) / "ds:v0" / "README.md").read_bytes() == b"# v0\n"
    assert (project(m) / "model:v0" / "model.pt").stat().st_size == 300_000
    assert read_uncached(project(m) / "ds:latest" / "train" / "000001.txt") == b"one\n"
    assert "Traceback" not in m.log()


@pytest.mark.parametrize("allow_other", [False, True], ids=["default", "--allow-other"])
def test_allow_other_only_on_request(mounter: Mounter, sample_registry: tuple[Path, Path], allow_other: bool) -> None:
    reg, _ = sample_registry
    m = mounter(reg, *(["--allow-other"] if allow_other else []))
    options = mount_options(m.path)
    assert "ro" in options
    assert ("allow_other" in options) is allow_other


def test_mount_options_and_read_ahead(mounter: Mounter, sample_registry: tuple[Path, Path]) -> None:
    """docs/SEMANTICS.md, "Mount lifecycle": ro, default_permissions, noatime; as root the
    mount's read-ahead is raised to 1 MiB (1 MiB read requests)."""
    reg, _ = sample_registry
    m = mounter(reg)
    options = mount_options(m.path)
    assert {"ro", "default_permissions", "noatime"} <= set(options), options
    if os.geteuid() == 0:
        minor = os.minor(os.stat(m.path).st_dev)
        with open(f"/sys/class/bdi/0:{minor}/read_ahead_kb") as f:
            assert f.read().strip() == "1024"


def test_a_refused_cache_closes_the_registry_it_opened(
    tmp_path: Path, sample_registry: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mount that fails after opening its registry (here the cache's index is a planted symlink,
    which the blob store refuses) closes the registry's database connections on the way out."""
    from artifactfs import mount as mount_module
    from artifactfs.options import MountConfig
    from artifactfs.store import BlobStore

    reg_dir, _ = sample_registry
    cache = tmp_path / "cache"
    BlobStore(str(cache)).close()
    os.replace(cache / "cache.db", tmp_path / "victim.db")
    os.symlink(tmp_path / "victim.db", cache / "cache.db")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    connections: list[sqlite3.Connection] = []
    real_open = mount_module.open_registry

    def open_and_keep(spec: str, **kwargs: object) -> object:
        registry = real_open(spec, **kwargs)  # type: ignore[arg-type]
        assert isinstance(registry, LocalRegistry)
        connections.extend(registry._connections)
        return registry

    monkeypatch.setattr(mount_module, "open_registry", open_and_keep)
    with pytest.raises(CacheError, match="is a symlink"):
        mount_module.run_foreground(MountConfig(str(reg_dir), str(mnt), cache_dir=str(cache)))
    assert connections  # the registry was opened and had its database open
    for conn in connections:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")
