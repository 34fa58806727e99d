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
from .fsutil import redact_uri
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

        return BlobSource(redact_uri(entry.ref), open=opener)
    raise FetchError(f"reference scheme {url.scheme!r} of {entry.path!r} is not supported")
