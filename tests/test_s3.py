"""s3:// reference entries against moto's S3 server on 127.0.0.1 (``ThreadedMotoServer``).

Reads go through the real path: :func:`artifactfs.references.reference_source` ->
:func:`artifactfs.s3.download` (boto3) -> :meth:`BlobStore.fill` and its verification, as the
mount reads them.  Faults (throttling, 5xx, cut bodies, refused credentials) come from
``FaultProxy`` (``fault_server.py``), a reverse proxy on 127.0.0.1 in front of moto, which also
records the requests that reached it.  Buckets are named per test, so tests share one server.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from conftest import Mounter
from fault_server import Fault, FaultProxy, s3_error
from moto.server import ThreadedMotoServer
from wandb_server import WandbServer

from artifactfs import Api, Artifact, s3
from artifactfs.errors import AuthError, DigestMismatch, FetchError, InvalidReferenceEntry, SourceChanged
from artifactfs.manifest import MD5, XXH128, Entry, digest_bytes
from artifactfs.names import parse_ref
from artifactfs.references import checksum_reference, content_entry, reference_source
from artifactfs.registry.local import LocalRegistry
from artifactfs.store import Blob, BlobStore
from artifactfs.transfer import Policy

KiB = 1 << 10
MiB = 1 << 20
WHAT = "acme/vision/ds:v0/blob.bin"
ACCESS_KEY = "AKIAARTIFACTFSTEST01"
SECRET = "artifactfs-s3-test-secret-key-do-not-show"
FAST = Policy(connect_timeout=5.0, read_timeout=10.0, attempts=4, backoff=0.01, backoff_max=0.05, retry_budget=5.0)
# Parallel ranges from 8 MiB on, in parts of 4 MiB: a 40 MiB object is 10 parts.
PARALLEL = Policy(
    connect_timeout=5.0,
    read_timeout=10.0,
    attempts=4,
    backoff=0.01,
    backoff_max=0.05,
    parallel_threshold=8 * MiB,
    part_size=4 * MiB,
    workers=4,
    chunk=256 * KiB,
)
SMALL = os.urandom(300_000)


@pytest.fixture(scope="module")
def moto_port() -> Iterator[int]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    try:
        yield port
    finally:
        server.stop()


@pytest.fixture(scope="module")
def big() -> bytes:
    return os.urandom(40 * MiB + 123)


@pytest.fixture
def proxy(moto_port: int) -> Iterator[FaultProxy]:
    with FaultProxy(moto_port) as p:
        yield p


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, proxy: FaultProxy) -> None:
    """The usual boto3 environment, pointing at the proxy in front of moto; no ~/.aws."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def admin(moto_port: int, aws: None) -> Any:
    """A plain boto3 client straight to moto, to set up buckets and objects."""
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}")


@pytest.fixture
def bucket(admin: Any) -> str:
    name = f"refs-{uuid.uuid4().hex[:12]}"
    admin.create_bucket(Bucket=name)
    admin.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture
def plain_bucket(admin: Any) -> str:
    """A bucket without versioning: an overwrite replaces the object for good."""
    name = f"plain-{uuid.uuid4().hex[:12]}"
    admin.create_bucket(Bucket=name)
    return name


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BlobStore]:
    s = BlobStore(str(tmp_path / "cache"))
    yield s
    s.close()


def logged(uri: str, path: str = "blob.bin", alg: str = MD5) -> Entry:
    """The entry artifactfs logs for ``uri`` (content digest; etag and versionID in extra)."""
    digest, size, extra = checksum_reference(uri, alg, policy=FAST)
    return Entry(path, digest, size, ref=uri, extra=extra)


def wandb_entry(admin: Any, bucket: str, key: str, path: str = "blob.bin") -> Entry:
    """The entry the wandb SDK logs for an s3 object: digest = ETag without quotes, extra
    etag (same) and versionID (when the bucket is versioned)."""
    head = admin.head_object(Bucket=bucket, Key=key)
    etag = head["ETag"].strip('"')
    extra = {"etag": etag}
    if head.get("VersionId") and head["VersionId"] != "null":
        extra["versionID"] = head["VersionId"]
    return Entry(path, etag, head["ContentLength"], ref=f"s3://{bucket}/{key}", extra=extra)


