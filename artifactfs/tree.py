"""The inode table: the mount's namespace, built from registry metadata alone (no content I/O).

Layout (see docs/SEMANTICS.md)::

    /<entity>/<project>/<name>:v<N>/<entry path>     immutable version directories
    /<entity>/<project>/<name>:<alias>               symlink -> <name>:v<N>, re-resolved after alias_ttl

Nodes are created on lookup and readdir and dropped when the kernel forgets them.  Everything
here is synchronous and free of pyfuse3, so tests drive it without a kernel; :mod:`ops` decides
which calls run inline and which in a thread.
"""

from __future__ import annotations

import enum
import json
import logging
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .errors import ArtifactNotFound, EntryNotFound, InvalidReference, NotFound
from .fsutil import redact_uri
from .manifest import Entry
from .names import Ref, check_name, parse_version
from .registry.base import Registry, VersionInfo, iso_time

log = logging.getLogger(__name__)

ROOT_INODE = 1
FOREVER = 365 * 24 * 3600.0  # kernel timeouts for immutable version content
BLOCK = 512


class Kind(enum.Enum):
    ROOT = "root"
    ENTITY = "entity"
    PROJECT = "project"
    VERSION = "version"  # a version's root directory
    DIR = "dir"  # a directory inside a version
    FILE = "file"
    ALIAS = "alias"  # symlink name:alias -> name:vN

    @property
    def immutable(self) -> bool:
        return self in (Kind.VERSION, Kind.DIR, Kind.FILE)


@dataclass(eq=False, slots=True)
class Node:
    inode: int
    kind: Kind
    key: tuple[object, ...]
    entity: str = ""
    project: str = ""
    collection: str = ""
    alias: str = ""
    version: VersionInfo | None = None
    path: str = ""  # path inside the version ('' for the version root)
    entry: Entry | None = None
    lookups: int = 0
    target: str = ""  # alias symlinks: "name:vN"
    expires: float = 0.0  # alias symlinks: when to re-resolve; versions: when to refresh aliases


@dataclass(frozen=True, slots=True)
class Attr:
    inode: int
    mode: int
    size: int
    nlink: int
    mtime_ns: int
    timeout: float

    @property
    def blocks(self) -> int:
        return (self.size + BLOCK - 1) // BLOCK


