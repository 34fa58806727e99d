"""``artifactfs://`` (artifactfs/fsspec_fs.py): the fsspec filesystem over both backends (a local
registry, and W&B through tests/wandb_server.py on 127.0.0.1), read by real clients: pandas,
pyarrow.dataset, HF datasets, numpy through fsspec.open, universal-pathlib, and a Dask
distributed cluster of 2 worker processes.  Also: the cache it shares with ``download()``,
errors as Python's own, writes refused, alias answers, and a run as an unprivileged user with no
/dev/fuse."""

from __future__ import annotations

import concurrent.futures
import copy
import errno
import importlib.metadata
import io
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLE_FILES, Mounter, build_sample_registry, run_cli, write_tree
from wandb_server import WandbServer

import artifactfs as wandb
from artifactfs.fsspec_fs import ArtifactFileSystem
from artifactfs.names import parse_ref
from artifactfs.registry.local import LocalRegistry

KEY = "0123456789abcdef0123456789abcdef01234567"
PARTS = 4
ROWS = 50


def _table(part: int) -> pa.Table:
    return pa.table({"part": [part] * ROWS, "x": list(range(part * ROWS, (part + 1) * ROWS))})


def _parquet(part: int) -> bytes:
    sink = io.BytesIO()
    pq.write_table(_table(part), sink)
    return sink.getvalue()


def _npy() -> bytes:
    sink = io.BytesIO()
    np.save(sink, np.arange(12, dtype=np.int64).reshape(3, 4))
    return sink.getvalue()


TABLE_FILES = {f"data/part-{i}.parquet": _parquet(i) for i in range(PARTS)}
TOTAL_X = sum(range(PARTS * ROWS))
ARRAY_FILES = {"weights.npy": _npy(), "notes/readme.txt": b"hello\n"}


@dataclass
class Backend:
    name: str
    options: dict[str, Any]
    server: WandbServer | None = None

    def blob_gets(self) -> int:
        assert self.server is not None
        return sum(1 for r in self.server.file_requests() if r.method == "GET" and "manifest" not in r.path)


