"""What a running mount tells the rest of the machine: a record, a control socket, readiness.

A mount daemon (``mount --foreground``, the process that serves FUSE) keeps, from the moment it
answers until it exits:

* a **record**, ``RUNTIME/<id>.json`` (id: a hash of the mount point): mount point, registry
  spec, cache directory, PID and the process's start time, start time, log file, metrics port;
* a **control socket**, ``RUNTIME/<id>.sock`` (mode 0600): a client sends ``stats`` or
  ``metrics`` and reads one answer, a JSON snapshot or Prometheus text;
* with ``--metrics-port PORT``, an HTTP listener on ``127.0.0.1:PORT`` answering
  ``GET /metrics`` with the same Prometheus text;
* readiness for systemd: ``READY=1`` (and ``STOPPING=1`` when it stops) on ``$NOTIFY_SOCKET``,
  so a ``Type=notify`` unit is started exactly when the mount answers.

``RUNTIME`` is ``$ARTIFACTFS_RUNTIME_DIR``, else ``/run/artifactfs`` for root, else
``$XDG_RUNTIME_DIR/artifactfs``, else ``/tmp/artifactfs-UID``.

Why a record and a socket, and not only ``/proc/mounts`` and the root's xattr:
``/proc/mounts`` says *that* an artifactfs mount exists (its type is ``fuse.artifactfs``, for any
user), but not its registry, cache directory or daemon; and the ``user.artifactfs.stats`` xattr
needs xattrs on (``--xattrs off`` answers ENOSYS), travels through the FUSE request queue of
the mount being diagnosed, and cannot be read by other users unless ``allow_other``.  A unix
socket is answered by the daemon's trio loop directly, works with any mount options, and its
file mode decides who may read the counters.  Records live in a runtime directory (a tmpfs,
emptied at boot) rather than the cache directory, which several mounts may share and which
outlives the daemons.  A record whose daemon has died (SIGKILL) is recognised by its PID and
start time and ignored (and removed when we may).

Nothing here holds a secret: a registry spec never carries credentials (see options).

This module is the daemon's side and the record's format; finding mounts and asking their daemons
(``status``, ``stats``) is :mod:`artifactfs.status`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from . import metrics
from .errors import MountError
from .options import daemon_argv

if TYPE_CHECKING:
    from .fetcher import Fetcher
    from .options import MountConfig
    from .store import BlobStore

log = logging.getLogger(__name__)

RUNTIME_ENV = "ARTIFACTFS_RUNTIME_DIR"
ROOT_RUNTIME = "/run/artifactfs"
_MAX_REQUEST = 8192
_CLIENT_TIMEOUT = 5.0  # seconds a client of the control socket or the metrics port may take
_SUN_PATH_MAX = 107


def runtime_dir() -> str:
    """Where this user's mount daemons keep their records and sockets."""
    env = os.environ.get(RUNTIME_ENV)
    if env:
        return os.path.abspath(env)
    if os.geteuid() == 0:
        return ROOT_RUNTIME
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "artifactfs")
    return os.path.join(tempfile.gettempdir(), f"artifactfs-{os.getuid()}")


