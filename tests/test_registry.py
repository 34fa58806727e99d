"""The local registry: versions, aliases, deletes, listings, blobs, atomicity, concurrency, memory."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash
from conftest import b64md5, corrupt_table, write_tree

from artifactfs.errors import (
    ArtifactNotFound,
    Conflict,
    EntityNotFound,
    EntryNotFound,
    InvalidArgument,
    InvalidMetadata,
    InvalidPath,
    InvalidReference,
    ManifestError,
    ProjectNotFound,
    RegistryError,
    SourceError,
)
from artifactfs.manifest import EMPTY_MD5_B64, MD5, XXH128, artifact_digest
from artifactfs.names import Ref, parse_ref
from artifactfs.registry.base import VersionInfo
from artifactfs.registry.local import LocalRegistry

COLL = "acme/vision/ds"
MiB = 1 << 20


def R(text: str) -> Ref:
    return parse_ref(text)


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[LocalRegistry]:
    registry = LocalRegistry(tmp_path / "registry", create=True)
    yield registry
    registry.close()


@pytest.fixture
def trees(tmp_path: Path) -> list[Path]:
    """Three different small trees."""
    return [
        write_tree(tmp_path / f"src{i}", {"a.txt": f"content {i}\n".encode(), "d/b.bin": bytes([i]) * 100})
        for i in range(3)
    ]


def log(reg: LocalRegistry, src: Path, ref: str = COLL, **kwargs: Any) -> VersionInfo:
    kwargs.setdefault("type", "dataset")
    return reg.log_dir(src, R(ref), **kwargs).version


def logged(root: Path, *trees: Path) -> Path:
    """A new registry at ``root`` with each of ``trees`` logged (as versions of COLL), closed."""
    reg = LocalRegistry(root, create=True)
    try:
        for tree in trees:
            log(reg, tree)
    finally:
        reg.close()
    return root


def version_names(reg: LocalRegistry, coll: str = COLL) -> list[str]:
    return [v.version for v in reg.versions(*coll.split("/"))]


def alias_map(reg: LocalRegistry, coll: str = COLL) -> dict[str, list[str]]:
    return {v.version: list(v.aliases) for v in reg.versions(*coll.split("/"))}


def all_blobs(root: Path, alg: str = "md5") -> list[Path]:
    base = root / "objects" / alg
    return sorted(p for p in base.rglob("*") if p.is_file()) if base.exists() else []


def assert_blobs_intact(root: Path) -> int:
    """Every blob in the store hashes to its own name; returns how many there are."""
    count = 0
    for alg, new in (("md5", hashlib.md5), ("xxh128", xxhash.xxh128)):
        for blob in all_blobs(root, alg):
            h = new()
            with open(blob, "rb") as f:
                while chunk := f.read(MiB):
                    h.update(chunk)
            assert blob.parent.name + blob.name == h.hexdigest(), f"blob {blob} does not hash to its name"
            assert len(blob.parent.name) == 2
            count += 1
    return count


# -- versions and latest -------------------------------------------------------------------------


def test_versions_and_latest(reg: LocalRegistry, trees: list[Path]) -> None:
    for i, src in enumerate(trees):
        result = reg.log_dir(src, R(COLL), type="dataset")
        assert result.created
        assert result.version.version == f"v{i}"
        assert result.version.aliases == ("latest",)
        assert reg.resolve(R(f"{COLL}:latest")).version == f"v{i}"
    assert version_names(reg) == ["v0", "v1", "v2"]
    assert alias_map(reg) == {"v0": [], "v1": [], "v2": ["latest"]}
    assert [reg.resolve(R(f"{COLL}:v{i}")).version_index for i in range(3)] == [0, 1, 2]
    assert reg.entities() == ["acme"]
    assert reg.projects("acme") == ["vision"]
    [coll] = reg.collections("acme", "vision")
    assert (coll.name, coll.type, coll.version_count) == ("ds", "dataset", 3)


def test_collections_are_independent(reg: LocalRegistry, trees: list[Path]) -> None:
    log(reg, trees[0], "acme/vision/one")
    log(reg, trees[1], "acme/vision/two", type="model")
    log(reg, trees[2], "acme/vision/two", type="model")
    log(reg, trees[0], "acme/other/one")
    log(reg, trees[0], "beta/vision/one")
    assert reg.entities() == ["acme", "beta"]
    assert reg.projects("acme") == ["other", "vision"]
    assert [(c.name, c.type, c.version_count) for c in reg.collections("acme", "vision")] == [
        ("one", "dataset", 1),
        ("two", "model", 2),
    ]
    assert version_names(reg, "acme/vision/one") == ["v0"]
    assert version_names(reg, "acme/other/one") == ["v0"]
    assert reg.aliases("acme", "vision") == {("one", "latest"): 0, ("two", "latest"): 1}


def test_not_found_errors(reg: LocalRegistry, trees: list[Path]) -> None:
    log(reg, trees[0])
    with pytest.raises(EntityNotFound):
        reg.projects("nobody")
    with pytest.raises(ProjectNotFound):
        reg.collections("acme", "nothing")
    with pytest.raises(ArtifactNotFound):
        reg.versions("acme", "vision", "nope")
    with pytest.raises(ArtifactNotFound, match="v7"):
        reg.resolve(R(f"{COLL}:v7"))
    with pytest.raises(ArtifactNotFound, match="best"):
        reg.resolve(R(f"{COLL}:best"))
    with pytest.raises(InvalidReference):
        reg.resolve(R(COLL))  # no tag


def test_relog_identical_content(reg: LocalRegistry, trees: list[Path], tmp_path: Path) -> None:
    v0 = log(reg, trees[0])
    time.sleep(0.002)
    again = reg.log_dir(trees[0], R(COLL), type="dataset", aliases=["best", "prod"], description="ignored")
    assert not again.created
    assert again.version.version == "v0"
    assert again.version.id == v0.id
    assert set(again.version.aliases) == {"latest", "best", "prod"}
    assert again.version.updated_at_ns > v0.updated_at_ns
    assert version_names(reg) == ["v0"]
    # The same bytes somewhere else are the same content.
    copy = write_tree(tmp_path / "copy", {"a.txt": b"content 0\n", "d/b.bin": bytes([0]) * 100})
    assert not reg.log_dir(copy, R(COLL), type="dataset").created
    # A rename is a different content.
    renamed = write_tree(tmp_path / "renamed", {"A.txt": b"content 0\n", "d/b.bin": bytes([0]) * 100})
    assert reg.log_dir(renamed, R(COLL), type="dataset").version.version == "v1"
    # The same files hashed with another algorithm are another version.
    assert log(reg, renamed, digest_algorithm=XXH128).version == "v2"


def test_type_conflict(reg: LocalRegistry, trees: list[Path]) -> None:
    log(reg, trees[0])
    before = reg.versions("acme", "vision", "ds")
    blobs = all_blobs(Path(reg.root))
    with pytest.raises(Conflict, match="'dataset'"):
        reg.log_dir(trees[1], R(COLL), type="model", aliases=["x"])
    assert reg.versions("acme", "vision", "ds") == before
    assert all_blobs(Path(reg.root)) == blobs, "the conflict is found before the tree is copied"
    assert reg.collections("acme", "vision")[0].type == "dataset"
    # Even identical content does not sneak through under another type.
    with pytest.raises(Conflict):
        reg.log_dir(trees[0], R(COLL), type="model", aliases=["x"])
    assert reg.versions("acme", "vision", "ds") == before


# -- aliases -------------------------------------------------------------------------------------


def test_alias_moves(reg: LocalRegistry, trees: list[Path]) -> None:
    log(reg, trees[0], aliases=["best"])
    log(reg, trees[1])
    assert alias_map(reg) == {"v0": ["best"], "v1": ["latest"]}

    v1 = reg.add_alias(R(f"{COLL}:v1"), "best")
    assert set(v1.aliases) == {"latest", "best"}
    assert alias_map(reg) == {"v0": [], "v1": ["latest", "best"]}
    assert reg.resolve(R(f"{COLL}:best")).version == "v1"

    # Logging with an alias moves it too; latest always follows the newest version.
    log(reg, trees[2], aliases=["best", "candidate"])
    assert alias_map(reg) == {"v0": [], "v1": [], "v2": ["latest", "best", "candidate"]}

    # Adding an alias through another alias.
    reg.add_alias(R(f"{COLL}:candidate"), "prod")
    assert reg.resolve(R(f"{COLL}:prod")).version == "v2"
    reg.add_alias(R(f"{COLL}:v0"), "prod")
    assert alias_map(reg) == {"v0": ["prod"], "v1": [], "v2": ["latest", "best", "candidate"]}

    # Adding an alias a version already has changes nothing.
    before = reg.resolve(R(f"{COLL}:v0"))
    assert reg.add_alias(R(f"{COLL}:v0"), "prod") == before

    # Every alias names at most one version.
    pairs = reg.aliases("acme", "vision")
    assert pairs == {("ds", "latest"): 2, ("ds", "best"): 2, ("ds", "candidate"): 2, ("ds", "prod"): 0}
    all_aliases = [a for v in reg.versions("acme", "vision", "ds") for a in v.aliases]
    assert len(all_aliases) == len(set(all_aliases))
    # A project listing (its aliases asked in one query) says what each version says alone.
    log(reg, trees[0], ref="acme/vision/other", aliases=["best"])
    listed = reg.project_versions("acme", "vision")
    assert [str(v.ref) for v in listed] == [*(f"{COLL}:v{i}" for i in range(3)), "acme/vision/other:v0"]
    assert listed == [reg.resolve(v.ref) for v in listed]


def test_alias_updates_timestamps(reg: LocalRegistry, trees: list[Path]) -> None:
    v0 = log(reg, trees[0], aliases=["best"])
    v1 = log(reg, trees[1])
    time.sleep(0.002)
    reg.add_alias(R(f"{COLL}:v1"), "best")
    new0, new1 = reg.versions("acme", "vision", "ds")
    assert new0.updated_at_ns > v0.updated_at_ns  # lost an alias
    assert new1.updated_at_ns > v1.updated_at_ns  # gained one
    assert (new0.created_at_ns, new1.created_at_ns) == (v0.created_at_ns, v1.created_at_ns)


def test_remove_alias(reg: LocalRegistry, trees: list[Path]) -> None:
    log(reg, trees[0], aliases=["best", "prod"])
    log(reg, trees[1])
    v0 = reg.remove_alias(R(f"{COLL}:best"), "best")
    assert v0.version == "v0"
    assert v0.aliases == ("prod",)
    with pytest.raises(ArtifactNotFound):
        reg.resolve(R(f"{COLL}:best"))
    # An alias that another version has is not removed through this one.
    with pytest.raises(ArtifactNotFound, match="prod"):
        reg.remove_alias(R(f"{COLL}:v1"), "prod")
    assert reg.resolve(R(f"{COLL}:prod")).version == "v0"
    with pytest.raises(ArtifactNotFound):
        reg.remove_alias(R(f"{COLL}:v0"), "never")


def test_latest_is_managed(reg: LocalRegistry, trees: list[Path]) -> None:
    log(reg, trees[0])
    log(reg, trees[1])
    with pytest.raises(Conflict, match="latest"):
        reg.add_alias(R(f"{COLL}:v0"), "latest")
    with pytest.raises(Conflict, match="latest"):
        reg.remove_alias(R(f"{COLL}:v1"), "latest")
    assert alias_map(reg) == {"v0": [], "v1": ["latest"]}


@pytest.mark.parametrize("alias", ["v0", "v3", "bad alias", "a/b", "a:b", ""])
def test_invalid_aliases(reg: LocalRegistry, trees: list[Path], alias: str) -> None:
    log(reg, trees[0])
    with pytest.raises(InvalidReference):
        reg.add_alias(R(f"{COLL}:v0"), alias)
    with pytest.raises(InvalidReference):
        reg.log_dir(trees[1], R(COLL), type="dataset", aliases=[alias])
    assert alias_map(reg) == {"v0": ["latest"]}


def test_alias_on_missing_version(reg: LocalRegistry, trees: list[Path]) -> None:
    log(reg, trees[0])
    with pytest.raises(ArtifactNotFound):
        reg.add_alias(R(f"{COLL}:v5"), "best")
    with pytest.raises(ArtifactNotFound):
        reg.add_alias(R("acme/vision/other:v0"), "best")
    assert reg.aliases("acme", "vision") == {("ds", "latest"): 0}


# -- delete --------------------------------------------------------------------------------------


def test_delete(reg: LocalRegistry, trees: list[Path], tmp_path: Path) -> None:
    log(reg, trees[0], aliases=["best"])
    log(reg, trees[1])
    log(reg, trees[2])
    blobs_before = all_blobs(Path(reg.root))

    # Refused while an alias other than latest names it.
    with pytest.raises(Conflict, match="best"):
        reg.delete(R(f"{COLL}:v0"))
    assert version_names(reg) == ["v0", "v1", "v2"]

    deleted = reg.delete(R(f"{COLL}:best"), delete_aliases=True)
    assert deleted.version == "v0"
    assert version_names(reg) == ["v1", "v2"]
    with pytest.raises(ArtifactNotFound):
        reg.resolve(R(f"{COLL}:best"))
    with pytest.raises(ArtifactNotFound):
        reg.resolve(R(f"{COLL}:v0"))

    # Deleting the latest version moves latest to the newest one left.
    reg.delete(R(f"{COLL}:latest"))
    assert alias_map(reg) == {"v1": ["latest"]}

    # Indices are never reused.
    new = write_tree(tmp_path / "new", {"n": b"new"})
    assert log(reg, new).version == "v3"
    assert alias_map(reg) == {"v1": [], "v3": ["latest"]}
    reg.delete(R(f"{COLL}:v3"))
    reg.delete(R(f"{COLL}:v1"))
    assert version_names(reg) == []
    with pytest.raises(ArtifactNotFound):
        reg.resolve(R(f"{COLL}:latest"))
    assert reg.collections("acme", "vision")[0].version_count == 0
    assert log(reg, trees[0]).version == "v4"

    # Blobs stay (content addressed, possibly shared).
    assert set(blobs_before) <= set(all_blobs(Path(reg.root)))

    with pytest.raises(ArtifactNotFound):
        reg.delete(R(f"{COLL}:v2"))
    with pytest.raises(InvalidReference):
        reg.delete(R(COLL))


def test_delete_non_latest_keeps_latest(reg: LocalRegistry, trees: list[Path]) -> None:
    log(reg, trees[0])
    log(reg, trees[1])
    reg.delete(R(f"{COLL}:v0"))
    assert alias_map(reg) == {"v1": ["latest"]}
    # Relogging v0's content creates a new version (its old index stays gone).
    assert log(reg, trees[0]).version == "v2"


def _served(reg: LocalRegistry, version: VersionInfo) -> list[str] | None:
    """The entries ``reg`` serves for ``version``; None when it says the version is gone."""
    try:
        root = [d.name for d in reg.list_dir(version, "")]
        entries = [e.path for e in reg.iter_entries(version)]
    except ArtifactNotFound:
        return None
    return root + entries


def test_delete_is_soft_until_gc(reg: LocalRegistry, trees: list[Path]) -> None:
    v0 = log(reg, trees[0])
    v1 = log(reg, trees[1])
    deleted = reg.delete(R(f"{COLL}:v1"))
    assert deleted.version == "v1"
    # Gone for every lookup and listing ...
    with pytest.raises(ArtifactNotFound):
        reg.resolve(R(f"{COLL}:v1"))
    assert [v.version for v in reg.versions("acme", "vision", "ds")] == ["v0"]
    assert reg.collections("acme", "vision")[0].version_count == 1
    fresh = LocalRegistry(reg.root)
    try:
        assert _served(fresh, v1) is None
    finally:
        fresh.close()
    # ... but whoever already holds the version (a mount) keeps reading it until gc.
    assert _served(reg, v1)
    # ids are never reused, even when a new version becomes the newest
    v2 = log(reg, trees[2])
    assert v2.id not in (v0.id, v1.id) and v2.version == "v2"

    blobs_before = set(all_blobs(Path(reg.root)))
    purged, removed, freed = reg.gc(grace=0)
    assert purged == 1
    blobs_after = set(all_blobs(Path(reg.root)))
    assert removed == len(blobs_before - blobs_after) and freed > 0
    # every blob still named by a live version survives gc
    for v in (v0, v2):
        for e in reg.iter_entries(v):
            assert Path(reg.blob_path(e.alg, e.digest)).exists(), e.path
    assert not _served(reg, v1)
    with pytest.raises((EntryNotFound, ArtifactNotFound)):
        reg.get_entry(v1, "a.txt")


def test_gc_spares_young_blobs(reg: LocalRegistry, trees: list[Path]) -> None:
    log(reg, trees[0])
    reg.delete(R(f"{COLL}:v0"))
    before = set(all_blobs(Path(reg.root)))
    assert reg.gc() == (1, 0, 0)  # default grace: blobs of a log that may not have committed
    assert set(all_blobs(Path(reg.root))) == before


# -- listings ------------------------------------------------------------------------------------

NESTED = {
    "top.txt": b"top",
    "a/d.txt": b"d",
    "a/b/c.txt": b"c",
    "a/b/c2.txt": b"c2",
    "e/f/g/h": b"deep",
    "B/upper": b"U",
    ".hidden": b"h",
    "latest": b"a file named latest",
    "z/empty": b"",
}


def test_list_dir_and_get_entry(reg: LocalRegistry, tmp_path: Path) -> None:
    v = log(reg, write_tree(tmp_path / "nested", NESTED))

    def names(path: str) -> list[tuple[str, bool]]:
        return [(d.name, d.entry is not None) for d in reg.list_dir(v, path)]

    assert names("") == [
        (".hidden", True),
        ("B", False),
        ("a", False),
        ("e", False),
        ("latest", True),
        ("top.txt", True),
        ("z", False),
    ]
    assert names("a") == [("b", False), ("d.txt", True)]
    assert names("a/b") == [("c.txt", True), ("c2.txt", True)]
    assert names("e") == [("f", False)]
    assert names("e/f") == [("g", False)]
    assert names("e/f/g") == [("h", True)]

    for missing in ("nope", "a/nope", "top.txt", "a/d.txt", "a/b/c.txt/x", "e/f/g/h"):
        with pytest.raises(EntryNotFound):
            reg.list_dir(v, missing)

    entry = reg.list_dir(v, "a/b")[0].entry
    assert entry is not None
    assert (entry.path, entry.digest, entry.size) == ("a/b/c.txt", b64md5(b"c"), 1)

    root = reg.get_entry(v, "")
    assert root.entry is None
    f = reg.get_entry(v, "e/f/g/h")
    assert f.name == "h"
    assert f.entry is not None
    assert (f.entry.path, f.entry.size, f.entry.digest) == ("e/f/g/h", 4, b64md5(b"deep"))
    d = reg.get_entry(v, "e/f")
    assert (d.name, d.entry) == ("f", None)
    empty = reg.get_entry(v, "z/empty").entry
    assert empty is not None
    assert (empty.size, empty.digest) == (0, EMPTY_MD5_B64)
    for missing in ("nope", "a/b/nope", "e/f/g/h/i", "a/", "/a", "E"):
        with pytest.raises(EntryNotFound):
            reg.get_entry(v, missing)

    entries = {e.path: e for e in reg.iter_entries(v)}
    assert set(entries) == set(NESTED)
    assert all(entries[p].digest == b64md5(data) and entries[p].size == len(data) for p, data in NESTED.items())
    manifest = reg.manifest(v)
    assert manifest.digest() == v.digest
    assert v.digest == artifact_digest((p, b64md5(data)) for p, data in NESTED.items())


def test_listing_is_per_version(reg: LocalRegistry, tmp_path: Path) -> None:
    v0 = log(reg, write_tree(tmp_path / "one", {"x/1": b"1"}))
    v1 = log(reg, write_tree(tmp_path / "two", {"y/2": b"2"}))
    assert [d.name for d in reg.list_dir(v0, "")] == ["x"]
    assert [d.name for d in reg.list_dir(v1, "")] == ["y"]
    with pytest.raises(EntryNotFound):
        reg.get_entry(v1, "x/1")


@pytest.mark.allow_log(r"skipping ")
def test_walk_skips_special_files_and_follows_symlinks(reg: LocalRegistry, tmp_path: Path) -> None:
    src = write_tree(tmp_path / "special", {"real/file": b"data", "other": b"o"})
    os.mkfifo(src / "fifo")  # would hang a naive reader
    (src / "broken").symlink_to(tmp_path / "does-not-exist")
    (src / "filelink").symlink_to(src / "other")
    (src / "dirlink").symlink_to(src / "real", target_is_directory=True)  # followed, as wandb's add_dir
    (src / "real" / "cycle").symlink_to(src, target_is_directory=True)  # a loop is entered once
    v = log(reg, src)
    assert sorted(e.path for e in reg.iter_entries(v)) == ["dirlink/file", "filelink", "other", "real/file"]
    assert reg.get_entry(v, "filelink").entry.digest == b64md5(b"o")  # type: ignore[union-attr]


def test_empty_directory(reg: LocalRegistry, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    v = log(reg, tmp_path / "empty")
    assert (v.file_count, v.size) == (0, 0)
    assert reg.list_dir(v, "") == []
    assert v.digest == hashlib.md5(b"wandb-artifact-manifest-v1\n").hexdigest()


def test_many_files_in_one_directory(reg: LocalRegistry, tmp_path: Path) -> None:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(3000):
        (src / f"f{i:05d}").write_bytes(b"%d" % i)
    v = log(reg, src)
    assert v.file_count == 3000
    listing = reg.list_dir(v, "")
    assert [d.name for d in listing] == [f"f{i:05d}" for i in range(3000)]
    assert reg.get_entry(v, "f02999").entry.digest == b64md5(b"2999")  # type: ignore[union-attr]


# -- metadata and info ---------------------------------------------------------------------------


def test_metadata_and_description(reg: LocalRegistry, trees: list[Path]) -> None:
    metadata = {"rows": 10, "split": "train", "nested": {"list": [1, 2.5, None, True]}, "\u00e9": "\u2603"}
    v = reg.log_dir(trees[0], R(COLL), type="dataset", description="first \u2603", metadata=metadata).version
    assert v.metadata == metadata
    assert v.description == "first \u2603"
    again = reg.resolve(R(f"{COLL}:v0"))
    assert again.metadata == metadata
    assert again.description == "first \u2603"
    assert reg.collections("acme", "vision")[0].description == "first \u2603"
    v1 = log(reg, trees[1])
    assert (v1.metadata, v1.description) == ({}, "")


@pytest.mark.parametrize("metadata", [[1, 2], "text", {"x": float("nan")}, {"x": object()}])
def test_bad_metadata(reg: LocalRegistry, trees: list[Path], metadata: Any) -> None:
    with pytest.raises(InvalidMetadata, match="metadata"):
        reg.log_dir(trees[0], R(COLL), type="dataset", metadata=metadata)
    assert reg.entities() == []


def test_info_fields(reg: LocalRegistry, trees: list[Path]) -> None:
    before = time.time_ns()
    v0 = log(reg, trees[0])
    v1 = log(reg, trees[1])
    after = time.time_ns()
    for v in (v0, v1):
        assert base64.b64decode(v.id).decode().startswith("Artifact:")
        assert re.fullmatch(r"[0-9a-f]{20}", v.commit_hash)
        assert before <= v.created_at_ns <= v.updated_at_ns <= after
        assert v.state == "COMMITTED"
        assert v.file_count == 2
        assert v.size == len(b"content 0\n") + 100
        assert v.type == "dataset"
        assert (v.entity, v.project, v.name) == ("acme", "vision", "ds")
        assert v.digest_algorithm == "MANIFEST_MD5"
        assert v.storage_policy_config == {"storageLayout": "V2"}
        assert re.fullmatch(r"[0-9a-f]{32}", v.digest)
    assert v0.id != v1.id
    assert v0.commit_hash != v1.commit_hash
    assert v0.created_at_ns <= v1.created_at_ns
    # Reading back gives the same answer.
    assert reg.resolve(R(f"{COLL}:v1")) == v1

    data = reg.resolve(R(f"{COLL}:v0")).to_json()
    assert data["qualified_name"] == "acme/vision/ds:v0"
    assert data["version"] == "v0"
    assert data["aliases"] == []
    for key in ("created_at", "updated_at"):
        parsed = dt.datetime.strptime(data[key], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
        assert abs(parsed.timestamp() * 1e9 - v0.created_at_ns) < 5e9


# -- blobs ---------------------------------------------------------------------------------------


def test_blob_layout(reg: LocalRegistry, tmp_path: Path) -> None:
    files = {"a.txt": b"alpha", "b/c.txt": b"gamma" * 1000, "same1": b"dup", "d/same2": b"dup", "empty": b""}
    v = log(reg, write_tree(tmp_path / "blobs", files))
    root = Path(reg.root)
    for path, data in files.items():
        entry = reg.get_entry(v, path).entry
        assert entry is not None
        hexd = hashlib.md5(data).hexdigest()
        blob = root / "objects" / "md5" / hexd[:2] / hexd[2:]
        assert blob.read_bytes() == data
        assert reg.blob_path(MD5, entry.digest) == str(blob)
        assert reg.blob_source(v, entry).local_path == str(blob)
        assert not blob.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), "blobs are read-only"
    assert len(all_blobs(root)) == 4  # "dup" is stored once
    assert assert_blobs_intact(root) == 4
    assert list((root / "objects" / "tmp").iterdir()) == []


def _flip_a_byte(blob: Path) -> None:
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    blob.chmod(0o444)


@pytest.mark.parametrize("target", [COLL, "acme/vision/other"], ids=["same-collection", "other-collection"])
def test_log_heals_a_corrupt_blob(reg: LocalRegistry, trees: list[Path], target: str) -> None:
    """Logging content whose blob has rotted on disk writes the blob again: the bytes just
    hashed are known good, the old file is not."""
    v0 = log(reg, trees[0])
    entry = reg.get_entry(v0, "d/b.bin").entry
    assert entry is not None
    blob = Path(reg.blob_path(entry.alg, entry.digest))
    _flip_a_byte(blob)
    with pytest.raises(AssertionError, match="does not hash to its name"):
        assert_blobs_intact(Path(reg.root))
    again = log(reg, trees[0], ref=target)
    assert again.digest == v0.digest
    assert assert_blobs_intact(Path(reg.root)) == 2
    assert blob.read_bytes() == bytes([0]) * 100
    assert not blob.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert list((Path(reg.root) / "objects" / "tmp").iterdir()) == []


def _edit_db(root: Path, sql: str, *params: object) -> None:
    """Change a registry's database behind its back (a hand edit, a corrupt or hostile copy)."""
    conn = sqlite3.connect(root / "registry.sqlite")
    try:
        with conn:
            assert conn.execute(sql, params).rowcount == 1
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("sql", "listed"),
    [
        ("UPDATE entries SET name = '../../escaped.txt' WHERE parent = '' AND name = 'a.txt'", ""),
        ("UPDATE entries SET name = '/etc/passwd' WHERE parent = '' AND name = 'a.txt'", ""),
        ("UPDATE entries SET parent = 'd/..' WHERE parent = 'd' AND name = 'b.bin'", None),
    ],
    ids=["dotdot-name", "absolute-name", "dotdot-parent"],
)
def test_unsafe_stored_paths_are_refused(tmp_path: Path, trees: list[Path], sql: str, listed: str | None) -> None:
    root = tmp_path / "registry"
    reg = LocalRegistry(root, create=True)
    try:
        version = log(reg, trees[0])
    finally:
        reg.close()
    _edit_db(root, sql)
    reg = LocalRegistry(root)
    try:
        version = reg.resolve(R(f"{COLL}:v0"))
        with pytest.raises(InvalidPath):
            list(reg.iter_entries(version))
        with pytest.raises(InvalidPath):
            reg.manifest(version)
        if listed is not None:
            with pytest.raises(InvalidPath):
                reg.list_dir(version, listed)
    finally:
        reg.close()


