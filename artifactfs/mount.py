"""Mount lifecycle: checks, daemonising, signals, clean unmount; the ``mount``/``umount`` commands.

Without ``--foreground`` the command checks what it can (FUSE, the mount point, the cache
directory, the registry: a missing registry, refused credentials or an unreachable server fail
here, in one line), then starts a daemon (a fork of itself, or ``artifactfs mount --foreground``
when it runs threads, with a readiness pipe) and returns 0 only once the mount answers requests;
any failure before that is printed as one line and exits non-zero. The daemon inherits the
environment, so W&B credentials reach it without appearing on its command line. SIGINT/SIGTERM
make the daemon unmount and exit.

The options are declared once, in :class:`artifactfs.options.MountConfig`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import pyfuse3
import trio

from .admin import AdminServer
from .engine import Engine, Lookahead, cache_room
from .errors import ArtifactFSError, MountError
from .fetcher import Fetcher
from .fsutil import claim_cache_dir, make_dirs, mounted
from .ops import Operations
from .options import MountConfig, daemon_argv
from .registry import open_registry
from .store import USE_FLUSH_INTERVAL, BlobStore
from .tree import Tree

__all__ = ["MountConfig", "check_fuse", "check_mountpoint", "cmd_mount", "cmd_umount", "run_foreground", "unmount"]

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0  # seconds the background mount waits for its daemon to answer


def check_mountpoint(path: str) -> str:
    path = os.path.abspath(path)
    if _dead_mount(path):
        raise MountError(
            f"{path} is the dead mount of a daemon that is gone: run 'artifactfs umount {path}', then mount again"
        )
    if os.path.lexists(path) and not os.path.isdir(path):
        raise MountError(f"mount point {path} is not a directory: mount on an empty directory")
    if not os.path.isdir(path):
        raise MountError(f"mount point {path} does not exist: mkdir -p {path}")
    if os.path.ismount(path):
        raise MountError(
            f"{path} is already a mount point (see 'artifactfs status'; 'artifactfs umount {path}' frees it)"
        )
    try:
        if os.listdir(path):
            raise MountError(f"mount point {path} is not empty: mount on an empty directory")
    except PermissionError as exc:
        raise MountError(f"cannot read mount point {path}: {exc.strerror}") from exc
    return path


def _dead_mount(path: str) -> bool:
    """A FUSE mount whose daemon died (SIGKILL, OOM): its requests fail with ENOTCONN (a stat
    may still succeed from the kernel's attribute cache, a listing does not)."""
    for probe in (os.stat, os.listdir):
        try:
            probe(path)
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                return True
    return False


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


async def _serve(config: MountConfig, ops: Operations, admin: AdminServer) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, config.mountpoint)
        nursery.start_soon(admin.serve)  # control socket, --metrics-port (artifactfs.admin)
        nursery.start_soon(admin.loop.run)  # the loop's own stall figures, for `stats`
        nursery.start_soon(_flush_uses, ops.fetcher.store)
        nursery.start_soon(_announce, config, admin)
        if ops.engine is not None:
            nursery.start_soon(ops.engine.run)
        if ops.lookahead is not None:
            nursery.start_soon(ops.lookahead.run)
        await pyfuse3.main()  # returns on pyfuse3.terminate() or an external unmount
        nursery.cancel_scope.cancel()


async def _flush_uses(store: BlobStore) -> None:
    """Write the blobs this mount used into cache.db's LRU order, batched, from a worker thread:
    the loop only notes uses in memory (it never waits for a cache.db another process holds)."""
    while True:
        await trio.sleep(USE_FLUSH_INTERVAL)
        # Abandoned at unmount: store.close() flushes what is left.
        await trio.to_thread.run_sync(store.flush_uses, abandon_on_cancel=True)


async def _announce(config: MountConfig, admin: AdminServer) -> None:
    # The first requests (INIT, then this stat) go through our own loop: once the stat returns
    # the mount answers, and the kernel has set up the bdi whose read-ahead we raise.
    await trio.to_thread.run_sync(os.stat, config.mountpoint)
    if config.read_ahead_kb > 0:
        _set_read_ahead(config.mountpoint, config.read_ahead_kb)
    log.info("mounted %s on %s", config.registry, config.mountpoint)
    admin.ready()  # the mount record for `artifactfs status`; READY=1 for a systemd Type=notify unit
    if config.ready_fd is not None:
        os.write(config.ready_fd, b"ok\n")
        os.close(config.ready_fd)


