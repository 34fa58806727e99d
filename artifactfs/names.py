"""Names: artifact references, collection names, aliases and manifest entry paths.

Everything that comes from a user, a manifest or the kernel is validated here before any other
module sees it, so the rest of the code can treat a :class:`Ref` or a validated entry path as safe.

Short paths (the Python API's, as W&B takes them): an artifact path of 1, 2 or 3 parts
(``name:alias``, ``project/name:alias``, ``entity/project/name:alias``), a project path of 1
or 2 and a run path of 1, 2 or 3 get their missing entity and project from, in order:

1. the caller's own (the current run's: ``entity=``/``project=`` of the ``resolve_*`` call);
2. ``$WANDB_ENTITY`` / ``$WANDB_PROJECT`` (empty counts as unset);
3. the registry's defaults: ``registry.default_entity()`` for the entity (asked only when
   needed: it may be a server round trip), ``uncategorized`` for the project (as W&B).

A path with more parts, an invalid name in any part (whichever step gave it) or no entity at all
is an :class:`~artifactfs.errors.InvalidReference` that says which.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Protocol

from .errors import InvalidArgument, InvalidMetadata, InvalidPath, InvalidReference

# W&B allows letters, digits, dashes, underscores and dots in entity, project and artifact names.
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# Aliases: no '/', ':' or whitespace; W&B reserves "vN" for versions.
_ALIAS_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
_VERSION_RE = re.compile(r"v(0|[1-9][0-9]{0,17})")
_DRIVE_RE = re.compile(r"[A-Za-z]:")
#: A W&B Registry is the project ``wandb-registry-<name>`` of an organization's entity; its name may
#: hold spaces and capitals ("RAG Chat Models").  W&B refuses ``/ \\ # ? % :`` and line breaks in
#: project names and caps them at 128 characters; control characters are refused here too.
REGISTRY_PREFIX = "wandb-registry-"
_REGISTRY_NAME_RE = re.compile(r"[^\x00-\x1f\x7f/\\#?%:]+")
PROJECT_MAX = 128
NAME_MAX = 255  # bytes, per path segment (Linux NAME_MAX)

LATEST = "latest"


def is_registry_project(project: str) -> bool:
    """True for a W&B Registry's project name (``wandb-registry-<name>``), as the SDK tells them."""
    return project.startswith(REGISTRY_PREFIX) and project != REGISTRY_PREFIX


