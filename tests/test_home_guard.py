"""The suite cannot see the machine's user state (issue 13): tests/home_guard.py isolates every
test and fails a test, or the session, that touches a real home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import home_guard
from conftest import LiveEnv

TESTS = Path(__file__).resolve().parent


def test_each_test_has_a_fresh_home_xdg_runtime_and_cache_dir_that_subprocesses_inherit() -> None:
    env = os.environ
    assert os.path.realpath(env["HOME"]) not in home_guard.REAL_HOMES
    assert os.path.expanduser("~") == env["HOME"] and os.listdir(env["HOME"]) == []
    for name in home_guard.XDG_DIRS:
        assert os.path.isdir(env[name]) and os.listdir(env[name]) == [], name
        assert not any(env[name].startswith(h + "/") for h in home_guard.REAL_HOMES)
    assert os.listdir(env["ARTIFACTFS_RUNTIME_DIR"]) == []
    assert not os.path.exists(env["ARTIFACTFS_CACHE_DIR"])
    leaked = [n for n in env if n.startswith(("WANDB_", "AWS_")) and n != "AWS_EC2_METADATA_DISABLED"]
    assert leaked == [] and "NETRC" not in env
    assert {n for n in env if n.startswith("ARTIFACTFS_")} <= {
        "ARTIFACTFS_RUNTIME_DIR",
        "ARTIFACTFS_CACHE_DIR",
        "ARTIFACTFS_LOG_HYGIENE",
        home_guard.REAL_HOMES_ENV,
        home_guard.REPORT_ENV,
    }
    # A subprocess (the CLI, a mount daemon) sees the same, with the guard's audit hook in it.
    script = "import json, os, sys; print(json.dumps([dict(os.environ), 'home_audit' in sys.modules]))"
    child_env, hooked = json.loads(
        subprocess.run([sys.executable, "-c", script], capture_output=True, check=True).stdout
    )
    assert hooked
    for name in ("HOME", "ARTIFACTFS_RUNTIME_DIR", "ARTIFACTFS_CACHE_DIR", *home_guard.XDG_DIRS):
        assert child_env[name] == env[name]
    # So does one started with a module's ENV (LiveEnv: os.environ when used, not at import).
    live = LiveEnv(LC_ALL="C.UTF-8")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True, env=live).stdout
    child_env = json.loads(out)[0]
    assert child_env["HOME"] == env["HOME"] and child_env["LC_ALL"] == "C.UTF-8"


def test_the_next_test_gets_other_directories(tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    # Not the HOME of the test above (pytest runs a file's tests in order): fresh for each test.
    base = tmp_path_factory.getbasetemp()
    assert Path(os.environ["HOME"]).parent.parent == base
    homes = [p for p in base.glob("t-*/home") if p.is_dir()]
    assert len({str(p) for p in homes}) >= 2


INNER_CONFTEST = """
import home_guard
from home_guard import _isolated_home  # noqa: F401


def pytest_configure(config):
    home_guard.configure(config)


def pytest_sessionfinish(session):
    home_guard.sessionfinish(session)
"""

INNER_TESTS = """
import os
import subprocess
import sys

PROBE = os.environ["PROBE_HOME"]  # this session's real home (a scratch directory of the outer test)


def test_clean():
    assert os.environ["HOME"] != PROBE


def test_reads_the_real_home_in_process():
    with open(os.path.join(PROBE, ".netrc"), "w") as f:
        f.write("machine api.wandb.ai login user password x\\n")


def test_a_python_subprocess_reads_the_real_home():
    code = "import os; os.listdir(os.path.expanduser('~'))"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "HOME": PROBE}, check=True)


def test_a_shell_writes_the_real_home():
    subprocess.run(["mkdir", "-p", os.path.join(PROBE, ".cache", "artifactfs")], check=True)
"""


def test_the_guard_fails_a_test_or_the_session_that_touches_the_real_home(tmp_path: Path) -> None:
    probe = Path(os.environ["HOME"])  # the inner session's real home: ours, a scratch directory
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "pytest.ini").write_text("[pytest]\n")
    (inner / "conftest.py").write_text(INNER_CONFTEST)
    (inner / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    env = {k: v for k, v in os.environ.items() if k not in (home_guard.REAL_HOMES_ENV, home_guard.REPORT_ENV)}
    env.update(PROBE_HOME=str(probe), PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", str(inner)],
        cwd=inner,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "PASSED test_inner.py::test_clean" in out
    assert "ERROR test_inner.py::test_reads_the_real_home_in_process" in out
    assert f"open {probe}/.netrc" in out
    assert "ERROR test_inner.py::test_a_python_subprocess_reads_the_real_home" in out
    assert f"os.listdir {probe} (pid " in out
    # A non-Python process is not hooked: the test passes, the session fails on the snapshot.
    assert "PASSED test_inner.py::test_a_shell_writes_the_real_home" in out
    assert "home guard: the suite touched a real home:" in out
    assert f"created {probe}/.cache/artifactfs" in out
