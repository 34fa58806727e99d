"""The W&B test server speaks W&B: the real wandb SDK (0.31.0) reads artifacts from it and edits,
links, unlinks and deletes them through its mutations; its pagination, Range support, URL expiry,
fault switches, mutations and their refusals behave as documented.

The SDK runs in one subprocess per scenario (its Go sidecar makes in-process use awkward and
slow to tear down); each scenario prints a JSON report that the test checks against the server's
data and request log.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import xxhash
from wandb_server import WandbServer

from artifactfs.manifest import artifact_digest, digest_bytes

FILES = {
    "a.txt": b"hello\n",
    "sub/dir/b.bin": bytes(range(256)) * 40,
    "unicodé ✓.txt": "grüße\n".encode(),
    "empty": b"",
}
FILES_V0 = {"a.txt": b"old\n", "sub/dir/b.bin": bytes(range(256)) * 40}


def _auth(server: WandbServer) -> tuple[str, str]:
    return ("api", server.api_key)


def gql(server: WandbServer, query: str, variables: dict[str, Any] | None = None, **kw: Any) -> requests.Response:
    return requests.post(
        server.url + "/graphql",
        json={"query": query, "variables": variables or {}},
        auth=_auth(server),
        timeout=10,
        **kw,
    )


def data(server: WandbServer, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    resp = gql(server, query, variables)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]
    return result


def sdk_env(server: WandbServer, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        WANDB_BASE_URL=server.url,
        WANDB_API_KEY=server.api_key,
        WANDB_CACHE_DIR=str(tmp / "cache"),
        WANDB_DATA_DIR=str(tmp / "data"),
        WANDB_CONFIG_DIR=str(tmp / "config"),
        WANDB_ARTIFACT_DIR=str(tmp / "artifacts"),
        HOME=str(tmp / "home"),
        NETRC=str(tmp / "home" / ".netrc"),
        WANDB_SILENT="true",
        WANDB_MODE="online",
        WANDB_DISABLE_CODE="true",
        PYTHONPATH=str(Path(__file__).resolve().parent.parent),
    )
    return env


def run_sdk(server: WandbServer, tmp: Path, code: str, timeout: float = 120) -> dict[str, Any]:
    """Run ``code`` with the real SDK in a subprocess; it must print one JSON line last."""
    tmp.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=sdk_env(server, tmp),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp,
    )
    if proc.returncode != 0:
        raise AssertionError(f"SDK script failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    last = proc.stdout.strip().splitlines()[-1]
    result: dict[str, Any] = json.loads(last)
    return result


@pytest.fixture(scope="module")
def server() -> Iterator[WandbServer]:
    with WandbServer(teams=("vision-team",)) as srv:
        srv.add_artifact("acme", "vision", "ds", "dataset", FILES_V0, metadata={"rows": 1})
        srv.add_artifact(
            "acme",
            "vision",
            "ds",
            "dataset",
            FILES,
            aliases=["best"],
            metadata={"rows": 2, "nested": {"x": [1]}},
            description="second",
            used_by=["train-2", "eval-1"],
        )
        srv.add_artifact(
            "acme",
            "vision",
            "fast",
            "dataset",
            {"x.txt": b"xxh\n", "y/z.bin": b"\x01" * 3000},
            digest_algorithm="XXH128",
        )
        yield srv
        assert not srv.handler_errors, srv.handler_errors[0]


# ----------------------------------------------------------------------------- the real SDK

SDK_READ = """
import json, os, sys, hashlib
import wandb
api = wandb.Api()
out = {}
a = api.artifact("acme/vision/ds:latest")
out["version"] = a.version
out["aliases"] = sorted(a.aliases)
out["metadata"] = a.metadata
out["digest"] = a.digest
out["description"] = a.description
out["type"] = a.type
root = os.path.abspath("root")
a.download(root)
got = {}
for dirpath, _, names in os.walk(root):
    for n in names:
        p = os.path.join(dirpath, n)
        got[os.path.relpath(p, root)] = open(p, "rb").read().hex()
out["downloaded"] = got
a.verify(root)
out["verify_ok"] = True
with open(os.path.join(root, "a.txt"), "r+b") as f:
    f.write(b"J")
try:
    a.verify(root)
    out["verify_after_corrupt"] = "passed"
except ValueError as exc:
    out["verify_after_corrupt"] = "failed: " + str(exc)[:200]
out["files"] = sorted([f.name, f.size] for f in a.files())
run = a.logged_by()
out["logged_by"] = None if run is None else [run.entity, run.project, run.id]
v0 = api.artifact("acme/vision/ds:v0")
out["v0"] = [v0.version, sorted(v0.aliases), v0.metadata]
entry = v0.get_entry("a.txt").download(os.path.abspath("entry"))  # not in the SDK cache yet
out["entry"] = open(entry, "rb").read().hex()
fast = api.artifact("acme/vision/fast:latest")
froot = os.path.abspath("fast")
fast.download(froot)
out["fast"] = {n: open(os.path.join(froot, n), "rb").read().hex() for n in ("x.txt", "y/z.bin")}
try:
    fast.verify(froot)
    out["fast_verify"] = "ok"
except Exception as exc:
    out["fast_verify"] = f"{type(exc).__name__}: {exc}"[:300]
out["versions"] = sorted(x.version for x in api.artifacts("dataset", "acme/vision/ds"))
out["collections"] = sorted(c.name for c in api.artifact_collections("acme/vision", "dataset"))
out["collection_aliases"] = sorted(api.artifact_collection("dataset", "acme/vision/ds").aliases)
out["used_by"] = sorted(r.id for r in a.used_by())
out["types"] = [t.name for t in api.artifact_types("acme/vision")]
out["exists"] = [api.artifact_exists("acme/vision/ds:v0"), api.artifact_exists("acme/vision/ds:v9")]
out["projects"] = [p.name for p in api.projects("acme")]
out["files_by_name"] = [f.name for f in a.files(names=["a.txt"])]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_real_sdk_reads_what_the_server_serves(server: WandbServer, tmp_path: Path) -> None:
    server.reset_log()
    out = run_sdk(server, tmp_path, SDK_READ)
    rec = server.artifact("acme", "vision", "ds", 1)
    assert out["version"] == "v1"
    assert out["aliases"] == ["best", "latest"]
    assert out["metadata"] == {"rows": 2, "nested": {"x": [1]}}
    assert out["digest"] == rec.digest == artifact_digest((p, digest_bytes(b)) for p, b in FILES.items())
    assert out["description"] == "second"
    assert out["type"] == "dataset"
    assert out["downloaded"] == {p: b.hex() for p, b in FILES.items()}
    assert out["verify_ok"] is True
    assert out["verify_after_corrupt"].startswith("failed")
    assert out["files"] == sorted([p, len(b)] for p, b in FILES.items())
    assert out["logged_by"] == ["acme", "vision", rec.run]
    assert out["v0"] == ["v0", [], {"rows": 1}]
    assert out["fast"] == {"x.txt": b"xxh\n".hex(), "y/z.bin": (b"\x01" * 3000).hex()}
    assert out["fast_verify"] == "ok"
    assert out["versions"] == ["v0", "v1"]
    assert out["collections"] == ["ds", "fast"]
    assert out["collection_aliases"] == ["best", "latest"]
    assert out["used_by"] == ["eval-1", "train-2"]
    assert out["types"] == ["dataset"]
    assert out["exists"] == [True, False]
    assert out["projects"] == ["vision"]
    assert out["files_by_name"] == ["a.txt"]
    assert out["entry"] == FILES_V0["a.txt"].hex()  # fetched from the authenticated V2 layout
    assert server.graphql_errors == []
    ops = [r.operation for r in server.graphql_requests()]
    for name in (
        "Viewer",
        "ArtifactMembershipByName",
        "FetchArtifactManifest",
        "GetArtifactMembershipFileUrls",
        "ArtifactMembershipFiles",
        "ArtifactCreatedBy",
        "ProjectArtifacts",
        "ArtifactTypeArtifactCollections",
        "ArtifactCollectionAliases",
        "ArtifactUsedBy",
    ):
        assert name in ops, (name, ops)
    # Every file the SDK fetched was answered 200: presigned URLs, and the fallback layout (with
    # the artifact id) for get_entry().download(), which has no directUrl.
    gets = server.file_requests()
    assert gets and all(r.status == 200 for r in gets)
    assert {r.path.split("/")[1] for r in gets} == {"files", "artifactsV2"}
    assert all(r.authorized for r in gets if r.path.startswith("/artifactsV2/"))


