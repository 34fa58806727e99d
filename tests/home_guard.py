"""The suite cannot see the machine's user state (issue 13), loaded by tests/conftest.py.

**Isolation.**  Every test runs with ``HOME``, every ``XDG_*`` directory (``XDG_RUNTIME_DIR``
too) and ``ARTIFACTFS_RUNTIME_DIR`` pointed at fresh directories of its own, ``ARTIFACTFS_CACHE_DIR``
at a fresh (not yet created) cache, and every other ``ARTIFACTFS_*``, ``WANDB_*`` and ``AWS_*``
variable and ``NETRC`` unset (``AWS_EC2_METADATA_DISABLED=true``: no instance-role probe).  The
same is done for the whole session before any test module is imported, so an environment a
module copies at import (``ENV = {**os.environ, ...}``) is isolated too; subprocesses (mount
daemons, the CLI) inherit it.  ``ARTIFACTFS_LOG_HYGIENE`` (a switch of the suite itself) is kept.

**The guard.**  The real home is ``$HOME`` when the session starts and the user's home in the
password database.  A test fails if, while it runs, any Python process of the suite (this one,
and every Python subprocess: ``sitecustomize`` in ``home_guard_site/``, on ``PYTHONPATH``,
installs the same audit hook there) opens, lists, creates, renames or removes anything under
a real home, except Python's own installation and the repository (which may live there).  The
session fails if the real home's artifactfs, W&B, netrc and AWS paths changed between its
start and its end (what a non-Python process would do), or if something was opened there
outside any test (at collection).
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE_DIR = Path(__file__).resolve().parent / "home_guard_site"
REAL_HOMES_ENV = "ARTIFACTFS_TEST_REAL_HOMES"  # os.pathsep-separated, for the subprocesses' hook
REPORT_ENV = "ARTIFACTFS_TEST_HOME_REPORT"  # where the subprocesses' hook appends what it saw
KEEP = ("ARTIFACTFS_LOG_HYGIENE", REAL_HOMES_ENV, REPORT_ENV)
XDG_DIRS = ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR")
# What a run of the suite could leave in (or take from) a real home: snapshot before and after.
RELEVANT = (
    ".local/share/artifactfs",
    ".cache/artifactfs",
    ".config/artifactfs",
    ".local/share/wandb",
    ".cache/wandb",
    ".config/wandb",
    ".netrc",
    ".aws",
)


def _real_homes() -> list[str]:
    homes = {os.environ.get("HOME", ""), pwd.getpwuid(os.getuid()).pw_dir}
    return sorted({os.path.realpath(h) for h in homes if h and os.path.realpath(h) != "/"})


REAL_HOMES = _real_homes()


def isolated_env(base: Path) -> dict[str, str | None]:
    """The variables to set (None: unset) for a sandbox under ``base`` (created here)."""
    changes: dict[str, str | None] = {}
    for name in os.environ:
        if name.startswith(("ARTIFACTFS_", "WANDB_", "AWS_", "XDG_")) and name not in KEEP:
            changes[name] = None
    changes["NETRC"] = None
    home = base / "home"
    home.mkdir(parents=True)
    changes["HOME"] = str(home)
    for name in XDG_DIRS:
        path = base / name.lower()
        path.mkdir(mode=0o700)
        changes[name] = str(path)
    runtime = base / "run"  # short: unix socket paths are limited to 107 bytes
    runtime.mkdir(mode=0o700)
    changes["ARTIFACTFS_RUNTIME_DIR"] = str(runtime)
    changes["ARTIFACTFS_CACHE_DIR"] = str(base / "cache" / "artifactfs")
    changes["AWS_EC2_METADATA_DISABLED"] = "true"
    return changes


def apply(changes: dict[str, str | None]) -> None:
    for name, value in changes.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def snapshot(homes: list[str] = REAL_HOMES) -> dict[str, tuple[int, int, int]]:
    """(mode, size, mtime_ns) of every file and directory under the relevant paths of ``homes``
    (names and metadata only: nothing is read)."""
    out: dict[str, tuple[int, int, int]] = {}
    for home in homes:
        for rel in RELEVANT:
            top = os.path.join(home, rel)
            stack = [top]
            while stack:
                path = stack.pop()
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                out[path] = (st.st_mode, st.st_size, st.st_mtime_ns)
                if os.path.isdir(path) and not os.path.islink(path):
                    try:
                        stack += [os.path.join(path, n) for n in os.listdir(path)]
                    except OSError:
                        pass
    return out


def diff(before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]) -> list[str]:
    lines = [f"created {p}" for p in sorted(after.keys() - before.keys())]
    lines += [f"removed {p}" for p in sorted(before.keys() - after.keys())]
    lines += [f"changed {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return lines


# -- the audit hook (this process; home_guard_site/sitecustomize.py has the same for subprocesses) --

sys.path.insert(0, str(SITE_DIR))
import home_audit  # noqa: E402  (lives beside sitecustomize.py, shared with the subprocesses)

del sys.path[0]


class Guard:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.active = False
        self.report: Path | None = None
        self.before: dict[str, tuple[int, int, int]] = {}
        self.saved: dict[str, str | None] = {}
        self.base: str | None = None

    def _record(self, line: str) -> None:
        if self.active:
            self.seen.append(line)

    def start(self) -> None:
        """Snapshot the real home, install the hook, isolate the session's environment."""
        self.before = snapshot()
        self.base = tempfile.mkdtemp(prefix="afs-tests-")
        base = Path(self.base)
        self.report = base / "home-report.log"
        self.report.touch()
        changes = isolated_env(base / "session")
        changes[REAL_HOMES_ENV] = os.pathsep.join(REAL_HOMES)
        changes[REPORT_ENV] = str(self.report)
        path = os.environ.get("PYTHONPATH")
        changes["PYTHONPATH"] = os.pathsep.join([str(SITE_DIR), *([path] if path else [])])
        self.saved = {name: os.environ.get(name) for name in changes}
        apply(changes)
        home_audit.install(REAL_HOMES, self._record)
        self.active = True

    def take(self) -> list[str]:
        """What was seen since the last call, in this process and in the subprocesses."""
        seen, self.seen = self.seen, []
        if self.report is not None:
            with open(self.report, "r+") as f:
                seen += [line.rstrip("\n") for line in f if line.strip()]
                f.seek(0)
                f.truncate()
        return seen

    def finish(self) -> list[str]:
        """Everything that went wrong outside the tests, and the real home's changes."""
        problems = [f"outside any test: {line}" for line in self.take()]
        self.active = False
        problems += diff(self.before, snapshot())
        apply(self.saved)
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
        return problems


GUARD = Guard()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fresh HOME, XDG dirs, runtime and cache directory for each test; the test fails if it
    (or a Python process it started) touched a real home."""
    GUARD.take()  # what a previous test's leftovers did is theirs (reported with them)
    base = Path(tempfile.mkdtemp(prefix="t-", dir=tmp_path_factory.getbasetemp()))
    for name, value in isolated_env(base).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    yield
    seen = GUARD.take()
    if seen:
        pytest.fail("the test touched a real home:\n" + "\n".join(sorted(set(seen))[:20]), pytrace=False)


@pytest.fixture
def runtime(_isolated_home: None) -> Path:
    """This test's own runtime directory (``ARTIFACTFS_RUNTIME_DIR``, made by the isolation
    above), where the daemons it starts keep their records: ``artifactfs status``/``stats`` see
    only this test's mounts."""
    return Path(os.environ["ARTIFACTFS_RUNTIME_DIR"])


def configure(config: pytest.Config) -> None:
    GUARD.start()


def sessionfinish(session: pytest.Session) -> None:
    if not GUARD.active:
        return
    problems = GUARD.finish()
    if problems:
        sys.stderr.write("\nhome guard: the suite touched a real home:\n" + "\n".join(problems[:50]) + "\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
