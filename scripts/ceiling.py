"""The pyfuse3 ceiling for scripts/bench: a minimal read-only filesystem over a directory.

Everything is precomputed at start (one ``EntryAttributes`` per path), reads are an inline
``os.pread``, files open with ``keep_cache``, timeouts are a year, and ``getxattr`` answers
ENOATTR (``--xattrs enosys``: ENOSYS, which makes the kernel stop asking).  No verification,
no registry: it shows what pyfuse3 itself allows on this machine, so the gap between it and a
plain directory is pyfuse3's and the gap between artifactfs and it is ours.

Usage: ``python scripts/ceiling.py SRC MOUNTPOINT [--xattrs enoattr|enosys]``; prints ``ok``
once mounted; unmount with ``fusermount3 -u``.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
from typing import Any

import pyfuse3
import trio

YEAR = 365 * 24 * 3600.0


class Ceiling(pyfuse3.Operations):
    def __init__(self, src: str, xattr_errno: int) -> None:
        super().__init__()
        self.xattr_errno = xattr_errno
        self.attrs: dict[int, pyfuse3.EntryAttributes] = {}
        self.children: dict[int, list[tuple[bytes, int]]] = {}
        self.names: dict[tuple[int, bytes], int] = {}
        self.paths: dict[int, str] = {}
        self.fds: dict[int, int] = {}
        self._inode_of: dict[str, int] = {}
        self._add(pyfuse3.ROOT_INODE, src)
        nxt = pyfuse3.ROOT_INODE + 1
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            parent = self._inode_of[dirpath]
            kids = self.children.setdefault(parent, [])
            for name in sorted(dirnames + filenames):
                path = os.path.join(dirpath, name)
                self._add(nxt, path)
                kids.append((name.encode(), nxt))
                self.names[(parent, name.encode())] = nxt
                nxt += 1

    def _add(self, inode: int, path: str) -> None:
        st = os.lstat(path)
        a = pyfuse3.EntryAttributes()
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks"):
            setattr(a, name, getattr(st, name))
        a.st_mode = stat.S_IFMT(st.st_mode) | (0o555 if stat.S_ISDIR(st.st_mode) else 0o444)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = st.st_mtime_ns
        a.st_ino, a.entry_timeout, a.attr_timeout, a.st_blksize = inode, YEAR, YEAR, 128 * 1024
        self.attrs[inode] = a
        self.paths[inode] = path
        self._inode_of[path] = inode

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        inode = self.names.get((parent_inode, name))
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs[inode]

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self.attrs[inode]

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        kids = self.children.get(fh, [])
        for i in range(start_id, len(kids)):
            name, inode = kids[i]
            if not pyfuse3.readdir_reply(token, name, self.attrs[inode], i + 1):
                break

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        fd = os.open(self.paths[inode], os.O_RDONLY)
        self.fds[fd] = fd
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    async def release(self, fh: int) -> None:
        os.close(self.fds.pop(fh))

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        raise pyfuse3.FUSEError(self.xattr_errno)

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        if self.xattr_errno == errno.ENOSYS:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return []


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("src")
    parser.add_argument("mountpoint")
    parser.add_argument("--xattrs", choices=("enoattr", "enosys"), default="enoattr")
    args = parser.parse_args()
    ops = Ceiling(os.path.abspath(args.src), pyfuse3.ENOATTR if args.xattrs == "enoattr" else errno.ENOSYS)
    pyfuse3.init(ops, args.mountpoint, set(pyfuse3.default_options) | {"fsname=ceiling", "ro"})
    print("ok", flush=True)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
