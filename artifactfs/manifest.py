"""The W&B artifact manifest (version 1): entries, JSON in and out, digest algorithms.

A manifest maps entry paths to :class:`Entry` (digest, size, optional reference URI). The JSON
form is exactly the one the wandb SDK writes (``to_manifest_json``): default fields are omitted
and unknown keys are tolerated on input.  Entry digests are base64 of the 16-byte MD5 (or XXH128
when ``extra.alg == "XXH128"``); the artifact digest is hex, see :func:`artifact_digest`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from .digests import MD5 as MD5
from .digests import XXH128 as XXH128
from .digests import b64_digest, new_hasher
from .errors import ManifestError
from .names import check_entry_path

ALGORITHMS = (MD5, XXH128)
STORAGE_POLICY = "wandb-storage-policy-v1"
DIGEST_HEADER = b"wandb-artifact-manifest-v1\n"
# The artifact-level algorithm names used by the W&B server (``digestAlgorithm``).
MANIFEST_ALGORITHM = {MD5: "MANIFEST_MD5", XXH128: "MANIFEST_XXH128"}
EMPTY_MD5_B64 = "1B2M2Y8AsgTpgAmY7PhCfg=="
# The largest entry size accepted: JSON's largest exact integer (2**53 - 1; W&B's own clients
# parse manifests as JavaScript numbers).  Sizes become st_size and st_blocks; anything larger
# is a hostile or broken manifest, not a file.
MAX_ENTRY_SIZE = 2**53 - 1


def hex_from_b64(digest: str) -> str:
    """The hex form of a base64 content digest (used for blob paths and cache keys)."""
    try:
        raw = base64.b64decode(digest, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ManifestError(f"invalid content digest {digest!r}: not base64") from exc
    if len(raw) != 16:
        raise ManifestError(f"invalid content digest {digest!r}: not 16 bytes")
    return raw.hex()


def digest_bytes(data: bytes, alg: str = MD5) -> str:
    h = new_hasher(alg)
    h.update(data)
    return b64_digest(h)


@dataclass(frozen=True, slots=True)
class Entry:
    """One manifest entry.  ``path`` is validated; ``extra`` holds W&B's free-form extras."""

    path: str
    digest: str
    size: int = 0
    ref: str | None = None
    birth_artifact_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def alg(self) -> str:
        """Digest algorithm of the content: ``XXH128`` when ``extra.alg`` says so, else MD5."""
        alg = self.extra.get("alg", MD5)
        return alg if isinstance(alg, str) else MD5

    @property
    def cache_key(self) -> str:
        """Content address: algorithm and hex digest (``md5/0123...``)."""
        return f"{self.alg.lower()}/{hex_from_b64(self.digest)}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"digest": self.digest}
        if self.birth_artifact_id is not None:
            out["birthArtifactID"] = self.birth_artifact_id
        if self.ref is not None:
            out["ref"] = self.ref
        # The SDK omits ``size`` only when it is unknown (None), so an uploaded empty file has
        # ``"size": 0``; a reference without a size (read back as 0) stays without one.
        if self.size or self.ref is None:
            out["size"] = self.size
        if self.extra:
            out["extra"] = dict(self.extra)
        return out

    @classmethod
    def from_json(cls, path: str, obj: Any) -> Entry:
        return cls(path, *entry_fields(path, obj))


# Paths that need no further check: ASCII segments that cannot be '.', '..', empty, a drive
# letter or over NAME_MAX (255 bytes: the whole path is shorter).  Others take check_entry_path.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.+=-]*)*")
# Base64 of exactly 16 bytes (an MD5 or XXH128 digest); others take hex_from_b64 and its error.
_B64_16 = re.compile(r"[A-Za-z0-9+/]{21}[AQgw]==")


def entry_fields(path: str, obj: Any) -> tuple[str, int, str | None, str | None, dict[str, Any]]:
    """A manifest entry's JSON checked: ``(digest, size, ref, birthArtifactID, extra)``, or
    ManifestError naming the entry.  The one check of an entry, for :meth:`Entry.from_json` and
    for the index builder, which passes a million entries through it without making an
    :class:`Entry` (the common path and digest take a regular expression, not the full check)."""
    if not (len(path) < 256 and _PLAIN_PATH.fullmatch(path)):
        check_entry_path(path)
    if not isinstance(obj, dict):
        raise ManifestError(f"manifest entry {path!r}: expected an object")
    digest = obj.get("digest")
    if not isinstance(digest, str) or not digest:
        raise ManifestError(f"manifest entry {path!r}: missing or invalid digest")
    size = obj.get("size", 0)
    if size is None:
        size = 0
    if type(size) is not int or size < 0 or size > MAX_ENTRY_SIZE:
        shown = repr(size) if len(repr(size)) <= 40 else repr(size)[:40] + "..."
        raise ManifestError(f"manifest entry {path!r}: invalid size {shown}")
    ref = obj.get("ref")
    if ref is not None and not isinstance(ref, str):
        raise ManifestError(f"manifest entry {path!r}: invalid ref")
    birth = obj.get("birthArtifactID")
    if birth is not None and not isinstance(birth, str):
        raise ManifestError(f"manifest entry {path!r}: invalid birthArtifactID")
    extra = obj.get("extra") or {}
    if not isinstance(extra, dict):
        raise ManifestError(f"manifest entry {path!r}: invalid extra")
    if extra:  # none: MD5
        alg = extra.get("alg", MD5)
        if isinstance(alg, str) and alg not in ALGORITHMS:
            raise ManifestError(f"manifest entry {path!r}: unsupported digest algorithm {alg!r}")
    if ref is None and not _B64_16.fullmatch(digest):
        hex_from_b64(digest)  # uploaded content must carry a real 16-byte digest
    return digest, size, ref, birth, extra


