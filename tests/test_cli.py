"""The command line, run as a real process: ``python -m artifactfs ...``."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import b64md5, corrupt_table, write_tree

from artifactfs import Api, Artifact, defaults
from artifactfs.cli import build_parser, main
from artifactfs.errors import InvalidArgument, ReadOnly
from artifactfs.manifest import Entry, artifact_digest
from artifactfs.names import Ref
from artifactfs.options import MountConfig, daemon_argv, options, parse_mount_options
from artifactfs.registry import CollectionInfo, DirEntry, Registry, VersionInfo
from artifactfs.registry.local import LocalRegistry
from artifactfs.sources import BlobSource

COLL = "acme/vision/ds"
INFO_KEYS = {
    "id",
    "entity",
    "project",
    "name",
    "type",
    "version",
    "aliases",
    "digest",
    "commit_hash",
    "created_at",
    "updated_at",
    "description",
    "metadata",
    "size",
    "state",
    "file_count",
}

TREE0 = {"a.txt": b"hello\n", "sub/b.bin": b"\x00\x01\x02", "sub/deeper/c": b"c" * 1000, "empty": b""}
TREE1 = {"a.txt": b"hello again\n", "new/\u00fcnic\u00f8de file.txt": b"u"}


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("ARTIFACTFS_REGISTRY", "ARTIFACTFS_LOG_LEVEL", "ARTIFACTFS_CACHE_DIR"):
        env.pop(var, None)
    return env


def run(
    *args: str | os.PathLike[str], registry: Path | None = None, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "artifactfs", *map(str, args)]
    if registry is not None:
        argv += ["--registry", str(registry)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env or base_env(), timeout=120)
    if check:
        assert proc.returncode == 0, f"{argv} failed ({proc.returncode}): {proc.stderr}"
        assert "Traceback" not in proc.stderr
    return proc


def run_json(*args: str, registry: Path) -> Any:
    return json.loads(run(*args, "--json", registry=registry).stdout)


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout.rstrip("\n").splitlines()[-1]


def snapshot(root: Path) -> dict[str, Any]:
    """Everything a command could change: all metadata, every entry, every blob."""
    state: dict[str, Any] = {"exists": root.exists()}
    if not (root / "registry.sqlite").exists():
        return state
    reg = LocalRegistry(root)
    try:
        for entity in reg.entities():
            for project in reg.projects(entity):
                state[f"{entity}/{project}/aliases"] = sorted(reg.aliases(entity, project).items())
                for coll in reg.collections(entity, project):
                    state[f"{entity}/{project}/{coll.name}"] = coll
                    for v in reg.versions(entity, project, coll.name):
                        entries = sorted((e.path, e.digest, e.size) for e in reg.iter_entries(v))
                        state[str(v.ref)] = (v.to_json(), entries)
    finally:
        reg.close()
    objects = root / "objects"
    blobs = (p.relative_to(objects) for p in objects.rglob("*") if p.is_file())
    state["blobs"] = sorted(str(p) for p in blobs if p.parts[0] != "tmp")
    assert state["blobs"], "a populated registry has blobs"
    return state


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with acme/vision/ds v0 (alias best) and v1 (latest), made through the CLI."""
    base = tmp_path_factory.mktemp("populated")
    root = base / "registry"
    run(
        "log",
        write_tree(base / "src0", TREE0),
        COLL,
        "--type",
        "dataset",
        "--alias",
        "best",
        "--description",
        "first",
        "--metadata",
        '{"rows": 3}',
        registry=root,
    )
    run("log", write_tree(base / "src1", TREE1), COLL, "--type", "dataset", registry=root)
    return root


@pytest.fixture
def registry(populated: Path, tmp_path: Path) -> Path:
    """A private copy of the populated registry."""
    root = tmp_path / "registry"
    shutil.copytree(populated, root)
    return root


# -- log -----------------------------------------------------------------------------------------


