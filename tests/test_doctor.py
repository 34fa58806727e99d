"""``artifactfs doctor``: every check says what it found, and every failure what to do."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli
from wandb_server import WandbServer

from artifactfs import doctor

KEY = "d0c70rd0c70rd0c70rd0c70rd0c70rd0c70rd0c7"


def lines(out: str) -> dict[str, tuple[str, str, str | None]]:
    """check name -> (status, what was found, fix or None), from doctor's output."""
    found: dict[str, tuple[str, str, str | None]] = {}
    last = ""
    for line in out.splitlines():
        status = line[:4].strip()
        rest = line[6:]
        if not status:
            assert rest.strip().startswith("fix: "), line
            s, f, _ = found[last]
            found[last] = (s, f, rest.strip()[5:])
            continue
        name, _, text = rest.partition("  ")
        last = name.strip()
        found[last] = (status, text.strip(), None)
    return found


def doctor_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["NETRC"] = str(tmp_path / "no-netrc")
    env.update(extra)
    return env


def test_a_ready_machine_passes(sample_registry: tuple[Path, Path], tmp_path: Path, require_fuse: None) -> None:
    reg, _ = sample_registry
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = run_cli("doctor", "--registry", str(reg), "--cache-dir", str(tmp_path / "cache"), "--mountpoint", str(mnt))
    checks = lines(proc.stdout)
    assert set(checks) == {
        "/dev/fuse", "fusermount3", "kernel FUSE", "user_allow_other", "mount helper", "registry", "cache dir",
        "cache space", "mount point",
    }  # fmt: skip
    assert all(status in ("ok", "warn") for status, _, _ in checks.values()), proc.stdout
    assert all(fix for status, _, fix in checks.values() if status == "warn"), proc.stdout
    assert checks["registry"][1] == f"local registry {reg} (1 entities)"
    assert checks["cache dir"][1] == f"{tmp_path / 'cache'} will be created (mode 0700)"
    assert not (tmp_path / "cache").exists()  # doctor changes nothing


def test_failures_name_the_cause_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("mine")
    proc = run_cli(
        "doctor", "--registry", str(tmp_path / "none"), "--cache-dir", str(tmp_path / "busy"), "--mountpoint",
        str(tmp_path / "nomnt"), check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr == "3 checks failed\n"
    checks = lines(proc.stdout)
    assert checks["registry"] == (
        "FAIL",
        f"no registry at {tmp_path / 'none'}",
        "log a first artifact into it (artifactfs log DIR ENTITY/PROJECT/NAME --type dataset) or name another one "
        "with --registry or $ARTIFACTFS_REGISTRY",
    )
    assert checks["cache dir"] == (
        "FAIL",
        f"{tmp_path / 'busy'} holds other files: a mount refuses it (it would evict them)",
        "choose an empty or new directory for --cache-dir",
    )
    assert checks["mount point"][0] == "FAIL" and checks["mount point"][2]
    assert (tmp_path / "busy" / "thesis.tex").read_text() == "mine"


def test_a_fresh_machine_passes_and_a_named_registry_that_is_missing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, require_fuse: None
) -> None:
    # A new user's machine (the suite's fresh HOME): no registry, no cache, nothing named.
    monkeypatch.delenv("ARTIFACTFS_REGISTRY", raising=False)
    monkeypatch.delenv("ARTIFACTFS_CACHE_DIR", raising=False)
    home = Path(os.environ["HOME"])
    default = home / ".local" / "share" / "artifactfs" / "registry"
    proc = run_cli("doctor", env=doctor_env(tmp_path))
    checks = lines(proc.stdout)
    assert checks["registry"] == (
        "ok",
        f"no registry yet at {default} (the default): the first 'artifactfs log' creates it",
        None,
    )
    assert checks["cache dir"][:2] == ("ok", f"{home / '.cache' / 'artifactfs'} will be created (mode 0700)")
    assert os.listdir(home) == []  # doctor changes nothing
    # The same path named in $ARTIFACTFS_REGISTRY, or another one named with --registry: the
    # user expects a registry there, and there is none.
    for missing, env, args in (
        (default, doctor_env(tmp_path, ARTIFACTFS_REGISTRY=str(default)), ()),
        (tmp_path / "typo", doctor_env(tmp_path), ("--registry", str(tmp_path / "typo"))),
    ):
        proc = run_cli("doctor", *args, env=env, check=False)
        assert proc.returncode == 1 and proc.stderr == "1 check failed\n", proc.stdout
        assert lines(proc.stdout)["registry"][:2] == ("FAIL", f"no registry at {missing}")


