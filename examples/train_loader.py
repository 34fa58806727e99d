"""Read an artifact version from an artifactfs mount the way a training job does.

    python examples/train_loader.py /mnt/a/acme/vision/imagenet-mini:best --record pin.json
    python examples/train_loader.py /mnt/a/acme/vision/imagenet-mini:v3 --expect pin.json
    python examples/train_loader.py artifactfs://acme/vision/imagenet-mini:best --record pin.json

The same reading works with no mount: an ``artifactfs://ENTITY/PROJECT/NAME:ALIAS`` URL reads
through fsspec (``$ARTIFACTFS_REGISTRY``, ``$ARTIFACTFS_CACHE_DIR``; docs/FSSPEC.md), from the
same verified cache, with no FUSE and no root.  The alias is resolved once, at the pin, and the
epochs read the pinned ``NAME:vN``: a new version logged meanwhile does not change what is read.

First the pin: the alias in the path is resolved to the exact ``entity/project/name:vN`` and its
digest (``artifactfs.pin.pin``), printed and, with ``--record``, written to a JSON file to keep
with the run (a W&B run's config, a checkpoint's metadata).  ``--expect FILE`` refuses to train
unless the path holds exactly the pinned version: that is how a rerun reads the same bytes.

Then every file is read through a PyTorch ``DataLoader`` (worker processes, batches) when torch
is installed, else through a plain loop with the same dataset.  Each sample is the file's bytes;
a real dataset would decode an image or a record there.  The mount verifies every byte against
the manifest before serving it, so the loader needs no checks of its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from artifactfs.pin import pin


class FileDataset:
    """A map-style dataset (``torch.utils.data.Dataset`` protocol) of every file under ``root``."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.paths = sorted(
            os.path.relpath(os.path.join(d, f), root) for d, _dirs, files in os.walk(root) for f in files
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[str, bytes]:
        path = self.paths[index]
        with open(os.path.join(self.root, path), "rb") as f:
            return path, f.read()


class URLDataset(FileDataset):
    """The same dataset over ``artifactfs://`` (fsspec): ``root`` is ``ENTITY/PROJECT/NAME:vN[/DIR]``
    of filesystem ``fs``, which pickles into DataLoader workers with its storage options."""

    def __init__(self, fs: Any, root: str) -> None:
        self.fs = fs
        self.root = root
        self.paths = sorted(p[len(root) + 1 :] for p in fs.find(root))

    def __getitem__(self, index: int) -> tuple[str, bytes]:
        path = self.paths[index]
        with self.fs.open(f"{self.root}/{path}") as f:
            return path, f.read()


def pin_url(url: str) -> tuple[dict[str, str | None], Any, str]:
    """``(pin, filesystem, pinned root)`` of an ``artifactfs://`` URL: its alias resolved once."""
    import fsspec

    import artifactfs.fsspec_fs  # noqa: F401  # registers artifactfs:// where the entry point is not installed

    fs, path = fsspec.core.url_to_fs(url)
    parts = path.split("/")
    if len(parts) < 3 or ":" not in parts[2]:
        raise SystemExit(f"error: {url} does not name an artifact version (artifactfs://ENTITY/PROJECT/NAME:ALIAS)")
    info = fs.info("/".join(parts[:3]))
    root = "/".join([info["version"], *parts[3:]])
    return {"artifact": info["version"], "digest": info["artifact_digest"], "url": url}, fs, root


def _as_list(batch: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return batch  # keep (path, bytes) pairs as they are: no tensors needed to show the reading


def batches(dataset: FileDataset, batch_size: int, workers: int) -> tuple[str, Iterator[list[tuple[str, bytes]]]]:
    """``(what reads, iterator of batches)``: a torch DataLoader if torch imports, else a loop."""
    try:
        from torch.utils.data import DataLoader  # type: ignore[import-not-found, unused-ignore]
    except ImportError:

        def loop() -> Iterator[list[tuple[str, bytes]]]:
            for start in range(0, len(dataset), batch_size):
                yield [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]

        return "plain loop (torch is not installed)", loop()
    loader: Any = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_as_list)
    return f"torch DataLoader ({workers} workers)", iter(loader)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "root", help="MOUNT/ENTITY/PROJECT/NAME:ALIAS (or :vN), or artifactfs://ENTITY/PROJECT/NAME:ALIAS"
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--record", metavar="FILE", help="write the pin (JSON) here, to keep with the run")
    parser.add_argument("--expect", metavar="FILE", help="refuse unless ROOT is exactly the version pinned in FILE")
    args = parser.parse_args(argv)

    dataset: FileDataset
    if args.root.startswith("artifactfs://"):
        record, fs, root = pin_url(args.root)
        dataset = URLDataset(fs, root)
        prefix = "artifactfs://"
    else:
        pinned = pin(args.root)
        record = pinned.to_json()
        dataset = FileDataset(args.root)
        prefix = "MOUNT/"
    print(f"pin: {record['artifact']} digest {record['digest']}")
    if args.record:
        with open(args.record, "w") as f:
            json.dump(record, f, indent=2)
    if args.expect:
        with open(args.expect) as f:
            expected = json.load(f)
        if (expected["artifact"], expected["digest"]) != (record["artifact"], record["digest"]):
            print(
                f"error: {args.root} is {record['artifact']} ({record['digest']}), not the pinned "
                f"{expected['artifact']} ({expected['digest']}): mount or name {prefix}{expected['artifact']}",
                file=sys.stderr,
            )
            return 1

    for epoch in range(args.epochs):
        what, it = batches(dataset, args.batch_size, args.workers)
        started = time.monotonic()
        files = size = 0
        digest = hashlib.sha256()
        for batch in it:
            for path, data in batch:
                files += 1
                size += len(data)
                digest.update(path.encode() + b"\0" + hashlib.sha256(data).digest())
        seconds = time.monotonic() - started
        print(
            f"epoch {epoch}: {files} files, {size} bytes in {seconds:.2f}s via {what}; "
            f"content sha256 {digest.hexdigest()[:16]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
