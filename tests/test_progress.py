"""Progress bars: on a terminal for ``log`` and ``get``, never in pipes or with ``--quiet``."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from conftest import run_cli, write_tree


def run_on_tty(*args: str) -> tuple[int, str, str]:
    """Run ``artifactfs ARGS`` with stderr on a pseudo-terminal; (status, stdout, terminal text)."""
    master, slave = pty.openpty()
    # A terminal of 100 columns (a new pty has 0, and tqdm draws nothing in 0 columns).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "artifactfs", *args], stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL
        )
    finally:
        os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    proc.stdout.close()
    return proc.wait(timeout=60), out, b"".join(chunks).decode(errors="replace")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "src", {f"part-{i}.bin": os.urandom(200_000) for i in range(5)})


def test_log_and_get_show_a_bar_on_a_terminal(source: Path, tmp_path: Path) -> None:
    reg = str(tmp_path / "reg")
    status, out, tty = run_on_tty("log", str(source), "acme/p/data", "--type", "dataset", "--registry", reg)
    assert status == 0 and out == "acme/p/data:v0\n"
    assert "5/5 files" in tty and "B/s" in tty and "data" in tty  # bytes, files, rate; tqdm shows the ETA
    status, out, tty = run_on_tty("get", "acme/p/data:v0", "--root", str(tmp_path / "g"), "--registry", reg,
                                  "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    assert status == 0 and out.strip() == str(tmp_path / "g")
    assert "5/5 files" in tty and "B/s" in tty


def test_quiet_and_pipes_show_no_bar(source: Path, tmp_path: Path) -> None:
    reg = str(tmp_path / "reg")
    status, out, tty = run_on_tty("log", str(source), "acme/p/data", "--type", "dataset", "--registry", reg, "-q")
    assert status == 0 and out == "acme/p/data:v0\n"
    assert tty == "5 files, 976.6 KiB, aliases: latest\r\n"  # the summary only
    status, _, tty = run_on_tty("get", "acme/p/data", "--root", str(tmp_path / "g"), "--registry", reg,
                                "--cache-dir", str(tmp_path / "c"), "--quiet")  # fmt: skip
    assert status == 0 and tty == ""
    piped = run_cli("get", "acme/p/data", "--root", str(tmp_path / "h"), "--registry", reg,
                    "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    assert piped.stderr == ""
    src2 = write_tree(tmp_path / "src2", {"x": b"x"})
    piped = run_cli("log", str(src2), "acme/p/data", "--type", "dataset", "--registry", reg)
    assert piped.stderr == "1 files, 1 B, aliases: latest\n"