@pytest.fixture(params=["local", "wandb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    cache = str(tmp_path / "cache")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")  # the parquet builder is packaged: no hub
    if request.param == "local":
        reg = LocalRegistry(tmp_path / "registry", create=True)
        try:
            reg.log_dir(write_tree(tmp_path / "t", TABLE_FILES), parse_ref("acme/vision/table"), type="dataset")
            reg.log_dir(write_tree(tmp_path / "a", ARRAY_FILES), parse_ref("acme/vision/arrays"), type="model")
        finally:
            reg.close()
        yield Backend("local", {"registry": str(tmp_path / "registry"), "cache_dir": cache})
        return
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    with WandbServer(api_key=KEY, viewer_entity="acme") as srv:
        srv.add_artifact("acme", "vision", "table", "dataset", TABLE_FILES)
        srv.add_artifact("acme", "vision", "arrays", "model", ARRAY_FILES)
        yield Backend("wandb", {"registry": f"wandb:{srv.url}", "cache_dir": cache}, srv)


@pytest.fixture(autouse=True)
def _fresh_instances() -> Iterator[None]:
    """fsspec keeps one instance per storage options: each test starts from none."""
    ArtifactFileSystem.clear_instance_cache()
    yield
    ArtifactFileSystem.clear_instance_cache()


def _fs(tmp_path: Path, registry: Path, **options: Any) -> ArtifactFileSystem:
    fs = fsspec.filesystem("artifactfs", registry=str(registry), cache_dir=str(tmp_path / "fscache"), **options)
    assert isinstance(fs, ArtifactFileSystem)
    return fs


# -- the filesystem's operations (local registry: the sample of docs/SEMANTICS.md) ------------------


def test_namespace_lists_versions_and_aliases_as_the_mount(sample_registry: tuple[Path, Path], tmp_path: Path) -> None:
    fs = _fs(tmp_path, sample_registry[0])
    assert fs.ls("", detail=False) == ["acme"]
    assert fs.ls("artifactfs://acme", detail=False) == ["acme/vision"]
    assert fs.ls("acme/vision", detail=False) == [
        "acme/vision/ds:best",
        "acme/vision/ds:latest",
        "acme/vision/ds:v0",
        "acme/vision/ds:v1",
        "acme/vision/model:latest",
        "acme/vision/model:v0",
    ]
    latest = fs.info("acme/vision/ds:latest")
    assert (latest["type"], latest["islink"], latest["destination"]) == ("directory", True, "acme/vision/ds:v1")
    listed = {i["name"]: i for i in fs.ls("acme/vision")}
    assert listed["acme/vision/ds:best"]["destination"] == "acme/vision/ds:v0"
    assert "islink" not in listed["acme/vision/ds:v0"]
    assert fs.ls("acme/vision/ds:latest", detail=False) == [
        "acme/vision/ds:latest/.hidden",
        "acme/vision/ds:latest/README.md",
        "acme/vision/ds:latest/colon:inside.txt",
        "acme/vision/ds:latest/empty",
        "acme/vision/ds:latest/latest",
        "acme/vision/ds:latest/train",
        "acme/vision/ds:latest/with space",
    ]


def test_metadata_operations(sample_registry: tuple[Path, Path], tmp_path: Path) -> None:
    reg, src = sample_registry
    fs = _fs(tmp_path, reg)
    info = fs.info("acme/vision/ds:v1/train/000002.txt")
    assert (info["type"], info["size"], info["version"]) == ("file", 4000, "acme/vision/ds:v1")
    assert fs.info("acme/vision/ds:v1/train")["type"] == "directory"
    assert fs.isdir("acme/vision/ds:v1/train/deep/er") and not fs.isdir("acme/vision/ds:v1/README.md")
    assert fs.isfile("acme/vision/ds:v1/README.md")
    assert fs.exists("artifactfs://acme/vision/ds:v1/with space/ünïcødé name.txt")
    for missing in ("nobody", "acme/nothing", "acme/vision/ds:v7", "acme/vision/ds:gone", "acme/vision/ds:v1/no"):
        assert not fs.exists(missing)
        with pytest.raises(FileNotFoundError):
            fs.info(missing)
    # find does not descend into aliases (as find(1) on the mount does not follow symlinks)
    found = fs.find("acme/vision")
    assert "acme/vision/model:v0/model.pt" in found
    assert not any(":latest" in p or ":best" in p for p in found)
    expected = sorted(f"acme/vision/ds:v1/{p.relative_to(src).as_posix()}" for p in src.rglob("*") if p.is_file())
    assert fs.find("acme/vision/ds:v1") == expected
    assert fs.glob("acme/vision/ds:v1/train/*.txt") == [
        "acme/vision/ds:v1/train/000001.txt",
        "acme/vision/ds:v1/train/000002.txt",
    ]
    assert fs.glob("acme/vision/*:v0") == ["acme/vision/ds:v0", "acme/vision/model:v0"]
    assert fs.du("acme/vision/model:v0") == 300_000
    assert fs.du("acme/vision/ds:v1") == sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    walked = {root: (sorted(dirs), sorted(files)) for root, dirs, files in fs.walk("acme/vision/ds:v1/train")}
    assert walked["acme/vision/ds:v1/train"] == (["deep"], ["000001.txt", "000002.txt"])
    assert walked["acme/vision/ds:v1/train/deep/er/still"] == ([], ["x.bin"])


def test_reads_cat_ranges_open_seek_readinto(sample_registry: tuple[Path, Path], tmp_path: Path) -> None:
    reg, src = sample_registry
    fs = _fs(tmp_path, reg)
    data = (src / "train/000002.txt").read_bytes()
    path = "acme/vision/ds:v1/train/000002.txt"
    assert fs.cat_file(path) == data
    assert fs.cat_file(path, start=10, end=20) == data[10:20]
    assert fs.cat_file(path, start=-5) == data[-5:]
    assert fs.cat_file(path, start=3990, end=5000) == data[3990:]
    assert fs.cat_file("acme/vision/ds:v1/empty") == b""
    assert fs.cat(["artifactfs://" + path, path]) == {path: data}
    with fs.open(path) as f:
        assert f.seekable() and f.readable() and not f.writable()
        assert f.read(7) == data[:7]
        f.seek(-10, os.SEEK_END)
        assert f.read() == data[-10:]
        f.seek(100)
        buf = bytearray(50)
        assert f.readinto(buf) == 50 and bytes(buf) == data[100:150]
        assert f.tell() == 150
    with fsspec.open(f"artifactfs://{path}", "rt", registry=str(reg), cache_dir=str(tmp_path / "fscache")) as t:
        assert t.read() == data.decode()
    with pytest.raises(IsADirectoryError):
        fs.open("acme/vision/ds:v1/train")


def test_lines_are_read_ahead_not_byte_by_byte(tmp_path: Path) -> None:
    """Iterating over a binary file's lines (``for line in f``, readline, readlines) gives the
    lines of the local file, reading ahead in chunks: a few preads for a few MB, not one each
    byte; a line longer than a chunk, a last line without a newline, ``readline(size)`` and
    seeks in between all hold."""
    rng = random.Random(7)
    lines = [b"x" * rng.randrange(0, 300) + b"\n" for _ in range(20_000)]
    lines[777] = b"y" * 200_000 + b"\n"  # longer than what is read ahead at a time
    data = b"".join(lines) + b"no newline at the end"
    src = write_tree(tmp_path / "src", {"data.jsonl": data})
    reg = tmp_path / "reg"
    run_cli("log", str(src), "acme/vision/lines", "--type", "dataset", "--registry", str(reg))
    fs = _fs(tmp_path, reg)
    with fs.open("acme/vision/lines:v0/data.jsonl") as f:
        calls = 0
        pread = f._pread

        def counted(size: int, pos: int) -> bytes:
            nonlocal calls
            calls += 1
            return pread(size, pos)

        f._pread = counted  # type: ignore[method-assign]
        assert list(f) == data.splitlines(keepends=True)
        assert calls <= len(data) // (64 * 1024) + 3, calls
        f.seek(5)
        assert f.readline(3) == data[5:8] and f.readline() == lines[0][8:]
        assert f.read(4) == lines[1][:4]  # reads go on from where readline stopped
        f.seek(len(data) - 3)
        assert f.readline() == b"end" and f.readline() == b""
        f.seek(0)
        assert f.readlines() == data.splitlines(keepends=True)


def test_an_open_file_pickled_or_copied_opens_its_version_again(
    sample_registry: tuple[Path, Path], tmp_path: Path
) -> None:
    """A pickled or copied open file (Dask ships them so) opens the same version's file again,
    at its position, on a descriptor of its own: closing one leaves the other reading."""
    reg, src = sample_registry
    fs = _fs(tmp_path, reg)
    data = (src / "train/000002.txt").read_bytes()
    f = fs.open("acme/vision/ds:latest/train/000002.txt")
    assert f.read(10) == data[:10]
    g = pickle.loads(pickle.dumps(f))
    assert g.path == "acme/vision/ds:v1/train/000002.txt" and g.tell() == 10
    assert g._blob.fileno() != f._blob.fileno()
    assert g.read(5) == data[10:15]
    g.close()
    h = copy.copy(f)
    h.close()
    assert f.read() == data[10:]  # its own descriptor is still open
    f.close()
    with pytest.raises(ValueError, match="cannot pickle a closed file"):
        pickle.dumps(f)


# fsspec's MMapCache (blockcache::) never closes the file it maps (caching.py, _makefile): its leak.
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_modes_and_block_caches(sample_registry: tuple[Path, Path], tmp_path: Path) -> None:
    """Only reading modes open; fsspec's blockcache:: wraps a file like simplecache:: does."""
    reg, src = sample_registry
    fs = _fs(tmp_path, reg)
    path = "acme/vision/ds:v1/train/000002.txt"
    for mode in ("rbq", "rx", "b"):
        with pytest.raises((ValueError, PermissionError)):
            fs.open(path, mode)
    data = (src / "train/000002.txt").read_bytes()
    options = {"registry": str(reg), "cache_dir": str(tmp_path / "fscache")}
    for chain in ("blockcache", "simplecache"):
        url = f"{chain}::artifactfs://{path}"
        with fsspec.open(url, artifactfs=options, **{chain: {"cache_storage": str(tmp_path / chain)}}) as f:
            f.seek(100)
            assert f.read(50) == data[100:150]
            f.seek(0)
            assert f.read() == data


WORKER = """
import os, pickle, sys
fs = pickle.loads(sys.stdin.buffer.read())
print(fs.spec, fs.cat_file("acme/vision/ds:v1/README.md").decode(), sep="", end="")
"""


def test_a_relative_registry_reaches_a_worker_in_another_directory(
    sample_registry: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``registry="registry"`` (relative) names the directory where the filesystem was made,
    in a worker started elsewhere too (a Dask worker's working directory is its own)."""
    reg, _ = sample_registry
    monkeypatch.chdir(reg.parent)
    for fs in (
        fsspec.filesystem("artifactfs", registry=reg.name, cache_dir="fscache"),
        ArtifactFileSystem(reg.name, "fscache"),  # positionally too
    ):
        assert fs.spec == str(reg) and fs.cache_dir == str(reg.parent / "fscache")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        done = subprocess.run(
            [sys.executable, "-c", WORKER], input=pickle.dumps(fs), capture_output=True, cwd="/", env=env, timeout=120
        )
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout.decode() == f"{reg}{SAMPLE_FILES['README.md'].decode()}"


def test_a_misspelt_option_is_refused(sample_registry: tuple[Path, Path]) -> None:
    """Not the default registry read in silence instead of the one meant."""
    with pytest.raises(TypeError, match="not 'registy'"):
        fsspec.filesystem("artifactfs", registy=str(sample_registry[0]))
    fs = fsspec.filesystem("artifactfs", registry=str(sample_registry[0]), use_listings_cache=False)
    assert fs.spec == str(sample_registry[0])  # fsspec's own options still pass


def test_every_write_is_permission_error(sample_registry: tuple[Path, Path], tmp_path: Path) -> None:
    fs = _fs(tmp_path, sample_registry[0])
    path = "acme/vision/ds:v1/README.md"
    local = tmp_path / "up.txt"
    local.write_bytes(b"x")
    attempts = [
        lambda: fs.open("acme/vision/ds:v1/new.txt", "wb"),
        lambda: fs.open(path, "ab"),
        lambda: fs.open(path, "r+b"),
        lambda: fs.pipe_file(path, b"x"),
        lambda: fs.pipe(path, b"x"),
        lambda: fs.put_file(str(local), path),
        lambda: fs.rm(path),
        lambda: fs.rm_file(path),
        lambda: fs.mkdir("acme/vision/new"),
        lambda: fs.makedirs("acme/vision/new"),
        lambda: fs.rmdir("acme/vision/ds:v1/train"),
        lambda: fs.mv(path, "acme/vision/ds:v1/moved"),
        lambda: fs.cp_file(path, "acme/vision/ds:v1/copy"),
        lambda: fs.touch(path),
    ]
    for attempt in attempts:
        with pytest.raises(PermissionError):
            attempt()
    assert fs.cat_file(path) == b"# sample\n"


@pytest.mark.allow_log("digest mismatch", "is corrupt")
def test_digest_mismatch_is_eio_and_no_byte_is_served(sample_registry: tuple[Path, Path], tmp_path: Path) -> None:
    reg = sample_registry[0]
    fs = _fs(tmp_path, reg)
    registry = LocalRegistry(reg)
    try:
        version = registry.resolve(parse_ref("acme/vision/model:v0"))
        entry = registry.get_entry(version, "model.pt").entry
        assert entry is not None
        blob = registry.local_path(entry)
    finally:
        registry.close()
    assert blob is not None
    good = Path(blob).read_bytes()
    os.chmod(blob, 0o644)
    Path(blob).write_bytes(b"\0" * len(good))  # same size, other bytes
    with pytest.raises(OSError) as caught:
        fs.open("acme/vision/model:v0/model.pt")
    assert caught.value.errno == errno.EIO and not isinstance(caught.value, FileNotFoundError)
    with pytest.raises(OSError) as caught:
        fs.cat_file("acme/vision/model:v0/model.pt", 0, 10)
    assert caught.value.errno == errno.EIO
    Path(blob).write_bytes(good)
    assert fs.cat_file("acme/vision/model:v0/model.pt") == good


@pytest.mark.allow_log("digest mismatch", "is corrupt")
@pytest.mark.parametrize("name", ["model:v0/model.pt", "ds:v1/train/000002.txt"])  # trust record; memo only
def test_a_blob_changed_after_verification_is_verified_again(
    sample_registry: tuple[Path, Path], tmp_path: Path, name: str
) -> None:
    reg = sample_registry[0]
    fs = _fs(tmp_path, reg)
    path = f"acme/vision/{name}"
    good = fs.cat_file(path)  # verified; a re-open is now checked by its first read
    registry = LocalRegistry(reg)
    try:
        artifact, inner = name.split("/", 1)
        version = registry.resolve(parse_ref(f"acme/vision/{artifact}"))
        entry = registry.get_entry(version, inner).entry
        assert entry is not None
        blob = Path(str(registry.local_path(entry)))
    finally:
        registry.close()
    os.chmod(blob, 0o644)
    blob.write_bytes(good)  # the same bytes, another mtime and ctime: hashed again, then served
    with fs.open(path) as f:
        assert f.read() == good
    blob.write_bytes(bytes(len(good)))  # other bytes of the same size
    with fs.open(path) as f, pytest.raises(OSError) as caught:
        f.read()
    assert caught.value.errno == errno.EIO
    with pytest.raises(OSError) as caught:
        fs.cat_file(path, 0, 1)
    assert caught.value.errno == errno.EIO


def test_alias_answer_kept_then_moved_and_open_file_keeps_its_version(
    sample_registry: tuple[Path, Path], tmp_path: Path
) -> None:
    reg = sample_registry[0]
    fs = _fs(tmp_path, reg)
    assert fs.cat_file("acme/vision/ds:best/README.md") == b"# v0\n"
    held = fs.open("acme/vision/ds:best/README.md")
    registry = LocalRegistry(reg)
    try:
        registry.add_alias(parse_ref("acme/vision/ds:v1"), "best")
    finally:
        registry.close()
    # the answer is kept for alias_ttl (60 s by default): the same version meanwhile ...
    assert fs.cat_file("acme/vision/ds:best/README.md") == b"# v0\n"
    # ... and a pickled instance (a Dask task) carries it to the process that unpickles it,
    # where it holds past alias_ttl (a task may start long after the client resolved it)
    pickled = pickle.dumps(fs)
    assert pickle.loads(pickled) is fs  # fsspec's one instance here: it keeps its own answers
    ArtifactFileSystem.clear_instance_cache()
    clone = pickle.loads(pickled)
    assert clone is not fs
    clone.alias_ttl = 0
    assert clone.cat_file("acme/vision/ds:best/README.md") == b"# v0\n"
    assert clone.info("acme/vision/ds:best")["destination"] == "acme/vision/ds:v0"
    clone.invalidate_cache()
    assert clone.cat_file("acme/vision/ds:best/README.md") == b"# sample\n"
    fs.invalidate_cache()  # or alias_ttl seconds later
    assert fs.cat_file("acme/vision/ds:best/README.md") == b"# sample\n"
    assert fs.info("acme/vision/ds:best")["destination"] == "acme/vision/ds:v1"
    assert held.read() == b"# v0\n"  # an open file reads the version it was opened in
    held.close()
    fresh = _fs(tmp_path, reg, alias_ttl=0)
    assert fresh.cat_file("acme/vision/ds:best/README.md") == b"# sample\n"


def test_registered_in_process_and_by_the_entry_point() -> None:
    assert fsspec.get_filesystem_class("artifactfs") is ArtifactFileSystem
    assert isinstance(fsspec.filesystem("artifactfs"), ArtifactFileSystem)
    try:
        dist = importlib.metadata.distribution("artifactfs")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("artifactfs is not installed: its entry points cannot be read")
    points = [ep for ep in dist.entry_points if ep.group == "fsspec.specs"]
    if not points:  # an editable install made before the entry point was declared
        pytest.skip("the installed metadata predates the fsspec.specs entry point: reinstall to check it")
    assert [(ep.name, ep.value) for ep in points] == [("artifactfs", "artifactfs.fsspec_fs:ArtifactFileSystem")]
    assert points[0].load() is ArtifactFileSystem


NO_IMPORT = """
import sys, fsspec
assert "artifactfs.fsspec_fs" not in sys.modules
with fsspec.open("artifactfs://acme/vision/ds:latest/README.md", registry=sys.argv[1]) as f:
    sys.stdout.write(f.read().decode())
from upath import UPath
sys.stdout.write(type(UPath("artifactfs://acme/vision/ds:v0", registry=sys.argv[1])).__name__ + "\\n")
"""


def test_pyproject_entry_points_let_fsspec_and_upath_find_it_with_no_import(
    sample_registry: tuple[Path, Path], tmp_path: Path
) -> None:
    """The entry points pyproject.toml declares, as an installed package's metadata (written
    here into a dist-info directory, so no reinstall is needed), found by fsspec and UPath."""
    done = _run_with_entry_points(NO_IMPORT, sample_registry[0], tmp_path)
    assert done.stdout.splitlines() == ["# sample", "ArtifactPath"]


def _run_with_entry_points(code: str, registry: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter that sees pyproject.toml's entry points as an installed
    package's metadata (written into a dist-info directory, so no reinstall is needed)."""
    root = Path(__file__).resolve().parent.parent
    with open(root / "pyproject.toml", "rb") as f:
        points = tomllib.load(f)["project"]["entry-points"]
    dist = tmp_path / "site" / "artifactfs_probe-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: artifactfs-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in points.items())
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(root)])}
    argv = [sys.executable, "-c", code, str(registry)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


UPATH_FIRST = """
import sys, warnings
warnings.simplefilter("error")  # universal-pathlib warns when it falls back to generic path rules
from upath import UPath
root = UPath("artifactfs://acme/vision/ds:v1", registry=sys.argv[1])
print(sorted(p.name for p in root.iterdir()))
deep = root / "train" / "deep" / "er"
print(root.name, str(root.parent), deep.name, deep.parent.name, (deep / "still" / "x.bin").stat().st_size)
print(sorted(str(d).rsplit("ds:v1", 1)[1] for d, _, _ in root.walk()))
"""


def test_upath_as_the_first_thing_a_process_does_cuts_names_right(
    sample_registry: tuple[Path, Path], tmp_path: Path
) -> None:
    """universal-pathlib takes a protocol's path rules from its filesystem class if that is
    imported, else falls back (once per process) to generic rules that cut every name wrong:
    loading ArtifactPath imports the class first."""
    done = _run_with_entry_points(UPATH_FIRST, sample_registry[0], tmp_path)
    top = sorted({name.split("/")[0] for name in SAMPLE_FILES})
    assert done.stdout.splitlines() == [
        str(top),
        "ds:v1 artifactfs://acme/vision er deep 16384",
        str(sorted(["", "/train", "/train/deep", "/train/deep/er", "/train/deep/er/still", "/with space"])),
    ]


# -- both backends: the shared cache and real clients ------------------------------------------------


def test_shares_the_cache_with_download(backend: Backend, tmp_path: Path) -> None:
    fs = fsspec.filesystem("artifactfs", **backend.options)
    url = "artifactfs://acme/vision/arrays:latest/notes/readme.txt"
    assert fs.cat_file(url) == b"hello\n"
    if backend.server is None:
        return  # a local registry's blobs are verified in place: nothing is fetched at all
    assert backend.blob_gets() == 1
    api = wandb.Api(backend.options["registry"], cache_dir=backend.options["cache_dir"])
    try:
        root = api.artifact("acme/vision/arrays:latest").download(str(tmp_path / "dl"))
        assert (Path(root) / "notes/readme.txt").read_bytes() == b"hello\n"
        assert backend.blob_gets() == 2  # weights.npy only: readme.txt came from the cache
        assert fs.cat_file("acme/vision/arrays:v0/weights.npy") == ARRAY_FILES["weights.npy"]
        assert backend.blob_gets() == 2  # and weights.npy, fetched by download(), is not fetched again
    finally:
        api.close()


@pytest.mark.parametrize("backend", ["wandb"], indirect=True)
def test_shares_the_cache_with_a_mount(backend: Backend, mounter: Mounter) -> None:
    assert backend.server is not None
    cache = Path(backend.options["cache_dir"])
    m = mounter(backend.options["registry"], cache_dir=cache)
    project = m.path / "acme" / "vision"
    assert (project / "table:v0/data/part-1.parquet").read_bytes() == TABLE_FILES["data/part-1.parquet"]
    assert backend.blob_gets() == 1
    fs = fsspec.filesystem("artifactfs", **backend.options)
    assert fs.cat_file("acme/vision/table:latest/data/part-1.parquet") == TABLE_FILES["data/part-1.parquet"]
    assert backend.blob_gets() == 1  # the mount's verified blob
    assert fs.cat_file("acme/vision/table:v0/data/part-2.parquet") == TABLE_FILES["data/part-2.parquet"]
    assert backend.blob_gets() == 2
    assert (project / "table:v0/data/part-2.parquet").read_bytes() == TABLE_FILES["data/part-2.parquet"]
    assert backend.blob_gets() == 2  # and the other way round


@pytest.mark.parametrize("backend", ["wandb"], indirect=True)
def test_threads_wanting_one_missing_blob_fetch_it_once(backend: Backend) -> None:
    fs = fsspec.filesystem("artifactfs", **backend.options)
    path = "acme/vision/table:v0/data/part-3.parquet"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: fs.cat_file(path), range(8)))
    assert got == [TABLE_FILES["data/part-3.parquet"]] * 8
    assert backend.blob_gets() == 1


