"""Mount lifecycle: checks, daemonising, signals, clean unmount; the ``mount``/``umount`` commands.

Without ``--foreground`` the command starts a daemon (``artifactfs mount --foreground`` with a
readiness pipe) and returns 0 only once the mount answers requests; any failure before that is
printed as one line and exits non-zero.  SIGINT/SIGTERM make the daemon unmount and exit.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

import pyfuse3
import trio

from .errors import ArtifactFSError, MountError
from .fetcher import Fetcher
from .ops import Operations
from .registry.local import LocalRegistry
from .store import BlobStore, _claim_directory
from .tree import Tree

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0  # seconds the background mount waits for its daemon to answer


@dataclass
class MountConfig:
    registry: str
    mountpoint: str
    cache_dir: str
    cache_size: int
    alias_ttl: float = 60.0
    allow_other: bool = False
    local_blobs: str = "verify-in-place"
    failure_backoff: float = 5.0
    read_ahead_kb: int = 1024
    pread_in_thread: bool = False


def check_mountpoint(path: str) -> str:
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise MountError(f"mount point {path} does not exist or is not a directory")
    if os.path.ismount(path):
        raise MountError(f"{path} is already a mount point")
    try:
        if os.listdir(path):
            raise MountError(f"mount point {path} is not empty")
    except PermissionError as exc:
        raise MountError(f"cannot read mount point {path}: {exc.strerror}") from exc
    return path


def check_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse module or run with --device /dev/fuse")
    if shutil.which("fusermount3") is None:
        raise MountError("fusermount3 is not installed (apt-get install fuse3)")


def _set_read_ahead(mountpoint: str, kb: int) -> None:
    """Raise the mount's read-ahead so the kernel sends 1 MiB requests (needs root)."""
    minor = os.minor(os.stat(mountpoint).st_dev)
    path = f"/sys/class/bdi/0:{minor}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(kb))
    except OSError as exc:
        log.info("cannot set %s (%s): keeping the kernel's default", path, exc.strerror)
    else:
        log.debug("read_ahead_kb=%d for %s", kb, mountpoint)


async def _serve(config: MountConfig, ops: Operations, ready_fd: int | None) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, config.mountpoint)
        nursery.start_soon(_announce, config, ready_fd)
        await pyfuse3.main()  # returns on pyfuse3.terminate() or an external unmount
        nursery.cancel_scope.cancel()


async def _announce(config: MountConfig, ready_fd: int | None) -> None:
    # The first requests (INIT, then this stat) go through our own loop: once the stat returns
    # the mount answers, and the kernel has set up the bdi whose read-ahead we raise.
    await trio.to_thread.run_sync(os.stat, config.mountpoint)
    if config.read_ahead_kb > 0:
        _set_read_ahead(config.mountpoint, config.read_ahead_kb)
    log.info("mounted %s on %s", config.registry, config.mountpoint)
    if ready_fd is not None:
        os.write(ready_fd, b"ok\n")
        os.close(ready_fd)


async def _watch_signals(mountpoint: str) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting %s", signum, mountpoint)
            pyfuse3.terminate()
            return


def run_foreground(config: MountConfig, ready_fd: int | None = None) -> None:
    """Mount, serve until a signal or an external unmount, then unmount."""
    check_fuse()
    mountpoint = check_mountpoint(config.mountpoint)
    config.mountpoint = mountpoint
    registry = LocalRegistry(config.registry)
    store = BlobStore(config.cache_dir, config.cache_size)
    os.chdir("/")  # keep no directory of the caller's busy
    store.clean_tmp()
    fetcher = Fetcher(
        registry,
        store,
        serve_local_in_place=config.local_blobs == "verify-in-place",
        failure_backoff=config.failure_backoff,
    )
    tree = Tree(registry, uid=os.getuid(), gid=os.getgid(), alias_ttl=config.alias_ttl)
    ops = Operations(tree, fetcher, metadata_inline=registry.kind == "local", pread_in_thread=config.pread_in_thread)
    options = set(pyfuse3.default_options)
    options |= {"fsname=artifactfs", "subtype=artifactfs", "ro", "noatime"}
    if config.allow_other:
        options.add("allow_other")
    try:
        pyfuse3.init(ops, mountpoint, options)
    except RuntimeError as exc:
        raise MountError(f"cannot mount on {mountpoint}: {exc}") from exc
    try:
        trio.run(_serve, config, ops, ready_fd)
    except BaseException:
        log.exception("the mount loop failed")
        raise
    finally:
        with contextlib.suppress(Exception):
            pyfuse3.close(unmount=True)
        registry.close()
        store.close()


