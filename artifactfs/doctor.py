"""``artifactfs doctor``: is this machine ready to mount, and if not, what to do.

Each check prints one line (``ok``, ``warn`` or ``FAIL``, what it found) and, when it is not
ok, a ``fix:`` line.  The exit status is 1 when any check failed (warnings do not fail: they
concern features a mount may not use, such as ``--allow-other`` or fstab).  Nothing is changed:
no directory is created, no registry is written, no key is printed.  The default registry not
existing yet is ok (the first ``log`` creates it); a registry the user named that is not there
fails.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import stat
import sys
from collections.abc import Callable

from .checks import FAIL, OK, WARN, Check
from .errors import ArtifactFSError
from .fsutil import FOREIGN, cache_dir_kind
from .metrics import human_bytes
from .registry import doctor_checks

HELPER = "/sbin/mount.fuse.artifactfs"
MIN_FREE = 1 << 30  # a cache with less free space than this evicts on nearly every fetch
MIN_KERNEL = (4, 20)  # FUSE 7.28: max_pages, so reads reach the daemon as 1 MiB requests


def check_dev_fuse() -> Check:
    name = "/dev/fuse"
    if not os.path.exists("/dev/fuse"):
        return Check(
            name,
            FAIL,
            "missing",
            "load the module (sudo modprobe fuse); in a container run it with --device /dev/fuse --cap-add SYS_ADMIN",
        )
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return Check(
            name,
            FAIL,
            f"cannot open it: {exc.strerror}",
            "make it mode 0666 (sudo chmod 0666 /dev/fuse) or run the mount as a user who may open it",
        )
    os.close(fd)
    return Check(name, OK, "present, opens read-write")


def check_fusermount() -> Check:
    name = "fusermount3"
    path = shutil.which("fusermount3")
    if path is None:
        return Check(name, FAIL, "not on PATH", "install fuse3 (sudo apt-get install fuse3)")
    mode = os.stat(path).st_mode
    if os.geteuid() != 0 and not mode & stat.S_ISUID:
        return Check(
            name, FAIL, f"{path} is not setuid root: users cannot mount", f"sudo chmod u+s {path} (reinstall fuse3)"
        )
    return Check(name, OK, path)


def _kernel_version(release: str) -> tuple[int, int]:
    parts = []
    for piece in release.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit()) or "0"
        parts.append(int(digits))
    major, minor = [*parts, 0, 0][:2]
    return major, minor


def check_kernel() -> Check:
    name = "kernel FUSE"
    release = platform.release()
    try:
        with open("/proc/filesystems") as f:
            known = any(line.split()[-1:] == ["fuse"] for line in f)
    except OSError:
        known = os.path.exists("/dev/fuse")
    if not known:
        return Check(name, FAIL, f"kernel {release} has no fuse filesystem", "sudo modprobe fuse")
    version = _kernel_version(release)
    if version < MIN_KERNEL:
        return Check(
            name,
            WARN,
            f"kernel {release}: FUSE before 7.28 (reads arrive in 128 KiB requests, slower)",
            "a kernel >= 4.20 sends 1 MiB requests",
        )
    return Check(name, OK, f"kernel {release} (FUSE >= 7.28: 1 MiB requests)")


def check_allow_other() -> Check:
    name = "user_allow_other"
    if os.geteuid() == 0:
        return Check(name, OK, "root may always mount with --allow-other")
    try:
        with open("/etc/fuse.conf") as f:
            enabled = any(line.split("#", 1)[0].strip() == "user_allow_other" for line in f)
    except OSError:
        enabled = False
    if enabled:
        return Check(name, OK, "set in /etc/fuse.conf")
    return Check(
        name,
        WARN,
        "not set in /etc/fuse.conf: only root can mount with --allow-other (other users, containers, ranks under "
        "another uid)",
        "add a line 'user_allow_other' to /etc/fuse.conf (as root)",
    )


def check_helper() -> Check:
    name = "mount helper"
    if os.path.exists(HELPER):
        return Check(name, OK, f"{HELPER} (mount -t fuse.artifactfs, fstab)")
    installed = os.path.join(os.path.dirname(sys.executable), "mount.fuse.artifactfs")
    return Check(
        name,
        WARN,
        f"{HELPER} is missing: mount -t fuse.artifactfs and fstab lines cannot find it",
        f"sudo ln -s {installed} {HELPER}",
    )


def check_registry(spec: str, cache_dir: str) -> list[Check]:
    """The registry's backend's own checks (:data:`artifactfs.registry.BACKENDS`)."""
    return doctor_checks(spec, cache_dir)


def check_cache_dir(path: str) -> list[Check]:
    name = "cache dir"
    path = os.path.abspath(path)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    checks: list[Check] = []
    if existing != path:
        if not os.path.isdir(existing):
            reason = f"{path} cannot be created: {existing} is not a directory"
            return [Check(name, FAIL, reason, "choose another --cache-dir")]
        if not os.access(existing, os.W_OK | os.X_OK):
            return [
                Check(
                    name,
                    FAIL,
                    f"{path} does not exist and {existing} is not writable",
                    "create it for this user (sudo install -d -o $USER -m 0700 DIR) or choose another --cache-dir",
                )
            ]
        checks.append(Check(name, OK, f"{path} will be created (mode 0700)"))
    else:
        st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            return [Check(name, FAIL, f"{path} is not a directory", "choose another --cache-dir")]
        if st.st_uid != os.geteuid():
            return [
                Check(
                    name,
                    FAIL,
                    f"{path} belongs to uid {st.st_uid}, not to this user",
                    "use a cache dir of your own (each user's mounts keep their own cache), or chown it",
                )
            ]
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            reason = f"{path} is on a read-only filesystem"
            return [Check(name, FAIL, reason, "choose a --cache-dir on a writable disk")]
        if not os.access(path, os.W_OK | os.X_OK):
            return [Check(name, FAIL, f"{path} is not writable", f"chmod u+rwx {path}")]
        if cache_dir_kind(path) == FOREIGN:  # as claim_cache_dir decides
            return [
                Check(
                    name,
                    FAIL,
                    f"{path} holds other files: a mount refuses it (it would evict them)",
                    "choose an empty or new directory for --cache-dir",
                )
            ]
        mode = stat.S_IMODE(st.st_mode)
        note = "" if mode == 0o700 else f" (mode {mode:o}: a mount sets it to 0700)"
        checks.append(Check(name, OK, f"{path}{note}"))
    usage = shutil.disk_usage(existing)
    if usage.free < MIN_FREE:
        checks.append(
            Check(
                "cache space",
                WARN,
                f"{human_bytes(usage.free)} free on the cache's disk",
                "free space there, or choose a --cache-dir on a larger disk (the cache needs room for the largest "
                "file read plus what it keeps)",
            )
        )
    else:
        checks.append(Check("cache space", OK, f"{human_bytes(usage.free)} free of {human_bytes(usage.total)}"))
    return checks


def check_mountpoint(path: str) -> Check:
    from .mount import check_mountpoint as check

    try:
        check(path)
    except ArtifactFSError as exc:
        return Check("mount point", FAIL, str(exc), "mkdir an empty directory, or unmount what is there")
    return Check("mount point", OK, f"{os.path.abspath(path)} is an empty directory")


def run_checks(registry: str, cache_dir: str, mountpoint: str | None = None) -> list[Check]:
    simple: list[Callable[[], Check]] = [
        check_dev_fuse,
        check_fusermount,
        check_kernel,
        check_allow_other,
        check_helper,
    ]
    checks = [fn() for fn in simple]
    checks += check_registry(registry, cache_dir)
    checks += check_cache_dir(cache_dir)
    if mountpoint is not None:
        checks.append(check_mountpoint(mountpoint))
    return checks


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = run_checks(args.registry, args.cache_dir, args.mountpoint)
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.status:<4}  {c.name.ljust(width)}  {c.found}")
        if c.status != OK and c.fix:
            print(f"{'':<4}  {''.ljust(width)}  fix: {c.fix}")
    failed = sum(c.status == FAIL for c in checks)
    if failed:
        print(f"{failed} check{'s' if failed > 1 else ''} failed", file=sys.stderr)
        return 1
    return 0
