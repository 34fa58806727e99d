"""Shared fixtures: registries built from real trees, and real FUSE mounts in subprocesses.

Mount rules (DEVELOPERS.md): mount points live under pytest's tmp dir; every mount is unmounted
(``fusermount3 -u``, then ``-z``); only daemons we started are killed.  Where /dev/fuse or
fusermount3 is missing the FUSE tests skip, except when ``CI=true``: there they fail.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import home_guard
import pytest
from home_guard import (
    _isolated_home,  # noqa: F401  (autouse: fresh HOME, XDG dirs, runtime and cache dirs)
    runtime,  # noqa: F401  (that test's runtime directory)
)
from log_hygiene import _log_hygiene  # noqa: F401  (autouse: undeclared warnings and tracebacks fail a test)
from log_hygiene import configure as _configure_log_hygiene

from artifactfs.names import parse_ref
from artifactfs.registry.local import LocalRegistry

PY = sys.executable


def pytest_configure(config: pytest.Config) -> None:
    _configure_log_hygiene(config)
    home_guard.configure(config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    home_guard.sessionfinish(session)


class LiveEnv(Mapping[str, str]):
    """``os.environ`` as it is when a subprocess is started (the test's own HOME, runtime and
    cache directories: a copy made at import would hold the session's), plus fixed ``extra``."""

    def __init__(self, **extra: str) -> None:
        self.extra = extra

    def _now(self) -> dict[str, str]:
        return {**os.environ, **self.extra}

    def __getitem__(self, key: str) -> str:
        return self._now()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._now())

    def __len__(self) -> int:
        return len(self._now())


def fuse_available() -> str | None:
    """None when FUSE mounts can be made here, else the reason they cannot."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


@pytest.fixture(scope="session")
def require_fuse() -> None:
    reason = fuse_available()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"FUSE is required in CI: {reason}")
    pytest.skip(reason)


def run_cli(
    *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([PY, "-m", "artifactfs", *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"artifactfs {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def tables(db: Path) -> set[str]:
    """The table names of a SQLite database (a registry's schema, as an upgrade left it)."""
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def without_entry_ids(db: Path) -> None:
    """Turn a local registry into one made before entry ids: no ``id`` columns, no id indexes,
    no ``entry_ids`` mark (what an older artifactfs wrote)."""
    conn = sqlite3.connect(db)
    try:
        for table in ("entries", "dirs"):
            conn.execute(f"DROP INDEX IF EXISTS {table}_id")
            conn.execute(f"ALTER TABLE {table} DROP COLUMN id")
        conn.execute("DELETE FROM meta WHERE key = 'entry_ids'")
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def user_version(db: Path) -> int:
    """``PRAGMA user_version`` of a SQLite database (a registry's schema version)."""
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def clean_wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    """The environment a W&B client (or mount daemon) under test inherits: ``key`` in
    ``WANDB_API_KEY``, no base URL or entity from outside, no netrc, the SDK cache under
    ``tmp_path`` (empty)."""
    for name in ("WANDB_BASE_URL", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))


def b64md5(data: bytes) -> str:
    """W&B's entry digest, computed independently of artifactfs."""
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[1].encode().decode("unicode_escape") == target:
                return True
    return False


