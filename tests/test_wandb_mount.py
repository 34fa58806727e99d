"""A real FUSE mount of a W&B server (tests/wandb_server.py on 127.0.0.1), driven by ordinary
programs: the same shell-level checks as tests/test_mount.py, then every download fault, then a
hunt for the API key in everything the daemon shows.

Each fault must end in the right bytes or EIO within a bounded time, with nothing unverified
cached and the daemon still serving other files.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SAMPLE_FILES, LiveEnv, Mount, Mounter, b64md5, clean_wandb_env, force_unmount, is_mounted
from wandb_server import WandbServer

pytestmark = pytest.mark.fuse

KEY = "f00dfeedc0ffee0123456789abcdef0123456789"
ENV = LiveEnv(LC_ALL="C.UTF-8", LANG="C.UTF-8")  # the test's environment when used
BIG = os.urandom(3 * 1024 * 1024 + 17)
OTHER = {"a.txt": b"the other artifact\n", "b/c.txt": b"still served\n"}


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The key in the environment the daemon inherits; no netrc, an empty SDK cache."""
    clean_wandb_env(tmp_path, monkeypatch, KEY)
    return tmp_path


@pytest.fixture
def server(wandb_env: Path) -> Iterator[WandbServer]:
    with WandbServer(api_key=KEY, viewer_entity="acme", teams=("team1",)) as srv:
        srv.add_artifact("acme", "vision", "ds", "dataset", {"README.md": b"# v0\n"}, aliases=["best"])
        srv.add_artifact("acme", "vision", "ds", "dataset", SAMPLE_FILES, metadata={"rows": 9}, description="full")
        srv.add_artifact("acme", "vision", "model", "model", {"model.pt": BIG})
        srv.add_artifact("acme", "vision", "other", "dataset", OTHER)
        srv.add_artifact("team1", "shared", "tbl", "dataset", {"x.csv": b"a,b\n1,2\n"})
        yield srv


@pytest.fixture
def mounted(mounter: Mounter, server: WandbServer) -> Mount:
    return mounter(f"wandb:{server.url}", "--failure-backoff", "0.5")  # type: ignore[arg-type]


def sh(*cmd: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=ENV, timeout=timeout)


def ok(*cmd: str | Path) -> str:
    proc = sh(*cmd)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}: {proc.stderr}"
    return proc.stdout


def project(m: Mount) -> Path:
    return project_path(m.path)


def project_path(root: Path) -> Path:
    return root / "acme" / "vision"