async def _watch_signals(mountpoint: str) -> None:
    """SIGINT, SIGTERM or SIGHUP: unmount as ``artifactfs umount`` does (:func:`unmount`,
    lazily when busy): the mount point is detached at once (nothing new opens), files still open
    are served until they are closed, and then the kernel ends the connection (``pyfuse3.main``
    returns).  A reader busy on the mount delays the exit, not fails.  A second signal stops at
    once."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        detached = False
        async for signum in signals:
            if not detached:
                detached = True
                log.info("signal %d: unmounting %s (files still open are served until closed)", signum, mountpoint)
                try:
                    await trio.to_thread.run_sync(unmount, mountpoint)
                except MountError as exc:
                    log.warning("%s: stopping at once", exc)
                    pyfuse3.terminate()
                    return
                continue
            log.info("signal %d: stopping at once (open files of %s answer ENOTCONN)", signum, mountpoint)
            pyfuse3.terminate()
            return


def run_foreground(config: MountConfig) -> None:
    """Mount, serve until a signal or an external unmount, then unmount."""
    check_fuse()
    mountpoint = check_mountpoint(config.mountpoint)
    config.mountpoint = mountpoint
    config.cache_dir = os.path.abspath(config.cache_dir)
    # The cache directory is ours before anything writes into it (a remote backend's manifests).
    claim_cache_dir(config.cache_dir)
    # Everything opened is closed on the way out, also when a later step fails (a cache directory
    # BlobStore refuses must not leave the registry's connections and files open).
    with contextlib.ExitStack() as stack:
        registry = open_registry(config.registry, cache_dir=config.cache_dir, checked=config.registry_checked)
        stack.callback(registry.close)
        registry.prepare_mount()  # once, before serving: a local registry's entry ids
        # uses flushed by _flush_uses; fills kept by group commit (one sync and one transaction a batch)
        store = BlobStore(config.cache_dir, config.cache_size, defer_uses=True, group_commit=True)
        stack.callback(store.close)
        os.chdir("/")  # keep no directory of the caller's busy
        store.clean_tmp()
        fetcher = Fetcher(
            registry,
            store,
            serve_local_in_place=config.local_blobs == "verify-in-place",
            failure_backoff=config.failure_backoff,
        )
        tree = Tree(registry, uid=os.getuid(), gid=os.getgid(), alias_ttl=config.alias_ttl, scratch_dir=store.tmp)
        # One engine for every background fetch: walks (--warm), --prefetch hints.
        engine = Engine(fetcher, registry, mode=config.warm, room=cache_room(store))
        lookahead = (
            Lookahead(fetcher, tree.files_after, config.prefetch, engine=engine) if config.prefetch > 0 else None
        )
        ops = Operations(
            tree,
            fetcher,
            pread_in_thread=config.pread_in_thread,
            xattrs=config.xattrs == "on",
            lookahead=lookahead,
            engine=engine,
        )
        admin = AdminServer.open(config, fetcher, store)  # before the mount: a port in use fails it here
        stack.callback(admin.close)
        options = set(pyfuse3.default_options)
        options |= {"fsname=artifactfs", "subtype=artifactfs", "ro", "noatime"}
        # default_permissions always (pyfuse3's default, kept explicit): the kernel checks the 0444/0555
        # modes, which is what makes allow_other safe to offer.
        options.add("default_permissions")
        if config.allow_other:
            options.add("allow_other")
        try:
            pyfuse3.init(ops, mountpoint, options)
        except RuntimeError as exc:
            raise MountError(f"cannot mount on {mountpoint}: {exc}") from exc
        stack.callback(_unmount)
        try:
            if config.profile:
                _profiled(config.profile, _serve, config, ops, admin)
            else:
                trio.run(_serve, config, ops, admin)
        except BaseException:
            log.exception("the mount loop failed")
            raise


def _unmount() -> None:
    with contextlib.suppress(Exception):
        pyfuse3.close(unmount=True)


def _profiled(path: str, *args: Any) -> None:
    """``trio.run(*args)`` under cProfile, its stats written to ``path`` at the end (``--profile``)."""
    import cProfile

    profiler = cProfile.Profile()
    try:
        profiler.runcall(trio.run, *args)  # type: ignore[arg-type]
    finally:
        profiler.dump_stats(path)


def start_daemon(config: MountConfig) -> int:
    """Start ``mount --foreground`` detached; return once it reports the mount ready."""
    check_fuse()
    mountpoint = check_mountpoint(config.mountpoint)
    cache_dir = os.path.abspath(config.cache_dir)
    # Claim (or refuse) the cache directory before anything is written into it (the default
    # log, a remote backend's manifests): a refused directory (--cache-dir ~ by mistake) must be
    # left as it was, without a mount.log.
    claim_cache_dir(cache_dir)
    # Open the registry here, so that a missing registry, refused credentials or an unreachable
    # server fail now, in one line.  Its spec names it for the daemon, which works from "/": a
    # local registry's is an absolute path.
    with _errors_only():
        registry = open_registry(config.registry, cache_dir=cache_dir)
    try:
        spec = registry.spec
    finally:
        registry.close()
    log_file = os.path.abspath(config.log_file) if config.log_file else os.path.join(cache_dir, "mount.log")
    daemon = dataclasses.replace(
        config, registry=spec, mountpoint=mountpoint, cache_dir=cache_dir, log_file=log_file, registry_checked=True
    )
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(FileExistsError):
        make_dirs(os.path.dirname(os.path.abspath(log_file)))
    # O_NOFOLLOW: a symlink planted as CACHE_DIR/mount.log must not aim the daemon's output elsewhere.
    log_fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if threading.active_count() == 1:  # nothing but us to copy: fork, everything is imported
            pid = _fork_daemon(dataclasses.replace(daemon, foreground=True, ready_fd=write_fd), log_fd, read_fd)
        else:
            pid = _spawn_daemon(daemon, log_fd, write_fd)
    finally:
        os.close(log_fd)
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as ready:
        if select.select([ready], [], [], READY_TIMEOUT)[0]:
            status = ready.read()
        else:  # the daemon hangs: do not hang with it
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
            with contextlib.suppress(ArtifactFSError):
                unmount(mountpoint)
            raise MountError(f"the daemon did not answer within {READY_TIMEOUT:.0f}s (log: {log_file})")
    if status.startswith(b"ok"):
        print(
            f"artifactfs: mounted {spec} on {mountpoint} (pid {pid})",
            file=sys.stderr,
        )
        return 0
    code = _reap(pid)
    reason = _last_error(log_file) or f"the daemon exited with status {code}"
    raise MountError(reason)


def _fork_daemon(config: MountConfig, log_fd: int, read_fd: int) -> int:
    """The daemon as a fork of this process: ``run_foreground(config)`` in a new session, its
    output to ``log_fd``.  A fork needs no new interpreter and no second import of everything
    (about 0.35 s of the mount command's 0.75 s on loopback: docs/PERFORMANCE.md); it is used
    only while this process runs no other thread (there is none to lose in the child)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.close(read_fd)
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        _close_inherited(keep=config.ready_fd)
        code = _run_daemon(config)
    except BaseException:  # never return into the parent's code: report, then exit
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _close_inherited(keep: int | None) -> None:
    """Close what a spawned daemon would not have had: the descriptors this process inherited
    from its caller (inheritable ones above stderr; every descriptor Python opens is not)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # no /proc: what Python opened is close-on-exec, the rest stays
        return
    for name in names:
        fd = int(name)
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                if os.get_inheritable(fd):
                    os.close(fd)


def _spawn_daemon(config: MountConfig, log_fd: int, write_fd: int) -> int:
    """The daemon as a new ``artifactfs mount --foreground`` process (when this one has threads)."""
    cmd = [sys.executable, "-m", "artifactfs", "mount", *daemon_argv(config)]
    cmd += ["--foreground", "--ready-fd", str(write_fd), "--registry-checked"]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log_fd,
        stderr=log_fd,
        pass_fds=(write_fd,),
        start_new_session=True,
        close_fds=True,
    )
    return proc.pid


def _reap(pid: int) -> int:
    """Wait for our daemon ``pid`` to end: its exit status."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return 1
    return os.waitstatus_to_exitcode(status)


@contextlib.contextmanager
def _errors_only() -> Iterator[None]:
    """Keep a background mount's terminal to its one line: what a backend logs while it is
    checked (retries of an unreachable server...) stays out of it.  The daemon does not check
    again (``registry_checked``); what fails later is logged into its log.  ``--log-level
    DEBUG`` shows everything."""
    logger = logging.getLogger("artifactfs")
    if logger.getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


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


def cmd_mount(args: argparse.Namespace) -> int:
    config = MountConfig.from_namespace(args)
    if not config.foreground:
        return start_daemon(config)
    return _run_daemon(config)


def _run_daemon(config: MountConfig) -> int:
    try:
        run_foreground(config)
    except ArtifactFSError as exc:
        # The daemon's parent reads this line from the log to report why the mount failed.
        print(f"artifactfs: error: {exc}", file=sys.stderr, flush=True)
        if config.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.close(config.ready_fd)
        return 1
    return 0


def unmount(mountpoint: str) -> None:
    """Unmount the artifactfs mount at ``mountpoint`` (lazily if it is busy).  Anything else
    mounted there is refused untouched: ``fusermount3 -u -z`` as root detaches any mount."""
    path = os.path.abspath(mountpoint)
    ours = {point for point, _ in mounted()}
    if path not in ours and os.path.realpath(path) not in ours:
        raise MountError(f"{path} is not an artifactfs mount ('artifactfs status' lists them): nothing unmounted")
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
