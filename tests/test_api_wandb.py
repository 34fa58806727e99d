"""The W&B-style API over the W&B backend (the test server of tests/wandb_server.py, real HTTP on
127.0.0.1): the read side (attributes, download, checkout, verify, files, get_path, file, get,
logged_by, used_by) and the mutations (save of description, metadata and aliases; delete; link).
Logging a new version to W&B is declined with a clear error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from wandb_server import WandbServer

import artifactfs as wandb
from artifactfs.errors import ArtifactFSError, Conflict, ReadOnly
from artifactfs.manifest import digest_bytes

KEY = "0123456789abcdef0123456789abcdef01234567"
FILES = {"a.txt": b"hello\n", "d/b.txt": b"bee"}
TABLE = {
    "_type": "table",
    "columns": ["x", "y"],
    "data": [[1, "one"], [2, "two"]],
    "ncols": 2,
    "nrows": 2,
    "column_types": {"wb_type": "typedDict", "params": {"type_map": {"x": {"wb_type": "number"}}}},
}


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WandbServer]:
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("ARTIFACTFS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_ENTITY", "acme")
    monkeypatch.setenv("WANDB_PROJECT", "vision")
    monkeypatch.chdir(tmp_path)
    with WandbServer(api_key=KEY, viewer_entity="acme") as srv:
        srv.add_run("acme", "vision", "maker01", display_name="maker", job_type="prep")
        srv.add_run("acme", "vision", "user0001", display_name="user", job_type="train")
        srv.add_artifact(
            "acme",
            "vision",
            "ds",
            "dataset",
            FILES,
            aliases=["best"],
            metadata={"rows": 2},
            description="first",
            run="maker01",
            used_by=["user0001"],
        )
        srv.add_artifact("acme", "vision", "tab", "dataset", {"t.table.json": json.dumps(TABLE).encode()})
        srv.add_artifact("acme", "vision", "one", "model", {"w.bin": b"\x01" * 100})
        monkeypatch.setenv("ARTIFACTFS_REGISTRY", f"wandb:{srv.url}")
        yield srv


def test_read_side(server: WandbServer, tmp_path: Path) -> None:
    api = wandb.Api()
    art = api.artifact("vision/ds:best")  # two parts: the entity from $WANDB_ENTITY
    rec = server.artifact("acme", "vision", "ds", 0)
    assert (art.id, art.entity, art.project, art.name, art.version) == (rec.id, "acme", "vision", "ds:best", "v0")
    assert art.qualified_name == "acme/vision/ds:best" and art.source_version == "v0"  # as W&B names it
    assert art.type == "dataset" and art.description == "first" and art.metadata == {"rows": 2}
    assert art.aliases == ["latest", "best"] and art.state == "COMMITTED"
    assert art.digest == rec.digest and art.size == sum(map(len, FILES.values())) and art.file_count == 2
    assert [(f.name, f.size, f.md5) for f in art.files()] == [
        (p, len(FILES[p]), digest_bytes(FILES[p])) for p in sorted(FILES)
    ]

    root = Path(art.download())
    assert root == tmp_path / "artifacts" / "ds:v0"
    assert (root / "d" / "b.txt").read_bytes() == b"bee"
    art.verify(root)
    (root / "stray").write_bytes(b"x")
    with pytest.raises(ValueError):
        art.verify(root)
    art.checkout(root)
    art.verify(root)

    one = Path(art.get_path("d/b.txt").download(tmp_path / "single"))
    assert one == tmp_path / "single" / "d" / "b.txt" and one.read_bytes() == b"bee"
    assert Path(api.artifact("one:latest").file(str(tmp_path / "f"))).read_bytes() == b"\x01" * 100
    with pytest.raises(ValueError):
        art.file()

    table = api.artifact("tab:latest").get("t")
    assert table is not None and table.columns == ["x", "y"] and table.data == [[1, "one"], [2, "two"]]
    assert api.artifact("tab:latest").get("nothing") is None


def test_lineage(server: WandbServer) -> None:
    art = wandb.Api().artifact("acme/vision/ds:v0")
    producer = art.logged_by()
    assert producer is not None and producer.id == "maker01" and producer.job_type == "prep"
    assert [r.id for r in art.used_by()] == ["user0001"]


def test_save_description_metadata_aliases(server: WandbServer) -> None:
    api = wandb.Api()
    art = api.artifact("ds:best")
    art.description = "edited"
    art.metadata["split"] = "train"
    art.aliases.remove("best")
    art.aliases.append("production")
    art.save()
    rec = server.artifact("acme", "vision", "ds", 0)
    assert rec.description == "edited" and rec.metadata == {"rows": 2, "split": "train"}
    assert sorted(rec.aliases) == ["latest", "production"]
    again = api.artifact("ds:production")
    assert again.description == "edited" and again.metadata == {"rows": 2, "split": "train"}

    art.metadata = {"replaced": True}
    art.aliases = ["replaced"]
    art.save()
    rec = server.artifact("acme", "vision", "ds", 0)
    assert rec.metadata == {"replaced": True} and sorted(rec.aliases) == ["latest", "replaced"]


def test_delete_and_link(server: WandbServer) -> None:
    api = wandb.Api()
    linked = api.artifact("ds:best").link("acme/vision/portfolio", aliases=["prod"])
    assert linked.qualified_name == "acme/vision/portfolio:v0" and "prod" in linked.aliases
    assert linked.is_link and linked.source_qualified_name == "acme/vision/ds:v0" and linked.source_version == "v0"
    assert linked.source_artifact.qualified_name == "acme/vision/ds:v0"
    assert [m[1] for m in server.memberships(server.artifact("acme", "vision", "ds", 0))] == [0, 0]

    with pytest.raises(Conflict):
        api.artifact("ds:best").delete()  # aliases other than latest: refused, as W&B
    api.artifact("one:latest").delete()
    assert server.artifact("acme", "vision", "one", 0).deleted
    assert not api.artifact_exists("one:latest")


def test_logging_to_wandb_is_declined_clearly(server: WandbServer, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    art = wandb.Artifact("new", type="dataset")
    art.add_file(str(tmp_path / "f.txt"))
    with pytest.raises(ReadOnly, match="logging a new version"):
        wandb.Api().log_artifact(art)
    assert isinstance(ReadOnly("x"), ArtifactFSError)
