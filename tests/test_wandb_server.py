"""The W&B test server speaks W&B: the real wandb SDK (0.31.0) reads artifacts from it, and its
pagination, Range support, URL expiry and fault switches behave as documented.

The SDK runs in one subprocess per scenario (its Go sidecar makes in-process use awkward and
slow to tear down); each scenario prints a JSON report that the test checks against the server's
data and request log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
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
    ):
        assert name in ops, (name, ops)
    # Every file the SDK fetched came from a presigned URL and was answered 200.
    gets = [r for r in server.file_requests() if r.path.startswith("/files/")]
    assert gets and all(r.status == 200 for r in gets)
