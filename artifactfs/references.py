"""Reference entries (``ref`` set in the manifest): where their bytes come from, and their
digests at log time.

A reference entry's bytes live outside the registry.  ``file://`` references are local files;
``http(s)://`` references are downloaded with :func:`artifactfs.http.download` (timeouts,
retries, resume, parallel ranges).  Whatever the source, the store verifies the bytes against
the entry before serving them.  A reference whose digest is not a content hash (an ETag, or the
URI itself when logged with ``checksum=False``) cannot be verified and is refused: its digest is
not a 16-byte content digest, so it has no cache key.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import TYPE_CHECKING, Any

from .errors import FetchError, InvalidReference, SourceError
from .fsutil import redact_uri
from .manifest import MD5, Entry, hash_fd
from .registry.base import BlobSource, Progress

if TYPE_CHECKING:
    from .http import Policy

HTTP_SCHEMES = ("http", "https")


def file_path(uri: str) -> str:
    """The local path of a ``file://`` URI (``file:///abs`` or ``file://localhost/abs``)."""
    url = urllib.parse.urlsplit(uri)
    if url.scheme != "file" or url.netloc not in ("", "localhost"):
        raise InvalidReference(f"{redact_uri(uri)} is not a local file:// URI")
    return urllib.parse.unquote(url.path)


def reference_source(entry: Entry, *, policy: Policy | None = None) -> BlobSource:
    """The source of a reference entry's bytes.  ``policy``: HTTP timeouts and retries
    (default :data:`artifactfs.http.DEFAULT_POLICY`)."""
    assert entry.ref is not None
    scheme = urllib.parse.urlsplit(entry.ref).scheme
    if scheme == "file":
        try:
            path = file_path(entry.ref)
        except InvalidReference as exc:  # file://otherhost/...: never read as a local file
            raise FetchError(f"{entry.path!r}: {exc}") from exc
        return BlobSource(entry.ref, local_path=path)
    if scheme in HTTP_SCHEMES:
        from . import http

        url, size = entry.ref, entry.size
        chosen = policy or http.DEFAULT_POLICY

        def download(fd: int, what: str, progress: Progress) -> None:
            http.download(url, fd, size, what, progress, policy=chosen)

        return BlobSource(redact_uri(entry.ref), download=download)
    raise FetchError(f"reference scheme {scheme!r} of {entry.path!r} is not supported")


def checksum_reference(uri: str, alg: str = MD5, *, policy: Policy | None = None) -> tuple[str, int, dict[str, Any]]:
    """Fetch the content of ``uri`` once and hash it: ``(b64 digest, size, extra)`` for a
    reference entry.  ``extra`` holds ``alg`` (XXH128 only) and, for http(s), the ``etag``."""
    scheme = urllib.parse.urlsplit(uri).scheme
    extra: dict[str, Any] = {} if alg == MD5 else {"alg": alg}
    if scheme == "file":
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
        return digest, size, extra
    if scheme in HTTP_SCHEMES:
        from . import http

        digest, size, etag = http.checksum(uri, alg, policy=policy or http.DEFAULT_POLICY)
        if etag:
            extra["etag"] = etag
        return digest, size, extra
    raise InvalidReference(f"reference scheme {scheme!r} of {redact_uri(uri)} is not supported (file, http, https)")
