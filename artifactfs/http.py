"""HTTP(S) downloads with requests: the only module besides the W&B client that imports requests.

:func:`download` writes one object of known size into a file descriptor, for the store to verify:

* **Timeouts.**  Connecting and every socket read are bounded (``Policy.connect_timeout``,
  ``Policy.read_timeout``): a stalled body fails, it never hangs (the W&B SDK has no read timeout).
* **Retries.**  Connection errors, timeouts, bodies cut short, 408, 429 and 5xx are retried with
  exponential back-off and jitter; ``Retry-After`` is honoured up to ``Policy.retry_after_max``.
  Retries are bounded three ways: tries in a row that bring no new byte (``attempts``), requests
  per stream or part (``max_requests``) and seconds spent waiting per download (``retry_budget``).
  401/403 (an expired presigned URL, say) is an :class:`~artifactfs.errors.AuthError` and 404 and
  other client errors a :class:`~artifactfs.errors.FetchError`, at once.
* **Resume.**  A body cut mid-way is resumed with ``Range: bytes=N-`` (and ``If-Range`` when the
  server gave a strong ETag) if the server answered ``Accept-Ranges: bytes``; the ``206``'s
  ``Content-Range`` must start at ``N``.  A server that answers ``200`` instead is read again
  from byte 0 (the file is truncated and ``progress.restart()`` called).
* **Parallel ranges.**  An object of ``parallel_threshold`` bytes or more is asked for as
  ``part_size`` ranges.  The first part's request is the probe: a ``206`` starts ``workers - 1``
  more threads on the other parts (the caller's thread is a worker too), a ``200`` means the
  server ignores ranges and the whole body is read as one stream.  Parts are written with
  ``os.pwrite``; ``progress.advance(end)`` is told whenever the contiguous prefix ``[0, end)`` of
  the file grows, so the store can hash it while later parts still arrive.  All threads are
  joined before :func:`download` returns or raises: nothing writes to the file afterwards.
* **Bounded size.**  Never more than ``size`` bytes are read: a ``Content-Length`` or
  ``Content-Range`` that disagrees is refused before the body is read, and a body that runs on
  past ``size`` is refused after one extra byte.
* **Unchanged source.**  A reference entry that recorded the server's ETag when it was logged
  (``extra.etag``, as the wandb SDK and :func:`checksum` record it) is fetched only while the
  server still has that ETag: every request (parts and resumes too) carries ``If-Match`` with it
  when it is a strong ETag, and the ``ETag`` of every answer is compared with it before any body
  byte is read (servers that ignore ``If-Match``, weak ETags).  A ``412`` or a different ETag is
  :class:`~artifactfs.errors.SourceChanged`: the object was replaced since it was logged, and
  downloading it only to fail the digest check would waste the whole transfer.  An answer
  without an ETag is read (the store still verifies every byte against the entry's digest).
* **No secrets in errors.**  Messages show URLs through :func:`~artifactfs.fsutil.redact_uri`
  (no user info, no query string) and foreign exceptions only by their type name.

Bytes are asked for with ``Accept-Encoding: identity`` and never decoded, so ranges, sizes and
digests all refer to the bytes the server stores.  :func:`checksum` hashes an object of unknown
size with the same retry rules (for logging a reference).
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
import urllib3

from . import metrics
from .errors import AuthError, FetchError, SourceChanged
from .fsutil import redact_uri
from .manifest import MD5, b64_digest, new_hasher
from .registry.base import Progress

log = logging.getLogger(__name__)

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class Policy:
    """Timeouts, retry bounds and the parallel download's shape."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # per socket read: a stalled body fails instead of hanging
    attempts: int = 6  # tries in a row that bring no new byte, per stream or part
    max_requests: int = 64  # requests per stream or part, whatever their progress
    backoff: float = 0.5  # first wait; doubled per failure up to backoff_max, with jitter
    backoff_max: float = 10.0
    retry_after_max: float = 30.0  # a longer Retry-After gives up at once
    retry_budget: float = 120.0  # seconds of waiting between tries, per download
    # A transfer must average min_rate bytes/s after a grace period: a server trickling bytes
    # just inside read_timeout cannot hold a reader (and a fetch thread) for ever.
    rate_grace: float = 60.0
    min_rate: float = 256 * 1024
    parallel_threshold: int = 64 * MiB
    part_size: int = 16 * MiB
    workers: int = 4
    chunk: int = 1 * MiB
    # False: never let requests add ~/.netrc credentials for the URL's host (presigned URLs
    # carry their own; an Authorization header would break the signature or leak a key).
    netrc: bool = True


