"""Runs and lineage: the registry's tables (fresh and migrated), path resolution, the Python
run API (``init``, ``log_artifact``, ``use_artifact``), ``artifactfs info`` and the mount's
``user.artifact.logged_by``/``used_by`` attributes."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Mounter, run_cli, tables, user_version, write_tree

import artifactfs
import artifactfs.run as runs
from artifactfs.api import Api
from artifactfs.artifact import Artifact
from artifactfs.errors import (
    ArtifactNotFound,
    InvalidArgument,
    InvalidReference,
    ProjectNotFound,
    ReadOnly,
    RunNotActive,
    RunNotFound,
)
from artifactfs.names import (
    DEFAULT_PROJECT,
    parse_ref,
    resolve_artifact_path,
    resolve_project_path,
    resolve_run_path,
)
from artifactfs.registry.base import RunInfo
from artifactfs.registry.local import LINEAGE_VERSION, LocalRegistry

LINEAGE_TABLES = {"runs", "version_created_by", "version_used_by"}
RUN_ID = re.compile(r"[a-z0-9]{8}")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No W&B defaults from the environment, and no run left active by a test."""
    for name in ("WANDB_ENTITY", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    yield
    for active in runs.active():
        active.finish()
    assert runs.current_run() is None


def make_old_schema(root: Path) -> None:
    """Turn a registry into one made before runs existed: no lineage tables, user_version 0."""
    conn = sqlite3.connect(root / "registry.sqlite")
    try:
        for table in sorted(LINEAGE_TABLES):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("PRAGMA user_version = 0")
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "src", {"a.txt": b"alpha\n", "d/b.txt": b"beta\n"})


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[LocalRegistry]:
    r = LocalRegistry(tmp_path / "registry", create=True)
    yield r
    r.close()


# -- the registry ---------------------------------------------------------------------------------


def test_registry_runs_and_lineage(reg: LocalRegistry, src: Path, tmp_path: Path) -> None:
    assert tables(Path(reg.db_path)) >= LINEAGE_TABLES
    assert user_version(Path(reg.db_path)) == LINEAGE_VERSION

    train = reg.create_run("acme", "vision", name="train-1", job_type="train", config={"lr": 0.1})
    assert RUN_ID.fullmatch(train.id) and train.state == "running"
    assert (train.name, train.job_type, train.config) == ("train-1", "train", {"lr": 0.1})
    assert reg.projects("acme") == ["vision"]  # the run's project exists before anything is logged

    logged = reg.log_dir(src, parse_ref("acme/vision/ds"), type="dataset", run_id=train.id).version
    assert reg.logged_by(logged) == train
    assert reg.used_by(logged) == []

    evaluate = reg.create_run("acme", "vision", job_type="eval")
    assert evaluate.name == evaluate.id and evaluate.id != train.id
    reg.record_use(evaluate.id, logged)
    reg.record_use(evaluate.id, logged)  # once per run and version
    reg.record_use(train.id, logged)
    assert [r.id for r in reg.used_by(logged)] == [evaluate.id, train.id]

    assert [v.ref for v in reg.run_outputs(train)] == [logged.ref]
    assert [v.ref for v in reg.run_inputs(evaluate)] == [logged.ref]
    assert reg.run_outputs(evaluate) == []

    reg.finish_run(train)
    reg.finish_run(evaluate, "failed")
    reg.finish_run(evaluate, "finished")  # an ended run keeps its state
    assert [(r.id, r.state) for r in reg.runs("acme", "vision")] == [(train.id, "finished"), (evaluate.id, "failed")]
    assert reg.run("acme", "vision", train.id).state == "finished"

    with pytest.raises(RunNotFound):
        reg.run("acme", "other", train.id)  # ids are per project as W&B has them
    with pytest.raises(RunNotFound):
        reg.run("acme", "vision", "nosuchid")
    with pytest.raises(ProjectNotFound):
        reg.runs("acme", "nope")
    with pytest.raises(InvalidArgument):
        reg.finish_run(train, "done")
    with pytest.raises(InvalidArgument):
        reg.create_run("acme", "vision", config={"x": float("nan")})
    with pytest.raises(InvalidReference):
        reg.create_run("ac me", "vision")


