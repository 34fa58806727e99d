"""The inode table: the mount's namespace, built from registry metadata alone (no content I/O).

Layout (see docs/SEMANTICS.md)::

    /<entity>/<project>/<name>:v<N>/<entry path>     immutable version directories
    /<entity>/<project>/<name>:<alias>               symlink -> <name>:v<N>, re-resolved after alias_ttl

Nodes are created on lookup and readdir and dropped when the kernel forgets them.  The methods
that need the registry (``lookup``, ``listdir``, ``readlink``, ``xattrs``) are async: they ask
through :class:`~artifactfs.meta.Meta` (inline for a local registry, a worker thread otherwise)
and change the table only after the answer is back, on the trio loop.  A worker thread never
sees a node.  Everything else (``getattr``, ``remember``, ``forget``) is synchronous.  No
pyfuse3 here, so tests drive the tree without a kernel.

Between an ``await`` and the code after it, other requests run: a node may have been forgotten
or re-made meanwhile, which ``_intern`` and ``remember`` allow for.  An answer carries when it
stops being current (:class:`~artifactfs.meta.Answer`); alias nodes keep the freshest answer
they have seen, so an older cached listing never moves a link backwards.
"""

from __future__ import annotations

import enum
import json
import logging
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from . import defaults
from .errors import ArtifactNotFound, EntryNotFound, FetchError, InvalidReference, NotFound
from .fsutil import redact_uri
from .index import Child, Contents
from .index import Listing as Listing  # re-exported: ops.py's readdir replies from it
from .manifest import Entry
from .meta import MadeFile, Meta
from .names import Ref, check_name, check_project, parse_version
from .registry.base import DELETED, DirEntry, Registry, VersionInfo, iso_time

log = logging.getLogger(__name__)

ROOT_INODE = 1
# Content nodes of a version whose registry keeps an on-disk index have the inode
# ``slot << INDEX_SHIFT | row id``: made from the index on demand, never counted.
INDEX_SHIFT = 36
INDEX_MASK = (1 << INDEX_SHIFT) - 1
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
    VIEW = "view"  # <project>/.artifactfs: one directory per version of the project
    VIEW_VERSION = "view_version"  # <project>/.artifactfs/<name>:vN: info.json, manifest.json
    VIEW_FILE = "view_file"  # info.json (moves with aliases) or manifest.json (never changes)

    @property
    def immutable(self) -> bool:
        return self in _IMMUTABLE


