"""``Artifact.download``/``checkout``: the mount's verified cache shared, files placed by reflink or
copy (never a hard link), nothing written outside the root, a progress bar only on a terminal.

Against a local registry and the W&B test server (tests/wandb_server.py, real HTTP on 127.0.0.1).
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import SAMPLE_FILES, write_tree
from wandb_server import WandbServer

import artifactfs.artifact
import artifactfs.manifest
import artifactfs.registry.wandb
from artifactfs import Api, Artifact
from artifactfs.download import SafeRoot, clone_or_copy
from artifactfs.errors import ArtifactFSError, DigestMismatch, InvalidPath
from artifactfs.fetcher import Fetcher
from artifactfs.manifest import digest_bytes
from artifactfs.progress import ProgressBar
from artifactfs.store import BlobStore

KEY = "0123456789abcdef0123456789abcdef01234567"
FILES = {"a.txt": b"hello\n", "d/b.txt": b"bee", "d/e/f.bin": bytes(range(256)) * 64, "same.txt": b"hello\n"}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("ARTIFACTFS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def server(env: Path) -> Iterator[WandbServer]:
    with WandbServer(api_key=KEY, viewer_entity="acme") as srv:
        srv.add_artifact("acme", "vision", "ds", "dataset", FILES, aliases=["best"])
        yield srv


@pytest.fixture
def wapi(server: WandbServer, env: Path) -> Iterator[Api]:
    with Api(f"wandb:{server.url}", cache_dir=str(env / "cache")) as api:
        yield api


@pytest.fixture
def local(env: Path) -> Iterator[Api]:
    src = write_tree(env / "src", SAMPLE_FILES)
    with Api(env / "registry", cache_dir=str(env / "cache")) as api:
        art = Artifact("ds", type="dataset")
        art.add_dir(src)
        api.log_artifact(art, "acme/vision")
        yield api


def blob_gets(server: WandbServer) -> int:
    return sum(1 for r in server.file_requests() if r.method == "GET" and "manifest" not in r.path)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- the cache shared with the mount --------------------------------------------------------------


def test_wandb_download_fills_the_shared_cache_once(wapi: Api, server: WandbServer, env: Path) -> None:
    art = wapi.artifact("acme/vision/ds:best")
    server.reset_log()
    first = Path(art.download(env / "one"))
    assert tree(first) == FILES
    assert blob_gets(server) == 3  # a.txt and same.txt hold one content: fetched once
    art.verify(first)

    server.reset_log()
    second = Path(art.download(env / "two"))  # another root: every blob from the cache
    assert tree(second) == FILES and blob_gets(server) == 0

    # What the mount's fetcher sees in that cache directory: hits, no fetch.
    reg = wapi.registry
    version = art._logged_version()
    store = BlobStore(str(env / "cache"))
    try:
        fetcher = Fetcher(reg, store)

        async def read_all() -> dict[str, bytes]:
            out = {}
            for e in reg.iter_entries(version):
                blob = await fetcher.get(version, e)
                out[e.path] = blob.pread(e.size + 1, 0)
                blob.close()
            return out

        assert trio.run(read_all) == FILES
        assert fetcher.stats.fetches == 0 and fetcher.stats.cache_hits == len(FILES)
    finally:
        store.close()
    assert blob_gets(server) == 0


def test_download_uses_what_the_mount_cached(wapi: Api, server: WandbServer, env: Path) -> None:
    """The other direction: blobs the mount's fetcher put in the cache are not fetched again."""
    reg = wapi.registry
    art = wapi.artifact("acme/vision/ds:v0")
    version = art._logged_version()
    store = BlobStore(str(env / "cache"))
    try:
        fetcher = Fetcher(reg, store)

        async def read_all() -> None:
            for e in reg.iter_entries(version):
                (await fetcher.get(version, e)).close()

        trio.run(read_all)
    finally:
        store.close()
    server.reset_log()
    assert tree(Path(art.download(env / "dl"))) == FILES
    assert blob_gets(server) == 0


def test_downloaded_files_are_not_hard_links_of_the_cache(wapi: Api, env: Path) -> None:
    art = wapi.artifact("acme/vision/ds")
    root = Path(art.download(env / "dl"))
    cached = {os.stat(p).st_ino for p in (env / "cache").rglob("*.val")}
    assert cached
    for path in FILES:
        st = os.stat(root / path)
        assert st.st_nlink == 1 and st.st_ino not in cached
    (root / "d" / "b.txt").write_bytes(b"edited")  # an edit of the copy leaves the cache alone
    again = Path(art.download(env / "again"))
    assert (again / "d" / "b.txt").read_bytes() == b"bee"


