"""Moving bytes over the network: the one place for retries, ``Retry-After``, the parallel-range
engine and pooled HTTP connections.  The scheme adapters (:mod:`artifactfs.http` for http(s)
and W&B file URLs, :mod:`artifactfs.s3` for s3) and the W&B client's GraphQL calls sit on it.

* **Retries** (:class:`Retries`, :func:`retrying`).  Exponential back-off from ``backoff``,
  doubled per failure up to ``backoff_max``, with jitter (the wait is drawn from its upper half,
  so many readers do not retry in step); a ``Retry-After`` longer than the wait is honoured, and
  one longer than ``retry_after_max`` gives up at once.  Bounded by a budget of seconds spent
  waiting and, for a call, a deadline.  A failure worth another try is a :class:`Transient`.
* **One object** (:class:`Transfer`).  The retry accounting of one object shared by all its
  streams and parts: a range is retried and resumed right after its last written byte, at most
  ``max_requests`` requests, at most ``attempts`` tries in a row that bring no new byte; the
  transfer must average ``min_rate`` bytes/s after ``rate_grace`` seconds.  An adapter
  subclasses it with the one request of its scheme (:meth:`Transfer.request`).
* **The range engine** (:func:`download`).  An object of ``parallel_threshold`` bytes or more
  is fetched as ``part_size`` ranges.  The first part is the probe: once its answer shows that
  the other parts may follow, ``workers - 1`` more threads start on them (the caller's thread
  is a worker too); an answer with the whole object instead ends the download as one stream.
  Parts are written with ``os.pwrite``; ``progress.advance(end)`` is told whenever the
  contiguous prefix ``[0, end)`` grows, so the store hashes it while later parts still arrive.
  All threads are joined before :func:`download` returns or raises.
* **Pooled HTTP** (:class:`HttpPool`).  One connection pool per process for file GETs (and one
  per W&B client), shared by every thread; each thread has its own ``requests.Session`` over
  it.  requests reads the proxy environment (and ``~/.netrc``) again on every request unless
  told not to: here the sessions ignore the environment and the pool resolves it once (proxies
  and CA bundle when it is made; which proxy and which netrc credentials once per host).  netrc
  credentials are added only where asked for (reference URLs, as the wandb SDK does), never to
  presigned URLs, which carry their own signature.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import random
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pycurl
import requests
import requests.adapters
import requests.structures
import requests.utils
import urllib3

from . import metrics
from .errors import FetchError
from .sources import Progress

log = logging.getLogger(__name__)

MiB = 1 << 20
T = TypeVar("T")


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
    # Parts in flight for one large object.  8 against 4 on the emulated WAN (100 MB/s a
    # connection, as object stores cap a stream): a 512 MiB file's first byte 1.33-1.43 s
    # against 1.89-2.00 s (docs/PERFORMANCE.md); the AWS CLI's default is 10.
    workers: int = 8
    chunk: int = 1 * MiB
    # False: never add ~/.netrc credentials for the URL's host (presigned URLs carry their
    # own; an Authorization header would break the signature or leak a key).
    netrc: bool = True


DEFAULT_POLICY = Policy()


# -- retries --------------------------------------------------------------------------------------


class Transient(Exception):
    """A failure worth another try: connection error, timeout, cut body, 408/429/5xx,
    throttling.  ``retry_after``: what the server asked for, in seconds."""

    def __init__(self, problem: str, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.retry_after = retry_after


class Cancelled(Exception):
    """Another part of the same download failed: stop quietly."""


class GaveUp(Exception):
    """The retry bounds are reached; the message says what failed last and which bound."""


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds, fractions accepted, or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
    return seconds if seconds >= 0 else 0.0  # NaN too


class Retries:
    """The waits between the tries of one operation (thread-safe: the parts of one download
    share one budget).  ``cancel``: set by another thread to end a wait at once (:class:`Cancelled`)."""

    def __init__(
        self,
        *,
        backoff: float,
        backoff_max: float,
        retry_after_max: float,
        budget: float,
        deadline: float = math.inf,
        cancel: threading.Event | None = None,
    ) -> None:
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.budget = budget
        self.deadline = deadline
        self.cancel = cancel
        self.waited = 0.0
        self._start = time.monotonic()
        self._lock = threading.Lock()

    def wait(self, failures: int, failed: str, after: float | None = None) -> None:
        """Wait before the next try, after ``failures`` failed tries (1 or more); ``failed``
        says what failed (it starts the log line and any :class:`GaveUp` message), ``after`` is
        the server's ``Retry-After``."""
        if after is not None and after > self.retry_after_max:
            raise GaveUp(f"{failed}; the server asks to retry after {after:g}s: giving up")
        delay = min(self.backoff_max, self.backoff * 2 ** (failures - 1))
        delay = delay / 2 + random.uniform(0, delay / 2)  # jitter: many readers do not retry in step
        if after is not None:
            delay = max(delay, after)
        with self._lock:
            if self.waited + delay > self.budget or time.monotonic() - self._start + delay > self.deadline:
                raise GaveUp(f"{failed}; gave up after waiting {self.waited:.1f}s for retries")
            self.waited += delay
        log.warning("%s; retrying in %.2fs", failed, delay)
        metrics.RETRIES.add()
        if self.cancel is None:
            time.sleep(delay)
        elif self.cancel.wait(delay):
            raise Cancelled