def check_project(name: str, what: str = "project") -> str:
    """Return ``name`` if it is a valid project name: an ordinary name (:func:`check_name`), or a
    registry's ``wandb-registry-<name>`` whose name may also hold spaces (not at either end)."""
    if not is_registry_project(name):
        return check_name(name, what)
    registry = name[len(REGISTRY_PREFIX) :]
    if len(name) > PROJECT_MAX or not _REGISTRY_NAME_RE.fullmatch(registry) or registry != registry.strip():
        raise InvalidReference(
            f"invalid registry name {registry!r} in {what} {name!r}: no '/', '\\', '#', '?', '%', ':', "
            f"control characters or surrounding spaces, {PROJECT_MAX - len(REGISTRY_PREFIX)} characters at most"
        )
    return name


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a valid entity, project or artifact collection name.  When
    ``what`` names a project (``"project..."``) the project rules apply (:func:`check_project`)."""
    if what.startswith("project") and is_registry_project(name):
        return check_project(name, what)
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


ENTITY_ENV = "WANDB_ENTITY"
PROJECT_ENV = "WANDB_PROJECT"
#: The project of a run or path that names none, when $WANDB_PROJECT is unset (as W&B).
DEFAULT_PROJECT = "uncategorized"


class EntityDefaults(Protocol):
    """What path resolution needs of a registry (:meth:`Registry.default_entity`)."""

    def default_entity(self) -> str | None: ...


def json_object_text(value: object, what: str = "metadata", error: type[InvalidArgument] = InvalidMetadata) -> str:
    """``value`` as JSON text, if it is a dict that JSON can carry; else ``error`` naming ``what``.

    W&B stores metadata (and a run's config) as a JSON object and refuses what JSON cannot carry:
    NaN, Infinity (also ``1e999`` once parsed), and objects JSON has no form for.  The one check
    of ``--metadata``, ``Artifact.metadata`` and what each registry is given to store."""
    if not isinstance(value, dict):
        raise error(f"{what} must be a JSON object, not {type(value).__name__}")
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise error(f"{what} cannot be stored as JSON: {exc}") from exc


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


ORGANIZATION_ENV = "WANDB_ORGANIZATION"


def env_organization() -> str | None:
    """``$WANDB_ORGANIZATION`` (an organization's display or entity name), or None: the
    organization of a registry path that names none, as the SDK takes it."""
    return _env(ORGANIZATION_ENV)


def resolve_entity(
    entity: str | None = None, *, registry_defaults: EntityDefaults | None = None, path: str = ""
) -> str:
    """``entity``, else ``$WANDB_ENTITY``, else the registry's default entity, checked."""
    if entity:
        return check_name(entity, "entity")
    env = _env(ENTITY_ENV)
    if env is not None:
        return check_name(env, f"entity (from ${ENTITY_ENV})")
    default = registry_defaults.default_entity() if registry_defaults is not None else None
    if default:
        return check_name(default, "entity (the registry's default)")
    where = f"{path!r} names no entity and" if path else "no entity was given and"
    raise InvalidReference(
        f"{where} there is none to fall back to: give ENTITY/PROJECT/..., init(entity=...), or set ${ENTITY_ENV}"
    )


def resolve_project(project: str | None = None) -> str:
    """``project``, else ``$WANDB_PROJECT``, else ``uncategorized``, checked."""
    if project:
        return check_name(project, "project")
    env = _env(PROJECT_ENV)
    if env is not None:
        return check_name(env, f"project (from ${PROJECT_ENV})")
    return DEFAULT_PROJECT


def resolve_artifact_path(
    text: str,
    *,
    entity: str | None = None,
    project: str | None = None,
    registry_defaults: EntityDefaults | None = None,
    default_tag: str | None = None,
    require_tag: bool = False,
) -> Ref:
    """``[[ENTITY/]PROJECT/]NAME[:ALIAS|:vN]`` -> :class:`Ref`, missing parts filled in as the
    module doc says.  ``default_tag``/``require_tag`` as :func:`parse_ref`."""
    collection, sep, tag = text.partition(":")
    parts = collection.split("/")
    if len(parts) > 3:
        raise InvalidReference(f"invalid artifact path {text!r}: expected [[ENTITY/]PROJECT/]NAME[:ALIAS]")
    if len(parts) == 3:
        return parse_ref(text, require_tag=require_tag, default_tag=default_tag)
    check_name(parts[-1], "artifact name")
    if len(parts) == 2:
        proj = check_name(parts[0], "project")
    else:
        proj = resolve_project(project)
    ent = resolve_entity(entity, registry_defaults=registry_defaults, path=text)
    return parse_ref(f"{ent}/{proj}/{parts[-1]}{sep}{tag}", require_tag=require_tag, default_tag=default_tag)


def resolve_project_path(
    text: str | None = None,
    *,
    entity: str | None = None,
    project: str | None = None,
    registry_defaults: EntityDefaults | None = None,
) -> tuple[str, str]:
    """``[ENTITY/]PROJECT`` (or nothing: the defaults) -> ``(entity, project)``."""
    parts = text.strip("/").split("/") if text else []
    if len(parts) > 2:
        raise InvalidReference(f"invalid project path {text!r}: expected [ENTITY/]PROJECT")
    if len(parts) == 2:
        return check_name(parts[0], "entity"), check_name(parts[1], "project")
    proj = check_name(parts[0], "project") if parts else resolve_project(project)
    return resolve_entity(entity, registry_defaults=registry_defaults, path=text or ""), proj


def resolve_run_path(
    text: str,
    *,
    entity: str | None = None,
    project: str | None = None,
    registry_defaults: EntityDefaults | None = None,
) -> tuple[str, str, str]:
    """A run path as ``wandb.Api().run()`` takes it -> ``(entity, project, run id)``:
    ``ENTITY/PROJECT/ID``, ``ENTITY/PROJECT/runs/ID`` (a URL path), ``ENTITY/PROJECT:ID``,
    ``PROJECT/ID``, ``PROJECT:ID`` or ``ID``."""
    parts = text.strip("/ ").replace("/runs/", "/").split("/")
    ent: str | None = None
    proj: str | None = None
    if len(parts) == 3:
        ent, proj, run_id = parts
    elif len(parts) == 2 and ":" in parts[1]:
        ent = parts[0]
        proj, run_id = parts[1].split(":", 1)
    elif len(parts) == 2:
        proj, run_id = parts
    elif len(parts) == 1 and ":" in parts[0]:
        proj, run_id = parts[0].split(":", 1)
    elif len(parts) == 1:
        run_id = parts[0]
    else:
        raise InvalidReference(f"invalid run path {text!r}: expected [[ENTITY/]PROJECT/]RUN_ID")
    check_name(run_id, "run id")
    proj = check_name(proj, "project") if proj is not None else resolve_project(project)
    ent = (
        check_name(ent, "entity")
        if ent is not None
        else resolve_entity(entity, registry_defaults=registry_defaults, path=text)
    )
    return ent, proj, run_id
