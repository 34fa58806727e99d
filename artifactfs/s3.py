"""``s3://bucket/key`` reference entries through boto3: the only module that imports boto3 or
botocore.  boto3 is an optional extra (``pip install artifactfs[s3]``); without it an s3 entry
fails with a message that says so, and nothing else of artifactfs needs it.

**Where the client comes from.**  One boto3 client per process (per set of AWS environment
variables), made from a fresh ``boto3.session.Session``: credentials, region and endpoint come
from the usual boto3 chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``,
instance roles...).  ``AWS_S3_ENDPOINT_URL``, which the wandb SDK reads, is used when neither of
boto3's endpoint variables is set.  botocore's own retries are off: this module retries with the
bounds of :class:`artifactfs.transfer.Policy`, the same as http(s) references, and also resumes a body
cut mid-way, which botocore does not.

**How a download goes.**  :func:`download` writes the object into the store's temp file with
``os.pwrite`` and tells ``progress.advance`` whenever the contiguous written prefix grows, so the
store hashes it while later parts still arrive.  Every request is a ranged ``GetObject``; an
object of ``parallel_threshold`` bytes or more is fetched as ``part_size`` ranges by ``workers``
threads (the caller's thread included), all joined before :func:`download` returns or raises.
Throttling (``SlowDown``, 429, 503), 5xx, connection errors, timeouts and cut bodies are retried
with exponential back-off and jitter, bounded by tries without progress, requests per part and
seconds of waiting per download; a cut body resumes right after its last written byte.
Credentials refused are :class:`~artifactfs.errors.AuthError`, a missing object or bucket a
:class:`~artifactfs.errors.FetchError`, at once.  Messages carry the bucket, key, error code and
HTTP status, never a botocore message (S3 error documents can echo request details) and never a
credential; botocore's own DEBUG lines, which dump signed requests and session tokens, are kept
quiet (its logger is set to INFO unless a level was chosen for it).

**The object must be the one that was logged.**  The manifest records the object's ETag
(``extra.etag``, and for entries the wandb SDK logged also the digest) and, in a versioned bucket,
its ``extra.versionID``.  Every ``GetObject`` asks for that version (``VersionId``) and carries
``IfMatch`` with that ETag, and the ETag, version and size in every answer are compared with the
record before any body byte is read.  A different ETag, a 412, or a recorded version that no
longer exists is :class:`~artifactfs.errors.SourceChanged` ("changed since it was logged"), and
nothing is downloaded or cached.  Without a recorded ETag the first answer's ETag pins the object:
later parts and resumes must come from the same object.

**Verifying entries whose digest is an ETag (logged by the wandb SDK).**  The SDK records an s3
object's ETag as the entry digest, and an ETag is not a content hash in general.  The store serves
only bytes that hashed to a 16-byte content digest, so :func:`artifactfs.references.content_entry`
decides what such an entry can be verified against:

* A *single-part* ETag (32 hex digits, no ``-N`` suffix) of an object stored without SSE-KMS or
  SSE-C is the hex MD5 of the object's bytes.  The entry is verified as an MD5 entry with that
  digest: the bytes are hashed as for any entry, so a wrong byte is a DigestMismatch, never
  served.  An object encrypted with SSE-KMS or SSE-C has a single-part-looking ETag that is *not*
  its MD5: the answer's ``ServerSideEncryption``/``SSECustomerAlgorithm`` headers show it, and such
  an entry is refused with a message that says so (before its body is read).
* A *multipart* ETag (``<hex>-<parts>``) is the MD5 of the parts' MD5s: it cannot be recomputed
  from the bytes without knowing the part sizes the uploader chose, so it proves nothing about
  them.  Such an entry is refused with a clear error unless its digest is a content digest (as in
  entries that artifactfs logs itself).  Serving it on the strength of size + ETag + version alone
  would make the mount's promise ("every byte served was verified") false for those files; the
  safe choice is to fail loudly and let the user log the object again with artifactfs
  (``Artifact.add_reference`` streams it once and records its content MD5).

Entries logged by artifactfs (:func:`checksum`) carry the content MD5 (or XXH128) as their digest
and the ETag and version in ``extra``, like an http(s) reference.  The wandb SDK compares an s3
entry's digest with the ETag when it downloads, so it would refuse such an entry: artifactfs
manifests are for artifactfs, as with http(s) references.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import transfer
from .digests import MD5, b64_digest, new_hasher
from .errors import AuthError, FetchError, InvalidReferenceEntry, SourceChanged
from .http import etag_opaque
from .sources import Progress
from .transfer import DEFAULT_POLICY, ByteRange, Policy, Transient

log = logging.getLogger(__name__)

#: botocore loggers whose DEBUG records carry signed requests, headers or credentials.
_REQUEST_LOGGERS = (
    "botocore.auth",
    "botocore.endpoint",
    "botocore.awsrequest",
    "botocore.httpsession",
    "botocore.parsers",
    "botocore.credentials",
    "botocore.utils",
)


def _below_info(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.INFO


INSTALL_HINT = "pip install artifactfs[s3]"
#: Error codes and HTTP statuses worth another try.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "BandwidthLimitExceeded",
    }
)
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AccountProblem",
    }
)
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_SINGLE_PART_ETAG = re.compile(r"[0-9a-fA-F]{32}")


@dataclass(frozen=True, slots=True)
class S3Object:
    """One object: bucket, key and (when given in the URI) a version."""

    bucket: str
    key: str
    version_id: str | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_uri(uri: str) -> S3Object:
    """``s3://bucket/key`` (with an optional ``?versionId=``), read as the wandb SDK reads it: the
    key is the path after the bucket, not unquoted."""
    url = urllib.parse.urlsplit(uri)
    if url.scheme != "s3" or not url.netloc or "@" in url.netloc or url.path in ("", "/"):
        raise InvalidReferenceEntry(f"{uri.split('?', 1)[0]!r} is not an s3://bucket/key URI")
    version = urllib.parse.parse_qs(url.query).get("versionId", [None])[0]
    return S3Object(url.netloc, url.path[1:], version or None)


def single_part_md5(etag: str) -> str | None:
    """The hex MD5 that a single-part S3 ETag is, or None for any other ETag (multipart
    ``<hex>-<n>``, weak, other servers' forms)."""
    opaque = etag_opaque(etag)
    if etag.strip().startswith("W/") or not _SINGLE_PART_ETAG.fullmatch(opaque):
        return None
    return opaque.lower()


# -- the client -----------------------------------------------------------------------------------

_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_S3_ENDPOINT_URL",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)
_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


class _Boto:
    """boto3 and the botocore pieces this module uses, imported once, on first use."""

    def __init__(self) -> None:
        try:
            import boto3
            import botocore.config
            import botocore.exceptions
        except ImportError as exc:
            raise FetchError(f"s3:// references need boto3, which is not installed: {INSTALL_HINT}") from exc
        # botocore's DEBUG lines dump signed requests: canonical requests and headers with the
        # session token (X-Amz-Security-Token).  Unless someone chose a level for botocore
        # itself, it logs from INFO up, whatever the root level (``--log-level DEBUG``).  The
        # loggers that write requests drop their DEBUG records even when a level was chosen
        # (a filter on the logger that makes a record holds whatever the levels say).
        quiet = logging.getLogger("botocore")
        if quiet.level == logging.NOTSET:
            quiet.setLevel(logging.INFO)
        for name in _REQUEST_LOGGERS:
            logger = logging.getLogger(name)
            if _below_info not in logger.filters:
                logger.addFilter(_below_info)
        self.boto3 = boto3
        self.Config = botocore.config.Config
        ex = botocore.exceptions
        self.ClientError: type[Exception] = ex.ClientError
        self.BotoCoreError: type[Exception] = ex.BotoCoreError
        self.NoCredentials: tuple[type[Exception], ...] = (ex.NoCredentialsError, ex.PartialCredentialsError)
        self.transient: tuple[type[Exception], ...] = (
            ex.HTTPClientError,  # connection closed, read timeout, streaming errors
            ex.ConnectionError,  # endpoint unreachable, connect timeout, proxy
            ex.IncompleteReadError,
        )
        self.transient_body: tuple[type[Exception], ...] = (*self.transient, OSError)


_boto: _Boto | None = None


def _lib() -> _Boto:
    global _boto
    if _boto is None:
        _boto = _Boto()
    return _boto


def _client(policy: Policy) -> Any:
    """The process's S3 client for these environment variables and timeouts (boto3 clients are
    thread-safe; sessions are not, so each client gets its own)."""
    lib = _lib()
    key = (*(os.environ.get(name) for name in _ENV), policy.connect_timeout, policy.read_timeout, policy.workers)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            endpoint = None
            if not (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")):
                endpoint = os.environ.get("AWS_S3_ENDPOINT_URL") or None
            config = lib.Config(
                connect_timeout=policy.connect_timeout,
                read_timeout=policy.read_timeout,
                retries={"total_max_attempts": 1, "mode": "standard"},  # we retry, with our bounds
                max_pool_connections=max(10, 2 * policy.workers),
            )
            try:
                session = lib.boto3.session.Session(region_name=os.environ.get("AWS_REGION") or None)
                client = session.client("s3", endpoint_url=endpoint, config=config)
            except (lib.BotoCoreError, ValueError) as exc:  # a malformed endpoint URL, an unknown profile...
                raise FetchError(f"cannot set up the S3 client: {type(exc).__name__}") from None
            _clients[key] = client
        return client


# -- one object, with retries ---------------------------------------------------------------------


class _S3Transfer(transfer.Transfer):
    """One object: the pinned ETag (the retry accounting is :class:`artifactfs.transfer.Transfer`'s)."""

    def __init__(
        self,
        obj: S3Object,
        size: int | None,
        what: str,
        policy: Policy,
        etag: str | None,
        etag_is_digest: bool = False,
    ) -> None:
        super().__init__(size, policy, thread_name="s3-part")
        self.client = _client(policy)
        self.lib = _lib()
        self.obj = obj
        self.what = what
        self.recorded = etag or None  # the ETag in the manifest
        self.etag = self.recorded  # the ETag every answer must carry (pinned by the first without a record)
        self.version_id = obj.version_id
        self.etag_is_digest = etag_is_digest

    def error(self, problem: str) -> str:
        version = f" version {self.version_id}" if self.version_id else ""
        return f"GET {self.obj.uri}{version} ({self.what}): {problem}"

    def changed(self, now: str | None) -> SourceChanged:
        shown = f"ETag {now}" if now else "a different ETag"
        if self.recorded is not None:
            return SourceChanged(
                self.error(
                    f"the source changed since it was logged: ETag {self.recorded} was recorded, it now has {shown}"
                )
            )
        return SourceChanged(self.error(f"the object changed during the download: ETag {self.etag}, then {shown}"))

    # -- one request ---------------------------------------------------------------------------

    def get(self, rng: ByteRange | None) -> dict[str, Any]:
        """``GetObject`` of ``rng`` (None: the whole object), for the pinned version and ETag."""
        kwargs: dict[str, Any] = {"Bucket": self.obj.bucket, "Key": self.obj.key}
        if self.version_id:
            kwargs["VersionId"] = self.version_id
        if self.etag:
            kwargs["IfMatch"] = _quoted(self.etag)
        if rng is not None:
            last = "" if rng.end is None else str(rng.end - 1)
            kwargs["Range"] = f"bytes={rng.pos}-{last}"
        self.counted()
        answer: dict[str, Any] = self.call(self.client.get_object, kwargs)
        return answer

    def call(self, op: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """One S3 call, its foreign exceptions translated: Transient, AuthError, SourceChanged
        or FetchError."""
        lib = self.lib
        try:
            return op(**kwargs)
        except lib.ClientError as exc:
            raise self._client_error(exc) from None
        except lib.NoCredentials:
            raise AuthError(
                self.error("no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)")
            ) from None
        except lib.transient as exc:
            raise Transient(type(exc).__name__) from None
        except lib.BotoCoreError as exc:
            raise FetchError(self.error(type(exc).__name__)) from None

    def _client_error(self, exc: Any) -> Exception:
        response = getattr(exc, "response", {}) or {}
        code = str(response.get("Error", {}).get("Code", "") or "")
        meta = response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode") or 0)
        shown = f"{code or 'error'} (HTTP {status})" if status else code or "error"
        if code == "PreconditionFailed" or status == 412:
            now = (meta.get("HTTPHeaders") or {}).get("etag") or self._current_etag()
            return self.changed(etag_opaque(now) if now else None)
        if code == "NoSuchVersion":
            return SourceChanged(
                self.error(f"the source changed since it was logged: version {self.version_id} no longer exists")
            )
        if code in _TRANSIENT_CODES or status in (408, 429) or status >= 500:
            return Transient(shown)
        if code in _AUTH_CODES or status in (401, 403):
            return AuthError(self.error(f"{shown}: credentials missing or refused"))
        if code in _MISSING_CODES or status == 404:
            return FetchError(self.error(f"{shown}: no such object"))
        if code == "InvalidRange" or status == 416:
            return FetchError(self.error(f"{shown}: the object is shorter than expected"))
        if status in (301, 307) or code in ("PermanentRedirect", "AuthorizationHeaderMalformed"):
            return FetchError(self.error(f"{shown}: the bucket is in another region (set AWS_REGION)"))
        return FetchError(self.error(shown))

    def _current_etag(self) -> str | None:
        """The object's ETag now, for the message of a 412 (S3 sends none): best effort."""
        kwargs: dict[str, Any] = {"Bucket": self.obj.bucket, "Key": self.obj.key}
        if self.version_id:
            kwargs["VersionId"] = self.version_id
        try:
            etag = self.client.head_object(**kwargs).get("ETag")
        except (self.lib.ClientError, self.lib.BotoCoreError):
            return None
        return etag if isinstance(etag, str) else None

    def check_answer(self, resp: dict[str, Any]) -> None:
        """The answer is the recorded (or pinned) object: ETag, version, encryption."""
        etag = resp.get("ETag")
        if etag is not None:
            now = etag_opaque(etag)
            if self.etag is None:
                self.etag = now  # pinned: parts and resumes must come from this object
            elif now != etag_opaque(self.etag):
                raise self.changed(now)
        version = resp.get("VersionId")
        if self.version_id and version and version != self.version_id:
            raise SourceChanged(self.error(f"asked for version {self.version_id}, got {version}"))
        if self.etag_is_digest and (resp.get("SSECustomerAlgorithm") or _kms(resp.get("ServerSideEncryption"))):
            raise FetchError(
                self.error(
                    "the object is encrypted with SSE-KMS or SSE-C, so its ETag is not the MD5 of its bytes; "
                    "the entry's digest is that ETag and cannot be verified: log the object again with artifactfs"
                )
            )

    def request(
        self,
        rng: ByteRange,
        write: Callable[[int, bytes], None],
        restart: Callable[[], None] | None,
        advanced: Callable[[ByteRange], None] | None,
        on_ranged: Callable[[], None] | None,
    ) -> None:
        # Every request is ranged: ``restart`` is never needed (a whole object is refused).
        # An empty object has no byte range to ask for (S3 answers 416): ask for all of it.
        resp = self.get(rng if rng.end != 0 else None)
        body = resp["Body"]
        try:
            self.check_answer(resp)
            self._check_range(resp, rng)
            if on_ranged is not None:  # the ETag is pinned and the size checked: the parts may start
                on_ranged()
            self._read_body(body, rng, write, advanced)
        finally:
            body.close()

    def _check_range(self, resp: dict[str, Any], rng: ByteRange) -> None:
        length = resp.get("ContentLength")
        header = resp.get("ContentRange")
        if header is None:  # the whole object
            if rng.pos != 0:
                raise FetchError(self.error("a Range request got the whole object"))
            if self.size is not None and length is not None and length != self.size:
                raise FetchError(self.error(f"the object has {length} bytes, expected {self.size}"))
            if rng.end is None:
                rng.end = length
            return
        m = _CONTENT_RANGE.fullmatch(str(header).strip())
        if m is None:
            raise FetchError(self.error(f"an invalid Content-Range {str(header)[:80]!r}"))
        first, last, total = int(m[1]), int(m[2]), m[3]
        if total != "*" and self.size is not None and int(total) != self.size:
            raise FetchError(self.error(f"the object has {total} bytes, expected {self.size}"))
        if rng.end is None and total != "*":
            rng.end = int(total)
        if first != rng.pos or (rng.end is not None and last + 1 != rng.end):
            raise FetchError(self.error(f"asked for bytes {rng.pos}-{rng.end}, got {first}-{last}"))
        if length is not None and length != last + 1 - first:
            raise FetchError(self.error(f"Content-Length {length} disagrees with Content-Range {header}"))

    def _read_body(
        self,
        body: Any,
        rng: ByteRange,
        write: Callable[[int, bytes], None],
        advanced: Callable[[ByteRange], None] | None,
    ) -> None:
        assert rng.end is not None
        lib = self.lib
        while rng.pos < rng.end:
            if self.cancel.is_set():
                raise transfer.Cancelled
            want = min(self.policy.chunk, rng.end - rng.pos)
            try:
                data = body.read(want)
            except self.lib.transient_body as exc:
                raise Transient(f"body failed ({type(exc).__name__}) at byte {rng.pos} of {self.size}") from None
            except lib.BotoCoreError as exc:
                raise FetchError(self.error(f"body failed ({type(exc).__name__})")) from None
            if not data:
                raise Transient(f"body cut at byte {rng.pos} of {self.size}")
            self.received(len(data))
            write(rng.pos, data[:want])
            rng.pos += min(len(data), want)  # only now: other threads read pos to find the prefix
            if advanced is not None:
                advanced(rng)


def _quoted(etag: str) -> str:
    return f'"{etag_opaque(etag)}"'


def _kms(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("aws:kms")


# -- entry points ---------------------------------------------------------------------------------


def download(
    uri: str,
    fd: int,
    size: int,
    what: str,
    progress: Progress,
    *,
    policy: Policy = DEFAULT_POLICY,
    version_id: str | None = None,
    etag: str | None = None,
    etag_is_digest: bool = False,
) -> None:
    """Write the ``size`` bytes of the object at ``uri`` into ``fd`` (empty, opened for writing).

    ``version_id`` and ``etag``: what the manifest recorded (SourceChanged unless the object still
    has them).  ``etag_is_digest``: the entry's digest is this ETag read as an MD5, which an SSE-KMS
    or SSE-C object's ETag is not (refused).  ``progress.advance(end)`` is told whenever bytes
    ``[0, end)`` are final.  Raises FetchError (SourceChanged) or AuthError; never leaves a thread
    writing to ``fd``."""
    obj = parse_uri(uri)
    if version_id:
        obj = S3Object(obj.bucket, obj.key, version_id)
    one = _S3Transfer(obj, size, what, policy, etag, etag_is_digest)
    t0 = time.monotonic()
    transfer.download(one, fd, size, progress)
    log.debug("GET %s (%s): %d bytes in %d requests, %.3fs", obj.uri, what, size, one.requests, time.monotonic() - t0)


def checksum(uri: str, alg: str = MD5, *, policy: Policy = DEFAULT_POLICY) -> tuple[str, int, dict[str, Any]]:
    """Stream the object at ``uri`` once and hash it: ``(b64 digest, size, extra)`` with ``extra``
    holding its ``etag`` (without quotes, as the wandb SDK records it) and, in a versioned bucket,
    its ``versionID``.  The first answer pins both: a resume reads the same version."""
    obj = parse_uri(uri)
    one = _S3Transfer(obj, None, obj.uri, policy, None)
    head = one.call(
        one.client.head_object,
        {"Bucket": obj.bucket, "Key": obj.key, **({"VersionId": obj.version_id} if obj.version_id else {})},
    )
    size = int(head.get("ContentLength") or 0)
    one.size = size
    one.check_answer(head)
    version = head.get("VersionId")
    if version and version != "null":
        one.version_id = version
    hasher = new_hasher(alg)

    def write(offset: int, data: bytes) -> None:
        hasher.update(data)  # in order: one stream, each byte once (a resume starts after the last)

    rng = ByteRange(0, size)
    one.fetch(rng, write)
    extra: dict[str, Any] = {}
    if one.etag:
        extra["etag"] = one.etag
    if one.version_id:
        extra["versionID"] = one.version_id
    return b64_digest(hasher), size, extra
