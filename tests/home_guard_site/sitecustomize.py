"""Installs the home guard's audit hook in every Python subprocess of the test suite (this
directory is on their PYTHONPATH; see tests/home_guard.py).  Does nothing elsewhere."""

import os

_homes = os.environ.get("ARTIFACTFS_TEST_REAL_HOMES")
_report = os.environ.get("ARTIFACTFS_TEST_HOME_REPORT")
if _homes and _report:
    import home_audit

    def _append(line: str, _path: str = _report) -> None:
        with open(_path, "a") as f:
            f.write(line + "\n")

    home_audit.install([h for h in _homes.split(os.pathsep) if h], _append)
