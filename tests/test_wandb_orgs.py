"""W&B Registry: an organization's ``wandb-registry-*`` projects, on the W&B test server
(tests/wandb_server.py, real HTTP on 127.0.0.1), through the backend and a real FUSE mount.

The organization is the issue's: display name ``Acme Corp``, entity ``acme-org``, registries
``model``, ``dataset`` and ``RAG Chat Models``.  ``resnet`` is logged by the team ``acme-ml`` and
linked into two registries; ``embedder`` is logged in a project the viewer may not see and
linked into ``dataset``, so it can be read only through the registry (the link path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Mounter
from test_wandb_server import sdk_env
from wandb_server import WandbServer

import artifactfs as wandb
from artifactfs.errors import InvalidReference
from artifactfs.names import Ref, parse_ref
from artifactfs.registry.base import OrgInfo
from artifactfs.registry.wandb import WandbRegistry
from artifactfs.store import BlobStore

KEY = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
ORG, ORG_ENTITY = "Acme Corp", "acme-org"
RAG = "wandb-registry-RAG Chat Models"
REGISTRIES = ["wandb-registry-RAG Chat Models", "wandb-registry-dataset", "wandb-registry-model"]
MODEL = {"w.bin": bytes(range(256)) * 50, "cfg/params.json": b'{"depth": 50}\n'}
SECRET = {"emb.npy": b"\x93NUMPY" + b"\x01" * 500, "README": b"only through the registry\n"}


def populate(srv: WandbServer) -> None:
    srv.add_team("acme-ml")
    srv.add_organization(ORG, ORG_ENTITY, teams=("acme-ml",))
    for name in ("model", "dataset", "RAG Chat Models"):
        srv.add_registry(ORG_ENTITY, name)
    src = srv.add_artifact("acme-ml", "train", "resnet", "model", MODEL, aliases=["candidate"])
    srv.link(src, ORG_ENTITY, "wandb-registry-model", "resnet", ["production"])
    srv.link(src, ORG_ENTITY, RAG, "resnet", ["best"])
    secret = srv.add_artifact("secret-team", "private", "embedder", "model", SECRET)
    srv.link(secret, ORG_ENTITY, "wandb-registry-dataset", "embedder", ["stable"])
    srv.hide_project("secret-team", "private")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_ORGANIZATION", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    return tmp_path


@pytest.fixture
def server(env: Path) -> Iterator[WandbServer]:
    with WandbServer(api_key=KEY, viewer_entity="acme") as srv:
        populate(srv)
        yield srv


@pytest.fixture
def registry(server: WandbServer, tmp_path: Path) -> Iterator[WandbRegistry]:
    reg = WandbRegistry(server.url, str(tmp_path / "cache"))
    yield reg
    reg.close()


def read_all(registry: WandbRegistry, ref: str, tmp: Path) -> dict[str, bytes]:
    """Every file of ``ref``, fetched through the backend's blob sources and the verified store."""
    version = registry.resolve(parse_ref(ref))
    out = {}
    store = BlobStore(str(tmp))
    try:
        for entry in registry.iter_entries(version):
            blob = store.fill(entry.cache_key, entry, registry.blob_source(version, entry), entry.path)
            try:
                out[entry.path] = blob.pread(entry.size + 1, 0)
            finally:
                blob.close()
    finally:
        store.close()
    return out


def test_the_viewers_organizations_and_their_registries(server: WandbServer, registry: WandbRegistry) -> None:
    assert registry.organizations() == [OrgInfo(ORG, ORG_ENTITY)]
    assert registry.entities() == ["acme", "acme-ml", ORG_ENTITY]  # the secret team is not the viewer's
    assert registry.projects(ORG_ENTITY) == REGISTRIES
    assert server.operations("FetchRegistries")  # found as the SDK finds them
    assert registry.projects("acme-ml") == ["train"]
    registry.check_project(ORG_ENTITY, RAG)
    cols = registry.collections(ORG_ENTITY, RAG)
    assert [(c.name, c.type, c.version_count) for c in cols] == [("resnet", "model", 1)]


