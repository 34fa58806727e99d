"""transfer.get_many: the fetch engine's small GETs, many at once on one thread (libcurl's
multi), against real HTTP servers on 127.0.0.1 with injected faults.  Only a 200 with exactly
the object's size is a body; every other answer is handed back, unretried, for the ordinary
path (with its retries) to fetch again; secrets in URLs never reach a message."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from fault_server import Fault, FaultServer

from artifactfs import transfer
from artifactfs.transfer import Got, HttpPool, Policy


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


def fetch(reqs: list[tuple[str, int]], **kw: object) -> dict[int, Got]:
    got: dict[int, Got] = {}
    for answer in transfer.get_many(reqs, pool=HttpPool(), **kw):  # type: ignore[arg-type]
        assert answer.index not in got, "each request answered once"
        got[answer.index] = answer
    assert sorted(got) == list(range(len(reqs)))
    return got


def test_many_objects_fetched_at_once(server: FaultServer) -> None:
    bodies = [os.urandom(100 + 997 * i) for i in range(40)]
    reqs = [(server.add(f"/o/{i}", b), len(b)) for i, b in enumerate(bodies)]
    got = fetch(reqs, concurrency=8)
    assert [got[i].body for i in range(40)] == bodies
    assert 1 < server.max_in_flight <= 8  # concurrent, and never more than asked
    assert len(server.gets()) == 40  # one request each


def test_failures_are_handed_back_unretried(server: FaultServer) -> None:
    body = b"x" * 5000
    cases = {
        "/ok": [],
        "/503": [Fault(status=503, headers={"Retry-After": "1"})],
        "/404": [Fault(status=404)],
        "/cut": [Fault(cut=100)],
        "/longer": [Fault(extra=10, length=5010)],
        "/shorter-length": [Fault(length=10)],
    }
    reqs = []
    for path, faults in cases.items():
        reqs.append((server.add(path, body), len(body)))
        server.plan(path, *faults)
    got = fetch(reqs)
    answers = {path: got[i] for i, path in enumerate(cases)}
    assert answers["/ok"].body == body
    for path in list(cases)[1:]:
        assert answers[path].body is None, path
        assert answers[path].problem
    assert answers["/503"].problem == "HTTP 503" and answers["/404"].problem == "HTTP 404"
    for path in cases:
        assert len(server.gets(path)) == 1, f"{path}: retried here"


def test_wrong_size_is_not_a_body(server: FaultServer) -> None:
    """The manifest's size is what is asked: a body of another size (the object changed, a
    wrong entry) is never handed over as the object's bytes."""
    url = server.add("/o", b"12345")
    got = fetch([(url, 4), (url, 6), (url, 5)])
    assert got[0].body is None and got[1].body is None and got[2].body == b"12345"


def test_a_stalled_body_times_out(server: FaultServer) -> None:
    url = server.add("/slow", b"y" * 4000)
    server.plan("/slow", Fault(stall=10, stall_after=1000))
    start = time.monotonic()
    got = fetch([(url, 4000)], policy=Policy(read_timeout=1.0))
    assert got[0].body is None
    assert time.monotonic() - start < 8


def test_not_for_a_batch_never_reaches_the_server(server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Too large to hold in memory, a scheme that is not http(s), or a host behind a proxy:
    handed back at once for the ordinary path (which knows proxies), no request sent."""
    url = server.add("/o", b"z")
    big = server.add("/big", b"")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    proxied = HttpPool()
    monkeypatch.delenv("http_proxy")
    reqs = [(big, transfer.MANY_MAX_SIZE + 1), ("file:///etc/passwd", 10)]
    got = {g.index: g for g in transfer.get_many(reqs, pool=HttpPool())}
    assert got[0].body is None and got[1].body is None
    got = {g.index: g for g in transfer.get_many([(url, 1)], pool=proxied)}
    assert got[0].body is None
    assert server.gets() == []


def test_no_secret_in_a_problem() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: connection refused
    got = fetch([(f"http://127.0.0.1:{port}/o?X-Amz-Signature=secret&token=abc", 10)])
    assert got[0].body is None and got[0].problem
    assert "secret" not in got[0].problem and "abc" not in got[0].problem


def test_connections_are_kept_for_the_next_batch() -> None:
    """The multi handle and its connections are pooled: later batches to the same host open
    no new connection (a round trip and a handshake saved on a WAN)."""
    from test_transfer_pool import BODY, Server

    srv = Server()
    try:
        url = srv.url + "/x"
        for _ in range(5):
            got = fetch([(url, len(BODY))] * 4, concurrency=4)
            assert all(g.body == BODY for g in got.values())
        assert len(srv.requests) == 20
        assert srv.connections <= 8  # 4 at most per batch, kept: not 20
    finally:
        srv.stop()
