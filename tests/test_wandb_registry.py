"""The W&B backend against a real W&B-compatible server on 127.0.0.1 (tests/wandb_server.py).

The server parses, validates and executes our GraphQL against a schema modelled on W&B's, so a
query with a wrong field name fails here as it would against W&B.  Its request log lets tests
count calls (bounded listings, one manifest fetch, lazy file URLs) and its fault switches make
downloads and GraphQL calls misbehave.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import http.server
import json
import logging
import os
import socket
import stat
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import clean_wandb_env
from wandb_server import WandbServer

from artifactfs import transfer as afs_transfer
from artifactfs.errors import (
    ArtifactFSError,
    ArtifactNotFound,
    AuthError,
    Conflict,
    DigestMismatch,
    EntityNotFound,
    EntryNotFound,
    FetchError,
    InvalidArgument,
    InvalidMetadata,
    InvalidPath,
    InvalidReference,
    ManifestError,
    ProjectNotFound,
    ReadOnly,
    RegistryError,
    RunNotFound,
)
from artifactfs.manifest import Entry, Manifest, hex_from_b64
from artifactfs.names import Ref, parse_ref
from artifactfs.registry import open_registry
from artifactfs.registry.base import RunInfo, VersionInfo
from artifactfs.registry.remote import ManifestKeeper
from artifactfs.registry.wandb import GraphQLPolicy, WandbRegistry, parse_manifest
from artifactfs.store import BlobStore

KEY = "0123456789abcdef0123456789abcdef01234567"
FAST = GraphQLPolicy(backoff=0.02, backoff_max=0.1, budget=5.0, attempts=5, read_timeout=10.0)
FAST_HTTP = afs_transfer.Policy(backoff=0.02, backoff_max=0.1, retry_budget=5.0, read_timeout=5.0, attempts=4)
FILES = {"a.txt": b"hello\n", "d/b.txt": b"bee", "d/c.txt": b"cee", "d/e/f.bin": bytes(range(256)) * 50}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean W&B environment: the key in WANDB_API_KEY, no netrc, an empty SDK cache."""
    clean_wandb_env(tmp_path, monkeypatch, KEY)
    return tmp_path


@pytest.fixture
def server(env: Path) -> Iterator[WandbServer]:
    with WandbServer(api_key=KEY, viewer_entity="acme", teams=("team1",)) as srv:
        srv.add_artifact(
            "acme", "vision", "ds", "dataset", FILES, aliases=["best"], metadata={"k": [1, 2]}, description="first"
        )
        srv.add_artifact("acme", "vision", "ds", "dataset", {"a.txt": b"hello again\n"})
        srv.add_artifact("acme", "vision", "model", "model", {"w.bin": b"\x00" * 1000})
        srv.add_artifact("team1", "shared", "ds", "dataset", {"x": b"x"})
        yield srv


def make(server: WandbServer, cache: Path | None = None, **kwargs: Any) -> WandbRegistry:
    kwargs.setdefault("policy", FAST)
    kwargs.setdefault("http_policy", FAST_HTTP)
    return WandbRegistry(server.url, str(cache) if cache else None, **kwargs)


@pytest.fixture
def registry(server: WandbServer, tmp_path: Path) -> Iterator[WandbRegistry]:
    reg = make(server, tmp_path / "cache")
    yield reg
    reg.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BlobStore]:
    s = BlobStore(str(tmp_path / "blobs"))
    yield s
    s.close()


def fill(store: BlobStore, registry: WandbRegistry, version: VersionInfo, path: str) -> bytes:
    entry = registry.get_entry(version, path).entry
    assert entry is not None
    blob = store.fill(entry.cache_key, entry, registry.blob_source(version, entry), path)
    try:
        return blob.pread(entry.size + 1, 0)
    finally:
        blob.close()


def url_calls(server: WandbServer) -> list[list[str]]:
    return [list(r.variables.get("names") or []) for r in server.operations("GetArtifactMembershipFileUrls")]


# -- credentials and the construction check -----------------------------------------------------


def test_key_from_environment(server: WandbServer, registry: WandbRegistry) -> None:
    assert registry.entities() == ["acme", "team1"]
    viewer = server.operations("Viewer")
    assert viewer and all(r.authorized for r in viewer)
    assert registry.kind == "wandb" and not registry.local and not registry.writable
    assert registry.spec == f"wandb:{server.url}"
    assert KEY not in repr(registry)