def test_finish_stores_config(reg: LocalRegistry) -> None:
    run = reg.create_run("acme", "vision", config={"lr": 0.1})
    reg.finish_run(dataclasses.replace(run, config={"lr": 0.2, "epochs": 3}))
    assert reg.run("acme", "vision", run.id).config == {"lr": 0.2, "epochs": 3}


def test_log_with_unknown_run_changes_nothing(reg: LocalRegistry, src: Path) -> None:
    reg.create_run("acme", "vision")
    with pytest.raises(RunNotFound):
        reg.log_dir(src, parse_ref("acme/vision/ds"), type="dataset", run_id="zzzzzzzz")
    with pytest.raises(ArtifactNotFound):
        reg.resolve(parse_ref("acme/vision/ds:latest"))


def test_identical_content_logged_by_first_run(reg: LocalRegistry, src: Path) -> None:
    """A second run logging the same content makes no new version: the version stays logged by
    the first run, and the second run lists it among its outputs."""
    first = reg.create_run("acme", "vision")
    second = reg.create_run("acme", "vision")
    v0 = reg.log_dir(src, parse_ref("acme/vision/ds"), type="dataset", run_id=first.id)
    again = reg.log_dir(src, parse_ref("acme/vision/ds"), type="dataset", run_id=second.id)
    assert not again.created and again.version.id == v0.version.id
    assert reg.logged_by(v0.version) == first
    assert [v.id for v in reg.run_outputs(second)] == [v0.version.id]


def test_deleted_versions_leave_lineage_lists(reg: LocalRegistry, src: Path, tmp_path: Path) -> None:
    run = reg.create_run("acme", "vision")
    v0 = reg.log_dir(src, parse_ref("acme/vision/ds"), type="dataset", run_id=run.id).version
    other = write_tree(tmp_path / "other", {"c": b"c"})
    v1 = reg.log_dir(other, parse_ref("acme/vision/ds"), type="dataset", run_id=run.id).version
    reg.record_use(run.id, v0)
    reg.delete(v0.ref)
    assert [v.id for v in reg.run_outputs(run)] == [v1.id]
    assert reg.run_inputs(run) == []
    assert reg.logged_by(v0) == run  # a soft-deleted version still knows its run until gc
    reg.gc(grace=0)
    assert reg.logged_by(v0) is None and reg.used_by(v0) == []


def test_old_schema_registry(tmp_path: Path, src: Path) -> None:
    """A registry made before runs: opening and reading it writes nothing and finds no lineage;
    the first write that needs the tables creates them (in its own transaction)."""
    root = tmp_path / "registry"
    r = LocalRegistry(root, create=True)
    v0 = r.log_dir(src, parse_ref("acme/vision/ds"), type="dataset").version
    r.close()
    make_old_schema(root)
    db = root / "registry.sqlite"
    assert not tables(db) & LINEAGE_TABLES
    unknown = RunInfo("acme", "vision", "abcdefgh", "x", "", "running", 0, {})

    old = LocalRegistry(root)
    other = LocalRegistry(root)  # a second handle, opened before the upgrade
    try:
        assert old.logged_by(v0) is None and old.used_by(v0) == []
        assert old.runs("acme", "vision") == []
        assert old.run_inputs(unknown) == [] and old.run_outputs(unknown) == []
        with pytest.raises(RunNotFound):
            old.run("acme", "vision", "abcdefgh")
        with pytest.raises(RunNotFound):
            old.log_dir(src, parse_ref("acme/vision/ds"), type="dataset", run_id="abcdefgh")
        old.add_alias(v0.ref, "best")  # a write that needs no lineage does not upgrade
        assert user_version(db) == 0 and not tables(db) & LINEAGE_TABLES
        old.remove_alias(v0.ref, "best")

        # A lineage write that fails rolls the upgrade back with it.
        with pytest.raises(RunNotFound):
            old.record_use("abcdefgh", v0)
        assert user_version(db) == 0 and not tables(db) & LINEAGE_TABLES

        run = old.create_run("acme", "vision", job_type="train")
        assert user_version(db) == LINEAGE_VERSION and tables(db) >= LINEAGE_TABLES
        other.record_use(run.id, v0)  # the other handle sees the new tables
        assert [r.id for r in other.used_by(v0)] == [run.id]
        assert old.logged_by(v0) is None  # logged before runs existed
        v1 = old.log_dir(
            write_tree(tmp_path / "v1", {"x": b"x"}), parse_ref("acme/vision/ds"), type="dataset", run_id=run.id
        )
        assert other.logged_by(v1.version) == run
    finally:
        old.close()
        other.close()


