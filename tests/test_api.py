"""The W&B-style Python API over the local registry: log, look up, download, verify, edit."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest
from conftest import SAMPLE_FILES, b64md5, run_cli, write_tree

from artifactfs import Api, Artifact, Table, VerificationError
from artifactfs.errors import (
    ArtifactNotFound,
    ArtifactNotLogged,
    Conflict,
    DigestMismatch,
    InvalidArgument,
    InvalidPath,
    InvalidReference,
    NotFound,
    ReadOnly,
    RegistryError,
    SourceError,
)
from artifactfs.manifest import artifact_digest
from artifactfs.wandb_errors import ArtifactFinalizedError, ArtifactNotLoggedError


@pytest.fixture
def api(tmp_path: Path) -> Api:
    src = write_tree(tmp_path / "src", SAMPLE_FILES)
    a = Api(tmp_path / "registry")
    art = Artifact("ds", type="dataset", description="first", metadata={"rows": 9})
    art.add_dir(src)
    a.log_artifact(art, "acme/vision", aliases=["best"])
    return a


def test_log_and_lookup(api: Api, tmp_path: Path) -> None:
    art = api.artifact("acme/vision/ds:best")
    # As W&B: the name keeps the alias it was fetched by; version and source_name say which.
    assert art.name == "ds:best" and art.version == "v0" and art.qualified_name == "acme/vision/ds:best"
    assert art.source_name == "ds:v0" and art.source_qualified_name == "acme/vision/ds:v0"
    assert art.entity == "acme" and art.project == "vision" and art.type == "dataset"
    assert art.aliases == ["latest", "best"]
    assert art.metadata == {"rows": 9} and art.description == "first"
    assert art.file_count == len(SAMPLE_FILES)
    assert art.size == sum(len(v) for v in SAMPLE_FILES.values())
    assert art.state == "COMMITTED" and art.id and art.commit_hash
    assert art.created_at.endswith("Z")
    # the same digest the CLI reports
    info = run_cli("info", "acme/vision/ds:v0", "--json", "--registry", str(tmp_path / "registry"))
    assert f'"digest": "{art.digest}"' in info.stdout
    assert {e.path for e in art.files()} == set(SAMPLE_FILES)
    assert art.get_entry("README.md").digest == art.manifest.entries["README.md"].digest


def test_add_file_and_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTIFACTFS_REGISTRY", str(tmp_path / "reg"))  # save() uses Api()'s default
    f = tmp_path / "model.pt"
    f.write_bytes(b"weights")
    a = Api(tmp_path / "reg")
    art = Artifact("resnet", type="model")
    first = art.add_file(f)
    art.add_file(f, name="copies/model-again.pt")
    assert art.add_file(f) == first  # the same path with the same content: accepted, as W&B
    other = tmp_path / "other" / "model.pt"
    other.parent.mkdir()
    other.write_bytes(b"other weights")
    with pytest.raises(ValueError, match="same path twice"):
        art.add_file(other)  # the same path with other content: W&B's ValueError
    with pytest.raises(InvalidPath):
        art.add_file(f, name="../escape.pt")
    assert art.digest and art.size == 2 * len(b"weights") and art.state == "PENDING"
    draft_digest = art.digest
    art.save(project="acme/vision")
    assert art.qualified_name == "acme/vision/resnet:v0" and art.digest == draft_digest
    assert [e.path for e in a.artifact("acme/vision/resnet").files()] == ["copies/model-again.pt", "model.pt"]


def test_download_is_verified_and_complete(api: Api, tmp_path: Path) -> None:
    art = api.artifact("acme/vision/ds")
    root = Path(art.download(tmp_path / "dl"))
    for rel, data in SAMPLE_FILES.items():
        assert (root / rel).read_bytes() == data
    art.verify(root)
    assert not list(root.rglob("*.tmp"))


def test_download_default_root_and_prefix(api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    art = api.artifact("acme/vision/ds:v0")
    root = Path(art.download(path_prefix="train/"))
    assert root == tmp_path / "artifacts" / "ds:v0"
    got = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert got == sorted(k for k in SAMPLE_FILES if k.startswith("train/"))


def test_download_refuses_a_corrupt_blob(api: Api, tmp_path: Path) -> None:
    art = api.artifact("acme/vision/ds")
    entry = art.get_entry("train/000002.txt")
    blob = Path(str(api.registry.local_path(entry.plain())))
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[0] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch):
        art.download(tmp_path / "dl")
    assert not (tmp_path / "dl" / "train" / "000002.txt").exists()
    assert not list((tmp_path / "dl").rglob("*.tmp"))


def files_below(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_download_does_not_write_through_a_symlink(api: Api, tmp_path: Path) -> None:
    """A directory of the destination that is a symlink to elsewhere (root/train -> outside)
    must not carry the download out of root."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_bytes(b"not yours\n")
    root = tmp_path / "dl"
    root.mkdir()
    (root / "train").symlink_to(outside, target_is_directory=True)
    art = api.artifact("acme/vision/ds")
    with pytest.raises(InvalidPath, match="symlink"):
        art.download(root)
    assert files_below(outside) == ["keep.txt"]
    assert (outside / "keep.txt").read_bytes() == b"not yours\n"
    assert (root / "train").is_symlink()