def fill(store: BlobStore, entry: Entry, policy: Policy = FAST) -> bytes:
    """Fetch ``entry`` into the store, verified as the mount does, and return the cached bytes."""
    verified = content_entry(entry)
    blob = store.fill(verified.cache_key, verified, reference_source(entry, policy=policy), WHAT)
    return read_blob(blob)


def read_blob(blob: Blob) -> bytes:
    try:
        return blob.pread(blob.size + 1, 0)
    finally:
        blob.close()


def nothing_cached(store: BlobStore, entry: Entry) -> bool:
    try:
        key = content_entry(entry).cache_key
    except FetchError:
        key = None
    return (key is None or key not in store) and os.listdir(store.tmp) == []


def part_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("s3-part")]


def b64(hexdigest: str) -> str:
    return base64.b64encode(bytes.fromhex(hexdigest)).decode()


# -- right bytes ------------------------------------------------------------------------------------


def test_small_object(admin: Any, bucket: str, store: BlobStore, proxy: FaultProxy) -> None:
    put = admin.put_object(Bucket=bucket, Key="data/small.bin", Body=SMALL)
    entry = logged(f"s3://{bucket}/data/small.bin")
    assert entry.digest == digest_bytes(SMALL) and entry.size == len(SMALL)
    assert dict(entry.extra) == {"etag": put["ETag"].strip('"'), "versionID": put["VersionId"]}
    proxy.reset()
    assert fill(store, entry) == SMALL
    [get] = proxy.gets()
    assert get.range == f"bytes=0-{len(SMALL) - 1}" and get.status == 206
    assert store.open_cached(entry.cache_key) is not None


def test_large_object_in_parallel_ranges(
    admin: Any, bucket: str, store: BlobStore, proxy: FaultProxy, big: bytes
) -> None:
    admin.put_object(Bucket=bucket, Key="big.bin", Body=big)
    entry = logged(f"s3://{bucket}/big.bin")
    proxy.reset()
    assert fill(store, entry, PARALLEL) == big
    gets = proxy.gets()
    want = sorted(f"bytes={a}-{min(a + 4 * MiB, len(big)) - 1}" for a in range(0, len(big), 4 * MiB))
    assert sorted(g.range or "" for g in gets) == want  # 11 parts, each asked for once
    assert all(g.status == 206 for g in gets)
    assert proxy.max_in_flight >= 2
    assert part_threads() == []


def test_empty_object(admin: Any, bucket: str, store: BlobStore) -> None:
    admin.put_object(Bucket=bucket, Key="empty", Body=b"")
    entry = logged(f"s3://{bucket}/empty")
    assert (entry.digest, entry.size) == (digest_bytes(b""), 0)
    assert fill(store, entry) == b""


def test_xxh128_entry(admin: Any, bucket: str, store: BlobStore) -> None:
    admin.put_object(Bucket=bucket, Key="x.bin", Body=SMALL)
    entry = logged(f"s3://{bucket}/x.bin", alg=XXH128)
    assert entry.digest == digest_bytes(SMALL, XXH128) and entry.extra["alg"] == XXH128
    assert fill(store, entry) == SMALL


def test_version_in_the_uri_is_read(admin: Any, bucket: str, store: BlobStore) -> None:
    v1 = admin.put_object(Bucket=bucket, Key="k", Body=b"first\n")["VersionId"]
    admin.put_object(Bucket=bucket, Key="k", Body=b"second\n")
    entry = logged(f"s3://{bucket}/k?versionId={v1}")
    assert entry.extra["versionID"] == v1 and entry.digest == digest_bytes(b"first\n")
    assert fill(store, entry) == b"first\n"


def test_add_reference_logs_s3_objects(admin: Any, bucket: str, proxy: FaultProxy, tmp_path: Path) -> None:
    put = admin.put_object(Bucket=bucket, Key="data/labels.csv", Body=SMALL)
    uri = f"s3://{bucket}/data/labels.csv"
    proxy.reset()
    with Api(tmp_path / "reg") as api:
        art = Artifact("ds", type="dataset")
        [entry] = art.add_reference(uri)
        assert (entry.path, entry.digest, entry.size, entry.ref) == ("labels.csv", digest_bytes(SMALL), len(SMALL), uri)
        assert dict(entry.extra) == {"etag": put["ETag"].strip('"'), "versionID": put["VersionId"]}
        with pytest.raises(FetchError, match="no such object"):
            art.add_reference(f"s3://{bucket}/data/missing.csv")
        api.log_artifact(art, "acme/vision")
        assert len(proxy.gets()) == 1  # streamed once, when added (the missing one: one HEAD, 404)
        logged_art = api.artifact("acme/vision/ds:latest")
        assert logged_art.manifest.to_json()["contents"]["labels.csv"] == {
            "digest": digest_bytes(SMALL),
            "ref": uri,
            "size": len(SMALL),
            "extra": {"etag": put["ETag"].strip('"'), "versionID": put["VersionId"]},
        }
        root = logged_art.download(tmp_path / "dl")  # fetched again, verified
        assert (Path(root) / "labels.csv").read_bytes() == SMALL
        logged_art.verify(root)