def test_local_blobs_are_cloned_and_hashed_not_cached(local: Api, env: Path) -> None:
    """A local registry's blobs are on this disk already: copied from there (and the copy hashed),
    never into the cache directory."""
    art = local.artifact("acme/vision/ds")
    root = Path(art.download(env / "dl"))
    assert tree(root) == {k: v for k, v in SAMPLE_FILES.items()}
    assert not list((env / "cache").rglob("*.val"))
    for rel in SAMPLE_FILES:
        entry = art.get_entry(rel)
        blob = local.registry.local_path(entry.plain())
        assert blob is not None and os.stat(root / rel).st_ino != os.stat(blob).st_ino
        assert os.stat(root / rel).st_nlink == 1


def test_clone_or_copy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20))
    for size in (0, 1, 3 << 20, (3 << 20) - 7):
        dst = tmp_path / f"dst{size}"
        with open(src, "rb") as s, open(dst, "wb") as d:
            how = clone_or_copy(s.fileno(), d.fileno(), size)
        assert how in ("reflink", "copy")
        assert dst.read_bytes() == src.read_bytes()[:size]
        assert os.stat(dst).st_ino != os.stat(src).st_ino


# -- nothing outside the root ---------------------------------------------------------------------


@pytest.mark.parametrize("layer", ["registry", "download-alone"])
@pytest.mark.parametrize("bad", ["../escaped.txt", "d/../../escaped.txt", "/tmp/escaped-artifactfs.txt"])
def test_hostile_wandb_manifest_writes_nothing_outside(
    server: WandbServer, env: Path, monkeypatch: pytest.MonkeyPatch, layer: str, bad: str
) -> None:
    """A manifest served with an entry path that climbs out: the manifest parser refuses it, and
    with that check switched off the download's own check still does."""
    manifest = {
        "version": 1,
        "storagePolicy": "wandb-storage-policy-v1",
        "storagePolicyConfig": {"storageLayout": "V2"},
        "contents": {
            "ok.txt": {"digest": digest_bytes(b"ok\n"), "size": 3},
            bad: {"digest": digest_bytes(b"evil\n"), "size": 5},
        },
    }
    server.add_artifact("acme", "vision", "evil", "dataset", {"ok.txt": b"ok\n", bad: b"evil\n"}, manifest=manifest)
    if layer == "download-alone":  # every other layer's check off: download.py's own must hold
        for module in (artifactfs.manifest, artifactfs.registry.wandb, artifactfs.artifact):
            if hasattr(module, "check_entry_path"):
                monkeypatch.setattr(module, "check_entry_path", lambda path: path)
    base = env / "downloads"
    base.mkdir()
    with Api(f"wandb:{server.url}", cache_dir=str(env / "cache")) as api, pytest.raises(ArtifactFSError):
        api.artifact("acme/vision/evil:latest").download(base / "dl")
    assert not (base / "escaped.txt").exists() and not (env / "escaped.txt").exists()
    assert not Path("/tmp/escaped-artifactfs.txt").exists()
    assert [p.name for p in base.iterdir()] in ([], ["dl"])
    assert not list((base / "dl").rglob("*")) if (base / "dl").exists() else True


def test_planted_directory_symlink_is_not_followed(wapi: Api, env: Path) -> None:
    outside = env / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_bytes(b"not yours\n")
    root = env / "dl"
    root.mkdir()
    (root / "d").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidPath, match="symlink"):
        wapi.artifact("acme/vision/ds").download(root)
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert (outside / "keep.txt").read_bytes() == b"not yours\n"


def test_planted_file_symlink_is_replaced_not_written_through(wapi: Api, env: Path) -> None:
    outside = env / "outside.txt"
    outside.write_bytes(b"not yours\n")
    root = env / "dl"
    root.mkdir()
    (root / "a.txt").symlink_to(outside)
    wapi.artifact("acme/vision/ds").download(root)
    assert outside.read_bytes() == b"not yours\n"
    assert not (root / "a.txt").is_symlink() and (root / "a.txt").read_bytes() == FILES["a.txt"]


def test_checkout_deletes_only_inside_root(wapi: Api, env: Path) -> None:
    outside = env / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_bytes(b"keep me\n")
    root = env / "co"
    write_tree(root, {"stale/old.txt": b"old", "a.txt": b"wrong", "d/extra.txt": b"x"})
    (root / "link-to-outside").symlink_to(outside, target_is_directory=True)
    (root / "file-link").symlink_to(outside / "precious.txt")
    art = wapi.artifact("acme/vision/ds")
    art.checkout(root)
    assert (outside / "precious.txt").read_bytes() == b"keep me\n"
    assert not (root / "link-to-outside").is_symlink() and not (root / "file-link").is_symlink()
    assert tree(root) == FILES
    art.verify(root)


def test_safe_root_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "d").write_bytes(b"a file")
    with SafeRoot(str(tmp_path)) as root:
        with pytest.raises(InvalidPath, match="not a directory"):
            root.open_dir(["d"], create=True)
        for bad in ("../x", "/abs", "a//b", "a/./b", ""):
            with pytest.raises(InvalidPath):
                root.split(bad)