@pytest.mark.parametrize("table", ["entities", "entries", "versions"])
def test_corrupt_pages_raise_registry_error(tmp_path: Path, trees: list[Path], table: str) -> None:
    """Garbage over a table's pages: every public method that reads it raises RegistryError
    naming the database (never a bare sqlite3 error), generators included."""
    root = logged(tmp_path / "registry", trees[0])
    reg = LocalRegistry(root)
    try:
        version = reg.resolve(R(f"{COLL}:v0")) if table == "entries" else None
        corrupt_table(root, table)
        calls: list[Any] = {
            "entities": [reg.entities, lambda: reg.projects("acme"), lambda: reg.check_entity("acme")],
            "entries": [
                lambda: list(reg.iter_entries(version)),
                lambda: reg.list_dir(version, ""),
                lambda: reg.get_entry(version, "a.txt"),
                lambda: reg.manifest(version),
            ],
            "versions": [
                lambda: reg.versions("acme", "vision", "ds"),
                lambda: reg.resolve(R(f"{COLL}:v0")),
                lambda: reg.project_versions("acme", "vision"),
                lambda: reg.gc(grace=0),
            ],
        }[table]
        for call in calls:
            with pytest.raises(RegistryError, match=r"registry .*: database disk image is malformed") as info:
                call()
            assert isinstance(info.value.__cause__, sqlite3.Error)
    finally:
        reg.close()


