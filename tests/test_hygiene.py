"""Error hygiene (issue 9, item 6): no foreign exception reaches a user or the FUSE layer.

* Every class of the hierarchy carries the errno a FUSE request fails with, the level it is
  logged at, and the CLI's exit status.
* The CLI, driven into the failures a user meets (a registry that is a file or garbage, a
  corrupt table, a read-only or full disk under ``log`` and ``get``, an unreachable W&B host),
  ends each in exactly one ``artifactfs: error:`` line and exit status 1, never a traceback.
* The store turns the foreign errors it meets (sqlite3, diskcache's Timeout, OSError) into its
  own classes.

The log checks that apply to every test (a WARNING or a traceback that a test did not declare
fails it) live in tests/conftest.py.
"""

from __future__ import annotations

import errno
import inspect
import io
import logging
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import diskcache
import pytest
from conftest import LiveEnv, corrupt_table, tmpfs_mount, write_tree

from artifactfs import errors, wandb_errors
from artifactfs.errors import ArtifactFSError, CacheError, FetchError
from artifactfs.manifest import Entry, digest_bytes
from artifactfs.names import parse_ref
from artifactfs.registry.local import LocalRegistry
from artifactfs.sources import BlobSource
from artifactfs.store import BlobStore

ENV = LiveEnv(LC_ALL="C.UTF-8", LANG="C.UTF-8")  # the test's environment when used


def test_every_error_class_maps_to_an_errno_a_level_and_an_exit_status() -> None:
    classes = [
        c
        for module in (errors, wandb_errors)
        for _, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, ArtifactFSError)
    ]
    assert len(classes) > 25
    for cls in classes:
        assert cls.errno in errno.errorcode, cls
        assert cls.log_level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR), cls
        assert isinstance(cls.exit_status, int) and 1 <= cls.exit_status <= 125, cls
        assert cls.__doc__, cls


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "artifactfs", *args], capture_output=True, text=True, env=env or ENV, timeout=120
    )


def one_error_line(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    errors_ = [line for line in proc.stderr.splitlines() if line.startswith("artifactfs: error:")]
    assert len(errors_) == 1, proc.stderr
    for word in words:
        assert word in errors_[0], errors_[0]
    return errors_[0]


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    src = write_tree(tmp_path / "src", {"big.bin": os.urandom(3 << 20), "small.txt": b"small\n"})
    reg = LocalRegistry(tmp_path / "reg", create=True)
    try:
        reg.log_dir(src, parse_ref("acme/vision/ds"), type="dataset")
    finally:
        reg.close()
    return tmp_path / "reg"


def test_cli_registry_that_is_a_file_or_garbage(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    one_error_line(cli("ls", "--registry", str(tmp_path / "file")), "no registry")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "registry.sqlite").write_bytes(os.urandom(8192))
    one_error_line(cli("ls", "--registry", str(tmp_path / "garbage")), "not a database")


def test_cli_registry_with_a_corrupt_table(registry: Path) -> None:
    corrupt_table(registry, "versions")
    one_error_line(cli("info", "acme/vision/ds:latest", "--registry", str(registry)))


def test_cli_log_into_a_read_only_disk(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a.txt": b"a\n"})
    with tmpfs_mount(tmp_path / "ro", "1m", read_only=True) as ro:
        one_error_line(
            cli("log", str(src), "acme/p/ds", "--type", "dataset", "--registry", str(ro / "reg")), "Read-only"
        )


def test_cli_get_onto_a_full_or_read_only_disk(registry: Path, tmp_path: Path) -> None:
    with tmpfs_mount(tmp_path / "full", "1m") as full:
        line = one_error_line(
            cli("get", "acme/vision/ds:latest", "--root", str(full / "out"), "--registry", str(registry))
        )
        assert "No space left on device" in line
        leftovers = [p.name for p in (full / "out").rglob("*") if p.is_file() and p.name != "small.txt"]
        assert leftovers == []  # no partial big.bin, no temp file
    with tmpfs_mount(tmp_path / "ro", "1m", read_only=True) as ro:
        one_error_line(
            cli("get", "acme/vision/ds:latest", "--root", str(ro / "out"), "--registry", str(registry)), "Read-only"
        )


def test_cli_wandb_host_that_does_not_answer(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before use: nothing listens there
    env = {**ENV, "WANDB_API_KEY": "a" * 40, "NETRC": str(tmp_path / "none"), "WANDB_CACHE_DIR": str(tmp_path / "w")}
    env.pop("WANDB_BASE_URL", None)
    one_error_line(cli("ls", "--registry", f"wandb:http://127.0.0.1:{port}", env=env), "cannot reach the server")


# -- the store translates what it meets ----------------------------------------------------------


def _store_with_blob(tmp_path: Path) -> tuple[BlobStore, Entry]:
    store = BlobStore(str(tmp_path / "cache"))
    data = os.urandom(10_000)
    entry = Entry("f", digest_bytes(data), len(data))
    store.fill(entry.cache_key, entry, BlobSource("t", open=lambda: io.BytesIO(data)), "f").close()
    return store, entry


@pytest.mark.allow_log(r"test: fetching it again")
@pytest.mark.parametrize("error", [sqlite3.OperationalError("disk I/O error"), diskcache.Timeout()])
def test_store_index_failures_become_artifactfs_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    store, entry = _store_with_blob(tmp_path)
    try:

        def fail(*args: object, **kwargs: object) -> object:
            raise error

        monkeypatch.setattr(store._cache, "volume", fail)
        monkeypatch.setattr(store._cache, "__contains__", fail, raising=False)
        with pytest.raises(CacheError):
            _ = store.volume
        monkeypatch.setattr(store._cache, "delete", fail)
        with pytest.raises(FetchError):
            store._evict(entry.cache_key, "test")
    finally:
        monkeypatch.undo()
        store.close()


def test_store_disk_errors_become_artifactfs_errors(tmp_path: Path) -> None:
    store, entry = _store_with_blob(tmp_path)
    try:
        blob = store.open_cached(entry.cache_key)
        assert blob is not None
        os.close(blob._fd)  # type: ignore[arg-type]  # the descriptor gone under it: EBADF
        with pytest.raises(FetchError, match="reading a cached blob failed"):
            blob.pread(10, 0)
        blob._fd = None
        bad = BlobSource("t", open=lambda: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))  # type: ignore[arg-type, return-value]
        other = Entry("g", digest_bytes(b"zz"), 2)
        with pytest.raises(ArtifactFSError):
            store.fill(other.cache_key, other, bad, "g")
    finally:
        store.close()
