"""The ``artifactfs`` command line.

Every failure the user can cause (a bad reference, an unknown alias, a missing directory,
invalid JSON, a registry that cannot be written) ends in one line on stderr and a non-zero exit
status, never a traceback.

Every command names its registry with a spec (``DIR``, ``wandb``, ``wandb:https://host``) and
opens it with :func:`artifactfs.registry.open_registry`; the mount's options are declared in
:mod:`artifactfs.options`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from . import __version__, defaults
from .errors import ArtifactFSError, InvalidMetadata, InvalidReference, SourceError
from .manifest import MD5, XXH128
from .metrics import human_bytes
from .names import check_alias, check_name, json_object_text, parse_prefix, parse_ref
from .options import REGISTRY_HELP, add_mount_arguments, argparse_type, parse_log_level, registry_spec
from .registry import Registry, VersionInfo
from .registry.base import iso_time
from .tools import add_tool_commands

log = logging.getLogger("artifactfs")

EXIT_ERROR = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidMetadata(f"--metadata is not valid JSON: {exc}") from exc
    json_object_text(value, "--metadata")
    return dict(value)  # a dict: json_object_text checked it


def _print_version(v: VersionInfo) -> None:
    aliases = ",".join(v.aliases) or "-"
    print(f"{v.ref}\t{aliases}\t{human_bytes(v.size)}\t{v.file_count} files\t{iso_time(v.created_at_ns)}\t{v.digest}")


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
    from .progress import set_quiet, tracked_files

    set_quiet(args.quiet)
    with _opened(args, create=True) as registry:
        result = registry.log_files(
            tracked_files(args.src, ref.name),  # a progress bar at a terminal
            ref,
            type=args.type,
            aliases=args.alias,
            description=args.description or "",
            metadata=metadata,
            digest_algorithm=args.digest_algorithm,
        )
    v = result.version
    if not result.created:
        print(f"content equals {v.ref} (digest {v.digest}): no new version", file=sys.stderr)
    print(f"{v.file_count} files, {human_bytes(v.size)}, aliases: {', '.join(v.aliases)}", file=sys.stderr)
    print(str(v.ref))
    return 0


@contextlib.contextmanager
def _opened(args: argparse.Namespace, *, create: bool = False) -> Iterator[Registry]:
    """The registry of ``--registry``, closed afterwards.  A write to a registry that is
    read-only here fails with the backend's one-line :class:`~artifactfs.errors.ReadOnly`."""
    from .client import open_spec

    registry = open_spec(args.registry, create=create, cache_dir=args.cache_dir)
    try:
        yield registry
    finally:
        registry.close()