def test_log(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    src = write_tree(tmp_path / "src", TREE0)
    proc = run(
        "log",
        src,
        COLL,
        "--type",
        "dataset",
        "--alias",
        "best",
        "--alias",
        "prod",
        "--description",
        "d \u2603",
        "--metadata",
        '{"rows": 3, "nested": {"k": [1, "\u00e9"]}}',
        registry=root,
    )
    assert last_line(proc) == "acme/vision/ds:v0"
    assert "4 files" in proc.stderr
    info = run_json("info", COLL, registry=root)
    assert info["aliases"] == ["latest", "best", "prod"]
    assert info["description"] == "d \u2603"
    assert info["metadata"] == {"rows": 3, "nested": {"k": [1, "\u00e9"]}}
    assert info["file_count"] == 4
    assert info["size"] == sum(len(d) for d in TREE0.values())
    assert info["digest"] == artifact_digest((p, b64md5(d)) for p, d in TREE0.items())

    # Identical content: no new version, but the new alias is applied.
    again = run("log", src, COLL, "--type", "dataset", "--alias", "again", registry=root)
    assert last_line(again) == "acme/vision/ds:v0"
    assert "no new version" in again.stderr
    assert run_json("info", f"{COLL}:again", registry=root)["version"] == "v0"

    # New content: v1, and the summary line is the last line of stdout.
    changed = write_tree(tmp_path / "src1", TREE1)
    assert last_line(run("log", changed, COLL, "--type", "dataset", registry=root)) == "acme/vision/ds:v1"
    assert last_line(run("log", src, "acme/vision/other", "--type", "model", registry=root)) == "acme/vision/other:v0"


def test_log_xxh128(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    src = write_tree(tmp_path / "src", TREE0)
    proc = run("log", src, COLL, "--type", "dataset", "--digest-algorithm", "xxh128", registry=root)
    assert last_line(proc) == "acme/vision/ds:v0"
    info = run_json("info", COLL, registry=root)
    assert info["digest_algorithm"] == "MANIFEST_XXH128"
    assert (root / "objects" / "xxh128").is_dir()


# -- info ----------------------------------------------------------------------------------------


def test_info_json(populated: Path) -> None:
    latest = run_json("info", COLL, registry=populated)
    assert set(latest) >= INFO_KEYS
    assert latest["version"] == "v1"
    assert (latest["entity"], latest["project"], latest["name"], latest["type"]) == ("acme", "vision", "ds", "dataset")
    assert latest["aliases"] == ["latest"]
    assert latest["state"] == "COMMITTED"
    assert latest["file_count"] == len(TREE1)
    assert latest["size"] == sum(len(d) for d in TREE1.values())
    assert latest["digest"] == artifact_digest((p, b64md5(d)) for p, d in TREE1.items())
    assert latest["description"] == ""
    assert latest["metadata"] == {}
    assert latest["created_at"].endswith("Z")
    assert latest["updated_at"] >= latest["created_at"]
    assert base64.b64decode(latest["id"]).startswith(b"Artifact:")

    v0 = run_json("info", f"{COLL}:v0", registry=populated)
    assert v0 == run_json("info", f"{COLL}:best", registry=populated)
    assert v0["version"] == "v0"
    assert v0["aliases"] == ["best"]
    assert v0["description"] == "first"
    assert v0["metadata"] == {"rows": 3}
    assert v0["id"] != latest["id"]
    assert v0["commit_hash"] != latest["commit_hash"]
    assert run_json("info", f"{COLL}:latest", registry=populated) == latest


def test_info_text(populated: Path) -> None:
    out = run("info", f"{COLL}:v0", registry=populated).stdout
    lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    assert set(lines) | {"description"} >= INFO_KEYS
    assert lines["version"] == "v0"
    assert json.loads(lines["aliases"]) == ["best"]
    assert json.loads(lines["metadata"]) == {"rows": 3}


# -- ls ------------------------------------------------------------------------------------------


def test_ls_levels(registry: Path, tmp_path: Path) -> None:
    run("log", write_tree(tmp_path / "m", {"w": b"weights"}), "acme/models/net", "--type", "model", registry=registry)
    run("log", write_tree(tmp_path / "o", {"x": b"x"}), "beta/p/thing", "--type", "dataset", registry=registry)

    assert run_json("ls", registry=registry) == ["acme", "beta"]
    assert run("ls", registry=registry).stdout.split() == ["acme", "beta"]
    assert run_json("ls", "acme", registry=registry) == ["models", "vision"]
    assert run_json("ls", "acme/", registry=registry) == ["models", "vision"]
    assert run("ls", "acme", registry=registry).stdout.split() == ["models", "vision"]
    assert run_json("ls", "acme/vision", registry=registry) == [{"name": "ds", "type": "dataset", "versions": 2}]
    text = run("ls", "acme/vision", registry=registry).stdout
    assert text.splitlines() == ["acme/vision/ds\tdataset\t2 versions"]

    versions = run_json("ls", COLL, registry=registry)
    assert [v["version"] for v in versions] == ["v0", "v1"]
    assert [v["aliases"] for v in versions] == [["best"], ["latest"]]
    assert all(set(v) >= INFO_KEYS for v in versions)
    lines = run("ls", COLL, registry=registry).stdout.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["acme/vision/ds:v0", "best"], ["acme/vision/ds:v1", "latest"]]
    assert [line.split("\t")[3] for line in lines] == [f"{len(TREE0)} files", f"{len(TREE1)} files"]


def test_ls_empty_registry(tmp_path: Path) -> None:
    LocalRegistry(tmp_path / "r", create=True).close()
    assert run_json("ls", registry=tmp_path / "r") == []
    assert run("ls", registry=tmp_path / "r").stdout == ""


# -- alias and delete ----------------------------------------------------------------------------


def test_alias_add_remove(registry: Path) -> None:
    proc = run("alias", "add", f"{COLL}:v1", "best", registry=registry)
    assert last_line(proc) == "acme/vision/ds:v1\tlatest,best"
    assert run_json("info", f"{COLL}:best", registry=registry)["version"] == "v1"
    assert run_json("info", f"{COLL}:v0", registry=registry)["aliases"] == []

    run("alias", "add", f"{COLL}:latest", "prod", registry=registry)
    assert run_json("info", f"{COLL}:v1", registry=registry)["aliases"] == ["latest", "best", "prod"]

    proc = run("alias", "remove", f"{COLL}:v1", "best", registry=registry)
    assert last_line(proc) == "acme/vision/ds:v1\tlatest,prod"
    assert run("info", f"{COLL}:best", registry=registry, check=False).returncode != 0


def test_delete(registry: Path, tmp_path: Path) -> None:
    refused = run("delete", f"{COLL}:v0", registry=registry, check=False)
    assert refused.returncode == 1
    assert "best" in refused.stderr
    assert [v["version"] for v in run_json("ls", COLL, registry=registry)] == ["v0", "v1"]

    proc = run("delete", f"{COLL}:best", "--delete-aliases", registry=registry)
    assert last_line(proc) == "deleted acme/vision/ds:v0"
    assert [v["version"] for v in run_json("ls", COLL, registry=registry)] == ["v1"]
    assert run("info", f"{COLL}:best", registry=registry, check=False).returncode == 1

    assert last_line(run("delete", f"{COLL}:latest", registry=registry)) == "deleted acme/vision/ds:v1"
    assert run_json("ls", COLL, registry=registry) == []
    assert run_json("ls", "acme/vision", registry=registry) == [{"name": "ds", "type": "dataset", "versions": 0}]
    # Indices are not reused.
    src = write_tree(tmp_path / "n", {"n": b"n"})
    assert last_line(run("log", src, COLL, "--type", "dataset", registry=registry)) == "acme/vision/ds:v2"


def test_delete_latest_moves_latest(registry: Path) -> None:
    run("delete", f"{COLL}:v1", registry=registry)
    assert run_json("info", COLL, registry=registry)["version"] == "v0"
    assert run_json("info", f"{COLL}:v0", registry=registry)["aliases"] == ["latest", "best"]


def _blob(root: Path, data: bytes) -> Path:
    hexd = hashlib.md5(data).hexdigest()
    return root / "objects" / "md5" / hexd[:2] / hexd[2:]


def test_gc_purges_deleted_versions_and_their_blobs(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    shared, only = b"in every version\n", [bytes([i]) * (5000 + i) for i in range(3)]
    for i in range(3):
        src = write_tree(tmp_path / f"s{i}", {"shared.txt": shared, f"only{i}.bin": only[i]})
        run("log", src, COLL, "--type", "dataset", registry=root)

    assert last_line(run("delete", f"{COLL}:v0", registry=root)) == "deleted acme/vision/ds:v0"
    # Gone for the CLI at once ...
    listed = [line.split("\t")[0] for line in run("ls", COLL, registry=root).stdout.splitlines()]
    assert listed == [f"{COLL}:v1", f"{COLL}:v2"]
    proc = run("info", f"{COLL}:v0", registry=root, check=False)
    assert proc.returncode == 1
    assert_one_line_error(proc, "v0")
    # ... but its content stays until gc (a mount may be reading it).
    assert _blob(root, only[0]).exists()

    proc = run("gc", "--grace", "0", registry=root)
    assert proc.stdout.splitlines() == ["purged 1 deleted versions, removed 1 unused blobs (4.9 KiB)"]
    assert not _blob(root, only[0]).exists()
    for data in (shared, only[1], only[2]):
        assert _blob(root, data).exists()

    # Default grace: the deleted version is purged, but no blob young enough to belong to a
    # log still running is removed.
    run("delete", f"{COLL}:v1", registry=root)
    proc = run("gc", registry=root)
    assert proc.stdout.splitlines() == ["purged 1 deleted versions, removed 0 unused blobs (0 B)"]
    for data in (shared, only[1], only[2]):
        assert _blob(root, data).exists()
    assert [v["version"] for v in run_json("ls", COLL, registry=root)] == ["v2"]
    out = tmp_path / "out"
    run("get", f"{COLL}:v2", "--root", str(out), registry=root)
    assert (out / "shared.txt").read_bytes() == shared and (out / "only2.bin").read_bytes() == only[2]


# -- environment ---------------------------------------------------------------------------------


def test_registry_from_environment(tmp_path: Path) -> None:
    env = base_env()
    env["ARTIFACTFS_REGISTRY"] = str(tmp_path / "from-env")
    env["HOME"] = str(tmp_path / "home")  # the default location must not be touched
    src = write_tree(tmp_path / "src", TREE0)
    assert last_line(run("log", src, COLL, "--type", "dataset", env=env)) == "acme/vision/ds:v0"
    assert (tmp_path / "from-env" / "registry.sqlite").is_file()
    assert not (tmp_path / "home").exists()
    assert json.loads(run("ls", "--json", env=env).stdout) == ["acme"]
    assert json.loads(run("info", COLL, "--json", env=env).stdout)["version"] == "v0"
    # --registry wins over the environment.
    other = tmp_path / "other"
    LocalRegistry(other, create=True).close()
    assert json.loads(run("ls", "--json", "--registry", str(other), env=env).stdout) == []


def test_version_flag() -> None:
    proc = run("--version")
    assert proc.stdout.startswith("artifactfs ")


# -- bad input -----------------------------------------------------------------------------------

SRC = "<src>"  # replaced by a real source directory

BAD_INPUT: list[tuple[str, list[str], str]] = [
    # (id, arguments, a word the one-line message must contain)
    ("ref-two-parts", ["info", "acme/vision"], "ENTITY/PROJECT/NAME"),
    ("ref-four-parts", ["info", "acme/vision/ds/x"], "ENTITY/PROJECT/NAME"),
    ("ref-bad-alias", ["info", "acme/vision/ds:not valid"], "invalid alias"),
    ("ref-double-colon", ["info", "acme/vision/ds:a:b"], "invalid alias"),
    ("ref-empty-tag", ["info", "acme/vision/ds:"], "invalid alias"),
    ("ref-bad-entity", ["info", "ac me/vision/ds"], "invalid entity"),
    ("unknown-entity", ["info", "nobody/vision/ds"], "nobody"),
    ("unknown-project", ["info", "acme/nothing/ds"], "nothing"),
    ("unknown-artifact", ["info", "acme/vision/nope"], "nope"),
    ("unknown-alias", ["info", "acme/vision/ds:nope"], "nope"),
    ("unknown-version", ["info", "acme/vision/ds:v99"], "v99"),
    ("ls-unknown-entity", ["ls", "nobody"], "nobody"),
    ("ls-unknown-project", ["ls", "acme/nothing"], "nothing"),
    ("ls-unknown-artifact", ["ls", "acme/vision/nope"], "nope"),
    ("ls-bad-prefix", ["ls", "a/b/c/d"], "invalid prefix"),
    ("log-missing-src", ["log", "<missing>", COLL, "--type", "dataset"], "missing"),
    ("log-src-is-file", ["log", "<file>", COLL, "--type", "dataset"], "not a directory"),
    ("log-bad-json", ["log", SRC, COLL, "--type", "dataset", "--metadata", "{not json"], "JSON"),
    ("log-json-list", ["log", SRC, COLL, "--type", "dataset", "--metadata", "[1, 2]"], "JSON object"),
    ("log-json-string", ["log", SRC, COLL, "--type", "dataset", "--metadata", '"text"'], "JSON object"),
    ("log-json-nan", ["log", SRC, COLL, "--type", "dataset", "--metadata", '{"x": NaN}'], "metadata"),
    ("log-type-conflict", ["log", SRC, COLL, "--type", "model", "--alias", "x"], "dataset"),
    ("log-bad-type", ["log", SRC, COLL, "--type", "bad type"], "type"),
    ("log-tag-in-ref", ["log", SRC, f"{COLL}:v1", "--type", "dataset"], "--alias"),
    ("log-bad-ref", ["log", SRC, "acme/ds", "--type", "dataset"], "ENTITY/PROJECT/NAME"),
    ("log-version-alias", ["log", SRC, COLL, "--type", "dataset", "--alias", "v3"], "v3"),
    ("log-bad-alias", ["log", SRC, COLL, "--type", "dataset", "--alias", "a/b"], "a/b"),
    ("alias-latest", ["alias", "add", f"{COLL}:v0", "latest"], "latest"),
    ("unalias-latest", ["alias", "remove", f"{COLL}:v1", "latest"], "latest"),
    ("alias-no-tag", ["alias", "add", COLL, "prod"], "ALIAS"),
    ("alias-version-name", ["alias", "add", f"{COLL}:v0", "v5"], "v5"),
    ("alias-missing-version", ["alias", "add", f"{COLL}:v9", "prod"], "v9"),
    ("unalias-missing", ["alias", "remove", f"{COLL}:v0", "nothere"], "nothere"),
    ("unalias-other-version", ["alias", "remove", f"{COLL}:v1", "best"], "best"),
    ("delete-with-alias", ["delete", f"{COLL}:v0"], "best"),
    ("delete-no-tag", ["delete", COLL], "ALIAS"),
    ("delete-missing", ["delete", f"{COLL}:v42"], "v42"),
    ("delete-unknown-alias", ["delete", f"{COLL}:nope", "--delete-aliases"], "nope"),
]


def _materialise(args: list[str], tmp_path: Path) -> list[str]:
    src = write_tree(tmp_path / "bad-src", {"x.txt": b"new content", "d/y": b"y"})
    (tmp_path / "a-file").write_bytes(b"x")
    mapping = {SRC: str(src), "<missing>": str(tmp_path / "missing"), "<file>": str(tmp_path / "a-file")}
    return [mapping.get(a, a) for a in args]


def assert_one_line_error(proc: subprocess.CompletedProcess[str], word: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {proc.stderr!r}"
    assert lines[0].startswith("artifactfs")
    assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert proc.stdout == ""


@pytest.mark.parametrize(("args", "word"), [pytest.param(a, w, id=i) for i, a, w in BAD_INPUT])
def test_bad_input(registry: Path, tmp_path: Path, args: list[str], word: str) -> None:
    argv = _materialise(args, tmp_path)
    before = snapshot(registry)
    proc = run(*argv, registry=registry, check=False)
    assert proc.returncode == 1
    assert_one_line_error(proc, word)
    assert snapshot(registry) == before  # every version's `info --json`, every entry, every blob


USAGE_ERRORS: list[tuple[str, list[str]]] = [
    ("no-command", []),
    ("unknown-command", ["frobnicate"]),
    ("log-no-type", ["log", SRC, COLL]),
    ("log-no-ref", ["log", SRC]),
    ("log-bad-algorithm", ["log", SRC, COLL, "--type", "dataset", "--digest-algorithm", "sha1"]),
    ("alias-bad-action", ["alias", "rename", f"{COLL}:v0", "x"]),
    ("info-unknown-flag", ["info", COLL, "--bogus"]),
    ("bad-log-level", ["ls", "--log-level", "LOUD"]),
]


@pytest.mark.parametrize("args", [pytest.param(a, id=i) for i, a in USAGE_ERRORS])
def test_usage_errors(registry: Path, tmp_path: Path, args: list[str]) -> None:
    argv = _materialise(args, tmp_path)
    before = snapshot(registry)
    proc = run(*argv, registry=registry, check=False) if argv else run(check=False)
    assert proc.returncode == 2
    assert_one_line_error(proc, "error")
    assert snapshot(registry) == before


@pytest.mark.parametrize(
    "command", [["info", COLL], ["ls"], ["alias", "add", f"{COLL}:v0", "x"], ["delete", f"{COLL}:v0"], ["gc"]]
)
def test_missing_registry_is_not_created(tmp_path: Path, command: list[str]) -> None:
    root = tmp_path / "no-registry"
    proc = run(*command, registry=root, check=False)
    assert_one_line_error(proc, "no registry")
    assert proc.returncode == 1
    assert not root.exists()


@pytest.mark.parametrize(
    ("case", "args"),
    [
        ("missing-src", ["log", "<missing>", COLL, "--type", "dataset"]),
        ("bad-json", ["log", SRC, COLL, "--type", "dataset", "--metadata", "{"]),
        ("bad-type", ["log", SRC, COLL, "--type", "bad type"]),
        ("bad-alias", ["log", SRC, COLL, "--type", "dataset", "--alias", "v1"]),
        ("nan-metadata", ["log", SRC, COLL, "--type", "dataset", "--metadata", '{"x": [NaN]}']),
        ("inf-metadata", ["log", SRC, COLL, "--type", "dataset", "--metadata", '{"x": 1e999}']),
        ("bad-ref", ["log", SRC, "acme/ds", "--type", "dataset"]),
    ],
)
def test_failed_first_log_creates_no_registry(tmp_path: Path, case: str, args: list[str]) -> None:
    root = tmp_path / "fresh"
    proc = run(*_materialise(args, tmp_path), registry=root, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert not root.exists(), f"a failed log ({case}) left a registry behind"


def test_corrupt_registry(tmp_path: Path) -> None:
    root = tmp_path / "corrupt"
    root.mkdir()
    (root / "registry.sqlite").write_bytes(b"this is not a database" * 100)
    for command in (["ls"], ["info", COLL], ["log", str(write_tree(tmp_path / "s", {"a": b"a"})), COLL, "--type", "t"]):
        proc = run(*command, registry=root, check=False)
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        assert "registry" in proc.stderr


def test_corrupt_registry_pages(registry: Path) -> None:
    """The database opens but a table's pages are garbage: ls and info fail in one line that
    names the registry database (sqlite3 errors are translated by the registry, not the CLI)."""
    corrupt_table(registry, "entities")
    for command in (["ls"], ["ls", "acme"], ["info", COLL]):
        proc = run(*command, registry=registry, check=False)
        assert proc.returncode == 1
        assert_one_line_error(proc, "registry")
        assert "malformed" in proc.stderr


# -- registry specs ------------------------------------------------------------------------------


class ReadOnlyView(Registry):
    """A registry that reads a local one and writes nothing: the base class refuses every write."""

    kind = "fake"

    def __init__(self, root: Path) -> None:
        self.inner = LocalRegistry(root)

    @property
    def spec(self) -> str:
        return "fake:" + self.inner.root

    def entities(self) -> list[str]:
        return self.inner.entities()

    def projects(self, entity: str) -> list[str]:
        return self.inner.projects(entity)

    def check_entity(self, entity: str) -> None:
        self.inner.check_entity(entity)

    def check_project(self, entity: str, project: str) -> None:
        self.inner.check_project(entity, project)

    def collections(self, entity: str, project: str) -> list[CollectionInfo]:
        return self.inner.collections(entity, project)

    def versions(self, entity: str, project: str, name: str) -> list[VersionInfo]:
        return self.inner.versions(entity, project, name)

    def project_versions(self, entity: str, project: str) -> list[VersionInfo]:
        return self.inner.project_versions(entity, project)

    def resolve(self, ref: Ref) -> VersionInfo:
        return self.inner.resolve(ref)

    def iter_entries(self, version: VersionInfo) -> Iterator[Entry]:
        return self.inner.iter_entries(version)

    def list_dir(self, version: VersionInfo, path: str) -> list[DirEntry]:
        return self.inner.list_dir(version, path)

    def get_entry(self, version: VersionInfo, path: str) -> DirEntry:
        return self.inner.get_entry(version, path)

    def blob_source(self, version: VersionInfo, entry: Entry) -> BlobSource:
        return self.inner.blob_source(version, entry)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def read_only(registry: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every registry spec opens a read-only view of ``registry``."""
    import artifactfs.client

    def fake_open(spec: str, *, create: bool = False, cache_dir: str | None = None) -> Registry:
        return ReadOnlyView(registry)

    monkeypatch.setattr(artifactfs.client, "open_registry", fake_open)
    return registry


READ_ONLY_WRITES: list[tuple[str, list[str], str]] = [
    ("log", ["log", SRC, COLL, "--type", "dataset"], "logging a new version"),
    ("alias-add", ["alias", "add", f"{COLL}:v1", "prod"], "adding an alias"),
    ("alias-remove", ["alias", "remove", f"{COLL}:v0", "best"], "removing an alias"),
    ("delete", ["delete", f"{COLL}:v1"], "deleting a version"),
    ("gc", ["gc", "--grace", "0"], "garbage collection"),
]


@pytest.mark.parametrize(("args", "what"), [pytest.param(a, w, id=i) for i, a, w in READ_ONLY_WRITES])
def test_writes_to_a_read_only_registry_fail_in_one_line(
    read_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], what: str
) -> None:
    before = snapshot(read_only)
    assert main([*_materialise(args, tmp_path), "--registry", "anything"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"artifactfs: error: {what}: the fake registry fake:{read_only} is read-only here"]
    assert snapshot(read_only) == before


def test_reads_of_a_read_only_registry(read_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls", "acme/vision", "--registry", "anything"]) == 0
    assert capsys.readouterr().out.splitlines() == ["acme/vision/ds\tdataset\t2 versions"]
    assert main(["get", f"{COLL}:best", "--root", str(tmp_path / "g"), "--registry", "anything"]) == 0
    assert (tmp_path / "g" / "a.txt").read_bytes() == TREE0["a.txt"]


def test_api_writes_to_a_read_only_registry(read_only: Path, tmp_path: Path) -> None:
    api = Api("anything")
    art = api.artifact(f"{COLL}:best")
    art.aliases.append("prod")
    with pytest.raises(ReadOnly, match="read-only here"):
        art.save()
    with pytest.raises(ReadOnly, match="read-only here"):
        art.delete(delete_aliases=True)
    new = Artifact("other", type="dataset")
    new.add_dir(write_tree(tmp_path / "n", {"n": b"n"}))
    with pytest.raises(ReadOnly, match="logging a new version"):
        api.log_artifact(new, "acme/vision")
    api.close()


@pytest.mark.parametrize(
    "spec",
    ["wandb:https://api:SECRETKEY@wandb.example.com", "wandb:https://wandb.example.com/?api_key=SECRETKEY"],
    ids=["userinfo", "query"],
)
@pytest.mark.parametrize("command", [["ls"], ["mount", "<spec>", "<mnt>"]], ids=["ls", "mount"])
def test_specs_with_credentials_are_refused(tmp_path: Path, spec: str, command: list[str]) -> None:
    """A key in the spec would reach the daemon's command line (ps shows it to every user):
    refused as a usage error that does not repeat it."""
    (tmp_path / "mnt").mkdir()
    args = [{"<spec>": spec, "<mnt>": str(tmp_path / "mnt")}.get(a, a) for a in command]
    argv = args if command[0] == "mount" else [*args, "--registry", spec]
    proc = run(*argv, check=False)
    assert proc.returncode == 2
    assert_one_line_error(proc, "WANDB_API_KEY")
    assert "SECRETKEY" not in proc.stderr


def test_registry_help_describes_the_spec_forms() -> None:
    for command in (["ls"], ["mount"]):
        text = " ".join(run(*command, "--help").stdout.split())
        assert "wandb:https://HOST[:PORT]" in text and "DIR" in text and "WANDB_API_KEY" in text, text


# -- mount options: one declaration --------------------------------------------------------------


def mount_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["mount", *argv])


def test_mount_options_come_from_one_declaration() -> None:
    ns = mount_args("REG", "MNT")
    names = [f.name for f in dataclasses.fields(MountConfig)]
    assert set(names) == set(vars(ns)) - {"func", "command"}
    assert [name for name, _ in options()] == names
    config = MountConfig.from_namespace(ns)
    # Defaults are those of defaults.py, as argparse gives them.
    assert config == MountConfig("REG", "MNT")
    assert (config.cache_size, config.alias_ttl, config.failure_backoff) == (
        defaults.CACHE_SIZE,
        defaults.ALIAS_TTL,
        defaults.FAILURE_BACKOFF,
    )
    assert (config.read_ahead_kb, config.local_blobs, config.log_level) == (
        defaults.READ_AHEAD_KB,
        defaults.LOCAL_BLOBS,
        defaults.MOUNT_LOG_LEVEL,
    )


NON_DEFAULT = [
    "--cache-dir", "/c", "--cache-size", "3G", "--alias-ttl", "2.5", "--allow-other", "--local-blobs", "copy",
    "--failure-backoff", "0.25", "--read-ahead-kb", "4096", "--log-level", "debug", "--pread-in-thread",
    "--warm", "off",
]  # fmt: skip


def test_daemon_argv_gives_the_daemon_the_same_config() -> None:
    config = MountConfig.from_namespace(mount_args("/reg", "/mnt", *NON_DEFAULT, "--log-file", "/l", "-f"))
    assert (config.cache_size, config.log_level, config.foreground) == (3 << 30, "DEBUG", True)
    argv = daemon_argv(config)
    again = MountConfig.from_namespace(mount_args(*argv))
    # Everything is forwarded except what the parent handles itself (its log file, foreground).
    assert dataclasses.replace(again, log_file="/l", foreground=True) == config
    assert "--log-file" not in argv and "--foreground" not in argv and "-f" not in argv
    # Defaults survive the trip too.
    plain = MountConfig("/reg", "/mnt")
    assert MountConfig.from_namespace(mount_args(*daemon_argv(plain))) == plain


def test_daemon_argv_never_carries_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The W&B key reaches the daemon through its environment (the backend reads
    WANDB_API_KEY or netrc), never through argv, which every user can read in ps."""
    key = "k" * 20 + "0123456789abcdef0123"
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("ARTIFACTFS_CACHE_DIR", "/c")
    for spec in ("wandb", "wandb:https://wandb.example.com:8443"):
        config = MountConfig.from_namespace(mount_args(spec, "/mnt", *NON_DEFAULT))
        argv = daemon_argv(config)
        assert argv[:2] == [spec, "/mnt"]
        assert not any(key in arg for arg in argv), argv


def test_parse_mount_options_gives_what_the_flags_give() -> None:
    from_o = parse_mount_options("cache_dir=/x,cache_size=10G,allow_other,ro")
    flags = vars(mount_args("REG", "MNT", "--cache-dir", "/x", "--cache-size", "10G", "--allow-other"))
    assert from_o == {name: flags[name] for name in from_o}
    assert from_o["cache_size"] == 10 << 30 and from_o["allow_other"] is True
    assert from_o["alias_ttl"] == defaults.ALIAS_TTL  # not named: the default

    every = (
        "cache-dir=/c,cache_size=3G,alias_ttl=2.5,allow_other,local_blobs=copy,failure_backoff=0.25,"
        "read_ahead_kb=4096,log_level=debug,log_file=/l,warm=off,noatime,nodev,nosuid,_netdev"
    )
    flags = vars(mount_args("REG", "MNT", *NON_DEFAULT, "--log-file", "/l"))
    parsed = parse_mount_options(every)
    assert parsed == {name: flags[name] for name in parsed}
    assert parsed["read_ahead_kb"] == 4096 and parsed["log_level"] == "DEBUG"
    config = MountConfig.from_mount_options("REG", "MNT", every)
    assert config == dataclasses.replace(
        MountConfig.from_namespace(mount_args("REG", "MNT", *NON_DEFAULT, "--log-file", "/l")), pread_in_thread=False
    )
    assert parse_mount_options("") == parse_mount_options("ro")


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("rw", "read-only"),
        ("cache_size=lots", "invalid size"),
        ("alias_ttl=-1", "alias_ttl"),
        ("read_ahead_kb=1.5", "read_ahead_kb"),
        ("local_blobs=move", "choose from"),
        ("log_level=LOUD", "log level"),
        ("allow_other=1", "takes no value"),
        ("cache_dir", "needs a value"),
        ("foreground", "unknown mount option"),
        ("ready_fd=3", "unknown mount option"),
        ("bogus=1", "unknown mount option"),
    ],
)
def test_parse_mount_options_refuses(text: str, word: str) -> None:
    with pytest.raises(InvalidArgument, match=word):
        parse_mount_options(f"cache_dir=/x,{text}")


@pytest.mark.parametrize(
    "args",
    [["--cache-size", "lots"], ["--alias-ttl", "soon"], ["--local-blobs", "move"], ["--log-level", "LOUD"]],
    ids=["size", "ttl", "choice", "level"],
)
def test_bad_mount_flags_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "mnt").mkdir()
    proc = run("mount", str(tmp_path / "reg"), str(tmp_path / "mnt"), *args, check=False)
    assert proc.returncode == 2
    assert_one_line_error(proc, "error")
    assert not (tmp_path / "reg").exists()


# -- wandb: specs (against the W&B-compatible server of tests/wandb_server.py) --------------------

WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def wandb_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """``(spec, environment)`` of a W&B server holding acme/vision/ds:v0 (alias best)."""
    from wandb_server import WandbServer

    env = {k: v for k, v in base_env().items() if not k.startswith("WANDB_")}
    env.update(WANDB_API_KEY=WANDB_KEY, NETRC=str(tmp_path / "no-netrc"), WANDB_CACHE_DIR=str(tmp_path / "sdk"))
    with WandbServer(api_key=WANDB_KEY, viewer_entity="acme") as server:
        server.add_artifact("acme", "vision", "ds", "dataset", TREE0, aliases=["best"])
        yield f"wandb:{server.url}", env


def test_wandb_spec_reads(wandb_server: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    spec, env = wandb_server
    assert run("ls", "acme/vision", "--registry", spec, env=env).stdout.splitlines() == [
        "acme/vision/ds\tdataset\t1 versions"
    ]
    info = json.loads(run("info", f"{COLL}:best", "--json", "--registry", spec, env=env).stdout)
    assert info["digest"] == artifact_digest((p, b64md5(d)) for p, d in TREE0.items())
    cache = tmp_path / "c"
    out = tmp_path / "out"
    run("get", f"{COLL}:best", "--root", str(out), "--registry", spec, "--cache-dir", str(cache), env=env)
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == TREE0
    # The remote backend kept its manifest in the cache directory, claimed first (mode 0700).
    assert (cache / "manifests").is_dir() and stat.S_IMODE(cache.stat().st_mode) == 0o700


# W&B takes alias edits and deletes (its mutations); it refuses only what it has no API for here.
@pytest.mark.parametrize(
    ("args", "what"), [pytest.param(a, w, id=i) for i, a, w in READ_ONLY_WRITES if i in ("log", "gc")]
)
def test_wandb_spec_writes_fail_in_one_line(
    wandb_server: tuple[str, dict[str, str]], tmp_path: Path, args: list[str], what: str
) -> None:
    spec, env = wandb_server
    proc = run(*_materialise(args, tmp_path), "--registry", spec, env=env, check=False)
    assert proc.returncode == 1
    assert_one_line_error(proc, f"{what}: the wandb registry {spec} is read-only here")
    assert WANDB_KEY not in proc.stderr


@pytest.mark.parametrize("args", [["info", "acme/vision/ds:v1"], ["ls", "acme/vision"], ["--help"]])
def test_a_reader_gone_away_ends_the_command_quietly(sample_registry: tuple[Path, Path], args: list[str]) -> None:
    """``artifactfs ... | head -1``: the reader closes the pipe; the command stops with no
    message (as other tools do) instead of 'error: Broken pipe' or a traceback at exit."""
    reg, _ = sample_registry
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        argv = [sys.executable, "-m", "artifactfs", *args, "--registry", str(reg)]
        proc = subprocess.run(argv, stdout=write_end, stderr=subprocess.PIPE, text=True, env=base_env(), timeout=120)
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode in (0, 1)
