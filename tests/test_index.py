"""The on-disk manifest index (artifactfs/index.py): built streaming, checked before use,
answered in place; and what a remote registry keeps (registry/remote.py)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Mounter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artifactfs.errors import InvalidPath, ManifestError
from artifactfs.index import ManifestIndex, build_index, find_index, index_key, open_index
from artifactfs.manifest import XXH128, Entry, Manifest, digest_bytes

D1 = digest_bytes(b"one")
D2 = digest_bytes(b"two")


def write_manifest(path: Path, contents: dict[str, Any], **top: Any) -> Path:
    doc = {"version": 1, "storagePolicy": "wandb-storage-policy-v1", "storagePolicyConfig": {"storageLayout": "V2"}}
    doc.update(top)
    doc["contents"] = contents
    path.write_text(json.dumps(doc))
    return path


def build(tmp_path: Path, contents: dict[str, Any], digest: str | None = None, **kw: Any) -> ManifestIndex:
    src = write_manifest(tmp_path / "m.json", contents)
    out = tmp_path / "idx"
    out.mkdir(exist_ok=True)
    if digest is None:
        digest = Manifest.from_json(json.loads(src.read_text())).digest()
    build_index(str(src), str(out), "k", expect_digest=digest, **kw)
    index = open_index(str(out), "k", digest)
    assert index is not None
    return index


def listing(index: ManifestIndex, path: str) -> list[tuple[str, bool]]:
    children = index.list_dir(path)
    assert children is not None
    return [(c.name, c.entry is None) for c in children]


def test_lookups_listings_and_stat(tmp_path: Path) -> None:
    contents = {
        "b.txt": {"digest": D1, "size": 3},
        "a/x.bin": {"digest": D2, "size": 3, "extra": {"k": [1, 2]}},
        "a/y/z.txt": {"digest": D1, "size": 3, "birthArtifactID": "QXJ0aWZhY3Q6MQ=="},
        "ref.csv": {"digest": "etag-1", "ref": "s3://bucket/ref.csv", "size": 10},
    }
    index = build(tmp_path, contents)
    assert index.count == 4 and index.size == 19
    assert listing(index, "") == [("a", True), ("b.txt", False), ("ref.csv", False)]
    assert listing(index, "a") == [("x.bin", False), ("y", True)]
    got = index.get("a/y/z.txt")
    assert got is not None and got.entry == Entry("a/y/z.txt", D1, 3, None, "QXJ0aWZhY3Q6MQ==", {})
    x = index.get("a/x.bin")
    assert x is not None and x.entry is not None and x.entry.extra == {"k": [1, 2]}
    ref = index.get("ref.csv")
    assert ref is not None and ref.entry is not None and ref.entry.ref == "s3://bucket/ref.csv"
    assert index.get("a") is not None and index.get("a").entry is None  # type: ignore[union-attr]
    for missing in ("nope", "a/nope", "/b.txt", "a/", "a//x.bin", "../b.txt", "b.txt/c"):
        assert index.get(missing) is None, missing
    assert index.list_dir("b.txt") is None and index.list_dir("nope") is None
    # readdir offsets: the children after a name, a page at a time
    assert [c.name for c in index.list_dir("", after="a", limit=1) or []] == ["b.txt"]
    assert [c.name for c in index.list_dir("", after="b.txt") or []] == ["ref.csv"]
    assert [e.path for e in index.following("a/x.bin", 5)] == []  # y is a directory
    assert sorted(e.path for e in index.iter_entries()) == sorted(contents)
    assert index.storage_policy_config == {"storageLayout": "V2"}


def test_a_digest_that_does_not_match_is_refused_and_nothing_kept(tmp_path: Path) -> None:
    src = write_manifest(tmp_path / "m.json", {"a": {"digest": D1, "size": 3}})
    (tmp_path / "idx").mkdir()
    with pytest.raises(ManifestError, match="does not match the artifact digest"):
        build_index(str(src), str(tmp_path / "idx"), "k", expect_digest="0" * 32)
    assert os.listdir(tmp_path / "idx") == []


def doc(contents: dict[str, Any]) -> str:
    return json.dumps({"version": 1, "contents": contents})


HOSTILE: dict[str, tuple[str, str]] = {
    "duplicate path": (doc({"a": {"digest": D1}}).replace("}}}", f'}}, "a": {{"digest": "{D2}"}}}}}}'), "twice"),
    "file and directory": (doc({"a": {"digest": D1}, "a/b": {"digest": D1}}), "both"),
    "directory then file": (doc({"a/b": {"digest": D1}, "a": {"digest": D1}}), "both"),
    "dotdot": (json.dumps({"version": 1, "contents": {"../evil": {"digest": D1}}}), "'..' segment"),
    "absolute": (json.dumps({"version": 1, "contents": {"/etc/passwd": {"digest": D1}}}), "absolute"),
    "nul": (json.dumps({"version": 1, "contents": {"a\x00b": {"digest": D1}}}), "NUL"),
    "long name": (json.dumps({"version": 1, "contents": {"x" * 256: {"digest": D1}}}), "over 255"),
    "bad digest": (json.dumps({"version": 1, "contents": {"a": {"digest": "not base64!"}}}), "digest"),
    "short digest": (json.dumps({"version": 1, "contents": {"a": {"digest": "AAAA"}}}), "not 16 bytes"),
    "negative size": (json.dumps({"version": 1, "contents": {"a": {"digest": D1, "size": -1}}}), "invalid size"),
    "float size": (json.dumps({"version": 1, "contents": {"a": {"digest": D1, "size": 1.5}}}), "invalid size"),
    "huge size": (doc({"a": {"digest": D1, "size": 2**64}}), "invalid size|overflow"),
    "bad alg": (json.dumps({"version": 1, "contents": {"a": {"digest": D1, "extra": {"alg": "SHA1"}}}}), "algorithm"),
    "version 2": (json.dumps({"version": 2, "contents": {}}), "unsupported version"),
    "no contents": (json.dumps({"version": 1}), "contents"),
    "two contents": ('{"version": 1, "contents": {}, "contents": {}}', "duplicate key"),
    "not JSON": ("<html>502</html>", "not valid JSON"),
    "cut": ('{"version": 1, "contents": {"a": {"digest": "', "not valid JSON"),
    "not an object": ("[1, 2]", "expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_manifests_are_refused(tmp_path: Path, case: str) -> None:
    text, message = HOSTILE[case]
    src = tmp_path / "m.json"
    src.write_text(text)
    (tmp_path / "idx").mkdir()
    with pytest.raises((ManifestError, InvalidPath), match=message):
        build_index(str(src), str(tmp_path / "idx"), "k")
    assert os.listdir(tmp_path / "idx") == []


@pytest.mark.allow_log(r"manifest index .* is damaged")
def test_a_damaged_or_foreign_index_is_not_served(tmp_path: Path) -> None:
    contents = {f"d/{i:03d}": {"digest": D1, "size": 3} for i in range(500)}
    index = build(tmp_path, contents)
    digest = index.digest
    path = Path(index.path)
    good = path.read_bytes()
    assert open_index(str(path.parent), "k", "f" * 32) is None  # another version's digest: not used
    assert not path.exists()  # ... and removed
    for damage in ("flip", "truncate"):
        data = bytearray(good)
        if damage == "flip":
            data[len(data) // 2] ^= 1
        else:
            del data[len(data) // 3 :]
        path.write_bytes(bytes(data))
        assert open_index(str(path.parent), "k", digest) is None, damage
        assert find_index(str(path.parent), "k") is None
    path.write_bytes(good)
    again = open_index(str(path.parent), "k", digest)
    assert again is not None and len(again.list_dir("d") or []) == 500


def test_xxh128_versions_and_sizes_from_a_sizer(tmp_path: Path) -> None:
    contents = {
        "a": {"digest": D1, "size": 3, "extra": {"alg": XXH128}},
        "r": {"digest": D2, "ref": "wandb-artifact://00ff/x", "size": 0},
    }
    alg_digest = Manifest.from_json({"version": 1, "contents": contents}).digest(XXH128)
    asked = []

    def sizer(path: str, ref: str, digest: str) -> int | None:
        asked.append((path, ref, digest))
        return 42

    index = build(tmp_path, contents, alg_digest, alg=XXH128, sizer=sizer)
    assert asked == [("r", "wandb-artifact://00ff/x", D2)]
    r = index.get("r")
    assert r is not None and r.entry is not None and r.entry.size == 42
    a = index.get("a")
    assert a is not None and a.entry is not None and a.entry.alg == XXH128


NAMES = st.sampled_from(["a", "a.txt", "a0", "b", "a-b", "é", "z", "A", "a b"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paths=st.lists(st.lists(NAMES, min_size=1, max_size=4).map("/".join), min_size=0, max_size=30, unique=True))
def test_the_index_answers_what_the_manifest_says(tmp_path: Path, paths: list[str]) -> None:
    """Any manifest, in any entry order: the digest the build computes is W&B's, listings are in
    name order and every path is found (or the clash is refused, as Manifest refuses it)."""
    contents = {p: {"digest": D1 if i % 2 else D2, "size": i} for i, p in enumerate(paths)}
    try:
        manifest = Manifest.from_json({"version": 1, "contents": contents})
    except ManifestError:
        with pytest.raises(ManifestError, match="both a file and a directory"):
            build(tmp_path, contents, digest="")
        return
    for p in (tmp_path / "idx").glob("*") if (tmp_path / "idx").exists() else []:
        p.unlink()
    index = build(tmp_path, contents, manifest.digest())
    dirs: dict[str, set[tuple[str, bool]]] = {"": set()}
    for path in manifest.entries:
        parts = path.split("/")
        for depth in range(len(parts)):
            parent = "/".join(parts[:depth])
            dirs.setdefault(parent, set()).add((parts[depth], depth < len(parts) - 1))
    for d, kids in dirs.items():
        assert listing(index, d) == sorted(kids), d
    for path, entry in manifest.entries.items():
        got = index.get(path)
        assert got is not None and got.entry == entry


def test_a_build_killed_half_way_leaves_no_index(tmp_path: Path) -> None:
    """SIGKILL during a build: only a temp file is left, never a file an open would trust."""
    contents = {f"d{i // 1000:03d}/{i:06d}.bin": {"digest": D1, "size": i} for i in range(200_000)}
    src = write_manifest(tmp_path / "m.json", contents)
    out = tmp_path / "idx"
    out.mkdir()
    code = f"import sys; from artifactfs.index import build_index; build_index({str(src)!r}, {str(out)!r}, 'k')"
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.monotonic() + 60
        while not any(p.suffix == ".tmp" and p.stat().st_size > 0 for p in out.iterdir()):
            assert time.monotonic() < deadline and proc.poll() is None, "no build seen"
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    assert find_index(str(out), "k") is None
    assert open_index(str(out), "k", "") is None
    build_index(str(src), str(out), "k")
    index = open_index(str(out), "k", "")
    assert index is not None and index.count == 200_000


def test_index_key_names_the_version() -> None:
    assert index_key("QXJ0aWZhY3Q6MQ==", "abc") != index_key("QXJ0aWZhY3Q6MQ==", "abd")
    assert len(index_key("x", "y")) == 40


@pytest.mark.fuse
def test_a_daemon_killed_while_it_builds_an_index_remounts_right(
    mounter: Mounter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A W&B version of 150,000 entries; the daemon is SIGKILLed while it indexes the manifest
    (its temp database half written).  Nothing of the build is kept or trusted: the remount on
    the same cache directory removes the dead daemon's temp files, builds the index again, and
    serves the right tree."""
    from wandb_server import WandbServer

    key = "b1d" + "0" * 37
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    for name in ("WANDB_BASE_URL", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    files = {f"d{i // 1000:03d}/{i:06d}.txt": b"%d\n" % i for i in range(150_000)}
    with WandbServer(api_key=key, viewer_entity="acme") as server:
        server.add_artifact("acme", "vision", "big", "dataset", files)
        m = mounter(f"wandb:{server.url}")  # type: ignore[arg-type]
        version = m.path / "acme" / "vision" / "big:v0"
        manifests = m.cache_dir / "manifests"
        lister = subprocess.Popen(["ls", str(version / "d042")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:

            def building() -> bool:
                for p in manifests.glob("*.tmp") if manifests.exists() else []:
                    with contextlib.suppress(OSError), open(p, "rb") as f:
                        if f.read(16) == b"SQLite format 3\x00":
                            return True
                return False

            deadline = time.monotonic() + 60
            while not building():
                assert time.monotonic() < deadline, "no index build seen"
                time.sleep(0.005)
            m.proc.kill()
            m.proc.wait(timeout=15)
        finally:
            lister.wait(timeout=60)
        m.unmount()
        assert not list(manifests.glob("*.index")) and not list(manifests.glob("*.json"))
        assert list(manifests.glob(f"{m.proc.pid}-*.tmp"))  # what the dead daemon left

        again = mounter(f"wandb:{server.url}", cache_dir=m.cache_dir, mountpoint=m.path)  # type: ignore[arg-type]
        assert sorted(os.listdir(version / "d042")) == [f"{i:06d}.txt" for i in range(42_000, 43_000)]
        assert (version / "d149" / "149999.txt").read_bytes() == b"149999\n"
        assert len(os.listdir(version)) == 150
        assert not list(manifests.glob(f"{m.proc.pid}-*"))  # the dead daemon's temp files are gone
        assert len(list(manifests.glob("*.index"))) == 1
        assert "Traceback" not in again.log()
        again.unmount()


async def _walked_nodes_come_back(
    tree: Any, version_inode: int, seen: dict[int, Any], max_listing_bytes: int | None = None
) -> Any:
    """After a walk of the 3,000-file version (``seen``: inode -> kind, path, entry): every inode
    the tree let go of is made again as the same node, the tree stays within its bounds, and
    lookups, ``files_after`` and a missing name answer right.  Returns the node of ``d07``."""
    from artifactfs.errors import EntryNotFound

    assert len(seen) == 3000 + 30
    for inode, (kind, path, entry) in seen.items():  # made again from the index by inode
        node = tree.node(inode)
        assert (node.kind, node.path, node.entry) == (kind, path, entry)
    assert len(tree) <= 150 + 250 + 4
    if max_listing_bytes is not None:
        assert tree._listing_bytes <= max_listing_bytes
    d07 = await tree.lookup(version_inode, "d07")
    f = await tree.lookup(d07.inode, "f042.txt")
    assert f.entry is not None and f.entry.size == len(b"742\n") and f.inode in seen
    assert [e.path for _, e in await tree.files_after(f, 2)] == ["d07/f043.txt", "d07/f044.txt"]
    with pytest.raises(EntryNotFound):
        await tree.lookup(d07.inode, "nope")
    return d07


def test_a_walk_keeps_a_bounded_working_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inode table over a W&B version: every entry walked (listings and lookups), yet the
    tree holds at most its bounds; an inode it let go of is made again from the index, the same
    node in all that is seen (kind, path, entry), and a lookup of a missing name is refused."""
    import trio
    from wandb_server import WandbServer

    from artifactfs.registry.wandb import WandbRegistry
    from artifactfs.tree import INDEX_MASK, Kind, Tree

    key = "7ree" + "0" * 36
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    files = {f"d{i // 100:02d}/f{i % 100:03d}.txt": b"%d\n" % i for i in range(3000)}
    with WandbServer(api_key=key, viewer_entity="acme") as server:
        server.add_artifact("acme", "vision", "ds", "dataset", files)
        reg = WandbRegistry(server.url, str(tmp_path / "cache"))
        tree = Tree(reg, 0, 0, max_index_nodes=150, max_listed_entries=250)

        async def walk() -> None:
            entity = await tree.lookup(1, "acme")
            project = await tree.lookup(entity.inode, "vision")
            version = await tree.lookup(project.inode, "ds:v0")
            seen: dict[int, tuple[Kind, str, Any]] = {}
            for name, d in await tree.listdir_encoded(version.inode):
                assert d.kind is Kind.DIR and d.inode > INDEX_MASK
                seen[d.inode] = (d.kind, d.path, None)
                for child_name, f in await tree.listdir_encoded(d.inode):
                    assert f.path == f"{name.decode()}/{child_name.decode()}"
                    seen[f.inode] = (f.kind, f.path, f.entry)
                assert len(tree) <= 150 + 250 + 4  # the bounds, and root, entity, project, version
            d07 = await _walked_nodes_come_back(tree, version.inode, seen)
            assert tree.negative_timeout(d07.inode) > 3600

        trio.run(walk)
        reg.close()


@pytest.mark.fuse
def test_listed_and_looked_up_attributes_agree(
    mounter: Mounter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An indexed directory's readdirplus entries are made from its rows, with no node; a
    lookup makes a node from the index.  Both must tell the kernel the same thing."""
    from wandb_server import WandbServer

    key = "a77" + "0" * 37
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    for name in ("WANDB_BASE_URL", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    files = {f"d{i % 3}/sub{i % 2}/f{i:03d}.bin": os.urandom(i * 37) for i in range(60)}
    files["top.txt"] = b"top\n"
    with WandbServer(api_key=key, viewer_entity="acme") as server:
        server.add_artifact("acme", "vision", "ds", "dataset", files)

        def stats(m: Any, listed: bool) -> dict[str, tuple[int, ...]]:
            root = m.path / "acme" / "vision" / "ds:v0"
            paths = sorted({*files, *(os.path.dirname(p) for p in files)} - {""})
            if listed:  # readdirplus first: every attribute comes from a listing
                for dirpath, _, _ in os.walk(root):
                    with os.scandir(dirpath) as it:
                        for item in it:
                            item.stat(follow_symlinks=False)
            out = {}
            for p in paths:
                st = os.lstat(root / p)
                out[p] = (st.st_ino, st.st_mode, st.st_size, st.st_nlink, st.st_mtime_ns, st.st_blocks, st.st_uid)
            return out

        looked_up = stats(mounter(f"wandb:{server.url}"), listed=False)  # type: ignore[arg-type]
        listed = stats(mounter(f"wandb:{server.url}"), listed=True)  # type: ignore[arg-type]
        assert listed == looked_up
        assert listed["top.txt"][2] == 4 and listed["d0/sub0"][3] == 2


def test_readdir_offsets_hold_across_a_dropped_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """readdir of indexed directories in replies of a few entries (a small kernel buffer), with
    the tree keeping one compact listing at a time, so that each directory's listing is dropped
    and made again between replies, and a new handle starting at an offset (``seekdir``): every
    name once, in name order, each with the attributes a lookup of it gives."""
    import pyfuse3
    import trio
    from wandb_server import WandbServer

    from artifactfs.fetcher import Fetcher
    from artifactfs.ops import Operations
    from artifactfs.registry.wandb import WandbRegistry
    from artifactfs.store import BlobStore
    from artifactfs.tree import Tree

    key = "0ff5" + "0" * 36
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    files = {f"d{i % 3}/f{i:03d}.bin": b"x" * i for i in range(90)}
    files["d1/sub/z.txt"] = b"z\n"
    replied: list[tuple[bytes, int, int, int, int]] = []
    room = [0]

    def reply(token: Any, name: bytes, attr: Any, offset: int) -> bool:
        if room[0] == 0:
            return False
        room[0] -= 1
        replied.append((name, attr.st_ino, attr.st_mode, attr.st_size, offset))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    with WandbServer(api_key=key, viewer_entity="acme") as server:
        server.add_artifact("acme", "vision", "ds", "dataset", files)
        reg = WandbRegistry(server.url, str(tmp_path / "cache"))
        tree = Tree(reg, 0, 0, max_listing_bytes=1)  # one listing kept at a time
        ops = Operations(tree, Fetcher(reg, BlobStore(str(tmp_path / "blobs"))))

        async def read_dir(inode: int, fh: int, start: int, per_reply: int, between: Any) -> list[Any]:
            del replied[:]
            offset = start
            while True:
                room[0] = per_reply
                before = len(replied)
                await ops.readdir(fh, offset, None)  # type: ignore[arg-type]
                if len(replied) == before:
                    return list(replied)
                offset = replied[-1][4]
                await between()

        async def walk() -> None:
            entity = await tree.lookup(1, "acme")
            version = await tree.lookup((await tree.lookup(entity.inode, "vision")).inode, "ds:v0")
            dirs = {d: (await ops.lookup(version.inode, d.encode(), None)).st_ino for d in ("d0", "d1", "d2")}
            for d, inode in dirs.items():
                others = [i for i in dirs.values() if i != inode]

                async def other_listings(others: list[int] = others) -> None:  # drops ``d``'s listing
                    for i in others:
                        assert await tree.indexed_listing(i) is not None

                fh = await ops.opendir(inode, None)  # type: ignore[arg-type]
                got = await read_dir(inode, fh, 0, 4, other_listings)
                await ops.releasedir(fh)
                names = sorted({p.split("/")[1] for p in files if p.startswith(d + "/")})
                assert [g[0].decode() for g in got] == names
                assert [g[4] for g in got] == list(range(1, len(names) + 1))
                for name, ino, mode, size, _ in got:  # what a lookup of the name says
                    attr = await ops.lookup(inode, name, None)
                    assert (attr.st_ino, attr.st_mode, attr.st_size) == (ino, mode, size)
                # A new handle that starts where a reader left off (seekdir to a telldir).
                fh = await ops.opendir(inode, None)  # type: ignore[arg-type]
                rest = await read_dir(inode, fh, 7, 5, other_listings)
                await ops.releasedir(fh)
                assert rest == got[7:]
            assert tree._listing_bytes <= max(listing.nbytes for listing in tree._dir_listings.values())

        trio.run(walk)
        ops.fetcher.store.close()
        reg.close()


def test_a_walk_of_a_local_version_keeps_a_bounded_working_set(tmp_path: Path) -> None:
    """The same bounds over a local registry, whose own rows are the index (entry ids): every
    entry walked, the tree holds at most its bounds, an inode let go of is made again from the
    rows as the same node, and the inodes are the ids a lookup gives."""
    import trio
    from conftest import write_tree

    from artifactfs.names import parse_ref
    from artifactfs.registry.local import LocalRegistry
    from artifactfs.tree import INDEX_MASK, Kind, Tree

    files = {f"d{i // 100:02d}/f{i % 100:03d}.txt": b"%d\n" % i for i in range(3000)}
    reg = LocalRegistry(tmp_path / "registry", create=True)
    try:
        reg.log_dir(write_tree(tmp_path / "src", files), parse_ref("acme/vision/ds"), type="dataset")
        tree = Tree(reg, 0, 0, max_index_nodes=150, max_listed_entries=250, max_listing_bytes=2000)

        async def walk() -> None:
            entity = await tree.lookup(1, "acme")
            version = await tree.lookup((await tree.lookup(entity.inode, "vision")).inode, "ds:v0")
            seen: dict[int, tuple[Kind, str, Any]] = {}
            for name, d in await tree.listdir_encoded(version.inode):
                assert d.kind is Kind.DIR and d.inode > INDEX_MASK
                seen[d.inode] = (d.kind, d.path, None)
                indexed = await tree.indexed_listing(d.inode)
                assert indexed is not None
                base, _, listing = indexed
                for (child_name, f), rid in zip(await tree.listdir_encoded(d.inode), listing.ids, strict=True):
                    assert f.path == f"{name.decode()}/{child_name.decode()}" and f.inode == base | rid
                    seen[f.inode] = (f.kind, f.path, f.entry)
                assert len(tree) <= 150 + 250 + 4
            await _walked_nodes_come_back(tree, version.inode, seen, max_listing_bytes=2000)

        trio.run(walk)
    finally:
        reg.close()


@pytest.mark.fuse
def test_a_mount_gives_an_old_local_registry_its_entry_ids(mounter: Mounter, sample_registry: Any) -> None:
    """A registry made before entry ids is upgraded once by the mount, before it serves; then
    its content inodes are made from the rows' ids (the bounded path), and a read-only one is
    served as before, with a warning."""
    from conftest import SAMPLE_FILES, without_entry_ids

    from artifactfs.tree import INDEX_MASK

    root, _ = sample_registry
    db = root / "registry.sqlite"
    without_entry_ids(db)
    m = mounter(root)
    version = m.path / "acme" / "vision" / "ds:v1"
    got = {str(p.relative_to(version)): p.read_bytes() for p in version.rglob("*") if p.is_file()}
    assert got == SAMPLE_FILES
    assert os.stat(version / "train" / "000002.txt").st_ino > INDEX_MASK
    assert "added ids to its" in m.log()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT value FROM meta WHERE key = 'entry_ids'").fetchone() == ("1",)
    finally:
        conn.close()
    m.unmount()
    if os.geteuid() == 0:
        return  # root writes any file: no read-only registry to be had
    without_entry_ids(db)
    os.chmod(db, 0o444)
    os.chmod(root, 0o555)
    try:
        again = mounter(root)
        version = again.path / "acme" / "vision" / "ds:v1"
        assert (version / "train" / "000002.txt").read_bytes() == SAMPLE_FILES["train/000002.txt"]
        assert os.stat(version / "train" / "000002.txt").st_ino <= INDEX_MASK
        assert "has no entry ids and cannot be given them" in again.log()
        again.unmount()
    finally:
        os.chmod(root, 0o755)
        os.chmod(db, 0o644)