@pytest.mark.parametrize("layer", ["registry", "download-alone"])
def test_download_refuses_entry_paths_edited_to_escape(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layer: str
) -> None:
    """A registry database edited (or corrupted) to hold "../escaped.txt" writes nothing
    outside the download root: the registry refuses the row, and download's own check would
    refuse the path even if the registry let it through."""
    if layer == "download-alone":
        import artifactfs.registry.local

        monkeypatch.setattr(artifactfs.registry.local, "check_entry_path", lambda path: path)
    conn = sqlite3.connect(tmp_path / "registry" / "registry.sqlite")
    try:
        with conn:
            cur = conn.execute("UPDATE entries SET name = '../escaped.txt' WHERE parent = '' AND name = 'README.md'")
            assert cur.rowcount == 1
    finally:
        conn.close()
    base = tmp_path / "downloads"
    base.mkdir()
    with pytest.raises(InvalidPath):
        api.artifact("acme/vision/ds").download(base / "dl")
    assert not (base / "escaped.txt").exists()
    assert not (tmp_path / "escaped.txt").exists()
    assert [p for p in files_below(base) if not p.startswith("dl")] == []


def test_verify_reports_differences(api: Api, tmp_path: Path) -> None:
    art = api.artifact("acme/vision/ds")
    root = Path(art.download(tmp_path / "dl"))
    (root / "README.md").write_bytes(b"changed\n")
    (root / "extra.txt").write_bytes(b"x")
    (root / "empty").unlink()
    with pytest.raises(VerificationError) as err:
        art.verify(root)
    msg = str(err.value)
    assert "missing empty" in msg and "unexpected extra.txt" in msg and "README.md" in msg
    assert isinstance(err.value, ValueError)  # as W&B's verify
    # download repairs it: the changed file is replaced, the right ones kept
    art.download(root)
    assert (root / "README.md").read_bytes() == SAMPLE_FILES["README.md"]


def test_checkout_removes_extra_files(api: Api, tmp_path: Path) -> None:
    art = api.artifact("acme/vision/ds")
    root = tmp_path / "co"
    write_tree(root, {"stale/old.txt": b"old", "README.md": b"wrong"})
    art.checkout(root)
    assert not (root / "stale").exists()
    art.verify(root)


def test_save_edits_aliases_description_metadata(api: Api) -> None:
    art = api.artifact("acme/vision/ds:v0")
    art.aliases.remove("best")
    art.aliases.append("production")
    art.description = "edited"
    art.metadata["split"] = "train"
    art.save()
    again = api.artifact("acme/vision/ds:production")
    assert again.aliases == ["latest", "production"]
    assert again.description == "edited" and again.metadata == {"rows": 9, "split": "train"}
    assert not api.artifact_exists("acme/vision/ds:best")


def test_listing_and_delete(api: Api, tmp_path: Path) -> None:
    src = write_tree(tmp_path / "two", {"a.txt": b"a"})
    art = Artifact("ds", type="dataset")
    art.add_dir(src)
    api.log_artifact(art, "acme/vision")
    assert [a.version for a in api.artifacts("dataset", "acme/vision/ds")] == ["v0", "v1"]
    assert [c.name for c in api.artifact_collections("acme/vision")] == ["ds"]
    assert api.artifact_types("acme/vision") == ["dataset"]
    with pytest.raises(Conflict):
        api.artifact("acme/vision/ds:v0").delete()  # still has alias 'best'
    api.artifact("acme/vision/ds:v0").delete(delete_aliases=True)
    with pytest.raises(ArtifactNotFound):
        api.artifact("acme/vision/ds:v0")
    assert api.artifact("acme/vision/ds").version == "v1"


