"""Names: artifact references, collection names, aliases and manifest entry paths.

Everything that comes from a user, a manifest or the kernel is validated here before any other
module sees it, so the rest of the code can treat a :class:`Ref` or a validated entry path as safe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidPath, InvalidReference

# W&B allows letters, digits, dashes, underscores and dots in entity, project and artifact names.
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# Aliases: no '/', ':' or whitespace; W&B reserves "vN" for versions.
_ALIAS_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
_VERSION_RE = re.compile(r"v(0|[1-9][0-9]{0,17})")
_DRIVE_RE = re.compile(r"[A-Za-z]:")
NAME_MAX = 255  # bytes, per path segment (Linux NAME_MAX)

LATEST = "latest"


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a valid entity, project or artifact collection name."""
    if not _NAME_RE.fullmatch(name):
        raise InvalidReference(f"invalid {what} {name!r}: use letters, digits, '_', '-', '.' (1-128 characters)")
    return name


def check_alias(alias: str) -> str:
    """Return ``alias`` if it is a valid alias (which a version name ``vN`` is not)."""
    if _VERSION_RE.fullmatch(alias):
        raise InvalidReference(f"invalid alias {alias!r}: names of the form vN are versions")
    if not _ALIAS_RE.fullmatch(alias):
        raise InvalidReference(f"invalid alias {alias!r}: use letters, digits, '_', '-', '.', '+' (1-128 characters)")
    return alias


def parse_version(text: str) -> int | None:
    """``"v3"`` -> 3; anything that is not a version name -> None."""
    if _VERSION_RE.fullmatch(text):
        return int(text[1:])
    return None


@dataclass(frozen=True, slots=True)
class Ref:
    """``entity/project/name[:alias_or_version]``; ``tag`` is None when no ``:`` was given."""

    entity: str
    project: str
    name: str
    tag: str | None = None

    @property
    def version_index(self) -> int | None:
        return None if self.tag is None else parse_version(self.tag)

    @property
    def collection(self) -> str:
        return f"{self.entity}/{self.project}/{self.name}"

    def with_tag(self, tag: str) -> Ref:
        return Ref(self.entity, self.project, self.name, tag)

    def __str__(self) -> str:
        return self.collection if self.tag is None else f"{self.collection}:{self.tag}"


def parse_ref(text: str, *, require_tag: bool = False, default_tag: str | None = None) -> Ref:
    """Parse ``entity/project/name[:alias|:vN]``.

    ``require_tag`` rejects a reference without ``:``; ``default_tag`` fills one in (W&B uses
    ``latest``).
    """
    parts = text.split("/")
    if len(parts) != 3:
        raise InvalidReference(f"invalid artifact reference {text!r}: expected ENTITY/PROJECT/NAME[:ALIAS]")
    entity, project, last = parts
    name, sep, tag = last.partition(":")
    check_name(entity, "entity")
    check_name(project, "project")
    check_name(name, "artifact name")
    if not sep:
        if require_tag and default_tag is None:
            raise InvalidReference(f"invalid artifact reference {text!r}: expected NAME:ALIAS or NAME:vN")
        return Ref(entity, project, name, default_tag)
    if parse_version(tag) is None:
        check_alias(tag)
    return Ref(entity, project, name, tag)


def parse_prefix(text: str) -> tuple[str, ...]:
    """Parse ``[ENTITY[/PROJECT[/NAME]]]`` for listings."""
    if text in ("", "/"):
        return ()
    parts = tuple(text.strip("/").split("/"))
    if len(parts) > 3:
        raise InvalidReference(f"invalid prefix {text!r}: expected ENTITY[/PROJECT[/NAME]]")
    for part, what in zip(parts, ("entity", "project", "artifact name"), strict=False):
        check_name(part, what)
    return parts


def check_entry_path(path: str) -> str:
    """Validate a manifest entry path, as W&B does and stricter.

    A valid path is relative, uses ``/`` as separator, and has no empty, ``.`` or ``..`` segment,
    no NUL, no leading drive letter, and no segment longer than NAME_MAX bytes.  The error names
    the offending path.
    """
    if not isinstance(path, str):
        raise InvalidPath(f"invalid entry path {path!r}: not a string")
    if path == "":
        raise InvalidPath("invalid entry path '': empty")
    if "\x00" in path:
        raise InvalidPath(f"invalid entry path {path!r}: contains NUL")
    if path.startswith("/") or path.startswith("\\"):
        raise InvalidPath(f"invalid entry path {path!r}: absolute")
    if "\\" in path:
        raise InvalidPath(f"invalid entry path {path!r}: contains a backslash")
    if _DRIVE_RE.match(path):
        raise InvalidPath(f"invalid entry path {path!r}: starts with a drive letter")
    for segment in path.split("/"):
        if segment == "":
            raise InvalidPath(f"invalid entry path {path!r}: empty segment")
        if segment in (".", ".."):
            raise InvalidPath(f"invalid entry path {path!r}: '{segment}' segment")
        try:
            encoded = segment.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidPath(f"invalid entry path {path!r}: not valid UTF-8") from exc
        if len(encoded) > NAME_MAX:
            raise InvalidPath(f"invalid entry path {path!r}: a segment is over {NAME_MAX} bytes")
    return path


def split_dir(path: str) -> tuple[str, str]:
    """``"a/b/c.txt"`` -> ``("a/b", "c.txt")``; top-level names have dir ``""``."""
    parent, _, leaf = path.rpartition("/")
    return parent, leaf