def test_opening_old_registry_writes_nothing(tmp_path: Path, src: Path) -> None:
    root = tmp_path / "registry"
    r = LocalRegistry(root, create=True)
    v0 = r.log_dir(src, parse_ref("acme/vision/ds"), type="dataset").version
    r.close()
    make_old_schema(root)
    # The -shm index is shared memory that every WAL reader may write; the data is elsewhere.
    files = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file() and not p.name.endswith("-shm")}
    assert "registry.sqlite" in files
    r = LocalRegistry(root)
    try:
        assert r.logged_by(v0) is None and r.used_by(v0) == [] and r.runs("acme", "vision") == []
        r.default_entity()
    finally:
        r.close()
    after = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file() and p.name in files}
    assert after == files
    assert user_version(root / "registry.sqlite") == 0 and not tables(root / "registry.sqlite") & LINEAGE_TABLES


def test_read_only_old_registry_has_no_lineage(tmp_path: Path, src: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes any file")
    root = tmp_path / "registry"
    r = LocalRegistry(root, create=True)
    v0 = r.log_dir(src, parse_ref("acme/vision/ds"), type="dataset").version
    r.close()
    make_old_schema(root)
    for p in (root, *root.iterdir()):
        if p.name != "objects":
            p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        r = LocalRegistry(root)
        try:
            assert r.logged_by(v0) is None and r.used_by(v0) == []
        finally:
            r.close()
    finally:
        for p in (root, *root.iterdir()):
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_default_entity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, src: Path) -> None:
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOGNAME", "someone")
    r = LocalRegistry(tmp_path / "registry", create=True)
    try:
        assert r.default_entity() == "someone"  # empty: the OS user name
        r.log_dir(src, parse_ref("acme/vision/ds"), type="dataset")
        assert r.default_entity() == "acme"  # the only entity
        r.log_dir(src, parse_ref("other/vision/ds"), type="dataset")
        assert r.default_entity() == "someone"  # several: the OS user name again
        monkeypatch.setenv("LOGNAME", "not a name")
        assert r.default_entity() is None
    finally:
        r.close()


# -- path resolution ------------------------------------------------------------------------------


class Defaults:
    def __init__(self, entity: str | None) -> None:
        self.entity = entity
        self.asked = 0

    def default_entity(self) -> str | None:
        self.asked += 1
        return self.entity


def test_artifact_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Defaults("regent")
    full = resolve_artifact_path("e/p/ds:v1", entity="re", project="rp", registry_defaults=reg)
    assert str(full) == "e/p/ds:v1" and reg.asked == 0
    assert str(resolve_artifact_path("p/ds:best", entity="re", project="rp", registry_defaults=reg)) == "re/p/ds:best"
    assert str(resolve_artifact_path("ds:best", entity="re", project="rp", registry_defaults=reg)) == "re/rp/ds:best"
    assert reg.asked == 0  # the registry is asked only when nothing else names the entity
    # Run > environment > registry defaults, for entity and project separately.
    monkeypatch.setenv("WANDB_ENTITY", "envent")
    monkeypatch.setenv("WANDB_PROJECT", "envproj")
    assert str(resolve_artifact_path("ds", entity="re", registry_defaults=reg)) == "re/envproj/ds"
    assert str(resolve_artifact_path("ds", project="rp", registry_defaults=reg)) == "envent/rp/ds"
    monkeypatch.delenv("WANDB_ENTITY")
    monkeypatch.delenv("WANDB_PROJECT")
    assert str(resolve_artifact_path("ds:v0", registry_defaults=reg)) == f"regent/{DEFAULT_PROJECT}/ds:v0"
    assert reg.asked == 1
    monkeypatch.setenv("WANDB_ENTITY", "")  # empty is unset
    assert resolve_artifact_path("ds", registry_defaults=reg).entity == "regent"
    # Tags as parse_ref has them.
    assert resolve_artifact_path("ds", entity="e", project="p", default_tag="latest").tag == "latest"
    assert resolve_artifact_path("ds", entity="e", project="p").tag is None
    with pytest.raises(InvalidReference, match="NAME:ALIAS"):
        resolve_artifact_path("ds", entity="e", project="p", require_tag=True)