@dataclass
class Tree:
    registry: Registry
    uid: int
    gid: int
    alias_ttl: float = 60.0
    clock: Callable[[], float] = time.monotonic
    mount_time_ns: int = field(default_factory=time.time_ns)
    _nodes: dict[int, Node] = field(default_factory=dict)
    _by_key: dict[tuple[object, ...], Node] = field(default_factory=dict)
    _next_inode: int = ROOT_INODE + 1

    def __post_init__(self) -> None:
        root = Node(ROOT_INODE, Kind.ROOT, ("root",), lookups=1)
        self._nodes[ROOT_INODE] = root
        self._by_key[root.key] = root

    # -- node table -----------------------------------------------------------------------------

    def node(self, inode: int) -> Node:
        try:
            return self._nodes[inode]
        except KeyError:
            raise NotFound(f"inode {inode} is not known") from None

    def __len__(self) -> int:
        return len(self._nodes)

    def _intern(self, key: tuple[object, ...], make: Callable[[int], Node]) -> Node:
        node = self._by_key.get(key)
        if node is None:
            node = make(self._next_inode)
            self._next_inode += 1
            self._nodes[node.inode] = node
            self._by_key[key] = node
        return node

    def remember(self, node: Node) -> None:
        """Count one kernel reference (a lookup reply or a readdirplus entry)."""
        node.lookups += 1
        if self._nodes.get(node.inode) is not node:
            # Forgotten while an open directory listing still held it: the kernel knows this
            # inode again, so it must resolve again (a newer node for the key keeps the key).
            self._nodes[node.inode] = node
            self._by_key.setdefault(node.key, node)

    def drop_unreferenced(self, nodes: Iterable[Node]) -> None:
        """Forget nodes made by a listing that the kernel holds no reference to."""
        for node in nodes:
            if node.lookups <= 0 and node.inode != ROOT_INODE and self._nodes.get(node.inode) is node:
                del self._nodes[node.inode]
                if self._by_key.get(node.key) is node:
                    del self._by_key[node.key]

    def forget(self, inode: int, nlookup: int) -> None:
        node = self._nodes.get(inode)
        if node is None or inode == ROOT_INODE:
            return
        node.lookups -= nlookup
        if node.lookups <= 0:
            del self._nodes[inode]
            if self._by_key.get(node.key) is node:
                del self._by_key[node.key]

    # -- children -------------------------------------------------------------------------------

    def _entity(self, name: str) -> Node:
        return self._intern(("e", name), lambda i: Node(i, Kind.ENTITY, ("e", name), entity=name))

    def _project(self, entity: str, name: str) -> Node:
        key = ("p", entity, name)
        return self._intern(key, lambda i: Node(i, Kind.PROJECT, key, entity=entity, project=name))

    def _version_node(self, v: VersionInfo) -> Node:
        key = ("v", v.id)
        node = self._intern(
            key,
            lambda i: Node(
                i, Kind.VERSION, key, v.entity, v.project, v.name, version=v, expires=self.clock() + self.alias_ttl
            ),
        )
        return node

    def _content(self, parent: Node, name: str, entry: Entry | None) -> Node:
        assert parent.version is not None
        path = f"{parent.path}/{name}" if parent.path else name
        key = ("c", parent.version.id, path)
        kind = Kind.DIR if entry is None else Kind.FILE
        return self._intern(
            key,
            lambda i: Node(
                i,
                kind,
                key,
                parent.entity,
                parent.project,
                parent.collection,
                version=parent.version,
                path=path,
                entry=entry,
            ),
        )

    def _alias_node(self, entity: str, project: str, collection: str, alias: str, target: str) -> Node:
        key = ("a", entity, project, collection, alias)
        node = self._intern(key, lambda i: Node(i, Kind.ALIAS, key, entity, project, collection, alias))
        node.target = target
        node.expires = self.clock() + self.alias_ttl
        return node

    def lookup(self, parent_inode: int, name: str) -> Node:
        """The child ``name`` of a directory, creating its node; raises NotFound."""
        parent = self.node(parent_inode)
        kind = parent.kind
        if kind is Kind.ROOT:
            self._check_name(name)
            self.registry.projects(name)  # raises EntityNotFound
            return self._entity(name)
        if kind is Kind.ENTITY:
            self._check_name(name)
            self.registry.collections(parent.entity, name)  # raises ProjectNotFound
            return self._project(parent.entity, name)
        if kind is Kind.PROJECT:
            collection, sep, tag = name.partition(":")
            if not sep:
                raise ArtifactNotFound(f"{name!r}: project entries are NAME:vN or NAME:ALIAS")
            self._check_name(collection)
            ref = Ref(parent.entity, parent.project, collection, tag)
            v = self.registry.resolve(ref)  # raises ArtifactNotFound
            if parse_version(tag) is not None:
                return self._version_node(v)
            return self._alias_node(parent.entity, parent.project, collection, tag, f"{collection}:{v.version}")
        if kind in (Kind.VERSION, Kind.DIR):
            assert parent.version is not None
            path = f"{parent.path}/{name}" if parent.path else name
            found = self.registry.get_entry(parent.version, path)  # raises EntryNotFound
            return self._content(parent, name, found.entry)
        raise EntryNotFound(f"{name!r}: not a directory")

    @staticmethod
    def _check_name(name: str) -> None:
        try:
            check_name(name)
        except InvalidReference as exc:
            raise NotFound(str(exc)) from exc

    def listdir(self, inode: int) -> list[tuple[str, Node]]:
        """``(name, node)`` for every child, sorted by name.  Does not count references."""
        node = self.node(inode)
        kind = node.kind
        if kind is Kind.ROOT:
            return [(e, self._entity(e)) for e in self.registry.entities()]
        if kind is Kind.ENTITY:
            return [(p, self._project(node.entity, p)) for p in self.registry.projects(node.entity)]
        if kind is Kind.PROJECT:
            out: list[tuple[str, Node]] = []
            for c in self.registry.collections(node.entity, node.project):
                for v in self.registry.versions(node.entity, node.project, c.name):
                    out.append((f"{c.name}:{v.version}", self._version_node(v)))
                    for alias in v.aliases:
                        target = f"{c.name}:{v.version}"
                        out.append(
                            (f"{c.name}:{alias}", self._alias_node(node.entity, node.project, c.name, alias, target))
                        )
            out.sort(key=lambda item: item[0])
            return out
        if kind in (Kind.VERSION, Kind.DIR):
            assert node.version is not None
            return [
                (d.name, self._content(node, d.name, d.entry)) for d in self.registry.list_dir(node.version, node.path)
            ]
        raise EntryNotFound("not a directory")

    def readlink(self, inode: int) -> str:
        node = self.node(inode)
        if node.kind is not Kind.ALIAS:
            raise EntryNotFound("not a symlink")
        if self.clock() >= node.expires:
            v = self.registry.resolve(Ref(node.entity, node.project, node.collection, node.alias))
            node.target = f"{node.collection}:{v.version}"
            node.expires = self.clock() + self.alias_ttl
        return node.target

    # -- attributes -----------------------------------------------------------------------------

    def getattr(self, node: Node) -> Attr:
        kind = node.kind
        if kind is Kind.FILE:
            assert node.entry is not None and node.version is not None
            return Attr(node.inode, stat.S_IFREG | 0o444, node.entry.size, 1, node.version.created_at_ns, FOREVER)
        if kind in (Kind.VERSION, Kind.DIR):
            assert node.version is not None
            return Attr(node.inode, stat.S_IFDIR | 0o555, 0, 2, node.version.created_at_ns, FOREVER)
        if kind is Kind.ALIAS:
            return Attr(
                node.inode, stat.S_IFLNK | 0o777, len(node.target.encode()), 1, self.mount_time_ns, self.alias_ttl
            )
        return Attr(node.inode, stat.S_IFDIR | 0o555, 0, 2, self.mount_time_ns, self.alias_ttl)

    def negative_timeout(self, parent_inode: int) -> float:
        """How long the kernel may remember that a name does not exist in this directory."""
        parent = self._nodes.get(parent_inode)
        return FOREVER if parent is not None and parent.kind.immutable else self.alias_ttl

    # -- extended attributes ----------------------------------------------------------------------

    def _fresh_version(self, node: Node) -> VersionInfo:
        """A version's info, re-read after alias_ttl (aliases and updated_at move)."""
        assert node.version is not None
        if node.kind is Kind.VERSION and self.clock() >= node.expires:
            try:
                node.version = self.registry.resolve(node.version.ref)
            except ArtifactNotFound:
                log.info("%s was deleted from the registry; serving what was mounted", node.version.ref)
            node.expires = self.clock() + self.alias_ttl
        return node.version

    def xattrs(self, node: Node, stats: Callable[[], dict[str, int]] | None = None) -> dict[str, bytes]:
        """Extended attributes of a node (``user.`` namespace).  Never contains secrets."""
        if node.kind is Kind.VERSION:
            v = self._fresh_version(node)
            attrs = {
                "id": v.id,
                "digest": v.digest,
                "type": v.type,
                "version": v.version,
                "aliases": ",".join(v.aliases),
                "state": v.state,
                "size": str(v.size),
                "created_at": iso_time(v.created_at_ns),
                "updated_at": iso_time(v.updated_at_ns),
                "description": v.description,
                "metadata": json.dumps(v.metadata, ensure_ascii=False, sort_keys=True),
                "commit_hash": v.commit_hash,
                "source_version": v.version,
                "file_count": str(v.file_count),
            }
            return {f"user.artifact.{k}": val.encode() for k, val in attrs.items()}
        if node.kind is Kind.FILE:
            assert node.entry is not None
            out = {
                "user.artifact.entry.digest": node.entry.digest.encode(),
                "user.artifact.entry.size": str(node.entry.size).encode(),
            }
            if node.entry.ref is not None:
                out["user.artifact.entry.ref"] = redact_uri(node.entry.ref).encode()
            return out
        if node.kind is Kind.ROOT and stats is not None:
            return {"user.artifactfs.stats": json.dumps(stats(), sort_keys=True).encode()}
        return {}
