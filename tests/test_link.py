"""Links in the local registry: ``LocalRegistry.link`` (W&B's ``Artifact.link``) and what reads,
mounts, deletes, gc and older registries make of them.

A link is a member of a linked collection (W&B's portfolio), numbered by that collection, whose
content is its source version's; ``VersionInfo.source`` names the source.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Mounter, run_cli, tables, user_version, write_tree

from artifactfs.api import Api
from artifactfs.errors import ArtifactNotFound, Conflict, InvalidReference
from artifactfs.names import Ref, parse_ref
from artifactfs.registry.local import LINEAGE_VERSION, LINKS_VERSION, LocalRegistry

LINK_TABLES = {"portfolios", "version_links"}
LINEAGE_TABLES = {"runs", "version_created_by", "version_used_by"}

V0_FILES = {"a.txt": b"alpha\n", "d/b.txt": b"beta\n"}
V1_FILES = {"a.txt": b"alpha, again\n", "d/b.txt": b"beta\n", "d/e/c.bin": bytes(range(256)) * 40}


def contents(reg: LocalRegistry, ref: str) -> dict[str, bytes]:
    """Every file of a version as its blobs hold it (read from the blob store, not the rows)."""
    v = reg.resolve(parse_ref(ref))
    out = {}
    for entry in reg.iter_entries(v):
        path = reg.local_path(entry)
        assert path is not None
        out[entry.path] = Path(path).read_bytes()
    return out


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A registry with acme/vision/ds:v0 (alias best), ds:v1 (latest) and model:v0."""
    root = tmp_path / "registry"
    reg = LocalRegistry(root, create=True)
    try:
        reg.log_dir(
            write_tree(tmp_path / "v0", V0_FILES), parse_ref("acme/vision/ds"), type="dataset", aliases=["best"]
        )
        reg.log_dir(
            write_tree(tmp_path / "v1", V1_FILES),
            parse_ref("acme/vision/ds"),
            type="dataset",
            description="full",
            metadata={"rows": 3},
        )
        reg.log_dir(write_tree(tmp_path / "m", {"model.pt": b"weights"}), parse_ref("acme/vision/model"), type="model")
    finally:
        reg.close()
    return root


@pytest.fixture
def reg(root: Path) -> Iterator[LocalRegistry]:
    r = LocalRegistry(root)
    yield r
    r.close()