SDK_FAULTS = """
import json, os
import wandb
api = wandb.Api()
a = api.artifact("acme/vision/faulty:latest")
root = os.path.abspath("root")
a.download(root)
out = {n: open(os.path.join(root, n), "rb").read().hex() for n in ("a.txt", "b/c.txt", "d.txt", "e.bin")}
try:
    a.verify(root)
    out["verify"] = "passed"
except ValueError:
    out["verify"] = "failed"
print(json.dumps(out))
"""


@pytest.mark.slow
def test_real_sdk_retries_5xx_and_falls_back_when_a_url_expired(server: WandbServer, tmp_path: Path) -> None:
    """Also what the protocol notes observed: a flipped byte is accepted by download() (only
    verify() sees it), so the corrupt switch reaches a real client."""
    files = {"a.txt": b"aaa\n", "b/c.txt": b"ccc\n", "d.txt": b"ddd\n", "e.bin": bytes(range(200))}
    rec = server.add_artifact("acme", "vision", "faulty", "dataset", files)
    server.reset_log()
    server.faults.graphql_status(503, times=2, match="ArtifactMembershipByName", retry_after=0)
    server.faults.status(503, times=2, match="a.txt")
    server.faults.status(429, times=1, match="d.txt", retry_after=0)
    server.faults.expire(match="c.txt")
    server.faults.corrupt(match="e.bin")
    try:
        out = run_sdk(server, tmp_path, SDK_FAULTS)
    finally:
        server.faults.clear()
    bad = bytes.fromhex(out.pop("e.bin"))
    assert len(bad) == 200 and sum(x != y for x, y in zip(bad, files.pop("e.bin"), strict=True)) == 1
    assert out.pop("verify") == "failed"
    assert out == {p: b.hex() for p, b in files.items()}
    assert [r.status for r in server.operations("ArtifactMembershipByName")] == [503, 503, 200]
    a_gets = [r.status for r in server.file_requests() if "a.txt" in r.path]
    assert a_gets == [503, 503, 200]
    # The expired presigned URL made the SDK use the authenticated fallback layout.
    c_gets = [(r.path.split("/")[1], r.status) for r in server.file_requests() if "c.txt" in r.path]
    assert c_gets == [("files", 403), ("artifactsV2", 200)]
    fallback = next(r for r in server.file_requests() if r.path.startswith("/artifactsV2/"))
    assert fallback.authorized
    assert rec.id in requests.utils.unquote(fallback.path)


@pytest.mark.slow
def test_real_sdk_reports_a_wrong_key_and_a_null_viewer(server: WandbServer, tmp_path: Path) -> None:
    script = """
    import json, wandb
    try:
        wandb.Api()
        print(json.dumps("accepted"))
    except Exception as exc:
        print(json.dumps(f"{type(exc).__name__}: {exc}"))
    """
    server.faults.wrong_key = True
    try:
        refused = run_sdk(server, tmp_path / "wrong", script)
    finally:
        server.faults.clear()
    assert refused.startswith("AuthenticationError") and "not logged in" in refused
    assert server.api_key not in refused
    server.faults.null_viewer = True
    try:
        null = run_sdk(server, tmp_path / "null", script)
    finally:
        server.faults.clear()
    assert null.startswith("AuthenticationError") and "invalid credentials" in null, null


# ----------------------------------------------------------------------------- GraphQL shapes


MEMBERSHIP = """
query M($e: String!, $p: String!, $n: String!) {
  project(name: $p, entityName: $e) {
    artifactCollectionMembership(name: $n) {
      versionIndex aliases { alias }
      artifact { id digest digestAlgorithm metadata fileCount size state
                 currentManifest { file { directUrl } } }
    }
  }
}
"""

FILES_Q = """
query F($e: String!, $p: String!, $c: String!, $a: String!, $names: [String!], $first: Int, $after: String) {
  project(name: $p, entityName: $e) {
    artifactCollection(name: $c) {
      artifactMembership(aliasName: $a) {
        files(names: $names, first: $first, after: $after) {
          totalCount pageInfo { endCursor hasNextPage } edges { node { name directUrl sizeBytes digest } }
        }
      }
    }
  }
}
"""


def _membership(server: WandbServer, name: str, project: str = "vision") -> dict[str, Any]:
    got = data(server, MEMBERSHIP, {"e": "acme", "p": project, "n": name})["project"]["artifactCollectionMembership"]
    assert isinstance(got, dict)
    return got


def _file_url(server: WandbServer, coll: str, alias: str, name: str) -> str:
    got = data(server, FILES_Q, {"e": "acme", "p": "vision", "c": coll, "a": alias, "names": [name]})
    edges = got["project"]["artifactCollection"]["artifactMembership"]["files"]["edges"]
    assert [e["node"]["name"] for e in edges] == [name]
    url: str = edges[0]["node"]["directUrl"]
    return url


def test_manifest_and_digests_follow_the_protocol(server: WandbServer) -> None:
    m = _membership(server, "ds:best")
    rec = server.artifact("acme", "vision", "ds", 1)
    assert m["versionIndex"] == 1 and sorted(a["alias"] for a in m["aliases"]) == ["best", "latest"]
    art = m["artifact"]
    assert art["id"] == rec.id and base64.b64decode(art["id"]).startswith(b"Artifact:")
    assert json.loads(art["metadata"]) == {"rows": 2, "nested": {"x": [1]}}
    assert (art["digestAlgorithm"], art["state"], art["fileCount"]) == ("MANIFEST_MD5", "COMMITTED", len(FILES))
    assert art["size"] == sum(len(b) for b in FILES.values())
    manifest = requests.get(art["currentManifest"]["file"]["directUrl"], timeout=10).json()
    assert manifest == rec.manifest
    assert manifest["storagePolicyConfig"]["storageLayout"] == "V2"
    for path, body in FILES.items():
        entry = manifest["contents"][path]
        assert entry["digest"] == base64.b64encode(hashlib.md5(body).digest()).decode()
        assert entry["size"] == len(body) and entry["birthArtifactID"]
    assert art["digest"] == artifact_digest((p, e["digest"]) for p, e in manifest["contents"].items())
    # Unchanged files keep the birth artifact of the version that first uploaded them.
    v0 = server.artifact("acme", "vision", "ds", 0)
    assert manifest["contents"]["sub/dir/b.bin"]["birthArtifactID"] == v0.id
    assert manifest["contents"]["a.txt"]["birthArtifactID"] == rec.id

    fast = _membership(server, "fast:latest")["artifact"]
    assert fast["digestAlgorithm"] == "MANIFEST_XXH128"
    fm = requests.get(fast["currentManifest"]["file"]["directUrl"], timeout=10).json()
    entry = fm["contents"]["x.txt"]
    assert entry["extra"] == {"alg": "XXH128"}
    assert entry["digest"] == base64.b64encode(xxhash.xxh128(b"xxh\n").digest()).decode()
    assert fast["digest"] == artifact_digest(((p, e["digest"]) for p, e in fm["contents"].items()), "XXH128")


