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
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Mounter
from wandb_server import WandbServer

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