def test_link_makes_a_linked_collection_numbering_its_own_members(reg: LocalRegistry) -> None:
    ds0, ds1 = reg.resolve(parse_ref("acme/vision/ds:v0")), reg.resolve(parse_ref("acme/vision/ds:v1"))
    assert ds0.source is None and ds0.to_json()["source"] is None

    first = reg.link(ds1.ref, "acme/vision/golden", ["prod"])
    assert (first.entity, first.project, first.name, first.version) == ("acme", "vision", "golden", "v0")
    assert first.aliases == ("latest", "prod")
    assert first.source == Ref("acme", "vision", "ds", "v1")
    assert first.to_json()["source"] == "acme/vision/ds:v1"
    assert first.id != ds1.id  # a row of its own here (W&B gives a link its source's id)
    # The content is the source's: same digest, sizes, description, metadata and manifest.
    for attr in ("type", "digest", "digest_algorithm", "commit_hash", "size", "file_count", "description", "metadata"):
        assert getattr(first, attr) == getattr(ds1, attr), attr
    assert first.created_at_ns == ds1.created_at_ns  # the same artifact, linked later
    assert reg.manifest(first).to_json() == reg.manifest(ds1).to_json()
    assert [d.name for d in reg.list_dir(first, "d")] == ["b.txt", "e"]
    assert reg.get_entry(first, "d/e/c.bin").entry == reg.get_entry(ds1, "d/e/c.bin").entry
    assert contents(reg, "acme/vision/golden:prod") == V1_FILES

    # Short targets take the entity and project of the version; latest moves to each new member.
    second = reg.link(ds0.ref, "golden")
    assert (second.version, second.aliases, second.source) == ("v1", ("latest",), ds0.ref)
    assert reg.resolve(parse_ref("acme/vision/golden:prod")).aliases == ("prod",)
    assert contents(reg, "acme/vision/golden:latest") == V0_FILES
    third = reg.link(parse_ref("acme/vision/model:latest"), "vision/models", ["staging", "latest"])
    assert (str(third.ref), third.type, third.aliases) == ("acme/vision/models:v0", "model", ("latest", "staging"))

    assert [(c.name, c.type, c.version_count) for c in reg.collections("acme", "vision")] == [
        ("ds", "dataset", 2),
        ("golden", "dataset", 2),
        ("model", "model", 1),
        ("models", "model", 1),
    ]
    members = reg.versions("acme", "vision", "golden")
    assert [(v.version, str(v.source)) for v in members] == [("v0", "acme/vision/ds:v1"), ("v1", "acme/vision/ds:v0")]
    listed = {str(v.ref): v.source for v in reg.project_versions("acme", "vision")}
    assert listed["acme/vision/golden:v1"] == ds0.ref and listed["acme/vision/ds:v1"] is None
    # The sources are untouched (their aliases are their collection's own).
    assert reg.resolve(ds0.ref).aliases == ("best",) and reg.resolve(ds1.ref).aliases == ("latest",)

    # Into another entity and project: both are made, as a log makes them.
    elsewhere = reg.link(ds0.ref, "team/registry/best-data", ["candidate"])
    assert str(elsewhere.ref) == "team/registry/best-data:v0" and elsewhere.source == ds0.ref
    assert reg.projects("team") == ["registry"]

    # Linking a link links its source.
    again = reg.link(parse_ref("acme/vision/golden:prod"), "acme/vision/silver")
    assert again.source == ds1.ref

    # version_by_id: one lookup, links and logged versions alike; deleted or unknown ids are not found.
    assert reg.version_by_id(first.id) == reg.resolve(first.ref)
    assert reg.version_by_id(ds0.id) == reg.resolve(ds0.ref)
    with pytest.raises(ArtifactNotFound, match="no artifact version with id"):
        reg.version_by_id("QXJ0aWZhY3Q6OTk5OQ==")


def test_link_twice_returns_the_same_member(reg: LocalRegistry) -> None:
    ds0 = reg.resolve(parse_ref("acme/vision/ds:v0"))
    first = reg.link(ds0.ref, "acme/vision/golden", ["prod"])
    newer = reg.link(parse_ref("acme/vision/ds:v1"), "acme/vision/golden")
    again = reg.link(ds0.ref, "acme/vision/golden", ["champion"])
    assert (again.id, again.version, again.aliases) == (first.id, "v0", ("champion", "prod"))
    assert reg.resolve(parse_ref("acme/vision/golden:latest")).id == newer.id  # latest stays on the newest
    # Through the link itself, and through an alias of the source: still the same member.
    assert reg.link(parse_ref("acme/vision/golden:prod"), "golden").id == first.id
    assert reg.link(parse_ref("acme/vision/ds:best"), "golden").id == first.id
    assert [v.version for v in reg.versions("acme", "vision", "golden")] == ["v0", "v1"]


def test_link_refusals_change_nothing(reg: LocalRegistry, tmp_path: Path) -> None:
    ds0 = parse_ref("acme/vision/ds:v0")
    reg.link(ds0, "acme/vision/golden")
    before = {str(v.ref): v for v in reg.project_versions("acme", "vision")}
    with pytest.raises(Conflict, match="has type 'dataset'"):
        reg.link(parse_ref("acme/vision/model:v0"), "acme/vision/golden")
    with pytest.raises(Conflict, match="holds logged versions"):
        reg.link(ds0, "acme/vision/ds")  # a collection of logged versions, even of the same type
    with pytest.raises(Conflict, match="holds logged versions"):
        reg.link(ds0, "acme/vision/model")
    with pytest.raises(InvalidReference, match="names a version"):
        reg.link(ds0, "acme/vision/golden:v0")
    with pytest.raises(InvalidReference, match="invalid link target"):
        reg.link(ds0, "a/b/c/d")
    with pytest.raises(InvalidReference):
        reg.link(ds0, "acme/vision/bad name")
    with pytest.raises(ArtifactNotFound):
        reg.link(parse_ref("acme/vision/ds:v9"), "acme/vision/golden")
    # A linked collection takes links only: logging into it is refused before anything is copied.
    with pytest.raises(Conflict, match="is a linked collection"):
        reg.log_dir(write_tree(tmp_path / "x", {"x": b"x"}), parse_ref("acme/vision/golden"), type="dataset")
    assert {str(v.ref): v for v in reg.project_versions("acme", "vision")} == before
    assert "bad name" not in {c.name for c in reg.collections("acme", "vision")}


