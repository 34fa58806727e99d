"""Reference entries (``ref`` set in the manifest): where their bytes come from, and their
digests at log time.

A reference entry's bytes live outside the registry.  ``file://`` references are local files
(only for a registry on this machine: a remote registry passes ``allow_file=False``, since such an
entry would make the daemon read its own disk on the say-so of a manifest it did not write);
``http(s)://`` references are downloaded with :func:`artifactfs.http.download` (timeouts,
retries, resume, parallel ranges) and ``s3://`` ones with :func:`artifactfs.s3.download` (boto3,
the optional ``s3`` extra).  ``gs://`` references are declined.  When the manifest recorded the
source's ETag (``extra.etag``) or object version (``extra.versionID``), the source must still have
them, or the read fails with :class:`~artifactfs.errors.SourceChanged` before any body byte is
downloaded.

Whatever the source, the store verifies the bytes against a 16-byte content digest before
serving them.  :func:`content_entry` gives that digest: the entry's own when it is a content hash,
the MD5 that a single-part S3 ETag is for s3 entries the wandb SDK logged (see :mod:`artifactfs.s3`
for why, and for the SSE-KMS exception).  Any other reference whose digest is not a content hash
(a multipart S3 ETag, an http ETag, or the URI itself when logged with ``checksum=False``) cannot
be verified and is refused.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .digests import hash_fd
from .errors import FetchError, InvalidReferenceEntry, ManifestError, SourceError
from .fsutil import redact_uri
from .manifest import MD5, Entry, hex_from_b64
from .sources import BlobSource, Progress

if TYPE_CHECKING:  # requests is imported only when a reference is fetched
    from .transfer import Policy

#: Set in the copies :func:`content_entry` makes (never stored): the digest is the S3 ETag.
DIGEST_FROM_ETAG = "artifactfs:digestFromETag"
_MULTIPART_ETAG = re.compile(r"[0-9a-fA-F]{32}-[0-9]+")
GS_DECLINED = (
    "gs:// references are not supported; copy the objects to s3:// or https:// (a signed URL) "
    "and log them again with artifactfs"
)


def file_path(uri: str) -> str:
    """The local path of a ``file://`` URI (``file:///abs`` or ``file://localhost/abs``)."""
    url = urllib.parse.urlsplit(uri)
    if url.scheme != "file" or url.netloc not in ("", "localhost"):
        raise InvalidReferenceEntry(f"{redact_uri(uri)} is not a local file:// URI")
    return urllib.parse.unquote(url.path)


def _is_content_digest(digest: str) -> bool:
    try:
        hex_from_b64(digest)
    except ManifestError:
        return False
    return True


def _extra_str(entry: Entry, name: str) -> str | None:
    value = entry.extra.get(name)
    return value if isinstance(value, str) and value else None


def content_entry(entry: Entry) -> Entry:
    """The entry as the store verifies it: ``entry`` itself when it is not a reference (its
    digest was checked when its manifest was read) or when its digest is a content hash;
    for an ``s3://`` entry whose digest is a single-part ETag (as the wandb SDK logs them), a copy
    whose digest is that ETag read as an MD5 (``extra.etag`` keeps the ETag, so the download
    still checks it, and ``extra[DIGEST_FROM_ETAG]`` says where the digest came from).
    FetchError for a reference whose digest proves nothing about its bytes."""
    if entry.ref is None or _is_content_digest(entry.digest):
        return entry
    shown = redact_uri(entry.ref) if entry.ref else entry.path
    scheme = SCHEMES.get(urllib.parse.urlsplit(entry.ref).scheme) if entry.ref else None
    if scheme is not None and scheme.content is not None:
        found = scheme.content(entry, shown)
        if found is not None:
            return found
    raise FetchError(
        f"{entry.path!r} ({shown}): its digest {entry.digest[:80]!r} is not a content hash (an ETag, or the URI of a "
        "reference logged with checksum=False), so its bytes cannot be verified; log it again with artifactfs"
    )