def test_failed_commit_rolls_back_and_the_connection_stays_usable(reg: LocalRegistry, trees: list[Path]) -> None:
    """A COMMIT that fails (here: a deferred foreign key check) must not leave the connection
    inside a transaction, where every later write of this process would fail."""
    log(reg, trees[0])
    with pytest.raises(RegistryError, match="FOREIGN KEY"), reg._write() as db:
        db.execute("PRAGMA defer_foreign_keys = ON")  # checked at COMMIT, not at the INSERT
        db.execute("INSERT INTO aliases VALUES (9999, 'ghost', 9999)")
    assert not reg._db().in_transaction
    assert log(reg, trees[1]).version == "v1"
    assert reg.aliases("acme", "vision") == {("ds", "latest"): 1}
    count = reg._db().execute("SELECT count(*) FROM aliases WHERE alias = 'ghost'").fetchone()[0]
    assert count == 0


def test_xxh128_blobs(reg: LocalRegistry, tmp_path: Path) -> None:
    files = {"a.txt": b"alpha", "n/b": b"beta"}
    v = log(reg, write_tree(tmp_path / "x", files), digest_algorithm=XXH128)
    assert v.digest_algorithm == "MANIFEST_XXH128"
    root = Path(reg.root)
    for path, data in files.items():
        entry = reg.get_entry(v, path).entry
        assert entry is not None
        assert entry.alg == XXH128
        assert dict(entry.extra) == {"alg": "XXH128"}
        hexd = xxhash.xxh128(data).hexdigest()
        blob = root / "objects" / "xxh128" / hexd[:2] / hexd[2:]
        assert blob.read_bytes() == data
        assert reg.blob_source(v, entry).local_path == str(blob)
    assert all_blobs(root, "md5") == []
    b64 = {p: base64.b64encode(xxhash.xxh128(data).digest()).decode() for p, data in files.items()}
    text = "wandb-artifact-manifest-v1\n" + "".join(f"{p}:{b64[p]}\n" for p in sorted(files))
    expected = xxhash.xxh128(text.encode()).hexdigest()
    assert v.digest == expected