def test_files_by_name_returns_only_those_and_the_log_shows_it(server: WandbServer) -> None:
    server.reset_log()
    got = data(server, FILES_Q, {"e": "acme", "p": "vision", "c": "ds", "a": "v1", "names": ["a.txt", "nope"]})
    files = got["project"]["artifactCollection"]["artifactMembership"]["files"]
    assert [e["node"]["name"] for e in files["edges"]] == ["a.txt"]
    assert files["totalCount"] == 1 and files["pageInfo"]["hasNextPage"] is False
    assert requests.get(files["edges"][0]["node"]["directUrl"], timeout=10).content == FILES["a.txt"]
    (req,) = server.operations("F")
    assert req.variables["names"] == ["a.txt", "nope"]
    assert req.fields["files"]["names"] == "$names"
    assert [r.method for r in server.requests] == ["POST", "GET"]


def test_alias_resolution_set_alias_and_delete_version() -> None:
    with WandbServer() as srv:
        for i in range(3):
            srv.add_artifact("acme", "p", "m", "model", {"w": bytes([i])}, aliases=["prod"] if i == 0 else ())
        assert _membership(srv, "m:prod", "p")["versionIndex"] == 0
        assert _membership(srv, "m:latest", "p")["versionIndex"] == 2
        assert _membership(srv, "m", "p")["versionIndex"] == 2
        assert _membership(srv, "m:v1", "p")["versionIndex"] == 1
        digest = srv.artifact("acme", "p", "m", 1).digest
        assert _membership(srv, f"m:{digest}", "p")["versionIndex"] == 1
        srv.set_alias("acme", "p", "m", "prod", 1)
        assert _membership(srv, "m:prod", "p")["versionIndex"] == 1
        assert srv.artifact("acme", "p", "m", 1).aliases == ["prod"]
        srv.delete_version("acme", "p", "m", 2)
        assert _membership(srv, "m:latest", "p")["versionIndex"] == 1
        got = data(srv, MEMBERSHIP, {"e": "acme", "p": "p", "n": "m:v2"})
        assert got["project"]["artifactCollectionMembership"] is None
        # Older servers' lookup path answers too.
        old = data(
            srv, 'query { project(name: "p", entityName: "acme") { artifact(name: "m:prod") { versionIndex } } }'
        )
        assert old["project"]["artifact"]["versionIndex"] == 1


def test_manifest_override_and_references_are_served_verbatim() -> None:
    hostile = {"version": 1, "contents": {"../escape": {"digest": "AAAA", "size": 3}}}
    big = 3 << 30  # sizes above 2**31 need the Int64 scalar
    refs = {"ref/x": {"ref": "s3://bucket/x", "digest": "etag123", "size": big, "extra": {"etag": '"etag123"'}}}
    with WandbServer() as srv:
        bad = srv.add_artifact("acme", "p", "bad", "dataset", {"ok": b"fine"}, manifest=hostile)
        withref = srv.add_artifact("acme", "p", "refs", "dataset", {"f": b"1"}, references=refs)
        art = _membership(srv, "bad:latest", "p")["artifact"]
        assert requests.get(art["currentManifest"]["file"]["directUrl"], timeout=10).json() == hostile
        assert bad.manifest == hostile
        m = requests.get(
            _membership(srv, "refs:latest", "p")["artifact"]["currentManifest"]["file"]["directUrl"], timeout=10
        ).json()
        assert m["contents"]["ref/x"] == refs["ref/x"] and "f" in m["contents"]
        assert _membership(srv, "refs:latest", "p")["artifact"]["size"] == big + 1
        assert withref.digest == artifact_digest([("f", digest_bytes(b"1")), ("ref/x", "etag123")])
        # References are manifest entries, not stored files.
        names = data(srv, FILES_Q, {"e": "acme", "p": "p", "c": "refs", "a": "latest"})
        edges = names["project"]["artifactCollection"]["artifactMembership"]["files"]["edges"]
        assert [e["node"]["name"] for e in edges] == ["f"]


def test_viewer_teams_entity_projects_and_listing_in_one_call() -> None:
    with WandbServer(viewer_entity="me", teams=("t1", "t2")) as srv:
        for c in range(4):
            for v in range(3):
                srv.add_artifact(
                    "t1",
                    "proj",
                    f"c{c}",
                    "dataset" if c % 2 else "model",
                    {"f": bytes([c, v])},
                    aliases=["best"] if v == 1 else (),
                )
        srv.add_artifact("t1", "other", "z", "model", {})
        viewer = data(
            srv, "query Viewer { viewer { id entity username email flags teams { edges { node { name } } } } }"
        )
        assert viewer["viewer"]["entity"] == "me"
        assert [e["node"]["name"] for e in viewer["viewer"]["teams"]["edges"]] == ["t1", "t2"]
        projects = data(
            srv,
            'query { entity(name: "t1") { name projects(first: 1) { edges { node { name } } '
            "pageInfo { endCursor hasNextPage } } } }",
        )["entity"]["projects"]
        assert [e["node"]["name"] for e in projects["edges"]] == ["proj"] and projects["pageInfo"]["hasNextPage"]
        assert data(srv, 'query { entity(name: "nobody") { name } }')["entity"] is None
        srv.reset_log()
        listing = data(
            srv,
            """query {
          project(name: "proj", entityName: "t1") {
            artifactTypes { edges { node { name } } }
            artifactCollections(first: 100) { pageInfo { hasNextPage } edges { node {
              name defaultArtifactType { name }
              aliases { edges { node { alias } } }
              artifactMemberships(first: 100) { pageInfo { hasNextPage } edges { node {
                versionIndex aliases { alias } artifact { digest } } } } } } } } }""",
        )["project"]
        assert len(srv.requests) == 1
        assert sorted(e["node"]["name"] for e in listing["artifactTypes"]["edges"]) == ["dataset", "model"]
        colls = {e["node"]["name"]: e["node"] for e in listing["artifactCollections"]["edges"]}
        assert sorted(colls) == ["c0", "c1", "c2", "c3"]
        c1 = colls["c1"]
        assert c1["defaultArtifactType"]["name"] == "dataset"
        assert sorted(e["node"]["alias"] for e in c1["aliases"]["edges"]) == ["best", "latest"]
        versions = {e["node"]["versionIndex"]: e["node"] for e in c1["artifactMemberships"]["edges"]}
        assert sorted(versions) == [0, 1, 2]
        assert [a["alias"] for a in versions[1]["aliases"]] == ["best"]
        assert versions[2]["artifact"]["digest"] == srv.artifact("t1", "proj", "c1", 2).digest
        q = (
            'query { project(name: "proj", entityName: "t1") { artifactCollections(order: "%s") '
            "{ edges { node { name } } } } }"
        )
        for order, want in (
            ("", ["c0", "c1", "c2", "c3"]),
            ("-createdAt", ["c3", "c2", "c1", "c0"]),
            ("-name", ["c3", "c2", "c1", "c0"]),
            ("name", ["c0", "c1", "c2", "c3"]),
        ):
            edges = data(srv, q % order)["project"]["artifactCollections"]["edges"]
            assert [e["node"]["name"] for e in edges] == want, order
        q = 'query { entity(name: "t1") { projects(order: "-createdAt") { edges { node { name } } } } }'
        assert [e["node"]["name"] for e in data(srv, q)["entity"]["projects"]["edges"]] == ["other", "proj"]