def test_unlink_through_delete_leaves_the_source(reg: LocalRegistry) -> None:
    ds0, ds1 = parse_ref("acme/vision/ds:v0"), parse_ref("acme/vision/ds:v1")
    reg.link(ds0, "golden", ["prod"])
    member = reg.link(ds1, "golden", ["candidate"])
    # A member goes with its aliases whatever delete_aliases says (W&B's unlink)...
    gone = reg.delete(member.ref)
    assert gone.id == member.id and gone.source == ds1
    with pytest.raises(ArtifactNotFound):
        reg.resolve(parse_ref("acme/vision/golden:candidate"))
    assert reg.resolve(parse_ref("acme/vision/golden:latest")).version == "v0"  # latest moved back
    # ...and the source keeps its content, aliases and state.
    kept = reg.resolve(ds1)
    assert (kept.state, kept.aliases) == ("COMMITTED", ("latest",))
    assert contents(reg, "acme/vision/ds:v1") == V1_FILES
    # Linking it again makes a new member (the collection's numbers are never reused).
    assert reg.link(ds1, "golden").version == "v2"

    # update through a link edits the artifact: the source and its links show the same.
    reg.update(parse_ref("acme/vision/golden:prod"), description="golden data", metadata={"k": 1})
    for ref in ("acme/vision/ds:v0", "acme/vision/golden:prod"):
        v = reg.resolve(parse_ref(ref))
        assert (v.description, v.metadata) == ("golden data", {"k": 1}), ref

    # Deleting the logged version deletes the artifact: its links go too, and their aliases count.
    with pytest.raises(Conflict, match=r"best, acme/vision/golden:prod"):
        reg.delete(ds0)
    assert reg.resolve(parse_ref("acme/vision/golden:prod")).source == ds0
    reg.delete(ds0, delete_aliases=True)
    with pytest.raises(ArtifactNotFound):
        reg.resolve(parse_ref("acme/vision/golden:prod"))
    assert [(v.version, str(v.source)) for v in reg.versions("acme", "vision", "golden")] == [
        ("v2", "acme/vision/ds:v1")
    ]
    assert reg.resolve(parse_ref("acme/vision/golden:latest")).version == "v2"


def test_lineage_of_a_link_is_its_sources(reg: LocalRegistry, tmp_path: Path) -> None:
    run = reg.create_run("acme", "vision", job_type="train")
    logged = reg.log_dir(
        write_tree(tmp_path / "n", {"n": b"n"}), parse_ref("acme/vision/ds"), type="dataset", run_id=run.id
    )
    member = reg.link(logged.version.ref, "golden")
    assert reg.logged_by(member) == run
    user = reg.create_run("acme", "vision", job_type="eval")
    reg.record_use(user.id, member)  # a use of the link is a use of the artifact
    assert [r.id for r in reg.used_by(logged.version)] == [user.id]
    assert [v.id for v in reg.run_inputs(user)] == [logged.version.id]