def mount_id(mountpoint: str) -> str:
    return hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:16]


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat), which
    tells a live daemon from a new process that reuses a dead daemon's PID; None when it is gone,
    or dead and not yet reaped (a zombie keeps its start time until its parent reaps it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    if fields[:1] in ([b"Z"], [b"X"]):
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass
class MountRecord:
    """What ``RUNTIME/<id>.json`` says about one mount."""

    mountpoint: str
    registry: str
    cache_dir: str
    pid: int
    process_start: int | None
    started_at: float  # Unix time the mount began to answer
    uid: int
    log_file: str | None
    metrics_port: int | None
    socket: str
    # The mount's options as flags of ``artifactfs mount`` (never a secret: they carry none);
    # None in a record an older version wrote.
    options: list[str] | None = None

    def alive(self) -> bool:
        """Its daemon still runs (same PID and same process start time)."""
        return self.process_start is not None and process_start(self.pid) == self.process_start

    @classmethod
    def load(cls, path: str) -> MountRecord | None:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            return None


# -- the daemon's side ------------------------------------------------------------------------------


def sd_notify(message: str) -> bool:
    """Send ``message`` to systemd's ``$NOTIFY_SOCKET`` if there is one (``Type=notify``)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", path, exc.strerror or exc)
        return False
    return True


def _stderr_file() -> str | None:
    """The file this process logs to, when its stderr is a regular file (a background mount's
    daemon: the parent opened the log for it)."""
    try:
        target = os.readlink("/proc/self/fd/2")
    except OSError:
        return None
    return target if target.startswith("/") and os.path.isfile(target) else None


class AdminServer:
    """A mount daemon's record, control socket, metrics listener and readiness notices.

    :meth:`open` binds everything before the mount is made, so a port in use fails the mount at
    once, in one line; :meth:`serve` answers on the trio loop (every counter is touched only
    there); :meth:`ready` publishes the record and tells systemd once the mount answers;
    :meth:`close` removes the record and the socket."""

    def __init__(self, config: MountConfig, fetcher: Fetcher, store: BlobStore) -> None:
        self.config = config
        self.fetcher = fetcher
        self.store = store
        self.directory = runtime_dir()
        self.id = mount_id(config.mountpoint)
        self.socket_path = os.path.join(self.directory, f"{self.id}.sock")
        self.record_path = os.path.join(self.directory, f"{self.id}.json")
        self.started = time.time()
        self.loop = metrics.LoopMonitor()  # run by the daemon's nursery (mount._serve)
        self._unix: socket.socket | None = None
        self._tcp: socket.socket | None = None

    @classmethod
    def open(cls, config: MountConfig, fetcher: Fetcher, store: BlobStore) -> AdminServer:
        server = cls(config, fetcher, store)
        try:
            server._bind()
        except BaseException:
            server.close()
            raise
        return server

    def _bind(self) -> None:
        try:
            os.makedirs(self.directory, mode=0o755 if self.directory == ROOT_RUNTIME else 0o700, exist_ok=True)
        except OSError as exc:
            raise MountError(
                f"cannot create the runtime directory {self.directory}: {exc.strerror or exc} "
                f"(set ${RUNTIME_ENV} to a directory you own)"
            ) from exc
        st = os.stat(self.directory)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            # Someone else's directory (a /tmp/artifactfs-UID made by another user) could
            # impersonate our daemons to `artifactfs stats`.
            raise MountError(
                f"runtime directory {self.directory} is not this user's own (owner uid {st.st_uid}, mode "
                f"{st.st_mode & 0o777:o}): remove it, or set ${RUNTIME_ENV} to a directory only you can write"
            )
        if len(os.fsencode(self.socket_path)) > _SUN_PATH_MAX:
            raise MountError(f"control socket path {self.socket_path} is too long: set ${RUNTIME_ENV} to a short path")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)  # a killed daemon's, for the same mount point (now unmounted)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._unix = unix
        old = os.umask(0o177)
        try:
            unix.bind(self.socket_path)
        except OSError as exc:
            raise MountError(f"cannot create the control socket {self.socket_path}: {exc.strerror or exc}") from exc
        finally:
            os.umask(old)
        unix.listen(16)
        port = self.config.metrics_port
        if port is not None:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            self._tcp = tcp
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError as exc:
                raise MountError(
                    f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc} "
                    "(choose another port, or 0 for any free one)"
                ) from exc
            tcp.listen(16)

    @property
    def metrics_port(self) -> int | None:
        return None if self._tcp is None else int(self._tcp.getsockname()[1])

    def snapshot(self) -> dict[str, Any]:
        """Every counter, now (on the trio loop)."""
        stats = self.fetcher.stats.to_json()
        quick = self.store.quick_volume()  # never waits for a cache.db another process holds
        volume = -1 if quick is None else quick
        return {
            "mountpoint": self.config.mountpoint,
            "registry": self.config.registry,
            "cache_dir": self.config.cache_dir,
            "pid": os.getpid(),
            "started_at": self.started,
            "uptime_seconds": round(time.time() - self.started, 3),
            "counters": {
                **metrics.counters(
                    stats, in_flight=self.fetcher.in_flight, volume=volume, size_limit=self.config.cache_size
                ),
                "cache_index_busy": self.store.busy_misses,
            },
            "latency": stats["latency"],
            "loop": self.loop.to_json(),
        }

    async def serve(self) -> None:
        import trio

        listeners = []
        for sock, handler in ((self._unix, self._control), (self._tcp, self._http)):
            if sock is not None:
                listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                listeners.append((listener, handler))
        async with trio.open_nursery() as nursery:
            for listener, handler in listeners:
                nursery.start_soon(trio.serve_listeners, handler, [listener])

    async def _read(self, stream: Any, end: bytes) -> bytes:
        import trio

        data = b""
        with trio.move_on_after(_CLIENT_TIMEOUT):
            while end not in data and len(data) < _MAX_REQUEST:
                chunk = await stream.receive_some(1024)
                if not chunk:
                    break
                data += chunk
        return data

    async def _control(self, stream: Any) -> None:
        import trio

        try:
            async with stream:
                command = (await self._read(stream, b"\n")).strip().decode("ascii", "replace")
                if command == "metrics":
                    answer = metrics.prometheus(self.snapshot()).encode()
                elif command in ("stats", ""):
                    answer = json.dumps(self.snapshot(), sort_keys=True).encode() + b"\n"
                else:
                    answer = json.dumps({"error": f"unknown command {command[:40]!r}"}).encode() + b"\n"
                with trio.move_on_after(_CLIENT_TIMEOUT):
                    await stream.send_all(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _http(self, stream: Any) -> None:
        import trio

        try:
            async with stream:
                request = await self._read(stream, b"\r\n\r\n")
                line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
                path = line[1].split("?", 1)[0] if len(line) >= 2 else ""
                if len(line) >= 2 and line[0] in ("GET", "HEAD") and path == "/metrics":
                    status, body = "200 OK", metrics.prometheus(self.snapshot()).encode()
                    kind = "text/plain; version=0.0.4; charset=utf-8"
                else:
                    status, body, kind = "404 Not Found", b"artifactfs: try /metrics\n", "text/plain"
                head = (
                    f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                with trio.move_on_after(_CLIENT_TIMEOUT):
                    await stream.send_all(head + (body if line and line[0] != "HEAD" else b""))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    def ready(self) -> None:
        """The mount answers: publish the record, tell systemd."""
        record = MountRecord(
            mountpoint=self.config.mountpoint,
            registry=self.config.registry,
            cache_dir=self.config.cache_dir,
            pid=os.getpid(),
            process_start=process_start(os.getpid()),
            started_at=self.started,
            uid=os.getuid(),
            log_file=_stderr_file(),
            metrics_port=self.metrics_port,
            socket=self.socket_path,
            options=daemon_argv(self.config)[2:],
        )
        tmp = f"{self.record_path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(asdict(record), f, sort_keys=True)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.record_path)
        except OSError as exc:
            log.warning("cannot write the mount record %s: %s", self.record_path, exc.strerror or exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if self.metrics_port is not None:
            log.info("metrics on http://127.0.0.1:%d/metrics", self.metrics_port)
        sd_notify(f"READY=1\nSTATUS=serving {self.config.registry} on {self.config.mountpoint}\nMAINPID={os.getpid()}")

    def close(self) -> None:
        """Stop answering and remove the record and the socket (only our own)."""
        for sock in (self._unix, self._tcp):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        if self._unix is not None:
            record = MountRecord.load(self.record_path)
            if record is not None and record.pid == os.getpid():
                with contextlib.suppress(OSError):
                    os.unlink(self.record_path)
            with contextlib.suppress(OSError):
                os.unlink(self.socket_path)
            sd_notify("STOPPING=1")
        self._unix = self._tcp = None