def test_errors_carry_a_path_array_and_unknown_fields_are_400(server: WandbServer) -> None:
    resp = gql(
        server,
        'query { project(name: "vision", entityName: "acme") { artifactCollections(after: "zz") { totalCount } } }',
    )
    assert resp.status_code == 200
    err = resp.json()["errors"][0]
    assert err["path"] == ["project", "artifactCollections"] and "cursor" in err["message"]
    resp = gql(server, "query { viewer { noSuchField } }")
    assert resp.status_code == 400 and "noSuchField" in resp.json()["errors"][0]["message"]
    assert any("noSuchField" in e for e in server.graphql_errors)


def test_missing_or_wrong_key_is_401(server: WandbServer) -> None:
    q = {"query": "query Viewer { viewer { entity } }"}
    assert requests.post(server.url + "/graphql", json=q, timeout=10).status_code == 401
    resp = requests.post(server.url + "/graphql", json=q, auth=("api", "x" * 40), timeout=10)
    assert resp.status_code == 401 and server.api_key not in resp.text
    assert requests.post(server.url + "/graphql", json=q, auth=_auth(server), timeout=10).status_code == 200


# ----------------------------------------------------------------------------- pagination


def _collect(
    server: WandbServer, query: str, variables: dict[str, Any], path: tuple[str, ...]
) -> tuple[list[Any], int]:
    """Page through a connection at ``path``; returns (edges, number of calls)."""
    edges: list[Any] = []
    after: str | None = None
    calls = 0
    while True:
        got: Any = data(server, query, {**variables, "after": after})
        calls += 1
        for key in path:
            got = got[key]
        edges.extend(got["edges"])
        if not got["pageInfo"]["hasNextPage"]:
            assert got["totalCount"] == len(edges)
            return edges, calls
        assert got["edges"], "hasNextPage with an empty page"
        after = got["pageInfo"]["endCursor"]


def test_pagination_over_more_than_1000_collections_versions_and_files() -> None:
    n_coll, n_ver, n_files = 1203, 1107, 2501
    with WandbServer() as srv:
        t0 = time.monotonic()
        for i in range(n_coll):
            srv.add_artifact("acme", "big", f"c{i:05d}", "dataset", {})
        for i in range(n_ver):
            srv.add_artifact("acme", "big", "many", "model", {}, aliases=[f"tag{i}"])
        srv.add_artifact(
            "acme", "big", "wide", "model", {f"d{i % 7}/f{i:05d}": str(i).encode() for i in range(n_files)}
        )
        assert time.monotonic() - t0 < 30  # generous: data generation must stay cheap
        q = """query C($after: String) { project(name: "big", entityName: "acme") {
                 artifactCollections(first: 500, after: $after) {
                   totalCount pageInfo { endCursor hasNextPage } edges { node { name } } } } }"""
        edges, calls = _collect(srv, q, {}, ("project", "artifactCollections"))
        names = [e["node"]["name"] for e in edges]
        assert len(names) == len(set(names)) == n_coll + 2 and calls == 3
        q = """query V($after: String) { project(name: "big", entityName: "acme") { artifactType(name: "model") {
                 artifactCollection(name: "many") { artifacts(first: 400, after: $after) {
                   totalCount pageInfo { endCursor hasNextPage } edges { version node { versionIndex } } } } } } }"""
        edges, calls = _collect(srv, q, {}, ("project", "artifactType", "artifactCollection", "artifacts"))
        assert calls == 3
        assert [e["node"]["versionIndex"] for e in edges] == list(range(n_ver - 1, -1, -1))
        assert all(e["version"] == f"v{e['node']['versionIndex']}" for e in edges)
        q = """query A($after: String) { project(name: "big", entityName: "acme") {
                 artifactCollection(name: "many") { aliases(first: 999, after: $after) {
                   totalCount pageInfo { endCursor hasNextPage } edges { node { alias } } } } } }"""
        edges, calls = _collect(srv, q, {}, ("project", "artifactCollection", "aliases"))
        assert len({e["node"]["alias"] for e in edges}) == n_ver + 1 and calls == 2
        q = FILES_Q.replace("$after: String)", "$after: String)", 1)
        variables = {"e": "acme", "p": "big", "c": "wide", "a": "latest", "names": None, "first": 1000}
        edges, calls = _collect(srv, q, variables, ("project", "artifactCollection", "artifactMembership", "files"))
        got = [e["node"]["name"] for e in edges]
        assert got == sorted(got) and len(set(got)) == n_files and calls == 3


# ----------------------------------------------------------------------------- file serving


def test_range_requests_etag_and_head(server: WandbServer) -> None:
    body = FILES["sub/dir/b.bin"]
    url = _file_url(server, "ds", "v1", "sub/dir/b.bin")
    full = requests.get(url, timeout=10)
    assert full.status_code == 200 and full.content == body
    assert full.headers["Accept-Ranges"] == "bytes" and full.headers["Content-Length"] == str(len(body))
    etag = full.headers["ETag"]
    assert etag == f'"{hashlib.md5(body).hexdigest()}"'
    for header, (start, end) in {
        "bytes=10-19": (10, 20),
        "bytes=10000-": (10000, len(body)),
        "bytes=-5": (len(body) - 5, len(body)),
        "bytes=0-99999": (0, len(body)),
    }.items():
        resp = requests.get(url, headers={"Range": header}, timeout=10)
        assert resp.status_code == 206, header
        assert resp.content == body[start:end]
        assert resp.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(body)}"
        assert resp.headers["ETag"] == etag
    resp = requests.get(url, headers={"Range": f"bytes={len(body)}-"}, timeout=10)
    assert resp.status_code == 416 and resp.headers["Content-Range"] == f"bytes */{len(body)}"
    resp = requests.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'}, timeout=10)
    assert resp.status_code == 200 and resp.content == body
    resp = requests.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}, timeout=10)
    assert resp.status_code == 206 and resp.content == body[:10]
    head = requests.head(url, timeout=10)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(body)) and not head.content
    empty = requests.get(_file_url(server, "ds", "v1", "empty"), timeout=10)
    assert empty.status_code == 200 and empty.content == b""


def test_presigned_urls_expire_and_are_signed() -> None:
    ttl = 1.0
    with WandbServer(url_ttl=ttl) as srv:
        srv.add_artifact("acme", "vision", "ds", "dataset", {"a.txt": b"abc"})

        def fresh_get() -> str:
            """A URL asked just now is served (checked only if the machine got there within the
            TTL: a loaded one may not; the expiry below is checked always)."""
            t0 = time.monotonic()
            url = _file_url(srv, "ds", "latest", "a.txt")
            body = requests.get(url, timeout=60).content
            if time.monotonic() < t0 + ttl:
                assert body == b"abc"
            return url

        url = fresh_get()
        assert requests.get(url.replace("sig=", "sig=0"), timeout=60).status_code == 403
        assert requests.get(url.split("?")[0], timeout=60).status_code == 403
        time.sleep(ttl + 0.2)
        expired = requests.get(url, timeout=60)
        assert expired.status_code == 403 and "expired" in expired.text
        fresh_get()
        manifest_url = _membership(srv, "ds:latest")["artifact"]["currentManifest"]["file"]["directUrl"]
        time.sleep(ttl + 0.2)
        assert requests.get(manifest_url, timeout=60).status_code == 403