# -- entries logged by the wandb SDK: the digest is the ETag --------------------------------------


def test_wandb_entry_with_a_single_part_etag_is_verified_as_md5(admin: Any, bucket: str, store: BlobStore) -> None:
    admin.put_object(Bucket=bucket, Key="w.bin", Body=SMALL)
    entry = wandb_entry(admin, bucket, "w.bin")
    verified = content_entry(entry)
    assert verified.digest == digest_bytes(SMALL) == b64(entry.digest)
    assert verified.cache_key == "md5/" + hashlib.md5(SMALL).hexdigest()
    assert fill(store, entry) == SMALL


def test_wandb_entry_with_a_wrong_etag_digest_is_a_mismatch(admin: Any, bucket: str, store: BlobStore) -> None:
    # A manifest that claims an MD5-looking ETag the bytes do not have: the store's hash catches
    # it even though the server's ETag agrees with extra.etag.
    admin.put_object(Bucket=bucket, Key="w.bin", Body=SMALL)
    entry = wandb_entry(admin, bucket, "w.bin")
    forged = Entry(entry.path, "0" * 32, entry.size, ref=entry.ref, extra=dict(entry.extra))
    with pytest.raises(DigestMismatch):
        fill(store, forged)
    assert nothing_cached(store, forged)


def multipart_put(admin: Any, bucket: str, key: str, parts: list[bytes]) -> dict[str, Any]:
    upload = admin.create_multipart_upload(Bucket=bucket, Key=key)
    done = []
    for n, data in enumerate(parts, 1):
        part = admin.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=n, Body=data)
        done.append({"ETag": part["ETag"], "PartNumber": n})
    result: dict[str, Any] = admin.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": done}
    )
    return result


def test_wandb_entry_with_a_multipart_etag_is_refused(admin: Any, bucket: str, store: BlobStore) -> None:
    parts = [os.urandom(5 * MiB), os.urandom(1000)]
    multipart_put(admin, bucket, "mp.bin", parts)
    entry = wandb_entry(admin, bucket, "mp.bin")
    assert entry.digest.endswith("-2")
    with pytest.raises(FetchError, match=r"multipart S3 ETag .* cannot be verified"):
        content_entry(entry)
    # Logged by artifactfs, the same object carries its content MD5 and is served.
    ours = logged(entry.ref or "")
    assert ours.digest == digest_bytes(b"".join(parts)) and ours.extra["etag"] == entry.digest
    assert fill(store, ours) == b"".join(parts)


def test_wandb_entry_of_an_sse_kms_object_is_refused(admin: Any, bucket: str, store: BlobStore) -> None:
    # An SSE-KMS object's ETag is not its MD5 (moto's is, real S3's is not): the answer's
    # encryption header shows it, and the entry whose digest is that ETag is refused unread.
    admin.put_object(Bucket=bucket, Key="kms.bin", Body=SMALL, ServerSideEncryption="aws:kms")
    entry = wandb_entry(admin, bucket, "kms.bin")
    with pytest.raises(FetchError, match="SSE-KMS or SSE-C") as info:
        fill(store, entry)
    assert not isinstance(info.value, DigestMismatch)
    assert nothing_cached(store, entry)
    ours = logged(entry.ref or "")  # a content digest: verified by hashing, so served
    assert fill(store, ours) == SMALL


# -- the object must be the one that was logged ---------------------------------------------------


