"""Blob sources for reference entries (``ref`` set in the manifest).

A reference entry's bytes live outside the registry.  ``file://`` references are local files;
``http(s)://`` references are fetched with requests.  Whatever the source, the store verifies the
bytes against the entry before serving them; a reference whose digest is not a content hash
(an ETag, or the URI itself when logged with ``checksum=False``) cannot be verified and is refused.
"""

from __future__ import annotations

import urllib.parse
from typing import IO

from .errors import FetchError
from .manifest import Entry
from .registry.base import BlobSource


def reference_source(entry: Entry) -> BlobSource:
    assert entry.ref is not None
    url = urllib.parse.urlsplit(entry.ref)
    if url.scheme == "file":
        path = urllib.parse.unquote(url.path)
        return BlobSource(entry.ref, local_path=path)
    if url.scheme in ("http", "https"):
        from .http import open_url

        ref = entry.ref

        def opener() -> IO[bytes]:
            return open_url(ref)

        return BlobSource(_redact(entry.ref), open=opener)
    raise FetchError(f"reference scheme {url.scheme!r} of {entry.path!r} is not supported")


def _redact(uri: str) -> str:
    """A URI fit for logs: no user info, no query string (presigned URLs carry secrets)."""
    url = urllib.parse.urlsplit(uri)
    host = url.hostname or ""
    if url.port:
        host = f"{host}:{url.port}"
    return urllib.parse.urlunsplit((url.scheme, host, url.path, "", ""))