def test_fallback_urls_need_the_key(server: WandbServer) -> None:
    rec = server.artifact("acme", "vision", "ds", 1)
    entry = rec.manifest["contents"]["unicodé ✓.txt"]
    md5hex = base64.b64decode(entry["digest"]).hex()
    base = f"{server.url}/artifactsV2/default/acme/vision/ds"
    sub = rec.manifest["contents"]["sub/dir/b.bin"]
    sub_url = f"{base}/{rec.id}/{sub['birthArtifactID']}/{base64.b64decode(sub['digest']).hex()}/sub/dir/b.bin"
    assert requests.get(sub_url, auth=_auth(server), timeout=10).content == FILES["sub/dir/b.bin"]
    for url in (
        f"{base}/{rec.id}/{entry['birthArtifactID']}/{md5hex}/unicodé ✓.txt",
        f"{base}/{entry['birthArtifactID']}/{md5hex}/unicodé ✓.txt",
        f"{server.url}/artifacts/acme/{md5hex}",
    ):
        assert requests.get(url, timeout=10).status_code == 401
        resp = requests.get(url, auth=_auth(server), timeout=10)
        assert resp.status_code == 200 and resp.content == FILES["unicodé ✓.txt"], url
    assert requests.get(f"{server.url}/artifacts/nobody/{md5hex}", auth=_auth(server), timeout=10).status_code == 404
    assert requests.get(f"{server.url}/artifacts/acme/{'0' * 32}", auth=_auth(server), timeout=10).status_code == 404


# ----------------------------------------------------------------------------- fault switches


@pytest.fixture()
def faulty(server: WandbServer) -> Iterator[tuple[WandbServer, str, bytes]]:
    body = FILES["sub/dir/b.bin"]
    url = _file_url(server, "ds", "v1", "sub/dir/b.bin")
    server.faults.clear()
    yield server, url, body
    server.faults.clear()


def test_fault_status_queue_counts_and_matches(faulty: tuple[WandbServer, str, bytes]) -> None:
    srv, url, body = faulty
    other = _file_url(srv, "ds", "v1", "a.txt")
    srv.faults.status(503, times=2, match="b.bin")
    srv.faults.status(429, times=1, match="b.bin", retry_after=3)
    assert requests.get(other, timeout=10).status_code == 200  # no match: untouched
    assert [requests.get(url, timeout=10).status_code for _ in range(2)] == [503, 503]
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "3"
    assert requests.get(url, timeout=10).content == body
    srv.faults.status(500, times=None)
    assert [requests.get(u, timeout=10).status_code for u in (url, other, url)] == [500, 500, 500]
    srv.faults.clear()
    assert requests.get(url, timeout=10).status_code == 200


def test_fault_expire(faulty: tuple[WandbServer, str, bytes]) -> None:
    srv, url, body = faulty
    srv.faults.expire()
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 403 and "AccessDenied" in resp.text
    assert requests.get(url, timeout=10).content == body


def test_fault_slow_first_byte_and_slow_body(faulty: tuple[WandbServer, str, bytes]) -> None:
    srv, url, body = faulty
    srv.faults.slow_first_byte(0.5)
    t0 = time.monotonic()
    assert requests.get(url, timeout=10).content == body
    assert time.monotonic() - t0 >= 0.45
    srv.faults.slow_body(len(body) * 2.0)  # about half a second for the whole body
    t0 = time.monotonic()
    resp = requests.get(url, stream=True, timeout=10)
    first = time.monotonic() - t0
    assert resp.raw.read() == body
    assert time.monotonic() - t0 >= 0.4 and first < 0.4


def test_fault_reset_and_truncate_mid_body(faulty: tuple[WandbServer, str, bytes]) -> None:
    srv, url, body = faulty
    for arm in (srv.faults.reset_after, srv.faults.truncate_after):
        arm(1000)
        resp = requests.get(url, stream=True, timeout=10)
        assert resp.status_code == 200 and resp.headers["Content-Length"] == str(len(body))
        got = bytearray()
        with pytest.raises(requests.exceptions.RequestException):
            for chunk in resp.iter_content(256):
                got += chunk
        assert bytes(got) == body[: len(got)] and len(got) <= 1000
    assert requests.get(url, timeout=10).content == body


def test_fault_corrupt_flips_one_byte(faulty: tuple[WandbServer, str, bytes]) -> None:
    srv, url, body = faulty
    srv.faults.corrupt(times=1)
    bad = requests.get(url, timeout=10).content
    assert len(bad) == len(body) and sum(x != y for x, y in zip(bad, body, strict=True)) == 1
    ranged = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=10)
    assert ranged.content == body[100:200]
    srv.faults.corrupt(times=1)
    bad = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=10).content
    assert len(bad) == 100 and bad != body[100:200]


def test_fault_applies_to_manifest_gets(faulty: tuple[WandbServer, str, bytes]) -> None:
    srv, _, _ = faulty
    murl = _membership(srv, "ds:latest")["artifact"]["currentManifest"]["file"]["directUrl"]
    srv.faults.status(503, match="wandb_manifest.json")
    assert requests.get(murl, timeout=10).status_code == 503
    assert requests.get(murl, timeout=10).json() == srv.artifact("acme", "vision", "ds", 1).manifest


def test_graphql_faults(server: WandbServer) -> None:
    q = "query Viewer { viewer { entity } }"
    server.faults.clear()
    try:
        server.faults.graphql_status(503, times=1)
        server.faults.graphql_status(429, times=1, retry_after=1)
        server.faults.graphql_status(500, times=1, match="Other")
        assert gql(server, q).status_code == 503
        resp = gql(server, q)
        assert resp.status_code == 429 and resp.headers["Retry-After"] == "1"
        assert gql(server, q).status_code == 200  # the 500 only hits operation "Other"
        assert gql(server, "query Other { viewer { entity } }").status_code == 500
        server.faults.wrong_key = True
        assert gql(server, q).status_code == 401
        server.faults.wrong_key = False
        server.faults.null_viewer = True
        assert data(server, q) == {"viewer": None}
    finally:
        server.faults.clear()
    assert data(server, q) == {"viewer": {"entity": "acme"}}
    assert server.faults.pending() == 0


def test_omit_fields_plays_an_older_server() -> None:
    with WandbServer(omit_fields=["Project.artifactCollectionMembership", "ArtifactCollection.aliases"]) as srv:
        srv.add_artifact("acme", "vision", "ds", "dataset", {"a": b"1"})
        resp = gql(srv, MEMBERSHIP, {"e": "acme", "p": "vision", "n": "ds:latest"})
        assert resp.status_code == 400
        message = resp.json()["errors"][0]["message"]
        assert message.startswith('Cannot query field "artifactCollectionMembership" on type "Project".')
        # Dropped from the interface, so from its implementation too.
        q = 'query { project(name: "vision", entityName: "acme") { artifactCollection(name: "ds") { %s } } }'
        for frag in ("aliases { edges { node { alias } } }", "... on ArtifactSequence { aliases { totalCount } }"):
            assert gql(srv, q % frag).status_code == 400
        assert data(srv, q % "name")["project"]["artifactCollection"] == {"name": "ds"}
        srv.validation_status = 200
        assert gql(srv, q % "aliases { totalCount }").status_code == 200
    with pytest.raises(ValueError, match="lacks"):
        WandbServer(omit_fields=["Project.noSuchField"])
    with pytest.raises(ValueError, match="unknown types"):
        WandbServer(omit_fields=["NoSuchType.name"])


@pytest.mark.slow
def test_real_sdk_reads_from_an_older_server(tmp_path: Path) -> None:
    """Without ``serverInfo.features`` the SDK assumes no features and leaves ``digestAlgorithm``
    out of its queries; the server without that field still answers everything it asks."""
    with WandbServer(omit_fields=["ServerInfo.features", "Artifact.digestAlgorithm"]) as srv:
        rec = srv.add_artifact("acme", "vision", "ds", "dataset", FILES)
        script = """
        import json, os, wandb
        a = wandb.Api().artifact("acme/vision/ds:latest")
        a.download("root")
        a.verify("root")
        print(json.dumps([a.digest, sorted(os.listdir("root"))]))
        """
        out = run_sdk(srv, tmp_path, script)
        assert out == [rec.digest, sorted({p.split("/")[0] for p in FILES})]
        assert [r.status for r in srv.operations("ServerFeaturesQuery")] == [400]
        assert all(r.status == 200 for r in srv.requests if r.operation not in ("ServerFeaturesQuery", None))