def cmd_info(args: argparse.Namespace) -> int:
    ref = parse_ref(args.ref, default_tag="latest")
    with _opened(args) as registry:
        v = registry.resolve(ref)
        if args.pin:  # the exact version and its digest, for a run to record (artifactfs.pin)
            print(f"{v.ref}\t{v.digest}")
            return 0
        creator, users = registry.logged_by(v), registry.used_by(v)
    data = v.to_json()
    if args.json:
        data["logged_by"] = None if creator is None else creator.to_json()
        data["used_by"] = [run.to_json() for run in users]
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        for key, value in data.items():
            if value is None:
                value = "-"  # as logged_by/used_by below (a version that is no link has no source)
            elif isinstance(value, (dict, list)):
                value = json.dumps(value, ensure_ascii=False)
            print(f"{key}: {value}")
        # Runs as ENTITY/PROJECT/RUN_ID (what Api().run() takes); "-" when none is known.
        print(f"logged_by: {'-' if creator is None else creator.path}")
        print(f"used_by: {', '.join(run.path for run in users) or '-'}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    prefix = parse_prefix(args.prefix or "")
    with _opened(args) as registry:
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
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        for line in lines:
            print(line)
    return 0


def cmd_alias(args: argparse.Namespace) -> int:
    ref = parse_ref(args.ref, require_tag=True)
    with _opened(args) as registry:
        if args.action == "add":
            v = registry.add_alias(ref, args.alias)
        else:
            v = registry.remove_alias(ref, args.alias)
    print(f"{v.ref}\t{','.join(v.aliases)}")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from .api import Api
    from .progress import set_quiet

    set_quiet(args.quiet)
    with Api(args.registry, cache_dir=args.cache_dir) as api:
        art = api.artifact(args.ref)
        root = art.download(args.root, path_prefix=args.path_prefix)
    print(root)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .api import Api

    with Api(args.registry, cache_dir=args.cache_dir) as api:
        art = api.artifact(args.ref)
        art.verify(args.root)
    print(f"{args.root}: matches {art.qualified_name}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    with _opened(args) as registry:
        purged, removed, freed = registry.gc(grace=args.grace)
    print(f"purged {purged} deleted versions, removed {removed} unused blobs ({human_bytes(freed)})")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    ref = parse_ref(args.ref, require_tag=True)
    with _opened(args) as registry:
        v = registry.delete(ref, delete_aliases=args.delete_aliases)
    print(f"deleted {v.ref}")
    return 0


def _prefetch_arguments(parser: argparse.ArgumentParser) -> None:
    from .prefetch import add_arguments

    add_arguments(parser)


def _prefetch(args: argparse.Namespace) -> int:
    from .prefetch import cmd_prefetch  # trio is imported only when it runs

    return cmd_prefetch(args)


def _mount_command(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from . import mount

        return int(getattr(mount, name)(args))

    return run


def add_mount_commands(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    """``mount`` and ``umount``; their module (pyfuse3, trio) is imported only when they run."""
    p = sub.add_parser("mount", help="mount a registry read-only")
    add_mount_arguments(p)
    p.set_defaults(func=_mount_command("cmd_mount"))

    p = sub.add_parser("umount", parents=[common], help="unmount (also clears the mount of a killed daemon)")
    p.add_argument("mountpoint")
    p.set_defaults(func=_mount_command("cmd_umount"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="artifactfs", description="Versioned ML artifacts as a read-only filesystem.")
    parser.add_argument("--version", action="version", version=f"artifactfs {__version__}")
    common = _Parser(add_help=False)
    common.add_argument(
        "--log-level",
        type=argparse_type(parse_log_level),
        default=defaults.default_log_level(),
        metavar="LEVEL",
        help=f"DEBUG, INFO, WARNING or ERROR (default: $ARTIFACTFS_LOG_LEVEL or {defaults.LOG_LEVEL})",
    )
    common.add_argument(
        "--registry",
        type=argparse_type(registry_spec),
        default=defaults.default_registry(),
        metavar="SPEC",
        help=f"{REGISTRY_HELP} (default: $ARTIFACTFS_REGISTRY or ~/.local/share/artifactfs/registry)",
    )
    common.add_argument(
        "--cache-dir",
        default=defaults.default_cache_dir(),
        metavar="DIR",
        help="where a remote registry keeps manifests (default: $ARTIFACTFS_CACHE_DIR or ~/.cache/artifactfs)",
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
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar (there is none unless stderr is a tty)")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("info", parents=[common], help="show one artifact version")
    p.add_argument("ref", help="ENTITY/PROJECT/NAME[:ALIAS|:vN] (default alias: latest)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--pin", action="store_true", help="print only ENTITY/PROJECT/NAME:vN and its digest")
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

    p = sub.add_parser("get", parents=[common], help="download an artifact version, every file verified")
    p.add_argument("ref", help="ENTITY/PROJECT/NAME[:ALIAS|:vN] (default alias: latest)")
    p.add_argument("--root", help="destination (default: ./artifacts/NAME:vN)")
    p.add_argument("--path-prefix", help="only entries whose path starts with this")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar (there is none unless stderr is a tty)")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("verify", parents=[common], help="check a directory against an artifact version")
    p.add_argument("ref", help="ENTITY/PROJECT/NAME[:ALIAS|:vN] (default alias: latest)")
    p.add_argument("root", help="directory to check")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("gc", parents=[common], help="purge deleted versions and unused blobs")
    p.add_argument(
        "--grace",
        type=float,
        default=defaults.GC_GRACE,
        help=f"keep unused blobs younger than this many seconds: a log may be running (default {defaults.GC_GRACE:g})",
    )
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("delete", parents=[common], help="delete an artifact version")
    p.add_argument("ref", help="ENTITY/PROJECT/NAME:ALIAS_OR_VERSION")
    p.add_argument("--delete-aliases", action="store_true", help="also drop its aliases")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("prefetch", parents=[common], help="warm the blob cache of a version (or a path prefix)")
    _prefetch_arguments(p)
    p.set_defaults(func=_prefetch)

    add_mount_commands(sub, common)
    add_tool_commands(sub, common)  # status, stats, cache, doctor, pin (artifactfs.tools)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = getattr(logging, args.log_level)  # checked by parse_log_level
    logging.basicConfig(level=level, format="artifactfs: %(levelname)s %(name)s: %(message)s")
    # urllib3's DEBUG lines show request paths with their query strings (presigned URLs carry
    # their signatures there); artifactfs.http logs every request it makes, redacted.
    logging.getLogger("urllib3").setLevel(max(level, logging.WARNING))
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # here, so that a reader gone away is met below and not at exit
        return code
    except ArtifactFSError as exc:
        print(f"artifactfs: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as other tools do.  The rest of the
        # output goes nowhere, so that flushing it at exit raises nothing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_ERROR
    except OSError as exc:
        print(f"artifactfs: error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
