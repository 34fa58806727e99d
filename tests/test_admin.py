"""The operator's view of real mounts: ``status``, ``stats``, ``--metrics-port``, the mount(8)
helper and fstab, and the systemd unit in docs/.

Each test keeps its daemons' records and sockets in a runtime directory of its own
(``$ARTIFACTFS_RUNTIME_DIR``), so mounts of other tests running at the same time never show up.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PY, Mount, Mounter, force_unmount, is_mounted, run_cli

from artifactfs.mount_helper import parse_argv
from artifactfs.options import MountConfig

pytestmark = pytest.mark.fuse

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "docs" / "systemd" / "artifactfs.service"
HELPER_LINK = Path("/sbin/mount.fuse.artifactfs")


def status() -> list[dict[str, object]]:
    return json.loads(run_cli("status", "--json").stdout)  # type: ignore[no-any-return]


def row_of(path: Path) -> dict[str, object] | None:
    rows = [r for r in status() if r["mountpoint"] == str(path)]
    assert len(rows) <= 1
    return rows[0] if rows else None


def wait_gone(pid: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            return
        time.sleep(0.05)
    raise AssertionError(f"daemon {pid} still runs")


# -- status -----------------------------------------------------------------------------------------


def test_status_lists_registry_cache_pid_and_uptime(
    mounter: Mounter, sample_registry: tuple[Path, Path], runtime: Path
) -> None:
    reg, _ = sample_registry
    m = mounter(reg)
    row = row_of(m.path)
    assert row is not None, status()
    assert row["registry"] == str(reg)
    assert row["cache_dir"] == str(m.cache_dir)
    assert row["pid"] == m.proc.pid
    assert isinstance(row["uptime_seconds"], float) and 0 <= row["uptime_seconds"] < 120
    assert row["uid"] == os.getuid()
    assert row["state"] == "serving"
    # Its log is the file the daemon writes to (the Mounter points its stderr there).
    assert row["log_file"] == str(m.log_file)
    table = run_cli("status").stdout.splitlines()
    assert table[0].split() == ["MOUNTPOINT", "REGISTRY", "CACHE", "DIR", "PID", "UPTIME", "STATE"]
    line = next(x for x in table if x.startswith(str(m.path) + " "))
    assert str(reg) in line and str(m.cache_dir) in line and f" {m.proc.pid} " in line and line.endswith("serving")
    records = list(runtime.glob("*.json"))
    assert len(records) == 1 and (runtime / (records[0].stem + ".sock")).exists()
    assert oct(os.stat(runtime / (records[0].stem + ".sock")).st_mode & 0o777) == "0o600"

    m.unmount()
    assert row_of(m.path) is None
    assert list(runtime.iterdir()) == []  # the daemon removed its record and socket


def test_status_tells_a_killed_daemon_and_forgets_it_once_unmounted(
    mounter: Mounter, sample_registry: tuple[Path, Path], runtime: Path
) -> None:
    reg, _ = sample_registry
    m = mounter(reg)
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait()
    row = row_of(m.path)  # the dead mount stays in /proc/mounts until it is unmounted
    assert row is not None and row["pid"] == m.proc.pid
    assert row["state"] == f"daemon {m.proc.pid} is gone: run 'artifactfs umount {m.path}'"
    proc = run_cli("stats", str(m.path), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"artifactfs: error: {m.path}: its daemon (pid {m.proc.pid}) is gone: unmount it with "
        f"'artifactfs umount {m.path}' and mount again"
    )
    again = run_cli("mount", str(reg), str(m.path), "--cache-dir", str(m.cache_dir), check=False)
    assert (again.returncode, again.stderr) == (
        1,
        f"artifactfs: error: {m.path} is the dead mount of a daemon that is gone: run 'artifactfs umount {m.path}', "
        "then mount again\n",
    )
    run_cli("umount", str(m.path))
    assert row_of(m.path) is None
    assert list(runtime.glob("*.json")) == []  # status removed the dead daemon's record


# -- stats and metrics ------------------------------------------------------------------------------


def read_file(m: Mount, rel: str) -> bytes:
    return (m.path / "acme" / "vision" / rel).read_bytes()


def test_stats_json_table_and_watch(mounter: Mounter, sample_registry: tuple[Path, Path], runtime: Path) -> None:
    reg, _ = sample_registry
    m = mounter(reg, "--local-blobs", "copy")
    data = read_file(m, "model:v0/model.pt")
    snap = json.loads(run_cli("stats", str(m.path), "--json").stdout)
    c = snap["counters"]
    assert snap["pid"] == m.proc.pid and snap["registry"] == str(reg) and snap["mountpoint"] == str(m.path)
    assert c["fetches"] == 1 and c["fetched_bytes"] == len(data) and c["cache_misses"] == 1
    assert c["served_bytes"] == len(data)
    assert c["cache_hits"] == 0 and c["digest_mismatches"] == 0 and c["fetches_in_flight"] == 0
    assert c["cache_bytes"] >= len(data)
    assert snap["latency"]["local"]["count"] == 1
    # The same counters as the root's xattr (another way in, through FUSE).
    assert m.stats()["fetched_bytes"] == len(data)

    # A second open of the same file, in a new process: the kernel keeps the pages, so nothing
    # reaches the daemon; a different file with new content is one more fetch.
    read_file(m, "ds:v1/train/000002.txt")
    c2 = json.loads(run_cli("stats", str(m.path / "acme"), "--json").stdout)["counters"]
    assert c2["fetches"] == 2 and c2["served_bytes"] == len(data) + 4000

    table = run_cli("stats", str(m.path)).stdout
    lines = dict(line.split(None, 1) if "  " not in line else line.split("  ", 1) for line in table.splitlines())
    assert lines["fetches"].strip() == "2 (296.9 KiB)"
    assert lines["verify failures"].strip() == "0"
    assert lines["latency local"].strip().startswith("2 reads waited, mean ")

    first, second = watch_and_stop(m, signal.SIGINT)
    assert second["uptime_seconds"] > first["uptime_seconds"]
    assert second["counters"]["fetches"] == 2
    # SIGTERM (a supervisor) stops it the same way; and SIGINT still does when it was started
    # ignoring SIGINT, as a shell's background job is.
    watch_and_stop(m, signal.SIGTERM)
    watch_and_stop(m, signal.SIGINT, ignoring_sigint=True)


def watch_and_stop(m: Mount, sig: int, *, ignoring_sigint: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start ``stats --watch 0.2 --json``, read two snapshots, send ``sig``: it exits 0 (the
    bound is generous: a loaded machine must not fail this; a watch deaf to ``sig`` still does)."""

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    with subprocess.Popen(
        [PY, "-m", "artifactfs", "stats", str(m.path), "--watch", "0.2", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ignore_sigint if ignoring_sigint else None,
    ) as watch:
        try:
            assert watch.stdout is not None
            first = json.loads(watch.stdout.readline())
            second = json.loads(watch.stdout.readline())
        finally:
            watch.send_signal(sig)
            try:
                _, err = watch.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                watch.kill()
                watch.communicate()
                raise AssertionError(f"stats --watch did not exit on signal {sig}") from None
        assert watch.returncode == 0, err
        assert err == ""
    return first, second


def test_stats_of_paths_that_are_not_mounts(tmp_path: Path, runtime: Path) -> None:
    proc = run_cli("stats", str(tmp_path), check=False)
    assert proc.returncode == 1
    assert (
        proc.stderr
        == f"artifactfs: error: {tmp_path} is not on an artifactfs mount (list them with 'artifactfs status')\n"
    )


@pytest.mark.skipif("xattrs" not in MountConfig.__dataclass_fields__, reason="no --xattrs option")
def test_stats_without_xattrs(mounter: Mounter, sample_registry: tuple[Path, Path], runtime: Path) -> None:
    reg, _ = sample_registry
    m = mounter(reg, "--xattrs", "off")
    read_file(m, "ds:v1/README.md")
    snap = json.loads(run_cli("stats", str(m.path), "--json").stdout)
    assert snap["counters"]["served_bytes"] == len(b"# sample\n")


def prometheus_samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_port_serves_prometheus_on_localhost(
    mounter: Mounter, sample_registry: tuple[Path, Path], runtime: Path
) -> None:
    reg, _ = sample_registry
    m = mounter(reg, "--metrics-port", "0")
    row = row_of(m.path)
    assert row is not None and isinstance(row["metrics_port"], int)
    port = row["metrics_port"]
    data = read_file(m, "model:v0/model.pt")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = resp.read().decode()
    samples = prometheus_samples(text)
    label = f'{{mountpoint="{m.path}"}}'
    assert samples[f"artifactfs_served_bytes_total{label}"] == len(data)
    assert samples[f"artifactfs_verified_in_place_total{label}"] == 1
    assert samples[f"artifactfs_verify_failures_total{label}"] == 0
    assert samples[f"artifactfs_fetches_in_flight{label}"] == 0
    hist = f'mountpoint="{m.path}",backend="local"'
    assert samples[f"artifactfs_fetch_seconds_count{{{hist}}}"] == 1
    assert samples[f'artifactfs_fetch_seconds_bucket{{{hist},le="+Inf"}}'] == 1
    assert "# TYPE artifactfs_fetch_seconds histogram" in text
    # The control socket gives the same text.
    assert "artifactfs_served_bytes_total" in run_cli("stats", str(m.path), "--json").stdout.replace(
        "served_bytes", "artifactfs_served_bytes_total"
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60)
    assert info.value.code == 404
    info.value.close()  # an HTTPError holds the response (and its socket) open
    # Only on 127.0.0.1.
    listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    ours = [p for p in listening if int(p[1].split(":")[1], 16) == port and p[3] == "0A"]
    assert ours and all(p[1].split(":")[0] == "0100007F" for p in ours)


def test_metrics_port_in_use_fails_the_mount_in_one_line(
    sample_registry: tuple[Path, Path], tmp_path: Path, runtime: Path, require_fuse: None
) -> None:
    reg, _ = sample_registry
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = run_cli("mount", str(reg), str(mnt), "--cache-dir", str(tmp_path / "c"), "--metrics-port", str(port),
                       check=False)  # fmt: skip
    try:
        assert proc.returncode == 1
        assert proc.stderr == (
            f"artifactfs: error: --metrics-port {port}: cannot listen on 127.0.0.1:{port}: Address already in use "
            "(choose another port, or 0 for any free one)\n"
        )
        assert not is_mounted(mnt)
        assert list(runtime.iterdir()) == []
    finally:
        force_unmount(mnt)


# -- mount(8) helper and fstab ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/r", "/m"], (["/r", "/m"], "", False, False)),
        (
            ["/r", "/m", "-o", "cache_dir=/c,ro", "-t", "fuse.artifactfs"],
            (["/r", "/m"], "cache_dir=/c,ro", False, False),
        ),
        (["-sfnv", "/r", "-ocache_size=1G", "/m"], (["/r", "/m"], "cache_size=1G", True, True)),
        (["/r", "/m", "-o", "a", "-o", "b"], (["/r", "/m"], "a,b", False, False)),
    ],
)
def test_helper_reads_mount8_command_lines(argv: list[str], expected: tuple[object, ...]) -> None:
    assert parse_argv(argv) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/r", "/m", "-t", "nfs"], "this helper mounts type fuse.artifactfs, not nfs"),
        (["/r", "/m", "-N", "1234"], "mounting into another mount namespace (-N) is not supported"),
        (["/r", "/m", "-o"], "option -o needs a value"),
        (["/r", "/m", "-x"], "unknown flag -x"),
    ],
)
def test_helper_refuses_what_it_cannot_do(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_argv(argv)
    assert str(info.value) == message


def helper(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "mount.fuse.artifactfs"
    assert exe.exists(), "pip install -e . installs mount.fuse.artifactfs beside python"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_helper_mounts_with_o_options_and_refuses_bad_ones(
    sample_registry: tuple[Path, Path], tmp_path: Path, runtime: Path, require_fuse: None
) -> None:
    reg, _ = sample_registry
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cache = tmp_path / "cache"
    bad = helper(str(reg), str(mnt), "-o", f"cache_dir={cache},cache_size=lots")
    assert bad.returncode == 32
    assert bad.stderr == (
        "mount.fuse.artifactfs: error: mount option cache_size: invalid size 'lots' (examples: 10G, 512M, 1000000)\n"
    )
    unknown = helper(str(reg), str(mnt), "-o", "cache_dri=/x")
    assert (unknown.returncode, unknown.stderr) == (
        32,
        "mount.fuse.artifactfs: error: unknown mount option 'cache_dri'\n",
    )
    assert not cache.exists() and not is_mounted(mnt)

    ok = helper(str(reg), str(mnt), "-o", f"rw,cache_dir={cache},cache_size=1G,alias_ttl=5,x-systemd.automount,_netdev")
    try:
        assert ok.returncode == 0, ok.stderr
        assert (mnt / "acme" / "vision" / "ds:v1" / "README.md").read_bytes() == b"# sample\n"
        row = row_of(mnt)
        assert row is not None and row["cache_dir"] == str(cache) and row["registry"] == str(reg)
        assert row["log_file"] == str(cache / "mount.log")
        # The same config as `artifactfs mount ... --cache-size 1G --alias-ttl 5` would make.
        flags = row["options"]
        assert isinstance(flags, list) and "--cache-size" in flags and "--alias-ttl" in flags, flags
        assert flags[flags.index("--cache-size") + 1] == str(1 << 30)
        assert flags[flags.index("--alias-ttl") + 1] == "5.0"
        # The daemon logs at the mount's level (INFO by default), as `artifactfs mount`'s does.
        log = (cache / "mount.log").read_text()
        assert f"mounted {reg} on {mnt}" in log and "DEBUG" not in log, log
    finally:
        pid = row_of(mnt)
        force_unmount(mnt)
        if pid is not None:
            wait_gone(int(pid["pid"]))  # type: ignore[call-overload]


@pytest.fixture
def installed_helper() -> Iterator[None]:
    """mount(8) finds helpers only in /sbin: link ours there for the test when it is not (root
    only; scripts/setup links it for good)."""
    if HELPER_LINK.exists():
        yield
        return
    if os.geteuid() != 0:
        pytest.skip("mount -t fuse.artifactfs needs /sbin/mount.fuse.artifactfs (linking it needs root)")
    HELPER_LINK.symlink_to(Path(sys.executable).parent / "mount.fuse.artifactfs")
    try:
        yield
    finally:
        HELPER_LINK.unlink()


def test_fstab_line_mounts_with_mount8_and_umount8_stops_the_daemon(
    sample_registry: tuple[Path, Path], tmp_path: Path, runtime: Path, require_fuse: None, installed_helper: None
) -> None:
    reg, _ = sample_registry
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cache = tmp_path / "cache"
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# an fstab of our own: mount -T FILE reads it instead of /etc/fstab\n"
        f"{reg}  {mnt}  fuse.artifactfs  cache_dir={cache},cache_size=2G,allow_other,_netdev,nofail  0 0\n"
    )
    proc = subprocess.run(["mount", "-T", str(fstab), str(mnt)], capture_output=True, text=True, timeout=120)
    row = None
    try:
        assert proc.returncode == 0, proc.stderr
        assert is_mounted(mnt)
        assert (mnt / "acme" / "vision" / "ds:best" / "README.md").read_bytes() == b"# v0\n"
        opts = next(line.split()[3] for line in Path("/proc/mounts").read_text().splitlines() if f" {mnt} " in line)
        assert "allow_other" in opts.split(",") and "ro" in opts.split(",")
        row = row_of(mnt)
        assert row is not None and row["cache_dir"] == str(cache) and row["state"] == "serving"
        assert subprocess.run(["umount", str(mnt)], capture_output=True, timeout=60).returncode == 0
        wait_gone(int(row["pid"]))  # type: ignore[call-overload]
        assert not is_mounted(mnt) and row_of(mnt) is None
    finally:
        force_unmount(mnt)


# -- systemd ----------------------------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file: sections of (key, value) in order (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path}: {raw!r} outside a section"
        key, eq, value = line.partition("=")
        assert eq, f"{path}: {raw!r} is not KEY=VALUE"
        current.append((key.strip(), value.strip()))
    return sections


def test_systemd_unit_is_well_formed() -> None:
    unit = parse_unit(UNIT)
    assert set(unit) == {"Unit", "Service", "Install"}
    service = dict(unit["Service"])
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/artifactfs") and argv[1] == "mount" and "--foreground" in argv
    # Every option of ExecStart is one `artifactfs mount` takes, with a valid value.
    from artifactfs.cli import build_parser

    args = build_parser().parse_args(argv[1:])
    config = MountConfig.from_namespace(args)
    assert config.foreground and config.registry == "wandb" and config.metrics_port == 9464
    assert "WANDB_API_KEY" not in service["ExecStart"]
    assert ("WantedBy", "multi-user.target") in unit["Install"]
    if shutil.which("systemd-analyze"):
        local = UNIT.read_text().replace(argv[0], str(Path(sys.executable).parent / "artifactfs"))
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / UNIT.name
            copy.write_text(local)
            check = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_systemd_exec_start_notifies_readiness_and_stops_on_sigterm(
    sample_registry: tuple[Path, Path], tmp_path: Path, runtime: Path, require_fuse: None
) -> None:
    """Run the unit's ExecStart as systemd would (foreground, $NOTIFY_SOCKET, SIGTERM to stop),
    on the sample registry instead of W&B."""
    reg, _ = sample_registry
    service = dict(parse_unit(UNIT)["Service"])
    argv = shlex.split(service["ExecStart"])
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    swap = {
        "wandb": str(reg),
        "/mnt/artifacts": str(mnt),
        "/var/cache/artifactfs": str(tmp_path / "cache"),
        "9464": "0",
    }
    cmd = [PY, "-m", "artifactfs", *(swap.get(a, a) for a in argv[1:])]
    notify_path = runtime / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(60)
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            try:
                message = notify.recv(4096).decode()
                assert message.splitlines()[0] == "READY=1"
                assert f"MAINPID={proc.pid}" in message.splitlines()
                # Ready means answering: no wait, no retry.
                assert (mnt / "acme" / "vision" / "ds:v1" / "README.md").read_bytes() == b"# sample\n"
                proc.send_signal(signal.SIGTERM)
                assert notify.recv(4096) == b"STOPPING=1"
                _, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, err
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
                force_unmount(mnt)
    assert not is_mounted(mnt)
    # Foreground: the log goes to stderr (the journal, under systemd).
    assert f"mounted {reg} on {mnt}" in err


def test_a_runtime_dir_others_can_write_is_refused(
    sample_registry: tuple[Path, Path], tmp_path: Path, runtime: Path, require_fuse: None
) -> None:
    reg, _ = sample_registry
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    runtime.chmod(0o777)
    proc = run_cli("mount", str(reg), str(mnt), "--cache-dir", str(tmp_path / "c"), check=False)
    try:
        assert (proc.returncode, proc.stderr) == (
            1,
            f"artifactfs: error: runtime directory {runtime} is not this user's own (owner uid {os.getuid()}, "
            "mode 777): remove it, or set $ARTIFACTFS_RUNTIME_DIR to a directory only you can write\n",
        )
        assert not is_mounted(mnt)
    finally:
        force_unmount(mnt)


def test_stats_of_a_mount_without_a_readable_record_come_from_its_xattr(
    mounter: Mounter, sample_registry: tuple[Path, Path], runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, _ = sample_registry
    m = mounter(reg)
    data = read_file(m, "model:v0/model.pt")
    elsewhere = Path(tempfile.mkdtemp(prefix="afs-other-"))
    try:
        monkeypatch.setenv("ARTIFACTFS_RUNTIME_DIR", str(elsewhere))  # the CLI looks where there is no record
        snap = json.loads(run_cli("stats", str(m.path), "--json").stdout)
        assert snap["source"] == "xattr" and snap["pid"] is None
        assert snap["counters"]["served_bytes"] == len(data) and snap["counters"]["cache_misses"] == 1
        assert "retries" not in snap["counters"]  # the daemon's, which the xattr does not carry
        table = run_cli("stats", str(m.path)).stdout.splitlines()
        assert table[0] == f"mount              {m.path} (counters from its xattr: its daemon's record is not here)"
        assert "retries            -" in table
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_a_dead_daemon_not_yet_reaped_is_not_alive() -> None:
    """Right after ``kill -9`` the daemon is a zombie until its parent reaps it: it keeps its PID
    and start time, and must not be shown as serving meanwhile."""
    from artifactfs.admin import MountRecord, process_start

    child = subprocess.Popen(["sleep", "60"])
    try:
        started = process_start(child.pid)
        assert started is not None
        record = MountRecord("/m", "r", "/c", child.pid, started, 0.0, os.getuid(), None, None, "/s")
        assert record.alive()
        child.kill()
        deadline = time.monotonic() + 30
        while Path(f"/proc/{child.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert process_start(child.pid) is None and not record.alive()  # a zombie, not reaped yet
    finally:
        child.kill()
        child.wait()