@pytest.mark.parametrize("backend", ["wandb"], indirect=True)
@pytest.mark.allow_log("digest mismatch", "mismatch")
def test_wandb_blob_with_wrong_bytes_is_eio_and_not_kept(backend: Backend) -> None:
    assert backend.server is not None
    backend.server.faults.corrupt(times=None, match="weights.npy")
    fs = fsspec.filesystem("artifactfs", **backend.options)
    with pytest.raises(OSError) as caught:
        fs.open("acme/vision/arrays:v0/weights.npy")
    assert caught.value.errno == errno.EIO
    backend.server.faults.clear()
    with fs.open("acme/vision/arrays:v0/weights.npy") as f:  # fetched again: nothing wrong was kept
        assert f.read() == ARRAY_FILES["weights.npy"]


def test_reference_entry_is_verified_into_the_cache(tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "labels.csv"
    outside.parent.mkdir()
    outside.write_bytes(b"id,label\n0,cat\n")
    reg = tmp_path / "registry"
    art = wandb.Artifact("refs", type="dataset")
    art.add_reference(f"file://{outside}")
    api = wandb.Api(str(reg))
    try:
        api.log_artifact(art, "acme/vision")
    finally:
        api.close()
    fs = _fs(tmp_path, reg)
    info = fs.info("acme/vision/refs:v0/labels.csv")
    assert info["ref"] == f"file://{outside}" and info["size"] == len(b"id,label\n0,cat\n")
    assert fs.cat_file("acme/vision/refs:v0/labels.csv") == b"id,label\n0,cat\n"
    outside.unlink()  # from now on only the cache has it
    ArtifactFileSystem.clear_instance_cache()
    assert _fs(tmp_path, reg).cat_file("acme/vision/refs:v0/labels.csv", 3, 8) == b"label"


def test_pandas_pyarrow_numpy_upath(backend: Backend) -> None:
    import pandas as pd
    import pyarrow.dataset as ds
    from upath import UPath

    so = backend.options
    base = "artifactfs://acme/vision/table:latest/data"
    df = pd.read_parquet(f"{base}/part-2.parquet", storage_options=so)
    assert list(df["x"]) == list(range(100, 150))
    whole = pd.read_parquet(base, storage_options=so)
    assert len(whole) == PARTS * ROWS and int(whole["x"].sum()) == TOTAL_X

    fs = fsspec.filesystem("artifactfs", **so)
    dataset = ds.dataset("acme/vision/table:v0/data", format="parquet", filesystem=fs)
    table = dataset.to_table(filter=ds.field("part") == 3)
    assert table.num_rows == ROWS and table.column("x").to_pylist()[0] == 150

    with fsspec.open("artifactfs://acme/vision/arrays:latest/weights.npy", **so) as f:
        array = np.load(f)
    assert array.shape == (3, 4) and int(array.sum()) == sum(range(12))

    root = UPath("artifactfs://acme/vision/arrays:latest", **so)
    assert sorted(p.name for p in root.iterdir()) == ["notes", "weights.npy"]
    assert (root / "notes" / "readme.txt").read_text() == "hello\n"
    assert (root / "weights.npy").stat().st_size == len(ARRAY_FILES["weights.npy"])
    with pytest.raises(PermissionError):
        (root / "new.txt").write_text("no")


def test_hf_datasets_load_dataset(backend: Backend, tmp_path: Path) -> None:
    import datasets

    loaded = datasets.load_dataset(
        "parquet",
        data_files="artifactfs://acme/vision/table:latest/data/*.parquet",
        storage_options=backend.options,
        split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    assert loaded.num_rows == PARTS * ROWS
    assert sum(loaded["x"]) == TOTAL_X


@pytest.mark.slow
@pytest.mark.allow_log(r"distributed\.")
def test_dask_cluster_of_two_worker_processes(backend: Backend) -> None:
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        frame = dd.read_parquet("artifactfs://acme/vision/table:latest/data", storage_options=backend.options)
        assert frame.npartitions == PARTS
        by_part = frame.groupby("part")["x"].sum().compute()
        assert {int(k): int(v) for k, v in by_part.items()} == {
            i: sum(range(i * ROWS, (i + 1) * ROWS)) for i in range(PARTS)
        }
        pids = client.run(os.getpid)
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
    if backend.server is not None:
        # One cache on the node, shared by both workers: each file was fetched at most once.
        assert backend.blob_gets() <= PARTS


# -- no root, no FUSE ----------------------------------------------------------------------------------

NOBODY = 65534

UNPRIVILEGED = """
import errno, os, sys, fsspec
import artifactfs.fsspec_fs
assert os.getuid() != 0 and os.geteuid() != 0
assert not os.path.exists("/dev/fuse") or os.stat("/dev/fuse").st_rdev == os.stat("/dev/null").st_rdev
reg = sys.argv[1]
with fsspec.open("artifactfs://acme/vision/model:latest/model.pt", registry=reg) as f:
    f.seek(1000)
    sys.stdout.write(f.read(16).hex() + "\\n")
fs = fsspec.filesystem("artifactfs", registry=reg)
try:
    fs.open("acme/vision/ds:v1/README.md", "wb")
except PermissionError:
    sys.stdout.write("refused\\n")
"""


def test_runs_unprivileged_without_fuse(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make the unprivileged user and the mount namespace")
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        pytest.fail("unshare and setpriv (util-linux) are needed")
    # A directory the unprivileged user can read: the code, the registry, and a HOME it owns.
    work = Path(tempfile.mkdtemp(prefix="artifactfs-nobody-"))
    try:
        os.chmod(work, 0o755)
        reg, _ = build_sample_registry(work / "build")
        shutil.copytree(Path(__file__).resolve().parents[1] / "artifactfs", work / "code" / "artifactfs")
        home = work / "home"
        home.mkdir()
        os.chown(home, NOBODY, NOBODY)
        for path in [work, *work.rglob("*")]:
            if not path.is_symlink() and path != home:
                path.chmod(0o755 if path.is_dir() else 0o644)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "PYTHONPATH": str(work / "code"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all"]
        probe = subprocess.run(
            [*drop, sys.executable, "-c", "import fsspec, diskcache, trio"], env=env, capture_output=True, text=True
        )
        if probe.returncode != 0:
            pytest.skip(f"this Python's packages cannot be read by an unprivileged user: {probe.stderr.strip()[-200:]}")
        script = (
            f'mount --bind /dev/null /dev/fuse 2>/dev/null || true; exec {" ".join(drop)} {sys.executable} -c "$0" "$1"'
        )
        done = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, UNPRIVILEGED, str(reg)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        model = LocalRegistry(reg)
        try:
            version = model.resolve(parse_ref("acme/vision/model:v0"))
            entry = model.get_entry(version, "model.pt").entry
            assert entry is not None
            blob = model.local_path(entry)
        finally:
            model.close()
        assert blob is not None
        expected = Path(blob).read_bytes()[1000:1016].hex()
        assert done.stdout.split() == [expected, "refused"]
        assert (home / ".cache" / "artifactfs" / "cache.db").exists()  # its own verified cache, in its HOME
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_train_loader_example_over_the_url(
    sample_registry: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = sample_registry[0]
    example = Path(__file__).resolve().parent.parent / "examples" / "train_loader.py"
    env = {**os.environ, "ARTIFACTFS_REGISTRY": str(reg), "PYTHONPATH": str(example.parent.parent)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(example), *args], capture_output=True, text=True, timeout=120, env=env
        )

    record = tmp_path / "pin.json"
    first = run("artifactfs://acme/vision/ds:latest", "--record", str(record), "--workers", "0")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    pinned = json.loads(record.read_text())
    assert pinned["artifact"] == "acme/vision/ds:v1" and lines[0] == f"pin: acme/vision/ds:v1 digest {pinned['digest']}"
    assert lines[1].startswith(f"epoch 0: {len(SAMPLE_FILES)} files,"), lines
    again = run("artifactfs://acme/vision/ds:v1", "--expect", str(record), "--workers", "0")
    assert again.returncode == 0, again.stderr
    other = run("artifactfs://acme/vision/ds:best", "--expect", str(record), "--workers", "0")
    assert other.returncode == 1
    assert other.stderr.endswith("mount or name artifactfs://acme/vision/ds:v1\n"), other.stderr