def test_faults_are_used_up_only_by_requests_they_changed(faulty: tuple[WandbServer, str, bytes]) -> None:
    srv, url, body = faulty
    srv.faults.expire(match="b.bin")
    srv.faults.status(503, match="b.bin")
    srv.faults.corrupt(match="b.bin")
    assert requests.get(url, timeout=10).status_code == 503  # status first; the expiry waits
    assert requests.get(url, timeout=10).status_code == 403
    assert requests.head(url, timeout=10).status_code == 200  # no body: the corruption waits
    assert requests.get(url, headers={"Range": f"bytes={len(body)}-"}, timeout=10).status_code == 416
    assert srv.faults.pending() == 1
    bad = requests.get(url, timeout=10).content
    assert bad != body and len(bad) == len(body)
    assert srv.faults.pending() == 0 and requests.get(url, timeout=10).content == body


# ----------------------------------------------------------------------------- mutations

SDK_EDITS = """
import json, os, wandb
api = wandb.Api()
out = {}
art = api.artifact("acme/vision/ds:v0")
art.description = "edited by the sdk"
art.metadata["rows"] = 99
art.aliases.append("golden")
art.save()
fresh = api.artifact("acme/vision/ds:v0")
out["edited"] = [fresh.description, fresh.metadata, sorted(fresh.aliases)]
out["golden"] = api.artifact("acme/vision/ds:golden").version
fresh.aliases.remove("golden")
fresh.save()
out["unaliased"] = sorted(api.artifact("acme/vision/ds:v0").aliases)
out["golden_after"] = api.artifact_exists("acme/vision/ds:golden")

l0 = art.link("acme/vision/linked", aliases=["prod"])
out["link0"] = [l0.qualified_name, l0.version, sorted(l0.aliases), l0.is_link]
v1 = api.artifact("acme/vision/ds:v1")
l1 = v1.link("acme/vision/linked")
out["link1"] = [l1.version, sorted(l1.aliases)]
l1.aliases.append("staging")  # an alias of the link, in the linked collection
l1.description = "edited through the link"
l1.save()
out["via_link"] = [
    api.artifact("acme/vision/linked:staging").version,
    api.artifact("acme/vision/ds:v1").description,
    sorted(api.artifact("acme/vision/ds:v1").aliases),
]
prod = api.artifact("acme/vision/linked:prod")
out["prod"] = [prod.version, prod.source_name, prod.digest == art.digest, prod.is_link]
root = os.path.abspath("linked")
prod.download(root)
out["linked_files"] = sorted(os.path.relpath(os.path.join(d, n), root) for d, _, ns in os.walk(root) for n in ns)
out["linked_latest"] = api.artifact("acme/vision/linked:latest").source_name
out["collections"] = sorted(c.name for c in api.artifact_collections("acme/vision", "dataset"))
l0.delete()  # a link: unlinked, its source stays
out["unlinked"] = [api.artifact_exists("acme/vision/linked:v0"), api.artifact_exists("acme/vision/ds:v0")]

try:
    v1.delete()
    out["delete_with_aliases"] = "deleted"
except Exception as exc:
    out["delete_with_aliases"] = str(exc)[:300]
v1.delete(delete_aliases=True)
out["deleted"] = [api.artifact_exists("acme/vision/ds:v1"), api.artifact_exists("acme/vision/linked:v1")]
out["latest_after"] = api.artifact("acme/vision/ds:latest").version

foreign = api.artifact("outsider/public/thing:v0")
foreign.description = "not mine"
try:
    foreign.save()
    out["foreign"] = "saved"
except Exception as exc:
    out["foreign"] = str(exc)[:300]

run = art.logged_by()
out["logged_by"] = [run.entity, run.project, run.id, run.name, run.job_type, run.config, run.state]
out["used_by"] = sorted(r.id for r in api.artifact("acme/vision/ds:v0").used_by())
print(json.dumps(out))
"""


@pytest.mark.slow
def test_real_sdk_edits_links_and_deletes(tmp_path: Path) -> None:
    """``Artifact.save()`` of a logged artifact, ``link()``, ``delete()`` of a link and of a
    version, as the real SDK sends them; each is seen by a fresh lookup and in the server."""
    with WandbServer() as srv:
        srv.add_run("acme", "vision", "maker", display_name="brave-sun-1", job_type="train", config={"lr": 0.1})
        srv.add_artifact("acme", "vision", "ds", "dataset", FILES_V0, metadata={"rows": 1}, run="maker", used_by=["e1"])
        srv.add_artifact("acme", "vision", "ds", "dataset", FILES, aliases=["best"])
        srv.add_artifact("outsider", "public", "thing", "dataset", {"t": b"t"})
        out = run_sdk(srv, tmp_path, SDK_EDITS)
        v0, v1 = srv.artifact("acme", "vision", "ds", 0), srv.artifact("acme", "vision", "ds", 1)
        assert out["edited"] == ["edited by the sdk", {"rows": 99}, ["golden"]]
        assert (v0.description, v0.metadata) == ("edited by the sdk", {"rows": 99})
        assert out["golden"] == "v0"
        assert out["unaliased"] == [] and out["golden_after"] is False
        assert out["link0"] == ["acme/vision/linked:v0", "v0", ["latest", "prod"], True]
        assert out["link1"] == ["v1", ["latest"]]
        assert out["via_link"] == ["v1", "edited through the link", ["best", "latest"]]
        assert srv.operations("IsProjectReadOnly")  # the SDK asks before editing through a link
        assert out["prod"] == ["v0", "ds:v0", True, True]
        assert out["linked_files"] == sorted(FILES_V0)
        assert out["linked_latest"] == "ds:v1"
        assert out["collections"] == ["ds", "linked"]
        assert out["unlinked"] == [False, True]
        assert "while it has aliases (ds:best, linked:staging)" in out["delete_with_aliases"]
        assert out["deleted"] == [False, False] and v1.deleted
        assert out["latest_after"] == "v0"
        assert "permission denied" in out["foreign"]
        assert srv.artifact("outsider", "public", "thing", 0).description == ""
        assert out["logged_by"] == ["acme", "vision", "maker", "brave-sun-1", "train", {"lr": 0.1}, "finished"]
        assert out["used_by"] == ["e1"]
        ops = {r.operation for r in srv.graphql_requests()}
        assert {
            "AddAliases",
            "DeleteAliases",
            "UpdateArtifact",
            "LinkArtifact",
            "UnlinkArtifact",
            "DeleteArtifact",
        } <= ops
        assert not srv.handler_errors
        # The only errors sent were the two refusals the script provoked.
        assert [e.split(":")[0] for e in srv.graphql_errors] == ["DeleteArtifact", "UpdateArtifact"]


ADD_ALIASES = """
mutation AddAliases($input: AddAliasesInput!) { result: addAliases(input: $input) { success } }
"""
DELETE_ALIASES = """
mutation DeleteAliases($input: DeleteAliasesInput!) { result: deleteAliases(input: $input) { success } }
"""
UPDATE = """
mutation UpdateArtifact($input: UpdateArtifactInput!) {
  result: updateArtifact(input: $input) {
    artifact { id description metadata updatedAt tags { name } ttlDurationSeconds ttlIsInherited
               aliases { alias artifactCollection { __typename name } } }
  }
}
"""
DELETE = """
mutation DeleteArtifact($input: DeleteArtifactInput!) {
  result: deleteArtifact(input: $input) { artifact { id state } }
}
"""
LINK = """
mutation LinkArtifact($input: LinkArtifactInput!) {
  result: linkArtifact(input: $input) {
    versionIndex artifactCollectionID
    artifactMembership { id versionIndex aliases { alias } artifactCollection { __typename name }
                         artifact { id versionIndex } }
  }
}
"""
UNLINK = """
mutation UnlinkArtifact($input: UnlinkArtifactInput!) { result: unlinkArtifact(input: $input) { success } }
"""


