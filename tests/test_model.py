"""A state machine against a real mount (issue 9, item 4).

Hypothesis applies random ``log`` / alias add / alias remove / delete / gc operations to a local
registry while one mount (``--alias-ttl 0.1``) serves it, and after every step compares the
mounted project directory with a plain model: the ``name:vN`` and ``name:alias`` entries, where
each alias symlink points, and every live version's tree, byte for byte.  Entry names are drawn
to be awkward: unicode, spaces, colons, leading dots, 255-byte names, deep nesting.

Each example works in a project of its own, so one mount serves the whole run; examples and
steps are few, to keep the suite fast (about 20 s).
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import Mount, Mounter, write_tree
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from artifactfs.names import parse_ref
from artifactfs.registry.local import LocalRegistry

pytestmark = pytest.mark.fuse

TTL = 0.1

# -- awkward entry paths --------------------------------------------------------------------------

_plain = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\\\x00", exclude_categories=("Cs", "Cc")),
    min_size=1,
    max_size=10,
).filter(lambda s: s not in (".", ".."))
_awkward = st.sampled_from(
    [
        "with space",
        "colon:inside",
        "ds:v0",
        ".hidden",
        "..dots",
        "latest",
        "-dash",
        "ünïcødé",
        "日本語",
        "x" * 255,
        "é" * 127 + "x",
    ]
)
SEGMENT = st.one_of(_plain, _awkward)
PATH = st.one_of(
    st.lists(SEGMENT, min_size=1, max_size=4).map("/".join),
    st.integers(min_value=10, max_value=40).map(lambda n: "/".join(["deep"] * n) + "/leaf"),
)


def _consistent(paths: list[str]) -> list[str]:
    """Drop paths that would make another path's directory a file (``a`` and ``a/b``)."""
    chosen: list[str] = []
    dirs: set[str] = set()
    files: set[str] = set()
    for p in paths:
        parents = {"/".join(p.split("/")[:i]) for i in range(1, p.count("/") + 1)}
        if p in dirs or p in files or parents & files:
            continue
        chosen.append(p)
        files.add(p)
        dirs |= parents
    return chosen


TREE = (
    st.lists(PATH, min_size=1, max_size=5)
    .map(_consistent)
    .flatmap(
        lambda paths: st.tuples(*[st.binary(max_size=64) for _ in paths]).map(
            lambda blobs: {p: b + p.encode() for p, b in zip(paths, blobs, strict=True)}
        )
    )
)
ALIAS = st.from_regex(r"[a-z][a-z0-9_.+-]{0,8}", fullmatch=True).filter(lambda a: a != "latest" and not a[1:].isdigit())
COLLECTION = st.sampled_from(["ds", "model.x"])


# -- the model and the machine --------------------------------------------------------------------


class Collection:
    def __init__(self) -> None:
        self.versions: dict[int, dict[str, bytes] | None] = {}  # None: deleted
        self.aliases: dict[str, int] = {}
        self.next = 0

    def live(self) -> list[int]:
        return sorted(i for i, files in self.versions.items() if files is not None)

    def move_latest(self) -> None:
        self.aliases.pop("latest", None)
        if self.live():
            self.aliases["latest"] = self.live()[-1]


class RegistryMachine(RuleBasedStateMachine):
    registry: ClassVar[Path]
    mount: ClassVar[Mount]
    work: ClassVar[Path]
    projects: ClassVar[itertools.count[int]] = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.project = f"p{next(self.projects)}"
        self.model: dict[str, Collection] = {}
        self.reg = LocalRegistry(self.registry)
        self.logs = itertools.count()

    def teardown(self) -> None:
        self.reg.close()

    def ref(self, name: str, tag: str | None = None) -> Any:
        return parse_ref(f"acme/{self.project}/{name}" + (f":{tag}" if tag else ""))

    def live_versions(self) -> list[tuple[str, int]]:
        return [(n, i) for n, c in sorted(self.model.items()) for i in c.live()]

    @rule(name=COLLECTION, files=TREE)
    def log(self, name: str, files: dict[str, bytes]) -> None:
        src = write_tree(self.work / f"{self.project}-{next(self.logs)}", files)
        result = self.reg.log_dir(src, self.ref(name), type="dataset")
        coll = self.model.setdefault(name, Collection())
        latest = coll.aliases.get("latest")
        same = latest is not None and coll.versions[latest] == files
        assert result.created is not same
        if not same:
            assert result.version.version_index == coll.next
            coll.versions[coll.next] = dict(files)
            coll.next += 1
            coll.move_latest()

    @precondition(lambda self: self.live_versions())
    @rule(data=st.data(), alias=ALIAS)
    def add_alias(self, data: st.DataObject, alias: str) -> None:
        name, index = data.draw(st.sampled_from(self.live_versions()))
        self.reg.add_alias(self.ref(name, f"v{index}"), alias)
        self.model[name].aliases[alias] = index

    @precondition(lambda self: any(a != "latest" for c in self.model.values() for a in c.aliases))
    @rule(data=st.data())
    def remove_alias(self, data: st.DataObject) -> None:
        choices = [
            (n, a, i) for n, c in sorted(self.model.items()) for a, i in sorted(c.aliases.items()) if a != "latest"
        ]
        name, alias, index = data.draw(st.sampled_from(choices))
        self.reg.remove_alias(self.ref(name, f"v{index}"), alias)
        del self.model[name].aliases[alias]

    @precondition(lambda self: self.live_versions())
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        name, index = data.draw(st.sampled_from(self.live_versions()))
        self.reg.delete(self.ref(name, f"v{index}"), delete_aliases=True)
        coll = self.model[name]
        coll.versions[index] = None
        coll.aliases = {a: i for a, i in coll.aliases.items() if i != index}
        coll.move_latest()

    @rule()
    def gc(self) -> None:
        self.reg.gc(grace=0)

    def expected(self) -> tuple[set[str], dict[str, str]]:
        names: set[str] = set()
        links: dict[str, str] = {}
        for name, coll in self.model.items():
            names |= {f"{name}:v{i}" for i in coll.live()}
            for alias, index in coll.aliases.items():
                links[f"{name}:{alias}"] = f"{name}:v{index}"
        return names | set(links), links

    def mounted(self) -> tuple[set[str], dict[str, str]]:
        project = self.mount.path / "acme" / self.project
        try:
            names = set(os.listdir(project))
        except FileNotFoundError:
            return set(), {}
        links = {}
        for n in names:
            with_path = project / n
            if with_path.is_symlink():
                links[n] = os.readlink(with_path)
        return names, links

    @rule()
    def wait(self) -> None:
        time.sleep(TTL)

    @invariant()
    def matches_the_model(self) -> None:
        want = self.expected()
        deadline = time.monotonic() + 60  # generous: a loaded machine answers late, never wrongly
        got = self.mounted()
        while got != want and time.monotonic() < deadline:  # names that move expire after the TTL
            time.sleep(TTL / 2)
            got = self.mounted()
        assert got == want
        project = self.mount.path / "acme" / self.project
        for name, index in self.live_versions():
            version = project / f"{name}:v{index}"
            tree = {}
            for dirpath, _, filenames in os.walk(version):
                for f in filenames:
                    full = Path(dirpath) / f
                    tree[str(full.relative_to(version))] = full.read_bytes()
            assert tree == self.model[name].versions[index], f"{name}:v{index}"