@pytest.mark.parametrize("who", ["artifactfs", "wandb"])
def test_overwritten_object_is_source_changed(
    admin: Any, plain_bucket: str, store: BlobStore, proxy: FaultProxy, who: str
) -> None:
    old = admin.put_object(Bucket=plain_bucket, Key="k.bin", Body=SMALL)["ETag"].strip('"')
    uri = f"s3://{plain_bucket}/k.bin"
    entry = logged(uri) if who == "artifactfs" else wandb_entry(admin, plain_bucket, "k.bin")
    new = admin.put_object(Bucket=plain_bucket, Key="k.bin", Body=os.urandom(len(SMALL)))["ETag"].strip('"')
    proxy.reset()
    with pytest.raises(SourceChanged) as info:
        fill(store, entry)
    message = str(info.value)
    assert "changed since it was logged" in message and old in message and new in message
    assert uri in message
    assert [g.status for g in proxy.gets()] == [412]  # IfMatch: refused before any body byte
    assert nothing_cached(store, entry)


def test_new_version_does_not_change_a_versioned_entry(
    admin: Any, bucket: str, store: BlobStore, proxy: FaultProxy
) -> None:
    admin.put_object(Bucket=bucket, Key="k.bin", Body=SMALL)
    entry = logged(f"s3://{bucket}/k.bin")
    admin.put_object(Bucket=bucket, Key="k.bin", Body=b"a newer version\n")
    assert fill(store, entry) == SMALL  # the recorded version, still there


def test_deleted_version_is_source_changed(admin: Any, bucket: str, store: BlobStore) -> None:
    version = admin.put_object(Bucket=bucket, Key="k.bin", Body=SMALL)["VersionId"]
    entry = logged(f"s3://{bucket}/k.bin")
    admin.put_object(Bucket=bucket, Key="k.bin", Body=b"newer\n")
    admin.delete_object(Bucket=bucket, Key="k.bin", VersionId=version)
    with pytest.raises(SourceChanged, match=f"version {version} no longer exists"):
        fill(store, entry)
    assert nothing_cached(store, entry)


@pytest.mark.allow_log(r"retrying in")
def test_object_replaced_during_a_parallel_download(
    admin: Any, plain_bucket: str, store: BlobStore, proxy: FaultProxy, big: bytes
) -> None:
    # No ETag recorded: the first answer's pins the object; a part cut mid-way resumes after
    # the object was replaced, and the resume is refused instead of splicing new bytes in.
    admin.put_object(Bucket=plain_bucket, Key="big.bin", Body=big)
    entry = Entry("big.bin", digest_bytes(big), len(big), ref=f"s3://{plain_bucket}/big.bin")

    def replace() -> None:  # after the old bytes are read upstream, before the client gets them
        admin.put_object(Bucket=plain_bucket, Key="big.bin", Body=b"replaced\n")

    proxy.plan(f"/{plain_bucket}/big.bin", Fault(cut=1000, hook=replace))
    with pytest.raises(SourceChanged, match="changed during the download"):
        fill(store, entry, PARALLEL)
    assert 412 in [g.status for g in proxy.gets()]
    assert part_threads() == []
    assert nothing_cached(store, entry)


# -- failures ---------------------------------------------------------------------------------------


def test_missing_object_fails_cleanly(admin: Any, bucket: str, store: BlobStore, proxy: FaultProxy) -> None:
    entry = Entry("gone.bin", digest_bytes(SMALL), len(SMALL), ref=f"s3://{bucket}/gone.bin")
    with pytest.raises(FetchError, match=r"NoSuchKey \(HTTP 404\): no such object") as info:
        fill(store, entry)
    assert not isinstance(info.value, SourceChanged)
    assert len(proxy.gets()) == 1  # not retried
    assert nothing_cached(store, entry)
    with pytest.raises(FetchError, match="no such object"):
        checksum_reference(f"s3://{bucket}/gone.bin", policy=FAST)
    no_bucket = Entry("x", digest_bytes(SMALL), len(SMALL), ref="s3://no-such-bucket-artifactfs/x")
    with pytest.raises(FetchError, match="NoSuchBucket"):
        fill(store, no_bucket)


def test_wrong_size_is_refused(admin: Any, bucket: str, store: BlobStore) -> None:
    admin.put_object(Bucket=bucket, Key="k.bin", Body=SMALL)
    entry = logged(f"s3://{bucket}/k.bin")
    longer = Entry(entry.path, entry.digest, entry.size + 1, ref=entry.ref, extra=dict(entry.extra))
    with pytest.raises(FetchError, match=f"the object has {len(SMALL)} bytes, expected {len(SMALL) + 1}"):
        fill(store, longer)
    assert nothing_cached(store, longer)