def reference_source(entry: Entry, *, allow_file: bool = True, policy: Policy | None = None) -> BlobSource:
    """The source of a reference entry's bytes.  ``allow_file``: False for a registry that is
    not on this machine (its ``file://`` entries are refused).  ``policy``: timeouts and retries
    for http(s) and s3 (default :data:`artifactfs.transfer.DEFAULT_POLICY`)."""
    assert entry.ref is not None
    name = urllib.parse.urlsplit(entry.ref).scheme
    scheme = SCHEMES.get(name)
    if scheme is None:
        if name in DECLINED:
            raise FetchError(f"{entry.path!r}: {DECLINED[name]}")
        raise FetchError(f"reference scheme {name!r} of {entry.path!r} is not supported")
    if scheme.local and not allow_file:
        raise FetchError(
            f"{entry.path!r}: {name}:// reference {redact_uri(entry.ref)} refused: this registry is not on this "
            "machine, and its entry would read the mount daemon's own disk"
        )
    return scheme.source(entry, policy)


def _file_source(entry: Entry, policy: Policy | None) -> BlobSource:
    assert entry.ref is not None
    try:
        path = file_path(entry.ref)
    except InvalidReferenceEntry as exc:  # file://otherhost/...: never read as a local file
        raise FetchError(f"{entry.path!r}: {exc}") from exc
    return BlobSource(entry.ref, local_path=path)


def _http_source(entry: Entry, policy: Policy | None) -> BlobSource:
    from . import http, transfer

    assert entry.ref is not None
    url, size, etag = entry.ref, entry.size, _extra_str(entry, "etag")
    chosen = policy or transfer.DEFAULT_POLICY

    def download(fd: int, what: str, progress: Progress) -> None:
        http.download(url, fd, size, what, progress, policy=chosen, etag=etag)

    return BlobSource(redact_uri(entry.ref), download=download)


def _s3_content(entry: Entry, shown: str) -> Entry | None:
    """An s3 entry whose digest is a single-part ETag (as the wandb SDK logs them), as an MD5 entry."""
    from .s3 import single_part_md5

    md5 = single_part_md5(entry.digest)
    if md5 is not None:
        extra = {k: v for k, v in entry.extra.items() if k != "alg"}
        extra.setdefault("etag", entry.digest)
        extra[DIGEST_FROM_ETAG] = True
        return dataclasses.replace(entry, digest=base64.b64encode(bytes.fromhex(md5)).decode("ascii"), extra=extra)
    if _MULTIPART_ETAG.fullmatch(entry.digest.strip('"')):
        raise FetchError(
            f"{entry.path!r} ({shown}): its digest is the multipart S3 ETag {entry.digest!r}, which is not a hash "
            "of the object's bytes, so they cannot be verified; log the object again with artifactfs "
            "(Artifact.add_reference records its content MD5)"
        )
    return None


def _s3_source(entry: Entry, policy: Policy | None) -> BlobSource:
    from . import s3, transfer

    assert entry.ref is not None
    try:
        obj = s3.parse_uri(entry.ref)
    except InvalidReferenceEntry as exc:
        raise FetchError(f"{entry.path!r}: {exc}") from exc
    uri, size = entry.ref, entry.size
    version = _extra_str(entry, "versionID") or obj.version_id
    # The wandb SDK records the ETag both as the digest and in extra.etag; either will do.
    etag = _extra_str(entry, "etag") or (None if _is_content_digest(entry.digest) else entry.digest)
    # Is the digest the store checks this ETag read as an MD5 (content_entry)?  Only right for
    # objects without SSE-KMS/SSE-C, which the download checks to say so clearly (the hash
    # would refuse the bytes anyway).
    etag_is_digest = entry.extra.get(DIGEST_FROM_ETAG) is True or not _is_content_digest(entry.digest)
    chosen = policy or transfer.DEFAULT_POLICY

    def download(fd: int, what: str, progress: Progress) -> None:
        s3.download(
            uri,
            fd,
            size,
            what,
            progress,
            policy=chosen,
            version_id=version,
            etag=etag,
            etag_is_digest=etag_is_digest,
        )

    return BlobSource(obj.uri, download=download)