def test_unsupported_algorithm(reg: LocalRegistry, trees: list[Path]) -> None:
    with pytest.raises(InvalidArgument, match="SHA1"):
        reg.log_dir(trees[0], R(COLL), type="dataset", digest_algorithm="SHA1")
    assert reg.entities() == []


# -- bad input creates nothing -------------------------------------------------------------------


def test_file_and_dir_clash(reg: LocalRegistry, tmp_path: Path) -> None:
    f1 = tmp_path / "f1"
    f2 = tmp_path / "f2"
    f1.write_bytes(b"one")
    f2.write_bytes(b"two")
    with pytest.raises(ManifestError, match=r"'a'.*both a file and a directory"):
        reg.log_files([("a", str(f1)), ("a/b", str(f2))], R(COLL), type="dataset")
    with pytest.raises(ManifestError, match="both a file and a directory"):
        reg.log_files([("x/y/z", str(f2)), ("x/y", str(f1))], R(COLL), type="dataset")
    with pytest.raises(ManifestError, match="twice"):
        reg.log_files([("a", str(f1)), ("a", str(f2))], R(COLL), type="dataset")
    assert reg.entities() == []
    # The valid parts log fine.
    v = reg.log_files([("a/b", str(f2)), ("c", str(f1))], R(COLL), type="dataset").version
    assert v.version == "v0"
    assert sorted(e.path for e in reg.iter_entries(v)) == ["a/b", "c"]


