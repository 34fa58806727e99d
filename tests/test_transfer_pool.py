"""transfer.HttpPool with real HTTP servers on 127.0.0.1: the pool keeps a connection for every
request the fetch engine may have in flight, presigned GETs carry no ~/.netrc credentials, and
the proxy environment is read when the pool is made, not per request or per host."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifactfs import transfer
from artifactfs.engine import Engine
from artifactfs.fetcher import Fetcher
from artifactfs.http import download
from artifactfs.registry.local import LocalRegistry
from artifactfs.store import BlobStore
from artifactfs.transfer import HttpPool, Policy

BODY = b"0123456789" * 10
TIMEOUT = (10.0, 60.0)


class Server(http.server.ThreadingHTTPServer):
    """Answers every GET with BODY over keep-alive connections; counts connections, keeps each
    request's line and Authorization header.  ``barrier``: each request waits there first."""

    daemon_threads = True
    request_queue_size = 512

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[tuple[str, str | None]] = []
        self.barrier: threading.Barrier | None = None
        self.thread = threading.Thread(target=self.serve_forever, name="pool-test-server", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests.append((self.path, self.headers.get("Authorization")))
        if self.server.barrier is not None:
            self.server.barrier.wait(timeout=120)
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    try:
        yield s
    finally:
        s.stop()


def burst(pool: HttpPool, url: str, n: int) -> None:
    """``n`` GETs at once, each in its own thread; every body read (its connection handed back)."""
    errors: list[BaseException] = []

    def one() -> None:
        try:
            with pool.get(url, timeout=TIMEOUT) as resp:
                assert resp.content == BODY
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, name=f"burst-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_the_pool_keeps_a_connection_for_every_request_the_engine_may_run(server: Server, tmp_path: Path) -> None:
    pool = HttpPool()  # made before the engine says how many fetches it runs: it grows
    reg = LocalRegistry(tmp_path / "registry", create=True)
    store = BlobStore(str(tmp_path / "cache"), 1 << 20)
    try:
        fetcher = Fetcher(reg, store, max_threads=8)
        Engine(fetcher, reg, mode="off", concurrency=40)
    finally:
        store.close()
        reg.close()
    n = (40 + 8) * Policy().workers  # every fetch a large file fetched as parallel ranges: 192 requests
    assert n > 128  # more than the pool kept before it was sized from the engine's limit
    server.barrier = threading.Barrier(n)
    burst(pool, server.url + "/first", n)
    assert server.connections == n
    # All n connections were kept (none closed as "Connection pool is full"): the next burst
    # opens none.
    burst(pool, server.url + "/second", n)
    pool.close()
    assert server.connections == n
    assert transfer.requests_at_once() >= n


@pytest.fixture
def netrc_home(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """~/.netrc (in the test's own HOME) has credentials for the server's host."""
    monkeypatch.delenv("NETRC", raising=False)
    netrc = Path(os.path.expanduser("~")) / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password not-for-presigned-urls\n")
    netrc.chmod(0o600)


def get_file(url: str, policy: Policy, tmp_path: Path) -> bytes:
    path = tmp_path / "got"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        pool = HttpPool()
        download(url, fd, len(BODY), "a test file", policy=policy, pool=pool)
        pool.close()
    finally:
        os.close(fd)
    return path.read_bytes()


@pytest.mark.usefixtures("netrc_home")
def test_a_presigned_get_sends_no_netrc_credentials(server: Server, tmp_path: Path) -> None:
    presigned = server.url + "/bucket/blob?X-Amz-Signature=abc"
    assert get_file(presigned, Policy(netrc=False), tmp_path) == BODY  # as the W&B backend fetches files
    assert server.requests == [("/bucket/blob?X-Amz-Signature=abc", None)]
    # The same host as a reference URL (not presigned) gets them, as in the wandb SDK: the entry
    # above is read and matches.
    assert get_file(server.url + "/ref.bin", Policy(netrc=True), tmp_path) == BODY
    path, auth = server.requests[-1]
    assert path == "/ref.bin" and auth is not None and auth.startswith("Basic ")


def test_the_proxy_environment_is_read_once_per_pool(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    first, second = Server(), Server()
    try:
        monkeypatch.setenv("http_proxy", first.url)
        pool = HttpPool()
        origin = server.url.replace("127.0.0.1", "localhost")
        with pool.get(server.url + "/a", timeout=TIMEOUT) as resp:
            assert resp.content == BODY
        monkeypatch.setenv("http_proxy", second.url)
        for url in (server.url + "/b", origin + "/c"):  # the same host, then a host not asked before
            with pool.get(url, timeout=TIMEOUT) as resp:
                assert resp.content == BODY
        assert [p for p, _ in first.requests] == [server.url + "/a", server.url + "/b", origin + "/c"]
        assert second.requests == [] and server.requests == []
        pool.close()
        fresh = HttpPool()
        with fresh.get(server.url + "/d", timeout=TIMEOUT) as resp:  # a new pool reads it again
            assert resp.content == BODY
        fresh.close()
        assert [p for p, _ in second.requests] == [server.url + "/d"]
    finally:
        first.stop()
        second.stop()
