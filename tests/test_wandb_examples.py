"""The code examples of W&B's ``Artifact`` reference, run with ``import artifactfs as wandb``.

Each test body is the reference's example with that import as its only change (placeholders such
as ``project/artifact:alias`` and ``path/to/file.txt`` filled with things that exist, and a
``wandb.init()`` where the example assumes a run, as the reference does), against a temporary
local registry: ``$ARTIFACTFS_REGISTRY``, ``$ARTIFACTFS_CACHE_DIR``, ``$WANDB_ENTITY`` and
``$WANDB_PROJECT`` point into the test's directory, which is also the working directory.

The sections: basic usage, updating, graph traversal (from an artifact, from a run), deleting,
and the example of each method.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import artifactfs as wandb
from artifactfs.wandb_errors import ArtifactFinalizedError, ArtifactNotLoggedError


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("ARTIFACTFS_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("ARTIFACTFS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_ENTITY", "acme")
    monkeypatch.setenv("WANDB_PROJECT", "project")
    monkeypatch.delenv("WANDB_ARTIFACT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "path" / "to" / "dir" / "sub").mkdir(parents=True)
    (tmp_path / "path" / "to" / "file.txt").write_text("a file\n")
    (tmp_path / "path" / "to" / "dir" / "one.txt").write_text("one\n")
    (tmp_path / "path" / "to" / "dir" / "sub" / "two.txt").write_text("two\n")
    yield tmp_path
    wandb.finish()


def log_example(name: str = "artifact", aliases: tuple[str, ...] = ("alias",)) -> wandb.Artifact:
    """``project/artifact:alias``: one version with a file, logged by a run."""
    with wandb.init(job_type="setup") as run:
        art = wandb.Artifact(name, type="dataset", description="first", metadata={"oldKey": "old value"})
        art.add_file("path/to/file.txt")
        run.log_artifact(art, aliases=list(aliases))
    return art


# -- the class's sections ---------------------------------------------------------------------


def test_basic_usage() -> None:
    log_example()

    api = wandb.Api()
    artifact = api.artifact("project/artifact:alias")

    # Get information about the artifact...
    artifact.digest  # noqa: B018 - the example reads them
    artifact.aliases  # noqa: B018

    assert artifact.digest == api.artifact("acme/project/artifact:v0").digest
    assert artifact.aliases == ["latest", "alias"]


def test_updating() -> None:
    log_example()
    api = wandb.Api()

    artifact = api.artifact("project/artifact:alias")

    # Update the description
    artifact.description = "My new description"

    # Selectively update metadata keys
    artifact.metadata["oldKey"] = "new value"

    # Replace the metadata entirely
    artifact.metadata = {"newKey": "new value"}

    # Add an alias
    artifact.aliases.append("best")

    # Remove an alias
    artifact.aliases.remove("latest")

    # Completely replace the aliases
    artifact.aliases = ["replaced"]

    # Persist all artifact modifications
    artifact.save()

    again = api.artifact("project/artifact:replaced")
    assert again.description == "My new description"
    assert again.metadata == {"newKey": "new value"}
    # 'latest' always names the newest version here (the registry manages it): not removed
    assert again.aliases == ["latest", "replaced"]
    assert not api.artifact_exists("project/artifact:alias")
    assert not api.artifact_exists("project/artifact:best")


def test_graph_traversal_from_an_artifact() -> None:
    log_example()
    with wandb.init(job_type="train") as consumer:
        consumer.use_artifact("artifact:alias")
        model = wandb.Artifact("model", type="model")
        model.add_file("path/to/file.txt", name="weights.bin")
        consumer.log_artifact(model)

    api = wandb.Api()
    artifact = api.artifact("project/artifact:alias")

    # Walk up the graph from an artifact:
    producer_run = artifact.logged_by()
    # Walk down the graph from an artifact:
    consumer_runs = artifact.used_by()

    # Walk down the graph from a run:
    next_artifacts = consumer_runs[0].logged_artifacts()
    # Walk up the graph from a run:
    previous_artifacts = producer_run.used_artifacts()

    assert producer_run.job_type == "setup"
    assert [r.id for r in consumer_runs] == [consumer.id]
    assert [a.qualified_name for a in next_artifacts] == ["acme/project/model:v0"]
    assert previous_artifacts == []


def test_graph_traversal_from_a_run() -> None:
    log_example()
    with wandb.init(job_type="train") as train:
        train.use_artifact("artifact:latest")
        model = wandb.Artifact("model", type="model")
        model.add_file("path/to/file.txt", name="weights.bin")
        train.log_artifact(model)
    with wandb.init(job_type="eval") as evaluation:
        evaluation.use_artifact("model:latest")

    api = wandb.Api()
    run = api.run(f"acme/project/{train.id}")

    # Walk down the graph from a run:
    produced_artifacts = run.logged_artifacts()
    # Walk up the graph from a run:
    consumed_artifacts = run.used_artifacts()

    # Walk up the graph from an artifact:
    earlier_run = consumed_artifacts[0].logged_by()
    # Walk down the graph from an artifact:
    consumer_runs = produced_artifacts[0].used_by()

    assert earlier_run.job_type == "setup"
    assert [r.id for r in consumer_runs] == [evaluation.id]


def test_deleting() -> None:
    log_example(aliases=())  # W&B refuses delete() of a version with aliases, as here: 'latest' only
    api = wandb.Api()

    artifact = api.artifact("project/artifact:latest")
    artifact.delete()

    assert not api.artifact_exists("project/artifact:v0")


# -- the methods' examples ----------------------------------------------------------------------


def test_add_a_table_and_get_it_back() -> None:
    wandb.init()

    artifact = wandb.Artifact("my_table", type="dataset")
    table = wandb.Table(columns=["a", "b", "c"], data=[(i, i * 2, 2**i) for i in range(10)])
    artifact.add(table, "my_table")
    wandb.log_artifact(artifact)

    # Retrieving an object:
    artifact = wandb.use_artifact("my_table:latest")
    table = artifact.get("my_table")

    assert table is not None and table.columns == ["a", "b", "c"] and table.data[3] == [3, 6, 8]
    assert [f.name for f in artifact.files()] == ["my_table.table.json"]


def test_setitem_and_getitem() -> None:
    wandb.init()

    artifact = wandb.Artifact("my_table", type="dataset")
    table = wandb.Table(columns=["a", "b", "c"], data=[[i, i * 2, 2**i] for i in range(3)])
    artifact["my_table"] = table
    wandb.log_artifact(artifact)

    # Retrieving an object:
    artifact = wandb.use_artifact("my_table:latest")
    table = artifact["my_table"]

    assert table is not None and table.data == [[0, 0, 1], [1, 2, 2], [2, 4, 4]]


def test_add_dir_add_file_new_file() -> None:
    artifact = wandb.Artifact("my_dataset", type="dataset")
    artifact.add_dir("path/to/dir", name="my_dir")
    artifact.add_file("path/to/file.txt", name="new_name.txt")
    with artifact.new_file("hello.txt") as f:
        f.write("hello!")

    with wandb.init() as run:
        run.log_artifact(artifact)

    logged = wandb.Api().artifact("my_dataset:latest")
    assert [f.name for f in logged.files()] == ["hello.txt", "my_dir/one.txt", "my_dir/sub/two.txt", "new_name.txt"]
    with pytest.raises(ArtifactFinalizedError):
        artifact.add_file("path/to/file.txt", name="late.txt")


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[str]:
    served = tmp_path / "served"
    served.mkdir()
    (served / "file.txt").write_bytes(b"served over http\n")
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_add_reference(http_root: str, workdir: Path) -> None:
    artifact = wandb.Artifact("my_refs", type="dataset")

    # Adding an HTTP link:
    # Adds `file.txt` to the root of the artifact as a reference.
    artifact.add_reference(f"{http_root}/file.txt")

    # Adding a local directory (file://) with an explicit name:
    artifact.add_reference(f"file://{workdir}/path/to/dir", name="path")

    with wandb.init() as run:
        run.log_artifact(artifact)

    logged = wandb.Api().artifact("my_refs:latest")
    root = logged.download()
    assert Path(root, "file.txt").read_bytes() == b"served over http\n"
    assert Path(root, "path", "sub", "two.txt").read_text() == "two\n"
    logged.verify(root)


def test_download_checkout_verify_file() -> None:
    log_example()
    artifact = wandb.Api().artifact("project/artifact:alias")

    path = artifact.download()
    assert path == os.path.abspath(os.path.join("artifacts", "artifact:v0"))
    artifact.verify()

    Path(path, "stray.txt").write_text("not in the artifact\n")
    with pytest.raises(ValueError):
        artifact.verify(path)
    artifact.checkout(path)
    artifact.verify(path)

    single = artifact.file()
    assert Path(single).read_text() == "a file\n"


def test_files_get_path_get_entry() -> None:
    log_example()
    artifact = wandb.Api().artifact("project/artifact:alias")

    for f in artifact.files():
        assert (f.name, f.size) == ("file.txt", 7) and f.md5

    entry = artifact.get_path("file.txt")
    local = entry.download()
    assert Path(local).read_text() == "a file\n"

    with pytest.raises(KeyError):
        artifact.get_entry("missing.txt")


def test_save_wait_json_encode_from_id_expected_type() -> None:
    artifact = wandb.Artifact("my_dataset", type="dataset")
    artifact.add_file("path/to/file.txt")
    artifact.save()
    artifact.wait()

    encoded = artifact.json_encode()
    assert encoded["_type"] == "artifactVersion" and encoded["version"] == "v0"
    assert encoded["sequenceName"] == "my_dataset"

    again = wandb.Artifact.from_id(artifact.id, wandb.Api())
    assert again is not None and again.qualified_name == "acme/project/my_dataset:v0"
    assert wandb.Artifact.expected_type(wandb.Api(), "my_dataset", "acme", "project") == "dataset"
    assert wandb.Artifact.expected_type(wandb.Api(), "nothing", "acme", "project") is None


def test_logged_by_and_used_by() -> None:
    run = wandb.init(job_type="producer")
    artifact = wandb.Artifact("my_dataset", type="dataset")
    artifact.add_file("path/to/file.txt")
    run.log_artifact(artifact)
    run.finish()

    consumer = wandb.init(job_type="consumer")
    artifact = consumer.use_artifact("my_dataset:latest")
    consumer.finish()

    assert artifact.logged_by().id == run.id
    assert [r.id for r in artifact.used_by()] == [consumer.id]


def test_link() -> None:
    log_example()
    artifact = wandb.Api().artifact("project/artifact:alias")

    linked = artifact.link("acme/model-registry/my-collection", aliases=["production"])

    assert linked.qualified_name.startswith("acme/model-registry/my-collection:")
    assert "production" in linked.aliases
    assert linked.is_link and linked.source_qualified_name == "acme/project/artifact:v0"
    assert not artifact.is_link


def test_errors_named_as_wandb() -> None:
    artifact = wandb.Artifact("draft", type="dataset")
    with pytest.raises(ArtifactNotLoggedError):
        artifact.get("anything")
    with pytest.raises(ArtifactNotLoggedError):
        artifact.get_path("anything")
    with pytest.raises(ArtifactNotLoggedError):
        artifact.logged_by()
    with pytest.raises(TypeError):  # W&B's other media types are declined clearly
        artifact.add(object(), "thing")