def test_wandb_credentials_and_reachability(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    with WandbServer(api_key=KEY, viewer_entity="acme") as server:
        spec = f"wandb:{server.url}"
        good = run_cli("doctor", "--registry", spec, "--cache-dir", cache, env=doctor_env(tmp_path, WANDB_API_KEY=KEY))
        checks = lines(good.stdout)
        assert checks["W&B credentials"] == ("ok", "an API key from WANDB_API_KEY", None)
        assert checks["W&B server"] == ("ok", f"{server.url}: signed in as acme", None)
        assert KEY not in good.stdout + good.stderr

        wrong = run_cli(
            "doctor", "--registry", spec, "--cache-dir", cache, env=doctor_env(tmp_path, WANDB_API_KEY="x" * 40),
            check=False,
        )  # fmt: skip
        assert wrong.returncode == 1
        status, found, fix = lines(wrong.stdout)["W&B server"]
        assert status == "FAIL" and "refuses the API key" in found
        assert fix == "check the key (wandb login --relogin) and that it is for this host"

        none = run_cli("doctor", "--registry", spec, "--cache-dir", cache, env=doctor_env(tmp_path), check=False)
        assert none.returncode == 1
        status, found, fix = lines(none.stdout)["W&B credentials"]
        assert status == "FAIL" and found.startswith(f"no API key for {server.url}: ")
        assert fix == (
            f"set WANDB_API_KEY or run `wandb login --host {server.url}` (never put the key on a command line)"
        )
        assert "W&B server" not in lines(none.stdout)

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gone = run_cli(
        "doctor", "--registry", f"wandb:http://127.0.0.1:{port}", "--cache-dir", cache,
        env=doctor_env(tmp_path, WANDB_API_KEY=KEY), check=False, timeout=180,
    )  # fmt: skip
    assert gone.returncode == 1
    status, found, fix = lines(gone.stdout)["W&B server"]
    assert status == "FAIL" and found.startswith(f"http://127.0.0.1:{port} is unreachable or not a W&B server: ")
    assert fix == "check the network, a proxy ($HTTPS_PROXY) and $WANDB_BASE_URL"


def test_missing_pieces_of_fuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor.os.path, "exists", lambda p: False)
    check = doctor.check_dev_fuse()
    assert (check.status, check.found) == ("FAIL", "missing")
    assert "--device /dev/fuse" in check.fix
    helper = doctor.check_helper()
    assert helper.status == "warn" and helper.fix.startswith("sudo ln -s ") and helper.fix.endswith(doctor.HELPER)
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    assert doctor.check_fusermount().fix == "install fuse3 (sudo apt-get install fuse3)"
    assert doctor._kernel_version("6.1.0-18-amd64") == (6, 1)
    assert doctor._kernel_version("4.19.0") < doctor.MIN_KERNEL


def test_a_file_in_the_way_is_named_as_such(tmp_path: Path) -> None:
    """A regular file where a directory must be: doctor and mount say so, and suggest nothing
    (``mkdir -p``) that cannot work."""
    (tmp_path / "afile").write_text("x")
    proc = run_cli(
        "doctor", "--registry", str(tmp_path / "none"), "--cache-dir", str(tmp_path / "afile" / "sub"), "--mountpoint",
        str(tmp_path / "afile"), check=False,
    )  # fmt: skip
    checks = lines(proc.stdout)
    assert checks["cache dir"] == (
        "FAIL",
        f"{tmp_path / 'afile' / 'sub'} cannot be created: {tmp_path / 'afile'} is not a directory",
        "choose another --cache-dir",
    )
    assert checks["mount point"][:2] == (
        "FAIL",
        f"mount point {tmp_path / 'afile'} is not a directory: mount on an empty directory",
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only tmpfs needs root")
def test_a_cache_dir_on_a_read_only_filesystem_is_named_as_such(tmp_path: Path) -> None:
    """Not 'chmod u+rwx': no mode makes a read-only filesystem writable."""
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        proc = run_cli("doctor", "--registry", str(tmp_path / "none"), "--cache-dir", str(ro), check=False)
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)
    assert lines(proc.stdout)["cache dir"] == (
        "FAIL",
        f"{ro} is on a read-only filesystem",
        "choose a --cache-dir on a writable disk",
    )