def retrying(
    what: str,
    attempt: Callable[[], T],
    *,
    attempts: int,
    backoff: float,
    backoff_max: float,
    retry_after_max: float,
    budget: float,
    deadline: float = math.inf,
) -> T:
    """Call ``attempt`` until it returns, at most ``attempts`` times, waiting with
    :class:`Retries` after each :class:`Transient` failure; :class:`GaveUp` when a bound is
    reached.  For calls whose answer is read whole (GraphQL, a manifest)."""
    retries = Retries(
        backoff=backoff, backoff_max=backoff_max, retry_after_max=retry_after_max, budget=budget, deadline=deadline
    )
    failed, n = f"{what}: no attempt made", 0
    for n in range(1, attempts + 1):
        try:
            return attempt()
        except Transient as exc:
            failed = f"{what}: {exc.problem}"
            after = exc.retry_after
        if n == attempts:
            break
        retries.wait(n, failed, after)
    raise GaveUp(f"{failed}; gave up after {n} tries")


# -- one object -----------------------------------------------------------------------------------


@dataclass(slots=True)
class ByteRange:
    """Bytes ``[start, end)`` of the object; ``pos`` is the next byte wanted.  ``end`` is None
    while the size is unknown (a checksum).  ``part``: asked for with a closed Range."""

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