DEFAULT_POLICY = Policy()


class _NoCredentials(requests.auth.AuthBase):
    """An auth that adds nothing: passing it keeps requests from looking in ~/.netrc."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


class _RedactQueries(logging.Filter):
    """urllib3 logs request paths with their query strings at DEBUG, and presigned URLs carry
    their signatures there: strip every query string from such records' arguments."""

    _QUERY = re.compile(r"\?[^\s\"']*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._QUERY.sub("", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = self._QUERY.sub("", record.msg)
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_RedactQueries())

_local = threading.local()
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def etag_opaque(etag: str) -> str:
    """An ETag without its weakness prefix and quotes: ``W/"abc"`` -> ``abc``, for comparing ETags
    recorded in different forms (the SDK keeps the quotes of http ETags, not of s3 ones)."""
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag.strip('"')


def etag_is_weak(etag: str) -> bool:
    return etag.strip().startswith("W/")


def _quoted(etag: str) -> str:
    etag = etag.strip()
    return etag if etag.startswith('"') else f'"{etag}"'


def _session() -> requests.Session:
    """One session per thread: requests.Session is not documented as thread-safe."""
    session: requests.Session | None = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    return session


class _Transient(Exception):
    """A failure worth another try: connection error, timeout, cut body, 408/429/5xx."""

    def __init__(self, problem: str, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.retry_after = retry_after


class _Cancelled(Exception):
    """Another part of the same download failed: stop quietly."""


@dataclass(slots=True)
class ByteRange:
    """Bytes ``[start, end)`` of the object; ``pos`` is the next byte wanted.  ``end`` is None
    while the size is unknown (``checksum``).  ``part``: asked for with a closed Range."""

    start: int
    end: int | None
    part: bool = False
    pos: int = field(init=False)
    high: int = field(init=False)  # the furthest pos ever reached (progress, across restarts)

    def __post_init__(self) -> None:
        self.pos = self.high = self.start

    @property
    def done(self) -> bool:
        return self.end is not None and self.pos >= self.end


Write = Callable[[int, bytes], None]


class _Transfer:
    """One object at one URL: retry accounting shared by all its streams and parts."""

    def __init__(self, url: str, size: int | None, what: str, policy: Policy, expected_etag: str | None = None) -> None:
        self.url = url
        self.expected_etag = expected_etag or None  # recorded when the entry was logged
        self.size = size
        self.what = what
        self.policy = policy
        self.shown = redact_uri(url)
        self.cancel = threading.Event()
        self.ranges_ok = False  # Accept-Ranges: bytes seen, or a 206 received
        self.etag: str | None = None
        self.requests = 0
        self._lock = threading.Lock()
        self._waited = 0.0
        self._started = time.monotonic()
        self._received = 0

    def received(self, n: int) -> None:
        """Count ``n`` more bytes; FetchError if the transfer is slower than ``min_rate``."""
        with self._lock:
            self._received += n
            received = self._received
        elapsed = time.monotonic() - self._started - self._waited  # back-off waits do not count
        if elapsed > self.policy.rate_grace + received / self.policy.min_rate:
            raise FetchError(
                self.error(f"too slow: {received} bytes in {elapsed:.0f}s (minimum {self.policy.min_rate:g} B/s)")
            )

    def error(self, problem: str) -> str:
        return f"GET {self.shown} ({self.what}): {problem}"

    # -- one range, with retries -----------------------------------------------------------------

    def fetch(
        self,
        session: requests.Session,
        rng: ByteRange,
        write: Write,
        restart: Callable[[], None] | None = None,
        advanced: Callable[[ByteRange], None] | None = None,
        on_ranged: Callable[[], None] | None = None,
    ) -> None:
        """Fetch ``rng`` into ``write(offset, data)``, in order, retrying and resuming.

        ``advanced(rng)`` is called after each write, once ``rng.pos`` counts it.  ``restart`` is
        called when a resumed request is answered from byte 0 (``write`` then starts again at 0).
        ``on_ranged`` makes ``rng`` (a part) a probe: it is called when a 206 confirms that the
        server serves ranges; a 200 instead turns ``rng`` into the whole object."""
        failures = 0
        problem = ""
        retry_after: float | None = None
        for n in range(self.policy.max_requests):
            if n:
                if rng.done:
                    return  # the failure came after the last byte
                self._wait(failures, problem, retry_after)
            if self.cancel.is_set():
                raise _Cancelled
            try:
                self._request(session, rng, write, restart, advanced, on_ranged)
                return
            except _Transient as exc:
                problem, retry_after = exc.problem, exc.retry_after
                if rng.pos > rng.high:
                    rng.high = rng.pos
                    failures = 1
                else:
                    failures += 1
        raise FetchError(self.error(f"{problem}; gave up after {self.policy.max_requests} requests"))

    def _wait(self, failures: int, problem: str, retry_after: float | None) -> None:
        policy = self.policy
        if failures >= policy.attempts:
            raise FetchError(self.error(f"{problem}; gave up after {failures} tries without progress"))
        if retry_after is not None and retry_after > policy.retry_after_max:
            raise FetchError(self.error(f"{problem}; the server asks to retry after {retry_after:g}s: giving up"))
        delay = min(policy.backoff_max, policy.backoff * 2 ** (failures - 1))
        delay = delay / 2 + random.uniform(0, delay / 2)  # jitter: many readers do not retry in step
        if retry_after is not None:
            delay = max(delay, retry_after)
        with self._lock:
            if self._waited + delay > policy.retry_budget:
                raise FetchError(self.error(f"{problem}; gave up after waiting {self._waited:.1f}s for retries"))
            self._waited += delay
        log.warning("%s; retrying in %.2fs", self.error(problem), delay)
        metrics.RETRIES.add()
        if self.cancel.wait(delay):
            raise _Cancelled

    # -- one request ---------------------------------------------------------------------------

    def _request(
        self,
        session: requests.Session,
        rng: ByteRange,
        write: Write,
        restart: Callable[[], None] | None,
        advanced: Callable[[ByteRange], None] | None,
        on_ranged: Callable[[], None] | None,
    ) -> None:
        headers = {"Accept-Encoding": "identity"}
        ranged = rng.part or (rng.pos > rng.start and self.ranges_ok)
        if ranged:
            last = "" if rng.end is None or not rng.part else str(rng.end - 1)
            headers["Range"] = f"bytes={rng.pos}-{last}"
            if self.expected_etag is None and self.etag is not None and not etag_is_weak(self.etag):
                headers["If-Range"] = self.etag  # changed meanwhile: a 200 with the new content
        if self.expected_etag is not None and not etag_is_weak(self.expected_etag):
            headers["If-Match"] = _quoted(self.expected_etag)  # changed since logged: 412, no body
        with self._lock:
            self.requests += 1
        try:
            resp = session.get(
                self.url,
                headers=headers,
                stream=True,
                timeout=(self.policy.connect_timeout, self.policy.read_timeout),
                auth=None if self.policy.netrc else _NoCredentials(),
            )
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise _Transient(type(exc).__name__) from None
        except requests.RequestException as exc:  # a bad URL, too many redirects...: no retry helps
            raise FetchError(self.error(type(exc).__name__)) from None
        with resp:
            self._check_status(resp)
            self._check_etag(resp)
            if resp.status_code == 206:
                self._check_content_range(resp, rng)
                self.ranges_ok = True
                if self.etag is None:  # later parts and resumes ask If-Range with it
                    self.etag = resp.headers.get("ETag") or None
                if on_ranged is not None and rng.part:
                    on_ranged()
            else:  # 200: the whole object from byte 0
                if rng.part:
                    if on_ranged is None or self.ranges_ok:
                        raise FetchError(self.error("a Range request got the whole object (has it changed?)"))
                    rng.part = False  # a probe answered with the whole object: one stream
                self._check_length(resp, self.size)
                rng.end = self.size if self.size is not None else _content_length(resp)
                if rng.pos > rng.start:
                    if restart is None:
                        raise FetchError(self.error("the server ignored a Range request"))
                    log.info("%s: server answered from byte 0; reading again", self.error("resume"))
                    restart()
                    rng.pos = 0
                if resp.headers.get("Accept-Ranges", "").strip().lower() == "bytes":
                    self.ranges_ok = True
                self.etag = resp.headers.get("ETag") or None  # this body's, not a previous one's
            self._read_body(resp, rng, write, advanced)

    def _check_status(self, resp: requests.Response) -> None:
        status = resp.status_code
        if status in (200, 206):
            return
        if status in (401, 403):
            raise AuthError(self.error(f"HTTP {status} (credentials refused or the URL has expired)"))
        if status in (408, 429) or 500 <= status < 600:
            raise _Transient(f"HTTP {status}", _retry_after(resp.headers.get("Retry-After")))
        if status == 416:
            raise FetchError(self.error("HTTP 416: the object is shorter than expected"))
        if status == 412 and self.expected_etag is not None:
            raise self._changed(resp.headers.get("ETag"))
        raise FetchError(self.error(f"HTTP {status}"))

    def _check_etag(self, resp: requests.Response) -> None:
        """SourceChanged when the answer's ETag is not the one recorded at log time; checked
        before the body is read, on every answer (parts and resumes too)."""
        if self.expected_etag is None:
            return
        etag = resp.headers.get("ETag")
        if etag is not None and etag_opaque(etag) != etag_opaque(self.expected_etag):
            raise self._changed(etag)

    def _changed(self, etag: str | None) -> SourceChanged:
        assert self.expected_etag is not None
        now = f"ETag {etag.strip()}" if etag else "a different ETag"
        return SourceChanged(
            self.error(
                f"the source changed since it was logged: ETag {self.expected_etag.strip()} was recorded, "
                f"the server now has {now}"
            )
        )

    def _check_length(self, resp: requests.Response, expected: int | None) -> None:
        length = _content_length(resp)
        if expected is not None and length is not None and length != expected:
            raise FetchError(self.error(f"the server sends {length} bytes, expected {expected}"))

    def _check_content_range(self, resp: requests.Response, rng: ByteRange) -> None:
        header = resp.headers.get("Content-Range", "")
        m = _CONTENT_RANGE.fullmatch(header.strip())
        if m is None:
            raise FetchError(self.error(f"206 with an invalid Content-Range {header[:80]!r}"))
        first, last, total = int(m[1]), int(m[2]), m[3]
        if first != rng.pos:
            raise FetchError(self.error(f"asked for bytes from {rng.pos}, the server sends from {first}"))
        if total != "*" and self.size is not None and int(total) != self.size:
            raise FetchError(self.error(f"the object has {total} bytes, expected {self.size}"))
        if rng.end is None and total != "*":
            rng.end = int(total)
        end = rng.end if rng.end is not None else last + 1
        if last + 1 != end:
            raise FetchError(self.error(f"asked for bytes {rng.pos}-{end - 1}, the server sends {first}-{last}"))
        self._check_length(resp, end - rng.pos)

    def _read_body(
        self, resp: requests.Response, rng: ByteRange, write: Write, advanced: Callable[[ByteRange], None] | None
    ) -> None:
        """Read the body into ``write`` in pieces of up to ``chunk`` bytes.  Whatever arrived is
        written before a failure is raised, so a resume starts right after the last byte."""
        buf = bytearray()

        def flush() -> None:
            if buf:
                write(rng.pos, bytes(buf))
                rng.pos += len(buf)  # only now: another thread may read pos to find the written prefix
                buf.clear()
                if advanced is not None:
                    advanced(rng)

        try:
            while rng.end is None or rng.pos + len(buf) < rng.end:
                if self.cancel.is_set():
                    raise _Cancelled
                want = self.policy.chunk - len(buf)
                if rng.end is not None:
                    want = min(want, rng.end - rng.pos - len(buf))
                data = _read(resp, want)
                self.received(len(data))
                if not data:
                    if rng.end is None:  # the size was unknown: the body's end is the object's end
                        flush()
                        rng.end = rng.pos
                        return
                    raise _Transient("body cut")
                buf += data[:want]  # read1 returns at most amt; never write past the end anyway
                if len(buf) >= self.policy.chunk:
                    flush()
            flush()
        except _Transient as exc:
            flush()
            raise _Transient(f"{exc.problem} at byte {rng.pos} of {rng.end or 'unknown'}") from None
        if not rng.part:
            try:
                extra = _read(resp, 1)
            except _Transient:
                return  # every byte arrived; a slow close is not a failure (the store checks all)
            if extra:
                raise FetchError(self.error(f"the server sends more than {rng.end} bytes"))


def _read(resp: requests.Response, amount: int) -> bytes:
    """Up to ``amount`` bytes of the body, as soon as any have arrived (``read1``: bytes
    received before a timeout are not held back in a buffer and lost with it)."""
    try:
        data: bytes = resp.raw.read1(amount, decode_content=False)
    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
        raise _Transient(f"body failed ({type(exc).__name__})") from None
    return data


def _content_length(resp: requests.Response) -> int | None:
    value = resp.headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _NoProgress:
    def advance(self, end: int) -> None:
        pass

    def restart(self) -> None:
        pass


def download(
    url: str,
    fd: int,
    size: int,
    what: str,
    progress: Progress | None = None,
    *,
    policy: Policy = DEFAULT_POLICY,
    etag: str | None = None,
) -> None:
    """Write the ``size`` bytes at ``url`` into ``fd`` (empty, opened for writing).

    ``progress.advance(end)`` is called whenever bytes ``[0, end)`` of the file are final, and
    ``progress.restart()`` after the file was truncated to be written again from byte 0.
    ``etag``: the ETag recorded when the entry was logged; the server must still have it
    (SourceChanged otherwise).  Raises FetchError (SourceChanged) or AuthError; never leaves a
    thread writing to ``fd``."""
    sink = progress if progress is not None else _NoProgress()
    transfer = _Transfer(url, size, what, policy, etag)
    t0 = time.monotonic()
    if size >= policy.parallel_threshold and size > policy.part_size and policy.workers > 1:
        _download_parts(transfer, fd, size, sink)
    else:
        _download_stream(transfer, fd, size, sink)
    log.debug(
        "GET %s (%s): %d bytes in %d requests, %.3fs",
        transfer.shown,
        what,
        size,
        transfer.requests,
        time.monotonic() - t0,
    )


def offset_writer(fd: int) -> Write:
    def write(offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    return write


def _restarter(fd: int, progress: Progress) -> Callable[[], None]:
    def restart() -> None:
        os.ftruncate(fd, 0)
        progress.restart()

    return restart


def _download_stream(transfer: _Transfer, fd: int, size: int, progress: Progress) -> None:
    def advanced(rng: ByteRange) -> None:
        progress.advance(rng.pos)

    transfer.fetch(_session(), ByteRange(0, size), offset_writer(fd), _restarter(fd, progress), advanced)


class Parts:
    """The parts of a parallel download, and the contiguous prefix they have written."""

    def __init__(self, size: int, part_size: int) -> None:
        self.ranges = [ByteRange(a, min(a + part_size, size), part=True) for a in range(0, size, part_size)]
        self.size = size
        self._next = 1  # part 0 is the probe, fetched first by the calling thread
        self._first_open = 0  # parts before this one are complete
        self._lock = threading.Lock()

    def take(self) -> ByteRange | None:
        with self._lock:
            if self._next >= len(self.ranges):
                return None
            self._next += 1
            return self.ranges[self._next - 1]

    def prefix(self) -> int:
        """End of the contiguous written prefix ``[0, end)``."""
        with self._lock:
            i = self._first_open
            while i < len(self.ranges) and self.ranges[i].done:
                i += 1
            self._first_open = i
            return self.ranges[i].pos if i < len(self.ranges) else self.size


def _download_parts(transfer: _Transfer, fd: int, size: int, progress: Progress) -> None:
    parts = Parts(size, transfer.policy.part_size)
    probe = parts.ranges[0]
    write = offset_writer(fd)
    errors: list[BaseException] = []
    threads: list[threading.Thread] = []

    def advanced(rng: ByteRange) -> None:
        progress.advance(parts.prefix() if rng.part else rng.pos)

    def work(session: requests.Session) -> None:
        while (rng := parts.take()) is not None:
            transfer.fetch(session, rng, write, None, advanced)

    def worker() -> None:
        try:
            with requests.Session() as session:
                work(session)
        except _Cancelled:
            pass
        except BaseException as exc:
            errors.append(exc)
            transfer.cancel.set()

    def start_workers() -> None:  # once the probe's 206 shows that the server serves ranges
        if threads:
            return
        for i in range(min(transfer.policy.workers, len(parts.ranges)) - 1):
            t = threading.Thread(target=worker, name=f"download-part-{i}", daemon=True)
            t.start()
            threads.append(t)

    try:
        # Only a probe answered with 200 (no other part started) may restart from byte 0.
        transfer.fetch(_session(), probe, write, _restarter(fd, progress), advanced, start_workers)
        if not probe.part:
            return  # the server ignored Range: the probe read the whole object as one stream
        work(_session())
    except _Cancelled:
        pass
    except BaseException:
        transfer.cancel.set()
        raise
    finally:
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


def checksum(
    url: str, alg: str = MD5, what: str = "", *, policy: Policy = DEFAULT_POLICY
) -> tuple[str, int, str | None]:
    """Hash the object at ``url`` as it streams (nothing is stored): ``(b64 digest, size, ETag)``.

    Same timeouts, retries and resume as :func:`download`; the size comes from the response.
    """
    hasher = [new_hasher(alg)]

    def write(offset: int, data: bytes) -> None:
        hasher[0].update(data)

    def restart() -> None:
        hasher[0] = new_hasher(alg)

    transfer = _Transfer(url, None, what or redact_uri(url), policy)
    rng = ByteRange(0, None)
    transfer.fetch(_session(), rng, write, restart)
    return b64_digest(hasher[0]), rng.pos, transfer.etag