def artifact_digest(items: Iterable[tuple[str, str]], alg: str = MD5) -> str:
    """W&B's artifact digest: hex hash of a header and ``path:digest\\n`` lines in path order.

    ``items`` are ``(path, entry_digest)`` pairs in any order.  Python's ``str`` order equals
    UTF-8 byte order, so sorting here matches the SDK (and SQLite's BINARY collation).
    """
    h = new_hasher(alg)
    h.update(DIGEST_HEADER)
    for path, digest in sorted(items):
        h.update(f"{path}:{digest}\n".encode())
    return h.hexdigest()


@dataclass(slots=True)
class Manifest:
    """A whole manifest in memory (for the W&B JSON form; the local registry keeps it in SQLite)."""

    entries: dict[str, Entry] = field(default_factory=dict)
    storage_policy: str = STORAGE_POLICY
    storage_policy_config: dict[str, Any] = field(default_factory=lambda: {"storageLayout": "V2"})

    def add(self, entry: Entry) -> None:
        self.entries[check_entry_path(entry.path)] = entry

    def digest(self, alg: str = MD5) -> str:
        return artifact_digest(((p, e.digest) for p, e in self.entries.items()), alg)

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "storagePolicy": self.storage_policy,
            "storagePolicyConfig": dict(self.storage_policy_config),
            "contents": {p: e.to_json() for p, e in self.entries.items()},
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=False, ensure_ascii=False)

    @classmethod
    def from_json(cls, obj: Any) -> Manifest:
        if not isinstance(obj, dict):
            raise ManifestError("manifest: expected a JSON object")
        version = obj.get("version")
        if version != 1:
            raise ManifestError(f"manifest: unsupported version {version!r} (expected 1)")
        policy = obj.get("storagePolicy", STORAGE_POLICY)
        if not isinstance(policy, str):
            raise ManifestError("manifest: invalid storagePolicy")
        config = obj.get("storagePolicyConfig") or {}
        if not isinstance(config, dict):
            raise ManifestError("manifest: invalid storagePolicyConfig")
        contents = obj.get("contents")
        if not isinstance(contents, dict):
            raise ManifestError("manifest: missing or invalid contents")
        manifest = cls({}, policy, config)
        for path, entry in contents.items():
            manifest.entries[path] = Entry.from_json(path, entry)
        for path in manifest.entries:  # a path that is also another path's directory
            parent = path.rpartition("/")[0]
            while parent:
                if parent in manifest.entries:
                    raise ManifestError(f"manifest: {parent!r} is both a file and a directory")
                parent = parent.rpartition("/")[0]
        return manifest

    @classmethod
    def loads(cls, data: str | bytes) -> Manifest:
        """Parse a manifest document.  Duplicate keys are refused (``json.loads`` would keep the
        last one silently, so a manifest could show one entry and verify another)."""
        try:
            obj = json.loads(data, object_pairs_hook=_refuse_duplicates)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"manifest: not valid JSON ({str(exc)[:200]})") from exc
        except RecursionError:
            raise ManifestError("manifest: nested too deeply") from None
        return cls.from_json(obj)


def write_json(
    out: IO[bytes],
    entries: Iterable[Entry],
    storage_policy: str = STORAGE_POLICY,
    storage_policy_config: Mapping[str, Any] | None = None,
) -> int:
    """Write the manifest of ``entries`` to ``out`` as :meth:`Manifest.dumps` makes it (the
    same bytes, UTF-8), a batch of entries at a time, so that memory does not grow with the
    manifest (a million entries are ~100 MB of JSON, and over a gigabyte as a ``Manifest``).
    ``entries`` must name distinct paths.  Returns the number of bytes written."""
    head = Manifest({}, storage_policy, dict(storage_policy_config or {})).dumps()
    assert head.endswith("{}}")
    written = out.write(head[:-2].encode())  # up to the ``{`` that opens "contents"
    dumps = json.dumps
    batch: list[str] = []
    sep = ""
    for entry in entries:
        batch.append(f"{sep}{dumps(entry.path, ensure_ascii=False)}: {dumps(entry.to_json(), ensure_ascii=False)}")
        sep = ", "
        if len(batch) >= 4096:
            written += out.write("".join(batch).encode())
            batch.clear()
    batch.append("}}")
    written += out.write("".join(batch).encode())
    return written


def _refuse_duplicates(items: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(items)
    if len(obj) != len(items):
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                raise ManifestError(f"manifest: duplicate key {key[:300]!r}")
            seen.add(key)
    return obj