def test_gc_keeps_the_blobs_links_use(root: Path, reg: LocalRegistry) -> None:
    ds1 = parse_ref("acme/vision/ds:v1")
    member = reg.link(ds1, "golden", ["prod"])
    blobs = {e.path: reg.local_path(e) for e in reg.iter_entries(member)}
    assert reg.gc(grace=0) == (0, 0, 0)

    # A source purged under its link (an older artifactfs deleted it without its links; nothing
    # here does that): the link's own rows keep its blobs, and it still reads right.
    conn = sqlite3.connect(root / "registry.sqlite")
    try:
        conn.execute("UPDATE versions SET state = 'DELETED' WHERE artifact_id = ?", (reg.resolve(ds1).id,))
        conn.execute("DELETE FROM aliases WHERE version_id IN (SELECT id FROM versions WHERE state = 'DELETED')")
        conn.commit()
    finally:
        conn.close()
    purged, removed, _ = reg.gc(grace=0)
    assert (purged, removed) == (1, 0)
    assert all(p is not None and os.path.exists(p) for p in blobs.values())
    assert contents(reg, "acme/vision/golden:prod") == V1_FILES

    # With its source's row gone it no longer names a source: a version of its own now.
    assert reg.resolve(parse_ref("acme/vision/golden:prod")).source is None

    # Deleted and purged: now the blobs only it used go (the one v0 shares stays).
    reg.delete(parse_ref("acme/vision/golden:prod"), delete_aliases=True)
    purged, removed, freed = reg.gc(grace=0)
    assert (purged, removed, freed) == (1, 2, len(V1_FILES["a.txt"]) + len(V1_FILES["d/e/c.bin"]))
    assert os.path.exists(blobs["d/b.txt"] or "") and not os.path.exists(blobs["d/e/c.bin"] or "")
    assert contents(reg, "acme/vision/ds:v0") == V0_FILES


@pytest.mark.parametrize("level", [0, LINEAGE_VERSION])
def test_older_registry_gets_the_link_tables_from_its_first_link(root: Path, level: int) -> None:
    db = root / "registry.sqlite"
    if level == 0:  # made before runs and lineage too
        conn = sqlite3.connect(db)
        try:
            for table in sorted(LINEAGE_TABLES):
                conn.execute(f"DROP TABLE {table}")
            conn.execute("PRAGMA user_version = 0")
            conn.commit()
        finally:
            conn.close()
    assert user_version(db) == level and not tables(db) & LINK_TABLES

    old, other = LocalRegistry(root), LocalRegistry(root)  # the second handle is opened before the upgrade
    try:
        ds0 = old.resolve(parse_ref("acme/vision/ds:v0"))
        assert ds0.source is None and other.versions("acme", "vision", "ds")[0].source is None
        old.add_alias(ds0.ref, "x")  # a write that needs no link tables does not add them
        old.update(ds0.ref, description="still old")
        old.delete(parse_ref("acme/vision/model:v0"))
        assert user_version(db) == level and not tables(db) & LINK_TABLES
        # A link that fails rolls the upgrade back with it.
        with pytest.raises(Conflict):
            old.link(ds0.ref, "acme/vision/ds")
        assert user_version(db) == level and not tables(db) & LINK_TABLES

        member = old.link(ds0.ref, "golden", ["prod"])
        assert user_version(db) == LINKS_VERSION and tables(db) >= LINK_TABLES | LINEAGE_TABLES
        assert member.source == ds0.ref
        seen = other.resolve(parse_ref("acme/vision/golden:prod"))  # the other handle sees the link
        assert (seen.id, seen.source) == (member.id, ds0.ref)
        assert other.resolve(ds0.ref).source is None
        assert other.create_run("acme", "vision").state == "running"  # lineage works after the jump to 2
    finally:
        old.close()
        other.close()


def test_api_sees_the_link(root: Path) -> None:
    api = Api(root)
    linked = api.artifact("acme/vision/ds:v1").link("golden", aliases=["production"])
    assert linked.qualified_name == "acme/vision/golden:v0" and "production" in linked.aliases
    assert linked.is_link and linked.source_qualified_name == "acme/vision/ds:v1"
    assert linked.source_artifact.qualified_name == "acme/vision/ds:v1"
    assert not api.artifact("acme/vision/ds:v1").is_link
    fetched = api.artifact("acme/vision/golden:production")
    assert (fetched.id, fetched.source_version) == (linked.id, "v1")


