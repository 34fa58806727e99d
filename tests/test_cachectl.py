"""``artifactfs cache info|prune|clear`` against caches that real mounts are using."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Mounter, run_cli, write_tree

from artifactfs.names import parse_ref
from artifactfs.registry.local import LocalRegistry

MiB = 1 << 20


@pytest.fixture
def big_registry(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """acme/vision/big:v0 with two 8 MiB files and a small one (all different content)."""
    files = {"a.bin": os.urandom(8 * MiB), "b.bin": os.urandom(8 * MiB), "small.txt": b"small\n"}
    src = write_tree(tmp_path / "src", files)
    reg = tmp_path / "registry"
    registry = LocalRegistry(reg, create=True)
    try:
        registry.log_dir(src, parse_ref("acme/vision/big"), type="dataset")
    finally:
        registry.close()
    return reg, files


def cache_info(cache: Path) -> dict[str, object]:
    return json.loads(run_cli("cache", "info", "--json", "--cache-dir", str(cache)).stdout)  # type: ignore[no-any-return]


def val_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*.val")]


@pytest.mark.fuse
def test_prune_to_zero_while_a_reader_holds_a_file_open(
    mounter: Mounter, big_registry: tuple[Path, dict[str, bytes]], runtime: Path
) -> None:
    """A reader in the middle of a file keeps reading it, right, after every blob was evicted;
    the blob it holds is not fetched again, and other files are fetched again when opened."""
    reg, files = big_registry
    m = mounter(reg, "--local-blobs", "copy")  # blobs are copied into the cache, as remote ones are
    version = m.path / "acme" / "vision" / "big:v0"
    (version / "b.bin").read_bytes()  # cached, then closed
    with open(version / "a.bin", "rb") as reader:
        head = reader.read(4096)  # the daemon holds a.bin's blob open; the kernel read ahead <= 1 MiB
        assert m.stats()["fetches"] == 2
        before = cache_info(m.cache_dir)
        assert before["blobs"] == 2 and before["blob_bytes"] == 16 * MiB
        assert before["mounts"] == [str(m.path)]
        assert len(val_files(m.cache_dir)) == 2

        out = run_cli("cache", "prune", "--max-size", "0", "--cache-dir", str(m.cache_dir)).stdout
        assert out == "evicted 2 blobs (16.0 MiB); 0 left (0 B)\n"
        assert cache_info(m.cache_dir)["blobs"] == 0
        assert val_files(m.cache_dir) == []  # unlinked: only the daemon's descriptor keeps a.bin

        served = m.stats()["served_bytes"]
        rest = reader.read()
    assert head + rest == files["a.bin"]
    stats = m.stats()
    assert stats["fetches"] == 2  # the rest came from the evicted file, not a new fetch
    assert stats["served_bytes"] - served >= 6 * MiB  # ... read by the daemon after the prune
    assert "changed" not in m.log()  # the unlink was accepted, not taken for a change

    # b.bin was evicted and is closed: the next open is a miss, fetched and verified again.
    # (Its pages may still be in the kernel's cache; drop them by name for this check.)
    fd = os.open(version / "b.bin", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert (version / "b.bin").read_bytes() == files["b.bin"]
    assert m.stats()["fetches"] == 3
    assert cache_info(m.cache_dir)["blobs"] == 1


@pytest.mark.fuse
def test_prune_keeps_the_most_recently_used_and_clear_forgets_trust(
    mounter: Mounter, big_registry: tuple[Path, dict[str, bytes]], runtime: Path
) -> None:
    reg, files = big_registry
    m = mounter(reg, "--local-blobs", "copy")
    version = m.path / "acme" / "vision" / "big:v0"
    assert (version / "a.bin").read_bytes() == files["a.bin"]
    assert (version / "b.bin").read_bytes() == files["b.bin"]  # the most recent
    out = run_cli("cache", "prune", "--max-size", "10M", "--cache-dir", str(m.cache_dir)).stdout
    assert out == "evicted 1 blobs (8.0 MiB); 1 left (8.0 MiB)\n"
    info = cache_info(m.cache_dir)
    assert info["blobs"] == 1 and info["blob_bytes"] == 8 * MiB
    assert info["size_limit"] == 50 << 30  # the mount's limit, untouched
    out = run_cli("cache", "clear", "--cache-dir", str(m.cache_dir)).stdout
    assert out == "cleared 1 blobs (8.0 MiB); 0 left (0 B); trust records forgotten\n"
    assert cache_info(m.cache_dir)["records"] == 0
    table = run_cli("cache", "info", "--cache-dir", str(m.cache_dir)).stdout
    assert f"used by      {m.path}\n" in table and "blobs        0 (0 B of 50.0 GiB)\n" in table


def test_cache_info_on_a_fresh_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARTIFACTFS_CACHE_DIR")  # the default, in the suite's fresh HOME
    default = Path(os.environ["HOME"]) / ".cache" / "artifactfs"
    out = run_cli("cache", "info").stdout
    assert out == f"no cache yet at {default}: the first mount (or download) creates it\n"
    assert json.loads(run_cli("cache", "info", "--json").stdout) == {"cache_dir": str(default), "exists": False}
    assert not default.exists()
    # What a mount writes before its first blob (its log; a W&B mount's manifests) is no cache yet.
    (default / "manifests").mkdir(parents=True)
    (default / "mount.log").write_text("artifactfs: INFO mounted\n")
    assert run_cli("cache", "info").stdout == out
    assert run_cli("cache", "clear").stderr == f"{default}: no cache yet: nothing to do\n"


def test_cache_commands_explain_what_they_cannot_do(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    out = run_cli("cache", "info", "--cache-dir", str(missing)).stdout
    assert out == f"no cache yet at {missing}: the first mount (or download) creates it\n"
    assert not missing.exists()  # looking creates nothing
    proc = run_cli("cache", "prune", "--cache-dir", str(tmp_path), check=False)
    assert (proc.returncode, proc.stderr) == (
        1,
        "artifactfs: error: cache prune needs --max-size SIZE (for example --max-size 10G; 0 evicts every blob)\n",
    )
    (tmp_path / "notes.txt").write_text("mine")
    proc = run_cli("cache", "clear", "--cache-dir", str(tmp_path), check=False)
    assert proc.returncode == 1
    assert proc.stderr == (
        f"artifactfs: error: {tmp_path} is not an artifactfs cache directory (no cache.db): name the one your "
        "mounts use with --cache-dir (see 'artifactfs status')\n"
    )
    assert (tmp_path / "notes.txt").read_text() == "mine"
    proc = run_cli("cache", "prune", "--max-size", "lots", "--cache-dir", str(tmp_path), check=False)
    assert proc.returncode == 2 and "invalid size 'lots'" in proc.stderr
