"""Access (issue 9, item 5): who can read what.

* The cache directory and everything in it are private (directories 0700, files 0600): it holds
  verified copies of whatever the mounting user may read.  A registry follows the umask instead,
  since teams share registries.
* A mount is private unless ``--allow-other`` is given; with it the kernel applies the 0444/0555
  modes (``default_permissions``).  Another user is played by ``nobody`` (``setpriv``, as root).
* Nothing planted in the cache directory is followed (store-level cases: tests/test_crash.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLE_FILES, LiveEnv, Mounter

pytestmark = pytest.mark.fuse

NOBODY = 65534
ENV = LiveEnv(LC_ALL="C.UTF-8", LANG="C.UTF-8")  # the test's environment when used


def as_nobody(cmd: str, directory: Path, rel: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``cmd DIRECTORY/REL`` as ``nobody``.  The directory is handed over as an open
    descriptor (``/proc/self/fd/N``), so the test's own 0700 parents (pytest's base temp, which
    concurrent pytest sessions reset to 0700) are not in the way: only the mount's and the cache
    directory's own permissions are tested."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the other-user tests need root and setpriv")
        pytest.skip("needs root and setpriv to play another user")
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        target = f"/proc/self/fd/{fd}" + (f"/{rel}" if rel else "")
        return subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", cmd, target],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=30,
            pass_fds=(fd,),
        )
    finally:
        os.close(fd)


def modes(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            full = Path(dirpath) / name
            out[str(full.relative_to(root))] = stat.S_IMODE(full.lstat().st_mode)
    return out


def test_cache_dir_and_its_files_are_private(mounter: Mounter, sample_registry: tuple[Path, Path]) -> None:
    reg, _ = sample_registry
    old = os.umask(0o022)  # a permissive umask: the cache must not follow it
    try:
        m = mounter(reg, "--local-blobs", "copy")
    finally:
        os.umask(old)
    v1 = m.path / "acme" / "vision" / "ds:v1"
    for rel, data in SAMPLE_FILES.items():
        assert (v1 / rel).read_bytes() == data
    assert stat.S_IMODE(m.cache_dir.stat().st_mode) == 0o700
    found = modes(m.cache_dir)
    assert any(name.endswith(".val") for name in found) and "cache.db" in found
    for name, mode in found.items():
        kind = (m.cache_dir / name).lstat().st_mode
        if stat.S_ISDIR(kind):
            assert mode == 0o700, (name, oct(mode))
        else:
            assert mode & 0o077 == 0, (name, oct(mode))  # cache.db, -wal, -shm, blobs: 0600


def test_a_registry_follows_the_umask(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"shared\n")
    for umask, readable in ((0o022, True), (0o077, False)):
        reg = tmp_path / f"reg{umask:o}"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "artifactfs",
                "log",
                str(src),
                "acme/p/ds",
                "--type",
                "dataset",
                "--registry",
                str(reg),
            ],
            capture_output=True,
            text=True,
            preexec_fn=lambda u=umask: os.umask(u),  # type: ignore[misc]
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        found = modes(reg)
        blob = next(n for n in found if n.startswith("objects/md5/") and (reg / n).is_file())
        assert stat.S_IMODE(reg.stat().st_mode) & 0o055 == (0o055 if readable else 0)
        assert found["objects"] & 0o055 == (0o055 if readable else 0)
        assert found["registry.sqlite"] & 0o044 == (0o044 if readable else 0)
        if readable:
            assert found[blob] & 0o044 == 0o044
        assert all(mode & 0o002 == 0 for mode in found.values())


def test_directories_made_for_the_cache_and_the_log_are_never_world_writable(tmp_path: Path) -> None:
    """Under ``umask 000`` the parents made for ``--cache-dir`` and ``--log-file`` are 0755 (not
    0777: another user could move the cache or the log away under them); the cache is 0700."""
    code = (
        "from artifactfs.fsutil import claim_cache_dir, make_dirs\n"
        f"claim_cache_dir({str(tmp_path / 'c' / 'sub' / 'cache')!r})\n"
        f"make_dirs({str(tmp_path / 'l' / 'd')!r})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=lambda: os.umask(0), timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    mode = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("c", "c/sub", "c/sub/cache", "l", "l/d")}
    assert mode == {"c": 0o755, "c/sub": 0o755, "c/sub/cache": 0o700, "l": 0o755, "l/d": 0o700}


@pytest.mark.parametrize("allow_other", [False, True], ids=["private", "--allow-other"])
def test_another_user_and_a_mount(mounter: Mounter, sample_registry: tuple[Path, Path], allow_other: bool) -> None:
    reg, _ = sample_registry
    m = mounter(reg, *(["--allow-other"] if allow_other else []))
    with open("/proc/mounts") as f:
        options = next(line.split()[3].split(",") for line in f if line.split()[1] == str(m.path))
    assert "default_permissions" in options
    assert ("allow_other" in options) is allow_other
    rel = "acme/vision/ds:v1/README.md"
    assert (m.path / rel).read_bytes() == SAMPLE_FILES["README.md"]  # the owner, as always
    cat = as_nobody("cat", m.path, rel)
    ls = as_nobody("ls", m.path, "acme/vision")
    if not allow_other:
        assert cat.returncode != 0 and "Permission denied" in cat.stderr, cat
        assert ls.returncode != 0 and "Permission denied" in ls.stderr, ls
    else:
        assert cat.returncode == 0 and cat.stdout == SAMPLE_FILES["README.md"].decode(), cat
        assert ls.returncode == 0 and "ds:v1" in ls.stdout.split(), ls
        touch = as_nobody("touch", m.path, "acme/vision/ds:v1/new")
        assert touch.returncode != 0
    # the cache directory stays closed to the other user either way
    listing = as_nobody("ls", m.cache_dir)
    assert listing.returncode != 0 and "Permission denied" in listing.stderr, listing


@pytest.mark.allow_log(r"cannot be opened safely .*Too many levels of symbolic links")
def test_symlink_planted_in_the_cache_is_not_followed_by_the_daemon(
    mounter: Mounter, sample_registry: tuple[Path, Path], tmp_path: Path
) -> None:
    """A cache file replaced by a symlink to a file elsewhere (right size, other bytes): the
    remount never reads through it; it removes the link, fetches again and serves the right bytes."""
    reg, _ = sample_registry
    first = mounter(reg, "--local-blobs", "copy")
    path = "acme/vision/model:v0/model.pt"
    data = (first.path / path).read_bytes()
    first.unmount()
    conn = sqlite3.connect(f"file:{first.cache_dir / 'cache.db'}?mode=ro", uri=True)
    try:
        (filename,) = conn.execute(
            "SELECT filename FROM Cache WHERE key = ?", ("md5/" + hashlib.md5(data).hexdigest(),)
        ).fetchone()
    finally:
        conn.close()
    val = first.cache_dir / filename
    elsewhere = tmp_path / "elsewhere.bin"
    elsewhere.write_bytes(os.urandom(len(data)))
    before = elsewhere.read_bytes()
    val.unlink()
    val.symlink_to(elsewhere)
    again = mounter(reg, "--local-blobs", "copy", cache_dir=first.cache_dir)
    assert (again.path / path).read_bytes() == data
    assert again.stats()["fetches"] == 1
    assert not val.is_symlink()
    assert elsewhere.read_bytes() == before
    assert "cannot be opened safely" in again.log()


def test_symlink_planted_as_the_mount_log_is_not_followed(sample_registry: tuple[Path, Path], tmp_path: Path) -> None:
    """The background mount appends the daemon's output to CACHE_DIR/mount.log: a symlink there
    (to a file the daemon, often root, could write) fails the mount in one line instead."""
    reg, _ = sample_registry
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched\n")
    (cache / "mount.log").symlink_to(victim)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "artifactfs", "mount", str(reg), str(mnt), "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    try:
        assert proc.returncode == 1, proc
        assert proc.stderr.count("artifactfs: error:") == 1 and "symbolic links" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert victim.read_bytes() == b"untouched\n"
        assert not os.path.ismount(mnt)
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