def test_bad_input(api: Api, tmp_path: Path) -> None:
    with pytest.raises(InvalidReference):
        api.artifact("a/b/c/d")  # four parts
    with pytest.raises(InvalidReference):
        api.artifact("acme/vision/bad name")
    with pytest.raises(InvalidArgument, match="type"):
        api.artifact("acme/vision/ds", type="model")
    with pytest.raises(InvalidReference):
        Artifact("bad name", type="dataset")
    logged = api.artifact("acme/vision/ds")
    with pytest.raises(ArtifactFinalizedError):
        logged.add_file(tmp_path / "src" / "README.md")  # logged versions are immutable
    with pytest.raises(ReadOnly):  # ArtifactFinalizedError is our ReadOnly too
        logged.add_dir(tmp_path / "src")
    with pytest.raises(ReadOnly):
        api.log_artifact(logged, "acme/vision")  # already logged
    draft = Artifact("x", type="t")
    for attr in ("version", "entity", "project", "qualified_name", "file_count", "aliases", "created_at"):
        with pytest.raises(ArtifactNotLoggedError):
            getattr(draft, attr)
        assert not hasattr(draft, attr)  # W&B's ArtifactNotLoggedError is an AttributeError
    with pytest.raises(ArtifactNotLogged):  # and ours is still the ArtifactFSError it was
        draft.get_path("x")
    for call in (lambda: draft.get("x"), draft.logged_by, draft.used_by, draft.download, draft.wait):
        with pytest.raises(ArtifactNotLoggedError):
            call()
    assert draft.digest == artifact_digest([])  # the digest of an empty manifest, before logging
    assert draft.id is None and draft.name == "x" and draft.size == 0


def test_cli_get_and_verify(api: Api, tmp_path: Path) -> None:
    reg = str(tmp_path / "registry")
    out = run_cli("get", "acme/vision/ds:best", "--root", str(tmp_path / "g"), "--registry", reg)
    assert out.stdout.strip() == str(tmp_path / "g")
    md5 = hashlib.md5((tmp_path / "g" / "train" / "000002.txt").read_bytes()).hexdigest()
    assert md5 == hashlib.md5(SAMPLE_FILES["train/000002.txt"]).hexdigest()
    run_cli("verify", "acme/vision/ds:best", str(tmp_path / "g"), "--registry", reg)
    (tmp_path / "g" / "latest").write_bytes(b"tampered")
    bad = run_cli("verify", "acme/vision/ds:best", str(tmp_path / "g"), "--registry", reg, check=False)
    assert bad.returncode == 1 and "latest" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_all_documented_attributes(api: Api) -> None:
    art = api.artifact("acme/vision/ds:best")
    v = art._logged_version()
    assert (art.source_entity, art.source_project, art.source_name, art.source_version) == (
        "acme",
        "vision",
        "ds:v0",
        "v0",
    )
    assert art.source_qualified_name == "acme/vision/ds:v0" and not art.is_link and art.source_artifact is art
    assert art.collection.name == "ds" and art.collection.type == "dataset"
    assert art.updated_at.endswith("Z") and art.commit_hash == v.commit_hash and art.digest == v.digest
    assert art.ttl is None and art.tags == [] and art.url == "" and art.linked_artifacts == []
    assert art.manifest.digest() == art.digest  # the manifest's W&B digest is the version's


def test_manifest_cannot_change_after_logging(api: Api, tmp_path: Path) -> None:
    art = api.artifact("acme/vision/ds")
    art.manifest.entries.pop("README.md")  # a copy: the version is untouched
    assert "README.md" in art.manifest.entries
    with pytest.raises(AttributeError):
        art.manifest = art.manifest  # type: ignore[misc]
    with pytest.raises(ArtifactFinalizedError):
        art.add_reference(f"file://{tmp_path}/src/README.md")
    with pytest.raises(ArtifactFinalizedError), art.new_file("x.txt") as f:
        f.write("x")
    with pytest.raises(ArtifactFinalizedError):
        art["t"] = Table(columns=["a"], data=[[1]])


def test_table_is_stored_as_wandb_stores_it(tmp_path: Path) -> None:
    """``name.table.json`` with W&B's keys: the wandb SDK reads ours, and ours reads the SDK's."""
    import wandb
    from wandb.sdk.data_types.table import Table as WandbTable

    api = Api(tmp_path / "reg")
    art = Artifact("tables", type="dataset")
    entry = art.add(Table(columns=["n", "s", "b"], data=[[1, "one", True], [2.5, "two", None]]), "scores")
    assert entry.path == "scores.table.json"
    api.log_artifact(art, "acme/vision")
    logged = api.artifact("acme/vision/tables")
    raw = json.loads(Path(logged.get_path("scores.table.json").download(tmp_path / "dl")).read_text())
    sdk_keys = WandbTable(columns=["n"], data=[[1]]).to_json(wandb.Artifact("x", type="dataset"))
    assert sorted(raw) == sorted(sdk_keys)
    theirs = WandbTable.from_json(raw, None)
    assert theirs.columns == ["n", "s", "b"] and theirs.data == [[1, "one", True], [2.5, "two", None]]
    assert logged.get("scores") == Table(columns=["n", "s", "b"], data=[[1, "one", True], [2.5, "two", None]])
    with pytest.raises(TypeError, match="not supported"):
        Artifact("x", type="t").add({"an": "image"}, "img")


