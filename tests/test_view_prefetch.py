"""``--xattrs off``, the hidden ``.artifactfs`` view, ``--prefetch`` and ``artifactfs prefetch``,
against real mounts of the sample registry."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import SAMPLE_FILES, Mounter, run_cli

from artifactfs.names import parse_ref
from artifactfs.registry.local import LocalRegistry

pytestmark = pytest.mark.fuse


def wait_for(predicate: object, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_xattrs_off_answers_no_xattr_and_copies_cleanly(
    mounter: Mounter, sample_registry: tuple[Path, Path], tmp_path: Path
) -> None:
    reg, _ = sample_registry
    m = mounter(reg, "--xattrs", "off")
    version = m.path / "acme/vision/ds:v1"
    readme = version / "README.md"
    for path in (readme, version, m.path):
        with pytest.raises(OSError) as info:
            os.getxattr(path, "user.artifact.entry.digest")
        assert info.value.errno == errno.EOPNOTSUPP
        with pytest.raises(OSError) as info:
            os.listxattr(path)
        assert info.value.errno == errno.EOPNOTSUPP
    listing = subprocess.run(["ls", "-lR", str(version)], capture_output=True, text=True, check=True)
    assert "README.md" in listing.stdout and listing.stderr == ""
    copy = tmp_path / "copy"
    proc = subprocess.run(["cp", "-a", str(version), str(copy)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == ""
    for path, data in SAMPLE_FILES.items():
        assert (copy / path).read_bytes() == data
    shutil.copy2(readme, tmp_path / "readme.copy")
    assert (tmp_path / "readme.copy").read_bytes() == SAMPLE_FILES["README.md"]
    # provenance is still there: in the view, and from the command line
    info = json.loads((m.path / "acme/vision/.artifactfs/ds:v1/info.json").read_text())
    assert info["qualified_name"] == "acme/vision/ds:v1"
    assert (
        info["digest"]
        == json.loads(run_cli("info", "acme/vision/ds:v1", "--registry", str(reg), "--json").stdout)["digest"]
    )


def test_view_through_a_mount(mounter: Mounter, sample_registry: tuple[Path, Path]) -> None:
    reg, _ = sample_registry
    m = mounter(reg)
    project = m.path / "acme/vision"
    assert ".artifactfs" not in os.listdir(project)  # hidden: find, du and cp -r of a project skip it
    view = project / ".artifactfs"
    assert sorted(os.listdir(view)) == ["ds:v0", "ds:v1", "model:v0"]
    assert sorted(os.listdir(view / "model:v0")) == ["info.json", "manifest.json"]
    registry = LocalRegistry(reg)
    try:
        version = registry.resolve(parse_ref("acme/vision/model:v0"))
        manifest = registry.manifest(version).to_json()
    finally:
        registry.close()
    assert json.loads((view / "model:v0/manifest.json").read_bytes()) == manifest
    info_path = view / "ds:v0/info.json"
    assert json.loads(info_path.read_bytes())["aliases"] == ["best"]
    assert os.stat(info_path).st_size == len(info_path.read_bytes())
    assert (os.stat(info_path).st_mode & 0o777) == 0o444
    with pytest.raises(OSError) as info:
        os.open(info_path, os.O_WRONLY)
    assert info.value.errno == errno.EROFS
    for missing in ("ds:latest", "ds:v7"):
        assert not (view / missing).exists()
    assert m.stats()["verified_in_place"] == 0  # the view reads no blob


def test_mount_prefetch_fetches_the_next_files_of_a_directory(
    mounter: Mounter, sample_registry: tuple[Path, Path]
) -> None:
    reg, _ = sample_registry
    m = mounter(reg, "--prefetch", "4", "--local-blobs", "copy")
    train = m.path / "acme/vision/ds:v1/train"
    assert (train / "000001.txt").read_bytes() == SAMPLE_FILES["train/000001.txt"]
    wait_for(lambda: m.stats()["fetches"] == 2)  # 000002.txt came by itself; deep/ is a directory
    assert m.stats()["fetched_bytes"] == len(SAMPLE_FILES["train/000001.txt"]) + len(SAMPLE_FILES["train/000002.txt"])
    assert (train / "000002.txt").read_bytes() == SAMPLE_FILES["train/000002.txt"]
    time.sleep(0.2)
    assert m.stats()["fetches"] == 2 and m.stats()["cache_hits"] >= 1


def test_prefetch_command_warms_what_a_mount_reads(
    mounter: Mounter, sample_registry: tuple[Path, Path], tmp_path: Path
) -> None:
    reg, _ = sample_registry
    cache = tmp_path / "warm-cache"
    common = ["--registry", str(reg), "--cache-dir", str(cache), "--local-blobs", "copy"]
    first = run_cli("prefetch", "acme/vision/ds:v1", "train/", *common)
    assert first.stdout.strip() == "acme/vision/ds:v1"
    assert "3 of 3 files ready" in first.stderr and "3 fetched" in first.stderr
    again = run_cli("prefetch", "acme/vision/ds:v1", *common)
    assert f"{len(SAMPLE_FILES)} of {len(SAMPLE_FILES)} files ready" in again.stderr
    assert f"{len(SAMPLE_FILES) - 3} fetched" in again.stderr and "3 already there" in again.stderr
    m = mounter(reg, "--local-blobs", "copy", cache_dir=cache)
    for path, data in SAMPLE_FILES.items():
        assert (m.path / "acme/vision/ds:v1" / path).read_bytes() == data
    stats = m.stats()
    read = sum(1 for data in SAMPLE_FILES.values() if data)  # an empty file is never read
    assert stats["fetches"] == 0 and stats["cache_hits"] == read


def test_prefetch_command_records_trust_for_local_blobs(
    mounter: Mounter, sample_registry: tuple[Path, Path], tmp_path: Path
) -> None:
    reg, _ = sample_registry
    cache = tmp_path / "trust-cache"
    out = run_cli("prefetch", "acme/vision/model", "--registry", str(reg), "--cache-dir", str(cache))
    assert "1 verified in place" in out.stderr
    m = mounter(reg, cache_dir=cache)
    assert len((m.path / "acme/vision/model:v0/model.pt").read_bytes()) == 300_000
    stats = m.stats()
    assert (stats["trusted_in_place"], stats["verified_in_place"]) == (1, 0)  # not hashed again


def test_prefetch_command_errors(sample_registry: tuple[Path, Path], tmp_path: Path) -> None:
    reg, _ = sample_registry
    cache = ["--registry", str(reg), "--cache-dir", str(tmp_path / "c")]
    missing = run_cli("prefetch", "acme/vision/nope:v0", *cache, check=False)
    assert missing.returncode == 1 and missing.stderr.startswith("artifactfs: error: ")
    assert len(missing.stderr.splitlines()) == 1
    bad = run_cli("prefetch", "acme/vision/ds:v1", "--jobs", "0", *cache, check=False)
    assert bad.returncode == 2 and "--jobs" in bad.stderr
    # a damaged blob: the others are still warmed, the command fails and says how many
    registry = LocalRegistry(reg)
    try:
        version = registry.resolve(parse_ref("acme/vision/ds:v1"))
        entry = registry.get_entry(version, "README.md").entry
        assert entry is not None
        blob = registry.blob_path(entry.alg, entry.digest)
    finally:
        registry.close()
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.write(b"!")
    broken = run_cli("prefetch", "acme/vision/ds:v1", *cache, "--local-blobs", "copy", check=False)
    assert broken.returncode == 1
    assert f"{len(SAMPLE_FILES) - 1} of {len(SAMPLE_FILES)} files ready" in broken.stderr
    assert "1 of 9 files of acme/vision/ds:v1 could not be fetched" in broken.stderr