class Transfer:
    """One object: the retry accounting shared by all its streams and parts.  A scheme adapter
    subclasses it with :meth:`request` and :meth:`error`."""

    def __init__(self, size: int | None, policy: Policy, *, thread_name: str = "download-part") -> None:
        self.size = size
        self.policy = policy
        self.thread_name = thread_name
        self.cancel = threading.Event()
        self.retries = Retries(
            backoff=policy.backoff,
            backoff_max=policy.backoff_max,
            retry_after_max=policy.retry_after_max,
            budget=policy.retry_budget,
            cancel=self.cancel,
        )
        self.requests = 0
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._received = 0

    def error(self, problem: str) -> str:
        """``problem`` with the object named (no secret: no query string, no credentials)."""
        raise NotImplementedError

    def request(
        self,
        rng: ByteRange,
        write: Write,
        restart: Callable[[], None] | None,
        advanced: Callable[[ByteRange], None] | None,
        on_ranged: Callable[[], None] | None,
    ) -> None:
        """One request for ``rng`` from ``rng.pos``: its body passed to ``write`` (and
        ``rng.pos`` moved past it) before any failure is raised.  :class:`Transient` for a
        failure worth another try.  See :meth:`fetch` for the callbacks."""
        raise NotImplementedError

    def counted(self) -> None:
        """Count one request (call it as a request is sent)."""
        with self._lock:
            self.requests += 1

    def received(self, n: int) -> None:
        """Count ``n`` more bytes; FetchError if the transfer is slower than ``min_rate``."""
        with self._lock:
            self._received += n
            received = self._received
        elapsed = time.monotonic() - self._started - self.retries.waited  # back-off waits do not count
        if elapsed > self.policy.rate_grace + received / self.policy.min_rate:
            raise FetchError(
                self.error(f"too slow: {received} bytes in {elapsed:.0f}s (minimum {self.policy.min_rate:g} B/s)")
            )

    def fetch(
        self,
        rng: ByteRange,
        write: Write,
        restart: Callable[[], None] | None = None,
        advanced: Callable[[ByteRange], None] | None = None,
        on_ranged: Callable[[], None] | None = None,
    ) -> None:
        """Fetch ``rng`` into ``write(offset, data)``, in order, retrying and resuming.

        ``advanced(rng)`` is called after each write, once ``rng.pos`` counts it.  ``restart`` is
        called when a resumed request is answered from byte 0 (``write`` then starts again at 0).
        ``on_ranged`` makes ``rng`` (a part) a probe: it is called when the answer shows that
        the other parts may follow; an answer with the whole object instead turns ``rng`` into
        the whole object (``rng.part`` False)."""
        failures = 0
        problem = ""
        after: float | None = None
        for n in range(self.policy.max_requests):
            if n:
                if rng.done:
                    return  # the failure came after the last byte
                if failures >= self.policy.attempts:
                    raise FetchError(self.error(f"{problem}; gave up after {failures} tries without progress"))
                try:
                    self.retries.wait(failures, self.error(problem), after)
                except GaveUp as exc:
                    raise FetchError(str(exc)) from None
            if self.cancel.is_set():
                raise Cancelled
            try:
                self.request(rng, write, restart, advanced, on_ranged)
                return
            except Transient as exc:
                problem, after = exc.problem, exc.retry_after
                if rng.pos > rng.high:
                    rng.high = rng.pos
                    failures = 1
                else:
                    failures += 1
        raise FetchError(self.error(f"{problem}; gave up after {self.policy.max_requests} requests"))


# -- the range engine -----------------------------------------------------------------------------