def read_uncached(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return b"".join(iter(lambda: f.read(1 << 20), b""))


def cached_blob_keys(cache_dir: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{cache_dir / 'cache.db'}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT key FROM Cache WHERE filename IS NOT NULL")}
    finally:
        conn.close()


def md5_key(data: bytes) -> str:
    return "md5/" + hashlib.md5(data).hexdigest()


# -- the namespace and the shell ------------------------------------------------------------------


def test_shell_tools_on_a_wandb_mount(mounted: Mount, server: WandbServer, tmp_path: Path) -> None:
    m = mounted
    assert sorted(os.listdir(m.path)) == ["acme", "team1"]  # the viewer's entity and its teams
    assert ok("ls", project(m)).split() == sorted(
        ["ds:best", "ds:latest", "ds:v0", "ds:v1", "model:latest", "model:v0", "other:latest", "other:v0"]
    )
    assert ok("readlink", project(m) / "ds:latest", project(m) / "ds:best").split() == ["ds:v1", "ds:v0"]
    v1 = project(m) / "ds:v1"
    found = ok("find", v1, "-type", "f").splitlines()
    assert sorted(os.path.relpath(p, v1) for p in found) == sorted(SAMPLE_FILES)
    sizes = ok("stat", "-c", "%s %A", v1 / "train/000002.txt").split()
    assert sizes == [str(len(SAMPLE_FILES["train/000002.txt"])), "-r--r--r--"]
    # listing and stat fetched no content and asked no file URL
    assert server.file_requests() == [] or all("wandb_manifest" in r.path for r in server.file_requests())
    assert server.operations("GetArtifactMembershipFileUrls") == []

    for rel, data in SAMPLE_FILES.items():
        assert ok("md5sum", v1 / rel).split()[0] == hashlib.md5(data).hexdigest(), rel
    ok("cp", "-r", v1, tmp_path / "copy")
    ok("diff", "-r", v1, tmp_path / "copy")
    assert (project(m) / "model:v0" / "model.pt").read_bytes() == BIG
    attrs = ok("getfattr", "-d", "-m", "-", project(m) / "ds:v1")
    assert "user.artifact.version=" in attrs and "user.artifact.description=" in attrs
    proc = sh("touch", v1 / "new")
    assert proc.returncode != 0 and "Read-only file system" in proc.stderr
    # file URLs were asked for in batches of what was read, never by paging the whole list
    url_calls = server.operations("GetArtifactMembershipFileUrls")
    assert url_calls and all(r.variables.get("names") for r in url_calls)
    assert len(url_calls) < len([d for d in SAMPLE_FILES.values() if d])  # batched: fewer calls than files


def test_remount_fetches_no_manifest_and_no_blob_again(mounter: Mounter, server: WandbServer) -> None:
    spec: Any = f"wandb:{server.url}"
    first = mounter(spec)
    v1 = project(first) / "ds:v1"
    assert (v1 / "README.md").read_bytes() == SAMPLE_FILES["README.md"]
    first.unmount()
    server.reset_log()
    second = mounter(spec, cache_dir=first.cache_dir)
    assert (project(second) / "ds:v1" / "README.md").read_bytes() == SAMPLE_FILES["README.md"]
    assert server.file_requests() == []  # neither the manifest nor the blob
    assert server.operations("GetArtifactMembershipFileUrls") == []


# -- faults: right bytes or EIO, bounded, nothing unverified cached, others still served ----------


RECOVERS = {
    "5xx": lambda f: f.status(503, times=2, match="model.pt"),
    "429": lambda f: f.status(429, times=1, match="model.pt", retry_after=1),
    "slow-first-byte": lambda f: f.slow_first_byte(1.0, times=1, match="model.pt"),
    "reset-mid-body": lambda f: f.reset_after(100_000, times=1, match="model.pt"),
    "truncated": lambda f: f.truncate_after(100_000, times=1, match="model.pt"),
    "expired-url": lambda f: f.expire(times=1, match="model.pt"),
}


@pytest.mark.parametrize("fault", RECOVERS.values(), ids=RECOVERS.keys())
@pytest.mark.allow_log(r"retrying in")
def test_transient_faults_end_in_the_right_bytes(mounted: Mount, server: WandbServer, fault: object) -> None:
    fault(server.faults)  # type: ignore[operator]
    start = time.monotonic()
    assert read_uncached(project(mounted) / "model:v0" / "model.pt") == BIG
    assert time.monotonic() - start < 30
    assert server.faults.pending() == 0  # the fault really happened
    assert md5_key(BIG) in cached_blob_keys(mounted.cache_dir)


@pytest.mark.allow_log(r"digest mismatch")
def test_wrong_bytes_are_eio_and_never_cached(mounted: Mount, server: WandbServer) -> None:
    server.faults.corrupt(times=None, match="model.pt")
    path = project(mounted) / "model:v0" / "model.pt"
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        read_uncached(path)
    assert info.value.errno == errno.EIO
    assert time.monotonic() - start < 30
    assert md5_key(BIG) not in cached_blob_keys(mounted.cache_dir)
    assert os.listdir(mounted.cache_dir / "tmp") == []
    # the daemon still serves other files meanwhile
    assert (project(mounted) / "other:v0" / "b" / "c.txt").read_bytes() == OTHER["b/c.txt"]
    assert "digest mismatch" in mounted.log()
    server.faults.clear()
    time.sleep(0.6)  # --failure-backoff 0.5
    assert read_uncached(path) == BIG


@pytest.mark.allow_log(r"digest mismatch")
def test_an_entry_of_no_bytes_with_another_digest_is_eio(mounter: Mounter, server: WandbServer) -> None:
    """A manifest entry of size 0 whose digest is not that of no bytes: opening it is EIO (the
    kernel would answer every read of a 0-byte file with nothing, unverified); a true empty
    file opens and reads empty."""
    manifest = {
        "version": 1,
        "storagePolicy": "wandb-storage-policy-v1",
        "contents": {
            "zerobad.bin": {"digest": b64md5(b"abc"), "size": 0},
            "empty.txt": {"digest": b64md5(b""), "size": 0},
        },
    }
    files = {"zerobad.bin": b"abc", "empty.txt": b""}
    server.add_artifact("acme", "vision", "zb", "dataset", files, manifest=manifest)
    m = mounter(f"wandb:{server.url}")  # type: ignore[arg-type]
    version = project(m) / "zb:v0"
    assert (version / "empty.txt").read_bytes() == b""
    assert os.stat(version / "zerobad.bin").st_size == 0
    with pytest.raises(OSError) as info:
        open(version / "zerobad.bin", "rb").close()
    assert info.value.errno == errno.EIO
    assert "digest mismatch" in m.log()


@pytest.mark.allow_log(r"gave up", r"retrying in")
def test_endless_5xx_is_eio_within_a_bounded_time(mounted: Mount, server: WandbServer) -> None:
    server.faults.status(500, times=None, match="model.pt")
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        read_uncached(project(mounted) / "model:v0" / "model.pt")
    assert info.value.errno == errno.EIO
    assert time.monotonic() - start < 200  # the HTTP retry budget (120 s) plus slack
    assert md5_key(BIG) not in cached_blob_keys(mounted.cache_dir)
    assert (project(mounted) / "other:v0" / "a.txt").read_bytes() == OTHER["a.txt"]


@pytest.mark.allow_log(
    r"serving the last answers", r"the registry answers again", r"Retry-After", r"lookup: ", r"getattr: ", r"gave up"
)
def test_cached_files_stay_readable_while_the_server_fails(mounter: Mounter, server: WandbServer) -> None:
    """A W&B outage (503 with a long Retry-After, as for maintenance) past --alias-ttl: the
    entity and project a job walks through are answered from what the mount knew, so files it
    has cached still open and read, and at once; a name never seen fails; when the server is
    back, new versions show again."""
    m = mounter(f"wandb:{server.url}", "--alias-ttl", "1")  # type: ignore[arg-type]
    path = project(m) / "other:v0" / "a.txt"
    assert read_uncached(path) == OTHER["a.txt"]
    listing = sorted(os.listdir(project(m)))
    server.faults.graphql_status(503, times=None, retry_after=1000)
    time.sleep(1.3)  # past --alias-ttl: acme/ and vision/ must be asked again
    start = time.monotonic()
    for _ in range(3):
        assert read_uncached(path) == OTHER["a.txt"]  # a fresh path walk each time
    assert sorted(os.listdir(project(m))) == listing
    assert time.monotonic() - start < 10
    with pytest.raises(OSError) as info:
        os.stat(m.path / "team1" / "shared")  # never looked up: nothing to serve
    assert info.value.errno == errno.EIO
    assert "serving the last answers" in m.log()
    server.faults.clear()
    server.add_artifact("acme", "vision", "fresh", "dataset", {"f.txt": b"new\n"})
    deadline = time.monotonic() + 30
    while "fresh:v0" not in os.listdir(project(m)):
        assert time.monotonic() < deadline, "the mount never saw the server again"
        time.sleep(0.2)
    assert (project(m) / "fresh:v0" / "f.txt").read_bytes() == b"new\n"
    assert m.proc.poll() is None


# -- mount-time failures and secrets --------------------------------------------------------------


def test_bad_credentials_fail_at_mount_time_in_one_line(
    server: WandbServer, wandb_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mnt = wandb_env / "mnt-bad"
    mnt.mkdir()
    wrong = "0" * 40
    monkeypatch.setenv("WANDB_API_KEY", wrong)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "artifactfs",
            "mount",
            f"wandb:{server.url}",
            str(mnt),
            "--cache-dir",
            str(wandb_env / "c"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "WANDB_API_KEY" in lines[0] or "wandb login" in lines[0]
    assert wrong not in proc.stderr and KEY not in proc.stderr
    assert not os.path.ismount(mnt)


def test_a_background_mount_signs_in_once(server: WandbServer, wandb_env: Path, require_fuse: None) -> None:
    """The mount command checks the key (one ``viewer`` call) and its daemon does not check it
    again: a file read by its whole path asks no ``viewer`` at all; the mount's root (the viewer's
    entities) asks it when it is listed."""
    mnt = wandb_env / "bg-mnt"
    mnt.mkdir()
    pid = 0
    try:
        cmd = [sys.executable, "-m", "artifactfs", "mount", f"wandb:{server.url}", str(mnt)]
        proc = subprocess.run([*cmd, "--cache-dir", str(wandb_env / "c")], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        pid = int(proc.stderr.rsplit("(pid ", 1)[1].split(")")[0])
        assert len(server.operations("Viewer")) == 1
        assert (project_path(mnt) / "other:v0" / "a.txt").read_bytes() == OTHER["a.txt"]
        assert len(server.operations("Viewer")) == 1
        assert sorted(os.listdir(mnt)) == ["acme", "team1"]
        assert len(server.operations("Viewer")) == 2
    finally:
        force_unmount(mnt)
        if pid:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    assert not is_mounted(mnt)


@pytest.mark.allow_log(r"digest mismatch")
def test_the_key_appears_nowhere(mounted: Mount, server: WandbServer) -> None:
    m = mounted
    # exercise the daemon: listings, reads, a fault that logs, an unknown name, xattrs
    server.faults.corrupt(times=2, match="a.txt")
    with pytest.raises(OSError):
        read_uncached(project(m) / "other:v0" / "a.txt")
    sh("ls", "-lR", m.path)
    sh("cat", project(m) / "nosuch:v9" / "x")
    for path in (m.path, project(m) / "ds:v1", project(m) / "ds:v1" / "README.md"):
        attrs = sh("getfattr", "-d", "-m", "-", "--absolute-names", path)
        assert KEY not in attrs.stdout and KEY not in attrs.stderr
    assert KEY not in m.log()  # debug-level log (the mounter runs the daemon at DEBUG)
    with open(f"/proc/{m.proc.pid}/cmdline", "rb") as f:
        assert KEY.encode() not in f.read()
    ps = sh("ps", "-eo", "pid,args", "ww")
    assert KEY not in ps.stdout
    with open(f"/proc/{m.proc.pid}/comm", "rb") as f:
        assert KEY.encode() not in f.read()


def test_a_linked_membership_is_its_own_directory(mounter: Mounter, server: WandbServer) -> None:
    """On W&B a link shares its source's artifact id; on the mount it is still a directory of its
    own, with its own version attributes and the source's bytes."""
    from artifactfs.names import parse_ref
    from artifactfs.registry import open_registry

    registry = open_registry(f"wandb:{server.url}")
    try:
        registry.link(parse_ref("acme/vision/ds:v1"), "acme/vision/golden", ["prod"])
    finally:
        registry.close()
    m = mounter(f"wandb:{server.url}")  # type: ignore[arg-type]
    golden, source = project(m) / "golden:v0", project(m) / "ds:v1"
    assert os.readlink(project(m) / "golden:prod") == "golden:v0"
    assert os.getxattr(golden, "user.artifact.id") == os.getxattr(source, "user.artifact.id")
    assert os.getxattr(golden, "user.artifact.version") == b"v0"
    assert os.getxattr(source, "user.artifact.version") == b"v1"
    assert os.getxattr(golden, "user.artifact.source_version") == b"v1"
    for rel, data in SAMPLE_FILES.items():
        assert (golden / rel).read_bytes() == data == (source / rel).read_bytes()


def test_a_moved_alias_shows_after_the_alias_ttl(mounter: Mounter, server: WandbServer) -> None:
    """SEMANTICS, W&B registries: a moved alias shows on a running mount after at most
    --alias-ttl; until then the kept answer is served (no GraphQL call per readlink)."""
    ttl = 5.0
    t0 = time.monotonic()  # the mount asks for the alias after this: it keeps it until t0 + ttl at least
    m = mounter(f"wandb:{server.url}", "--alias-ttl", str(ttl))  # type: ignore[arg-type]
    best = project(m) / "ds:best"
    assert os.readlink(best) == "ds:v0"
    server.set_alias("acme", "vision", "ds", "best", 1)
    kept = os.readlink(best)
    if time.monotonic() < t0 + ttl:  # (a machine too loaded to get here within the TTL cannot tell)
        assert kept == "ds:v0"  # within the TTL: the kept answer
    deadline = time.monotonic() + 120
    while os.readlink(best) != "ds:v1":
        assert time.monotonic() < deadline, "the moved alias never showed"
        time.sleep(0.2)
    assert (best / "README.md").read_bytes() == SAMPLE_FILES["README.md"]