@pytest.mark.parametrize("path", ["../escape", "/abs", "a//b", "a/./b", "C:x", "a\\b", "x\x00"])
def test_log_files_rejects_bad_paths(reg: LocalRegistry, tmp_path: Path, path: str) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    with pytest.raises(InvalidPath):
        reg.log_files([("ok", str(f)), (path, str(f))], R(COLL), type="dataset")
    assert reg.entities() == []


def test_missing_sources(reg: LocalRegistry, tmp_path: Path) -> None:
    with pytest.raises(SourceError):
        reg.log_dir(tmp_path / "nope", R(COLL), type="dataset")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(SourceError):
        reg.log_dir(tmp_path / "file", R(COLL), type="dataset")
    with pytest.raises(SourceError, match="gone"):
        reg.log_files([("ok", str(tmp_path / "file")), ("gone", str(tmp_path / "gone"))], R(COLL), type="dataset")
    assert reg.entities() == []
    assert list((Path(reg.root) / "objects" / "tmp").iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(reg: LocalRegistry, tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"ok": b"ok", "secret": b"s"})
    (src / "secret").chmod(0)
    with pytest.raises(SourceError, match="secret"):
        log(reg, src)
    assert reg.entities() == []


@pytest.mark.parametrize("type_", ["", "a b", "x/y", "-x"])
def test_invalid_type(reg: LocalRegistry, trees: list[Path], type_: str) -> None:
    with pytest.raises(InvalidReference, match="type"):
        reg.log_dir(trees[0], R(COLL), type=type_)
    assert reg.entities() == []