@pytest.mark.parametrize(
    ("text", "env", "registry_entity", "message"),
    [
        ("a/b/c/d", {}, "x", "expected"),
        ("ds", {}, None, "names no entity"),
        ("ds", {"WANDB_ENTITY": "bad name"}, "x", r"invalid entity \(from \$WANDB_ENTITY\) 'bad name'"),
        ("ds", {"WANDB_PROJECT": "bad/"}, "x", r"\$WANDB_PROJECT"),
        ("p/ds:not valid", {}, "x", "invalid alias"),
        ("/ds", {}, "x", "invalid project"),
        ("ds:", {}, "x", "invalid alias"),
    ],
)
def test_artifact_path_errors(
    monkeypatch: pytest.MonkeyPatch, text: str, env: dict[str, str], registry_entity: str | None, message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidReference, match=message):
        resolve_artifact_path(text, registry_defaults=Defaults(registry_entity))


def test_run_and_project_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Defaults("regent")
    for text in ("e/p/abc123", "e/p/runs/abc123", "/e/p/runs/abc123/", "e/p:abc123"):
        assert resolve_run_path(text, registry_defaults=reg) == ("e", "p", "abc123")
    assert resolve_run_path("p/abc123", entity="re", registry_defaults=reg) == ("re", "p", "abc123")
    assert resolve_run_path("p:abc123", registry_defaults=reg) == ("regent", "p", "abc123")
    assert resolve_run_path("abc123", entity="re", project="rp") == ("re", "rp", "abc123")
    monkeypatch.setenv("WANDB_PROJECT", "envproj")
    assert resolve_run_path("abc123", registry_defaults=reg) == ("regent", "envproj", "abc123")
    with pytest.raises(InvalidReference, match="run id"):
        resolve_run_path("e/p/bad id", registry_defaults=reg)
    with pytest.raises(InvalidReference, match="expected"):
        resolve_run_path("a/b/c/d/e", registry_defaults=reg)

    assert resolve_project_path("e/p") == ("e", "p")
    assert resolve_project_path("p", entity="re") == ("re", "p")
    assert resolve_project_path(None, registry_defaults=reg) == ("regent", "envproj")
    monkeypatch.delenv("WANDB_PROJECT")
    assert resolve_project_path("", entity="re") == ("re", DEFAULT_PROJECT)
    with pytest.raises(InvalidReference, match="expected"):
        resolve_project_path("a/b/c")
    with pytest.raises(InvalidReference, match="names no entity"):
        resolve_project_path("p", registry_defaults=Defaults(None))


# -- the Python run API ---------------------------------------------------------------------------


def test_init_context_manager_log_and_use(tmp_path: Path, src: Path) -> None:
    registry = tmp_path / "registry"  # does not exist yet: init() creates it, as wandb.init does
    with runs.init("acme", "vision", name="prep", job_type="preprocess", config={"n": 2}, registry=registry) as prep:
        assert runs.current_run() is prep
        assert RUN_ID.fullmatch(prep.id) and (prep.name, prep.job_type, prep.state) == ("prep", "preprocess", "running")
        assert prep.path == ["acme", "vision", prep.id] and prep.config == {"n": 2}
        art = Artifact("ds", type="dataset")
        art.add_dir(str(src))
        logged = prep.log_artifact(art, aliases=["best"])
        assert logged.qualified_name == "acme/vision/ds:v0" and "best" in logged.aliases
        prep.config["rows"] = 2  # stored when the run finishes
    assert runs.current_run() is None and prep.state == "finished"

    with runs.init("acme", "vision", job_type="train", registry=registry) as train:
        used = train.use_artifact("ds:best")  # a short path: the run's entity and project
        assert used.qualified_name == "acme/vision/ds:v0"
        again = train.use_artifact("vision/ds")  # default alias latest; recorded once
        assert again.id == used.id
        model_dir = write_tree(tmp_path / "model", {"w.bin": b"\x01" * 100})
        model = train.log_artifact(str(model_dir), type="model")  # a path: named after the run
        assert model.name == f"run-{train.id}-model:v0" and model.type == "model"
        file_art = train.log_artifact(str(model_dir / "w.bin"), name="weights")
        assert (file_art.name, file_art.type) == ("weights:v0", "unspecified")

    api = Api(str(registry))
    try:
        ds = api.artifact("acme/vision/ds:v0")
        creator = ds.logged_by()
        assert creator is not None and (creator.id, creator.name, creator.state) == (prep.id, "prep", "finished")
        assert creator.config == {"n": 2, "rows": 2}
        assert [r.id for r in ds.used_by()] == [train.id]
        assert [a.qualified_name for a in train.logged_artifacts()] == [
            f"acme/vision/run-{train.id}-model:v0",
            "acme/vision/weights:v0",
        ]
        assert [a.qualified_name for a in train.used_artifacts()] == ["acme/vision/ds:v0"]
        assert [a.qualified_name for a in prep.logged_artifacts()] == ["acme/vision/ds:v0"]
        assert prep.used_artifacts() == []

        listed = api.runs("acme/vision")
        assert [(r.id, r.job_type, r.state) for r in listed] == [
            (prep.id, "preprocess", "finished"),
            (train.id, "train", "finished"),
        ]
        fetched = api.run(f"acme/vision/{train.id}")
        assert (fetched.id, fetched.entity, fetched.project) == (train.id, "acme", "vision")
        assert [a.qualified_name for a in fetched.used_artifacts()] == ["acme/vision/ds:v0"]
        with pytest.raises(RunNotFound):
            api.run("acme/vision/zzzzzzzz")
    finally:
        api.close()


