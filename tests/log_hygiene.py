"""Log hygiene for the test suite (issue 9, item 6), loaded by tests/conftest.py.

A test fails if artifactfs logs a record at WARNING or above, or a traceback, that the test did
not declare: in the test's own process (any ``artifactfs.*`` logger) or in the log of a mount
daemon it started with the ``mounter`` fixture (``artifactfs: WARNING ...`` lines, tracebacks).
A warning nobody expected is a bug or a missing declaration; a traceback is a foreign exception
that reached a layer that should have translated it.

Declaring:

* ``@pytest.mark.allow_log("regex", ...)`` (or a module's ``pytestmark``): records and daemon
  lines matching any of the regular expressions (``re.search``) are expected;
* using ``caplog``: the test inspects its own process's records itself (daemon logs are still
  checked).

``ARTIFACTFS_LOG_HYGIENE=report:PATH`` appends what would fail to PATH instead of failing (to
survey a whole run); ``=off`` disables the check.
"""

from __future__ import annotations

import logging
import os
import re
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_DAEMON_LINE = re.compile(r"^artifactfs: (WARNING|ERROR|CRITICAL) ")
MARKER = "allow_log"


def configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*patterns): regular expressions for WARNING-or-louder log records and tracebacks "
        "(in the test's process or a mount daemon's log) that the test expects",
    )


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("artifactfs") and (record.levelno >= logging.WARNING or record.exc_info):
            self.records.append(record)


def _text(record: logging.LogRecord) -> str:
    text = f"{record.levelname} {record.name}: {record.getMessage()}"
    if record.exc_info:
        text += "\n" + "".join(traceback.format_exception(*record.exc_info))
    return text


def _daemon_problems(log_file: Path) -> list[str]:
    """WARNING-or-louder lines and tracebacks (as one item each) of a daemon's log."""
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return []
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("Traceback"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j].strip()):
                j += 1
            out.append("\n".join(lines[i : j + 1]))  # with the exception line
            i = j + 1
            continue
        if _DAEMON_LINE.match(line):
            out.append(line)
        i += 1
    return out


@pytest.fixture(autouse=True)
def _log_hygiene(request: pytest.FixtureRequest) -> Iterator[None]:
    mode = os.environ.get("ARTIFACTFS_LOG_HYGIENE", "on")
    handler = _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    # A test that runs the CLI in process (cli.main) sets logger levels (urllib3 to WARNING):
    # put every level back, so that no test depends on the ones before it.
    levels = {n: lg.level for n, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    try:
        yield
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    if mode == "off":
        return
    patterns = [re.compile(p) for m in request.node.iter_markers(MARKER) for p in m.args]

    def declared(text: str) -> bool:
        return any(p.search(text) for p in patterns)

    problems: list[str] = []
    if "caplog" not in request.fixturenames:
        problems += [t for t in map(_text, handler.records) if not declared(t)]
    mounter: Any = request.node.funcargs.get("mounter") if hasattr(request.node, "funcargs") else None
    for mount in getattr(mounter, "mounts", []):
        problems += [f"[daemon {mount.path.name}] {t}" for t in _daemon_problems(mount.log_file) if not declared(t)]
    if not problems:
        return
    message = (
        f"{len(problems)} undeclared WARNING-or-louder log record(s) or traceback(s) "
        f"(declare expected ones with @pytest.mark.{MARKER}(regex)):\n" + "\n".join(p[:2000] for p in problems[:20])
    )
    if mode.startswith("report:"):
        with open(mode[len("report:") :], "a") as f:
            f.write(f"== {request.node.nodeid}\n{message}\n")
        return
    pytest.fail(message, pytrace=False)
