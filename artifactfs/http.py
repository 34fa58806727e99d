"""HTTP downloads with requests: the only module besides the W&B client that imports requests."""

from __future__ import annotations

import urllib.parse
from typing import IO, cast

import requests

from .errors import AuthError, FetchError

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0  # a stalled body fails instead of hanging (the W&B SDK has none)

_session = requests.Session()


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))


def open_url(url: str, *, headers: dict[str, str] | None = None) -> IO[bytes]:
    """GET ``url`` and return its body as a stream.  Errors never show query strings."""
    try:
        resp = _session.get(url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
    except requests.RequestException as exc:
        raise FetchError(f"GET {_redact(url)} failed: {type(exc).__name__}") from exc
    if resp.status_code in (401, 403):
        resp.close()
        raise AuthError(f"GET {_redact(url)}: HTTP {resp.status_code}")
    if resp.status_code != 200:
        resp.close()
        raise FetchError(f"GET {_redact(url)}: HTTP {resp.status_code}")
    resp.raw.decode_content = True
    return cast(IO[bytes], resp.raw)
