"""The ``artifactfs`` command line.

Every failure the user can cause (a bad reference, an unknown alias, a missing directory,
invalid JSON) ends in one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .errors import ArtifactFSError, InvalidReference, SourceError
from .manifest import MD5, XXH128
from .names import check_alias, check_name, parse_prefix, parse_ref
from .registry.base import VersionInfo, iso_time
from .registry.local import LocalRegistry

log = logging.getLogger("artifactfs")

EXIT_ERROR = 1
EXIT_USAGE = 2


def default_registry() -> str:
    return os.environ.get("ARTIFACTFS_REGISTRY") or os.path.expanduser("~/.local/share/artifactfs/registry")


def default_cache_dir() -> str:
    return os.environ.get("ARTIFACTFS_CACHE_DIR") or os.path.expanduser("~/.cache/artifactfs")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidReference(f"--metadata is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidReference("--metadata must be a JSON object")
    return value


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _print_version(v: VersionInfo) -> None:
    aliases = ",".join(v.aliases) or "-"
    print(f"{v.ref}\t{aliases}\t{human_size(v.size)}\t{v.file_count} files\t{iso_time(v.created_at_ns)}\t{v.digest}")


def cmd_log(args: argparse.Namespace) -> int:
    ref = parse_ref(args.ref)
    if ref.tag is not None:
        raise InvalidReference(f"log takes ENTITY/PROJECT/NAME without ':{ref.tag}'; use --alias")
    metadata = _json_object(args.metadata) if args.metadata is not None else None
    # Check what can be checked before the registry is created: a failed first log leaves nothing.
    check_name(args.type, "type")
    for alias in args.alias:
        check_alias(alias)
    if not os.path.isdir(args.src):
        raise SourceError(f"source directory {args.src!r} does not exist or is not a directory")
    registry = LocalRegistry(args.registry, create=True)
    try:
        result = registry.log_dir(
            args.src,
            ref,
            type=args.type,
            aliases=args.alias,
            description=args.description or "",
            metadata=metadata,
            digest_algorithm=args.digest_algorithm,
        )
    finally:
        registry.close()
    v = result.version
    if not result.created:
        print(f"content equals {v.ref} (digest {v.digest}): no new version", file=sys.stderr)
    print(f"{v.file_count} files, {human_size(v.size)}, aliases: {', '.join(v.aliases)}", file=sys.stderr)
    print(str(v.ref))
    return 0


def _open(args: argparse.Namespace) -> LocalRegistry:
    return LocalRegistry(args.registry)


def cmd_info(args: argparse.Namespace) -> int:
    ref = parse_ref(args.ref, default_tag="latest")
    registry = _open(args)
    try:
        v = registry.resolve(ref)
    finally:
        registry.close()
    data = v.to_json()
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        for key, value in data.items():
            if isinstance(value, (dict, list)):
                value = json.dumps(value, ensure_ascii=False)
            print(f"{key}: {value}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    prefix = parse_prefix(args.prefix or "")
    registry = _open(args)
    try:
        out: list[Any]
        if len(prefix) == 0:
            out = registry.entities()
            lines = out
        elif len(prefix) == 1:
            out = registry.projects(prefix[0])
            lines = out
        elif len(prefix) == 2:
            cols = registry.collections(*prefix)
            out = [{"name": c.name, "type": c.type, "versions": c.version_count} for c in cols]
            lines = [f"{c.entity}/{c.project}/{c.name}\t{c.type}\t{c.version_count} versions" for c in cols]
        else:
            versions = registry.versions(*prefix)
            if args.json:
                out = [v.to_json() for v in versions]
            else:
                for v in versions:
                    _print_version(v)
                return 0
            lines = []
    finally:
        registry.close()
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        for line in lines:
            print(line)
    return 0


def cmd_alias(args: argparse.Namespace) -> int:
    ref = parse_ref(args.ref, require_tag=True)
    registry = _open(args)
    try:
        if args.action == "add":
            v = registry.add_alias(ref, args.alias)
        else:
            v = registry.remove_alias(ref, args.alias)
    finally:
        registry.close()
    print(f"{v.ref}\t{','.join(v.aliases)}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    ref = parse_ref(args.ref, require_tag=True)
    registry = _open(args)
    try:
        v = registry.delete(ref, delete_aliases=args.delete_aliases)
    finally:
        registry.close()
    print(f"deleted {v.ref}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="artifactfs", description="Versioned ML artifacts as a read-only filesystem.")
    parser.add_argument("--version", action="version", version=f"artifactfs {__version__}")
    common = _Parser(add_help=False)
    common.add_argument(
        "--log-level",
        default=os.environ.get("ARTIFACTFS_LOG_LEVEL", "WARNING"),
        help="DEBUG, INFO, WARNING (default) or ERROR",
    )
    common.add_argument(
        "--registry",
        default=default_registry(),
        help="registry directory (default: $ARTIFACTFS_REGISTRY or ~/.local/share/artifactfs/registry)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("log", parents=[common], help="log a directory as a new artifact version")
    p.add_argument("src", help="source directory")
    p.add_argument("ref", help="ENTITY/PROJECT/NAME")
    p.add_argument("--type", required=True, help="artifact type (dataset, model, ...)")
    p.add_argument("--alias", action="append", default=[], help="alias to add (repeatable)")
    p.add_argument("--description")
    p.add_argument("--metadata", help="JSON object")
    p.add_argument("--digest-algorithm", choices=(MD5, XXH128), default=MD5, type=str.upper)
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("info", parents=[common], help="show one artifact version")
    p.add_argument("ref", help="ENTITY/PROJECT/NAME[:ALIAS|:vN] (default alias: latest)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("ls", parents=[common], help="list entities, projects, artifacts or versions")
    p.add_argument("prefix", nargs="?", default="", help="[ENTITY[/PROJECT[/NAME]]]")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("alias", parents=[common], help="add or remove an alias")
    p.add_argument("action", choices=("add", "remove"))
    p.add_argument("ref", help="ENTITY/PROJECT/NAME:ALIAS_OR_VERSION")
    p.add_argument("alias")
    p.set_defaults(func=cmd_alias)

    p = sub.add_parser("delete", parents=[common], help="delete an artifact version")
    p.add_argument("ref", help="ENTITY/PROJECT/NAME:ALIAS_OR_VERSION")
    p.add_argument("--delete-aliases", action="store_true", help="also drop its aliases")
    p.set_defaults(func=cmd_delete)

    try:
        from .mount import add_mount_commands
    except ImportError:  # pragma: no cover - pyfuse3 missing: the other commands still work
        pass
    else:
        add_mount_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = getattr(logging, str(getattr(args, "log_level", "WARNING")).upper(), None)
    if not isinstance(level, int):
        parser.error(f"invalid --log-level {args.log_level!r}")
    logging.basicConfig(level=level, format="artifactfs: %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except ArtifactFSError as exc:
        print(f"artifactfs: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"artifactfs: error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