def test_failed_run_and_finished_run(tmp_path: Path, src: Path) -> None:
    registry = tmp_path / "registry"
    with pytest.raises(RuntimeError, match="boom"), runs.init("acme", "vision", registry=registry) as failing:
        raise RuntimeError("boom")
    assert failing.state == "failed" and runs.current_run() is None
    with pytest.raises(RunNotActive, match="has finished"):
        failing.log_artifact(str(src), type="dataset")
    with pytest.raises(RunNotActive, match="has finished"):
        failing.use_artifact("ds:latest")
    failing.finish()  # again: nothing changes
    api = Api(str(registry))
    try:
        assert api.run(f"acme/vision/{failing.id}").state == "failed"
    finally:
        api.close()

    plain = runs.init("acme", "vision", registry=registry)
    plain.finish(exit_code=2)
    assert plain.state == "failed"
    explicit = runs.init("acme", "vision", registry=registry)
    runs.finish()
    assert explicit.state == "finished" and runs.current_run() is None
    runs.finish()  # no current run: nothing to do, as wandb.finish()


def test_module_level_functions(tmp_path: Path, src: Path) -> None:
    with pytest.raises(RunNotActive, match=r"init\(\) before artifactfs.log_artifact"):
        runs.log_artifact(str(src), type="dataset")
    with pytest.raises(RunNotActive, match=r"init\(\) before artifactfs.use_artifact"):
        runs.use_artifact("ds:latest")
    current = artifactfs.init("acme", "vision", registry=tmp_path / "registry")
    assert artifactfs.current_run() is current
    logged = artifactfs.log_artifact(str(src), name="ds", type="dataset")
    assert artifactfs.use_artifact("ds:v0").id == logged.id
    assert [a.id for a in current.logged_artifacts()] == [logged.id]
    assert [a.id for a in current.used_artifacts()] == [logged.id]
    artifactfs.finish()
    assert artifactfs.current_run() is None and current.state == "finished"


