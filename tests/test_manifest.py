"""The W&B manifest v1 model: JSON in and out, validation, digests, parity with the wandb SDK."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import xxhash
from conftest import b64md5
from hypothesis import given, settings
from hypothesis import strategies as st

from artifactfs.digests import hash_fd
from artifactfs.errors import InvalidPath, ManifestError
from artifactfs.manifest import (
    EMPTY_MD5_B64,
    MD5,
    XXH128,
    Entry,
    Manifest,
    artifact_digest,
    digest_bytes,
    hex_from_b64,
)
from artifactfs.names import parse_ref
from artifactfs.registry.local import LocalRegistry


def b64xxh(data: bytes) -> str:
    return base64.b64encode(xxhash.xxh128(data).digest()).decode()


SAMPLE: dict[str, Any] = {
    "version": 1,
    "storagePolicy": "wandb-storage-policy-v1",
    "storagePolicyConfig": {"storageLayout": "V2", "storageRegion": "us-east1"},
    "contents": {
        "a.txt": {"digest": b64md5(b"hello\n"), "size": 6},
        "dir/empty": {"digest": EMPTY_MD5_B64, "size": 0},
        "dir/sub/x.bin": {"digest": b64md5(b"x"), "size": 1, "birthArtifactID": "QXJ0aWZhY3Q6MQ=="},
        "s3ref": {
            "digest": "d41d8cd98f00b204e9800998ecf8427e-2",
            "ref": "s3://bucket/key",
            "size": 1234,
            "extra": {"etag": '"abc"', "versionID": "v9"},
        },
        "unsized-ref": {"digest": "https://example.com/file", "ref": "https://example.com/file"},
        "\u00fcnic\u00f8de dir/\u65e5\u672c.txt": {"digest": b64md5(b"u"), "size": 1},
    },
}


# -- JSON in and out -----------------------------------------------------------------------------


def test_round_trip_dict() -> None:
    manifest = Manifest.from_json(copy.deepcopy(SAMPLE))
    assert manifest.to_json() == SAMPLE


def test_round_trip_text() -> None:
    text = json.dumps(SAMPLE, ensure_ascii=False)
    manifest = Manifest.loads(text)
    again = Manifest.loads(manifest.dumps())
    assert again.to_json() == SAMPLE
    assert Manifest.loads(text.encode("utf-8")).to_json() == SAMPLE


def test_parsed_fields() -> None:
    manifest = Manifest.from_json(SAMPLE)
    assert set(manifest.entries) == set(SAMPLE["contents"])
    a = manifest.entries["a.txt"]
    assert (a.path, a.digest, a.size, a.ref, a.birth_artifact_id, dict(a.extra)) == (
        "a.txt",
        b64md5(b"hello\n"),
        6,
        None,
        None,
        {},
    )
    assert a.alg == MD5
    assert a.cache_key == "md5/" + hashlib.md5(b"hello\n").hexdigest()
    x = manifest.entries["dir/sub/x.bin"]
    assert x.birth_artifact_id == "QXJ0aWZhY3Q6MQ=="
    ref = manifest.entries["s3ref"]
    assert ref.ref == "s3://bucket/key"
    assert ref.extra["versionID"] == "v9"
    assert manifest.entries["unsized-ref"].size == 0
    assert manifest.size == 6 + 0 + 1 + 1234 + 0 + 1
    assert manifest.storage_policy_config["storageRegion"] == "us-east1"


def test_default_fields_omitted_like_the_sdk() -> None:
    entry = Entry("f", b64md5(b"abc"), 3)
    assert entry.to_json() == {"digest": b64md5(b"abc"), "size": 3}
    # An uploaded empty file keeps "size": 0, as wandb's to_manifest_json writes it.
    assert Entry("e", EMPTY_MD5_B64, 0).to_json() == {"digest": EMPTY_MD5_B64, "size": 0}
    ref = Entry("r", "etag", 0, ref="s3://b/k")
    assert ref.to_json() == {"digest": "etag", "ref": "s3://b/k"}


def test_unknown_keys_tolerated() -> None:
    doc = copy.deepcopy(SAMPLE)
    doc["somethingNew"] = {"nested": [1, 2]}
    doc["contents"]["a.txt"]["local_path"] = "/home/someone/.cache/wandb/a.txt"
    doc["contents"]["a.txt"]["skip_cache"] = True
    doc["contents"]["a.txt"]["futureField"] = 42
    manifest = Manifest.from_json(doc)
    assert manifest.entries["a.txt"].size == 6
    assert manifest.to_json() == SAMPLE  # unknown keys are dropped, not echoed


def test_null_size_and_extra() -> None:
    doc = {"version": 1, "contents": {"f": {"digest": EMPTY_MD5_B64, "size": None, "extra": None}}}
    entry = Manifest.from_json(doc).entries["f"]
    assert entry.size == 0
    assert dict(entry.extra) == {}


def test_missing_policy_gets_defaults() -> None:
    manifest = Manifest.from_json({"version": 1, "contents": {}})
    assert manifest.to_json() == {
        "version": 1,
        "storagePolicy": "wandb-storage-policy-v1",
        "storagePolicyConfig": {},
        "contents": {},
    }
    assert Manifest().to_json()["storagePolicyConfig"] == {"storageLayout": "V2"}


def test_xxh128_entries() -> None:
    data = b"some content"
    digest = b64xxh(data)
    doc = {"version": 1, "contents": {"m.bin": {"digest": digest, "size": len(data), "extra": {"alg": "XXH128"}}}}
    manifest = Manifest.from_json(doc)
    entry = manifest.entries["m.bin"]
    assert entry.alg == XXH128
    assert entry.cache_key == "xxh128/" + xxhash.xxh128(data).hexdigest()
    assert digest_bytes(data, XXH128) == digest
    assert manifest.to_json()["contents"] == doc["contents"]
    # The artifact digest of an XXH128 artifact is the xxh128 of the same text.
    text = b"wandb-artifact-manifest-v1\n" + f"m.bin:{digest}\n".encode()
    assert manifest.digest(XXH128) == xxhash.xxh128(text).hexdigest()


def test_non_string_alg_means_md5() -> None:
    entry = Entry("f", EMPTY_MD5_B64, 0, extra={"alg": 5})
    assert entry.alg == MD5


# -- malformed manifests -------------------------------------------------------------------------


def _doc(contents: Any, **top: Any) -> dict[str, Any]:
    return {"version": 1, "storagePolicy": "wandb-storage-policy-v1", "contents": contents, **top}


@pytest.mark.parametrize(
    "text",
    ["", "not json", "{", '{"version": 1, "contents": {}', b"\xff\xfe\x00garbage", "[1, 2", "NaN-ish"],
)
def test_not_json(text: str | bytes) -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.loads(text)


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ([], "expected a JSON object"),
        ("manifest", "expected a JSON object"),
        (None, "expected a JSON object"),
        ({"contents": {}}, "unsupported version None"),
        ({"version": 2, "contents": {}}, "unsupported version 2"),
        ({"version": "1", "contents": {}}, "unsupported version '1'"),
        ({"version": 0, "contents": {}}, "unsupported version 0"),
        ({"version": 1}, "contents"),
        (_doc([]), "contents"),
        (_doc([{"digest": EMPTY_MD5_B64}]), "contents"),
        (_doc("a.txt"), "contents"),
        (_doc(None), "contents"),
        (_doc({}, storagePolicy=7), "storagePolicy"),
        (_doc({}, storagePolicyConfig=[1]), "storagePolicyConfig"),
        (_doc({"a": "digest"}), "'a': expected an object"),
        (_doc({"a": {}}), "'a': missing or invalid digest"),
        (_doc({"a": {"size": 3}}), "'a': missing or invalid digest"),
        (_doc({"a": {"digest": ""}}), "'a': missing or invalid digest"),
        (_doc({"a": {"digest": 123}}), "'a': missing or invalid digest"),
        (_doc({"a": {"digest": EMPTY_MD5_B64, "size": -1}}), "'a': invalid size -1"),
        (_doc({"a": {"digest": EMPTY_MD5_B64, "size": "3"}}), "'a': invalid size"),
        (_doc({"a": {"digest": EMPTY_MD5_B64, "size": 1.5}}), "'a': invalid size"),
        (_doc({"a": {"digest": EMPTY_MD5_B64, "size": True}}), "'a': invalid size"),
        (_doc({"a": {"digest": "not base64!!"}}), "not base64"),
        (_doc({"a": {"digest": "sZRqySSS0jR8YjW00mERhA="}}), "not base64"),
        (_doc({"a": {"digest": base64.b64encode(b"x" * 15).decode()}}), "not 16 bytes"),
        (_doc({"a": {"digest": base64.b64encode(b"x" * 32).decode()}}), "not 16 bytes"),
        (_doc({"a": {"digest": "d41d8cd98f00b204e9800998ecf8427e"}}), "not 16 bytes"),
        (_doc({"a": {"digest": EMPTY_MD5_B64, "ref": 5}}), "invalid ref"),
        (_doc({"a": {"digest": EMPTY_MD5_B64, "birthArtifactID": 5}}), "invalid birthArtifactID"),
        (_doc({"a": {"digest": EMPTY_MD5_B64, "extra": [1]}}), "invalid extra"),
        (_doc({"a": {"digest": EMPTY_MD5_B64, "extra": {"alg": "SHA256"}}}), "unsupported digest algorithm"),
    ],
)
def test_malformed(doc: Any, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        Manifest.from_json(doc)
    if doc is not None:
        with pytest.raises(ManifestError):
            Manifest.loads(json.dumps(doc))


def test_reference_digest_need_not_be_a_content_hash() -> None:
    doc = _doc({"r": {"digest": "an-etag", "ref": "https://example.com/x", "size": 3}})
    assert Manifest.from_json(doc).entries["r"].digest == "an-etag"


@pytest.mark.parametrize(
    "path",
    ["../etc/passwd", "a/../../b", "/etc/passwd", "a//b", "a/", "./a", "a\x00b", "C:evil", "a\\b", ".", "..", ""],
)
def test_unsafe_entry_paths_rejected(path: str) -> None:
    doc = _doc({"ok.txt": {"digest": EMPTY_MD5_B64}, path: {"digest": EMPTY_MD5_B64, "size": 0}})
    with pytest.raises(InvalidPath) as info:
        Manifest.from_json(doc)
    if path:
        assert repr(path) in str(info.value)
    with pytest.raises(InvalidPath):
        Manifest.loads(json.dumps(doc))
    # Even a reference entry cannot smuggle in a bad path.
    with pytest.raises(InvalidPath):
        Manifest.from_json(_doc({path: {"digest": "x", "ref": "https://example.com/x"}}))


def test_manifest_add_validates_path() -> None:
    manifest = Manifest()
    manifest.add(Entry("good/path", EMPTY_MD5_B64))
    with pytest.raises(InvalidPath):
        manifest.add(Entry("../bad", EMPTY_MD5_B64))
    assert list(manifest.entries) == ["good/path"]


def test_entry_from_json_validates_path() -> None:
    with pytest.raises(InvalidPath):
        Entry.from_json("a/../b", {"digest": EMPTY_MD5_B64})


# -- digests -------------------------------------------------------------------------------------


def test_hex_from_b64() -> None:
    assert hex_from_b64(EMPTY_MD5_B64) == hashlib.md5(b"").hexdigest()
    with pytest.raises(ManifestError, match="not base64"):
        hex_from_b64("%%%")
    with pytest.raises(ManifestError, match="not 16 bytes"):
        hex_from_b64("")


def test_entry_digests() -> None:
    assert digest_bytes(b"") == EMPTY_MD5_B64
    assert digest_bytes(b"hello\n") == "sZRqySSS0jR8YjW00mERhA=="  # from the protocol notes
    assert digest_bytes(b"hello\n", XXH128) == b64xxh(b"hello\n")
    with pytest.raises(ManifestError, match="unsupported digest algorithm"):
        digest_bytes(b"x", "SHA1")


def test_artifact_digest_definition() -> None:
    items = [("b.txt", "B"), ("a.txt", "A"), ("Z/x", "Z"), ("\u00e9", "E")]
    text = b"wandb-artifact-manifest-v1\n" + "".join(f"{p}:{d}\n" for p, d in sorted(items)).encode()
    assert artifact_digest(items) == hashlib.md5(text).hexdigest()
    assert artifact_digest(reversed(items)) == artifact_digest(items)
    assert artifact_digest(items, XXH128) == xxhash.xxh128(text).hexdigest()
    # Sorted by code point (= UTF-8 byte order): upper case before lower case before non-ASCII.
    assert [p for p, _ in sorted(items)] == ["Z/x", "a.txt", "b.txt", "\u00e9"]
    assert artifact_digest([]) == hashlib.md5(b"wandb-artifact-manifest-v1\n").hexdigest()


def test_artifact_digest_only_path_and_digest() -> None:
    m1 = Manifest()
    m1.add(Entry("a", EMPTY_MD5_B64, 0))
    m2 = Manifest()
    m2.add(Entry("a", EMPTY_MD5_B64, 99, ref="file:///a", extra={"x": 1}))
    assert m1.digest() == m2.digest()
    m3 = Manifest()
    m3.add(Entry("b", EMPTY_MD5_B64, 0))
    assert m3.digest() != m1.digest()


@pytest.mark.parametrize("chunk", [1 << 20, 7], ids=["default-chunk", "small-chunks"])
def test_hash_fd_with_limit_reads_at_most_limit_plus_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    path = tmp_path / "blob"
    path.write_bytes(data)
    read: list[int] = []
    real_pread = os.pread

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        out = real_pread(fd, n, offset)
        read.append(len(out))
        return out

    monkeypatch.setattr(os, "pread", counting_pread)
    fd = os.open(path, os.O_RDONLY)
    try:
        # too long for the limit: exactly limit + 1 bytes are read, enough to tell
        assert hash_fd(fd, MD5, limit=100, chunk=chunk) == (b64md5(data[:101]), 101)
        assert sum(read) == 101
        read.clear()
        # a limit at or above the size: the whole file, and the one empty read that ends it
        assert hash_fd(fd, MD5, limit=len(data), chunk=chunk) == (b64md5(data), len(data))
        assert sum(read) == len(data)
        read.clear()
        assert hash_fd(fd, XXH128, limit=0, chunk=chunk) == (b64xxh(data[:1]), 1)
        assert sum(read) == 1
        assert hash_fd(fd, MD5, chunk=chunk) == (b64md5(data), len(data))  # no limit
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # pread: the file offset is untouched
    finally:
        os.close(fd)
    empty = tmp_path / "empty"
    empty.touch()
    fd = os.open(empty, os.O_RDONLY)
    try:
        assert hash_fd(fd, MD5, limit=0) == (EMPTY_MD5_B64, 0)
    finally:
        os.close(fd)


# -- parity with the real wandb SDK --------------------------------------------------------------


def _make_tree(root: Path) -> None:
    root.mkdir()
    files: dict[str, bytes] = {
        "B.txt": b"upper B\n",
        "a.txt": b"hello\n",
        "Z/x": b"zx",
        "b/y": b"why",
        "_under": b"_",
        "empty.bin": b"",
        "deep/er/still/empty": b"",
        "deep/er/file with spaces.txt": b"spaces " * 100,
        "\u00fcnic\u00f8de/\u65e5\u672c\u8a9e \u2603.txt": "snow \u2603".encode(),
        "\u00e9t\u00e9/caf\u00e9.csv": b"a,b\n1,2\n",
        "e\u0301/decomposed": b"nfd",
        ".hidden": b"secret",
        ".dir/.also-hidden": b"x",
        "latest": b"a file named latest",
        "v0": b"a file named v0",
        "data:v1.txt": b"colon",
        "big.bin": os.urandom(3 * 1024 * 1024 + 17),
        "dup1": b"same bytes",
        "dup2/dup": b"same bytes",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "link-to-a").symlink_to(root / "a.txt")


@pytest.fixture
def wandb_sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The real wandb SDK, fully offline, with every directory it may write inside tmp_path."""
    sandbox = tmp_path / "wandb-sandbox"
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_DIR", "WANDB_ARTIFACT_DIR"):
        path = sandbox / var.lower()
        path.mkdir(parents=True)
        monkeypatch.setenv(var, str(path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("HOME", str(sandbox))
    return import_wandb()


def import_wandb() -> Any:
    """The wandb SDK; without it the parity test skips, except in CI (``CI=true``), where it
    fails: a CI run must not pass without the comparison it exists for (as FUSE in conftest)."""
    try:
        import wandb
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the wandb SDK is required in CI: {exc}")
        pytest.skip(f"the wandb SDK is not installed: {exc}")
    return wandb


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), (None, pytest.skip.Exception)])
def test_missing_wandb_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: str | None, outcome: type[BaseException]
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    # pytest.raises would let a Skipped through as a skip: catch every outcome to judge it.
    try:
        import_wandb()
    except BaseException as exc:  # Skipped and Failed are BaseExceptions
        got: BaseException | None = exc
    else:
        got = None
    assert type(got) is outcome, f"expected {outcome.__name__}, got {got!r}"
    assert "wandb" in str(got)