def test_without_registry_search_an_org_entity_lists_its_projects(env: Path) -> None:
    with WandbServer(api_key=KEY, viewer_entity="acme") as srv:
        populate(srv)
        srv.features["ARTIFACT_REGISTRY_SEARCH"] = False
        reg = WandbRegistry(srv.url)
        try:
            assert reg.projects(ORG_ENTITY) == REGISTRIES
            assert not srv.operations("FetchRegistries")
        finally:
            reg.close()


def test_org_entity_resolution_follows_the_sdk(server: WandbServer, registry: WandbRegistry) -> None:
    # A personal entity: its user's one organization, named by display name, entity, or not at all.
    for given in (None, ORG, ORG_ENTITY):
        assert registry.org_entity(given, "acme") == ORG_ENTITY
    assert registry.org_entity(None, "acme-ml") == ORG_ENTITY  # a team: its organization
    with pytest.raises(InvalidReference, match="Other Org"):
        registry.org_entity("Other Org", "acme")
    server.add_organization("Beta Labs", "beta-org")
    with pytest.raises(InvalidReference, match="2 organizations"):
        registry.org_entity(None, "acme")
    assert registry.org_entity("beta-org", "acme") == "beta-org"
    assert server.operations("FetchOrgInfoFromEntity")[-1].variables == {"entity": "acme"}


def test_a_member_and_its_source_keep_their_own_names_and_aliases(registry: WandbRegistry) -> None:
    member = registry.resolve(parse_ref(f"{ORG_ENTITY}/wandb-registry-model/resnet:production"))
    source = registry.resolve(parse_ref("acme-ml/train/resnet:candidate"))
    assert member.id == source.id  # W&B: one artifact
    assert (member.ref, member.source) == (Ref(ORG_ENTITY, "wandb-registry-model", "resnet", "v0"), source.ref)
    assert member.source_qualified_name == "acme-ml/train/resnet:v0" == source.source_qualified_name
    assert set(member.aliases) == {"latest", "production"} and set(source.aliases) == {"latest", "candidate"}
    # Listings too: the artifact's aliases name every collection it is in, three named "resnet".
    listed = {(v.entity, v.project): v for v in registry.project_versions(ORG_ENTITY, RAG)}
    assert set(listed[(ORG_ENTITY, RAG)].aliases) == {"latest", "best"}
    (train,) = registry.project_versions("acme-ml", "train")
    assert set(train.aliases) == {"latest", "candidate"} and train.source is None
    spaced = registry.resolve(parse_ref(f"{ORG_ENTITY}/{RAG}/resnet:best"))
    assert spaced.ref == Ref(ORG_ENTITY, RAG, "resnet", "v0") and spaced.source == source.ref


def test_a_member_whose_source_is_invisible_reads_through_the_registry(
    server: WandbServer, registry: WandbRegistry, tmp_path: Path
) -> None:
    assert registry.projects("secret-team") == []
    member = registry.resolve(parse_ref(f"{ORG_ENTITY}/wandb-registry-dataset/embedder:stable"))
    assert member.source == Ref("", "", "embedder", "v0")  # W&B does not say where it was logged
    assert member.source_qualified_name == "//embedder:v0" and member.source_version == "v0"
    assert registry.logged_by(member) is None and registry.used_by(member) == []
    server.reset_log()
    assert read_all(registry, f"{ORG_ENTITY}/wandb-registry-dataset/embedder:stable", tmp_path / "blobs") == SECRET
    asked = server.operations("GetArtifactMembershipFileUrls")
    assert asked and all(
        (r.variables["entity"], r.variables["project"], r.variables["collection"], r.variables["alias"])
        == (ORG_ENTITY, "wandb-registry-dataset", "embedder", "v0")
        for r in asked
    )
    assert not server.graphql_errors