@pytest.mark.allow_log(r"is corrupt")
def test_corrupt_cached_blob_is_fetched_again(wapi: Api, server: WandbServer, env: Path) -> None:
    art = wapi.artifact("acme/vision/ds")
    art.download(env / "one")
    for val in (env / "cache").rglob("*.val"):
        data = bytearray(val.read_bytes())
        if data:
            data[0] ^= 0xFF
            os.chmod(val, 0o600)
            val.write_bytes(bytes(data))
    server.reset_log()
    assert tree(Path(art.download(env / "two"))) == FILES
    assert blob_gets(server) == 3


def test_corrupt_download_leaves_nothing(wapi: Api, server: WandbServer, env: Path) -> None:
    server.faults.corrupt(times=None, match="b.txt")
    art = wapi.artifact("acme/vision/ds")
    with pytest.raises((DigestMismatch, ArtifactFSError)):
        art.download(env / "dl")
    assert not (env / "dl" / "d" / "b.txt").exists()
    assert not [p for p in (env / "dl").rglob("*") if p.name.endswith(".artifactfs-tmp")]


# -- progress ---------------------------------------------------------------------------------------


def test_quiet_when_stderr_is_not_a_terminal(wapi: Api, env: Path, capfd: pytest.CaptureFixture[str]) -> None:
    wapi.artifact("acme/vision/ds").download(env / "dl")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_progress_bar_on_a_terminal(server: WandbServer, env: Path) -> None:
    """A download whose stderr is a pty shows bytes, files and a rate."""
    script = textwrap.dedent(
        f"""
        from artifactfs import Api
        with Api("wandb:{server.url}", cache_dir={str(env / "cache")!r}) as api:
            api.artifact("acme/vision/ds").download({str(env / "dl")!r})
        """
    )
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a fresh pty is 0 wide
    try:
        proc = subprocess.Popen([sys.executable, "-c", script], stderr=slave, stdout=subprocess.DEVNULL, env=os.environ)
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
    text = out.decode(errors="replace")
    assert "4/4 files" in text and "B/s" in text, text


def test_progress_disabled_does_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    bar = ProgressBar(100, 2, "x", enabled=False)
    bar.done(50)
    bar.close()
    assert capfd.readouterr().err == ""


def test_download_keeps_the_cache_size_limit_the_mount_chose(wapi: Api, env: Path) -> None:
    store = BlobStore(str(env / "cache"), size_limit=123 << 20)  # as `mount --cache-size 123M` made it
    store.close()
    wapi.artifact("acme/vision/ds").download(env / "dl")
    again = BlobStore(str(env / "cache"), size_limit=None)
    try:
        assert again._cache.size_limit == 123 << 20
    finally:
        again.close()


def test_skip_cache_downloads_verified_without_caching(wapi: Api, server: WandbServer, env: Path) -> None:
    art = wapi.artifact("acme/vision/ds")
    root = Path(art.download(env / "dl", skip_cache=True))
    assert tree(root) == FILES
    assert not list((env / "cache").rglob("*.val"))
    server.faults.corrupt(times=None, match="b.txt")
    with pytest.raises(DigestMismatch):
        art.download(env / "bad", skip_cache=True)
    assert not (env / "bad" / "d" / "b.txt").exists()


def test_blobs_are_fetched_in_parallel(wapi: Api, server: WandbServer, env: Path) -> None:
    """Each blob GET waits 2 s for its first byte: fetched one after another, the third would
    start 4 s after the first; in parallel all three start together."""
    art = wapi.artifact("acme/vision/ds")
    art.files()  # the manifest first
    server.reset_log()
    server.faults.slow_first_byte(2.0, times=None, match="/files/")
    art.download(env / "dl")
    starts = sorted(r.time for r in server.file_requests() if r.method == "GET" and "manifest" not in r.path)
    assert len(starts) == 3 and starts[-1] - starts[0] < 1.5, starts


@pytest.mark.parametrize("works", ["copy_file_range", "sendfile", "pread"])
def test_copy_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, works: str) -> None:
    """No FICLONE (EOPNOTSUPP), then no copy_file_range (EXDEV), then no sendfile (EINVAL):
    each fallback still makes an exact copy."""
    import errno

    import artifactfs.download as dl

    def refuse(code: int) -> Any:
        def call(*_: Any, **__: Any) -> Any:
            raise OSError(code, os.strerror(code))

        return call

    monkeypatch.setattr(dl.fcntl, "ioctl", refuse(errno.EOPNOTSUPP))
    if works in ("sendfile", "pread"):
        monkeypatch.setattr(dl.os, "copy_file_range", refuse(errno.EXDEV))
    if works == "pread":
        monkeypatch.setattr(dl.os, "sendfile", refuse(errno.EINVAL))
    src = tmp_path / "src"
    src.write_bytes(os.urandom((2 << 20) + 123))
    dst = tmp_path / "dst"
    with open(src, "rb") as s, open(dst, "wb") as d:
        assert clone_or_copy(s.fileno(), d.fileno(), (2 << 20) + 123) == "copy"
    assert dst.read_bytes() == src.read_bytes()
