"""Runs every ``console`` example of docs/SEMANTICS.md against a real mount of the example
registry, and checks the output exactly."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import Mounter

pytestmark = pytest.mark.fuse

DOC = Path(__file__).resolve().parent.parent / "docs" / "SEMANTICS.md"


def examples() -> list[tuple[str, str]]:
    """``(command, expected output)`` pairs from the doc's console blocks."""
    out: list[tuple[str, str]] = []
    for block in re.findall(r"```console\n(.*?)```", DOC.read_text(), re.S):
        command: str | None = None
        expected: list[str] = []
        for line in block.splitlines():
            if line.startswith("$ "):
                if command is not None:
                    out.append((command, "\n".join(expected)))
                command, expected = line[2:], []
            else:
                expected.append(line)
        if command is not None:
            out.append((command, "\n".join(expected)))
    return out


EXAMPLES = examples()


def test_doc_has_examples() -> None:
    assert len(EXAMPLES) >= 20


@pytest.fixture(scope="module")
def doc_mount(tmp_path_factory: pytest.TempPathFactory, require_fuse: None):  # type: ignore[no-untyped-def]
    from conftest import build_sample_registry

    tmp = tmp_path_factory.mktemp("semantics")
    registry, _ = build_sample_registry(tmp)
    mounter = Mounter(tmp)
    try:
        yield mounter(registry)
    finally:
        mounter.cleanup()


@pytest.mark.parametrize(("command", "expected"), EXAMPLES, ids=[c for c, _ in EXAMPLES])
def test_example(doc_mount, command: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run(
        ["bash", "-c", command + " 2>&1"],
        cwd=doc_mount.path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        timeout=60,
    )
    assert proc.stdout.rstrip("\n") == expected