def _contents_as_dicts(doc: dict[str, Any]) -> dict[str, Any]:
    out = dict(doc)
    out["contents"] = {path: dict(entry) for path, entry in doc["contents"].items()}
    return out


@pytest.mark.parametrize("alg", [MD5, XXH128])
def test_matches_wandb_sdk(tmp_path: Path, wandb_sdk: Any, alg: str) -> None:
    src = tmp_path / "src"
    _make_tree(src)

    kwargs = {} if alg == MD5 else {"digest_algorithm": "XXH128"}
    artifact = wandb_sdk.Artifact("ds", type="dataset", **kwargs)
    artifact.add_dir(str(src))
    theirs = artifact.manifest.to_manifest_json()
    their_digest = artifact.digest

    registry = LocalRegistry(tmp_path / "registry", create=True)
    try:
        result = registry.log_dir(src, parse_ref("acme/vision/ds"), type="dataset", digest_algorithm=alg)
        ours = registry.manifest(result.version).to_json()
        version = result.version
    finally:
        registry.close()

    # Sanity: the tree really was what we meant, and wandb saw all of it.
    assert len(theirs["contents"]) == 20
    assert theirs["contents"]["empty.bin"]["size"] == 0
    if alg == XXH128:
        assert theirs["contents"]["a.txt"] == {"digest": b64xxh(b"hello\n"), "size": 6, "extra": {"alg": "XXH128"}}
    else:
        assert theirs["contents"]["a.txt"] == {"digest": b64md5(b"hello\n"), "size": 6}

    assert _contents_as_dicts(ours) == _contents_as_dicts(theirs)
    assert json.loads(json.dumps(ours)) == json.loads(json.dumps(theirs))
    assert version.digest == their_digest
    assert version.digest_algorithm == ("MANIFEST_MD5" if alg == MD5 else "MANIFEST_XXH128")
    assert version.file_count == len(theirs["contents"])
    assert version.size == sum(e.get("size", 0) for e in theirs["contents"].values())
    # Our parser reads the SDK's manifest, and computes the same digest from it.
    parsed = Manifest.from_json(theirs)
    assert parsed.digest(alg) == their_digest
    assert parsed.to_json() == theirs


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(
        st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(lambda p: "/" not in p),
        st.tuples(st.integers(0, 1 << 40), st.sampled_from([None, "s3://b/k", "https://h/ü"]), st.booleans()),
        max_size=12,
    ),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)
def test_write_json_streams_what_dumps_makes(contents: dict[str, Any], config: dict[str, str]) -> None:
    """manifest.json of a huge version is streamed: the bytes are exactly Manifest.dumps()'s."""
    import io

    from artifactfs.manifest import write_json

    manifest = Manifest(storage_policy="policy-ü", storage_policy_config=config)
    for path, (size, ref, extra) in contents.items():
        manifest.entries[path] = Entry(path, b64md5(path.encode()), size, ref, None, {"k": path} if extra else {})
    out = io.BytesIO()
    written = write_json(out, manifest.entries.values(), manifest.storage_policy, config)
    assert out.getvalue() == manifest.dumps().encode() and written == len(out.getvalue())
