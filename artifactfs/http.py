"""HTTP downloads with requests: the only module besides the W&B client that imports requests."""

from __future__ import annotations

import threading
from typing import IO, cast

import requests
import urllib3

from .errors import AuthError, FetchError
from .fsutil import redact_uri

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0  # a stalled body fails instead of hanging (the W&B SDK has none)

_local = threading.local()


def _session() -> requests.Session:
    """One session per thread: requests.Session is not documented as thread-safe."""
    session: requests.Session | None = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    return session


def open_url(url: str, *, headers: dict[str, str] | None = None) -> IO[bytes]:
    """GET ``url`` and return its body as a stream.  Errors never show query strings."""
    try:
        resp = _session().get(url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
    except requests.RequestException as exc:
        raise FetchError(f"GET {redact_uri(url)} failed: {type(exc).__name__}") from exc
    if resp.status_code in (401, 403):
        resp.close()
        raise AuthError(f"GET {redact_uri(url)}: HTTP {resp.status_code}")
    if resp.status_code != 200:
        resp.close()
        raise FetchError(f"GET {redact_uri(url)}: HTTP {resp.status_code}")
    resp.raw.decode_content = True
    return cast(IO[bytes], _Body(resp, url))


class _Body:
    """A response body whose read errors are FetchError: urllib3 raises its own exceptions
    (``ProtocolError`` for a connection cut mid-body, ``ReadTimeoutError``), which are not
    OSError and would otherwise escape the fetcher's failure handling."""

    def __init__(self, resp: requests.Response, url: str) -> None:
        self._resp = resp
        self._url = url

    def read(self, size: int = -1) -> bytes:
        try:
            return cast(bytes, self._resp.raw.read(None if size < 0 else size))
        except (urllib3.exceptions.HTTPError, requests.RequestException) as exc:
            raise FetchError(f"GET {redact_uri(self._url)}: body failed: {type(exc).__name__}") from exc

    def close(self) -> None:
        self._resp.close()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