def test_reinit(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    first = runs.init("acme", "vision", registry=registry)
    assert runs.init("acme", "other", registry=registry) is first  # wandb's default outside notebooks
    parallel = runs.init("acme", "vision", registry=registry, reinit="create_new")
    assert parallel is not first and runs.current_run() is first
    replacement = runs.init("acme", "vision", registry=registry, reinit="finish_previous")
    assert first.state == parallel.state == "finished" and runs.current_run() is replacement
    replacement.finish()
    with pytest.raises(InvalidArgument, match="reinit"):
        runs.init(registry=registry, reinit="sometimes")  # type: ignore[arg-type]


def test_use_a_new_artifact_logs_it_first(tmp_path: Path, src: Path) -> None:
    with runs.init("acme", "vision", registry=tmp_path / "registry") as run:
        art = Artifact("ds", type="dataset")
        art.add_dir(str(src))
        used = run.use_artifact(art, aliases=["input"])
        assert used.qualified_name == "acme/vision/ds:v0" and "input" in used.aliases
        assert [a.id for a in run.logged_artifacts()] == [a.id for a in run.used_artifacts()] == [used.id]
        with pytest.raises(ValueError, match="type 'dataset', not 'model'"):  # as wandb
            run.use_artifact("ds:v0", type="model")
        with pytest.raises(ValueError, match="not a file, a directory"):
            run.log_artifact(str(tmp_path / "missing"), type="dataset")
        with pytest.raises(ArtifactNotFound):
            run.use_artifact("ds:v9")


def test_artifact_from_another_registry_is_refused(tmp_path: Path, src: Path) -> None:
    other_api = Api(str(tmp_path / "other"))
    try:
        with runs.init("acme", "vision", registry=tmp_path / "other") as writer:
            writer.log_artifact(str(src), name="ds", type="dataset")
            writer.log_artifact(str(src / "a.txt"), name="ds", type="dataset")
        foreign = other_api.artifact("acme/vision/ds:v0")
        with runs.init("acme", "vision", registry=tmp_path / "mine") as run:
            run.log_artifact(str(src / "d"), name="ds", type="dataset")  # another content at ds:v0
            with pytest.raises(InvalidArgument, match="not in the run's registry"):
                run.use_artifact(foreign)
    finally:
        other_api.close()


def test_init_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, src: Path) -> None:
    registry = tmp_path / "registry"
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOGNAME", "osuser")
    with runs.init(registry=registry) as run:  # empty registry: OS user, "uncategorized"
        assert (run.entity, run.project) == ("osuser", DEFAULT_PROJECT)
    monkeypatch.setenv("WANDB_ENTITY", "envent")
    monkeypatch.setenv("WANDB_PROJECT", "envproj")
    with runs.init(registry=registry) as run:
        assert (run.entity, run.project) == ("envent", "envproj")
        logged = run.log_artifact(str(src), name="ds", type="dataset")
        assert logged.qualified_name == "envent/envproj/ds:v0"
    with runs.init("given", registry=registry) as run:  # arguments beat the environment
        assert (run.entity, run.project) == ("given", "envproj")
        assert run.use_artifact("envent/envproj/ds").id == logged.id
        with pytest.raises(ArtifactNotFound):
            run.use_artifact("ds")  # the run's own entity and project: given/envproj has no ds
    monkeypatch.setenv("WANDB_ENTITY", "bad name")
    with pytest.raises(InvalidReference, match="WANDB_ENTITY"):
        runs.init(registry=registry)


def test_init_on_wandb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wandb_server import WandbServer

    key = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with WandbServer(api_key=key, viewer_entity="acme") as server:
        with pytest.raises(ReadOnly, match=r"creating a run: the wandb registry .* is read-only") as err:
            runs.init("acme", "vision", registry=f"wandb:{server.url}")
        assert key not in str(err.value)
    assert runs.current_run() is None


