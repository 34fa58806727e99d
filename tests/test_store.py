"""BlobStore: the verified, content-addressed cache (no FUSE, no trio)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast

import pytest
import xxhash

from artifactfs import digests
from artifactfs.digests import PrefixHasher, hash_fd
from artifactfs.errors import BlobChanged, CacheError, DigestMismatch, FetchError
from artifactfs.fsutil import start_writeback
from artifactfs.manifest import EMPTY_MD5_B64, MD5, XXH128, Entry, digest_bytes
from artifactfs.sources import BlobSource
from artifactfs.store import BlobStore

MiB = 1 << 20


def entry_for(data: bytes, path: str = "f.bin") -> Entry:
    return Entry(path, digest_bytes(data), len(data))


def source(data: bytes) -> BlobSource:
    return BlobSource("test bytes", open=lambda: io.BytesIO(data))


def read_all(blob_store: BlobStore, key: str) -> bytes | None:
    blob = blob_store.open_cached(key)
    if blob is None:
        return None
    try:
        return blob.pread(blob.size + 1, 0)
    finally:
        blob.close()


def payload_files(directory: str) -> list[str]:
    """Files of the cache directory other than diskcache's database (that is: blobs, temp files)."""
    out = []
    for dirpath, _, filenames in os.walk(directory):
        for name in filenames:
            if not name.startswith("cache.db"):
                out.append(os.path.join(dirpath, name))
    return out


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BlobStore]:
    s = BlobStore(str(tmp_path / "cache"))
    yield s
    s.close()


# -- the cache directory ---------------------------------------------------------------------------


def test_cache_dir_is_created_private(tmp_path: Path) -> None:
    s = BlobStore(str(tmp_path / "new" / "cache"))
    try:
        assert stat.S_IMODE(os.stat(s.directory).st_mode) == 0o700
        assert os.path.isdir(s.tmp)
        assert stat.S_IMODE(os.stat(s.tmp).st_mode) == 0o700
    finally:
        s.close()


def test_existing_cache_dir_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    path.mkdir()
    os.chmod(path, 0o755)
    s = BlobStore(str(path))
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    finally:
        s.close()


