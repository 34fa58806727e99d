"""http(s) reference entries against a real HTTP server on 127.0.0.1 with injected faults.

Downloads go through the real path (:func:`artifactfs.references.reference_source` ->
:func:`artifactfs.http.download` -> :meth:`BlobStore.fill` and its verification); the server
(``fault_server.py``) records every request it sees, so the tests assert what reached it:
retries, Range headers of resumes and parts, and no request where none is allowed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_server import Fault, FaultServer

from artifactfs import Api, Artifact
from artifactfs.errors import AuthError, DigestMismatch, FetchError, InvalidReferenceEntry, SourceChanged
from artifactfs.http import checksum, download
from artifactfs.manifest import MD5, XXH128, Entry, digest_bytes
from artifactfs.references import reference_source
from artifactfs.store import Blob, BlobStore
from artifactfs.transfer import Policy

KiB = 1 << 10
MiB = 1 << 20
WHAT = "acme/vision/ds:v0/blob.bin"
# Quick retries for tests; timeouts generous enough for a loaded machine.
FAST = Policy(connect_timeout=5.0, read_timeout=5.0, attempts=4, backoff=0.01, backoff_max=0.05, retry_budget=5.0)
# Parallel ranges from 1 MiB on, in parts of 256 KiB.
PARALLEL = Policy(
    connect_timeout=5.0,
    read_timeout=5.0,
    attempts=4,
    backoff=0.01,
    backoff_max=0.05,
    parallel_threshold=1 * MiB,
    part_size=256 * KiB,
    workers=4,
    chunk=64 * KiB,
)
DATA = os.urandom(300_000)
BIG = os.urandom(3 * MiB + 1234)  # 13 parts of PARALLEL


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as s:
        yield s


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BlobStore]:
    s = BlobStore(str(tmp_path / "cache"))
    yield s
    s.close()


def ref_entry(url: str, data: bytes, alg: str = MD5) -> Entry:
    return Entry("blob.bin", digest_bytes(data, alg), len(data), ref=url, extra={} if alg == MD5 else {"alg": alg})


def fill(store: BlobStore, entry: Entry, policy: Policy = FAST) -> bytes:
    """Fetch ``entry`` into the store (verified) and return the cached bytes."""
    blob = store.fill(entry.cache_key, entry, reference_source(entry, policy=policy), WHAT)
    return read_blob(blob)


def read_blob(blob: Blob) -> bytes:
    try:
        return blob.pread(blob.size + 1, 0)
    finally:
        blob.close()


def nothing_cached(store: BlobStore, entry: Entry) -> bool:
    return entry.cache_key not in store and os.listdir(store.tmp) == []


def ranges(server: FaultServer) -> list[str | None]:
    return [s.range for s in server.gets()]


def part_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("download-part")]


def statuses(server: FaultServer) -> list[int]:
    return [s.status for s in server.gets()]


# -- retries ----------------------------------------------------------------------------------------


@pytest.mark.allow_log(r"retrying in")
def test_5xx_and_429_are_retried(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/b", DATA)
    server.plan("/b", Fault(status=500), Fault(status=429), Fault(status=503))
    assert fill(store, ref_entry(url, DATA)) == DATA
    assert statuses(server) == [500, 429, 503, 200]


@pytest.mark.allow_log(r"retrying in")
def test_retries_are_bounded(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/b", DATA)
    server.plan("/b", *[Fault(status=503)] * 10)
    entry = ref_entry(url, DATA)
    with pytest.raises(FetchError, match="HTTP 503; gave up after 4 tries"):
        fill(store, entry)
    assert statuses(server) == [503] * FAST.attempts
    assert nothing_cached(store, entry)


@pytest.mark.allow_log(r"retrying in")
def test_retry_after_is_honoured(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/b", DATA)
    server.plan("/b", Fault(status=503, headers={"Retry-After": "1"}))
    t0 = time.monotonic()
    assert fill(store, ref_entry(url, DATA)) == DATA
    assert time.monotonic() - t0 >= 0.95
    assert statuses(server) == [503, 200]


def test_a_long_retry_after_gives_up_at_once(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/b", DATA)
    server.plan("/b", Fault(status=429, headers={"Retry-After": "3600"}))
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="retry after 3600s"):
        fill(store, ref_entry(url, DATA))
    assert time.monotonic() - t0 < 60  # not the hour it asked for
    assert statuses(server) == [429]


def test_404_is_not_retried(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/b", DATA).replace("/b?", "/gone?")
    with pytest.raises(FetchError, match="HTTP 404") as info:
        fill(store, ref_entry(url, DATA))
    assert not isinstance(info.value, AuthError)
    assert statuses(server) == [404]


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_auth_errors_not_retried(server: FaultServer, store: BlobStore, status: int) -> None:
    url = server.add("/b", DATA)
    server.plan("/b", Fault(status=status))
    with pytest.raises(AuthError, match=f"HTTP {status}"):
        fill(store, ref_entry(url, DATA))
    assert statuses(server) == [status]


@pytest.mark.allow_log(r"retrying in")
def test_connection_refused_is_retried_then_fails(store: BlobStore) -> None:
    with FaultServer() as gone:
        url = gone.add("/b", DATA)
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="ConnectionError; gave up after 4 tries"):
        fill(store, ref_entry(url, DATA))
    assert time.monotonic() - t0 < 30  # four quick tries, not a hang


# -- cut bodies: resume or restart ----------------------------------------------------------------


@pytest.mark.allow_log(r"retrying in")
def test_cut_body_is_resumed_with_range(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/b", DATA, etag='"v1"')
    server.plan("/b", Fault(cut=100_000), Fault(cut=50_000))
    assert fill(store, ref_entry(url, DATA)) == DATA
    assert ranges(server) == [None, "bytes=100000-", "bytes=150000-"]
    assert [s.if_range for s in server.gets()] == [None, '"v1"', '"v1"']
    assert statuses(server) == [200, 206, 206]


@pytest.mark.allow_log(r"retrying in")
def test_object_changed_before_the_resume_is_read_again_and_refused(server: FaultServer, store: BlobStore) -> None:
    # If-Range carries the first answer's ETag: the server sends the new object whole, the
    # download starts again from byte 0, and the new bytes fail the entry's digest.
    new = os.urandom(len(DATA))
    url = server.add("/b", DATA, etag='"v1"')
    server.plan("/b", Fault(cut=100_000, change=(new, '"v2"')))
    entry = ref_entry(url, DATA)
    with pytest.raises(DigestMismatch) as info:
        fill(store, entry)
    assert info.value.actual.startswith(digest_bytes(new))
    assert ranges(server) == [None, "bytes=100000-"]
    assert statuses(server) == [200, 200]
    assert nothing_cached(store, entry)


@pytest.mark.allow_log(r"retrying in")
def test_cut_body_without_range_support_restarts(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/b", DATA, ranges=False)
    server.plan("/b", Fault(cut=100_000))
    assert fill(store, ref_entry(url, DATA)) == DATA
    assert ranges(server) == [None, None]
    assert statuses(server) == [200, 200]


@pytest.mark.allow_log(r"retrying in")
def test_resume_answered_with_200_restarts_from_zero(server: FaultServer, store: BlobStore) -> None:
    # Accept-Ranges was promised, but the resume gets the whole object: the file is truncated
    # and the hash started again, so the result is still exactly the object.
    url = server.add("/b", DATA)
    server.plan("/b", Fault(cut=100_000), Fault(ignore_range=True, cut=200_000), Fault(ignore_range=True))
    assert fill(store, ref_entry(url, DATA)) == DATA
    # the second answer (from 0) got further than the first: the third asks from there
    assert ranges(server) == [None, "bytes=100000-", "bytes=200000-"]
    assert statuses(server) == [200, 200, 200]


@pytest.mark.allow_log(r"retrying in")
def test_resume_from_the_wrong_offset_is_refused(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/b", DATA)
    server.plan("/b", Fault(cut=100_000), Fault(shift=10))
    entry = ref_entry(url, DATA)
    with pytest.raises(FetchError, match="asked for bytes from 100000, the server sends from 100010"):
        fill(store, entry)
    assert nothing_cached(store, entry)


@pytest.mark.allow_log(r"retrying in")
def test_restarts_without_progress_are_bounded(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/b", DATA, ranges=False)
    server.plan("/b", *[Fault(cut=10)] * 10)
    with pytest.raises(FetchError, match=r"body .* at byte 10 of 300000; gave up after 4 tries"):
        fill(store, ref_entry(url, DATA))
    assert len(server.gets()) == FAST.attempts


# -- timeouts ---------------------------------------------------------------------------------------


@pytest.mark.allow_log(r"retrying in")
def test_stalled_body_fails_in_bounded_time(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/b", DATA)
    server.plan("/b", *[Fault(stall=30, stall_after=0)] * 5)
    policy = Policy(read_timeout=0.2, attempts=2, backoff=0.01, backoff_max=0.01)
    entry = ref_entry(url, DATA)
    t0 = time.monotonic()
    with pytest.raises(FetchError, match=r"\(ReadTimeoutError\) at byte 0 of 300000; gave up after 2 tries"):
        fill(store, entry, policy)
    assert time.monotonic() - t0 < 20  # the timeouts, not the server's 30 s stall
    assert len(server.gets()) == 2
    assert nothing_cached(store, entry)


@pytest.mark.allow_log(r"retrying in")
def test_stall_mid_body_is_resumed(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/b", DATA)
    server.plan("/b", Fault(stall=30, stall_after=120_000))
    policy = Policy(read_timeout=0.2, attempts=2, backoff=0.01, backoff_max=0.01)
    t0 = time.monotonic()
    assert fill(store, ref_entry(url, DATA), policy) == DATA
    assert time.monotonic() - t0 < 20  # the timeouts, not the server's 30 s stall
    assert ranges(server) == [None, "bytes=120000-"]


# -- sizes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "close-delimited"])
def test_more_bytes_than_the_size_are_refused(server: FaultServer, tmp_path: Path, declared: bool) -> None:
    url = server.add("/b", DATA)
    server.plan("/b", Fault(extra=20 * MiB, no_length=not declared))
    out = tmp_path / "out"
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(FetchError, match="the server sends"):
            download(url, fd, len(DATA), WHAT, policy=FAST)
    finally:
        os.close(fd)
    assert out.stat().st_size <= len(DATA)  # never more than the size was written
    if declared:
        assert out.stat().st_size == 0  # refused on the header, before any byte
    assert len(server.gets()) == 1  # a wrong size is not retried


def test_shorter_object_is_refused(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/b", DATA[:-1])
    entry = ref_entry(url, DATA)
    with pytest.raises(FetchError, match="sends 299999 bytes, expected 300000"):
        fill(store, entry)
    assert nothing_cached(store, entry)


def test_empty_object(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/empty", b"")
    assert fill(store, ref_entry(url, b"")) == b""


# -- verification -----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [FAST, PARALLEL], ids=["stream", "parallel"])
def test_corrupted_body_is_a_digest_mismatch_and_nothing_is_cached(
    server: FaultServer, store: BlobStore, policy: Policy
) -> None:
    url = server.add("/b", BIG)
    server.plan("/b", Fault(corrupt=True))
    entry = ref_entry(url, BIG)
    with pytest.raises(DigestMismatch) as info:
        fill(store, entry, policy)
    assert info.value.expected.startswith(entry.digest)
    assert nothing_cached(store, entry)


def test_xxh128_reference(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/b", BIG)
    entry = ref_entry(url, BIG, XXH128)
    assert fill(store, entry, PARALLEL) == BIG
    assert entry.cache_key.startswith("xxh128/")


# -- parallel ranges --------------------------------------------------------------------------------


def test_large_blob_is_fetched_in_parallel_ranges(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/big", BIG, delay=0.02)  # each answer waits a little: parts overlap
    assert fill(store, ref_entry(url, BIG), PARALLEL) == BIG
    seen = server.gets()
    assert len(seen) == 13
    assert all(s.status == 206 for s in seen)
    asked = sorted(s.range or "" for s in seen)
    want = sorted(f"bytes={a}-{min(a + 256 * KiB, len(BIG)) - 1}" for a in range(0, len(BIG), 256 * KiB))
    assert asked == want
    assert server.max_in_flight >= 2
    assert part_threads() == []  # every part thread was joined


@pytest.mark.allow_log(r"retrying in")
def test_cut_part_is_resumed_within_its_range(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/big", BIG)
    server.plan("/big", Fault(), Fault(cut=1000))  # the second request: some part other than 0
    assert fill(store, ref_entry(url, BIG), PARALLEL) == BIG
    seen = server.gets()
    cut = seen[1].range
    assert cut is not None
    first, last = (int(x) for x in cut.removeprefix("bytes=").split("-"))
    assert f"bytes={first + 1000}-{last}" in [s.range for s in seen]
    assert len(seen) == 14


def test_parallel_download_from_a_server_without_ranges_is_one_stream(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/big", BIG, ranges=False)
    assert fill(store, ref_entry(url, BIG), PARALLEL) == BIG
    assert ranges(server) == [f"bytes=0-{256 * KiB - 1}"]  # the probe, answered with everything
    assert statuses(server) == [200]


def test_failed_part_stops_the_download(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/big", BIG, delay=0.02)
    server.plan("/big", Fault(), Fault(status=404))
    entry = ref_entry(url, BIG)
    with pytest.raises(FetchError, match="HTTP 404"):
        fill(store, entry, PARALLEL)
    assert part_threads() == []
    assert nothing_cached(store, entry)
    assert len(server.gets()) < 13  # the other parts stopped early


# -- the recorded ETag: the source must not have changed since it was logged ----------------------


def etag_entry(url: str, data: bytes, etag: str) -> Entry:
    return Entry("blob.bin", digest_bytes(data), len(data), ref=url, extra={"etag": etag})


@pytest.mark.parametrize("policy", [FAST, PARALLEL], ids=["stream", "parallel"])
@pytest.mark.allow_log(r"retrying in")
def test_recorded_etag_is_sent_with_every_request(server: FaultServer, store: BlobStore, policy: Policy) -> None:
    url = server.add("/b", BIG, etag='"v1"')
    # a resume too: of the stream, or of a part other than the first
    server.plan("/b", *([Fault(cut=1000)] if policy is FAST else [Fault(), Fault(cut=1000)]))
    assert fill(store, etag_entry(url, BIG, '"v1"'), policy) == BIG
    seen = server.gets()
    assert len(seen) == (2 if policy is FAST else 14)
    assert {s.if_match for s in seen} == {'"v1"'}
    assert {s.if_range for s in seen} == {None}  # If-Match already pins the object


def test_unquoted_recorded_etag_is_quoted(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/b", DATA, etag='"v1"')
    assert fill(store, etag_entry(url, DATA, "v1")) == DATA
    assert [s.if_match for s in server.gets()] == ['"v1"']


@pytest.mark.parametrize("policy", [FAST, PARALLEL], ids=["stream", "parallel"])
def test_source_changed_since_it_was_logged(
    server: FaultServer, store: BlobStore, caplog: pytest.LogCaptureFixture, policy: Policy
) -> None:
    url = server.add("/b", BIG, etag='"v2"')
    entry = etag_entry(url, BIG, '"v1"')
    with caplog.at_level(logging.DEBUG), pytest.raises(SourceChanged) as info:
        fill(store, entry, policy)
    message = str(info.value)
    assert "changed since it was logged" in message
    assert '"v1"' in message and '"v2"' in message
    assert f"127.0.0.1:{server.port}/b" in message
    assert "secret" not in message and "secret" not in caplog.text
    assert statuses(server) == [412]  # one request, no body, not retried
    assert nothing_cached(store, entry)
    assert part_threads() == []


def test_server_ignoring_if_match_is_caught_by_the_etag_header(server: FaultServer, tmp_path: Path) -> None:
    url = server.add("/b", DATA, etag='"v2"', conditional=False)
    out = tmp_path / "out"
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(SourceChanged, match='ETag "v1" was recorded, the server now has ETag "v2"'):
            download(url, fd, len(DATA), WHAT, policy=FAST, etag='"v1"')
    finally:
        os.close(fd)
    assert out.stat().st_size == 0  # refused on the headers: not one body byte written
    assert statuses(server) == [200]


@pytest.mark.parametrize("conditional", [True, False], ids=["412", "etag-header"])
@pytest.mark.allow_log(r"retrying in")
def test_object_replaced_during_the_download(server: FaultServer, store: BlobStore, conditional: bool) -> None:
    # The stream is cut, then the object is replaced: the resume must not splice new bytes in.
    new = os.urandom(len(DATA))
    url = server.add("/b", DATA, etag='"v1"', conditional=conditional)
    server.plan("/b", Fault(cut=100_000, change=(new, '"v2"')))
    entry = etag_entry(url, DATA, '"v1"')
    with pytest.raises(SourceChanged, match='the server now has ETag "v2"'):
        fill(store, entry)
    assert ranges(server) == [None, "bytes=100000-"]
    assert statuses(server) == [200, 412 if conditional else 206]
    assert nothing_cached(store, entry)


def test_object_replaced_between_parallel_parts(server: FaultServer, store: BlobStore) -> None:
    new = os.urandom(len(BIG))
    url = server.add("/big", BIG, etag='"v1"', conditional=False)
    server.plan("/big", Fault(change=(new, '"v2"')))  # every part after the first is of the new object
    entry = etag_entry(url, BIG, '"v1"')
    with pytest.raises(SourceChanged):
        fill(store, entry, PARALLEL)
    assert part_threads() == []
    assert nothing_cached(store, entry)


def test_weak_recorded_etag_is_compared_not_sent(server: FaultServer, store: BlobStore, tmp_path: Path) -> None:
    # If-Match compares strongly, so a weak ETag never matches it: it is only compared (weakly).
    url = server.add("/b", DATA, etag='W/"v1"')
    assert fill(store, etag_entry(url, DATA, 'W/"v1"')) == DATA
    assert [s.if_match for s in server.gets()] == [None]
    server.objects["/b"].etag = 'W/"v2"'
    entry = etag_entry(url, DATA, 'W/"v1"')
    store2 = BlobStore(str(tmp_path / "cache2"))  # the first store has the blob now
    try:
        with pytest.raises(SourceChanged):
            fill(store2, entry)
    finally:
        store2.close()


def test_entry_without_a_recorded_etag_sends_no_if_match(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/b", DATA, etag='"v1"')
    assert fill(store, ref_entry(url, DATA)) == DATA
    assert [s.if_match for s in server.gets()] == [None]


# -- secrets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        [Fault(status=404)],
        [Fault(status=401)],
        [Fault(status=500)] * 4,
        [Fault(cut=10)] * 4,
        [Fault(extra=10)],
        [Fault(stall=30)] * 2,
    ],
    ids=["404", "401", "500", "cut", "longer", "stall"],
)
def test_errors_never_show_secrets(
    server: FaultServer, store: BlobStore, caplog: pytest.LogCaptureFixture, faults: list[Fault]
) -> None:
    url = server.add("/b", DATA, ranges=False).replace("http://", "http://user:pass@") + "?X-Amz-Signature=secret"
    server.plan("/b", *faults)
    policy = Policy(read_timeout=0.2, attempts=2, backoff=0.01, backoff_max=0.01)
    # every logger, urllib3's DEBUG request lines included: they would show the query string
    with caplog.at_level(logging.DEBUG), pytest.raises((FetchError, AuthError)) as info:
        fill(store, ref_entry(url, DATA), policy)
    message = str(info.value)
    assert f"127.0.0.1:{server.port}/b" in message
    for text in (message, caplog.text):
        assert "secret" not in text and "pass" not in text and "user" not in text


def test_complete_body_then_a_slow_close_is_a_success(server: FaultServer, store: BlobStore) -> None:
    # No Content-Length: the body ends when the connection closes.  Every byte has arrived, then
    # the server stalls before closing: the extra-byte probe times out, which is not a failure.
    url = server.add("/b", DATA)
    server.plan("/b", Fault(no_length=True, stall=3, stall_after=len(DATA)))
    policy = Policy(read_timeout=0.3, attempts=2, backoff=0.01, backoff_max=0.01)
    assert fill(store, ref_entry(url, DATA), policy) == DATA
    assert len(server.gets()) == 1


def test_a_trickling_server_is_cut_off(server: FaultServer, store: BlobStore) -> None:
    url = server.add("/b", BIG, rate=1 * MiB)  # 1 MiB a second: every read well inside the timeout
    policy = Policy(read_timeout=5.0, attempts=2, backoff=0.01, rate_grace=0.5, min_rate=16 * MiB, chunk=64 * KiB)
    entry = ref_entry(url, BIG)
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="too slow"):
        fill(store, entry, policy)
    assert time.monotonic() - t0 < 30  # cut off, not a hang
    assert nothing_cached(store, entry)


def test_a_malformed_url_is_not_retried(store: BlobStore) -> None:
    entry = ref_entry("http:///no-host/b", DATA)
    with pytest.raises(FetchError, match="InvalidURL"):
        fill(store, entry, FAST)


def test_a_file_reference_on_another_host_is_refused(store: BlobStore, tmp_path: Path) -> None:
    local = tmp_path / "x.bin"
    local.write_bytes(DATA)
    entry = Entry("x.bin", digest_bytes(DATA), len(DATA), ref=f"file://otherhost{local}")
    with pytest.raises(FetchError, match="not a local file"):
        reference_source(entry)


# -- logging references -----------------------------------------------------------------------------


@pytest.mark.allow_log(r"retrying in")
def test_checksum_resumes_a_cut_body(server: FaultServer) -> None:
    url = server.add("/b", DATA, etag='"e1"')
    server.plan("/b", Fault(cut=1234))
    assert checksum(url, policy=FAST) == (digest_bytes(DATA), len(DATA), '"e1"')
    assert ranges(server) == [None, "bytes=1234-"]


def test_add_reference_logs_http_entries_once(server: FaultServer, tmp_path: Path) -> None:
    url = server.add("/data/labels.csv", DATA, etag='"abc"')
    local = tmp_path / "local.bin"
    local.write_bytes(b"local bytes\n")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "x.txt").write_bytes(b"x\n")
    with Api(tmp_path / "reg") as api:
        art = Artifact("ds", type="dataset")
        [entry] = art.add_reference(url)
        assert (entry.path, entry.digest, entry.size, entry.ref) == ("labels.csv", digest_bytes(DATA), len(DATA), url)
        assert dict(entry.extra) == {"etag": '"abc"'}
        art.add_reference(local.as_uri(), name="files/local.bin")
        art.add_reference(tree.as_uri(), name="tree")
        with pytest.raises(InvalidReferenceEntry, match="checksum=False"):
            art.add_reference(url, name="other.csv", checksum=False)
        with pytest.raises(InvalidReferenceEntry, match="not supported"):
            art.add_reference("gs://bucket/key")
        api.log_artifact(art, "acme/vision")
        assert len(server.gets()) == 1  # fetched once, when added
        logged = api.artifact("acme/vision/ds:latest")
        contents = logged.manifest.to_json()["contents"]
        assert contents["labels.csv"] == {
            "digest": digest_bytes(DATA),
            "ref": url,
            "size": len(DATA),
            "extra": {"etag": '"abc"'},
        }
        assert contents["files/local.bin"] == {
            "digest": digest_bytes(b"local bytes\n"),
            "ref": local.as_uri(),
            "size": 12,
        }
        assert contents["tree/sub/x.txt"]["ref"] == (tree / "sub" / "x.txt").as_uri()
        # download() fetches the reference again, verified, like any file
        root = logged.download(tmp_path / "dl")
        assert (Path(root) / "labels.csv").read_bytes() == DATA
        assert (Path(root) / "files/local.bin").read_bytes() == b"local bytes\n"
        logged.verify(root)
    assert len(server.gets()) == 2


def test_add_reference_in_an_xxh128_artifact(server: FaultServer) -> None:
    url = server.add("/m.bin", DATA)
    art = Artifact("m", type="model", digest_algorithm=XXH128)
    [entry] = art.add_reference(url)
    assert entry.digest == digest_bytes(DATA, XXH128) != digest_bytes(DATA)
    assert entry.extra == {"alg": XXH128}
    assert entry.cache_key.startswith("xxh128/")


def test_add_reference_of_a_missing_url_logs_nothing(server: FaultServer) -> None:
    url = server.add("/b", DATA).replace("/b?", "/missing?")
    art = Artifact("ds", type="dataset")
    with pytest.raises(FetchError, match="HTTP 404"):
        art.add_reference(url)
    assert art.to_log().references == []


def test_registry_refuses_reference_entries_without_a_content_digest(tmp_path: Path) -> None:
    from artifactfs.names import parse_ref
    from artifactfs.registry.local import LocalRegistry

    reg = LocalRegistry(tmp_path / "reg", create=True)
    try:
        etag_only = Entry("x.bin", "0123456789abcdef0123456789abcdef", 10, ref="https://example.com/x.bin")
        with pytest.raises(InvalidReferenceEntry, match="could never be verified"):
            reg.log_files([], parse_ref("acme/vision/ds"), type="dataset", references=[etag_only])
        with pytest.raises(InvalidReferenceEntry, match="has no ref"):
            reg.log_files([], parse_ref("acme/vision/ds"), type="dataset", references=[Entry("y", digest_bytes(b""))])
        assert reg.entities() == []
    finally:
        reg.close()


def test_a_redirected_presigned_get_is_followed(server: FaultServer, tmp_path: Path) -> None:
    """A presigned GET (no netrc, no proxy) goes straight to urllib3's pool; a redirect it gets
    is followed (by requests), and the bytes are the redirect target's."""
    data = os.urandom(70_000)
    target = server.add("/real.bin", data)
    url = server.add("/signed.bin", b"not these bytes")
    redirect = Fault(status=302, headers={"Location": target})
    server.plan("/signed.bin", redirect, redirect)  # once to urllib3's pool, once to requests
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        download(url, fd, len(data), WHAT, policy=dataclasses.replace(FAST, netrc=False))
        assert os.pread(fd, len(data) + 1, 0) == data
    finally:
        os.close(fd)
    assert [(s.path, s.status) for s in server.gets()] == [
        ("/signed.bin", 302),
        ("/signed.bin", 302),
        ("/real.bin", 200),
    ]