def force_unmount(path: Path) -> None:
    if not is_mounted(path):
        return
    if subprocess.run(["fusermount3", "-u", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


@contextlib.contextmanager
def tmpfs_mount(path: Path, size: str = "8m", *, read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs on ``path`` (created; a full or read-only disk for a test), always
    unmounted afterwards.  Needs root: skips without it, except in CI, where it fails."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("mounting a tmpfs needs root")
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size},mode=0700" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs: {proc.stderr}")
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def corrupt_table(registry: Path, table: str) -> None:
    """Write garbage over the root pages of ``table`` and its indexes in the database of a
    registry nobody has open: the database still opens, but the first read of the table fails."""
    db = registry / "registry.sqlite"
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        roots = [r[0] for r in conn.execute("SELECT rootpage FROM sqlite_master WHERE tbl_name = ?", (table,))]
    finally:
        conn.close()
    assert roots, f"no table {table}"
    with open(db, "r+b") as f:
        for root in roots:
            f.seek((root - 1) * page_size)
            f.write(b"\xde\xad\xbe\xef" * (page_size // 4))


@dataclass
class Mount:
    """A running ``artifactfs mount --foreground`` daemon started by a test."""

    path: Path
    registry: Path
    cache_dir: Path
    proc: subprocess.Popen[bytes]
    log_file: Path
    extra_args: tuple[str, ...] = field(default=())

    def stats(self) -> dict[str, int]:
        raw = os.getxattr(self.path, "user.artifactfs.stats")
        return json.loads(raw)  # type: ignore[no-any-return]

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def unmount(self) -> None:
        if self.proc.poll() is None:
            force_unmount(self.path)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        force_unmount(self.path)


class Mounter:
    """Starts mounts for a test and guarantees they are gone afterwards."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.mounts: list[Mount] = []
        self._n = 0

    def __call__(
        self,
        registry: Path,
        *args: str,
        cache_dir: Path | None = None,
        name: str | None = None,
        mountpoint: Path | None = None,
    ) -> Mount:
        """Mount ``registry`` on a new directory ``name`` under tmp (or on the existing, empty
        directory ``mountpoint``, to mount the same place again)."""
        self._n += 1
        if mountpoint is not None:
            path = mountpoint
        else:
            path = self.tmp / (name or f"mnt{self._n}")
            path.mkdir()
        cache_dir = cache_dir or self.tmp / f"cache{self._n}"
        log_file = self.tmp / f"mount{self._n}.log"
        cmd = [
            PY,
            "-m",
            "artifactfs",
            "mount",
            str(registry),
            str(path),
            "--foreground",
            "--cache-dir",
            str(cache_dir),
            "--log-level",
            "DEBUG",
            *args,
        ]
        # The daemon's own readiness pipe: "ok" once the mount answers and its read-ahead is set
        # (a stat that answers comes a little earlier than that).
        ready_r, ready_w = os.pipe()
        cmd += ["--ready-fd", str(ready_w)]
        try:
            with open(log_file, "wb") as out:
                proc = subprocess.Popen(
                    cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=(ready_w,)
                )
        finally:
            os.close(ready_w)
        mount = Mount(path, registry, cache_dir, proc, log_file, tuple(args))
        self.mounts.append(mount)
        with os.fdopen(ready_r, "rb") as ready:
            if not select.select([ready], [], [], 120)[0]:  # generous: a loaded machine is slow, not wrong
                raise AssertionError(f"mount did not come up: {log_file.read_text()}")
            status = ready.read()
        if not status.startswith(b"ok"):
            proc.wait(timeout=60)
            raise AssertionError(f"mount exited with {proc.returncode}: {log_file.read_text()}")
        assert is_mounted(path) and _answers(path)
        return mount

    def cleanup(self) -> None:
        for mount in self.mounts:
            with contextlib.suppress(Exception):
                mount.unmount()
            if mount.proc.poll() is None:
                mount.proc.send_signal(signal.SIGKILL)
                mount.proc.wait()
            force_unmount(mount.path)


def _answers(path: Path) -> bool:
    try:
        os.stat(path)
        return True
    except OSError:
        return False


@pytest.fixture
def mounter(tmp_path: Path, require_fuse: None) -> Iterator[Mounter]:
    m = Mounter(tmp_path)
    try:
        yield m
    finally:
        m.cleanup()


SAMPLE_FILES: dict[str, bytes] = {
    "README.md": b"# sample\n",
    "train/000001.txt": b"one\n",
    "train/000002.txt": b"two\n" * 1000,
    "train/deep/er/still/x.bin": bytes(range(256)) * 64,
    "empty": b"",
    ".hidden": b"secret-ish but fine\n",
    "latest": b"a file named latest\n",
    "with space/ünïcødé name.txt": "héllo wörld\n".encode(),
    "colon:inside.txt": b"colons are fine inside a version\n",
}


@pytest.fixture
def sample_registry(tmp_path: Path) -> tuple[Path, Path]:
    """A registry with acme/vision/ds:v0 (alias best), ds:v1 (latest) and acme/vision/model:v0.

    Returns (registry dir, source tree of ds:v1).
    """
    return build_sample_registry(tmp_path)


def build_sample_registry(tmp_path: Path) -> tuple[Path, Path]:
    reg_dir = tmp_path / "registry"
    src0 = write_tree(tmp_path / "src0", {"README.md": b"# v0\n", "train/000001.txt": b"one\n"})
    src1 = write_tree(tmp_path / "src1", SAMPLE_FILES)
    model = write_tree(tmp_path / "model", {"model.pt": os.urandom(300_000)})
    reg = LocalRegistry(reg_dir, create=True)
    try:
        reg.log_dir(src0, parse_ref("acme/vision/ds"), type="dataset", aliases=["best"], metadata={"rows": 1})
        reg.log_dir(src1, parse_ref("acme/vision/ds"), type="dataset", description="the full set")
        reg.log_dir(model, parse_ref("acme/vision/model"), type="model")
    finally:
        reg.close()
    return reg_dir, src1
