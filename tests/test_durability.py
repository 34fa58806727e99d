"""Cache durability on a real mount: a cached or trusted blob whose file was truncated, extended
or overwritten (by a stray writer, or a power loss that kept the rename but not the data) is
never served.  Every read gives the right bytes or EIO, never a short or a wrong read.

docs/RELIABILITY.md describes what is synced when; these tests damage the files the way a crash
or a stray writer would and read through the mount with ordinary programs.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import Mount, Mounter, write_tree

from artifactfs.names import parse_ref
from artifactfs.registry import open_registry

pytestmark = pytest.mark.fuse

SIZE = 3 * 1024 * 1024  # 3,145,728 bytes, as in the issue
REF = "acme/vision/big"


@pytest.fixture
def big(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(SIZE)
    reg_dir = tmp_path / "registry"
    registry = open_registry(reg_dir, create=True)
    try:
        registry.log_files(
            [("blob.bin", str(write_tree(tmp_path / "src", {"blob.bin": data}) / "blob.bin"))],
            parse_ref(REF),
            type="dataset",
        )
    finally:
        registry.close()
    return reg_dir, data


def path_of(m: Mount) -> Path:
    return m.path / "acme" / "vision" / "big:v0" / "blob.bin"


def read_uncached(path: Path) -> bytes:
    """Read through the daemon, not the kernel's page cache (which the mount keeps across opens)."""
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        chunks = []
        while chunk := f.read(1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)


def cached_files(cache_dir: Path) -> list[Path]:
    conn = sqlite3.connect(f"file:{cache_dir / 'cache.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT filename FROM Cache WHERE key LIKE 'md5/%' AND filename IS NOT NULL").fetchall()
    finally:
        conn.close()
    return [cache_dir / r[0] for r in rows]


def damage(path: Path, how: str) -> None:
    st = path.stat()
    if how == "truncate":
        os.truncate(path, 50_000)
    elif how == "extend":
        with open(path, "ab") as f:
            f.write(b"\0" * 4096)
    else:  # overwrite in place, then put the mtime back (only the ctime tells)
        mode = st.st_mode
        path.chmod(0o600)
        with open(path, "r+b") as f:
            f.write(os.urandom(st.st_size))
        path.chmod(mode & 0o777)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def md5sum(path: Path) -> str:
    out = subprocess.run(["md5sum", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[0]


@pytest.mark.parametrize("how", ["truncate", "extend", "overwrite"])
@pytest.mark.allow_log(r"is corrupt")
def test_damaged_cache_file_between_mounts_is_refetched(mounter: Mounter, big: tuple[Path, bytes], how: str) -> None:
    reg, data = big
    first = mounter(reg, "--local-blobs", "copy")
    assert md5sum(path_of(first)) == hashlib.md5(data).hexdigest()
    first.unmount()
    (cached,) = cached_files(first.cache_dir)
    damage(cached, how)

    second = mounter(reg, "--local-blobs", "copy", cache_dir=first.cache_dir)
    assert read_uncached(path_of(second)) == data  # never 50,000 bytes, never wrong bytes
    assert md5sum(path_of(second)) == hashlib.md5(data).hexdigest()
    assert second.stats()["fetches"] == 1  # the damaged copy was evicted and fetched again
    assert "is corrupt" in second.log()


@pytest.mark.parametrize("how", ["truncate", "extend", "overwrite"])
@pytest.mark.allow_log(r"is corrupt")
def test_damaged_cache_file_behind_a_running_mount_is_refetched(
    mounter: Mounter, big: tuple[Path, bytes], how: str
) -> None:
    reg, data = big
    m = mounter(reg, "--local-blobs", "copy")
    with open(path_of(m), "rb", buffering=0) as held:  # a reader that keeps the file open
        assert held.read(4096) == data[:4096]
        (cached,) = cached_files(m.cache_dir)
        damage(cached, how)
        os.posix_fadvise(held.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        held.seek(0)
        got = b"".join(iter(lambda: held.read(1 << 20), b""))
    assert got == data
    assert read_uncached(path_of(m)) == data  # a new open, after the page cache was dropped
    assert m.stats()["fetches"] == 2


@pytest.mark.parametrize("how", ["truncate", "extend", "overwrite"])
@pytest.mark.allow_log(r"digest mismatch")
def test_damaged_trusted_local_blob_is_eio_never_wrong(mounter: Mounter, big: tuple[Path, bytes], how: str) -> None:
    """In place, the registry's blob is the only copy: damaged, it can only be refused."""
    reg, data = big
    m = mounter(reg)  # verify-in-place (the default)
    assert read_uncached(path_of(m)) == data
    blob = reg / "objects" / "md5" / hashlib.md5(data).hexdigest()[:2] / hashlib.md5(data).hexdigest()[2:]
    damage(blob, how)
    with pytest.raises(OSError) as info:
        read_uncached(path_of(m))
    assert info.value.errno == errno.EIO
    m.unmount()
    again = mounter(reg, cache_dir=m.cache_dir)  # and on a later mount, whose trust record is stale
    with pytest.raises(OSError) as info:
        read_uncached(path_of(again))
    assert info.value.errno == errno.EIO
    assert "digest mismatch" in again.log()
