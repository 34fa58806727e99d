"""pyfuse3 request handlers: thin glue between the kernel and :mod:`tree` / :mod:`fetcher`.

This is the one place where exceptions become errnos: every handler runs under
:func:`_errno_boundary`, which turns :class:`~artifactfs.errors.ArtifactFSError` into
``FUSEError(exc.errno)`` (logged at the error's own level) and anything unexpected into EIO
(logged with its traceback).  ``trio.Cancelled`` and other ``BaseException`` pass through.

Metadata handlers await the tree, which asks the registry through :class:`~artifactfs.meta.Meta`
(inline for a local registry, worker threads for a remote one); nothing here blocks the loop on
a registry call.

Per-request cost is what limits a listing or a walk over many small files (each request costs
~25-30 us of Python here; see docs/PERFORMANCE.md), so the hot handlers avoid work per request:
an immutable node keeps its ready-made ``EntryAttributes`` (``node.attrs``), xattr names outside
``user.`` (``ls -l`` asks ``security.selinux`` and ``system.posix_acl_access`` for every file)
are refused before anything else is looked at, and ``--xattrs off`` answers ENOSYS, after which
the kernel asks no more.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from .engine import Engine, Lookahead
from .errors import ArtifactFSError, BlobChanged, NotFound, ReadOnly
from .fetcher import Fetcher
from .manifest import Entry
from .metrics import ACTIVITY as activity
from .registry.base import VersionInfo
from .store import Blob
from .tree import FOREVER, Attr, Kind, Listing, Node, Tree

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
_FILE_MODE = stat.S_IFREG | 0o444  # version content, as Tree.getattr makes it
_DIR_MODE = stat.S_IFDIR | 0o555
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


def _errno_boundary(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        activity.requests += 1  # the loop monitor's sign that the mount is busy
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except ArtifactFSError as exc:
            log.log(logging.DEBUG if exc.logged else exc.log_level, "%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from exc
        except Exception as exc:
            log.exception("%s failed unexpectedly", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from exc

    return wrapper


@dataclass(slots=True)
class _OpenFile:
    version: VersionInfo
    entry: Entry | None  # None: a view file, whose bytes are in ``blob`` from the start
    node: Node
    blob: Blob | None = None


@dataclass(slots=True)
class _OpenDir:
    inode: int
    children: list[tuple[bytes, Node]] | None = None
    dropped: int = -1  # Tree.dropped when ``children`` was asked
    # A directory of an indexed version: (inode base, mtime_ns, listing, its names), no node made.
    rows: tuple[int, int, Listing, list[bytes]] | None = None


class Operations(pyfuse3.Operations):
    """The read-only artifact filesystem."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        tree: Tree,
        fetcher: Fetcher,
        *,
        pread_in_thread: bool = False,
        xattrs: bool = True,
        lookahead: Lookahead | None = None,
        engine: Engine | None = None,
    ) -> None:
        super().__init__()
        # Verified local blobs are read inline by default: scripts/bench measures both ways.
        self._pread_in_thread = pread_in_thread
        self.xattrs = xattrs
        self.lookahead = lookahead
        self.engine = engine  # told of every open of a version's file: walks warm in the background
        self.tree = tree  # owns the Meta that asks the registry (inline or in threads)
        self.fetcher = fetcher
        self._files: dict[int, _OpenFile] = {}
        self._dirs: dict[int, _OpenDir] = {}
        self._next_fh = 1

    def _fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        """The node's attributes as pyfuse3 wants them; made once for immutable nodes (their
        attributes never change), afresh for the others (aliases move, listings expire)."""
        out: pyfuse3.EntryAttributes | None = node.attrs
        if out is None:
            out = self._entry_attributes(self.tree.getattr(node))
            if node.kind.immutable:
                node.attrs = out
        return out

    def _entry_attributes(self, attr: Attr) -> pyfuse3.EntryAttributes:
        out = pyfuse3.EntryAttributes()
        out.st_ino = attr.inode
        out.generation = 0
        out.entry_timeout = attr.timeout
        out.attr_timeout = attr.timeout
        out.st_mode = attr.mode
        out.st_nlink = attr.nlink
        out.st_uid = self.tree.uid
        out.st_gid = self.tree.gid
        out.st_rdev = 0
        out.st_size = attr.size
        out.st_blksize = 128 * 1024
        out.st_blocks = attr.blocks
        out.st_atime_ns = attr.mtime_ns
        out.st_mtime_ns = attr.mtime_ns
        out.st_ctime_ns = attr.mtime_ns
        return out

    # -- namespace ------------------------------------------------------------------------------

    @_errno_boundary
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        try:
            node = await self.tree.lookup(parent_inode, text)
        except NotFound as exc:
            log.debug("lookup %r: %s", text, exc)
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = self.tree.negative_timeout(parent_inode)
            return negative
        self.tree.remember(node)
        return self._attributes(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # pyfuse3: forget must not raise at all.
        for inode, nlookup in inode_list:
            try:
                self.tree.forget(inode, nlookup)
            except Exception:
                log.exception("forget(%d, %d) failed", inode, nlookup)

    @_errno_boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attributes(self.tree.node(inode))

    @_errno_boundary
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return (await self.tree.readlink(inode)).encode()

    @_errno_boundary
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self.tree.node(inode)
        fh = self._fh()
        self._dirs[fh] = _OpenDir(inode)
        return fh

    @_errno_boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs.get(fh)
        if handle is None:  # a handle the kernel never got from opendir (or already released)
            raise pyfuse3.FUSEError(errno.EBADF)
        tree = self.tree
        if handle.rows is None and (handle.children is None or start_id == 0):
            indexed = await tree.indexed_listing(handle.inode)
            if indexed is not None:
                handle.rows = (*indexed, indexed[2].split_names())
        if handle.rows is not None:
            self._reply_rows(handle.rows, start_id, token)
            return
        if handle.children is None or start_id == 0:
            children = await tree.listdir_encoded(handle.inode)
            handle.children = children
            handle.dropped = tree.dropped
        else:
            children = handle.children
        # The per-entry loop is most of a listing's cost: nothing here but the reply.  While no
        # node was dropped since the listing was asked, counting a reference is one addition
        # (every node is still in the table); otherwise remember() puts it back if need be.
        reply = pyfuse3.readdir_reply
        attributes = self._attributes
        if tree.dropped == handle.dropped:
            for index in range(start_id, len(children)):
                name, node = children[index]
                if not reply(token, name, node.attrs or attributes(node), index + 1):
                    break
                node.lookups += 1
        else:
            remember = tree.remember
            for index in range(start_id, len(children)):
                name, node = children[index]
                if not reply(token, name, attributes(node), index + 1):
                    break
                remember(node)

    def _reply_rows(self, indexed: tuple[int, int, Listing, list[bytes]], start: int, token: Any) -> None:
        """readdirplus entries of an indexed directory straight from its listing, with the
        attributes a node would have (``Tree.getattr``): the daemon makes no node, and one
        ``EntryAttributes`` serves every entry (``readdir_reply`` copies it into the reply).
        This loop is most of a warm walk's CPU: nothing in it but the reply."""
        base, mtime_ns, listing, names = indexed
        a = pyfuse3.EntryAttributes()
        a.generation = 0
        a.entry_timeout = FOREVER
        a.attr_timeout = FOREVER
        a.st_uid = self.tree.uid
        a.st_gid = self.tree.gid
        a.st_rdev = 0
        a.st_blksize = 128 * 1024
        a.st_atime_ns = mtime_ns
        a.st_mtime_ns = mtime_ns
        a.st_ctime_ns = mtime_ns
        reply = pyfuse3.readdir_reply
        kind = 0  # what ``a`` holds now: 1 a file's mode, 2 a directory's
        offset = start
        for name, rid, size in zip(names[start:], listing.ids[start:], listing.sizes[start:], strict=True):
            offset += 1
            a.st_ino = base | rid
            if size < 0:
                if kind != 2:
                    a.st_mode = _DIR_MODE
                    a.st_nlink = 2
                    a.st_size = 0
                    a.st_blocks = 0
                    kind = 2
            else:
                if kind != 1:
                    a.st_mode = _FILE_MODE
                    a.st_nlink = 1
                    kind = 1
                a.st_size = size
                a.st_blocks = (size + 511) >> 9
            if not reply(token, name, a, offset):
                break

    @_errno_boundary
    async def releasedir(self, fh: int) -> None:
        handle = self._dirs.pop(fh, None)
        if handle is not None and handle.children:
            # Nodes made for entries the reader never got (``ls | head``) are unknown to the kernel.
            self.tree.drop_unreferenced(handle.children)

    # -- content --------------------------------------------------------------------------------

    @_errno_boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & _WRITE_FLAGS:
            raise ReadOnly("artifact versions are read-only")
        node = self.tree.node(inode)
        if node.kind is Kind.VIEW_FILE:
            return await self._open_view_file(node)
        if node.kind is not Kind.FILE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        assert node.version is not None and node.entry is not None
        if node.entry.size == 0:
            self.fetcher.check_empty(node.version, node.entry)
        fh = self._fh()
        self._files[fh] = _OpenFile(node.version, node.entry, node)
        if self.engine is not None:
            self.engine.opened(node.version, node.entry)
        # Version content never changes: let the kernel keep its page cache across opens.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=False)

    async def _open_view_file(self, node: Node) -> pyfuse3.FileInfo:
        """``.artifactfs/<name>:vN/info.json`` or ``manifest.json``: bytes made by the tree.
        ``info.json`` is made again (aliases move) and read with direct I/O, so a reader sees
        its whole new content even if its size changed since the kernel last asked."""
        await self.tree.refresh_view_file(node)
        assert node.version is not None
        fh = self._fh()
        if node.file is not None:  # manifest.json: an open file of it (its own descriptor for the blob)
            blob = Blob(fd=os.dup(node.file.fd), size=node.file.size)
        else:
            blob = Blob(data=node.data, size=len(node.data))
        self._files[fh] = _OpenFile(node.version, None, node, blob)
        fixed = node.path == "manifest.json"
        return pyfuse3.FileInfo(fh=fh, keep_cache=fixed, direct_io=not fixed)

    @_errno_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._files.get(fh)
        if handle is None:  # a handle the kernel never got from open (or already released)
            raise pyfuse3.FUSEError(errno.EBADF)
        for attempt in (1, 2):
            blob = handle.blob
            if blob is None:
                assert handle.entry is not None
                blob = await self.fetcher.get(handle.version, handle.entry)
                if self._files.get(fh) is not handle:  # released meanwhile (an interrupted reader)
                    try:
                        return await self._pread(blob, size, off)
                    except BlobChanged:
                        if attempt == 2:
                            raise
                        log.info("%s/%s changed under us; fetching it again", handle.version.ref, handle.entry.path)
                        continue
                    finally:
                        blob.close()
                if handle.blob is None:
                    handle.blob = blob
                    if self.lookahead is not None:
                        self.lookahead.after(handle.node)
                else:  # another read on this handle got there first
                    blob.close()
                    blob = handle.blob
            try:
                return await self._pread(blob, size, off)
            except BlobChanged:
                # The verified file changed (size, inode, mtime or ctime moved): serve nothing
                # from it; the fetcher verifies it again or fetches it again, once.
                if handle.blob is blob:
                    handle.blob = None
                blob.close()
                if attempt == 2:
                    raise
                log.info("%s/%s changed under us; fetching it again", handle.version.ref, handle.node.path)
        raise AssertionError("unreachable")

    async def _pread(self, blob: Blob, size: int, off: int) -> bytes:
        # Verified and local: pread inline (a thread hop would cost more than the read).
        if self._pread_in_thread:
            data = await trio.to_thread.run_sync(blob.pread, size, off)
        else:
            data = blob.pread(size, off)
        self.fetcher.stats.served_bytes += len(data)
        return data

    @_errno_boundary
    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is not None and handle.blob is not None:
            handle.blob.close()

    # -- extended attributes --------------------------------------------------------------------

    async def _xattrs(self, inode: int) -> dict[str, bytes]:
        return await self.tree.xattrs(self.tree.node(inode), self._stats)

    def _stats(self) -> dict[str, Any]:
        out = self.fetcher.stats.to_json()
        if self.engine is not None:
            out["engine"] = self.engine.to_json()
        return out

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        # Not under _errno_boundary, and no lookup before the answer: ``ls -l`` asks two names
        # outside ``user.`` of every file, and those answers are most of a listing's requests.
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # the kernel stops asking for this mount
        if not name.startswith(b"user."):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return await self._user_xattr(inode, name)

    @_errno_boundary
    async def _user_xattr(self, inode: int, name: bytes) -> bytes:
        value = (await self._xattrs(inode)).get(name.decode("utf-8", "replace"))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_errno_boundary
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return [name.encode() for name in await self._xattrs(inode)]

    @_errno_boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        out = pyfuse3.StatvfsData()
        out.f_bsize = 128 * 1024
        out.f_frsize = 4096
        out.f_blocks = out.f_bfree = out.f_bavail = 0
        out.f_files = len(self.tree)
        out.f_ffree = out.f_favail = 0
        out.f_namemax = 255
        return out

    # -- every write is EROFS -------------------------------------------------------------------

    async def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = _read_only
    mknod = _read_only
    mkdir = _read_only
    unlink = _read_only
    rmdir = _read_only
    symlink = _read_only
    rename = _read_only
    link = _read_only
    write = _read_only
    create = _read_only
    setxattr = _read_only
    removexattr = _read_only