_IMMUTABLE = frozenset((Kind.VERSION, Kind.DIR, Kind.FILE, Kind.VIEW_VERSION))
VIEW_DIR = ".artifactfs"  # in every project directory; not listed, like a snapshot directory
VIEW_FILES = ("info.json", "manifest.json")


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
    # The FUSE layer's ready-made attributes of an immutable node (opaque here: no pyfuse3).
    attrs: Any = None
    # A version directory's listing, kept once asked (a version's content never changes): the
    # registry's answer, not nodes, so a forgotten child is made afresh like any lookup's.
    listing: list[DirEntry] | None = None
    # ... and its nodes, valid while ``Tree.dropped`` is ``children_at`` (no node was dropped),
    # also with the names encoded as the kernel gets them.
    children: list[tuple[str, Node]] | None = None
    children_at: int = -1
    encoded: list[tuple[bytes, Node]] | None = None
    data: bytes = b""  # view files: their content as last made (info.json)
    file: MadeFile | None = None  # ... or an open file of it (manifest.json: it may be huge)


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
    """The inode table over ``registry``.  ``meta`` (made here unless given) asks the registry;
    give one to share it or to set its thread limit."""

    registry: Registry
    uid: int
    gid: int
    alias_ttl: float = defaults.ALIAS_TTL
    mount_time_ns: int = field(default_factory=time.time_ns)
    meta: Meta = field(default=None)  # type: ignore[assignment]  # None: made in __post_init__
    scratch_dir: str | None = None  # where the made Meta writes manifest.json files
    _nodes: dict[int, Node] = field(default_factory=dict)
    _by_key: dict[tuple[object, ...], Node] = field(default_factory=dict)
    _next_inode: int = ROOT_INODE + 1
    # Content nodes made from on-disk indexes (inode >= 1 << INDEX_SHIFT), least recently used
    # first, and encoded listings of indexed directories, bounded by their entries in all: the
    # working set.  Anything else the kernel knows is made again from the index by inode.
    max_index_nodes: int = 50_000
    max_listed_entries: int = 20_000
    _slots: dict[tuple[object, ...], int] = field(default_factory=dict)
    _slot_info: list[tuple[Contents, Node]] = field(default_factory=list)
    _cached: OrderedDict[int, Node] = field(default_factory=OrderedDict)
    _listings: OrderedDict[int, list[tuple[bytes, Node]]] = field(default_factory=OrderedDict)
    _listed: int = 0
    # Compact listings of indexed directories for readdir (index.Listing), by directory inode,
    # least recently used first, bounded by their size in all.
    max_listing_bytes: int = 64 << 20
    _dir_listings: OrderedDict[int, Listing] = field(default_factory=OrderedDict)
    _listing_bytes: int = 0
    # Nodes dropped from the key index so far: a kept listing of nodes (``Node.children``) made
    # when this was the same still names the current node of every key.
    _dropped: int = 0

    def __post_init__(self) -> None:
        if self.meta is None:
            self.meta = Meta(self.registry, alias_ttl=self.alias_ttl, scratch_dir=self.scratch_dir)
        root = Node(ROOT_INODE, Kind.ROOT, ("root",), lookups=1)
        self._nodes[ROOT_INODE] = root
        self._by_key[root.key] = root

    # -- node table -----------------------------------------------------------------------------

    def node(self, inode: int) -> Node:
        node = self._nodes.get(inode)
        if node is None:
            node = self._indexed_node(inode) if inode > INDEX_MASK else None
            if node is None:
                raise NotFound(f"inode {inode} is not known")
        return node

    def __len__(self) -> int:
        return len(self._nodes) + len(self._cached)

    # -- content nodes made from an on-disk index -----------------------------------------------

    def _indexed_node(self, inode: int) -> Node | None:
        node = self._cached.get(inode)
        if node is not None:
            self._cached.move_to_end(inode)
            return node
        slot = (inode >> INDEX_SHIFT) - 1
        if slot >= len(self._slot_info):
            return None
        found = self._slot_info[slot][0].by_id(inode & INDEX_MASK)
        if found is None:
            # Handed out from this version's index, which no longer holds it: the version was
            # purged (``gc``) or its index removed.  Its files cannot be read: EIO, as for a
            # blob gone from under it, not ENOENT for a name that ``stat`` still shows.
            version = self._slot_info[slot][1].version
            shown = version.ref if version is not None else f"slot {slot}"
            raise FetchError(f"{shown}: its entries are gone from the registry (purged by gc?): inode {inode}")
        if found[1].id == 0:
            return None
        return self._from_index(slot, found[1], found[0])

    def _from_index(self, slot: int, child: Child, path: str) -> Node:
        inode = (slot + 1) << INDEX_SHIFT | child.id
        node = self._cached.get(inode)
        if node is not None:
            self._cached.move_to_end(inode)
            return node
        vnode = self._slot_info[slot][1]
        v = vnode.version
        assert v is not None
        kind = Kind.DIR if child.entry is None else Kind.FILE
        key = _content_key(v, path)
        node = Node(
            inode, kind, key, vnode.entity, vnode.project, vnode.collection, version=v, path=path, entry=child.entry
        )
        cached = self._cached
        cached[inode] = node
        while len(cached) > self.max_index_nodes:
            cached.popitem(last=False)
        return node

    async def _slot(self, parent: Node) -> int | None:
        """The index slot of ``parent``'s version (a version directory or an indexed node), or
        None when its registry keeps no on-disk index (the local registry: nodes as before)."""
        if parent.inode > INDEX_MASK:
            return (parent.inode >> INDEX_SHIFT) - 1
        if parent.kind is not Kind.VERSION:
            return None
        slot = self._slots.get(parent.key)
        if slot is not None:
            return slot
        v = parent.version
        assert v is not None
        index = await self.meta.contents_index(v)
        if index is None:
            return None
        slot = self._slots.get(parent.key)  # another request may have made it meanwhile
        if slot is None:
            slot = len(self._slot_info)
            self._slot_info.append((index, parent))
            self._slots[parent.key] = slot
        return slot

    async def indexed_listing(self, inode: int) -> tuple[int, int, Listing] | None:
        """For a directory of an indexed version: ``(inode base, mtime_ns, listing)`` (a child's
        inode is ``base | id``): what a readdir replies, with no node made.  None for any other
        directory.  Listings are kept, least recently used dropped first, up to
        ``max_listing_bytes`` in all (~20 bytes an entry): a walk that fits is answered from
        memory every time after the first, and one that does not asks the index again."""
        listing = self._dir_listings.get(inode)
        slot: int | None = None
        if listing is not None:
            self._dir_listings.move_to_end(inode)
            slot = (inode >> INDEX_SHIFT) - 1 if inode > INDEX_MASK else self._slots.get(self.node(inode).key)
        if slot is None or listing is None:
            node = self.node(inode)
            if node.kind not in (Kind.VERSION, Kind.DIR):
                return None
            found = await self._slot(node)
            if found is None:
                return None
            slot = found
            listing = self._slot_info[slot][0].listing(node.path)
            if listing is None:
                raise EntryNotFound(f"{node.path!r}: no such directory")
            self._keep_listing(inode, listing)
        v = self._slot_info[slot][1].version
        assert v is not None
        return (slot + 1) << INDEX_SHIFT, v.created_at_ns, listing

    def _keep_listing(self, inode: int, listing: Listing) -> None:
        kept = self._dir_listings
        old = kept.pop(inode, None)
        if old is not None:
            self._listing_bytes -= old.nbytes
        kept[inode] = listing
        self._listing_bytes += listing.nbytes
        while self._listing_bytes > self.max_listing_bytes and len(kept) > 1:
            _, dropped = kept.popitem(last=False)
            self._listing_bytes -= dropped.nbytes

    def _indexed_listing(self, slot: int, node: Node) -> list[tuple[bytes, Node]]:
        """The encoded children of an indexed directory: kept while the working set allows."""
        listing = self._listings.get(node.inode)
        if listing is not None:
            self._listings.move_to_end(node.inode)
            return listing
        children = self._slot_info[slot][0].list_dir(node.path)
        if children is None:
            raise EntryNotFound(f"{node.path!r}: no such directory")
        prefix = node.path + "/" if node.path else ""
        make = self._from_index
        listing = [(c.name.encode(), make(slot, c, prefix + c.name)) for c in children]
        self._listings[node.inode] = listing
        self._listed += len(listing)
        while self._listed > self.max_listed_entries and len(self._listings) > 1:
            _, dropped = self._listings.popitem(last=False)
            self._listed -= len(dropped)
        return listing

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
        if node.inode > INDEX_MASK:  # made from an index: never counted, made again on demand
            return
        if self._nodes.get(node.inode) is not node:
            # Forgotten while an open directory listing still held it: the kernel knows this
            # inode again, so it must resolve again (a newer node for the key keeps the key).
            self._nodes[node.inode] = node
            self._by_key.setdefault(node.key, node)

    def drop_unreferenced(self, children: Iterable[tuple[object, Node]]) -> None:
        """Forget nodes of a listing (``(name, node)``) that the kernel holds no reference to."""
        for _, node in children:
            if node.lookups <= 0 and node.inode != ROOT_INODE and self._nodes.get(node.inode) is node:
                del self._nodes[node.inode]
                if self._by_key.get(node.key) is node:
                    del self._by_key[node.key]
                    self._dropped += 1

    def forget(self, inode: int, nlookup: int) -> None:
        node = self._nodes.get(inode)
        if node is None or inode == ROOT_INODE:
            return
        node.lookups -= nlookup
        if node.lookups <= 0:
            del self._nodes[inode]
            if self._by_key.get(node.key) is node:
                del self._by_key[node.key]
                self._dropped += 1

    # -- children -------------------------------------------------------------------------------

    def _entity(self, name: str) -> Node:
        return self._intern(("e", name), lambda i: Node(i, Kind.ENTITY, ("e", name), entity=name))

    def _project(self, entity: str, name: str) -> Node:
        key = ("p", entity, name)
        return self._intern(key, lambda i: Node(i, Kind.PROJECT, key, entity=entity, project=name))

    def _version_node(self, v: VersionInfo, expires: float) -> Node:
        """The node of version ``v`` (by id), from an answer current until ``expires``."""
        key = _version_key(v)
        node = self._intern(key, lambda i: Node(i, Kind.VERSION, key, v.entity, v.project, v.name, version=v))
        if expires >= node.expires:
            node.version = v  # aliases, description and updated_at may have moved
            node.expires = expires
        return node

    def _content(self, parent: Node, name: str, entry: Entry | None) -> Node:
        assert parent.version is not None
        path = f"{parent.path}/{name}" if parent.path else name
        key = _content_key(parent.version, path)
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

    def _alias_node(self, entity: str, project: str, collection: str, alias: str, target: str, expires: float) -> Node:
        """The symlink ``collection:alias``, pointing at ``target`` by an answer current until
        ``expires``: an older answer (a cached listing) does not override a fresher one."""
        key = ("a", entity, project, collection, alias)
        node = self._intern(key, lambda i: Node(i, Kind.ALIAS, key, entity, project, collection, alias))
        if expires >= node.expires:
            node.target = target
            node.expires = expires
        return node

    async def lookup(self, parent_inode: int, name: str) -> Node:
        """The child ``name`` of a directory, creating its node; raises NotFound."""
        parent = self.node(parent_inode)
        kind = parent.kind
        if kind is Kind.ROOT:
            self._check_name(name)
            await self.meta.check_entity(name)  # raises EntityNotFound
            return self._entity(name)
        if kind is Kind.ENTITY:
            self._check_name(name, project=True)  # a registry's name may hold spaces
            await self.meta.check_project(parent.entity, name)  # raises ProjectNotFound
            return self._project(parent.entity, name)
        if kind is Kind.PROJECT and name == VIEW_DIR:
            await self.meta.check_project(parent.entity, parent.project)
            view: tuple[object, ...] = ("view", parent.entity, parent.project)
            return self._intern(view, lambda i: Node(i, Kind.VIEW, view, parent.entity, parent.project))
        if kind is Kind.VIEW:
            collection, sep, tag = name.partition(":")
            if not sep or parse_version(tag) is None:
                raise ArtifactNotFound(f"{name!r}: {VIEW_DIR} entries are NAME:vN")
            self._check_name(collection)
            v = (await self.meta.resolve(Ref(parent.entity, parent.project, collection, tag))).value
            return self._view_version(v)
        if kind is Kind.VIEW_VERSION:
            if name not in VIEW_FILES:
                raise EntryNotFound(f"{name!r}: {VIEW_DIR} version directories hold {' and '.join(VIEW_FILES)}")
            return await self._view_file(parent, name)
        if kind is Kind.PROJECT:
            collection, sep, tag = name.partition(":")
            if not sep:
                raise ArtifactNotFound(f"{name!r}: project entries are NAME:vN or NAME:ALIAS")
            self._check_name(collection)
            ref = Ref(parent.entity, parent.project, collection, tag)
            answer = await self.meta.resolve(ref)  # raises ArtifactNotFound
            v = answer.value
            if parse_version(tag) is not None:
                return self._version_node(v, answer.expires)
            target = f"{collection}:{v.version}"
            return self._alias_node(parent.entity, parent.project, collection, tag, target, answer.expires)
        if kind in (Kind.VERSION, Kind.DIR):
            assert parent.version is not None
            path = f"{parent.path}/{name}" if parent.path else name
            slot = await self._slot(parent)
            if slot is not None:
                child = self._slot_info[slot][0].get(path)
                if child is None:
                    raise EntryNotFound(f"{path!r}: no such entry")
                return self._from_index(slot, child, path)
            found = await self.meta.get_entry(parent.version, path)
            return self._content(parent, name, found.entry)
        raise EntryNotFound(f"{name!r}: not a directory")

    @staticmethod
    def _check_name(name: str, *, project: bool = False) -> None:
        try:
            check_project(name) if project else check_name(name)
        except InvalidReference as exc:
            raise NotFound(str(exc)) from exc

    @property
    def dropped(self) -> int:
        """How many nodes were dropped from the table so far: while it has not moved, every
        node of a listing is still the table's node of its name."""
        return self._dropped

    async def listdir_encoded(self, inode: int) -> list[tuple[bytes, Node]]:
        """:meth:`listdir` with the names as bytes; kept with a version directory's nodes."""
        asked = self.node(inode)
        if asked.kind in (Kind.VERSION, Kind.DIR):
            slot = await self._slot(asked)
            if slot is not None:
                return self._indexed_listing(slot, asked)
        children = await self.listdir(inode)
        node = self._nodes.get(inode)
        if node is not None and node.children is children:
            if node.encoded is None:  # made again whenever ``children`` is
                node.encoded = [(name.encode(), child) for name, child in children]
            return node.encoded
        return [(name.encode(), child) for name, child in children]

    async def listdir(self, inode: int) -> list[tuple[str, Node]]:
        """``(name, node)`` for every child, sorted by name.  Does not count references."""
        node = self.node(inode)
        kind = node.kind
        if kind is Kind.ROOT:
            entities = await self.meta.entities()
            return [(e, self._entity(e)) for e in entities.value]
        if kind is Kind.ENTITY:
            projects = await self.meta.projects(node.entity)
            return [(p, self._project(node.entity, p)) for p in projects.value]
        if kind is Kind.PROJECT:
            answer = await self.meta.project_versions(node.entity, node.project)
            out: list[tuple[str, Node]] = []
            for v in answer.value:
                target = f"{v.name}:{v.version}"
                out.append((target, self._version_node(v, answer.expires)))
                for alias in v.aliases:
                    alias_node = self._alias_node(node.entity, node.project, v.name, alias, target, answer.expires)
                    out.append((f"{v.name}:{alias}", alias_node))
            out.sort(key=lambda item: item[0])
            return out
        if kind in (Kind.VERSION, Kind.DIR):
            slot = await self._slot(node)
            if slot is not None:
                return [(name.decode(), child) for name, child in self._indexed_listing(slot, node)]
            if node.children is not None and node.children_at == self._dropped:
                return node.children  # the common case of a repeated walk: no node was forgotten
            listing = await self._listing(node)
            content = self._content
            node.children = [(d.name, content(node, d.name, d.entry)) for d in listing]
            node.children_at = self._dropped
            node.encoded = None
            return node.children
        if kind is Kind.VIEW:
            versions = (await self.meta.project_versions(node.entity, node.project)).value
            out = []
            for v in versions:
                out.append((f"{v.name}:{v.version}", self._view_version(v)))
            out.sort(key=lambda item: item[0])
            return out
        if kind is Kind.VIEW_VERSION:
            return [(name, await self._view_file(node, name)) for name in VIEW_FILES]
        raise EntryNotFound("not a directory")

    def _view_version(self, v: VersionInfo) -> Node:
        key: tuple[object, ...] = ("vv", *_version_key(v)[1:])
        return self._intern(key, lambda i: Node(i, Kind.VIEW_VERSION, key, v.entity, v.project, v.name, version=v))

    async def _view_file(self, parent: Node, name: str) -> Node:
        """``info.json`` or ``manifest.json`` of ``parent``'s version, its content made now
        (``manifest.json`` once: a version's manifest never changes)."""
        assert parent.version is not None
        key: tuple[object, ...] = ("vf", *_version_key(parent.version)[1:], name)
        v = parent.version
        node = self._intern(key, lambda i: Node(i, Kind.VIEW_FILE, key, v.entity, v.project, version=v, path=name))
        if name == "manifest.json":
            if node.file is None:
                made = await self.meta.manifest_json(node.version or parent.version)
                node.file = node.file or made  # another request may have made it meanwhile
        else:
            await self.refresh_view_file(node)
        return node

    async def refresh_view_file(self, node: Node) -> None:
        """Make ``info.json`` again from the version as the registry has it now (aliases,
        description and metadata move), at most once per ``alias_ttl``."""
        if node.path != "info.json" or (node.data and trio.current_time() < node.expires):
            return
        assert node.version is not None
        v = node.version
        try:
            v = (await self.meta.resolve(v.ref)).value
        except ArtifactNotFound:
            log.info("%s was deleted from the registry; %s shows what was mounted", v.ref, VIEW_DIR)
        else:
            if v.id == node.version.id:
                node.version = v
        info = node.version.to_json()
        info.update(await self.provenance(node.version))
        node.data = (json.dumps(info, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode()
        node.expires = trio.current_time() + self.alias_ttl

    async def provenance(self, v: VersionInfo) -> dict[str, Any]:
        """What ``info.json`` says beyond the version itself: the run that logged it and the
        runs that used it, where the registry keeps lineage (none known otherwise)."""
        # The same question as the lineage xattrs (Meta.lineage), so a remote answer is shared.
        lineage = await self.meta.lineage(v)
        return {
            "logged_by": None if lineage.logged_by is None else lineage.logged_by.to_json(),
            "used_by": [run.to_json() for run in lineage.used_by],
        }

    async def _listing(self, node: Node) -> list[DirEntry]:
        """The registry's listing of a version directory, asked once per node."""
        if node.listing is None:
            assert node.version is not None
            node.listing = await self.meta.list_dir(node.version, node.path)
        return node.listing

    async def files_after(self, node: Node, count: int) -> list[tuple[VersionInfo, Entry]]:
        """Up to ``count`` files that follow ``node`` in its directory's listing (the order a
        reader walking the directory takes): what the ``--prefetch`` lookahead fetches next."""
        if node.version is None or node.kind is not Kind.FILE:
            return []
        parent_path, _, name = node.path.rpartition("/")
        if node.inode > INDEX_MASK:
            index = self._slot_info[(node.inode >> INDEX_SHIFT) - 1][0]
            return [(node.version, e) for e in index.following(node.path, count)]
        parent = self._by_key.get(_content_key(node.version, parent_path)) if parent_path else None
        if parent is None:
            parent = self._by_key.get(_version_key(node.version)) if not parent_path else None
        if parent is None or parent.listing is None:
            listing = await self.meta.list_dir(node.version, parent_path)
            if parent is not None:
                parent.listing = listing
        else:
            listing = parent.listing
        out: list[tuple[VersionInfo, Entry]] = []
        lo, hi = 0, len(listing)
        while lo < hi:  # listings are sorted by name
            mid = (lo + hi) // 2
            if listing[mid].name <= name:
                lo = mid + 1
            else:
                hi = mid
        for d in listing[lo:]:
            if len(out) >= count:
                break
            if d.entry is not None:
                out.append((node.version, d.entry))
        return out

    async def readlink(self, inode: int) -> str:
        node = self.node(inode)
        if node.kind is not Kind.ALIAS:
            raise EntryNotFound("not a symlink")
        if trio.current_time() >= node.expires:
            answer = await self.meta.resolve(Ref(node.entity, node.project, node.collection, node.alias))
            target = f"{node.collection}:{answer.value.version}"
            if answer.expires >= node.expires:
                node.target = target
                node.expires = answer.expires
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
        if kind is Kind.VIEW_VERSION:
            assert node.version is not None
            return Attr(node.inode, stat.S_IFDIR | 0o555, 0, 2, node.version.created_at_ns, FOREVER)
        if kind is Kind.VIEW_FILE:
            assert node.version is not None
            fixed = node.path == "manifest.json"
            timeout = FOREVER if fixed else self.alias_ttl
            mtime = node.version.created_at_ns if fixed else node.version.updated_at_ns
            size = node.file.size if node.file is not None else len(node.data)
            return Attr(node.inode, stat.S_IFREG | 0o444, size, 1, mtime, timeout)
        return Attr(node.inode, stat.S_IFDIR | 0o555, 0, 2, self.mount_time_ns, self.alias_ttl)

    def negative_timeout(self, parent_inode: int) -> float:
        """How long the kernel may remember that a name does not exist in this directory."""
        if parent_inode > INDEX_MASK:  # inside a version (an indexed directory)
            return FOREVER
        parent = self._nodes.get(parent_inode)
        return FOREVER if parent is not None and parent.kind.immutable else self.alias_ttl

    # -- extended attributes ----------------------------------------------------------------------

    async def _fresh_version(self, node: Node) -> VersionInfo:
        """A version's info, re-read after alias_ttl (aliases and updated_at move)."""
        assert node.version is not None
        if node.kind is Kind.VERSION and trio.current_time() >= node.expires:
            ref = node.version.ref
            try:
                answer = await self.meta.resolve(ref)
            except ArtifactNotFound:
                if node.version.state != DELETED:
                    log.info("%s was deleted from the registry; serving what was mounted", ref)
                    # Its aliases were dropped with it; its state says so (as W&B's does).
                    node.version = replace(node.version, aliases=(), state=DELETED)
                node.expires = trio.current_time() + self.alias_ttl
            else:
                if answer.value.id == node.version.id:
                    node.version = answer.value
                else:  # cannot happen with the registries we have: version numbers are not reused
                    log.info("%s now names another version; serving what was mounted", ref)
                node.expires = max(node.expires, answer.expires)
        return node.version

    async def _lineage(self, v: VersionInfo) -> dict[str, str]:
        """``logged_by`` (``entity/project/run_id``) and ``used_by`` (comma-separated) of a
        version, each left out when no run is known (:meth:`Meta.lineage`: one question, and
        unknown when the registry cannot answer)."""
        lineage = await self.meta.lineage(v)
        out = {}
        if lineage.logged_by is not None:
            out["logged_by"] = lineage.logged_by.path
        if lineage.used_by:
            out["used_by"] = ",".join(run.path for run in lineage.used_by)
        return out

    async def xattrs(self, node: Node, stats: Callable[[], dict[str, int]] | None = None) -> dict[str, bytes]:
        """Extended attributes of a node (``user.`` namespace).  Never contains secrets."""
        if node.kind is Kind.VERSION:
            v = await self._fresh_version(node)
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
                "qualified_name": str(v.ref),
                "source_version": v.source_version,
                "source_qualified_name": v.source_qualified_name,
                "file_count": str(v.file_count),
            }
            attrs.update(await self._lineage(v))
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


def _version_key(v: VersionInfo) -> tuple[object, ...]:
    """A version directory's node key: its id and the name it is shown under.  On W&B a linked
    membership (a registry's member too) shares its source's id, yet ``golden:v0`` and ``ds:v3``
    are two directories with their own version attributes, ``.artifactfs`` views and content
    nodes: a content node carries the version it is read through, and a registry member's files
    are read through the registry (its source may be invisible to the reader)."""
    return ("v", v.id, v.entity, v.project, v.name, v.version_index)


def _content_key(v: VersionInfo, path: str) -> tuple[object, ...]:
    return ("c", *_version_key(v)[1:], path)