def test_info_shows_the_source(root: Path) -> None:
    reg = LocalRegistry(root)
    try:
        reg.link(parse_ref("acme/vision/ds:v0"), "golden", ["prod"])
    finally:
        reg.close()
    data = json.loads(run_cli("info", "acme/vision/golden:prod", "--json", "--registry", str(root)).stdout)
    assert (data["qualified_name"], data["source"]) == ("acme/vision/golden:v0", "acme/vision/ds:v0")
    assert json.loads(run_cli("info", "acme/vision/ds:v0", "--json", "--registry", str(root)).stdout)["source"] is None
    text = run_cli("info", "acme/vision/golden:prod", "--registry", str(root)).stdout.splitlines()
    assert "source: acme/vision/ds:v0" in text
    plain = run_cli("info", "acme/vision/ds:v0", "--registry", str(root)).stdout.splitlines()
    assert "source: -" in plain and not any(line.endswith(": None") for line in plain)


def test_mount_shows_the_members_with_the_sources_files(root: Path, mounter: Mounter) -> None:
    reg = LocalRegistry(root)
    try:
        reg.link(parse_ref("acme/vision/ds:v1"), "golden", ["prod"])
        reg.link(parse_ref("acme/vision/ds:v0"), "golden")
    finally:
        reg.close()
    m = mounter(root)
    project = m.path / "acme" / "vision"
    names = sorted(os.listdir(project))
    assert [n for n in names if n.startswith("golden:")] == ["golden:latest", "golden:prod", "golden:v0", "golden:v1"]
    assert os.readlink(project / "golden:prod") == "golden:v0"
    assert os.readlink(project / "golden:latest") == "golden:v1"
    for member, files in (("golden:v0", V1_FILES), ("golden:v1", V0_FILES)):
        rels = sorted(files)
        out = subprocess.run(
            ["md5sum", "--", *rels], cwd=project / member, capture_output=True, text=True, check=True, timeout=60
        ).stdout.splitlines()
        assert out == [f"{hashlib.md5(files[rel]).hexdigest()}  {rel}" for rel in rels], member
    # The member reads the same bytes as its source through the mount.
    for rel in V1_FILES:
        assert (project / "golden:prod" / rel).read_bytes() == (project / "ds:v1" / rel).read_bytes()
    assert os.getxattr(project / "golden:v0", "user.artifact.digest") == os.getxattr(
        project / "ds:v1", "user.artifact.digest"
    )
    # Each directory keeps its own version; a member's source_version names its source's.
    assert os.getxattr(project / "golden:v0", "user.artifact.version") == b"v0"
    assert os.getxattr(project / "golden:v0", "user.artifact.source_version") == b"v1"
    assert os.getxattr(project / "ds:v1", "user.artifact.source_version") == b"v1"


def test_concurrent_links_on_an_older_registry(root: Path, tmp_path: Path) -> None:
    """Threads (each with its own connection) link at once into one new linked collection of a
    registry without the link tables: one of them adds the tables, each source gets one member,
    and the members' numbers are distinct."""
    reg = LocalRegistry(root)
    try:
        for i in range(6):
            src = write_tree(tmp_path / f"s{i}", {"n": str(i).encode()})
            reg.log_dir(src, parse_ref("acme/vision/many"), type="dataset")
    finally:
        reg.close()
    assert user_version(root / "registry.sqlite") == LINEAGE_VERSION
    shared = LocalRegistry(root)
    try:
        refs = [parse_ref(f"acme/vision/many:v{i}") for i in range(6)] * 2  # each twice
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            members = list(pool.map(lambda r: shared.link(r, "picked"), refs))
        assert user_version(root / "registry.sqlite") == LINKS_VERSION
        by_source = {str(m.source): m.id for m in members}
        assert len(by_source) == 6 and all(by_source[str(m.source)] == m.id for m in members)
        listed = shared.versions("acme", "vision", "picked")
        assert sorted(v.version_index for v in listed) == list(range(6))
        assert {str(v.source): v.id for v in listed} == by_source
        for v in listed:
            assert contents(shared, str(v.ref)) == {"n": str(v.source.version_index).encode()}  # type: ignore[union-attr]
    finally:
        shared.close()