def offset_writer(fd: int) -> Write:
    def write(offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    return write


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


def download(transfer: Transfer, fd: int, size: int, progress: Progress) -> None:
    """Write the ``size`` bytes of ``transfer``'s object into ``fd`` (empty, opened for
    writing): one stream, or parallel parts for a large object (see the module docstring).
    Never leaves a thread writing to ``fd``."""
    policy = transfer.policy
    write = offset_writer(fd)

    def restart() -> None:
        os.ftruncate(fd, 0)
        progress.restart()

    if size >= policy.parallel_threshold and size > policy.part_size and policy.workers > 1:
        _download_parts(transfer, size, write, restart, progress)
    else:

        def written(offset: int, data: bytes) -> None:  # one stream, in order: hashed from memory
            write(offset, data)
            progress.wrote(offset, data)

        def advanced(rng: ByteRange) -> None:
            progress.advance(rng.pos)

        transfer.fetch(ByteRange(0, size), written, restart, advanced)


def _download_parts(
    transfer: Transfer, size: int, write: Write, restart: Callable[[], None], progress: Progress
) -> None:
    parts = Parts(size, transfer.policy.part_size)
    probe = parts.ranges[0]
    errors: list[BaseException] = []
    threads: list[threading.Thread] = []

    def advanced(rng: ByteRange) -> None:
        progress.advance(parts.prefix() if rng.part else rng.pos)

    def work() -> None:
        while (rng := parts.take()) is not None:
            transfer.fetch(rng, write, None, advanced)

    def worker() -> None:
        try:
            work()
        except Cancelled:
            pass
        except BaseException as exc:
            errors.append(exc)
            transfer.cancel.set()

    def start_workers() -> None:  # once the probe's answer shows that the other parts may follow
        if threads:
            return
        for i in range(min(transfer.policy.workers, len(parts.ranges)) - 1):
            t = threading.Thread(target=worker, name=f"{transfer.thread_name}-{i}", daemon=True)
            t.start()
            threads.append(t)

    try:
        # Only a probe answered with the whole object (no other part started) may restart from 0.
        transfer.fetch(probe, write, restart, advanced, start_workers)
        if not probe.part:
            return  # the server ignored Range: the probe read the whole object as one stream
        work()
    except Cancelled:
        pass
    except BaseException:
        transfer.cancel.set()
        raise
    finally:
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


# -- pooled HTTP ----------------------------------------------------------------------------------


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


# Connections kept per host besides the fetches' requests (expect_fetches): the metadata calls
# that share a pool with them (W&B GraphQL, file-URL pages; a mount's Meta runs 8 threads at most).
MIN_POOL_SIZE = 32
_fetches_lock = threading.Lock()
_fetches = 0  # the most fetches one caller said it may run at once (expect_fetches)


def expect_fetches(n: int) -> None:
    """Someone in this process (the fetch engine: its background fetches plus the reads') may
    run ``n`` fetches at once: every :class:`HttpPool` keeps room for that many, each with its
    parallel ranges (``Policy.workers``), before its next request.  The largest ``n`` told
    holds (pools grow, never shrink)."""
    global _fetches
    with _fetches_lock:
        _fetches = max(_fetches, n)


def requests_at_once() -> int:
    """The most requests to one host that this process's fetches may have in flight at once."""
    return _fetches * Policy().workers


class HttpPool:
    """Pooled HTTP(S) connections shared by every thread, each thread with its own
    ``requests.Session`` over them (a session is not documented as thread-safe; its connection
    pool is).  The environment (proxies, CA bundle, ``~/.netrc``) is read as requests would read
    it, but once: at creation, and once per host; never per request.  A GET without
    credentials or a proxy bypasses the session (:meth:`get`)."""

    # Connections kept per host: every request that may be in flight at once (the fetches that
    # expect_fetches announced, each with its parallel ranges), so that each reuses its own: a
    # connection beyond the pool is closed after one request (urllib3 warns "Connection pool is
    # full"), and the next one pays a new handshake, a round trip on a WAN.  ``pool_size``: a
    # fixed size instead.
    def __init__(self, *, pool_size: int | None = None) -> None:
        self._fixed = pool_size
        self._size = self._wanted()
        self._adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=self._size, max_retries=0)
        self._proxies = urllib.request.getproxies()
        self._verify: bool | str = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self._local = threading.local()
        self._lock = threading.Lock()
        self._host_proxies: dict[tuple[str, str], dict[str, str]] = {}
        self._host_netrc: dict[tuple[str, str], tuple[str, str] | None] = {}

    def _wanted(self) -> int:
        return self._fixed if self._fixed is not None else MIN_POOL_SIZE + requests_at_once()

    @property
    def size(self) -> int:
        """Connections kept per host."""
        return self._size

    @property
    def verify(self) -> bool | str:
        """TLS verification as requests would do it: True (its CA bundle), False, or a CA path."""
        return self._verify

    def _fit(self) -> None:
        """Grow to what :func:`expect_fetches` announced since (new host pools get the size;
        the connections open now are dropped once, when they come back)."""
        wanted = self._wanted()
        if wanted <= self._size:
            return
        with self._lock:
            if wanted > self._size:
                self._size = wanted
                self._adapter.init_poolmanager(16, wanted, block=False)

    def session(self) -> requests.Session:
        """This thread's session over the shared pool."""
        self._fit()
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # no environment lookups per request: done here, once
            session.verify = self._verify
            session.mount("http://", self._adapter)
            session.mount("https://", self._adapter)
            self._local.session = session  # it closes with its thread; the connections stay pooled
        return session

    def proxies(self, url: str) -> dict[str, str]:
        """The proxies requests would use for ``url`` (none for a host in ``no_proxy``), from the
        environment as it was when the pool was made."""
        if not self._proxies:
            return {}
        split = urllib.parse.urlsplit(url)
        key = (split.scheme, split.netloc)
        with self._lock:
            known = self._host_proxies.get(key)
        if known is None:
            # The environment as read when the pool was made (``no`` is ``$no_proxy``), not again.
            # (proxy_bypass_environment is in urllib.request, as requests uses it, but not in typeshed.)
            bypass = urllib.request.proxy_bypass_environment(split.netloc, self._proxies)  # type: ignore[attr-defined]
            known = {} if bypass else {k: v for k, v in self._proxies.items() if k != "no"}
            with self._lock:
                self._host_proxies[key] = known
        return known

    def netrc(self, url: str) -> tuple[str, str] | None:
        """``~/.netrc``'s (or ``$NETRC``'s) credentials for ``url``'s host, read once per host."""
        split = urllib.parse.urlsplit(url)
        key = (split.scheme, split.netloc)
        with self._lock:
            if key in self._host_netrc:
                return self._host_netrc[key]
        auth = requests.utils.get_netrc_auth(url)
        with self._lock:
            self._host_netrc[key] = auth
        return auth

    def get(
        self, url: str, *, headers: dict[str, str] | None = None, timeout: tuple[float, float], netrc: bool = False
    ) -> requests.Response:
        """A streamed GET; credentials from netrc only when ``netrc`` is True.  Without
        credentials or a proxy (a presigned file URL), the request goes straight to the shared
        urllib3 pool, as requests' adapter would send it but without a ``Session``'s preparing,
        merging and hooks per request; a redirect is followed by requests."""
        if not netrc and not self.proxies(url):
            resp = self._direct_get(url, headers, timeout)
            if resp is not None:
                return resp
        return self.session().get(
            url,
            headers=headers,
            stream=True,
            timeout=timeout,
            auth=self.netrc(url) if netrc else None,
            proxies=self.proxies(url),
        )

    def _direct_get(
        self, url: str, headers: dict[str, str] | None, timeout: tuple[float, float]
    ) -> requests.Response | None:
        """``url`` fetched through the adapter's pool (its TLS settings as requests would give
        them), urllib3's errors raised as requests' (as ``HTTPAdapter.send`` maps them); None
        for a redirect (requests follows it)."""
        self._fit()
        split = urllib.parse.urlsplit(url)
        if split.scheme not in ("http", "https") or not split.hostname:
            return None
        pool_kwargs: dict[str, Any] = {}
        if split.scheme == "https":
            if self._verify is False:
                pool_kwargs["cert_reqs"] = "CERT_NONE"
            else:
                pool_kwargs["cert_reqs"] = "CERT_REQUIRED"
                ca = requests.utils.DEFAULT_CA_BUNDLE_PATH if self._verify is True else self._verify
                pool_kwargs["ca_cert_dir" if os.path.isdir(ca) else "ca_certs"] = ca
        sent = dict(_DIRECT_HEADERS)
        if headers:
            sent.update(headers)
        target = urllib.parse.urlunsplit(("", "", split.path or "/", split.query, ""))
        try:
            pool = self._adapter.poolmanager.connection_from_url(url, pool_kwargs=pool_kwargs)
            raw = pool.urlopen(
                "GET",
                target,
                headers=sent,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
                retries=_NO_RETRIES,
                timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
            )
        except urllib3.exceptions.MaxRetryError as exc:
            if isinstance(exc.reason, urllib3.exceptions.ConnectTimeoutError):
                raise requests.ConnectTimeout(exc) from None
            if isinstance(exc.reason, urllib3.exceptions.SSLError):
                raise requests.exceptions.SSLError(exc) from None
            raise requests.ConnectionError(exc) from None
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise requests.ReadTimeout(exc) from None
        except urllib3.exceptions.SSLError as exc:
            raise requests.exceptions.SSLError(exc) from None
        except urllib3.exceptions.LocationValueError as exc:
            raise requests.exceptions.InvalidURL(exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise requests.ConnectionError(exc) from None
        if raw.get_redirect_location():
            raw.close()
            return None
        resp = requests.Response()
        resp.status_code = raw.status
        resp.headers = requests.structures.CaseInsensitiveDict(raw.headers)
        resp.raw = raw
        resp.reason = raw.reason
        resp.url = url
        return resp

    def post(
        self, url: str, *, json: Any, auth: requests.auth.AuthBase, timeout: tuple[float, float]
    ) -> requests.Response:
        return self.session().post(url, json=json, auth=auth, timeout=timeout, proxies=self.proxies(url))

    def close(self) -> None:
        """Close the pooled connections (the pool stays usable: new ones are opened)."""
        self._adapter.close()


# What requests sends with every GET (its default headers), and its adapter's retries: none.
_DIRECT_HEADERS = {"User-Agent": requests.utils.default_user_agent(), "Accept": "*/*", "Connection": "keep-alive"}
_NO_RETRIES = urllib3.Retry(0, read=False)

_pool: HttpPool | None = None
_pool_lock = threading.Lock()


def default_pool() -> HttpPool:
    """The process's pool for file GETs (references, presigned W&B file URLs)."""
    global _pool
    if _pool is not None:
        return _pool
    with _pool_lock:
        if _pool is None:
            _pool = HttpPool()
        return _pool


# -- many small GETs at once ----------------------------------------------------------------------

#: Bodies up to this size may be fetched by :func:`get_many` (held in memory until verified).
MANY_MAX_SIZE = 1 * MiB


@dataclass(frozen=True, slots=True)
class Got:
    """One answer of :func:`get_many`: ``body`` is the whole object, or None when the quick GET
    did not get it (``problem`` says why; the caller fetches it again the ordinary way, with
    retries, redirects and fresh URLs)."""

    index: int
    body: bytes | None
    problem: str = ""
    status: int = 0  # the HTTP status, when there was an answer


class _ManyGets:
    """libcurl's multi interface (pycurl): many GETs on one thread, in C, each connection kept
    for the next.  One per batch at a time; finished ones are pooled with their connections."""

    def __init__(self) -> None:
        self.pycurl = pycurl
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_MAXCONNECTS, 128)
        self.free: list[Any] = []

    def handle(self) -> Any:
        curl = self.free.pop() if self.free else self.pycurl.Curl()
        curl.reset()
        return curl


