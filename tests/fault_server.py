"""A real HTTP server on 127.0.0.1 (port 0) that serves objects and injects faults per request,
and a reverse proxy (:class:`FaultProxy`) that injects the same faults in front of another local
server (moto's S3 in ``test_s3.py``).

Each GET of a path takes the next :class:`Fault` from that path's plan (none: a correct answer)
and is recorded as a :class:`Seen` (the Range header asked and the status sent), so tests can
assert what reached the server.  Objects support ``Range: bytes=a-b`` / ``bytes=a-`` (206 with
``Content-Range``, ``Accept-Ranges: bytes``) unless created with ``ranges=False``, and
``If-Match`` (412 with the current ETag when it differs) unless created with
``conditional=False`` (a server that ignores it and answers with its current ETag).  HTTP/1.0: every
response closes its connection, so no handler thread outlives a test.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Fault:
    """What one request gets instead of (or on top of) the right answer.

    ``status``: answer with this status (and ``headers``) and no object.
    ``cut``: send the headers and this many body bytes, then drop the connection.
    ``stall``: after ``stall_after`` body bytes, send nothing for this many seconds.
    ``corrupt``: flip one byte of the body.  ``extra``: this many bytes after the object.
    ``no_length``: omit Content-Length (the body ends when the connection closes).
    ``length``: the Content-Length to claim.  ``ignore_range``: answer 200 with the whole object.
    ``shift``: answer a Range request with bytes from further on than asked.
    ``change``: once this answer is sent, replace the object's body and ETag (a new upload).
    ``body``: with ``status``, the body of that answer (an S3 error document, say).
    ``hook``: :class:`FaultProxy` only: called once the upstream has answered, before the answer
    is passed on (to change the upstream's state at a precise moment).
    """

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hook: Callable[[], None] | None = None
    cut: int | None = None
    stall: float | None = None
    stall_after: int = 0
    corrupt: bool = False
    extra: int = 0
    no_length: bool = False
    length: int | None = None
    ignore_range: bool = False
    shift: int = 0  # a 206 whose bytes (and Content-Range) start this much later than asked
    change: tuple[bytes, str] | None = None  # after answering, the object becomes (body, etag)


@dataclass
class Obj:
    body: bytes
    ranges: bool = True
    etag: str | None = None
    conditional: bool = True  # honour If-Match; False: ignore it (the client must compare ETags)
    delay: float = 0.0  # seconds before each response (a slow server)
    rate: float | None = None  # bytes per second per response (a throttled connection)
    plan: list[Fault] = field(default_factory=list)


@dataclass
class Seen:
    """One request as the server saw it; ``status`` is set before any body byte is sent."""

    path: str
    range: str | None
    if_range: str | None = None
    if_match: str | None = None
    status: int = 0


_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class FaultServer:
    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.seen: list[Seen] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def add(self, path: str, body: bytes, **kw: Any) -> str:
        """Serve ``body`` at ``path``; returns its URL (with a secret-looking query string)."""
        self.objects[path] = Obj(body, **kw)
        return f"http://127.0.0.1:{self.port}{path}?X-Amz-Signature=secret"

    def plan(self, path: str, *faults: Fault) -> None:
        with self._lock:
            self.objects[path].plan.extend(faults)

    def gets(self, path: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if path is None or s.path == path]

    def reset(self) -> None:
        with self._lock:
            self.seen.clear()
            self.max_in_flight = 0

    def close(self) -> None:
        self._closing.set()  # wakes stalled handlers
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving --------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        range_header = h.headers.get("Range")
        seen = Seen(path, range_header, h.headers.get("If-Range"), h.headers.get("If-Match"))
        with self._lock:
            obj = self.objects.get(path)
            fault = obj.plan.pop(0) if obj is not None and obj.plan else Fault()
            self.seen.append(seen)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            self._answer(h, obj, fault, seen)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client went away (it timed out, or refused a lying body)
        finally:
            with self._lock:
                self._in_flight -= 1
                if obj is not None and fault.change is not None:
                    obj.body, obj.etag = fault.change

    def _answer(self, h: BaseHTTPRequestHandler, obj: Obj | None, fault: Fault, seen: Seen) -> None:
        if obj is None:
            seen.status = 404
            h.send_error(404)
            return
        if obj.delay:
            self._closing.wait(obj.delay)
        if fault.status is not None:
            seen.status = fault.status
            h.send_response(fault.status)
            for k, v in fault.headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(fault.body)))
            h.end_headers()
            h.wfile.write(fault.body)
            return
        if obj.conditional and seen.if_match is not None and seen.if_match not in ("*", obj.etag):
            seen.status = 412
            h.send_response(412)
            if obj.etag:
                h.send_header("ETag", obj.etag)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        body = obj.body
        if fault.corrupt:
            body = bytes([body[0] ^ 0xFF]) + body[1:] if body else b"x"
        start, end = 0, len(body)
        status = 200
        m = _RANGE.fullmatch(seen.range or "")
        changed = seen.if_range is not None and seen.if_range != obj.etag  # If-Range: whole object
        if obj.ranges and not fault.ignore_range and not changed and m is not None:
            start = int(m[1]) + fault.shift
            end = min(len(body), int(m[2]) + 1) if m[2] else len(body)
            if start >= len(body):
                seen.status = 416
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(body)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            status = 206
        payload = body[start:end] + b"\0" * fault.extra
        seen.status = status
        h.send_response(status)
        if obj.ranges:
            h.send_header("Accept-Ranges", "bytes")
        if obj.etag:
            h.send_header("ETag", obj.etag)
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
        if not fault.no_length:
            h.send_header("Content-Length", str(fault.length if fault.length is not None else len(payload)))
        h.end_headers()
        if fault.cut is not None:
            h.wfile.write(payload[: fault.cut])
            h.wfile.flush()
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault.stall is not None:
            h.wfile.write(payload[: fault.stall_after])
            h.wfile.flush()
            self._closing.wait(fault.stall)
            payload = payload[fault.stall_after :]
        view = memoryview(payload)
        t0 = time.monotonic()
        for i in range(0, len(view), 1 << 20):
            if obj.rate is not None:
                self._closing.wait(max(0.0, t0 + i / obj.rate - time.monotonic()))
            h.wfile.write(view[i : i + (1 << 20)])


def s3_error(status: int, code: str) -> Fault:
    """A fault that answers as S3 does when it refuses a request: ``<Error><Code>`` XML."""
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>injected by the test</Message>'
        "<RequestId>0</RequestId></Error>"
    ).encode()
    return Fault(status=status, headers={"Content-Type": "application/xml"}, body=body)


@dataclass
class Proxied:
    """One request that reached a :class:`FaultProxy`; ``status`` is what the client got."""

    method: str
    path: str
    range: str | None
    status: int = 0


class FaultProxy:
    """A reverse proxy on 127.0.0.1 (port 0) in front of another local server (moto's S3), with
    the same per-path fault plans as :class:`FaultServer`: ``status`` (+ ``headers``/``body``)
    answers instead of the upstream, ``cut`` forwards the upstream's headers and that many body
    bytes and then drops the connection.  Every other request is forwarded as it is.  HTTP/1.0:
    each answer closes its connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.plans: dict[str, list[Fault]] = {}
        self.seen: list[Proxied] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy._handle(self)

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def plan(self, path: str, *faults: Fault) -> None:
        with self._lock:
            self.plans.setdefault(path, []).extend(faults)

    def gets(self, path: str | None = None) -> list[Proxied]:
        with self._lock:
            return [s for s in self.seen if s.method == "GET" and (path is None or s.path == path)]

    def reset(self) -> None:
        with self._lock:
            self.seen.clear()
            self.max_in_flight = 0

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        seen = Proxied(h.command, path, h.headers.get("Range"))
        with self._lock:
            plan = self.plans.get(path) if h.command == "GET" else None
            fault = plan.pop(0) if plan else Fault()
            self.seen.append(seen)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            self._answer(h, fault, seen)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        finally:
            with self._lock:
                self._in_flight -= 1

    def _answer(self, h: BaseHTTPRequestHandler, fault: Fault, seen: Proxied) -> None:
        if fault.status is not None:
            seen.status = fault.status
            h.send_response(fault.status)
            for k, v in fault.headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(fault.body)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(fault.body)
            return
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("connection", "keep-alive")}
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            conn.request(h.command, h.path, body=body, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            if fault.hook is not None:
                fault.hook()
            seen.status = resp.status
            h.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                    h.send_header(k, v)
            length_header = resp.getheader("Content-Length") if h.command == "HEAD" else None
            h.send_header("Content-Length", length_header or str(len(payload)))  # HEAD: the object's size
            h.end_headers()
        finally:
            conn.close()
        if h.command == "HEAD":
            return
        if fault.cut is not None:
            h.wfile.write(payload[: fault.cut])
            h.wfile.flush()
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.wfile.write(payload)


def wait_for(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