@pytest.mark.fuse
def test_the_mount_shows_registries_beside_the_viewers_entities(
    mounter: Mounter, server: WandbServer, require_fuse: None
) -> None:
    m = mounter(f"wandb:{server.url}")  # type: ignore[arg-type]
    assert sorted(os.listdir(m.path)) == ["acme", "acme-ml", ORG_ENTITY]
    org = m.path / ORG_ENTITY
    assert sorted(os.listdir(org)) == REGISTRIES
    rag = org / RAG
    assert sorted(os.listdir(rag)) == ["resnet:best", "resnet:latest", "resnet:v0"]
    assert os.readlink(rag / "resnet:best") == "resnet:v0"
    assert {p: (rag / "resnet:best" / p).read_bytes() for p in MODEL} == MODEL

    # The invisible source: read through the registry, named as W&B names it.
    stable = org / "wandb-registry-dataset" / "embedder:stable"
    assert {p: (stable / p).read_bytes() for p in SECRET} == SECRET
    assert os.getxattr(stable, "user.artifact.source_qualified_name") == b"//embedder:v0"
    assert not (m.path / "secret-team" / "private").exists()

    # A member and its source side by side: one artifact id, two directories with their own
    # names, aliases and .artifactfs views, the same bytes.
    member, source = org / "wandb-registry-model" / "resnet:v0", m.path / "acme-ml" / "train" / "resnet:v0"
    assert os.getxattr(member, "user.artifact.id") == os.getxattr(source, "user.artifact.id")
    assert os.getxattr(member, "user.artifact.aliases") == b"latest,production"
    assert os.getxattr(source, "user.artifact.aliases") == b"latest,candidate"
    assert os.getxattr(member, "user.artifact.qualified_name") == b"acme-org/wandb-registry-model/resnet:v0"
    for d in (member, source):
        assert os.getxattr(d, "user.artifact.source_qualified_name") == b"acme-ml/train/resnet:v0"
        assert os.getxattr(d, "user.artifact.source_version") == b"v0"
        assert {p: (d / p).read_bytes() for p in MODEL} == MODEL
    infos = [json.loads((d.parent / ".artifactfs" / "resnet:v0" / "info.json").read_bytes()) for d in (member, source)]
    assert [(i["qualified_name"], i["source_qualified_name"], sorted(i["aliases"])) for i in infos] == [
        ("acme-org/wandb-registry-model/resnet:v0", "acme-ml/train/resnet:v0", ["latest", "production"]),
        ("acme-ml/train/resnet:v0", "acme-ml/train/resnet:v0", ["candidate", "latest"]),
    ]
    assert infos[0]["source"] == "acme-ml/train/resnet:v0" and infos[1]["source"] is None


# -- the real wandb SDK, our API and our mount on the same server ------------------------------

SDK_PATHS = [
    "wandb-registry-model/resnet:production",
    f"{ORG}/wandb-registry-model/resnet:production",
    f"{ORG_ENTITY}/wandb-registry-model/resnet:v0",
    f"{RAG}/resnet:best",
    "wandb-registry-dataset/embedder:stable",
    "acme-ml/train/resnet:candidate",
]
NAMES = ("qualified_name", "name", "version", "source_version", "source_qualified_name", "is_link", "id", "digest")

SDK_SCRIPT = """
import json, os, pathlib, wandb
api = wandb.Api()
out = {"paths": {}, "files": {}}
if os.environ.get("LINK"):
    api.artifact("acme-ml/train/resnet:candidate").link("wandb-registry-model/resnet", aliases=["production"])
for p in json.loads(os.environ["PATHS"]):
    a = api.artifact(p)
    out["paths"][p] = {k: getattr(a, k) for k in json.loads(os.environ["NAMES"])}
    out["paths"][p]["aliases"] = sorted(a.aliases)
    root = pathlib.Path(a.download(root=str(pathlib.Path("dl") / str(len(out["files"])))))
    out["files"][p] = {str(f.relative_to(root)): f.read_bytes().hex() for f in root.rglob("*") if f.is_file()}
if os.environ.get("LINK"):
    regs = api.registries()
    out["registries"] = sorted(r.name for r in regs)
    out["collections"] = sorted([c.project, c.name] for c in api.registries().collections())
    out["versions"] = sorted(v.qualified_name for v in api.registries().versions())
print(json.dumps(out))
"""