def test_run_left_active_finishes_at_exit(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    script = textwrap.dedent(
        """
        import sys
        import artifactfs
        run = artifactfs.init("acme", "vision", registry=sys.argv[1])
        print(run.id, flush=True)
        if sys.argv[2] == "raise":
            raise RuntimeError("the script failed")
        """
    )
    ok = subprocess.run([sys.executable, "-c", script, str(registry), "ok"], capture_output=True, text=True, timeout=60)
    bad = subprocess.run(
        [sys.executable, "-c", script, str(registry), "raise"], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    assert bad.returncode == 1 and "the script failed" in bad.stderr
    r = LocalRegistry(registry)
    try:
        states = {run.id: run.state for run in r.runs("acme", "vision")}
    finally:
        r.close()
    assert states == {ok.stdout.strip(): "finished", bad.stdout.strip(): "failed"}


@pytest.mark.parametrize("old_schema", [False, True], ids=["fresh", "old-schema"])
def test_concurrent_runs_log_into_one_collection(tmp_path: Path, old_schema: bool) -> None:
    """Processes with a run each log into the same collection at once: every version gets its
    own number and its own run, and each run lists exactly what it logged.  On a registry made
    before runs, the processes race to add the lineage tables: one does, in its transaction."""
    registry = tmp_path / "registry"
    LocalRegistry(registry, create=True).close()
    if old_schema:
        make_old_schema(registry)
    script = textwrap.dedent(
        """
        import os, sys
        import artifactfs
        registry, worker, root = sys.argv[1], sys.argv[2], sys.argv[3]
        with artifactfs.init("acme", "vision", job_type="w" + worker, registry=registry) as run:
            for i in range(4):
                path = os.path.join(root, f"{worker}-{i}.txt")
                with open(path, "w") as f:
                    f.write(f"worker {worker} item {i}\\n")
                art = artifactfs.Artifact("shared", type="dataset")
                art.add_file(path)
                run.log_artifact(art)
                run.use_artifact("shared:latest")
            print(run.id)
        """
    )
    root = tmp_path / "files"
    root.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(registry), str(w), str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    ids = {}
    for w, proc in enumerate(procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        ids[f"w{w}"] = out.strip()
    r = LocalRegistry(registry)
    try:
        versions = r.versions("acme", "vision", "shared")
        assert [v.version_index for v in versions] == list(range(16))
        by_job = {run.job_type: run for run in r.runs("acme", "vision")}
        assert {job: run.id for job, run in by_job.items()} == ids
        for run in by_job.values():
            outputs = r.run_outputs(run)
            assert len(outputs) == 4 and all(r.logged_by(v) == run for v in outputs)
            assert run.state == "finished" and len(r.run_inputs(run)) >= 1
        assert {r.logged_by(v).id for v in versions} == set(ids.values())  # type: ignore[union-attr]
        assert user_version(registry / "registry.sqlite") == LINEAGE_VERSION
    finally:
        r.close()


# -- artifactfs info and the mount ----------------------------------------------------------------


@pytest.fixture
def lineage_registry(tmp_path: Path, src: Path) -> tuple[Path, str, list[str]]:
    """acme/vision/ds:v0 logged by one run and used by two; ds:v1 logged without a run."""
    registry = tmp_path / "registry"
    with runs.init("acme", "vision", job_type="prep", registry=registry) as prep:
        prep.log_artifact(str(src), name="ds", type="dataset")
    users = []
    for job in ("train", "eval"):
        with runs.init("acme", "vision", job_type=job, registry=registry) as user:
            user.use_artifact("ds:v0")
            users.append(user.id)
    r = LocalRegistry(registry)
    try:
        r.log_dir(src / "d", parse_ref("acme/vision/ds"), type="dataset")
    finally:
        r.close()
    return registry, prep.id, users


def test_info_shows_lineage(lineage_registry: tuple[Path, str, list[str]]) -> None:
    registry, prep, users = lineage_registry
    text = run_cli("info", "acme/vision/ds:v0", "--registry", str(registry)).stdout
    lines = dict(line.split(": ", 1) for line in text.splitlines())
    assert lines["logged_by"] == f"acme/vision/{prep}"
    assert lines["used_by"] == ", ".join(f"acme/vision/{u}" for u in users)
    data = json.loads(run_cli("info", "acme/vision/ds:v0", "--json", "--registry", str(registry)).stdout)
    assert data["logged_by"]["id"] == prep and data["logged_by"]["job_type"] == "prep"
    assert data["logged_by"]["state"] == "finished" and data["logged_by"]["created_at"].endswith("Z")
    assert [(u["id"], u["job_type"]) for u in data["used_by"]] == list(zip(users, ("train", "eval"), strict=True))

    text = run_cli("info", "acme/vision/ds:v1", "--registry", str(registry)).stdout
    lines = dict(line.split(": ", 1) for line in text.splitlines())
    assert (lines["logged_by"], lines["used_by"]) == ("-", "-")
    data = json.loads(run_cli("info", "acme/vision/ds:v1", "--json", "--registry", str(registry)).stdout)
    assert data["logged_by"] is None and data["used_by"] == []


def test_info_of_old_registry(tmp_path: Path, src: Path) -> None:
    root = tmp_path / "registry"
    r = LocalRegistry(root, create=True)
    r.log_dir(src, parse_ref("acme/vision/ds"), type="dataset")
    r.close()
    make_old_schema(root)
    data = json.loads(run_cli("info", "acme/vision/ds", "--json", "--registry", str(root)).stdout)
    assert data["logged_by"] is None and data["used_by"] == []
    assert user_version(root / "registry.sqlite") == 0


@pytest.mark.fuse
def test_mount_lineage_xattrs(mounter: Mounter, lineage_registry: tuple[Path, str, list[str]]) -> None:
    registry, prep, users = lineage_registry
    mount = mounter(registry)
    v0 = mount.path / "acme" / "vision" / "ds:v0"

    def getfattr(path: Path, name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["getfattr", "--only-values", "-n", name, str(path)], capture_output=True, text=True, timeout=30
        )

    assert getfattr(v0, "user.artifact.logged_by").stdout == f"acme/vision/{prep}"
    assert getfattr(v0, "user.artifact.used_by").stdout == ",".join(f"acme/vision/{u}" for u in users)
    assert os.getxattr(mount.path / "acme" / "vision" / "ds:latest", "user.artifact.version") == b"v1"
    listed = os.listxattr(v0)
    assert "user.artifact.logged_by" in listed and "user.artifact.used_by" in listed

    v1 = mount.path / "acme" / "vision" / "ds:v1"
    missing = getfattr(v1, "user.artifact.logged_by")
    assert missing.returncode != 0 and "No such attribute" in missing.stderr
    assert "user.artifact.logged_by" not in os.listxattr(v1)

    # A use recorded while mounted shows within the TTL (a local registry is asked every time).
    with runs.init("acme", "vision", job_type="late", registry=registry) as late:
        late.use_artifact("ds:v1")
    assert getfattr(v1, "user.artifact.used_by").stdout == f"acme/vision/{late.id}"


@pytest.mark.fuse
def test_wandb_mount_lineage_xattrs(mounter: Mounter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over W&B the attributes come from the backend's lineage queries, asked in a worker thread
    and kept for --alias-ttl: a second getfattr asks the server nothing."""
    from wandb_server import WandbServer

    key = "f00dfeedc0ffee0123456789abcdef0123456789"
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    with WandbServer(api_key=key, viewer_entity="acme") as server:
        server.add_run("acme", "vision", "maker001", job_type="train")
        for user in ("user0001", "user0002"):
            server.add_run("acme", "vision", user, job_type="eval")
        server.add_artifact(
            "acme", "vision", "ds", "dataset", {"a.txt": b"a\n"}, run="maker001", used_by=["user0001", "user0002"]
        )
        mount = mounter(f"wandb:{server.url}", "--alias-ttl", "600")  # type: ignore[arg-type]
        v0 = mount.path / "acme" / "vision" / "ds:v0"
        assert os.getxattr(v0, "user.artifact.logged_by") == b"acme/vision/maker001"
        assert os.getxattr(v0, "user.artifact.used_by") == b"acme/vision/user0001,acme/vision/user0002"
        asked = len(server.operations("ArtifactCreatedBy")), len(server.operations("ArtifactUsedBy"))
        assert asked == (1, 1)
        assert "user.artifact.logged_by" in os.listxattr(v0)
        assert os.getxattr(v0, "user.artifact.version") == b"v0"
        assert (len(server.operations("ArtifactCreatedBy")), len(server.operations("ArtifactUsedBy"))) == asked


def test_tree_leaves_lineage_out_when_it_cannot_be_read(
    tmp_path: Path, src: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A lineage table that cannot be read (a corrupt page) costs the two lineage attributes,
    logged, not every attribute of the version."""
    import trio
    from conftest import corrupt_table

    from artifactfs.tree import Tree

    registry = tmp_path / "registry"
    with runs.init("acme", "vision", registry=registry) as run:
        run.log_artifact(str(src), name="ds", type="dataset")
    reg = LocalRegistry(registry)

    async def version_attrs() -> dict[str, bytes]:
        tree = Tree(reg, uid=0, gid=0)
        node = tree.node(1)
        for name in ("acme", "vision", "ds:v0"):
            node = await tree.lookup(node.inode, name)
        return await tree.xattrs(node)

    try:
        assert trio.run(version_attrs)["user.artifact.logged_by"] == f"acme/vision/{run.id}".encode()
    finally:
        reg.close()
    corrupt_table(registry, "version_created_by")
    reg = LocalRegistry(registry)
    try:
        attrs = trio.run(version_attrs)
    finally:
        reg.close()
    assert attrs["user.artifact.version"] == b"v0"
    assert "user.artifact.logged_by" not in attrs and "user.artifact.used_by" not in attrs
    assert any("lineage of acme/vision/ds:v0 is unknown" in r.getMessage() for r in caplog.records)
