"""Pins: ``artifactfs pin PATH``, ``artifactfs info REF --pin`` and ``artifactfs.pin.pin``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Mounter, run_cli, write_tree

from artifactfs.names import parse_ref
from artifactfs.options import MountConfig
from artifactfs.pin import pin
from artifactfs.registry.local import LocalRegistry

pytestmark = pytest.mark.fuse


def info_pin(registry: Path, ref: str) -> list[str]:
    """What ``artifactfs info REF --pin`` prints (tested once below), asked in this process."""
    reg = LocalRegistry(registry)
    try:
        v = reg.resolve(parse_ref(ref))
    finally:
        reg.close()
    return [str(v.ref), v.digest]


def test_pin_through_an_alias_survives_the_alias_moving(
    mounter: Mounter, sample_registry: tuple[Path, Path], tmp_path: Path, runtime: Path
) -> None:
    reg, _ = sample_registry
    m = mounter(reg, "--alias-ttl", "0.2")
    latest = m.path / "acme" / "vision" / "ds:latest"
    v1_ref, v1_digest = info_pin(reg, "acme/vision/ds:latest")
    assert v1_ref == "acme/vision/ds:v1"
    cli = run_cli("info", "acme/vision/ds:latest", "--pin", "--registry", str(reg)).stdout
    assert cli == f"acme/vision/ds:v1\t{v1_digest}\n"

    out = run_cli("pin", str(latest / "train" / "000002.txt"), str(latest)).stdout.splitlines()
    assert out == [f"acme/vision/ds:v1\t{v1_digest}\ttrain/000002.txt", f"acme/vision/ds:v1\t{v1_digest}"]
    data = json.loads(run_cli("pin", "--json", str(latest / "README.md")).stdout)
    assert data == {
        "artifact": "acme/vision/ds:v1",
        "digest": v1_digest,
        "entry": "README.md",
        "entry_digest": "Z9rj92jeIAj5tSLw8/lHUg==",  # MD5 of b"# sample\n", base64, as in the manifest
        "mountpoint": str(m.path),
        "registry": str(reg),
    }
    recorded = pin(latest / "train")  # what a training script keeps with its run

    # A new version moves "latest"; the recorded pin still names the bytes that were read.
    src = write_tree(tmp_path / "v2", {"README.md": b"# v2\n"})
    registry = LocalRegistry(reg)
    try:
        registry.log_dir(src, parse_ref("acme/vision/ds"), type="dataset")
    finally:
        registry.close()
    v2_ref, v2_digest = info_pin(reg, "acme/vision/ds:latest")
    assert v2_ref == "acme/vision/ds:v2" and v2_digest != v1_digest
    pinned = m.path / recorded.artifact
    assert (pinned / "train" / "000001.txt").read_bytes() == b"one\n"
    assert pin(pinned).digest == recorded.digest == v1_digest
    assert info_pin(reg, recorded.artifact) == [recorded.artifact, recorded.digest]


@pytest.mark.skipif("xattrs" not in MountConfig.__dataclass_fields__, reason="no --xattrs option")
def test_pin_with_xattrs_off_asks_the_registry(
    mounter: Mounter, sample_registry: tuple[Path, Path], runtime: Path
) -> None:
    reg, _ = sample_registry
    m = mounter(reg, "--xattrs", "off")
    p = pin(m.path / "acme" / "vision" / "ds:best" / "README.md")
    assert (p.artifact, p.entry, p.entry_digest) == ("acme/vision/ds:v0", "README.md", None)
    assert [p.artifact, p.digest] == info_pin(reg, "acme/vision/ds:best")


def test_pin_refuses_paths_outside_a_version(
    mounter: Mounter, sample_registry: tuple[Path, Path], tmp_path: Path, runtime: Path
) -> None:
    reg, _ = sample_registry
    m = mounter(reg)
    proc = run_cli("pin", str(m.path / "acme" / "vision"), check=False)
    assert (proc.returncode, proc.stderr) == (
        1,
        f"artifactfs: error: {m.path / 'acme' / 'vision'} is not inside an artifact version on {m.path}: name "
        "MOUNT/ENTITY/PROJECT/NAME:ALIAS or a path inside it\n",
    )
    proc = run_cli("pin", str(tmp_path), check=False)
    assert proc.returncode == 1 and "is not on an artifactfs mount" in proc.stderr
    for missing in ("acme/vision/ds:v1/nosuch.txt", "acme/vision/ds:v1/sub/nosuch", "acme/vision/ds:v9"):
        proc = run_cli("pin", str(m.path / missing), check=False)
        assert (proc.returncode, proc.stderr) == (
            1,
            f"artifactfs: error: {m.path / missing}: no such file or directory on {m.path}\n",
        ), missing