def checksum_reference(uri: str, alg: str = MD5, *, policy: Policy | None = None) -> tuple[str, int, dict[str, Any]]:
    """Fetch the content of ``uri`` once and hash it: ``(b64 digest, size, extra)`` for a
    reference entry.  ``extra`` holds ``alg`` (XXH128 only), for http(s) and s3 the ``etag``, and
    for s3 in a versioned bucket the ``versionID``."""
    name = urllib.parse.urlsplit(uri).scheme
    scheme = SCHEMES.get(name)
    if scheme is None:
        if name in DECLINED:
            raise InvalidReferenceEntry(DECLINED[name])
        raise InvalidReferenceEntry(
            f"reference scheme {name!r} of {redact_uri(uri)} is not supported ({', '.join(SCHEMES)})"
        )
    digest, size, recorded = scheme.checksum(uri, alg, policy)
    return digest, size, {**({} if alg == MD5 else {"alg": alg}), **recorded}


def reference_name(uri: str) -> str:
    """The entry name a reference gets when none is given (the URL path's last segment; "" when
    it names none).  InvalidReferenceEntry for a scheme that cannot be fetched."""
    name = urllib.parse.urlsplit(uri).scheme
    scheme = SCHEMES.get(name)
    if scheme is None:
        raise InvalidReferenceEntry(f"reference scheme {name!r} is not supported ({', '.join(SCHEMES)})")
    return scheme.default_name(urllib.parse.urlsplit(uri))


def _file_checksum(uri: str, alg: str, policy: Policy | None) -> tuple[str, int, dict[str, Any]]:
    path = file_path(uri)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceError(f"cannot read {path!r}: {exc.strerror or exc}") from exc
    try:
        digest, size = hash_fd(fd, alg)
    except OSError as exc:
        raise SourceError(f"cannot read {path!r}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    return digest, size, {}


def _http_checksum(uri: str, alg: str, policy: Policy | None) -> tuple[str, int, dict[str, Any]]:
    from . import http, transfer

    digest, size, etag = http.checksum(uri, alg, policy=policy or transfer.DEFAULT_POLICY)
    return digest, size, {"etag": etag} if etag else {}


def _s3_checksum(uri: str, alg: str, policy: Policy | None) -> tuple[str, int, dict[str, Any]]:
    from . import s3, transfer

    return s3.checksum(uri, alg, policy=policy or transfer.DEFAULT_POLICY)


def _unquoted_name(url: urllib.parse.SplitResult) -> str:
    return os.path.basename(urllib.parse.unquote(url.path))


def _key_name(url: urllib.parse.SplitResult) -> str:
    return os.path.basename(url.path)  # an s3 key is not unquoted (as the wandb SDK reads it)


@dataclasses.dataclass(frozen=True, slots=True)
class Scheme:
    """How one reference scheme's bytes are had and hashed: one line of :data:`SCHEMES`."""

    source: Callable[[Entry, Policy | None], BlobSource]  # the entry's bytes (may import its client)
    checksum: Callable[[str, str, Policy | None], tuple[str, int, dict[str, Any]]]  # digest, size, extra
    default_name: Callable[[urllib.parse.SplitResult], str]  # the entry name when none is given
    local: bool = False  # bytes on this machine: refused for a registry that is not on it
    #: for a digest that is not a content hash: the entry as the store verifies it, or None
    content: Callable[[Entry, str], Entry | None] | None = None


#: Every reference scheme artifactfs can fetch, in the order messages list them.
SCHEMES: dict[str, Scheme] = {
    "file": Scheme(_file_source, _file_checksum, _unquoted_name, local=True),
    "http": Scheme(_http_source, _http_checksum, _unquoted_name),
    "https": Scheme(_http_source, _http_checksum, _unquoted_name),
    "s3": Scheme(_s3_source, _s3_checksum, _key_name, content=_s3_content),
}
#: Schemes refused with a message that says what to do instead.
DECLINED: dict[str, str] = {"gs": GS_DECLINED}