def test_open_missing_registry(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no registry"):
        LocalRegistry(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_reopen(tmp_path: Path, trees: list[Path]) -> None:
    reg = LocalRegistry(tmp_path / "r", create=True)
    v = log(reg, trees[0], aliases=["best"])
    reg.close()
    again = LocalRegistry(tmp_path / "r")
    try:
        assert again.resolve(R(f"{COLL}:best")) == v
        assert [e.path for e in again.manifest(v).entries.values()] != []
    finally:
        again.close()


# -- real processes ------------------------------------------------------------------------------


def cli(*args: str | os.PathLike[str], registry: Path) -> list[str]:
    return [sys.executable, "-m", "artifactfs", *map(str, args), "--registry", str(registry)]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ARTIFACTFS_REGISTRY", None)
    return env


def write_big_tree(root: Path, count: int, size: int) -> dict[str, str]:
    """``count`` files of ``size`` bytes, all different; returns path -> md5 hex."""
    root.mkdir()
    base = bytearray(os.urandom(size))
    out = {}
    for i in range(count):
        base[:8] = i.to_bytes(8, "little")
        (root / f"f{i:04d}.bin").write_bytes(base)
        out[f"f{i:04d}.bin"] = hashlib.md5(base).hexdigest()
    return out


@pytest.mark.slow
def test_killed_writer_leaves_no_version(tmp_path: Path, trees: list[Path]) -> None:
    root = logged(tmp_path / "registry", trees[0])
    blobs_at_start = len(all_blobs(root))
    count = 300
    expected = write_big_tree(tmp_path / "big", count, MiB)

    proc = subprocess.Popen(
        cli("log", tmp_path / "big", COLL, "--type", "dataset", "--alias", "killed", registry=root),
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len(all_blobs(root)) - blobs_at_start >= 10:
                break
            time.sleep(0.002)
        assert proc.poll() is None, "the writer finished before it could be killed; make the tree bigger"
        proc.send_signal(signal.SIGSTOP)
        stored = len(all_blobs(root)) - blobs_at_start
        # Versions are committed only after every blob is stored, so this one is not yet.
        assert 10 <= stored < count
        proc.kill()
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    reg = LocalRegistry(root)
    try:
        assert alias_map(reg) == {"v0": ["latest"]}
        with pytest.raises(ArtifactNotFound):
            reg.resolve(R(f"{COLL}:killed"))
        assert assert_blobs_intact(root) >= blobs_at_start
        # The killed writer's blobs are whole (written to objects/tmp, renamed when complete).
        expected_hexes = set(expected.values())
        for blob in all_blobs(root):
            name = blob.parent.name + blob.name
            assert name in expected_hexes or blob.stat().st_size < MiB
        # A new writer succeeds and logs everything.
        result = reg.log_dir(tmp_path / "big", R(COLL), type="dataset", aliases=["again"])
        assert result.created
        assert result.version.version == "v1"
        assert result.version.file_count == count
        assert alias_map(reg) == {"v0": [], "v1": ["latest", "again"]}
        for entry in reg.iter_entries(result.version):
            hexd = expected[entry.path]
            assert reg.blob_path(MD5, entry.digest) == str(root / "objects" / "md5" / hexd[:2] / hexd[2:])
        assert assert_blobs_intact(root) == blobs_at_start + count
    finally:
        reg.close()


@pytest.mark.slow
def test_concurrent_writers(tmp_path: Path) -> None:
    root = tmp_path / "registry"  # not created yet: the writers race to create it too
    n = 4
    sources = {}
    for i in range(n):
        files = {f"w{i}/f{j}.bin": os.urandom(256 * 1024) for j in range(12)}
        files["common.txt"] = f"writer {i}".encode()
        sources[i] = files
        write_tree(tmp_path / f"src{i}", files)
    procs = [
        subprocess.Popen(
            cli("log", tmp_path / f"src{i}", COLL, "--type", "dataset", "--alias", f"writer{i}", registry=root),
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    printed = sorted(out.strip().splitlines()[-1] for out, _ in outputs)
    assert printed == [f"{COLL}:v{i}" for i in range(n)]

    reg = LocalRegistry(root)
    try:
        versions = reg.versions("acme", "vision", "ds")
        assert [v.version for v in versions] == [f"v{i}" for i in range(n)]
        assert "latest" in versions[-1].aliases
        seen = set()
        for i in range(n):
            v = reg.resolve(R(f"{COLL}:writer{i}"))
            seen.add(v.version)
            entries = {e.path: e for e in reg.iter_entries(v)}
            assert set(entries) == set(sources[i])
            for path, data in sources[i].items():
                assert entries[path].digest == b64md5(data)
                assert Path(reg.blob_path(MD5, entries[path].digest)).read_bytes() == data
            assert v.digest == artifact_digest((p, b64md5(d)) for p, d in sources[i].items())
        assert len(seen) == n
        assert assert_blobs_intact(root) == n * 13
    finally:
        reg.close()


# The child reports its own VmHWM: the peak RSS of its address space after exec.  (The rusage of
# a forked child also counts the parent's image it was forked from, which is hundreds of MiB late
# in a full test run.)
_REPORT_PEAK_RSS = (
    "import sys, runpy\n"
    "sys.argv = ['artifactfs', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('artifactfs', run_name='__main__')\n"
    "finally:\n"
    "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
    "    print(hwm.split()[1], file=sys.stderr)\n"
)


def log_measuring_peak_rss(src: Path, root: Path) -> float:
    """Run ``artifactfs log SRC`` in a child process; return its peak RSS in MiB."""
    argv = cli("log", src, COLL, "--type", "dataset", registry=root)
    proc = subprocess.run(
        [sys.executable, "-c", _REPORT_PEAK_RSS, *argv[3:]],
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stderr.strip().splitlines()[-1]) / 1024  # VmHWM is in kB


@pytest.mark.slow
def test_logging_many_small_files_keeps_memory_flat(tmp_path: Path) -> None:
    count = 10_000
    src = tmp_path / "many"
    expected: dict[str, str] = {}
    for i in range(count):
        rel = f"d{i % 100:02d}/f{i:05d}.txt"
        data = f"file {i}\n".encode() * (1 + i % 7)
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[rel] = b64md5(data)
    root = tmp_path / "registry"
    t0 = time.monotonic()
    peak_mib = log_measuring_peak_rss(src, root)
    elapsed = time.monotonic() - t0
    print(f"logging {count} files: {elapsed:.1f} s, peak RSS {peak_mib:.0f} MiB")
    assert peak_mib < 120, f"logging {count} small files peaked at {peak_mib:.0f} MiB RSS"

    reg = LocalRegistry(root)
    try:
        v = reg.resolve(R(f"{COLL}:latest"))
        assert v.file_count == count
        entries = {e.path: e.digest for e in reg.iter_entries(v)}
        assert len(entries) == count
        assert entries == expected
        assert len(reg.list_dir(v, "")) == 100
        assert len(reg.list_dir(v, "d42")) == count // 100
    finally:
        reg.close()
    assert len(all_blobs(root)) == len(set(expected.values()))


@pytest.mark.slow
def test_logging_big_files_keeps_memory_flat(tmp_path: Path) -> None:
    src = tmp_path / "huge"
    src.mkdir()
    chunk = bytearray(os.urandom(MiB))
    expected = {}
    per_file = 200
    try:
        for n in range(3):
            h = hashlib.md5()
            with open(src / f"part{n}.bin", "wb") as f:
                for i in range(per_file):
                    chunk[:8] = (n * per_file + i).to_bytes(8, "little")
                    f.write(chunk)
                    h.update(chunk)
            expected[f"part{n}.bin"] = base64.b64encode(h.digest()).decode()

        root = tmp_path / "registry"
        peak_mib = log_measuring_peak_rss(src, root)
        print(f"peak RSS of the logging process: {peak_mib:.0f} MiB")
        assert peak_mib < 150, f"logging 3 x {per_file} MiB peaked at {peak_mib:.0f} MiB RSS"

        reg = LocalRegistry(root)
        try:
            v = reg.resolve(R(f"{COLL}:latest"))
            assert v.size == 3 * per_file * MiB
            assert {e.path: e.digest for e in reg.iter_entries(v)} == expected
            for digest in expected.values():
                assert os.path.getsize(reg.blob_path(MD5, digest)) == per_file * MiB
        finally:
            reg.close()
    finally:
        for item in (tmp_path / "huge").glob("*"):
            item.unlink()
        for blob in all_blobs(tmp_path / "registry"):
            blob.unlink()


# -- entry ids: what a mount makes inodes from ------------------------------------------------------


def _ids(db_path: Path) -> dict[tuple[int, str], int]:
    """``(version row, path) -> id`` of every file and directory."""
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute("SELECT version_id, parent, name, id FROM entries UNION ALL SELECT * FROM dirs")
        return {(v, f"{p}/{n}" if p else n): i for v, p, n, i in rows}
    finally:
        conn.close()


def _check_contents(reg: LocalRegistry, version: VersionInfo) -> None:
    """The version's contents as a mount sees them agree with its listings, path by path and by
    id; every id is distinct within the version."""
    contents = reg.contents_index(version)
    assert contents is not None
    seen: dict[int, str] = {}
    stack = [""]
    while stack:
        path = stack.pop()
        listing = contents.listing(path)
        expected = reg.list_dir(version, path)
        assert listing is not None and listing.split_names() == [d.name.encode() for d in expected]
        for d, node_id, size in zip(expected, listing.ids, listing.sizes, strict=True):
            child_path = f"{path}/{d.name}" if path else d.name
            assert node_id not in seen and node_id > 0
            seen[node_id] = child_path
            found = contents.by_id(node_id)
            assert found is not None and found[0] == child_path
            got = contents.get(child_path)
            assert got is not None and got.id == node_id and got.entry == d.entry == found[1].entry
            assert size == (-1 if d.entry is None else d.entry.size)
            if d.entry is None:
                stack.append(child_path)
    assert contents.by_id(max(seen) + 1) is None and contents.get("no/such") is None


def test_an_old_registry_gets_entry_ids_once(tmp_path: Path, trees: list[Path]) -> None:
    """A registry made before entry ids is read as it is (opening writes nothing, and a mount
    has no index of it), gets its ids in one step, and then every version, a later log and a
    link all have them; the ids of a version never change."""
    from conftest import without_entry_ids

    root = logged(tmp_path / "registry", trees[0], trees[1])
    db = root / "registry.sqlite"
    without_entry_ids(db)
    before = db.read_bytes()
    old = LocalRegistry(root)
    try:
        v0 = old.resolve(R(f"{COLL}:v0"))
        assert old.contents_index(v0) is None and [d.name for d in old.list_dir(v0, "")]
        assert db.read_bytes() == before
        assert old.add_entry_ids() is True
        assert old.add_entry_ids() is False
        numbered = _ids(db)
        assert None not in numbered.values()
        for v in old.versions("acme", "vision", "ds"):
            _check_contents(old, v)
        v2 = old.log_dir(trees[2], R(COLL), type="dataset").version
        member = old.link(v0.ref, "golden")
        for v in (v2, member):
            _check_contents(old, v)
        after = _ids(db)
        assert {k: after[k] for k in numbered} == numbered  # ids already given never move
    finally:
        old.close()
    fresh = LocalRegistry(root)  # another process's handle sees the ids
    try:
        assert fresh.contents_index(fresh.resolve(R(f"{COLL}:v1"))) is not None
    finally:
        fresh.close()


def test_entry_ids_upgrade_that_fails_leaves_the_registry_as_it_was(
    tmp_path: Path, trees: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upgrade is one transaction: failing after the rows were numbered rolls all of it back
    (columns, ids, mark), the registry reads as before, and the next upgrade succeeds."""
    from conftest import without_entry_ids

    from artifactfs.registry import local

    root = logged(tmp_path / "registry", trees[0])
    db = root / "registry.sqlite"
    without_entry_ids(db)
    schema = sqlite3.connect(db).execute("SELECT group_concat(sql) FROM sqlite_master").fetchone()
    monkeypatch.setattr(local, "_ENTRY_ID_INDEXES", "CREATE INDEX dirs_id ON no_such_table (id)")
    reg = LocalRegistry(root)
    try:
        with pytest.raises(RegistryError):
            reg.add_entry_ids()
        assert sqlite3.connect(db).execute("SELECT group_concat(sql) FROM sqlite_master").fetchone() == schema
        v0 = reg.resolve(R(f"{COLL}:v0"))
        assert reg.contents_index(v0) is None and reg.list_dir(v0, "")
        monkeypatch.undo()
        assert reg.add_entry_ids() is True
        _check_contents(reg, v0)
    finally:
        reg.close()


def test_a_process_killed_while_it_adds_entry_ids_leaves_a_whole_registry(tmp_path: Path) -> None:
    """SIGKILL during the upgrade of a registry of 200,000 entries: the registry is either as it
    was or upgraded, never half, and the next upgrade gets every id right."""
    from conftest import without_entry_ids

    root = tmp_path / "registry"
    reg = LocalRegistry(root, create=True)
    try:
        version = reg.log_dir(write_tree(tmp_path / "one", {"a/b.txt": b"b\n"}), R(COLL), type="dataset").version
    finally:
        reg.close()
    db = root / "registry.sqlite"
    conn = sqlite3.connect(db)
    try:
        pk = conn.execute("SELECT id FROM versions").fetchone()[0]
        conn.executemany(
            "INSERT INTO entries (version_id, parent, name, digest, size) VALUES (?, ?, ?, 'x', 1)",
            ((pk, f"d{i // 1000:03d}", f"f{i % 1000:03d}") for i in range(200_000)),
        )
        conn.executemany(
            "INSERT INTO dirs (version_id, parent, name) VALUES (?, '', ?)", ((pk, f"d{i:03d}") for i in range(200))
        )
        conn.commit()
    finally:
        conn.close()
    without_entry_ids(db)
    code = f"from artifactfs.registry.local import LocalRegistry; LocalRegistry({str(root)!r}).add_entry_ids()"
    proc = subprocess.Popen([sys.executable, "-c", code], env=child_env())
    wal = root / "registry.sqlite-wal"
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:  # killed once the upgrade writes
        if wal.exists() and wal.stat().st_size > 1 << 20:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the upgrade finished before it could be killed; make the registry bigger"
    proc.kill()
    proc.wait()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        marked = conn.execute("SELECT 1 FROM meta WHERE key = 'entry_ids'").fetchone() is not None
        columns = {r[1] for r in conn.execute("PRAGMA table_info(entries)")}
        assert not marked and "id" not in columns, "the killed upgrade left a trace"
    finally:
        conn.close()
    reg = LocalRegistry(root)
    try:
        assert reg.add_entry_ids() is True
        contents = reg.contents_index(version)
        assert contents is not None and contents.count == 1
        ids = _ids(db)
        assert len(set(ids.values())) == len(ids) == 200_000 + 1 + 200 + 1
        assert sorted(ids.values()) == list(range(1, len(ids) + 1))
    finally:
        reg.close()