_many_lock = threading.Lock()
_many_idle: list[_ManyGets] = []


def get_many(
    requests_: list[tuple[str, int]],
    *,
    pool: HttpPool,
    policy: Policy = DEFAULT_POLICY,
    concurrency: int = 32,
    idle: Callable[[], None] | None = None,
) -> Iterator[Got]:
    """GET each ``(url, size)`` (a presigned or public URL: no credentials are added) at most
    ``concurrency`` at once on this thread, and yield each answer as it completes.  For small
    objects (up to :data:`MANY_MAX_SIZE`) whose bytes the caller verifies: libcurl runs the
    requests, so a file costs tens of microseconds of CPU instead of a thread and Python's HTTP
    stack.  Only a ``200`` with exactly ``size`` bytes is a body; anything else (an error status,
    a redirect, a cut or longer body, a URL that needs a proxy, a connection error, a timeout)
    is yielded with no body and nothing retried here: the caller's ordinary path, with its
    retries, owns every failure.  ``idle`` is called each time it is about to wait for the
    network (a caller that batches what it tells others flushes it then).  The caller must
    consume the iterator to the end (or close it)."""
    with _many_lock:
        gets = _many_idle.pop() if _many_idle else None
    if gets is None:
        gets = _ManyGets()
    pycurl = gets.pycurl
    multi = gets.multi
    verify = pool.verify
    running: dict[Any, tuple[int, int, list[bytes]]] = {}
    todo = list(enumerate(requests_))
    todo.reverse()
    try:
        while todo or running:
            while todo and len(running) < concurrency:
                index, (url, size) = todo.pop()
                if size > MANY_MAX_SIZE or not url.startswith(("http://", "https://")) or pool.proxies(url):
                    yield Got(index, None, "not for a batched GET")
                    continue
                curl = gets.handle()
                parts: list[bytes] = []
                got = [0]

                def write(data: bytes, parts: list[bytes] = parts, got: list[int] = got, size: int = size) -> int:
                    got[0] += len(data)
                    if got[0] > size:
                        return 0  # longer than the object: abort (CURLE_WRITE_ERROR)
                    parts.append(data)
                    return len(data)

                curl.setopt(pycurl.URL, url)
                curl.setopt(pycurl.WRITEFUNCTION, write)
                curl.setopt(pycurl.HTTPHEADER, _MANY_HEADERS)
                curl.setopt(pycurl.NOSIGNAL, 1)
                curl.setopt(pycurl.NOPROXY, "*")  # a URL that needs a proxy never comes here
                curl.setopt(pycurl.FOLLOWLOCATION, 0)
                curl.setopt(pycurl.CONNECTTIMEOUT_MS, int(policy.connect_timeout * 1000))
                curl.setopt(pycurl.LOW_SPEED_LIMIT, 1)  # no byte for read_timeout seconds: failed
                curl.setopt(pycurl.LOW_SPEED_TIME, max(1, int(policy.read_timeout)))
                curl.setopt(pycurl.TIMEOUT_MS, int((policy.rate_grace + size / policy.min_rate) * 1000))
                if url.startswith("https://"):
                    if verify is False:
                        curl.setopt(pycurl.SSL_VERIFYPEER, 0)
                        curl.setopt(pycurl.SSL_VERIFYHOST, 0)
                    else:
                        ca = requests.utils.DEFAULT_CA_BUNDLE_PATH if verify is True else verify
                        curl.setopt(pycurl.CAPATH if os.path.isdir(ca) else pycurl.CAINFO, ca)
                running[curl] = (index, size, parts)
                multi.add_handle(curl)
            while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                pass
            while True:
                queued, ok, failed = multi.info_read()
                for curl in ok:
                    index, size, parts = running.pop(curl)
                    status = curl.getinfo(pycurl.RESPONSE_CODE)
                    multi.remove_handle(curl)
                    gets.free.append(curl)
                    body = b"".join(parts)
                    if status != 200:
                        yield Got(index, None, f"HTTP {status}", status)
                    elif len(body) != size:
                        yield Got(index, None, f"{len(body)} bytes, not {size}", status)
                    else:
                        yield Got(index, body, "", status)
                for curl, _code, message in failed:
                    index, _size, _parts = running.pop(curl)
                    status = curl.getinfo(pycurl.RESPONSE_CODE)  # an error body cut short has one
                    multi.remove_handle(curl)
                    gets.free.append(curl)
                    if status and status != 200:
                        yield Got(index, None, f"HTTP {status}", status)
                    else:
                        yield Got(index, None, _redact(str(message)), status)
                if not queued:
                    break
            if running:
                if idle is not None:
                    idle()
                multi.select(0.5)
    finally:
        for curl in running:
            multi.remove_handle(curl)
            gets.free.append(curl)
        with _many_lock:
            _many_idle.append(gets)


_MANY_HEADERS = [f"User-Agent: {requests.utils.default_user_agent()}", "Accept: */*", "Accept-Encoding: identity"]
_URL_IN_MESSAGE = re.compile(r"\?[^\s\"']*")


def _redact(message: str) -> str:
    """libcurl's message without any query string (a presigned URL's signature)."""
    return _URL_IN_MESSAGE.sub("", message)