def test_paths_of_one_two_or_three_parts(api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    assert api.artifact("vision/ds:best").qualified_name == "acme/vision/ds:best"  # the registry's only entity
    monkeypatch.setenv("WANDB_PROJECT", "vision")
    assert api.artifact("ds").qualified_name == "acme/vision/ds:v0"
    monkeypatch.setenv("WANDB_ENTITY", "nobody")
    with pytest.raises(NotFound, match="nobody"):
        api.artifact("ds")
    overridden = Api(tmp_path / "registry", overrides={"entity": "acme", "project": "vision"})
    assert overridden.artifact("ds:v0").version == "v0"
    assert [c.name for c in overridden.artifact_collections()] == ["ds"]
    assert Api({"entity": "acme"}).default_entity == "acme"  # wandb.Api(overrides) positional


def test_an_api_that_is_given_its_entity_opens_no_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh home (the suite's): the default registry does not exist, and is not needed.
    default = Path(os.path.expanduser("~/.local/share/artifactfs/registry"))
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    api = Api({"entity": "acme", "project": "vision"})
    assert api.default_entity == "acme"
    assert api.entity_project(None) == ("acme", "vision")
    assert str(api.ref("ds:v1")) == "acme/vision/ds:v1"
    monkeypatch.setenv("WANDB_ENTITY", "fromenv")
    assert Api().default_entity == "fromenv"
    assert not default.parent.exists()
    monkeypatch.delenv("WANDB_ENTITY")
    with pytest.raises(RegistryError, match="no registry at"):  # now only the registry can say
        Api().default_entity  # noqa: B018
    assert not default.parent.exists()


def test_same_content_twice_and_conflicts(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_bytes(b"1")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.txt").write_bytes(b"2")
    art = Artifact("m", type="t")
    art.add_dir(tmp_path / "a")
    art.add_dir(tmp_path / "a")  # same files again: accepted
    with pytest.raises(ValueError):
        art.add_dir(tmp_path / "b")
    art.add_dir(tmp_path / "b", merge=True)  # W&B's merge: the new content wins
    assert art.manifest.entries["x.txt"].digest == b64md5(b"2")
    with pytest.raises(ValueError):
        art.add_file(tmp_path / "a" / "x.txt", name="x.txt/inner")  # a file cannot also be a directory
    tmp_entry = art.add_file(tmp_path / "a" / "x.txt", name="dir/model.ckpt.pt", is_tmp=True)
    assert tmp_entry.path == "dir/" + hashlib.md5(b"1").hexdigest()[:20] + ".ckpt.pt"
    with pytest.raises(ValueError):
        art.add_file(tmp_path / "a" / "x.txt", policy="sometimes")


def test_a_file_changed_after_it_was_added_is_not_logged(tmp_path: Path) -> None:
    f = tmp_path / "data.bin"
    f.write_bytes(b"as added")
    art = Artifact("d", type="t")
    art.add_file(f)
    f.write_bytes(b"edited later")
    api = Api(tmp_path / "reg")
    with pytest.raises(SourceError, match="changed since it was added"):
        api.log_artifact(art, "acme/p")
    art.add_file(f, overwrite=True)  # added again: its new content is what is logged
    api.log_artifact(art, "acme/p")
    assert api.artifact("acme/p/d").files()[0].size == len(b"edited later")


def test_remove_from_a_new_artifact(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a/x.txt": b"x", "a/y.txt": b"y", "b.txt": b"b"})
    art = Artifact("r", type="t")
    art.add_dir(src)
    art.remove("a")  # a directory: everything below it
    assert sorted(art.manifest.entries) == ["b.txt"]
    with pytest.raises(FileNotFoundError):
        art.remove("a/x.txt")
    art.remove(art.manifest.entries["b.txt"])
    assert art.manifest.entries == {}


def test_the_api_is_loaded_when_first_asked_for() -> None:
    """The CLI and the mount daemon never load the W&B-compatible API; ``import artifactfs as
    wandb`` still gives every name of it (and ``from artifactfs import ...``)."""
    import subprocess
    import sys

    code = (
        "import sys, artifactfs.cli, artifactfs.mount, artifactfs.ops, artifactfs.registry.wandb\n"
        "api = {'artifactfs.api', 'artifactfs.artifact', 'artifactfs.run', 'artifactfs.client'}\n"
        "print(sorted(api & set(sys.modules)))\n"
        "import artifactfs as wandb\n"
        "print(all(callable(getattr(wandb, name)) for name in wandb.__all__ if name != '__version__'))\n"
        "print(set(wandb.__all__) <= set(dir(wandb)), type(wandb.run).__name__)\n"
        "from artifactfs import Api, Table, current_run\n"
        "print(Api.__module__, Table.__module__, current_run())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "True", "True module", "artifactfs.api artifactfs.table None"]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        import artifactfs

        artifactfs.nothing  # noqa: B018