def _alias_input(alias: str, coll: str = "m", project: str = "p", entity: str = "acme") -> dict[str, str]:
    return {"entityName": entity, "projectName": project, "artifactCollectionName": coll, "alias": alias}


def _refused(srv: WandbServer, query: str, variables: dict[str, Any]) -> str:
    """The one error message of a refused mutation (HTTP 200, null result, path [field])."""
    resp = gql(srv, query, {"input": variables})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["data"] == {"result": None}
    [err] = body["errors"]
    assert err["path"] == ["result"]
    message: str = err["message"]
    return message


def _models(srv: WandbServer) -> list[Any]:
    return [srv.artifact("acme", "p", "m", i) for i in range(3)]


@pytest.fixture
def models() -> Iterator[WandbServer]:
    with WandbServer(teams=("team",)) as srv:
        for i in range(3):
            srv.add_artifact("acme", "p", "m", "model", {"w": bytes([i])}, aliases=["prod"] if i == 0 else ())
        srv.add_artifact("acme", "p", "other", "dataset", {"d": b"d"})
        srv.add_artifact("stranger", "p", "m", "model", {"w": b"s"})
        yield srv
        assert not srv.handler_errors, srv.handler_errors[0]


def test_aliases_are_added_moved_and_deleted(models: WandbServer) -> None:
    srv = models
    v0, v1, v2 = _models(srv)
    got = data(srv, ADD_ALIASES, {"input": {"artifactID": v1.id, "aliases": [_alias_input("prod"), _alias_input("x")]}})
    assert got == {"result": {"success": True}}
    assert v0.aliases == [] and v1.aliases == ["prod", "x"]  # prod moved from v0
    assert v1.updated_at > v1.created_at
    assert _membership(srv, "m:prod", "p")["versionIndex"] == 1
    data(srv, DELETE_ALIASES, {"input": {"artifactID": v1.id, "aliases": [_alias_input("x")]}})
    assert v1.aliases == ["prod"]
    assert data(srv, MEMBERSHIP, {"e": "acme", "p": "p", "n": "m:x"})["project"]["artifactCollectionMembership"] is None
    assert v2.aliases == ["latest"]


def test_refused_mutations_change_nothing(models: WandbServer) -> None:
    srv = models
    v0, v1, _ = _models(srv)
    before = [(r.aliases, r.description, r.metadata, r.deleted) for r in _models(srv)]
    # One bad alias among good ones: nothing is added.
    for bad, says in [
        ("v3", "names of the form vN are versions"),
        ("a/b", "invalid alias"),
        ("latest", "alias 'latest' is reserved"),
    ]:
        msg = _refused(srv, ADD_ALIASES, {"artifactID": v1.id, "aliases": [_alias_input("ok"), _alias_input(bad)]})
        assert says in msg
    assert "alias 'best' not found on artifact m:v1" in _refused(
        srv, DELETE_ALIASES, {"artifactID": v1.id, "aliases": [_alias_input("best")]}
    )
    assert "artifact collection acme/p/nope not found" in _refused(
        srv, ADD_ALIASES, {"artifactID": v1.id, "aliases": [_alias_input("ok", coll="nope")]}
    )
    assert "not found in collection acme/p/other" in _refused(
        srv, ADD_ALIASES, {"artifactID": v1.id, "aliases": [_alias_input("ok", coll="other")]}
    )
    assert _refused(srv, UPDATE, {"artifactID": "QXJ0aWZhY3Q6OTk5", "description": "x"}) == (
        "artifact QXJ0aWZhY3Q6OTk5 not found"
    )
    assert "expected a JSON object" in _refused(srv, UPDATE, {"artifactID": v1.id, "metadata": "[1]"})
    assert "not JSON" in _refused(srv, UPDATE, {"artifactID": v1.id, "metadata": "{", "description": "x"})
    msg = _refused(srv, DELETE, {"artifactID": v0.id})
    assert msg.startswith("cannot delete artifact m:v0 while it has aliases (m:prod)")
    assert [(r.aliases, r.description, r.metadata, r.deleted) for r in _models(srv)] == before
    # Without the key: 401, nothing changed.
    resp = requests.post(
        srv.url + "/graphql",
        json={"query": UPDATE, "variables": {"input": {"artifactID": v1.id, "description": "anon"}}},
        timeout=10,
    )
    assert resp.status_code == 401 and v1.description == ""


def test_permission_denied_outside_the_viewers_entities_and_in_read_only_projects(models: WandbServer) -> None:
    srv = models
    theirs = srv.artifact("stranger", "p", "m", 0)
    assert _refused(srv, UPDATE, {"artifactID": theirs.id, "description": "x"}) == "permission denied"
    assert _refused(srv, DELETE, {"artifactID": theirs.id}) == "permission denied"
    alias = _alias_input("x", entity="stranger")
    assert _refused(srv, ADD_ALIASES, {"artifactID": theirs.id, "aliases": [alias]}) == "permission denied"
    assert theirs.description == "" and not theirs.deleted and theirs.aliases == ["latest"]
    mine = srv.artifact("acme", "p", "m", 1)
    srv.set_read_only("acme", "p")
    assert _refused(srv, UPDATE, {"artifactID": mine.id, "description": "x"}) == "permission denied"
    q = 'query { project(name: "p", entityName: "acme") { readOnly } }'
    assert data(srv, q)["project"]["readOnly"] is True
    srv.set_read_only("acme", "p", False)
    assert data(srv, q)["project"]["readOnly"] is False
    # A team's project is writable.
    team = srv.add_artifact("team", "shared", "m", "model", {"w": b"t"})
    data(srv, UPDATE, {"input": {"artifactID": team.id, "description": "ours"}})
    assert team.description == "ours"


def test_update_artifact(models: WandbServer) -> None:
    srv = models
    v1 = srv.artifact("acme", "p", "m", 1)
    got = data(
        srv,
        UPDATE,
        {
            "input": {
                "artifactID": v1.id,
                "description": "new",
                "metadata": json.dumps({"acc": 0.9, "nested": {"a": [1]}}),
                "tagsToAdd": [{"tagName": "t1"}, {"tagName": "t2"}],
                "ttlDurationSeconds": 3600,
            }
        },
    )["result"]["artifact"]
    assert got["description"] == "new" and json.loads(got["metadata"]) == {"acc": 0.9, "nested": {"a": [1]}}
    assert [t["name"] for t in got["tags"]] == ["t1", "t2"]
    assert (got["ttlDurationSeconds"], got["ttlIsInherited"]) == (3600, False)
    assert got["updatedAt"] > "2026-01-01T00:00:"
    # Absent fields stay; tags are deleted by name; the older aliases input replaces them.
    got = data(
        srv,
        UPDATE,
        {
            "input": {
                "artifactID": v1.id,
                "tagsToDelete": [{"tagName": "t1"}],
                "aliases": [
                    {"artifactCollectionName": "m", "alias": "a1"},
                    {"artifactCollectionName": "m", "alias": "a2"},
                ],
            }
        },
    )["result"]["artifact"]
    assert got["description"] == "new" and [t["name"] for t in got["tags"]] == ["t2"]
    assert sorted(a["alias"] for a in got["aliases"]) == ["a1", "a2"]
    assert {a["artifactCollection"]["__typename"] for a in got["aliases"]} == {"ArtifactSequence"}
    data(srv, UPDATE, {"input": {"artifactID": v1.id, "aliases": [{"artifactCollectionName": "m", "alias": "a3"}]}})
    assert v1.aliases == ["a3"]