def run_sdk(server: WandbServer, tmp: Path, paths: list[str], **extra: str) -> dict[str, Any]:
    """The real SDK in a subprocess (its Go sidecar makes in-process use awkward), as
    tests/test_wandb_server.py runs it, with ``extra`` in its environment."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = sdk_env(server, tmp)
    env.update(PATHS=json.dumps(paths), NAMES=json.dumps(NAMES), **extra)
    proc = subprocess.run(
        [sys.executable, "-c", SDK_SCRIPT], env=env, capture_output=True, text=True, timeout=180, cwd=tmp
    )
    assert proc.returncode == 0, f"SDK script failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def ours(api: wandb.Api, path: str, root: Path) -> tuple[dict[str, Any], dict[str, str]]:
    a = api.artifact(path)
    names: dict[str, Any] = {k: getattr(a, k) for k in NAMES}
    names["aliases"] = sorted(a.aliases)
    got = Path(a.download(root))
    return names, {str(f.relative_to(got)): f.read_bytes().hex() for f in got.rglob("*") if f.is_file()}


@pytest.mark.fuse
def test_the_real_sdk_links_into_a_registry_and_the_sdk_our_api_and_our_mount_agree(
    env: Path, tmp_path: Path, mounter: Mounter, require_fuse: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with WandbServer(api_key=KEY, viewer_entity="acme") as srv:
        srv.add_team("acme-ml")
        srv.add_organization(ORG, ORG_ENTITY, teams=("acme-ml",))
        for name in ("model", "dataset", "RAG Chat Models"):
            srv.add_registry(ORG_ENTITY, name)
        srv.add_artifact("acme-ml", "train", "resnet", "model", MODEL, aliases=["candidate"])
        secret = srv.add_artifact("secret-team", "private", "embedder", "model", SECRET)
        srv.link(secret, ORG_ENTITY, "wandb-registry-dataset", "embedder", ["stable"])
        srv.hide_project("secret-team", "private")

        # Our API links into a registry (the organization found as the SDK finds it) ...
        monkeypatch.setenv("ARTIFACTFS_REGISTRY", f"wandb:{srv.url}")
        monkeypatch.setenv("ARTIFACTFS_CACHE_DIR", str(tmp_path / "cache"))
        api = wandb.Api()
        linked = api.artifact("acme-ml/train/resnet:candidate").link(f"{RAG}/resnet", aliases=["best"])
        assert (linked.qualified_name, linked.source_qualified_name) == (
            f"{ORG_ENTITY}/{RAG}/resnet:v0",
            "acme-ml/train/resnet:v0",
        )
        link_ops = srv.operations("LinkArtifact")
        assert [r.variables["input"]["entityName"] for r in link_ops] == [ORG_ENTITY]
        # ... the SDK links into another, then reads every path and lists the registries.
        sdk = run_sdk(srv, tmp_path / "sdk", SDK_PATHS, LINK="1")
        assert not srv.graphql_errors
        assert sorted(sdk["paths"]) == sorted(SDK_PATHS)

        for i, path in enumerate(SDK_PATHS):
            names, files = ours(api, path, tmp_path / "ours" / str(i))
            assert names == sdk["paths"][path], path
            assert files == sdk["files"][path], path
        member = sdk["paths"]["wandb-registry-model/resnet:production"]
        assert member["qualified_name"] == f"{ORG_ENTITY}/wandb-registry-model/resnet:production"
        assert member["source_qualified_name"] == "acme-ml/train/resnet:v0" and member["is_link"]
        assert sdk["paths"]["wandb-registry-dataset/embedder:stable"]["source_qualified_name"] == "//embedder:v0"

        regs = api.registries()
        assert sorted(r.name for r in regs) == sdk["registries"] == ["RAG Chat Models", "dataset", "model"]
        assert sorted([c.project, c.name] for c in regs.collections()) == sdk["collections"]
        assert sorted(v.qualified_name for v in regs.versions()) == sdk["versions"]
        (model,) = api.registries(filter={"name": "model"})
        assert (model.entity, model.organization, model.full_name) == (ORG_ENTITY, ORG, "wandb-registry-model")
        assert [v.qualified_name for v in model.versions()] == [f"{ORG_ENTITY}/wandb-registry-model/resnet:v0"]

        # $WANDB_ORGANIZATION names the organization of a path without one, for both.
        for org in (ORG, ORG_ENTITY):
            monkeypatch.setenv("WANDB_ORGANIZATION", org)
            again = run_sdk(
                srv, tmp_path / f"sdk-{org}", ["wandb-registry-model/resnet:latest"], WANDB_ORGANIZATION=org
            )
            names, _ = ours(api, "wandb-registry-model/resnet:latest", tmp_path / "ours-org" / org)
            assert names == again["paths"]["wandb-registry-model/resnet:latest"]
        monkeypatch.setenv("WANDB_ORGANIZATION", "Other Org")
        with pytest.raises(InvalidReference):
            api.artifact("wandb-registry-model/resnet:latest")
        api.close()

        # The mount reads the same bytes through the registry paths.
        m = mounter(f"wandb:{srv.url}")  # type: ignore[arg-type]
        for path, rel in (
            ("wandb-registry-model/resnet:production", f"{ORG_ENTITY}/wandb-registry-model/resnet:production"),
            (f"{RAG}/resnet:best", f"{ORG_ENTITY}/{RAG}/resnet:best"),
            ("wandb-registry-dataset/embedder:stable", f"{ORG_ENTITY}/wandb-registry-dataset/embedder:stable"),
        ):
            d = m.path / rel
            assert {p: (d / p).read_bytes().hex() for p in sdk["files"][path]} == sdk["files"][path]
            qualified = sdk["paths"][path]["source_qualified_name"].encode()
            assert os.getxattr(d, "user.artifact.source_qualified_name") == qualified


def test_a_local_registry_has_no_organizations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/DESIGN.md: without organizations a registry path is an ordinary path: the entity is
    the one a path without one gets (here $WANDB_ENTITY), or the source's for a link."""
    monkeypatch.setenv("WANDB_ENTITY", "acme")
    monkeypatch.delenv("WANDB_ORGANIZATION", raising=False)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "w.bin").write_bytes(b"weights")
    api = wandb.Api(tmp_path / "registry", cache_dir=str(tmp_path / "cache"))
    art = wandb.Artifact("resnet", type="model")
    art.add_dir(str(tmp_path / "src"))
    api.log_artifact(art, "acme/train")
    linked = api.artifact("acme/train/resnet:v0").link(f"{RAG}/resnet", aliases=["best"])
    assert (linked.qualified_name, linked.source_qualified_name) == (f"acme/{RAG}/resnet:v0", "acme/train/resnet:v0")
    got = api.artifact(f"{RAG}/resnet:best")
    assert (got.qualified_name, got.version, got.is_link) == (f"acme/{RAG}/resnet:best", "v0", True)
    regs = api.registries()
    assert [(r.name, r.entity, r.organization) for r in regs] == [("RAG Chat Models", "acme", "acme")]
    assert [v.qualified_name for v in regs.versions()] == [f"acme/{RAG}/resnet:v0"]
    with pytest.raises(InvalidReference):
        api.artifact(f"{ORG}/wandb-registry-model/resnet:v0")  # no organization to find "Acme Corp" in
    api.close()
