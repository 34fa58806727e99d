"""One mount per node, shared by every rank (docs/CLUSTERS.md): 8 processes read one artifact
through one mount at the same moment, and each blob is fetched once."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Mounter, write_tree

from artifactfs.names import parse_ref
from artifactfs.registry.local import LocalRegistry

pytestmark = pytest.mark.fuse

RANKS = 8
KiB = 1 << 10

# A rank: wait for the start signal, read every file of the version in its own order, print
# path -> md5 as JSON.  (A real job reads its shard plus shared files: the model, the validation
# set, a tokenizer; here every rank reads everything, the worst case for duplicate downloads.)
RANK = r"""
import hashlib, json, os, random, sys, time
root, go, rank = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
random.Random(rank).shuffle(files)
open(f"{go}.ready{rank}", "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
out = {}
for path in files:
    with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.md5(f.read()).hexdigest()
print(json.dumps(out))
"""


def test_eight_ranks_share_one_mount_and_fetch_each_blob_once(mounter: Mounter, tmp_path: Path) -> None:
    files = {f"shard-{i:02d}.bin": os.urandom(256 * KiB) for i in range(24)}
    files |= {"model.pt": os.urandom(4096 * KiB), "tokenizer.json": os.urandom(64 * KiB)}
    files["copy-of-shard-00.bin"] = files["shard-00.bin"]  # one blob, two paths: still one fetch
    src = write_tree(tmp_path / "src", files)
    reg_dir = tmp_path / "registry"
    reg = LocalRegistry(reg_dir, create=True)
    try:
        reg.log_dir(src, parse_ref("acme/llm/corpus"), type="dataset")
    finally:
        reg.close()
    blobs = {hashlib.md5(data).hexdigest(): len(data) for data in files.values()}
    assert len(blobs) == len(files) - 1

    # --local-blobs copy: every blob is fetched into the node's cache, as from W&B or S3.
    m = mounter(reg_dir, "--local-blobs", "copy")
    root = m.path / "acme" / "llm" / "corpus:latest"
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, str(root), str(go), str(rank)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for rank in range(RANKS)
    ]
    # Every rank has listed the version and waits at the line; then all start at once.
    deadline = time.monotonic() + 120
    while not all(Path(f"{go}.ready{rank}").exists() for rank in range(RANKS)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a rank never got ready"
        time.sleep(0.01)
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))

    expected = {name: hashlib.md5(data).hexdigest() for name, data in files.items()}
    assert all(result == expected for result in results)
    stats = m.stats()
    assert stats["fetches"] == len(blobs)  # not RANKS * len(blobs)
    assert stats["fetched_bytes"] == sum(blobs.values())
    assert stats["digest_mismatches"] == 0 and stats["fetch_errors"] == 0
    # Every other open of a file found its blob in the cache (or the kernel's page cache served it).
    assert stats["cache_hits"] <= RANKS * len(files) - len(blobs)