def test_delete_artifact(models: WandbServer) -> None:
    srv = models
    v0, _, v2 = _models(srv)
    got = data(srv, DELETE, {"input": {"artifactID": v2.id}})  # only "latest": no deleteAliases needed
    assert got == {"result": {"artifact": {"id": v2.id, "state": "DELETED"}}}
    assert v2.deleted and _membership(srv, "m:latest", "p")["versionIndex"] == 1
    data(srv, DELETE, {"input": {"artifactID": v0.id, "deleteAliases": True}})
    assert v0.deleted and srv.collection("acme", "p", "m").aliases == {"latest": 1}
    assert _refused(srv, DELETE, {"artifactID": v0.id}) == f"artifact {v0.id} not found"
    q = 'query { project(name: "p", entityName: "acme") { artifactCollection(name: "m") { artifacts { edges { version } } } } }'  # noqa: E501
    assert [e["version"] for e in data(srv, q)["project"]["artifactCollection"]["artifacts"]["edges"]] == ["v1"]


def test_link_and_unlink(models: WandbServer) -> None:
    srv = models
    v0, v1, v2 = _models(srv)
    link = {"artifactPortfolioName": "best-models", "entityName": "acme", "projectName": "p"}
    first = data(
        srv,
        LINK,
        {
            "input": {
                **link,
                "artifactID": v1.id,
                "aliases": [{"artifactCollectionName": "best-models", "alias": "champion"}],
            }
        },
    )
    member = first["result"]["artifactMembership"]
    assert first["result"]["versionIndex"] == 0 and member["versionIndex"] == 0
    assert member["artifactCollection"] == {"__typename": "ArtifactPortfolio", "name": "best-models"}
    assert sorted(a["alias"] for a in member["aliases"]) == ["champion", "latest"]
    assert member["artifact"] == {"id": v1.id, "versionIndex": 1}
    second = data(srv, LINK, {"input": {**link, "artifactID": v2.id}})["result"]
    assert second["versionIndex"] == 1
    again = data(
        srv, LINK, {"input": {"artifactID": v1.id, "artifactPortfolioID": first["result"]["artifactCollectionID"]}}
    )
    assert again["result"]["versionIndex"] == 0  # already linked: same index
    portfolio = srv.collection("acme", "p", "best-models")
    assert portfolio.kind == "PORTFOLIO" and portfolio.aliases == {"champion": 0, "latest": 1}
    assert [(c.name, i) for c, i in srv.memberships(v1)] == [("m", 1), ("best-models", 0)]
    # Lookups through the portfolio name the source artifact and number by the portfolio.
    assert _membership(srv, "best-models:champion", "p")["versionIndex"] == 0
    assert _membership(srv, "best-models:champion", "p")["artifact"]["id"] == v1.id
    q = """query { project(name: "p", entityName: "acme") {
      artifactCollections { edges { node { __typename name } } }
      ss: artifactCollections(collectionTypes: [SEQUENCE]) { edges { node { name } } }
      artifactType(name: "model") { artifactSequences { edges { node { name } } } }
      artifactCollection(name: "best-models") { artifacts { edges { version node { id versionIndex } } } } } }"""
    proj = data(srv, q)["project"]
    assert [(e["node"]["__typename"], e["node"]["name"]) for e in proj["artifactCollections"]["edges"]] == [
        ("ArtifactSequence", "m"),
        ("ArtifactSequence", "other"),
        ("ArtifactPortfolio", "best-models"),
    ]
    assert [e["node"]["name"] for e in proj["ss"]["edges"]] == ["m", "other"]
    assert [e["node"]["name"] for e in proj["artifactType"]["artifactSequences"]["edges"]] == ["m"]
    edges = proj["artifactCollection"]["artifacts"]["edges"]
    assert [(e["version"], e["node"]["id"], e["node"]["versionIndex"]) for e in edges] == [
        ("v1", v2.id, 2),
        ("v0", v1.id, 1),
    ]
    # The artifact's aliases name their collections.
    art = data(
        srv, "query($id: ID!) { artifact(id: $id) { aliases { alias artifactCollection { name } } } }", {"id": v1.id}
    )
    got = sorted((a["artifactCollection"]["name"], a["alias"]) for a in art["artifact"]["aliases"])
    assert got == [("best-models", "champion")]
    # Refusals.
    assert "already exists as a sequence" in _refused(
        srv, LINK, {**link, "artifactPortfolioName": "m", "artifactID": v0.id}
    )
    other = srv.artifact("acme", "p", "other", 0)
    assert "artifact type 'dataset' does not match the type 'model'" in _refused(
        srv, LINK, {**link, "artifactID": other.id}
    )
    assert _refused(srv, LINK, {**link, "projectName": "nope", "artifactID": v0.id}) == "project acme/nope not found"
    assert _refused(srv, LINK, {**link, "entityName": "stranger", "artifactID": v0.id}) == "permission denied"
    assert "artifactID is required" in _refused(srv, LINK, {**link, "clientID": "abc"})
    # Unlink: its aliases there go, latest stays on the newest link; the source is untouched.
    data(srv, UNLINK, {"input": {"artifactID": v2.id, "artifactPortfolioID": portfolio.id}})
    assert portfolio.aliases == {"champion": 0, "latest": 0} and not v2.deleted
    assert "not found in collection best-models" in _refused(
        srv, UNLINK, {"artifactID": v2.id, "artifactPortfolioID": portfolio.id}
    )
    # Deleting a source removes its links (the champion alias is an alias: deleteAliases needed).
    assert "best-models:champion" in _refused(srv, DELETE, {"artifactID": v1.id})
    data(srv, DELETE, {"input": {"artifactID": v1.id, "deleteAliases": True}})
    assert (
        data(srv, MEMBERSHIP, {"e": "acme", "p": "p", "n": "best-models:latest"})["project"][
            "artifactCollectionMembership"
        ]
        is None
    )


def test_runs_lineage_fields() -> None:
    with WandbServer() as srv:
        srv.add_run("acme", "vision", "r1", display_name="brave-sun-1", job_type="train", config={"lr": 0.1})
        srv.add_run("acme", "vision", "r2", state="crashed")
        rec = srv.add_artifact("acme", "vision", "ds", "dataset", FILES, run="r1", used_by=["r2", "r3"])
        q = """query($id: ID!) { artifact(id: $id) {
          createdBy { __typename ... on Run {
            name displayName jobType state config createdAt project { name entity { name } } } }
          usedBy { edges { node { name displayName jobType state config } } } } }"""
        art = data(srv, q, {"id": rec.id})["artifact"]
        creator = art["createdBy"]
        assert creator["__typename"] == "Run" and creator["name"] == "r1" and creator["displayName"] == "brave-sun-1"
        assert (creator["jobType"], creator["state"]) == ("train", "finished")
        assert json.loads(creator["config"]) == {"lr": {"value": 0.1, "desc": None}}
        assert creator["project"] == {"name": "vision", "entity": {"name": "acme"}}
        used = [e["node"] for e in art["usedBy"]["edges"]]
        assert [(u["name"], u["displayName"], u["state"], u["jobType"]) for u in used] == [
            ("r2", "r2", "crashed", None),
            ("r3", "r3", "finished", None),
        ]
        assert json.loads(used[0]["config"]) == {}
