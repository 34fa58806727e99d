"""Hostile input (issue 9, item 4): property tests of the parsers, and hostile manifests end to end.

* ``parse_ref``, ``check_entry_path`` and ``Manifest.loads``/``from_json`` are fed arbitrary text,
  JSON and bytes (hypothesis, bounded examples): each either returns something that satisfies
  the rules or raises its own error class; never another exception.
* Each hostile manifest (``../``, absolute paths, NUL, empty segments, drive letters, duplicate
  paths, a file and a directory with the same path, negative or huge sizes, non-JSON) is refused
  with a clear error by the parser, by the W&B backend, by a real mount of the W&B test server
  (the version answers EIO, nothing of it is listed, the rest of the mount still works) and by
  ``Artifact.download``/``checkout`` (nothing written, inside the root or out of it).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import posixpath
from pathlib import Path
from typing import Any

import pytest
from conftest import Mounter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artifactfs import Api
from artifactfs.errors import ArtifactFSError, InvalidPath, InvalidReference, ManifestError
from artifactfs.manifest import MAX_ENTRY_SIZE, Entry, Manifest, digest_bytes
from artifactfs.names import NAME_MAX, Ref, check_entry_path, parse_ref

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

# -- references -----------------------------------------------------------------------------------

NAME = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
TAG = st.one_of(
    st.integers(min_value=0, max_value=10**6).map(lambda n: f"v{n}"),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_.+-]{0,12}", fullmatch=True),
)


@FAST
@given(st.text(max_size=80))
def test_parse_ref_of_any_text_is_a_ref_or_invalid_reference(text: str) -> None:
    try:
        ref = parse_ref(text)
    except InvalidReference as exc:
        assert str(exc)
        return
    assert parse_ref(str(ref)) == ref  # what was accepted prints back to itself
    for part in (ref.entity, ref.project, ref.name):
        assert part and "/" not in part and ":" not in part and part not in (".", "..")


@FAST
@given(NAME, NAME, NAME, st.one_of(st.none(), TAG))
def test_well_formed_references_parse_to_their_parts(entity: str, project: str, name: str, tag: str | None) -> None:
    text = f"{entity}/{project}/{name}" + ("" if tag is None else f":{tag}")
    assert parse_ref(text) == Ref(entity, project, name, tag)


@FAST
@given(
    st.text(max_size=30), st.sampled_from(["/", ":", " ", "\x00", "\n", "\\"]), st.integers(min_value=0, max_value=2)
)
def test_references_with_a_stray_separator_are_refused(base: str, bad: str, where: int) -> None:
    if bad == ":" and where == 2:
        bad = "::"  # one colon there starts a tag
    parts = ["acme", "vision", "ds"]
    parts[where] = parts[where] + bad + base
    with pytest.raises(InvalidReference):
        parse_ref("/".join(parts))


# -- entry paths ----------------------------------------------------------------------------------

SEGMENT_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")
HOSTILE_SEGMENTS = st.sampled_from(["..", ".", "", "C:", "c:x", "a\\b", "\x00", "x" * 256, "é" * 128])


@FAST
@given(st.lists(st.one_of(st.text(SEGMENT_CHARS, max_size=8), HOSTILE_SEGMENTS), max_size=6).map("/".join))
def test_entry_paths_accepted_never_leave_the_root(path: str) -> None:
    try:
        check_entry_path(path)
    except InvalidPath as exc:
        assert "invalid entry path" in str(exc)
        return
    root = "/root/of/a/download"
    joined = posixpath.normpath(posixpath.join(root, path))
    assert joined.startswith(root + "/")
    segments = path.split("/")
    assert all(s not in ("", ".", "..") for s in segments)
    assert all(len(s.encode()) <= NAME_MAX for s in segments)
    assert "\x00" not in path and "\\" not in path and not path.startswith("/")
    assert not (len(path) >= 2 and path[1] == ":" and path[0].isascii() and path[0].isalpha())


@FAST
@given(st.text(max_size=300))
def test_any_text_as_an_entry_path_is_accepted_or_invalid_path(path: str) -> None:
    try:
        assert check_entry_path(path) == path
    except InvalidPath:
        pass


# -- manifests ------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
ENTRY_JSON = st.fixed_dictionaries(
    {"digest": st.one_of(st.just("1B2M2Y8AsgTpgAmY7PhCfg=="), st.text(max_size=30), JSON)},
    optional={"size": st.one_of(st.integers(), JSON), "ref": JSON, "extra": JSON, "birthArtifactID": JSON},
)
MANIFEST_JSON = st.fixed_dictionaries(
    {
        "version": st.one_of(st.just(1), JSON),
        "contents": st.one_of(st.dictionaries(st.text(max_size=20), st.one_of(ENTRY_JSON, JSON), max_size=5), JSON),
    },
    optional={"storagePolicy": JSON, "storagePolicyConfig": JSON},
)


def _check_parsed(manifest: Manifest) -> None:
    paths = set(manifest.entries)
    for path, entry in manifest.entries.items():
        assert check_entry_path(path) == path == entry.path
        assert 0 <= entry.size <= MAX_ENTRY_SIZE
        parent = path.rpartition("/")[0]
        while parent:
            assert parent not in paths
            parent = parent.rpartition("/")[0]


@FAST
@given(st.one_of(MANIFEST_JSON, JSON))
def test_any_json_is_a_sound_manifest_or_a_manifest_error(obj: Any) -> None:
    try:
        manifest = Manifest.from_json(obj)
    except (ManifestError, InvalidPath) as exc:
        assert str(exc)
        return
    _check_parsed(manifest)


@FAST
@given(st.one_of(st.binary(max_size=200), MANIFEST_JSON.map(lambda o: json.dumps(o).encode())))
def test_any_bytes_are_a_sound_manifest_or_a_manifest_error(data: bytes) -> None:
    try:
        manifest = Manifest.loads(data)
    except (ManifestError, InvalidPath) as exc:
        assert str(exc)
        return
    _check_parsed(manifest)


VALID_PATH = st.lists(
    st.text(st.characters(codec="utf-8", exclude_characters="/\\\x00"), min_size=1, max_size=8).filter(
        lambda s: s not in (".", "..") and not (len(s) >= 2 and s[1] == ":")
    ),
    min_size=1,
    max_size=4,
).map("/".join)


@FAST
@given(st.dictionaries(VALID_PATH, st.binary(max_size=50), min_size=1, max_size=8))
def test_manifests_round_trip_through_json(files: dict[str, bytes]) -> None:
    paths = sorted(files)
    files = {p: d for p, d in files.items() if not any(q.startswith(p + "/") for q in paths)}
    manifest = Manifest()
    for path, data in files.items():
        manifest.add(Entry(path, digest_bytes(data), len(data)))
    again = Manifest.loads(manifest.dumps())
    assert again.entries == manifest.entries
    assert again.digest() == manifest.digest()


# -- hostile manifests, named -----------------------------------------------------------------------

GOOD = {"digest": digest_bytes(b"hello\n"), "size": 6}


def doc(contents: dict[str, Any]) -> bytes:
    return json.dumps({"version": 1, "storagePolicy": "wandb-storage-policy-v1", "contents": contents}).encode()


HOSTILE: dict[str, tuple[bytes, str]] = {
    "dotdot": (doc({"../evil": GOOD}), "'..' segment"),
    "inner dotdot": (doc({"a/../../evil": GOOD}), "'..' segment"),
    "absolute": (doc({"/etc/passwd": GOOD}), "absolute"),
    "nul": (doc({"a\x00b": GOOD}), "NUL"),
    "empty segment": (doc({"a//b": GOOD}), "empty segment"),
    "trailing slash": (doc({"a/": GOOD}), "empty segment"),
    "drive letter": (doc({"C:evil": GOOD}), "drive letter"),
    "backslash": (doc({"a\\..\\..\\evil": GOOD}), "backslash"),
    "duplicate path": (
        b'{"version": 1, "contents": {"a": '
        + json.dumps(GOOD).encode()
        + b', "a": {"digest": "1B2M2Y8AsgTpgAmY7PhCfg==", "size": 0}}}',
        "duplicate key 'a'",
    ),
    "file and directory": (doc({"a": GOOD, "a/b": GOOD}), "both a file and a directory"),
    "negative size": (doc({"a": {**GOOD, "size": -1}}), "invalid size"),
    "huge size": (doc({"a": {**GOOD, "size": 2**64}}), "invalid size"),
    "non-JSON": (b"<html><body>502 Bad Gateway</body></html>", "not valid JSON"),
    "not an object": (b"[1, 2, 3]", "expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_manifest_is_refused_by_the_parsers(case: str) -> None:
    from artifactfs.registry.wandb import parse_manifest

    data, message = HOSTILE[case]
    with pytest.raises((ManifestError, InvalidPath), match=message):
        Manifest.loads(data)
    version: Any = type("V", (), {"digest": "", "digest_algorithm": "MANIFEST_MD5", "ref": "acme/vision/evil:v0"})()
    with pytest.raises((ManifestError, InvalidPath), match=message):
        parse_manifest(data, version)


def serve_manifest(server: Any, data: bytes) -> None:
    """Add ``acme/vision/evil`` with the manifest bytes ``data`` served verbatim, its files
    downloadable as usual (the test server builds its manifest from a dict; raw bytes go in
    where it keeps them)."""
    rec = server.add_artifact("acme", "vision", "evil", "dataset", {"a.txt": b"hello\n", "evil": b"hello\n"})
    rec.manifest_bytes = data
    server._blobs[hashlib.md5(data).hexdigest()] = data


@pytest.fixture
def wandb_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from wandb_server import WandbServer

    key = "b0a710ad" + "0" * 32
    for name in ("WANDB_BASE_URL", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    with WandbServer(api_key=key, viewer_entity="acme") as server:
        server.add_artifact("acme", "vision", "fine", "dataset", {"ok.txt": b"fine\n"})
        yield server


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_manifest_from_a_wandb_server_writes_nothing(wandb_server: Any, tmp_path: Path, case: str) -> None:
    data, message = HOSTILE[case]
    serve_manifest(wandb_server, data)
    work = tmp_path / "work"
    work.mkdir()
    before = _tree(tmp_path)
    with Api(f"wandb:{wandb_server.url}") as api:
        art = api.artifact("acme/vision/evil:latest")
        for method in ("download", "checkout"):
            with pytest.raises(ArtifactFSError) as info:
                getattr(art, method)(str(work / "root"))
            assert isinstance(info.value, (ManifestError, InvalidPath)), info.value
            assert message in str(info.value) or "manifest" in str(info.value)
    after = _tree(tmp_path)
    created = {p for p in after - before if not p.startswith(("wandb-cache", "work/root"))}
    assert created == set()
    assert not (work / "root").exists() or list((work / "root").rglob("*")) == []
    assert not (tmp_path.parent / "evil").exists() and not Path("/evil").exists()


@pytest.mark.fuse
@pytest.mark.allow_log(r"ERROR artifactfs\.ops: (readdir|lookup|opendir|getattr): (invalid entry path|manifest)")
@pytest.mark.parametrize(
    "case", ["dotdot", "absolute", "duplicate path", "file and directory", "huge size", "non-JSON"]
)
def test_hostile_manifest_mounts_nothing(mounter: Mounter, wandb_server: Any, case: str) -> None:
    data, message = HOSTILE[case]
    serve_manifest(wandb_server, data)
    m = mounter(f"wandb:{wandb_server.url}")  # type: ignore[arg-type]
    project = m.path / "acme" / "vision"
    assert "evil:v0" in os.listdir(project)  # the version exists; its manifest is what is refused
    with pytest.raises(OSError) as info:
        os.listdir(project / "evil:v0")
    assert info.value.errno in (errno.EIO, errno.EINVAL)  # ManifestError, InvalidPath
    with pytest.raises(OSError):
        (project / "evil:v0" / "a.txt").read_bytes()
    assert (project / "fine:v0" / "ok.txt").read_bytes() == b"fine\n"  # the rest still served
    assert message in m.log() or "manifest" in m.log()
    assert m.proc.poll() is None