@pytest.mark.allow_log(r"retrying in")
def test_throttling_and_5xx_are_retried_and_a_cut_body_resumed(
    admin: Any, bucket: str, store: BlobStore, proxy: FaultProxy
) -> None:
    admin.put_object(Bucket=bucket, Key="t.bin", Body=SMALL)
    entry = logged(f"s3://{bucket}/t.bin")
    proxy.reset()
    policy = Policy(attempts=4, backoff=0.01, backoff_max=0.05, chunk=64 * KiB)
    path = f"/{bucket}/t.bin"
    proxy.plan(path, s3_error(503, "SlowDown"), s3_error(500, "InternalError"), Fault(cut=200_000))
    assert fill(store, entry, policy) == SMALL
    gets = proxy.gets()
    assert [g.status for g in gets] == [503, 500, 206, 206]
    assert gets[3].range == f"bytes=200000-{len(SMALL) - 1}"  # right after the last byte received


@pytest.mark.allow_log(r"retrying in")
def test_cut_part_is_resumed_within_its_range(
    admin: Any, bucket: str, store: BlobStore, proxy: FaultProxy, big: bytes
) -> None:
    admin.put_object(Bucket=bucket, Key="big.bin", Body=big)
    entry = logged(f"s3://{bucket}/big.bin")
    proxy.reset()
    proxy.plan(f"/{bucket}/big.bin", Fault(), s3_error(503, "SlowDown"), Fault(cut=300_000))
    assert fill(store, entry, PARALLEL) == big
    gets = proxy.gets()
    assert len(gets) == 11 + 2  # every part once, one throttled retry, one resume
    cut = gets[2].range
    assert cut is not None and gets[2].status == 206
    first, last = (int(x) for x in cut.removeprefix("bytes=").split("-"))
    assert f"bytes={first + 300_000}-{last}" in [g.range for g in gets]
    assert part_threads() == []


@pytest.mark.allow_log(r"retrying in")
def test_retries_are_bounded(admin: Any, bucket: str, store: BlobStore, proxy: FaultProxy) -> None:
    admin.put_object(Bucket=bucket, Key="t.bin", Body=SMALL)
    entry = logged(f"s3://{bucket}/t.bin")
    proxy.reset()
    proxy.plan(f"/{bucket}/t.bin", *[s3_error(503, "SlowDown")] * 10)
    with pytest.raises(FetchError, match=r"SlowDown \(HTTP 503\); gave up after 4 tries"):
        fill(store, entry)
    assert len(proxy.gets()) == FAST.attempts
    assert nothing_cached(store, entry)


@pytest.mark.allow_log(r"retrying in")
def test_connection_refused_is_retried_then_fails(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch, aws: None, proxy: FaultProxy
) -> None:
    with FaultProxy(proxy.upstream_port) as gone:
        url = gone.url
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
    entry = Entry("x", digest_bytes(SMALL), len(SMALL), ref="s3://bkt/x")
    with pytest.raises(FetchError, match="EndpointConnectionError; gave up after 4 tries"):
        fill(store, entry)


@pytest.mark.parametrize(
    "fault",
    [s3_error(403, "AccessDenied"), s3_error(403, "SignatureDoesNotMatch"), s3_error(403, "InvalidAccessKeyId")],
    ids=["denied", "signature", "key"],
)
def test_refused_credentials_are_auth_errors_without_secrets(
    admin: Any, bucket: str, store: BlobStore, proxy: FaultProxy, caplog: pytest.LogCaptureFixture, fault: Fault
) -> None:
    admin.put_object(Bucket=bucket, Key="k.bin", Body=SMALL)
    entry = logged(f"s3://{bucket}/k.bin")
    proxy.plan(f"/{bucket}/k.bin", fault)
    proxy.reset()
    with caplog.at_level(logging.DEBUG), pytest.raises(AuthError, match="credentials missing or refused") as info:
        fill(store, entry)
    assert len(proxy.gets()) == 1  # not retried
    assert SECRET not in str(info.value) and SECRET not in caplog.text
    assert "injected by the test" not in str(info.value)  # S3's message is not echoed


