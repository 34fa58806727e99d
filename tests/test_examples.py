"""examples/train_loader.py against a real mount: it pins, reads every file, and refuses another
version than the pinned one.  With torch installed it reads through a DataLoader; CI has no
torch (its wheels are large), so there the same dataset goes through the plain loop."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLE_FILES, Mounter, run_cli

pytestmark = pytest.mark.fuse

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train_loader.py"


def example(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=120)


def content_digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return h.hexdigest()[:16]


def test_train_loader_pins_reads_and_replays(
    mounter: Mounter, sample_registry: tuple[Path, Path], tmp_path: Path, runtime: Path
) -> None:
    reg, _ = sample_registry
    m = mounter(reg)
    project = m.path / "acme" / "vision"
    ref, digest = run_cli("info", "acme/vision/ds:latest", "--pin", "--registry", str(reg)).stdout.split()
    record = tmp_path / "pin.json"
    proc = example(str(project / "ds:latest"), "--record", str(record), "--epochs", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"pin: {ref} digest {digest}"
    reader = (
        "torch DataLoader (2 workers)" if importlib.util.find_spec("torch") else "plain loop (torch is not installed)"
    )
    size = sum(len(d) for d in SAMPLE_FILES.values())
    for epoch, line in enumerate(lines[1:]):
        head, _, tail = line.partition(" in ")
        assert head == f"epoch {epoch}: {len(SAMPLE_FILES)} files, {size} bytes"
        assert tail.endswith(f"s via {reader}; content sha256 {content_digest(SAMPLE_FILES)}")
    assert len(lines) == 3
    assert json.loads(record.read_text())["artifact"] == ref == "acme/vision/ds:v1"

    # A rerun names the pinned version itself; the alias may have moved since.
    again = example(str(m.path / ref), "--expect", str(record))
    assert again.returncode == 0, again.stderr
    other = example(str(project / "ds:best"), "--expect", str(record))
    assert other.returncode == 1
    v0 = run_cli("info", "acme/vision/ds:v0", "--pin", "--registry", str(reg)).stdout.split()[1]
    assert other.stderr == (
        f"error: {project / 'ds:best'} is acme/vision/ds:v0 ({v0}), not the pinned acme/vision/ds:v1 ({digest}): "
        "mount or name MOUNT/acme/vision/ds:v1\n"
    )