def test_foreign_directory_is_refused_and_left_alone(tmp_path: Path) -> None:
    """--cache-dir pointed at ~ or /tmp by mistake: refused, and not chmod-ed to 0700."""
    path = tmp_path / "home"
    path.mkdir()
    (path / "notes.txt").write_text("mine\n")
    os.chmod(path, 0o755)
    with pytest.raises(CacheError, match="not an artifactfs cache"):
        BlobStore(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    assert os.listdir(path) == ["notes.txt"]  # no cache.db, no tmp/


def test_a_file_is_refused_as_cache_dir(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    os.chmod(path, 0o644)
    with pytest.raises(CacheError, match="not a directory"):
        BlobStore(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


@pytest.mark.parametrize("content", [[], ["mount.log"]], ids=["empty", "only-mount.log"])
def test_empty_or_log_only_directory_is_claimed(tmp_path: Path, content: list[str]) -> None:
    """A directory holding nothing, or only the log a background mount writes before the
    daemon opens the cache, is ours to use: made private and kept."""
    path = tmp_path / "cache"
    path.mkdir()
    for name in content:
        (path / name).write_text("log line\n")
    os.chmod(path, 0o755)
    s = BlobStore(str(path))
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        assert (path / "cache.db").exists()
        for name in content:
            assert (path / name).read_text() == "log line\n"
    finally:
        s.close()


def test_own_cache_dir_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    data = b"kept across opens\n" * 4096  # over diskcache's inline limit: a file of its own
    entry = entry_for(data)
    first = BlobStore(str(path))
    try:
        first.fill(entry.cache_key, entry, source(data), "f").close()
    finally:
        first.close()
    (path / "mount.log").write_text("a mount ran here\n")
    os.chmod(path, 0o755)
    assert len(os.listdir(path)) > 2  # cache.db, tmp/, mount.log, blob directories
    second = BlobStore(str(path))
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        assert read_all(second, entry.cache_key) == data
    finally:
        second.close()


# -- fill --------------------------------------------------------------------------------------------


def test_fill_publishes_matching_content(store: BlobStore) -> None:
    data = os.urandom(3 * MiB + 123)  # several read chunks
    entry = entry_for(data)
    blob = store.fill(entry.cache_key, entry, source(data), "f.bin")
    try:
        assert blob.size == len(data)
        assert blob.pread(len(data) + 10, 0) == data
    finally:
        blob.close()
    assert entry.cache_key in store
    assert read_all(store, entry.cache_key) == data
    assert os.listdir(store.tmp) == []


def test_fill_rejects_wrong_content(store: BlobStore) -> None:
    good, evil = b"good bytes\n" * 100, b"evil bytes\n" * 100
    entry = entry_for(good)
    with pytest.raises(DigestMismatch) as info:
        store.fill(entry.cache_key, entry, source(evil), "acme/vision/ds:v1/f.bin")
    assert info.value.what == "acme/vision/ds:v1/f.bin"
    assert entry.digest in info.value.expected
    assert digest_bytes(evil) in info.value.actual
    assert os.listdir(store.tmp) == []
    assert entry.cache_key not in store
    assert store.open_cached(entry.cache_key) is None
    assert payload_files(store.directory) == []
    # the mismatching bytes are not cached under their own address either
    assert entry_for(evil).cache_key not in store


def test_fill_rejects_wrong_size(store: BlobStore) -> None:
    data = b"0123456789"
    right_digest_wrong_size = Entry("f", digest_bytes(data), len(data) + 1)
    with pytest.raises(DigestMismatch):
        store.fill(right_digest_wrong_size.cache_key, right_digest_wrong_size, source(data), "f")
    assert right_digest_wrong_size.cache_key not in store
    assert os.listdir(store.tmp) == []
    assert payload_files(store.directory) == []


def test_fill_source_error_leaves_nothing(store: BlobStore) -> None:
    data = b"x" * 5000

    class Broken(io.RawIOBase):
        def __init__(self) -> None:
            self.sent = False

        def readable(self) -> bool:
            return True

        def readinto(self, buf: bytearray) -> int:  # type: ignore[override]
            if not self.sent:
                self.sent = True
                buf[:10] = data[:10]
                return 10
            raise ConnectionResetError(104, "Connection reset by peer")

    entry = entry_for(data)
    with pytest.raises(FetchError, match="Connection reset"):
        store.fill(entry.cache_key, entry, BlobSource("broken", open=lambda: cast(IO[bytes], Broken())), "f")
    assert entry.cache_key not in store
    assert os.listdir(store.tmp) == []


def test_fill_empty_blob(store: BlobStore) -> None:
    entry = Entry("empty", EMPTY_MD5_B64, 0)
    blob = store.fill(entry.cache_key, entry, source(b""), "empty")
    try:
        assert blob.size == 0
        assert blob.pread(4096, 0) == b""
    finally:
        blob.close()
    cached = store.open_cached(entry.cache_key)
    assert cached is not None
    try:
        assert cached.size == 0
        assert cached.pread(10, 0) == b""
    finally:
        cached.close()


def test_open_cached_serves_same_bytes_at_offsets(store: BlobStore) -> None:
    data = os.urandom(MiB + 17)
    entry = entry_for(data)
    store.fill(entry.cache_key, entry, source(data), "f").close()
    blob = store.open_cached(entry.cache_key)
    assert blob is not None
    try:
        assert blob.size == len(data)
        for offset, size in [(0, 1), (1, 4096), (MiB - 3, 10), (len(data) - 5, 100), (len(data), 10)]:
            assert blob.pread(size, offset) == data[offset : offset + size]
    finally:
        blob.close()
    assert store.open_cached("md5/" + "0" * 32) is None


def test_fill_adopts_temp_file_without_copy(store: BlobStore) -> None:
    data = os.urandom(2 * MiB)
    entry = entry_for(data)
    temp_inodes: list[int] = []

    def opener() -> IO[bytes]:
        # the temp file exists (in tmp/) by the time the source is opened
        (name,) = os.listdir(store.tmp)
        temp_inodes.append(os.stat(os.path.join(store.tmp, name)).st_ino)
        return io.BytesIO(data)

    blob = store.fill(entry.cache_key, entry, BlobSource("f", open=opener), "f")
    blob.close()
    assert os.listdir(store.tmp) == []
    (cached,) = payload_files(store.directory)
    assert os.stat(cached).st_ino == temp_inodes[0]  # renamed, not copied
    assert os.path.getsize(cached) == len(data)
    # the cache counts the blob once
    db_bytes = store.volume - len(data)
    assert 0 < db_bytes < MiB // 4


def test_lru_eviction_keeps_recently_used(tmp_path: Path) -> None:
    s = BlobStore(str(tmp_path / "cache"), size_limit=int(2.5 * MiB))
    try:
        blobs = [bytes([i]) * MiB for i in range(3)]
        entries = [entry_for(b, f"f{i}") for i, b in enumerate(blobs)]
        for i in (0, 1):
            s.fill(entries[i].cache_key, entries[i], source(blobs[i]), f"f{i}").close()
            time.sleep(0.01)
        assert read_all(s, entries[0].cache_key) == blobs[0]  # 0 is now more recent than 1
        time.sleep(0.01)
        s.fill(entries[2].cache_key, entries[2], source(blobs[2]), "f2").close()
        assert entries[1].cache_key not in s  # least recently used
        assert read_all(s, entries[0].cache_key) == blobs[0]
        assert read_all(s, entries[2].cache_key) == blobs[2]  # the blob just stored
        assert s.volume <= int(2.5 * MiB)
        assert len(payload_files(s.directory)) == 2
    finally:
        s.close()


def test_two_stores_on_one_directory_share_blobs(tmp_path: Path) -> None:
    a = BlobStore(str(tmp_path / "cache"))
    b = BlobStore(str(tmp_path / "cache"))
    try:
        data = b"shared between mounts\n" * 1000
        entry = entry_for(data)
        assert entry.cache_key not in b
        a.fill(entry.cache_key, entry, source(data), "f").close()
        assert entry.cache_key in b
        assert read_all(b, entry.cache_key) == data
        other = b"the other way round"
        other_entry = entry_for(other)
        b.fill(other_entry.cache_key, other_entry, source(other), "g").close()
        assert read_all(a, other_entry.cache_key) == other
    finally:
        a.close()
        b.close()


# -- verify in place ----------------------------------------------------------------------------------


@pytest.fixture
def local_blob(tmp_path: Path) -> tuple[Path, bytes, Entry]:
    data = os.urandom(MiB + 1)
    path = tmp_path / "objects" / "blob"
    path.parent.mkdir()
    path.write_bytes(data)
    return path, data, entry_for(data)


def _ctime_tick() -> None:
    """Let the clock move past the file timestamp granularity before a change."""
    time.sleep(0.03)


def test_verify_in_place_then_trusted(store: BlobStore, local_blob: tuple[Path, bytes, Entry], tmp_path: Path) -> None:
    path, data, entry = local_blob
    key = entry.cache_key
    assert store.open_trusted(key, str(path)) is None  # never verified
    blob = store.verify_in_place(key, entry, str(path), "f")
    try:
        assert blob.size == len(data)
        assert blob.pread(100, MiB - 50) == data[MiB - 50 : MiB + 50]
    finally:
        blob.close()
    assert key not in store  # not copied into the cache
    assert payload_files(store.directory) == []
    trusted = store.open_trusted(key, str(path))
    assert trusted is not None
    try:
        assert trusted.pread(len(data) + 1, 0) == data
    finally:
        trusted.close()
    # the record names the file it was made for
    other = tmp_path / "copy"
    other.write_bytes(data)
    assert store.open_trusted(key, str(other)) is None
    # another store (another mount) on the same directory honours it
    second = BlobStore(store.directory)
    try:
        again = second.open_trusted(key, str(path))
        assert again is not None
        again.close()
    finally:
        second.close()


@pytest.mark.parametrize("change", ["rewrite same size", "touch", "chmod", "replace"])
def test_trust_is_lost_when_file_changes(store: BlobStore, local_blob: tuple[Path, bytes, Entry], change: str) -> None:
    path, data, entry = local_blob
    store.verify_in_place(entry.cache_key, entry, str(path), "f").close()
    trusted = store.open_trusted(entry.cache_key, str(path))  # also remembered in this process
    assert trusted is not None
    trusted.close()
    _ctime_tick()
    if change == "rewrite same size":
        with open(path, "r+b") as f:
            f.write(b"X" * 16)
    elif change == "touch":
        os.utime(path)
    elif change == "chmod":  # changes only the ctime
        os.chmod(path, 0o400)
    else:
        tmp = path.with_suffix(".new")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    assert store.open_trusted(entry.cache_key, str(path)) is None
    if change == "rewrite same size":
        with pytest.raises(DigestMismatch):
            store.verify_in_place(entry.cache_key, entry, str(path), "f")
        assert store.open_trusted(entry.cache_key, str(path)) is None
    else:  # same bytes: a new hash restores trust
        store.verify_in_place(entry.cache_key, entry, str(path), "f").close()
        blob = store.open_trusted(entry.cache_key, str(path))
        assert blob is not None
        blob.close()


def test_verify_in_place_rejects_corrupted_file(store: BlobStore, local_blob: tuple[Path, bytes, Entry]) -> None:
    path, data, entry = local_blob
    corrupted = bytearray(data)
    corrupted[12345] ^= 0xFF
    path.write_bytes(bytes(corrupted))
    with pytest.raises(DigestMismatch):
        store.verify_in_place(entry.cache_key, entry, str(path), "f")
    assert store.open_trusted(entry.cache_key, str(path)) is None
    from artifactfs.store import _TRUST_PREFIX

    assert _TRUST_PREFIX + entry.cache_key not in store


def test_verify_in_place_mismatch_drops_old_trust_record(
    store: BlobStore, local_blob: tuple[Path, bytes, Entry]
) -> None:
    from artifactfs.store import _TRUST_PREFIX

    path, data, entry = local_blob
    store.verify_in_place(entry.cache_key, entry, str(path), "f").close()
    assert _TRUST_PREFIX + entry.cache_key in store
    _ctime_tick()
    path.write_bytes(data[:-1] + b"\x00" if data[-1:] != b"\x00" else data[:-1] + b"\x01")
    with pytest.raises(DigestMismatch):
        store.verify_in_place(entry.cache_key, entry, str(path), "f")
    assert _TRUST_PREFIX + entry.cache_key not in store


def test_verify_in_place_wrong_size(store: BlobStore, local_blob: tuple[Path, bytes, Entry]) -> None:
    path, data, _ = local_blob
    entry = Entry("f", digest_bytes(data), len(data) - 1)
    with pytest.raises(DigestMismatch):
        store.verify_in_place(entry.cache_key, entry, str(path), "f")
    assert store.open_trusted(entry.cache_key, str(path)) is None


def test_verify_in_place_missing_file(store: BlobStore, tmp_path: Path) -> None:
    entry = entry_for(b"nothing")
    with pytest.raises(FetchError, match="missing"):
        store.verify_in_place(entry.cache_key, entry, str(tmp_path / "absent"), "f")


def test_verify_in_place_of_a_huge_wrong_sized_blob_hashes_nothing(
    store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob far larger than its entry (2 GiB, sparse) fails on its size alone: hashing it
    first would stall a reader for seconds per GiB."""
    import artifactfs.store as store_module

    path = tmp_path / "huge"
    path.touch()
    huge = 2 << 30
    os.truncate(path, huge)
    entry = entry_for(b"small\n")  # 6 bytes
    hashed: list[tuple[int, str, int | None]] = []
    read = [0]
    real_pread = os.pread

    def spy_hash_fd(fd: int, alg: str = MD5, limit: int | None = None, chunk: int = MiB) -> tuple[str, int]:
        hashed.append((fd, alg, limit))
        return hash_fd(fd, alg, limit, chunk)

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        data = real_pread(fd, n, offset)
        read[0] += len(data)
        if read[0] > entry.size + 1:  # fail at once rather than hash 2 GiB
            raise AssertionError(f"read {read[0]} bytes of a blob whose entry has {entry.size}")
        return data

    monkeypatch.setattr(store_module, "hash_fd", spy_hash_fd)
    monkeypatch.setattr(os, "pread", counting_pread)
    with pytest.raises(DigestMismatch) as info:
        store.verify_in_place(entry.cache_key, entry, str(path), "acme/vision/ds:v0/f")
    monkeypatch.undo()
    assert hashed == []
    assert read[0] <= entry.size + 1
    assert f"({huge} bytes)" in str(info.value)
    assert f"({huge} bytes)" in info.value.actual
    assert store.open_trusted(entry.cache_key, str(path)) is None


# -- XXH128 ---------------------------------------------------------------------------------------------


def xxh_entry(data: bytes) -> Entry:
    digest = base64.b64encode(xxhash.xxh128(data).digest()).decode()
    return Entry("x.bin", digest, len(data), extra={"alg": XXH128})


def test_xxh128_fill(store: BlobStore) -> None:
    data = os.urandom(100_000)
    entry = xxh_entry(data)
    assert entry.cache_key.startswith("xxh128/")
    store.fill(entry.cache_key, entry, source(data), "x").close()
    assert read_all(store, entry.cache_key) == data
    bad = xxh_entry(b"other" + data[5:])
    with pytest.raises(DigestMismatch):
        store.fill(bad.cache_key, bad, source(data), "x")
    assert bad.cache_key not in store
    # an MD5 digest labelled XXH128 does not verify: the right algorithm is used
    md5_as_xxh = Entry("x.bin", base64.b64encode(hashlib.md5(data).digest()).decode(), len(data), extra={"alg": XXH128})
    with pytest.raises(DigestMismatch):
        store.fill(md5_as_xxh.cache_key, md5_as_xxh, source(data), "x")


def test_xxh128_verify_in_place(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(50_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    entry = xxh_entry(data)
    store.verify_in_place(entry.cache_key, entry, str(path), "x").close()
    blob = store.open_trusted(entry.cache_key, str(path))
    assert blob is not None
    blob.close()
    md5_entry = Entry("x.bin", digest_bytes(data), len(data), extra={"alg": XXH128})
    with pytest.raises(DigestMismatch):
        store.verify_in_place(md5_entry.cache_key, md5_entry, str(path), "x")


# -- temp files -------------------------------------------------------------------------------------------


def test_clean_tmp_removes_files_of_dead_writers_and_old_files(store: BlobStore) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no process has any more
    me = os.getpid()
    files = {
        "dead": os.path.join(store.tmp, f"{dead.pid}-a.part"),
        "old": os.path.join(store.tmp, f"{me}-old.part"),
        "new": os.path.join(store.tmp, f"{me}-new.part"),
        "unnamed": os.path.join(store.tmp, "no-pid.part"),
    }
    for path in files.values():
        with open(path, "wb") as f:
            f.write(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(files["old"], (two_hours_ago, two_hours_ago))
    store.clean_tmp(max_age=3600)
    assert sorted(os.listdir(store.tmp)) == sorted([f"{me}-new.part", "no-pid.part"])
    store.clean_tmp(max_age=0.0)
    assert os.listdir(store.tmp) == []


# -- hashing a download as it arrives ----------------------------------------------------------------


def test_prefix_hasher_hashes_parts_written_out_of_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts arriving in any order are hashed as the written prefix grows, and each hashed
    stretch has its writeback started (the fsync at the end then finds it on disk)."""
    data = os.urandom(2 * MiB + 17)
    part = 256 * 1024
    started: list[tuple[int, int]] = []
    real = digests.start_writeback

    def spy(fd: int, offset: int, length: int) -> None:
        started.append((offset, length))
        real(fd, offset, length)

    monkeypatch.setattr(digests, "start_writeback", spy)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        hasher = PrefixHasher(fd, MD5)
        starts = list(range(0, len(data), part))
        done: set[int] = set()
        lock = threading.Lock()

        def write(start: int) -> None:
            os.pwrite(fd, data[start : start + part], start)
            with lock:
                done.add(start)
                end = 0
                while end in done:
                    end += part
            hasher.advance(min(end, len(data)))

        threads = [threading.Thread(target=write, args=(s,)) for s in reversed(starts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert hasher._pos == len(data)  # hashed while the parts arrived, not at the end
        assert hasher.finish(limit=len(data)) == (digest_bytes(data), len(data))
        covered = 0
        for offset, length in sorted(started):  # the whole file, each byte once, in stretches
            assert offset == covered and length > 0
            covered += length
        assert covered == len(data)
    finally:
        os.close(fd)


def test_start_writeback_is_best_effort(tmp_path: Path) -> None:
    """On a file it starts the writeback and the bytes stay as written; on what is no file (a
    pipe) or a closed descriptor it does nothing and raises nothing."""
    path = tmp_path / "f"
    data = os.urandom(MiB)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data, 0)
        start_writeback(fd, 0, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    r, w = os.pipe()
    try:
        start_writeback(w, 0, 10)
    finally:
        os.close(r)
        os.close(w)
    start_writeback(w, 0, 10)  # closed by now: EBADF, ignored


def test_prefix_hasher_restart_and_short_file(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        hasher = PrefixHasher(fd, XXH128)
        os.pwrite(fd, b"stale bytes", 0)
        hasher.advance(11)
        os.ftruncate(fd, 0)
        hasher.restart()
        os.pwrite(fd, b"fresh", 0)
        hasher.advance(100)  # more than was written: hashes what is there, no busy loop
        os.pwrite(fd, b" and more", 5)
        assert hasher.finish(limit=100) == (digest_bytes(b"fresh and more", XXH128), 14)
    finally:
        os.close(fd)


# -- durability: a cached blob is served only while its file is the one that was verified ----------


def cache_file(s: BlobStore, key: str) -> Path:
    handle = s._cache.get(key, read=True)
    assert handle is not None
    with handle:
        return Path(handle.name)


def rewrite(path: Path, data: bytes, *, keep_mtime: bool = False) -> None:
    """What a stray writer or a torn write leaves: new bytes in the same file (same inode)."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate(len(data))
    if keep_mtime:  # user space can restore the mtime, never the ctime
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize(
    "damage",
    ["truncate", "extend", "overwrite", "overwrite-keep-mtime"],
)
@pytest.mark.allow_log(r"cached blob of f is corrupt")
def test_damaged_cache_file_is_never_served_between_mounts(tmp_path: Path, damage: str) -> None:
    data = os.urandom(3 * MiB)
    entry = entry_for(data)
    first = BlobStore(str(tmp_path / "cache"))
    first.fill(entry.cache_key, entry, source(data), "f").close()
    path = cache_file(first, entry.cache_key)
    first.close()
    if damage == "truncate":
        os.truncate(path, 50_000)
    elif damage == "extend":
        with open(path, "ab") as f:
            f.write(b"more")
    else:
        rewrite(path, bytes(len(data)), keep_mtime=damage.endswith("keep-mtime"))

    second = BlobStore(str(tmp_path / "cache"))  # a later mount on the same cache
    try:
        assert second.open_cached(entry.cache_key) is None  # not proven: never served inline
        assert second.open_verified(entry.cache_key, entry, "f") is None  # hashed, wrong: evicted
        assert entry.cache_key not in second
        blob = second.fill(entry.cache_key, entry, source(data), "f")
        assert blob.pread(len(data) + 1, 0) == data
        blob.close()
        assert read_all(second, entry.cache_key) == data
    finally:
        second.close()


@pytest.mark.allow_log(r"cached blob of f is corrupt")
def test_overwrite_behind_an_open_blob_is_refused_then_refetched(store: BlobStore) -> None:
    data = os.urandom(MiB)
    entry = entry_for(data)
    store.fill(entry.cache_key, entry, source(data), "f").close()
    blob = store.open_cached(entry.cache_key)
    assert blob is not None and blob.pread(10, 0) == data[:10]
    rewrite(cache_file(store, entry.cache_key), os.urandom(MiB), keep_mtime=True)
    with pytest.raises(BlobChanged):
        blob.pread(10, 0)  # the bytes read are refused, not served
    blob.close()
    assert store.open_cached(entry.cache_key) is None  # the memo re-checks the identity too
    assert store.open_verified(entry.cache_key, entry, "f") is None
    assert entry.cache_key not in store


def test_truncation_behind_an_open_blob_is_refused(store: BlobStore) -> None:
    data = os.urandom(MiB)
    entry = entry_for(data)
    blob = store.fill(entry.cache_key, entry, source(data), "f")
    os.truncate(cache_file(store, entry.cache_key), 1000)
    with pytest.raises(BlobChanged):
        blob.pread(4096, 0)
    blob.close()


def test_identity_change_with_right_bytes_is_trusted_again(store: BlobStore) -> None:
    data = os.urandom(MiB)
    entry = entry_for(data)
    store.fill(entry.cache_key, entry, source(data), "f").close()
    path = cache_file(store, entry.cache_key)
    os.utime(path)  # a touch: new mtime and ctime, same bytes
    assert store.open_cached(entry.cache_key) is None
    blob = store.open_verified(entry.cache_key, entry, "f")  # re-hashed, right: kept
    assert blob is not None and blob.pread(len(data), 0) == data
    blob.close()
    again = store.open_cached(entry.cache_key)  # and provable inline again
    assert again is not None
    again.close()


def test_lost_record_means_rehash_not_trust(store: BlobStore) -> None:
    """A crash between the rename and the record that vouches for the file leaves a cache entry
    without a record: it is hashed before it is served."""
    data = os.urandom(MiB)
    entry = entry_for(data)
    store.fill(entry.cache_key, entry, source(data), "f").close()
    store._cache.delete("cached/" + entry.cache_key)
    store._memo.clear()
    assert store.open_cached(entry.cache_key) is None
    blob = store.open_verified(entry.cache_key, entry, "f")
    assert blob is not None and blob.pread(len(data), 0) == data
    blob.close()


def test_fill_syncs_the_file_before_the_rename_and_the_directory_after(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def rename(src: str, dst: str) -> None:
        events.append("rename")
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    data = b"durable before visible"
    entry = entry_for(data)
    store.fill(entry.cache_key, entry, source(data), "f").close()
    assert events == ["fsync-file", "rename", "fsync-dir"]


def test_in_place_blob_overwritten_behind_an_open_blob_is_refused(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(MiB)
    entry = entry_for(data)
    path = tmp_path / "blob"
    path.write_bytes(data)
    blob = store.verify_in_place(entry.cache_key, entry, str(path), "f")
    rewrite(path, os.urandom(MiB), keep_mtime=True)
    with pytest.raises(BlobChanged):
        blob.pread(10, 0)
    blob.close()
    assert store.open_trusted(entry.cache_key, str(path)) is None


def test_fill_walks_the_source_chain(store: BlobStore, caplog: pytest.LogCaptureFixture) -> None:
    data = b"the right bytes\n" * 100
    entry = entry_for(data)
    wrong = BlobSource("a stale copy", open=lambda: io.BytesIO(b"x" * len(data)))
    chain = BlobSource(
        "the sdk cache",
        open=lambda: io.BytesIO(b"short"),
        fallback=BlobSource("another", open=wrong.open, fallback=source(data)),
    )
    with caplog.at_level("WARNING"):
        blob = store.fill(entry.cache_key, entry, chain, "f")
    assert blob.pread(len(data), 0) == data
    blob.close()
    assert "trying another" in caplog.text and "trying test bytes" in caplog.text
    assert os.listdir(store.tmp) == []
    only_wrong = BlobSource("first", open=wrong.open, fallback=wrong)
    other = entry_for(data + b"!")
    with pytest.raises(DigestMismatch):
        store.fill(other.cache_key, other, only_wrong, "g")
    assert other.cache_key not in store


def test_unlinked_blob_held_open_keeps_serving(store: BlobStore) -> None:
    """Eviction or gc unlinks a file a reader may hold: that moves only its ctime."""
    data = os.urandom(MiB)
    entry = entry_for(data)
    blob = store.fill(entry.cache_key, entry, source(data), "f")
    os.unlink(cache_file(store, entry.cache_key))
    assert blob.pread(len(data), 0) == data
    blob.close()


def test_unlinked_and_rewritten_blob_is_refused(store: BlobStore) -> None:
    data = os.urandom(MiB)
    entry = entry_for(data)
    blob = store.fill(entry.cache_key, entry, source(data), "f")
    path = cache_file(store, entry.cache_key)
    with open(path, "r+b") as f:
        os.unlink(path)
        f.write(b"changed")
    with pytest.raises(BlobChanged):
        blob.pread(10, 0)
    blob.close()


def test_the_cache_index_is_named_as_diskcache_names_it(tmp_path: Path) -> None:
    """fsutil.CACHE_INDEX (which claim_cache_dir, doctor and the cache commands look for) is the
    file diskcache makes."""
    import diskcache.core

    from artifactfs.fsutil import CACHE, CACHE_INDEX, OURS, cache_dir_kind

    assert CACHE_INDEX == diskcache.core.DBNAME
    (tmp_path / "c").mkdir()
    assert cache_dir_kind(str(tmp_path / "c")) == OURS
    BlobStore(str(tmp_path / "c"), size_limit=1 << 20).close()
    assert (tmp_path / "c" / CACHE_INDEX).exists() and cache_dir_kind(str(tmp_path / "c")) == CACHE


def test_blob_served_before_its_batch_accepts_the_rename_and_no_other_change(tmp_path: Path) -> None:
    """A group-committed fill is served from its temp file at once; its batch's rename moves the
    file's ctime, which the open blob accepts (to the identity the batch saw after the rename).
    An overwrite in place afterwards (size kept, mtime put back: only the ctime tells) is refused."""
    data = os.urandom(3 * MiB)
    entry = entry_for(data)
    store = BlobStore(str(tmp_path / "cache"), group_commit=True)
    try:
        blob = store.fill(entry.cache_key, entry, source(data), "f", group=True)
        store._committer.flush()  # type: ignore[union-attr]  # renamed into the cache and recorded
        assert blob.pread(4096, 0) == data[:4096]  # the rename's ctime move is accepted
        rewrite(cache_file(store, entry.cache_key), os.urandom(3 * MiB), keep_mtime=True)
        with pytest.raises(BlobChanged):
            blob.pread(4096, 0)
        blob.close()
    finally:
        store.close()