def test_errors_never_show_the_secret_key(
    admin: Any,
    bucket: str,
    plain_bucket: str,
    store: BlobStore,
    proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = "artifactfs-session-token-not-for-logs"
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)  # sent with every request, as a header
    admin.put_object(Bucket=plain_bucket, Key="k.bin", Body=SMALL)
    changed = logged(f"s3://{plain_bucket}/k.bin")
    admin.put_object(Bucket=plain_bucket, Key="k.bin", Body=b"other")
    missing = Entry("m", digest_bytes(SMALL), len(SMALL), ref=f"s3://{bucket}/missing")
    admin.put_object(Bucket=bucket, Key="t.bin", Body=SMALL)
    throttled = logged(f"s3://{bucket}/t.bin")
    proxy.plan(f"/{bucket}/t.bin", *[s3_error(503, "SlowDown")] * 10)
    messages = []
    # botocore's and urllib3's DEBUG request lines too (an in-process CLI run earlier in the
    # session may have raised the urllib3 logger's own level: set it here, restored after)
    # botocore at DEBUG on purpose: its request loggers must still keep signed requests out
    with (
        caplog.at_level(logging.DEBUG),
        caplog.at_level(logging.DEBUG, logger="urllib3"),
        caplog.at_level(logging.DEBUG, logger="botocore"),
    ):
        for entry in (changed, missing, throttled):
            with pytest.raises(FetchError) as info:
                fill(store, entry)
            messages.append(str(info.value))
    assert "urllib3.connectionpool" in caplog.text  # DEBUG lines were captured
    for text in [*messages, caplog.text]:
        assert SECRET not in text and token not in text
    assert ACCESS_KEY not in "".join(messages)


def test_no_credentials_is_an_auth_error(
    monkeypatch: pytest.MonkeyPatch, store: BlobStore, aws: None, bucket: str
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role probe
    entry = Entry("x", digest_bytes(SMALL), len(SMALL), ref=f"s3://{bucket}/x")
    with pytest.raises(AuthError, match="no AWS credentials found"):
        fill(store, entry)


def test_missing_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch, store: BlobStore) -> None:
    monkeypatch.setattr(s3, "_boto", None)
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> ImportError
    entry = Entry("x", digest_bytes(SMALL), len(SMALL), ref="s3://bkt/x")
    with pytest.raises(FetchError, match=r"need boto3.*pip install artifactfs\[s3\]"):
        fill(store, entry)
    with pytest.raises(FetchError, match=r"pip install artifactfs\[s3\]"):
        checksum_reference("s3://bkt/x")