def test_mounted_tree_follows_random_registry_operations(mounter: Mounter, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    seed = LocalRegistry(registry, create=True)
    try:
        seed.log_dir(write_tree(tmp_path / "seed", {"x": b"x"}), parse_ref("acme/seed/ds"), type="dataset")
    finally:
        seed.close()
    RegistryMachine.registry = registry
    RegistryMachine.work = tmp_path / "work"
    RegistryMachine.mount = mounter(registry, "--alias-ttl", str(TTL))
    run_state_machine_as_test(
        RegistryMachine,
        settings=settings(
            max_examples=12,
            stateful_step_count=8,
            deadline=None,
            database=None,  # no .hypothesis directory in the checkout
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            # no shrinking: each step waits for the TTL, and the failing sequence is printed anyway
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
        ),
    )
    assert "Traceback" not in RegistryMachine.mount.log()


# -- the same machine on a W&B mount: every version's manifest is an index on disk -------------------


class WandbMachine(RegistryMachine):
    """The model against a W&B test server: versions are logged by the server (W&B numbers a
    re-log of the same content as a new version), aliases and deletes go through the W&B
    backend's mutations, and ``gc`` becomes a remount on the same cache directory, so later
    steps are served from manifest indexes found on disk (checked, not rebuilt)."""

    server: ClassVar[Any]
    mounter: ClassVar[Mounter]

    def __init__(self) -> None:
        RuleBasedStateMachine.__init__(self)
        from artifactfs.registry.wandb import WandbRegistry

        self.project = f"w{next(self.projects)}"
        self.model = {}
        self.reg = WandbRegistry(self.server.url)  # type: ignore[assignment]
        self.logs = itertools.count()

    @rule(name=COLLECTION, files=TREE)
    def log(self, name: str, files: dict[str, bytes]) -> None:
        rec = self.server.add_artifact("acme", self.project, name, "dataset", files)
        coll = self.model.setdefault(name, Collection())
        assert rec.version_index == coll.next
        coll.versions[coll.next] = dict(files)
        coll.next += 1
        coll.move_latest()

    @rule()
    def gc(self) -> None:
        old = WandbMachine.mount
        old.unmount()
        WandbMachine.mount = self.mounter(
            f"wandb:{self.server.url}",  # type: ignore[arg-type]
            "--alias-ttl",
            str(TTL),
            cache_dir=old.cache_dir,
            mountpoint=old.path,
        )


def test_a_wandb_mount_follows_random_operations(
    mounter: Mounter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wandb_server import WandbServer

    key = "5eed" + "0" * 36
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    for name in ("WANDB_BASE_URL", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    with WandbServer(api_key=key, viewer_entity="acme") as server:
        server.add_artifact("acme", "seed", "ds", "dataset", {"x": b"x"})
        WandbMachine.server = server
        WandbMachine.mounter = mounter
        WandbMachine.work = tmp_path / "work"
        WandbMachine.mount = mounter(f"wandb:{server.url}", "--alias-ttl", str(TTL))  # type: ignore[arg-type]
        run_state_machine_as_test(
            WandbMachine,
            settings=settings(
                max_examples=6,
                stateful_step_count=8,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                phases=[Phase.explicit, Phase.reuse, Phase.generate],
            ),
        )
        assert "Traceback" not in WandbMachine.mount.log()
        manifests = WandbMachine.mount.cache_dir / "manifests"
        assert list(manifests.glob("*.index")), "no manifest index on disk"
        WandbMachine.mount.unmount()