@pytest.mark.parametrize("with_port", [False, True])
def test_key_from_netrc(server: WandbServer, env: Path, monkeypatch: pytest.MonkeyPatch, with_port: bool) -> None:
    monkeypatch.delenv("WANDB_API_KEY")
    host = server.url.split("//")[1] if with_port else "127.0.0.1"
    netrc = env / "netrc"
    netrc.write_text(f"machine example.org login api password other\nmachine {host} login user password {KEY}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    reg = make(server)
    assert "acme" in reg.entities()
    v = reg.resolve(parse_ref("acme/vision/ds:best"))
    reg.load_contents(v)
    store = BlobStore(str(env / "blobs"))
    assert fill(store, reg, v, "d/b.txt") == b"bee"
    store.close()
    gets = server.file_requests()
    assert len(gets) == 2 and not any(r.authorized for r in gets)  # presigned: never netrc's key
    reg.close()


def test_missing_key(server: WandbServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY")
    with pytest.raises(AuthError, match=r"WANDB_API_KEY.*wandb login"):
        make(server)
    assert not server.graphql_requests()  # nothing sent without a key


def test_unparsable_netrc_does_not_quote_it(server: WandbServer, env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY")
    netrc = env / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login api password\n{KEY} garbage\n")
    monkeypatch.setenv("NETRC", str(netrc))
    with pytest.raises(AuthError) as info:
        make(server)
    assert KEY not in str(info.value) and "netrc" in str(info.value)


def test_wrong_key(server: WandbServer, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "f" * 40
    monkeypatch.setenv("WANDB_API_KEY", wrong)
    t0 = time.monotonic()
    with pytest.raises(AuthError, match="WANDB_API_KEY") as info:
        make(server)
    assert wrong not in str(info.value) and KEY not in str(info.value)
    assert len(server.operations("Viewer")) == 1  # 401 is not retried
    assert time.monotonic() - t0 < 10


def test_a_registry_opened_checked_asks_the_viewer_only_when_needed(
    server: WandbServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``check_credentials=False`` (a background mount's daemon, after its launcher checked):
    opening sends nothing; the signed-in entity is asked once, when first needed; a wrong key
    is then an AuthError that names neither key."""
    server.reset_log()
    reg = make(server, check_credentials=False)
    try:
        assert not server.graphql_requests()
        v = reg.resolve(parse_ref("acme/vision/ds:best"))
        assert v.version_index == 0 and not server.operations("Viewer")
        assert reg.default_entity() == "acme" and reg.default_entity() == "acme"
        assert len(server.operations("Viewer")) == 1
    finally:
        reg.close()
    wrong = "e" * 40
    monkeypatch.setenv("WANDB_API_KEY", wrong)
    reg = make(server, check_credentials=False)
    try:
        with pytest.raises(AuthError) as info:
            reg.resolve(parse_ref("acme/vision/ds:best"))
        assert wrong not in str(info.value) and KEY not in str(info.value)
        with pytest.raises(AuthError, match="WANDB_API_KEY"):
            reg.default_entity()
    finally:
        reg.close()


def test_key_revoked_later_is_an_auth_error_without_retries(server: WandbServer, registry: WandbRegistry) -> None:
    server.reset_log()
    server.faults.wrong_key = True
    with pytest.raises(AuthError):
        registry.resolve(parse_ref("acme/vision/ds:latest"))
    assert len(server.graphql_requests()) == 1


@pytest.mark.allow_log(r"retrying in")
def test_unreachable_host(env: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(RegistryError, match=r"cannot reach.*WANDB_BASE_URL"):
        WandbRegistry(f"http://127.0.0.1:{port}")
    assert time.monotonic() - t0 < 30


@pytest.mark.allow_log(r"retrying in")
def test_a_server_that_never_answers(env: Path) -> None:
    with socket.socket() as s:  # listens (the kernel completes the handshake) but never accepts
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        policy = GraphQLPolicy(read_timeout=0.5, attempts=2, backoff=0.05, budget=1.0)
        t0 = time.monotonic()
        with pytest.raises(RegistryError, match=r"Timeout.*gave up after 2 tries.*WANDB_BASE_URL"):
            WandbRegistry(f"http://127.0.0.1:{s.getsockname()[1]}", connect_policy=policy)
        assert time.monotonic() - t0 < 10


class _NotWandb(http.server.BaseHTTPRequestHandler):
    status = 404

    def do_POST(self) -> None:
        body = b"<html><body><h1>Not Found</h1></body></html>"
        self.send_response(self.status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("status", [404, 200])
def test_not_a_wandb_server(env: Path, status: int) -> None:
    handler = type("H", (_NotWandb,), {"status": status})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(RegistryError, match=r"not a W&B GraphQL answer.*WANDB_BASE_URL"):
            WandbRegistry(f"http://127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.mark.parametrize("url", ["ftp://host", "http://", "http://user:pw@host", "https://host/?token=x"])
def test_invalid_base_url(env: Path, url: str) -> None:
    with pytest.raises(RegistryError, match="base URL") as info:
        WandbRegistry(url)
    assert "pw" not in str(info.value) and "token" not in str(info.value)


def test_open_registry_and_base_url_from_environment(server: WandbServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", server.url + "/")
    reg = open_registry("wandb")
    assert isinstance(reg, WandbRegistry) and reg.base_url == server.url
    reg.close()
    reg = open_registry(f"wandb:{server.url}")
    assert reg.spec == f"wandb:{server.url}"
    reg.close()


def test_logging_new_versions_is_refused_in_one_clear_message(server: WandbServer, registry: WandbRegistry) -> None:
    ref = parse_ref("acme/vision/ds:v0")
    server.reset_log()
    with pytest.raises(ReadOnly) as info:
        registry.log_files([], ref, type="dataset")
    assert str(info.value) == (
        f"logging a new version: the wandb registry wandb:{server.url} is read-only here (logging new versions"
        " to W&B is not supported; use the wandb SDK, or log to a local registry)"
    )
    with pytest.raises(ReadOnly, match=r"garbage collection: the wandb registry .* is read-only here$"):
        registry.gc()
    assert not registry.writable
    assert server.graphql_requests() == []  # refused before asking anything


# -- namespace ------------------------------------------------------------------------------------


def test_namespace(server: WandbServer, registry: WandbRegistry) -> None:
    assert registry.projects("acme") == ["vision"]
    assert registry.projects("team1") == ["shared"]
    with pytest.raises(EntityNotFound):
        registry.projects("nobody")
    server.reset_log()
    registry.check_entity("acme")
    registry.check_project("acme", "vision")
    with pytest.raises(EntityNotFound):
        registry.check_entity("nobody")
    with pytest.raises(ProjectNotFound):
        registry.check_project("acme", "nothing")
    with pytest.raises(EntityNotFound):
        registry.check_project("nobody", "vision")
    assert len(server.graphql_requests()) == 5  # one cheap call each, no listing
    cols = registry.collections("acme", "vision")
    assert [(c.name, c.type, c.version_count) for c in cols] == [("ds", "dataset", 2), ("model", "model", 1)]
    assert all(c.created_at_ns > 0 for c in cols)
    vs = registry.versions("acme", "vision", "ds")
    assert [(v.version, v.aliases) for v in vs] == [("v0", ("best",)), ("v1", ("latest",))]
    with pytest.raises(ArtifactNotFound):
        registry.versions("acme", "vision", "nope")
    with pytest.raises(ProjectNotFound):
        registry.collections("acme", "nothing")


def test_deleted_versions_are_not_listed(server: WandbServer, registry: WandbRegistry) -> None:
    server.delete_version("acme", "vision", "ds", 0)
    assert [v.version for v in registry.versions("acme", "vision", "ds")] == ["v1"]
    assert [v.version for v in registry.project_versions("acme", "vision") if v.name == "ds"] == ["v1"]
    with pytest.raises(ArtifactNotFound):
        registry.resolve(parse_ref("acme/vision/ds:v0"))


@pytest.mark.slow
def test_pagination_beyond_1000(env: Path, tmp_path: Path) -> None:
    with WandbServer(api_key=KEY) as server:
        for i in range(1001):
            server.add_artifact("acme", "big", f"c{i:04d}", "dataset", {"f": b"%d" % i})
        for i in range(1005):
            server.add_artifact("acme", "big", "many", "dataset", {"f": b"%d" % i})
        for i in range(1002):
            server.add_artifact("acme", f"p{i:04d}", "x", "dataset", {"f": b"x"})
        server.set_alias("acme", "big", "many", "best", 3)
        reg = make(server, page_size=500, collections_per_call=100, versions_per_collection=50)
        assert len(reg.projects("acme")) == 1003
        server.reset_log()
        cols = reg.collections("acme", "big")
        assert len(cols) == 1002 and len(server.graphql_requests()) == 3
        server.reset_log()
        versions = reg.versions("acme", "big", "many")
        assert [v.version_index for v in versions] == list(range(1005))
        assert len(server.graphql_requests()) == 3
        server.reset_log()
        everything = reg.project_versions("acme", "big")
        calls = len(server.graphql_requests())
        assert len(everything) == 1001 + 1005
        by_key = {(v.name, v.version_index): v for v in everything}
        assert by_key[("many", 1004)].aliases == ("latest",)
        assert by_key[("many", 3)].aliases == ("best",)
        assert by_key[("c0500", 0)].aliases == ("latest",)
        # ceil(1002 / 100) pages of collections, plus ceil((1005 - 50) / 500) for the big one.
        assert calls == 11 + 2, calls
        reg.close()


def test_project_versions_is_bounded(server: WandbServer, registry: WandbRegistry) -> None:
    for i in range(30):
        server.add_artifact("acme", "vision", f"extra{i}", "dataset", {"f": b"%d" % i})
    server.reset_log()
    vs = registry.project_versions("acme", "vision")
    assert len(server.graphql_requests()) == 1
    assert {v.name for v in vs} == {"ds", "model", *(f"extra{i}" for i in range(30))}
    ds = [v for v in vs if v.name == "ds"]
    assert [(v.version, v.aliases) for v in ds] == [("v0", ("best",)), ("v1", ("latest",))]
    with pytest.raises(ProjectNotFound):
        registry.project_versions("acme", "nothing")


def test_resolve(server: WandbServer, registry: WandbRegistry) -> None:
    rec = server.artifact("acme", "vision", "ds", 0)
    server.reset_log()
    v = registry.resolve(parse_ref("acme/vision/ds:best"))
    calls = server.graphql_requests()
    assert [r.operation for r in calls] == ["ArtifactMembershipByName"]
    assert calls[0].variables == {"entity": "acme", "project": "vision", "name": "ds:best"}
    assert (v.id, v.entity, v.project, v.name, v.version, v.type) == (rec.id, "acme", "vision", "ds", "v0", "dataset")
    assert v.digest == rec.digest and v.digest_algorithm == "MANIFEST_MD5"
    assert v.metadata == {"k": [1, 2]} and v.description == "first"
    assert v.size == sum(len(b) for b in FILES.values()) and v.file_count == len(FILES)
    assert v.state == "COMMITTED" and v.commit_hash and v.created_at_ns > 1.7e18 and v.updated_at_ns > 0
    assert v.aliases == ("best",)
    assert registry.resolve(parse_ref("acme/vision/ds:v0")) == v
    latest = registry.resolve(parse_ref("acme/vision/ds:latest"))
    assert latest.version == "v1" and latest.aliases == ("latest",)
    server.set_alias("acme", "vision", "ds", "best", 1)
    moved = registry.resolve(parse_ref("acme/vision/ds:best"))
    assert moved.version == "v1" and moved.aliases == ("latest", "best")
    with pytest.raises(ArtifactNotFound):
        registry.resolve(parse_ref("acme/vision/ds:nosuchalias"))
    with pytest.raises(ArtifactNotFound):
        registry.resolve(parse_ref("acme/vision/ds:v9"))
    with pytest.raises(ArtifactNotFound):
        registry.resolve(parse_ref("acme/vision/nothing:latest"))
    with pytest.raises(ProjectNotFound):
        registry.resolve(parse_ref("acme/nothing/ds:latest"))
    assert not server.graphql_errors


def test_resolve_through_the_older_artifact_field(server: WandbServer, registry: WandbRegistry) -> None:
    registry._has_membership = False  # as after a server said it has no artifactCollectionMembership
    v = registry.resolve(parse_ref("acme/vision/ds:best"))
    assert v.version == "v0" and v.aliases == ("best",)
    assert server.operations("ArtifactByName") and not server.graphql_errors


# -- manifests ------------------------------------------------------------------------------------


def test_contents(server: WandbServer, registry: WandbRegistry) -> None:
    v = registry.resolve(parse_ref("acme/vision/ds:v0"))
    assert not registry.contents_loaded(v)
    registry.load_contents(v)
    assert registry.contents_loaded(v)
    assert [(d.name, d.entry is None) for d in registry.list_dir(v, "")] == [("a.txt", False), ("d", True)]
    assert [d.name for d in registry.list_dir(v, "d")] == ["b.txt", "c.txt", "e"]
    assert [d.name for d in registry.list_dir(v, "d/e")] == ["f.bin"]
    entry = registry.get_entry(v, "d/e/f.bin").entry
    assert entry is not None and entry.size == len(FILES["d/e/f.bin"])
    assert registry.get_entry(v, "d").entry is None and registry.get_entry(v, "").name == ""
    assert sorted(e.path for e in registry.iter_entries(v)) == sorted(FILES)
    for missing in ("nope", "d/nope", "/a.txt", "d/", "d//b.txt", "../a.txt"):
        with pytest.raises(EntryNotFound):
            registry.get_entry(v, missing)
    with pytest.raises(EntryNotFound):
        registry.list_dir(v, "a.txt")
    assert registry.manifest(v).digest() == v.digest
    assert registry.manifest(v).storage_policy_config == {"storageLayout": "V2"}
    assert registry.resolve(v.ref).storage_policy_config == {"storageLayout": "V2"}


@pytest.mark.allow_log(r"is unusable|index .* is damaged")
def test_manifest_is_fetched_once_then_read_from_disk(server: WandbServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = make(server, cache)
    v = first.resolve(parse_ref("acme/vision/ds:v0"))
    server.reset_log()
    first.load_contents(v)
    first.load_contents(v)
    assert len(server.operations("FetchArtifactManifest")) == 1
    assert len(server.file_requests()) == 1
    first.close()
    manifests = cache / "manifests"
    assert stat.S_IMODE(manifests.stat().st_mode) == 0o700
    files = sorted(manifests.iterdir(), key=lambda p: p.suffix)
    assert [p.suffix for p in files] == [".index", ".json"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    index, kept = files
    second = make(server, cache)
    server.reset_log()
    second.load_contents(v)
    assert [d.name for d in second.list_dir(v, "d")] == ["b.txt", "c.txt", "e"]
    assert not server.operations("FetchArtifactManifest") and not server.file_requests()
    # A damaged index is not served: it is built again from the kept manifest.
    data = bytearray(index.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index.write_bytes(bytes(data))
    rebuilt = make(server, cache)
    rebuilt.load_contents(v)
    assert [d.name for d in rebuilt.list_dir(v, "d")] == ["b.txt", "c.txt", "e"]
    assert not server.operations("FetchArtifactManifest")
    assert index.read_bytes() != bytes(data)  # the same (deterministic) name, now whole again
    rebuilt.close()
    # A damaged manifest on disk (with no index) is not trusted either: it is fetched again.
    for p in manifests.glob("*.index"):
        p.unlink()
    kept.write_bytes(b'{"version": 1, "contents": {"a.txt": {"digest": "x"')
    third = make(server, cache)
    third.load_contents(v)
    assert len(server.operations("FetchArtifactManifest")) == 1
    assert [d.name for d in third.list_dir(v, "")] == ["a.txt", "d"]
    second.close()
    third.close()


def test_manifest_url_expired_is_asked_for_again(server: WandbServer, registry: WandbRegistry) -> None:
    v = registry.resolve(parse_ref("acme/vision/ds:v0"))
    server.faults.expire(times=1, match="wandb_manifest.json")
    registry.load_contents(v)
    assert len(server.operations("FetchArtifactManifest")) == 2
    assert registry.get_entry(v, "a.txt").entry is not None


@pytest.mark.allow_log(r"retrying in")
def test_manifest_get_is_retried(server: WandbServer, registry: WandbRegistry) -> None:
    v = registry.resolve(parse_ref("acme/vision/ds:v0"))
    server.faults.status(503, times=2, match="wandb_manifest.json")
    registry.load_contents(v)
    assert len(server.operations("FetchArtifactManifest")) == 1
    assert [r.status for r in server.file_requests()] == [503, 503, 200]
    assert registry.get_entry(v, "a.txt").entry is not None
    server.reset_log()
    server.faults.truncate_after(10, times=1, match="wandb_manifest.json")
    fresh = make(server)  # no cache dir: fetches again
    fresh.load_contents(v)
    assert len(server.file_requests()) == 2
    assert fresh.get_entry(v, "a.txt").entry is not None
    fresh.close()


def test_many_loaders_fetch_one_manifest(server: WandbServer, registry: WandbRegistry) -> None:
    v = registry.resolve(parse_ref("acme/vision/ds:v0"))
    server.reset_log()
    server.faults.slow_first_byte(0.3, match="wandb_manifest.json")
    errors: list[BaseException] = []

    def load() -> None:
        try:
            registry.load_contents(v)
            assert registry.list_dir(v, "d")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(server.operations("FetchArtifactManifest")) == 1


HOSTILE: dict[str, dict[str, Any]] = {
    "dotdot": {"../evil": {"digest": "sZRqySSS0jR8YjW00mERhA==", "size": 6}},
    "inner dotdot": {"a/../../evil": {"digest": "sZRqySSS0jR8YjW00mERhA==", "size": 6}},
    "absolute": {"/etc/passwd": {"digest": "sZRqySSS0jR8YjW00mERhA==", "size": 6}},
    "nul": {"a\x00b": {"digest": "sZRqySSS0jR8YjW00mERhA==", "size": 6}},
    "empty segment": {"a//b": {"digest": "sZRqySSS0jR8YjW00mERhA==", "size": 6}},
    "dot": {"./a": {"digest": "sZRqySSS0jR8YjW00mERhA==", "size": 6}},
    "file and dir": {
        "a": {"digest": "sZRqySSS0jR8YjW00mERhA==", "size": 6},
        "a/b": {"digest": "sZRqySSS0jR8YjW00mERhA==", "size": 6},
    },
    "bad digest": {"a": {"digest": "not base64!", "size": 6}},
    "negative size": {"a": {"digest": "sZRqySSS0jR8YjW00mERhA==", "size": -1}},
    "long name": {"x" * 256: {"digest": "sZRqySSS0jR8YjW00mERhA==", "size": 6}},
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_manifests_are_refused(server: WandbServer, tmp_path: Path, case: str) -> None:
    manifest = {"version": 1, "storagePolicy": "wandb-storage-policy-v1", "contents": HOSTILE[case]}
    server.add_artifact("acme", "vision", "evil", "dataset", {"a.txt": b"hello\n"}, manifest=manifest)
    reg = make(server, tmp_path / "cache")
    v = reg.resolve(parse_ref("acme/vision/evil:latest"))
    with pytest.raises((ManifestError, InvalidPath)) as info:
        reg.load_contents(v)
    assert any(word in str(info.value) for word in ("manifest", "entry path", "digest"))
    assert not reg.contents_loaded(v)
    assert not list((tmp_path / "cache" / "manifests").glob("*.json"))
    reg.close()


def _version(digest: str, alg: str = "MANIFEST_MD5") -> VersionInfo:
    return VersionInfo("id", "e", "p", "n", "t", 0, (), digest, alg, "", 0, 0, "", {}, 0, "COMMITTED", 0)


def test_manifest_checks() -> None:
    good = {"version": 1, "contents": {"a": {"digest": "sZRqySSS0jR8YjW00mERhA==", "size": 6}}}
    data = json.dumps(good).encode()
    digest = Manifest.from_json(good).digest()
    assert list(parse_manifest(data, _version(digest)).entries) == ["a"]
    with pytest.raises(ManifestError, match="does not match the artifact digest"):
        parse_manifest(data, _version("0" * 32))
    dup = (
        b'{"version": 1, "contents": {"a": {"digest": "sZRqySSS0jR8YjW00mERhA==", "size": 6},'
        b' "a": {"digest": "1B2M2Y8AsgTpgAmY7PhCfg==", "size": 0}}}'
    )
    with pytest.raises(ManifestError, match="duplicate key 'a'"):
        parse_manifest(dup, _version(""))
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest(b"<html>", _version(""))
    with pytest.raises(ManifestError, match=r"nested too deeply|not valid JSON"):
        parse_manifest(b"[" * 100000, _version(""))


# -- file URLs and downloads ----------------------------------------------------------------------


def test_file_urls_are_asked_for_lazily_in_batches(
    server: WandbServer, registry: WandbRegistry, store: BlobStore
) -> None:
    files = {f"imgs/{i:04d}.bin": b"img %d" % i for i in range(250)}
    files["other/x.bin"] = b"x"
    server.add_artifact("acme", "vision", "imgs", "dataset", files)
    v = registry.resolve(parse_ref("acme/vision/imgs:v0"))
    registry.load_contents(v)
    server.reset_log()
    assert fill(store, registry, v, "imgs/0010.bin") == b"img 10"
    calls = url_calls(server)
    assert len(calls) == 1 and calls[0][0] == "imgs/0010.bin" and 1 < len(calls[0]) <= 100
    assert all(n.startswith("imgs/") for n in calls[0])
    for i in range(11, 250):  # a reader walking the directory
        assert fill(store, registry, v, f"imgs/{i:04d}.bin") == b"img %d" % i
    assert len(url_calls(server)) <= 4
    assert all(r.variables.get("names") for r in server.operations("GetArtifactMembershipFileUrls"))
    assert not server.operations("ArtifactMembershipFiles")  # never the whole file list
    assert fill(store, registry, v, "imgs/0000.bin") == b"img 0"
    assert url_calls(server)[-1][0] == "imgs/0000.bin"


def test_a_reader_never_waits_behind_urls_asked_ahead() -> None:
    """While a large page of URLs asked ahead (the engine's ``prepare_sources``) is on the way,
    a reader that needs one of its files asks for its own URL instead of waiting for the page;
    once the page is in, its URLs are used without asking again."""
    release = threading.Event()
    calls: list[list[str]] = []

    def fetch_urls(version: Any, names: list[str]) -> dict[str, str]:
        calls.append(list(names))
        if len(names) > 1:  # the page asked ahead: slow until released
            assert release.wait(30)
        return {n: f"https://blobs.example/{n}?sig={len(names)}" for n in names}

    keeper = ManifestKeeper(None, lambda *args: None, fetch_urls)  # type: ignore[arg-type]
    try:
        version: Any = types.SimpleNamespace(id="a1", ref="acme/vision/ds:v0")
        entries = [Entry(f"d/f{i}", "x" * 24, 1) for i in range(10)]
        ahead = threading.Thread(target=keeper.prepare, args=(version, entries, 500))
        ahead.start()
        deadline = time.monotonic() + 30
        while not calls:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        assert keeper.url(version, entries[3], fresh=False) == "https://blobs.example/d/f3?sig=1"
        assert time.monotonic() - started < 10 and calls[-1] == ["d/f3"]  # its own request
        release.set()
        ahead.join(30)
        assert keeper.url(version, entries[5], fresh=False) == "https://blobs.example/d/f5?sig=10"
        assert len(calls) == 2  # the page's URLs kept: nothing asked again
    finally:
        release.set()
        keeper.close()


def test_expired_url_is_resigned_for_that_file_only(
    server: WandbServer, registry: WandbRegistry, store: BlobStore
) -> None:
    v = registry.resolve(parse_ref("acme/vision/ds:v0"))
    registry.load_contents(v)
    assert fill(store, registry, v, "d/b.txt") == b"bee"  # URLs for d/b.txt and d/c.txt now cached
    server.reset_log()
    server.faults.expire(times=1, match="d/c.txt")
    assert fill(store, registry, v, "d/c.txt") == b"cee"
    assert url_calls(server) == [["d/c.txt"]]
    assert [r.status for r in server.file_requests()] == [403, 200]


def test_urls_that_really_expire_are_replaced(env: Path, tmp_path: Path) -> None:
    with WandbServer(api_key=KEY, url_ttl=0.5) as server:
        server.add_artifact("acme", "p", "ds", "dataset", FILES)
        reg = make(server, tmp_path / "cache")
        store = BlobStore(str(tmp_path / "blobs"))
        v = reg.resolve(parse_ref("acme/p/ds:v0"))
        assert fill(store, reg, v, "d/b.txt") == b"bee"
        time.sleep(1.0)
        assert fill(store, reg, v, "d/c.txt") == b"cee"
        assert url_calls(server)[-1] == ["d/c.txt"]
        store.close()
        reg.close()


def test_a_url_refused_for_ever_fails_in_bounded_time(
    server: WandbServer, registry: WandbRegistry, store: BlobStore
) -> None:
    v = registry.resolve(parse_ref("acme/vision/ds:v0"))
    server.faults.expire(times=None, match="d/b.txt")
    t0 = time.monotonic()
    with pytest.raises(AuthError, match="refused") as info:
        fill(store, registry, v, "d/b.txt")
    assert info.value.errno == errno.EACCES  # refused, as the first refusal was: not EIO (corrupt bytes)
    assert time.monotonic() - t0 < 30
    # the plain GET's URL (refused, so forgotten), then the ordinary path's tries
    assert len(url_calls(server)) == registry.url_refreshes + 2
    assert not any(k.startswith("md5/") for k in [registry.get_entry(v, "d/b.txt").entry.cache_key] if k in store)  # type: ignore[union-attr]


def test_blob_sources_name_no_url(server: WandbServer, registry: WandbRegistry) -> None:
    v = registry.resolve(parse_ref("acme/vision/ds:v0"))
    entry = registry.get_entry(v, "a.txt").entry
    assert entry is not None
    source = registry.blob_source(v, entry)
    # a small file: one plain GET first, then the ordinary download
    assert [s.description for s in source.chain()] == ["acme/vision/ds:v0/a.txt (one GET)", "acme/vision/ds:v0/a.txt"]
    assert source.optimistic and source.open is not None and source.fallback is not None
    assert source.fallback.download is not None
    assert source.local_path is None and registry.local_path(entry) is None
    assert not server.operations("GetArtifactMembershipFileUrls")  # nothing asked until bytes are wanted


def test_corrupt_body_is_a_digest_mismatch_and_nothing_is_cached(
    server: WandbServer, registry: WandbRegistry, store: BlobStore
) -> None:
    v = registry.resolve(parse_ref("acme/vision/ds:v0"))
    entry = registry.get_entry(v, "d/e/f.bin").entry
    assert entry is not None
    server.faults.corrupt(times=2, match="f.bin")  # the one plain GET, then the ordinary path
    with pytest.raises(DigestMismatch):
        store.fill(entry.cache_key, entry, registry.blob_source(v, entry), "f.bin")
    assert entry.cache_key not in store and server.faults.pending() == 0
    assert fill(store, registry, v, "d/e/f.bin") == FILES["d/e/f.bin"]


@pytest.mark.parametrize("fault", ["truncate_after", "reset_after"])
@pytest.mark.allow_log(r"retrying in")
def test_cut_bodies_are_resumed(server: WandbServer, registry: WandbRegistry, store: BlobStore, fault: str) -> None:
    v = registry.resolve(parse_ref("acme/vision/ds:v0"))
    getattr(server.faults, fault)(5000, times=2, match="f.bin")
    assert fill(store, registry, v, "d/e/f.bin") == FILES["d/e/f.bin"]
    assert any(r.range for r in server.file_requests())


@pytest.mark.allow_log(r"retrying in")
def test_persistent_blob_failure_is_a_fetch_error_in_bounded_time(
    server: WandbServer, registry: WandbRegistry, store: BlobStore
) -> None:
    v = registry.resolve(parse_ref("acme/vision/ds:v0"))
    entry = registry.get_entry(v, "d/b.txt").entry
    assert entry is not None
    server.faults.reset_after(0, times=None, match="d/b.txt")
    t0 = time.monotonic()
    with pytest.raises(FetchError):
        store.fill(entry.cache_key, entry, registry.blob_source(v, entry), "b")
    assert time.monotonic() - t0 < 30
    assert entry.cache_key not in store


def test_xxh128_artifact(server: WandbServer, registry: WandbRegistry, store: BlobStore) -> None:
    rec = server.add_artifact("acme", "vision", "fast", "dataset", FILES, digest_algorithm="XXH128")
    v = registry.resolve(parse_ref("acme/vision/fast:latest"))
    assert v.digest_algorithm == "MANIFEST_XXH128" and v.digest == rec.digest
    registry.load_contents(v)
    entry = registry.get_entry(v, "d/e/f.bin").entry
    assert entry is not None and entry.alg == "XXH128" and entry.cache_key.startswith("xxh128/")
    assert fill(store, registry, v, "d/e/f.bin") == FILES["d/e/f.bin"]
    server.faults.corrupt(times=2, match="a.txt")
    with pytest.raises(DigestMismatch):
        fill(store, registry, v, "a.txt")


# -- GraphQL faults -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 408])
@pytest.mark.allow_log(r"retrying in")
def test_graphql_server_errors_are_retried(server: WandbServer, registry: WandbRegistry, status: int) -> None:
    server.reset_log()
    server.faults.graphql_status(status, times=2, match="ArtifactMembershipByName")
    assert registry.resolve(parse_ref("acme/vision/ds:best")).version == "v0"
    assert [r.status for r in server.operations("ArtifactMembershipByName")] == [status, status, 200]


@pytest.mark.allow_log(r"retrying in")
def test_graphql_429_honours_retry_after(server: WandbServer, registry: WandbRegistry) -> None:
    server.faults.graphql_status(429, times=1, retry_after=1, match="CheckEntity")
    t0 = time.monotonic()
    registry.check_entity("acme")
    assert time.monotonic() - t0 >= 0.9
    assert [r.status for r in server.operations("CheckEntity")] == [429, 200]


@pytest.mark.allow_log(r"retrying in")
def test_graphql_retries_are_bounded(server: WandbServer, registry: WandbRegistry) -> None:
    server.faults.graphql_status(503, times=None, match="CheckProject")
    t0 = time.monotonic()
    with pytest.raises(RegistryError, match="HTTP 503; gave up"):
        registry.check_project("acme", "vision")
    assert time.monotonic() - t0 < 15
    assert len(server.operations("CheckProject")) == FAST.attempts
    server.faults.clear()
    server.faults.graphql_status(429, times=1, retry_after=3600, match="CheckProject")
    with pytest.raises(RegistryError, match="retry after 3600"):
        registry.check_project("acme", "vision")


@pytest.mark.allow_log(r"retrying in")
def test_graphql_url_urls_5xx_during_download(server: WandbServer, registry: WandbRegistry, store: BlobStore) -> None:
    v = registry.resolve(parse_ref("acme/vision/ds:v0"))
    server.faults.graphql_status(502, times=1, match="GetArtifactMembershipFileUrls")
    assert fill(store, registry, v, "a.txt") == FILES["a.txt"]


# -- second sources and references ----------------------------------------------------------------


def _plant(env: Path, entry: Entry, data: bytes) -> Path:
    hexd = hex_from_b64(entry.digest)
    path = env / "wandb-cache" / "artifacts" / "obj" / entry.alg.lower() / hexd[:2] / hexd[2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.allow_log(r"digest mismatch")
def test_sdk_cache_is_a_verified_first_source(server: WandbServer, env: Path, store: BlobStore) -> None:
    reg = make(server)
    v = reg.resolve(parse_ref("acme/vision/ds:v0"))
    good = reg.get_entry(v, "d/b.txt").entry
    bad = reg.get_entry(v, "d/c.txt").entry
    assert good is not None and bad is not None
    planted = _plant(env, good, FILES["d/b.txt"])
    _plant(env, bad, b"CEE")  # right size, wrong bytes
    source = reg.blob_source(v, good)
    chain = list(source.chain())
    assert len(chain) == 3 and chain[0].open is not None and chain[0].local_path is None
    assert "SDK cache" in chain[0].description and chain[1].optimistic and chain[2].download is not None
    server.reset_log()
    assert fill(store, reg, v, "d/b.txt") == b"bee"
    assert not server.file_requests() and not server.operations("GetArtifactMembershipFileUrls")
    assert planted.read_bytes() == b"bee"
    sdk_only = dataclasses.replace(next(reg.blob_source(v, bad).chain()), fallback=None)
    with pytest.raises(DigestMismatch):  # the SDK copy alone is refused...
        store.fill(bad.cache_key, bad, sdk_only, "c")
    assert fill(store, reg, v, "d/c.txt") == b"cee"  # ...and the store falls back to the download
    assert len(server.file_requests()) == 1
    assert (env / "wandb-cache" / "artifacts" / "obj" / "md5").exists()
    assert sum(1 for _ in (env / "wandb-cache").rglob("*") if _.is_file()) == 2  # never written
    reg.close()


@pytest.mark.allow_log(r"cannot be sized")
def test_references(server: WandbServer, registry: WandbRegistry, store: BlobStore) -> None:
    target = server.artifact("acme", "vision", "ds", 0)
    digest_b = target.file_digests["d/b.txt"]
    signed = server.url + server.sign(f"/files/{hex_from_b64(digest_b)}/b.txt")
    hex_id = base64.b64decode(target.id).hex()
    refs = {
        "local": {"ref": "file:///etc/hostname", "digest": digest_b, "size": 3},
        "web": {"ref": signed, "digest": digest_b, "size": 3},
        "art": {"ref": f"wandb-artifact://{hex_id}/d/e/f.bin", "digest": target.file_digests["d/e/f.bin"], "size": 0},
        "gone": {"ref": f"wandb-artifact://{'ff' * 12}/x", "digest": digest_b, "size": 0},
    }
    server.add_artifact("acme", "vision", "refs", "dataset", {"plain": b"p"}, references=refs)
    v = registry.resolve(parse_ref("acme/vision/refs:latest"))
    registry.load_contents(v)
    local = registry.get_entry(v, "local").entry
    assert local is not None
    with pytest.raises(FetchError, match="file://"):
        registry.blob_source(v, local)
    web = registry.get_entry(v, "web").entry
    assert web is not None
    source = registry.blob_source(v, web)
    assert "sig" not in source.description and "expires" not in source.description
    assert fill(store, registry, v, "web") == b"bee"
    art = registry.get_entry(v, "art").entry
    assert art is not None and art.size == len(FILES["d/e/f.bin"])  # W&B writes 0: sized from the target
    source = registry.blob_source(v, art)
    assert source.description.startswith("acme/vision/ds:v0/d/e/f.bin")
    assert fill(store, registry, v, "art") == FILES["d/e/f.bin"]
    gone = registry.get_entry(v, "gone").entry
    assert gone is not None
    with pytest.raises(FetchError, match="cannot be found"):
        registry.blob_source(v, gone)


# -- secrets and threads ---------------------------------------------------------------------------


def test_the_key_never_appears_in_logs_or_errors(
    server: WandbServer,
    tmp_path: Path,
    store: BlobStore,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    basic = base64.b64encode(f"api:{KEY}".encode()).decode()
    texts: list[str] = []
    with caplog.at_level(logging.DEBUG):
        reg = make(server, tmp_path / "cache")
        texts.append(repr(reg))
        server.faults.graphql_status(503, times=1, match="ArtifactMembershipByName")
        v = reg.resolve(parse_ref("acme/vision/ds:v0"))
        server.faults.expire(times=1, match="a.txt")
        server.faults.truncate_after(10, times=1, match="f.bin")
        fill(store, reg, v, "a.txt")
        fill(store, reg, v, "d/e/f.bin")
        for call in (
            lambda: reg.resolve(parse_ref("acme/vision/ds:nope")),
            lambda: reg.check_project("acme", "none"),
        ):
            with pytest.raises(ArtifactFSError) as info:
                call()
            texts.append(str(info.value))
        server.faults.wrong_key = True
        with pytest.raises(AuthError) as auth:
            reg.entities()
        texts.append(str(auth.value))
        with pytest.raises(AuthError) as auth:
            make(server)
        texts.append(str(auth.value))
        server.faults.clear()
        monkeypatch.setenv("WANDB_API_KEY", "w" * 40)
        with pytest.raises(AuthError) as auth:
            make(server)
        texts.append(str(auth.value))
        reg.close()
    texts.extend(r.getMessage() for r in caplog.records)
    assert len(caplog.records) > 5  # DEBUG records were captured (urllib3's and ours)
    for text in texts:
        assert KEY not in text and basic not in text and "w" * 40 not in text
    ours = [r.getMessage() for r in caplog.records if r.name.startswith(("artifactfs", "urllib3"))]
    assert ours and not any("sig=" in m or "expires=" in m for m in ours)  # no presigned query strings


def test_concurrent_reads(server: WandbServer, registry: WandbRegistry, store: BlobStore) -> None:
    files = {f"d{i % 4}/{i:03d}": b"content %d" % i for i in range(64)}
    server.add_artifact("acme", "vision", "many", "dataset", files)
    v = registry.resolve(parse_ref("acme/vision/many:latest"))
    server.reset_log()
    errors: list[BaseException] = []
    results: dict[str, bytes] = {}
    lock = threading.Lock()

    def reader(paths: list[str]) -> None:
        try:
            for p in paths:
                data = fill(store, registry, v, p)
                with lock:
                    results[p] = data
        except BaseException as exc:
            errors.append(exc)

    paths = sorted(files)
    threads = [threading.Thread(target=reader, args=(paths[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results == files
    assert len(server.operations("FetchArtifactManifest")) == 1
    asked = [n for names in url_calls(server) for n in names]
    assert len(asked) == len(set(asked))  # no URL asked for twice
    assert len(url_calls(server)) < 64


def test_versions_are_hashable_and_refs_round_trip(registry: WandbRegistry) -> None:
    v = registry.resolve(parse_ref("acme/vision/model:latest"))
    assert v.ref == Ref("acme", "vision", "model", "v0")
    assert {v: 1}[registry.resolve(v.ref)] == 1
    assert os.path.basename(v.name) == "model"


def test_an_older_server_without_newer_fields(env: Path, tmp_path: Path) -> None:
    omit = ["Project.artifactCollectionMembership", "Artifact.digestAlgorithm", "ArtifactCollection.artifactMembership"]
    with WandbServer(api_key=KEY, omit_fields=omit) as server:
        server.add_artifact("acme", "p", "ds", "dataset", FILES, aliases=["best"])
        reg = make(server, tmp_path / "cache")
        store = BlobStore(str(tmp_path / "blobs"))
        v = reg.resolve(parse_ref("acme/p/ds:best"))
        assert v.version == "v0" and v.aliases == ("latest", "best")
        assert v.digest_algorithm == "MANIFEST_MD5"
        assert fill(store, reg, v, "d/b.txt") == b"bee"
        assert [r.version for r in reg.versions("acme", "p", "ds")] == ["v0"]
        assert server.operations("ArtifactFileUrls")
        server.reset_log()
        reg.resolve(parse_ref("acme/p/ds:latest"))  # what was learnt is not asked again
        assert [r.operation for r in server.graphql_requests()] == ["ArtifactByName"]
        assert not server.graphql_errors
        store.close()
        reg.close()


def test_null_viewer_is_an_auth_error(server: WandbServer) -> None:
    server.faults.null_viewer = True
    with pytest.raises(AuthError, match="does not accept the API key"):
        make(server)


def test_file_url_queries_always_name_their_files(
    server: WandbServer, registry: WandbRegistry, store: BlobStore
) -> None:
    v = registry.resolve(parse_ref("acme/vision/ds:v0"))
    for path in FILES:
        assert fill(store, registry, v, path) == FILES[path]
    requests_ = [r for r in server.graphql_requests() if "files" in r.fields]
    assert requests_ and all(r.fields["files"].get("names") == "$names" for r in requests_)


def test_loaded_manifests_are_bounded(server: WandbServer, tmp_path: Path) -> None:
    for i in range(5):
        server.add_artifact("acme", "vision", "small", "dataset", {f"f{j}": b"%d %d" % (i, j) for j in range(10)})
    reg = make(server, tmp_path / "cache", max_loaded=3)
    versions = reg.versions("acme", "vision", "small")
    for v in versions:
        reg.load_contents(v)
    assert [reg.contents_loaded(v) for v in versions] == [False, False, True, True, True]
    server.reset_log()
    assert [d.name for d in reg.list_dir(versions[0], "")][:2] == ["f0", "f1"]  # reloaded from disk
    assert not server.operations("FetchArtifactManifest") and not server.file_requests()
    reg.close()


def test_graphql_error_answers(registry: WandbRegistry) -> None:
    """How GraphQL ``errors`` are read (W&B answers some missing things with an error, not null)."""
    data = registry._data(
        "Op", {"errors": [{"message": "project not found", "path": ["project"]}], "data": {"project": None}}
    )
    assert data == {"project": None}  # the caller names what is missing
    assert registry._data("Op", {"errors": [{"message": "entity does not exist"}]}) == {}
    with pytest.raises(RegistryError, match="W&B Op failed: internal error") as info:
        registry._data("Op", {"errors": [{"message": f"internal error near Basic {KEY}"}], "data": None})
    assert KEY not in str(info.value) and "***" in str(info.value)
    with pytest.raises(RegistryError, match="no data"):
        registry._data("Op", {"data": None})


# -- edits (W&B's mutations) ------------------------------------------------------------------


def test_aliases_are_added_moved_and_removed(server: WandbServer, registry: WandbRegistry) -> None:
    v0, v1 = server.artifact("acme", "vision", "ds", 0), server.artifact("acme", "vision", "ds", 1)
    best = parse_ref("acme/vision/ds:best")
    assert registry.resolve(best).version == "v0"
    server.reset_log()
    got = registry.add_alias(parse_ref("acme/vision/ds:latest"), "best")  # moves best from v0
    assert (got.version, got.aliases) == ("v1", ("latest", "best"))
    [call] = server.operations("AddAliases")
    assert call.variables == {
        "input": {
            "artifactID": v1.id,
            "aliases": [
                {"entityName": "acme", "projectName": "vision", "artifactCollectionName": "ds", "alias": "best"}
            ],
        }
    }
    assert v0.aliases == [] and v1.aliases == ["best", "latest"]
    # No resolution is cached: the same registry sees the alias where it is now.
    assert registry.resolve(best).version == "v1"
    assert registry.add_alias(parse_ref("acme/vision/ds:v0"), "old").aliases == ("old",)
    got = registry.remove_alias(best, "best")
    assert (got.version, got.aliases) == ("v1", ("latest",))
    with pytest.raises(ArtifactNotFound):
        registry.resolve(best)
    assert v1.aliases == ["latest"] and v0.aliases == ["old"]
    # Refused before anything is sent.
    server.reset_log()
    with pytest.raises(ArtifactNotFound, match="has no alias 'nope'"):
        registry.remove_alias(parse_ref("acme/vision/ds:v0"), "nope")
    with pytest.raises(Conflict, match="latest"):
        registry.add_alias(parse_ref("acme/vision/ds:v0"), "latest")
    with pytest.raises(Conflict, match="latest"):
        registry.remove_alias(parse_ref("acme/vision/ds:v1"), "latest")
    with pytest.raises(InvalidReference):
        registry.add_alias(parse_ref("acme/vision/ds:v0"), "v7")
    with pytest.raises(ArtifactNotFound):
        registry.add_alias(parse_ref("acme/vision/ds:v9"), "x")
    assert not [r for r in server.graphql_requests() if r.query.lstrip().startswith("mutation")]


def test_update_description_and_metadata(server: WandbServer, registry: WandbRegistry) -> None:
    rec = server.artifact("acme", "vision", "ds", 0)
    ref = parse_ref("acme/vision/ds:best")
    got = registry.update(ref, description="second thoughts")
    assert (got.description, got.metadata) == ("second thoughts", {"k": [1, 2]})
    got = registry.update(ref, metadata={"rows": 10, "nested": {"a": [1.5, None]}})
    assert (got.description, got.metadata) == ("second thoughts", {"rows": 10, "nested": {"a": [1.5, None]}})
    assert (rec.description, rec.metadata) == ("second thoughts", {"rows": 10, "nested": {"a": [1.5, None]}})
    assert got.updated_at_ns > got.created_at_ns and got.version == "v0" and got.aliases == ("best",)
    inputs = [r.variables["input"] for r in server.operations("UpdateArtifact")]
    assert inputs == [
        {"artifactID": rec.id, "description": "second thoughts"},
        {"artifactID": rec.id, "metadata": json.dumps({"rows": 10, "nested": {"a": [1.5, None]}})},
    ]
    server.reset_log()
    with pytest.raises(InvalidMetadata):
        registry.update(ref, metadata={"x": float("nan")})
    with pytest.raises(InvalidMetadata):
        registry.update(ref, metadata=[1])  # type: ignore[arg-type]
    assert registry.update(ref) == registry.resolve(ref)  # nothing to change: nothing sent
    assert not server.operations("UpdateArtifact")


def test_delete(server: WandbServer, registry: WandbRegistry) -> None:
    v0 = server.artifact("acme", "vision", "ds", 0)
    with pytest.raises(
        Conflict, match=r"while it has aliases \(ds:best\).*\(here: --delete-aliases, or delete_aliases=True\)$"
    ):
        registry.delete(parse_ref("acme/vision/ds:v0"))
    assert not v0.deleted
    gone = registry.delete(parse_ref("acme/vision/ds:latest"))  # only "latest" names it
    assert gone.version == "v1"
    assert registry.resolve(parse_ref("acme/vision/ds:latest")).version == "v0"
    gone = registry.delete(parse_ref("acme/vision/ds:best"), delete_aliases=True)
    assert (gone.version, gone.aliases) == ("v0", ("latest", "best")) and v0.deleted
    assert [r.variables["input"] for r in server.operations("DeleteArtifact")][-1] == {
        "artifactID": v0.id,
        "deleteAliases": True,
    }
    with pytest.raises(ArtifactNotFound):
        registry.resolve(parse_ref("acme/vision/ds:v0"))
    with pytest.raises(ArtifactNotFound):
        registry.delete(parse_ref("acme/vision/ds:v0"))
    assert [c.name for c in registry.collections("acme", "vision")] == ["model"]


def test_link_numbers_its_own_versions_and_unlinks(
    server: WandbServer, registry: WandbRegistry, store: BlobStore
) -> None:
    src = registry.resolve(parse_ref("acme/vision/ds:v0"))
    linked = registry.link(src.ref, "acme/vision/golden", ["prod"])
    assert (linked.id, linked.entity, linked.project, linked.name) == (src.id, "acme", "vision", "golden")
    assert (linked.version, linked.aliases, linked.digest, linked.type) == (
        "v0",
        ("latest", "prod"),
        src.digest,
        "dataset",
    )
    # A link says where its artifact was logged; a version of its own sequence says nothing.
    assert getattr(linked, "source", None) == Ref("acme", "vision", "ds", "v0")
    assert getattr(src, "source", "absent") is None
    [call] = server.operations("LinkArtifact")
    assert call.variables == {
        "input": {
            "artifactID": src.id,
            "artifactPortfolioName": "golden",
            "entityName": "acme",
            "projectName": "vision",
            "aliases": [{"artifactCollectionName": "golden", "alias": "prod"}],
        }
    }
    second = registry.link(parse_ref("acme/vision/ds:v1"), "acme/vision/golden")
    assert (second.version, second.aliases) == ("v1", ("latest",))
    again = registry.link(src.ref, "acme/vision/golden")  # already linked: same index
    assert (again.version, again.aliases, again.id) == ("v0", ("prod",), src.id)
    assert [(c.name, c.version_count) for c in registry.collections("acme", "vision")] == [
        ("ds", 2),
        ("golden", 2),
        ("model", 1),
    ]
    assert [(v.version, v.id) for v in registry.versions("acme", "vision", "golden")] == [
        ("v0", src.id),
        ("v1", second.id),
    ]
    # The link reads like any version, its files through the linked collection.
    prod = registry.resolve(parse_ref("acme/vision/golden:prod"))
    registry.load_contents(prod)
    assert fill(store, registry, prod, "d/b.txt") == b"bee"
    assert {r.variables["collection"] for r in server.operations("GetArtifactMembershipFileUrls")} == {"golden"}
    # Aliases and deletes through the link act on the link; the source keeps its own.
    assert registry.add_alias(prod.ref, "champion").aliases == ("champion", "prod")
    assert registry.resolve(src.ref).aliases == ("best",)
    gone = registry.delete(parse_ref("acme/vision/golden:champion"))
    assert gone.version == "v0" and server.operations("UnlinkArtifact") and not server.operations("DeleteArtifact")
    with pytest.raises(ArtifactNotFound):
        registry.resolve(parse_ref("acme/vision/golden:prod"))
    kept = registry.resolve(src.ref)
    assert (kept.id, kept.version, kept.aliases, kept.state) == (src.id, "v0", ("best",), "COMMITTED")
    # Refusals.
    with pytest.raises(InvalidReference, match="names a version"):
        registry.link(src.ref, "acme/vision/golden:v0")
    with pytest.raises(Conflict, match="already exists as a sequence"):
        registry.link(src.ref, "acme/vision/model")
    with pytest.raises(Conflict, match="does not match the type"):
        registry.link(parse_ref("acme/vision/model:v0"), "acme/vision/golden")
    with pytest.raises(ArtifactNotFound, match="project acme/nowhere not found"):
        registry.link(src.ref, "acme/nowhere/golden")


def test_permission_denied_is_an_auth_error(server: WandbServer, registry: WandbRegistry) -> None:
    server.set_read_only("acme", "vision")
    ref = parse_ref("acme/vision/ds:v0")
    with pytest.raises(AuthError, match="W&B refused editing acme/vision/ds:v0: permission denied"):
        registry.update(ref, description="x")
    with pytest.raises(AuthError, match="permission denied"):
        registry.add_alias(ref, "x")
    with pytest.raises(AuthError, match="permission denied"):
        registry.delete(ref, delete_aliases=True)
    with pytest.raises(AuthError, match="permission denied"):
        registry.link(parse_ref("team1/shared/ds:v0"), "acme/vision/golden")
    rec = server.artifact("acme", "vision", "ds", 0)
    assert (rec.description, rec.aliases, rec.deleted) == ("first", ["best"], False)
    server.set_read_only("acme", "vision", False)
    assert registry.update(parse_ref("team1/shared/ds:v0"), description="team edit").description == "team edit"
    other = server.add_artifact("someone", "theirs", "ds", "dataset", {"x": b"x"})
    with pytest.raises(AuthError, match="permission denied"):
        registry.update(parse_ref("someone/theirs/ds:v0"), description="x")
    assert other.description == "" and KEY not in str(server.graphql_errors)


@pytest.mark.allow_log(r"retrying in")
def test_mutations_are_retried_after_a_server_error(server: WandbServer, registry: WandbRegistry) -> None:
    server.faults.graphql_status(503, times=2, match="AddAliases", retry_after=0)
    assert registry.add_alias(parse_ref("acme/vision/ds:v1"), "x").aliases == ("latest", "x")
    assert [r.status for r in server.operations("AddAliases")] == [503, 503, 200]


def test_a_server_without_mutations(env: Path, tmp_path: Path) -> None:
    with WandbServer(api_key=KEY, omit_fields=["Mutation.linkArtifact"]) as srv:
        srv.add_artifact("acme", "vision", "ds", "dataset", {"a": b"a"})
        reg = make(srv)
        with pytest.raises(RegistryError, match="has no 'linkArtifact'"):
            reg.link(parse_ref("acme/vision/ds:v0"), "acme/vision/golden")
        reg.close()


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("permission denied", AuthError),
        ("User is not authorized to edit this artifact", AuthError),
        ("artifact QXJ0 not found", ArtifactNotFound),
        ("cannot delete artifact ds:v1 while it has aliases (ds:best)", Conflict),
        ("artifact collection 'ds' already exists as a sequence", Conflict),
        ("invalid alias 'a:b'", InvalidArgument),
        ("the database is on fire", RegistryError),
    ],
)
def test_refusals_map_to_our_errors(message: str, kind: type[ArtifactFSError]) -> None:
    err = WandbRegistry._refusal("editing acme/p/ds:v0", [message])
    assert type(err) is kind and str(err).startswith(f"W&B refused editing acme/p/ds:v0: {message}")


# -- lineage --------------------------------------------------------------------------------------


def test_logged_by_and_used_by(server: WandbServer, registry: WandbRegistry) -> None:
    server.add_run("acme", "vision", "3kx9p2ab", display_name="brave-sun-1", job_type="train", config={"lr": 0.1})
    server.add_run("acme", "vision", "eval1", state="crashed", job_type="eval")
    server.add_artifact("acme", "vision", "ds", "dataset", {"n": b"n"}, run="3kx9p2ab", used_by=["eval1", "other"])
    v = registry.resolve(parse_ref("acme/vision/ds:v2"))
    run = registry.logged_by(v)
    assert run is not None and run == RunInfo(
        entity="acme",
        project="vision",
        id="3kx9p2ab",
        name="brave-sun-1",
        job_type="train",
        state="finished",
        created_at_ns=run.created_at_ns,
        config={"lr": 0.1},
    )
    assert run.created_at_ns > 1.7e18 and run.path == "acme/vision/3kx9p2ab"
    used = registry.used_by(v)
    assert [(r.id, r.name, r.job_type, r.state, r.config) for r in used] == [
        ("eval1", "eval1", "eval", "crashed", {}),
        ("other", "other", "", "finished", {}),
    ]
    assert registry.used_by(registry.resolve(parse_ref("acme/vision/model:v0"))) == []
    # A link has the lineage of its source.
    linked = registry.link(v.ref, "acme/vision/golden")
    assert registry.logged_by(linked) == run
    server.delete_version("acme", "vision", "ds", 2)
    with pytest.raises(ArtifactNotFound):
        registry.logged_by(v)
    assert not server.graphql_errors


def test_runs_and_their_artifacts(server: WandbServer, registry: WandbRegistry) -> None:
    server.add_run("acme", "vision", "r1", display_name="first", job_type="train", config={"lr": 0.1})
    a = server.add_artifact("acme", "vision", "ds", "dataset", {"n": b"n"}, run="r1", used_by=["r2"])
    b = server.add_artifact("acme", "vision", "model", "model", {"w": b"w"}, run="r1")
    server.add_artifact("acme", "vision", "ds", "dataset", {"m": b"m"}, run="r2", used_by=["r1"])
    assert registry.default_entity() == "acme"
    r1 = registry.run("acme", "vision", "r1")
    assert (r1.id, r1.name, r1.job_type, r1.config, r1.path) == ("r1", "first", "train", {"lr": 0.1}, "acme/vision/r1")
    with pytest.raises(RunNotFound):
        registry.run("acme", "vision", "nope")
    with pytest.raises(ProjectNotFound):
        registry.run("acme", "nowhere", "r1")
    runs = registry.runs("acme", "vision")
    assert r1 in runs and "r2" in [r.id for r in runs]
    assert [r.created_at_ns for r in runs] == sorted(r.created_at_ns for r in runs)
    outputs = registry.run_outputs(r1)
    assert [(v.id, v.name, v.version, v.entity) for v in outputs] == [
        (a.id, "ds", "v2", "acme"),
        (b.id, "model", "v1", "acme"),
    ]
    assert [v.ref for v in registry.run_inputs(r1)] == [parse_ref("acme/vision/ds:v3")]
    server.delete_version("acme", "vision", "model", 1)
    assert [v.id for v in registry.run_outputs(r1)] == [a.id]
    small = make(server, page_size=1)  # every page followed
    assert len(small.runs("acme", "vision")) == len(runs) and [v.id for v in small.run_outputs(r1)] == [a.id]
    small.close()
    assert not server.graphql_errors


# -- the real SDK sees our edits, we see its edits ------------------------------------------------

SDK_SEES_AND_EDITS = """
import json, wandb
api = wandb.Api()
out = {}
a = api.artifact("acme/vision/ds:from-afs")
out["ours"] = [a.version, a.description, dict(a.metadata), sorted(a.aliases)]
g = api.artifact("acme/vision/golden:latest")
out["link"] = [g.version, g.source_name, g.is_link, sorted(g.aliases)]
a.description = "from the sdk"
a.metadata["by"] = "sdk"
a.aliases.remove("from-afs")
a.aliases.append("from-sdk")
a.save()
api.artifact("acme/vision/ds:v1").link("acme/vision/golden", aliases=["sdk-link"])
print(json.dumps(out))
"""


@pytest.mark.slow
def test_edits_are_seen_by_the_real_sdk_and_back(server: WandbServer, registry: WandbRegistry, tmp_path: Path) -> None:
    import test_wandb_server

    ref = parse_ref("acme/vision/ds:v0")
    registry.update(ref, description="from artifactfs", metadata={"by": "artifactfs"})
    registry.add_alias(ref, "from-afs")
    registry.link(ref, "acme/vision/golden", ["ours"])
    out = test_wandb_server.run_sdk(server, tmp_path / "sdk", SDK_SEES_AND_EDITS)
    assert out["ours"] == ["v0", "from artifactfs", {"by": "artifactfs"}, ["best", "from-afs"]]
    assert out["link"] == ["v0", "ds:v0", True, ["latest", "ours"]]
    v = registry.resolve(parse_ref("acme/vision/ds:from-sdk"))
    assert (v.version, v.description, v.metadata, v.aliases) == (
        "v0",
        "from the sdk",
        {"by": "sdk"},
        ("best", "from-sdk"),
    )
    with pytest.raises(ArtifactNotFound):
        registry.resolve(parse_ref("acme/vision/ds:from-afs"))
    latest = registry.resolve(parse_ref("acme/vision/golden:latest"))
    assert (latest.version, latest.aliases, latest.id) == (
        "v1",
        ("latest", "sdk-link"),
        server.artifact("acme", "vision", "ds", 1).id,
    )
    assert not server.graphql_errors


def test_a_small_file_is_one_plain_get_and_a_bad_answer_goes_the_ordinary_way(
    server: WandbServer, registry: WandbRegistry, store: BlobStore
) -> None:
    """A small file is fetched by one plain GET (libcurl) first; a wrong answer to it (wrong
    bytes, a 5xx, a cut body) is not an error yet: the ordinary path fetches it again, with
    its retries, and only then is a failure the read's.  Nothing warns about the first try."""
    v = registry.resolve(parse_ref("acme/vision/ds:v0"))
    registry.load_contents(v)
    server.reset_log()
    assert fill(store, registry, v, "a.txt") == FILES["a.txt"]
    assert [r.status for r in server.file_requests()] == [200]  # one GET, no retry machinery
    for i, fault in enumerate(("corrupt", "status", "truncate_after")):
        name = ["d/b.txt", "d/c.txt", "d/e/f.bin"][i]
        if fault == "status":
            server.faults.status(503, times=1, match=name)
        elif fault == "truncate_after":
            server.faults.truncate_after(10, times=1, match=name)
        else:
            server.faults.corrupt(times=1, match=name)
        server.reset_log()
        assert fill(store, registry, v, name) == FILES[name]
        assert len(server.file_requests()) == 2 and server.faults.pending() == 0, fault