def test_artifactfs_imports_boto3_only_in_s3() -> None:
    # Importing the package (and using http references) must not need boto3.
    code = (
        "import sys; sys.modules['boto3'] = None; sys.modules['botocore'] = None\n"
        "import artifactfs, artifactfs.references, artifactfs.api, artifactfs.cli, artifactfs.mount\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


# -- other schemes ----------------------------------------------------------------------------------


def test_gs_references_are_declined() -> None:
    entry = Entry("g", digest_bytes(SMALL), len(SMALL), ref="gs://bucket/obj")
    with pytest.raises(FetchError, match="gs:// references are not supported; "):
        reference_source(entry)
    with pytest.raises(InvalidReferenceEntry, match="gs:// references are not supported"):
        checksum_reference("gs://bucket/obj")


def test_file_references_are_refused_for_a_remote_registry(tmp_path: Path, store: BlobStore) -> None:
    local = tmp_path / "x.bin"
    local.write_bytes(SMALL)
    entry = Entry("x.bin", digest_bytes(SMALL), len(SMALL), ref=local.as_uri())
    with pytest.raises(FetchError, match=r"file:// reference .* refused: this registry is not on this machine"):
        reference_source(entry, allow_file=False)
    assert fill(store, entry) == SMALL  # allowed for a registry on this machine


def test_content_entry() -> None:
    digest = digest_bytes(SMALL)
    ours = Entry("a", digest, 1, ref="s3://b/k", extra={"etag": "x-2"})
    assert content_entry(ours) is ours
    # Not a reference: the entry itself, unchecked (its manifest checked the digest when read).
    uploaded = Entry("u", digest, 1)
    assert content_entry(uploaded) is uploaded
    with pytest.raises(FetchError, match="not a content hash"):
        content_entry(Entry("h", '"abc"', 1, ref="https://example.com/h"))
    with pytest.raises(FetchError, match="not a content hash"):
        content_entry(Entry("u", "s3://b/k", 1, ref="s3://b/k"))  # logged with checksum=False
    weak = Entry("w", 'W/"' + "a" * 32 + '"', 1, ref="s3://b/k")
    with pytest.raises(FetchError, match="not a content hash"):
        content_entry(weak)
    md5 = hashlib.md5(SMALL).hexdigest()
    converted = content_entry(Entry("s", md5.upper(), len(SMALL), ref="s3://b/k"))
    assert converted.digest == digest and converted.extra["etag"] == md5.upper()


# -- a real mount -----------------------------------------------------------------------------------


@pytest.mark.allow_log(r"artifactfs\.ops: read: ", r"fetch failed: ")
def test_s3_reference_entries_on_a_mount(
    mounter: Mounter, admin: Any, bucket: str, plain_bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB + 5)
    admin.put_object(Bucket=bucket, Key="train/data.bin", Body=data)
    admin.put_object(Bucket=plain_bucket, Key="labels.csv", Body=b"a,b\n1,2\n")
    entries = [
        logged(f"s3://{bucket}/train/data.bin", "remote/data.bin"),
        logged(f"s3://{plain_bucket}/labels.csv", "remote/labels.csv"),
    ]
    reg_dir = tmp_path / "reg"
    reg = LocalRegistry(reg_dir, create=True)
    try:
        reg.log_files([], parse_ref("acme/vision/refs"), type="dataset", references=entries)
    finally:
        reg.close()
    proxy.reset()
    m = mounter(reg_dir)  # the daemon inherits the AWS environment (endpoint: the proxy)
    version = m.path / "acme" / "vision" / "refs:v0"
    assert (version / "remote" / "data.bin").read_bytes() == data
    assert [g.status for g in proxy.gets()] == [206]
    # the object behind labels.csv is overwritten: EIO, and the log says why
    admin.put_object(Bucket=plain_bucket, Key="labels.csv", Body=b"a,b\n3,4\n")
    with pytest.raises(OSError) as info:
        (version / "remote" / "labels.csv").read_bytes()
    assert info.value.errno == errno.EIO
    log = m.log()
    assert "acme/vision/refs:v0/remote/labels.csv" in log and "changed since it was logged" in log
    assert SECRET not in log
    assert m.stats()["fetch_errors"] == 1


@pytest.mark.allow_log(r"artifactfs\.ops: read: ", r"fetch failed: ")
def test_wandb_logged_s3_entries_on_a_mount(
    mounter: Mounter,
    admin: Any,
    bucket: str,
    plain_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Entries as the wandb SDK logs s3 objects (digest = ETag), served by a W&B-compatible test
    # server on 127.0.0.1 and read through a real mount of the wandb registry.
    data = os.urandom(2 * MiB + 9)
    admin.put_object(Bucket=bucket, Key="d/data.bin", Body=data)
    multipart_put(admin, bucket, "d/mp.bin", [os.urandom(5 * MiB), b"tail"])
    admin.put_object(Bucket=plain_bucket, Key="labels.csv", Body=b"a,b\n1,2\n")
    refs = {}
    for path, (b, key) in {
        "data.bin": (bucket, "d/data.bin"),
        "mp.bin": (bucket, "d/mp.bin"),
        "labels.csv": (plain_bucket, "labels.csv"),
    }.items():
        e = wandb_entry(admin, b, key, path)
        refs[path] = {"ref": e.ref, "digest": e.digest, "size": e.size, "extra": dict(e.extra)}
    key = "0123456789abcdef0123456789abcdef01234567"
    for name in ("WANDB_ENTITY",):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    with WandbServer(api_key=key, viewer_entity="acme") as server:
        server.add_artifact("acme", "vision", "s3refs", "dataset", {"plain.txt": b"plain\n"}, references=refs)
        monkeypatch.setenv("WANDB_BASE_URL", server.url)
        admin.put_object(Bucket=plain_bucket, Key="labels.csv", Body=b"a,b\n3,4\n")  # changed since logged
        m = mounter(Path("wandb"))
        version = m.path / "acme" / "vision" / "s3refs:v0"
        assert (version / "data.bin").read_bytes() == data  # verified as the MD5 its ETag is
        assert (version / "plain.txt").read_bytes() == b"plain\n"
        for name in ("mp.bin", "labels.csv"):
            with pytest.raises(OSError) as info:
                (version / name).read_bytes()
            assert info.value.errno == errno.EIO
        log = m.log()
        assert "multipart S3 ETag" in log and "changed since it was logged" in log
        assert SECRET not in log and key not in log
