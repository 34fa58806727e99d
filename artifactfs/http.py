"""The http(s) scheme adapter over :mod:`artifactfs.transfer` (which owns the retry loop,
``Retry-After``, the parallel-range engine and the pooled connections): what an answer must look
like, and how a body is read.

:func:`download` writes one object of known size into a file descriptor, for the store to verify:

* **Timeouts.**  Connecting and every socket read are bounded (``Policy.connect_timeout``,
  ``Policy.read_timeout``): a stalled body fails, it never hangs (the W&B SDK has no read timeout).
* **Retries.**  Connection errors, timeouts, bodies cut short, 408, 429 and 5xx are retried with
  exponential back-off and jitter; ``Retry-After`` is honoured up to ``Policy.retry_after_max``.
  Retries are bounded three ways: tries in a row that bring no new byte (``attempts``), requests
  per stream or part (``max_requests``) and seconds spent waiting per download (``retry_budget``),
  by :class:`artifactfs.transfer.Transfer`.
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
  joined before :func:`download` returns or raises: nothing writes to the file afterwards
  (:func:`artifactfs.transfer.download`, shared with s3).
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

import logging
import re
import time
from collections.abc import Callable

import requests
import urllib3

from . import transfer
from .digests import MD5, b64_digest, new_hasher
from .errors import AuthError, FetchError, SourceChanged
from .fsutil import redact_uri
from .sources import Progress
from .transfer import DEFAULT_POLICY, ByteRange, Policy, Transient, Write

log = logging.getLogger(__name__)

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


class _HttpTransfer(transfer.Transfer):
    """One object at one URL (the retry accounting is :class:`artifactfs.transfer.Transfer`'s)."""

    def __init__(
        self,
        url: str,
        size: int | None,
        what: str,
        policy: Policy,
        expected_etag: str | None = None,
        pool: transfer.HttpPool | None = None,
    ) -> None:
        super().__init__(size, policy, thread_name="download-part")
        self.url = url
        self.expected_etag = expected_etag or None  # recorded when the entry was logged
        self.what = what
        self.shown = redact_uri(url)
        self.pool = pool or transfer.default_pool()
        self.ranges_ok = False  # Accept-Ranges: bytes seen, or a 206 received
        self.etag: str | None = None

    def error(self, problem: str) -> str:
        return f"GET {self.shown} ({self.what}): {problem}"

    # -- one request ---------------------------------------------------------------------------

    def request(
        self,
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
        self.counted()
        try:
            resp = self.pool.get(
                self.url,
                headers=headers,
                timeout=(self.policy.connect_timeout, self.policy.read_timeout),
                netrc=self.policy.netrc,
            )
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise Transient(type(exc).__name__) from None
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
            raise Transient(f"HTTP {status}", transfer.retry_after(resp.headers.get("Retry-After")))
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
                    raise transfer.Cancelled
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
                    raise Transient("body cut")
                buf += data[:want]  # read1 returns at most amt; never write past the end anyway
                if len(buf) >= self.policy.chunk:
                    flush()
            flush()
        except Transient as exc:
            flush()
            raise Transient(f"{exc.problem} at byte {rng.pos} of {rng.end or 'unknown'}") from None
        if not rng.part:
            try:
                extra = _read(resp, 1)
            except Transient:
                return  # every byte arrived; a slow close is not a failure (the store checks all)
            if extra:
                raise FetchError(self.error(f"the server sends more than {rng.end} bytes"))


def _read(resp: requests.Response, amount: int) -> bytes:
    """Up to ``amount`` bytes of the body, as soon as any have arrived (``read1``: bytes
    received before a timeout are not held back in a buffer and lost with it)."""
    try:
        data: bytes = resp.raw.read1(amount, decode_content=False)
    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
        raise Transient(f"body failed ({type(exc).__name__})") from None
    return data


def _content_length(resp: requests.Response) -> int | None:
    value = resp.headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


class _NoProgress:
    def advance(self, end: int) -> None:
        pass

    def restart(self) -> None:
        pass

    def wrote(self, offset: int, data: bytes) -> None:
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
    pool: transfer.HttpPool | None = None,
) -> None:
    """Write the ``size`` bytes at ``url`` into ``fd`` (empty, opened for writing).

    ``progress.advance(end)`` is called whenever bytes ``[0, end)`` of the file are final, and
    ``progress.restart()`` after the file was truncated to be written again from byte 0.
    ``etag``: the ETag recorded when the entry was logged; the server must still have it
    (SourceChanged otherwise).  ``pool``: the connections to use (default: the process's).
    Raises FetchError (SourceChanged) or AuthError; never leaves a thread writing to ``fd``."""
    one = _HttpTransfer(url, size, what, policy, etag, pool)
    t0 = time.monotonic()
    transfer.download(one, fd, size, progress if progress is not None else _NoProgress())
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "GET %s (%s): %d bytes in %d requests, %.3fs", one.shown, what, size, one.requests, time.monotonic() - t0
        )


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

    one = _HttpTransfer(url, None, what or redact_uri(url), policy)
    rng = ByteRange(0, None)
    one.fetch(rng, write, restart)
    return b64_digest(hasher[0]), rng.pos, one.etag