def start_daemon(args: argparse.Namespace) -> int:
    """Start ``mount --foreground`` detached; return once it reports the mount ready."""
    check_fuse()
    check_mountpoint(args.mountpoint)
    LocalRegistry(args.registry).close()  # fail here, with a clear message, if it is missing
    # The daemon works from "/" (so it keeps no directory busy): hand it absolute paths.
    args.registry, args.mountpoint, args.cache_dir = (
        os.path.abspath(p) for p in (args.registry, args.mountpoint, args.cache_dir)
    )
    if args.log_file:
        args.log_file = os.path.abspath(args.log_file)
    # Claim (or refuse) the cache directory before the default log is written into it: a
    # refused directory (--cache-dir ~ by mistake) must be left as it was, without a mount.log.
    _claim_directory(args.cache_dir)
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "artifactfs", "mount", *_forward(args), "--foreground", "--ready-fd", str(write_fd)]
    log_file = args.log_file or os.path.join(args.cache_dir, "mount.log")
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), mode=0o700, exist_ok=True)
    with open(log_file, "ab") as log_out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_out,
            stderr=log_out,
            pass_fds=(write_fd,),
            start_new_session=True,
            close_fds=True,
        )
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as ready:
        if select.select([ready], [], [], READY_TIMEOUT)[0]:
            status = ready.read()
        else:  # the daemon hangs: do not hang with it
            proc.kill()
            proc.wait()
            with contextlib.suppress(ArtifactFSError):
                unmount(args.mountpoint)
            raise MountError(f"the daemon did not answer within {READY_TIMEOUT:.0f}s (log: {log_file})")
    if status.startswith(b"ok"):
        print(
            f"artifactfs: mounted {args.registry} on {os.path.abspath(args.mountpoint)} (pid {proc.pid})",
            file=sys.stderr,
        )
        return 0
    code = proc.wait()
    reason = _last_error(log_file) or f"the daemon exited with status {code}"
    raise MountError(reason)


def _last_error(log_file: str) -> str | None:
    try:
        with open(log_file, "rb") as f:
            f.seek(max(0, os.path.getsize(log_file) - 4096))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("artifactfs: error: "):
            return line[len("artifactfs: error: ") :]
    return None


def _forward(args: argparse.Namespace) -> list[str]:
    out = [
        args.registry,
        args.mountpoint,
        "--cache-dir",
        args.cache_dir,
        "--cache-size",
        str(args.cache_size),
        "--alias-ttl",
        str(args.alias_ttl),
        "--log-level",
        args.log_level,
        "--local-blobs",
        args.local_blobs,
        "--failure-backoff",
        str(args.failure_backoff),
        "--read-ahead-kb",
        str(args.read_ahead_kb),
    ]
    if args.allow_other:
        out.append("--allow-other")
    if args.pread_in_thread:
        out.append("--pread-in-thread")
    return out


def cmd_mount(args: argparse.Namespace) -> int:
    if not args.foreground:
        return start_daemon(args)
    config = MountConfig(
        registry=args.registry,
        mountpoint=args.mountpoint,
        cache_dir=args.cache_dir,
        cache_size=args.cache_size,
        alias_ttl=args.alias_ttl,
        allow_other=args.allow_other,
        local_blobs=args.local_blobs,
        failure_backoff=args.failure_backoff,
        read_ahead_kb=args.read_ahead_kb,
        pread_in_thread=args.pread_in_thread,
    )
    try:
        run_foreground(config, args.ready_fd)
    except ArtifactFSError as exc:
        # The daemon's parent reads this line from the log to report why the mount failed.
        print(f"artifactfs: error: {exc}", file=sys.stderr, flush=True)
        if args.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.close(args.ready_fd)
        return 1
    return 0


def unmount(mountpoint: str) -> None:
    path = os.path.abspath(mountpoint)
    if shutil.which("fusermount3") is None:
        raise MountError("fusermount3 is not installed (apt-get install fuse3)")
    result = subprocess.run(["fusermount3", "-u", path], capture_output=True, text=True)
    if result.returncode == 0:
        return
    lazy = subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True, text=True)
    if lazy.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise MountError(f"cannot unmount {path}: {reason}")


def cmd_umount(args: argparse.Namespace) -> int:
    unmount(args.mountpoint)
    return 0
