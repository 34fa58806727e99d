"""The mount's options, declared once, and the registry spec every command takes.

:class:`MountConfig` is the declaration: each field is one option of ``artifactfs mount``, with
its type, its default (from :mod:`artifactfs.defaults`), the parser of its text form, its help,
and whether it is passed on to the daemon and whether ``-o`` may set it.  Everything else is
derived from the fields, so an option is added in one place:

* :func:`add_mount_arguments`: the argparse arguments of ``artifactfs mount``;
* :meth:`MountConfig.from_namespace`: the config from parsed arguments;
* :func:`daemon_argv`: what a background mount passes to its daemon (``mount --foreground``);
* :func:`parse_mount_options`: ``-o cache_dir=/x,cache_size=10G,allow_other,ro`` as fstab and
  ``mount -t fuse.artifactfs`` write options, giving the values the flags give.

No option carries a secret: W&B credentials come from ``WANDB_API_KEY`` or netrc, which the
daemon inherits with the environment, so they never appear on a command line (``ps`` shows the
daemon's arguments to every user).  A registry spec that embeds credentials is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import defaults
from .errors import InvalidArgument
from .registry import check_spec, registry_help

REGISTRY_HELP = registry_help()

# Options that mount(8) and fstab hand to every filesystem and that mean nothing more here (a
# mount is always read-only, nodev and nosuid), or that mount(8) itself acts on.
_GENERIC_MOUNT_OPTIONS = frozenset(
    {"ro", "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail", "nodev", "nosuid",
     "noexec", "noatime", "nodiratime", "relatime", "async"}
)  # fmt: skip

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?", re.IGNORECASE)


# -- value parsers: text -> value, InvalidArgument on bad input --------------------------------


def parse_size(text: str) -> int:
    """``"10G"``, ``"512MiB"``, ``"1000000"`` -> bytes (binary units)."""
    m = _SIZE_RE.fullmatch(text.strip())
    if not m:
        raise InvalidArgument(f"invalid size {text!r} (examples: 10G, 512M, 1000000)")
    factor = 1024 ** " KMGT".index((m.group(2) or " ").upper())
    return int(float(m.group(1)) * factor)


def parse_log_level(text: str) -> str:
    """``debug`` -> ``DEBUG``; one of DEBUG, INFO, WARNING, ERROR, CRITICAL."""
    level = text.strip().upper()
    if level not in _LOG_LEVELS or not isinstance(getattr(logging, level, None), int):
        raise InvalidArgument(f"invalid log level {text!r} (DEBUG, INFO, WARNING or ERROR)")
    return level


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgument(f"invalid number of seconds {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise InvalidArgument(f"invalid number of seconds {text!r}: must be finite and >= 0")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(f"invalid integer {text!r}") from None
    if value < 0:
        raise InvalidArgument(f"invalid integer {text!r}: must be >= 0")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(f"invalid port {text!r}") from None
    if not 0 <= value <= 65535:
        raise InvalidArgument(f"invalid port {text!r}: must be 0-65535 (0: any free port)")
    return value


def _path(text: str) -> str:
    if not text:
        raise InvalidArgument("empty path")
    return text


def registry_spec(text: str) -> str:
    """A registry spec as typed (``DIR``, ``wandb``, ``wandb:https://host[:port]``), checked only
    for what must be refused before it reaches a command line or a log: credentials in it.  The
    backend checks the rest when it is opened."""
    if not text:
        raise InvalidArgument("empty registry spec")
    check_spec(text)
    return text


# -- the declaration ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """How one :class:`MountConfig` field is given and passed on."""

    flags: tuple[str, ...]  # ("--foreground", "-f"); () for a positional argument
    help: str
    parse: Callable[[str], Any] | None  # None: a switch (present or not, no value)
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    forward: bool = True  # passed on to the daemon of a background mount
    fstab: bool = True  # may be set with -o name=value (or -o name for a switch)
    hidden: bool = False  # for scripts and the daemon: not in --help

    @property
    def positional(self) -> bool:
        return not self.flags

    @property
    def switch(self) -> bool:
        return self.parse is None

    def convert(self, text: str) -> Any:
        """The value of ``text``; InvalidArgument if it is not one."""
        assert self.parse is not None
        value = self.parse(text)
        if self.choices is not None and value not in self.choices:
            raise InvalidArgument(f"invalid choice {text!r} (choose from {', '.join(self.choices)})")
        return value


_KEY = "artifactfs.option"


def _positional(metavar: str, help: str, parse: Callable[[str], Any]) -> Any:
    return field(metadata={_KEY: Option((), help, parse, metavar=metavar, fstab=False)})


def _value(
    flag: str,
    help: str,
    parse: Callable[[str], Any],
    default: Any = None,
    *,
    default_factory: Callable[[], Any] | None = None,
    **kwargs: Any,
) -> Any:
    metadata = {_KEY: Option((flag,), help, parse, **kwargs)}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _switch(*flags: str, help: str, **kwargs: Any) -> Any:
    return field(default=False, metadata={_KEY: Option(flags, help, None, **kwargs)})


@dataclass
class MountConfig:
    """Everything a mount is told.  Each field is an option of ``artifactfs mount``."""

    registry: str = _positional("REGISTRY", REGISTRY_HELP, registry_spec)
    mountpoint: str = _positional("MOUNTPOINT", "an existing, empty directory", _path)
    cache_dir: str = _value(
        "--cache-dir",
        "blob cache, shared by every mount that names it (default: $ARTIFACTFS_CACHE_DIR or "
        "~/.cache/artifactfs; mode 0700)",
        _path,
        default_factory=defaults.default_cache_dir,
        metavar="DIR",
    )
    cache_size: int = _value(
        "--cache-size",
        f"cache size limit; least recently used blobs are evicted (default {defaults.CACHE_SIZE >> 30}G)",
        parse_size,
        defaults.CACHE_SIZE,
        metavar="SIZE",
    )
    alias_ttl: float = _value(
        "--alias-ttl",
        f"seconds before an alias symlink or a listing is resolved again (default {defaults.ALIAS_TTL:g})",
        _seconds,
        defaults.ALIAS_TTL,
        metavar="SECONDS",
    )
    allow_other: bool = _switch("--allow-other", help="let other users see the mount")
    local_blobs: str = _value(
        "--local-blobs",
        f"local registry blobs: hash and serve them where they lie, or copy them into the cache "
        f"(default {defaults.LOCAL_BLOBS})",
        str,
        defaults.LOCAL_BLOBS,
        choices=("verify-in-place", "copy"),
    )
    failure_backoff: float = _value(
        "--failure-backoff",
        f"seconds a failed or mismatching blob answers EIO before it is fetched again "
        f"(default {defaults.FAILURE_BACKOFF:g})",
        _seconds,
        defaults.FAILURE_BACKOFF,
        metavar="SECONDS",
    )
    read_ahead_kb: int = _value(
        "--read-ahead-kb",
        f"kernel read-ahead of the mount in KiB, set when running as root (default {defaults.READ_AHEAD_KB})",
        _count,
        defaults.READ_AHEAD_KB,
        metavar="KB",
    )
    xattrs: str = _value(
        "--xattrs",
        "on: every file and version carries its provenance as user.artifact.* xattrs (ls -l then asks the "
        "daemon two xattrs per file); off: the mount answers xattr requests ENOSYS, so the kernel stops "
        "asking and ls -l, cp -a and shutil.copy2 run at listing speed; provenance then comes from "
        "'artifactfs info' and ENTITY/PROJECT/.artifactfs/NAME:vN/ (default on)",
        str,
        "on",
        choices=("on", "off"),
    )
    prefetch: int = _value(
        "--prefetch",
        "when a file is read, fetch and verify the next N files of its directory (in listing order) in the "
        "background (bounded memory and bandwidth; 0: off; default 0)",
        _count,
        0,
        metavar="N",
    )
    warm: str = _value(
        "--warm",
        "fetch a version's files in the background, ahead of reads (16 at once; small remote files in batches "
        "of 128, 64 GETs in flight): auto (when readers walk a "
        "directory or the version: 8 files and 2%% of what is under it opened within 30 s), on (the whole "
        "version from its first open), off (only what is read, plus --prefetch); bounded by the cache's free "
        "room, stopped when the version is no longer read (default auto)",
        str,
        "auto",
        choices=("auto", "on", "off"),
    )
    log_level: str = _value(
        "--log-level",
        f"DEBUG, INFO, WARNING or ERROR (default {defaults.MOUNT_LOG_LEVEL})",
        parse_log_level,
        defaults.MOUNT_LOG_LEVEL,
        metavar="LEVEL",
    )
    metrics_port: int | None = _value(
        "--metrics-port",
        "serve Prometheus metrics on http://127.0.0.1:PORT/metrics (default: off; 0: any free port)",
        _port,
        None,
        metavar="PORT",
    )
    log_file: str | None = _value(
        "--log-file", "the daemon's log (default: CACHE_DIR/mount.log)", _path, None, forward=False, metavar="FILE"
    )
    foreground: bool = _switch(
        "--foreground", "-f", help="serve in this process instead of a daemon", forward=False, fstab=False
    )
    # The daemon's end of the pipe on which it says "ok" once the mount answers.
    ready_fd: int | None = _value("--ready-fd", "", _count, None, forward=False, fstab=False, hidden=True)
    # Set by a background mount's launcher, which has just opened the registry (credentials, the
    # server): its daemon does not ask the server again.
    registry_checked: bool = _switch("--registry-checked", help="", forward=False, fstab=False, hidden=True)
    # For scripts/bench: serve cached reads from a worker thread instead of inline.
    pread_in_thread: bool = _switch("--pread-in-thread", help="", fstab=False, hidden=True)
    # For scripts/bench --profile: run the daemon under cProfile and write its stats here at exit.
    profile: str | None = _value("--profile", "", _path, None, fstab=False, hidden=True, metavar="FILE")

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> MountConfig:
        """The config of parsed ``mount`` arguments (:func:`add_mount_arguments`)."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def from_mount_options(cls, registry: str, mountpoint: str, options: str) -> MountConfig:
        """The config of ``mount -t fuse.artifactfs REGISTRY MOUNTPOINT -o OPTIONS``."""
        return cls(registry=registry_spec(registry), mountpoint=_path(mountpoint), **parse_mount_options(options))


def options() -> Iterator[tuple[str, Option]]:
    """``(field name, option)`` for every option, in declaration order."""
    for f in dataclasses.fields(MountConfig):
        yield f.name, f.metadata[_KEY]


def _default(name: str) -> Any:
    f = MountConfig.__dataclass_fields__[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def argparse_type(parse: Callable[[str], Any], name: str = "value") -> Callable[[str], Any]:
    """``parse`` as an argparse ``type``: its InvalidArgument becomes argparse's one-line usage
    error (exit status 2)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except InvalidArgument as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    convert.__name__ = name
    return convert


def add_mount_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``artifactfs mount``, one per :class:`MountConfig` field."""
    for name, option in options():
        help = argparse.SUPPRESS if option.hidden else option.help
        if option.positional:
            parser.add_argument(name, metavar=option.metavar, type=argparse_type(option.convert), help=help)
        elif option.switch:
            parser.add_argument(*option.flags, dest=name, action="store_true", help=help)
        else:
            parser.add_argument(
                *option.flags,
                dest=name,
                type=argparse_type(option.convert),
                default=_default(name),
                choices=option.choices,
                metavar=option.metavar,
                help=help,
            )


def daemon_argv(config: MountConfig) -> list[str]:
    """The ``mount`` arguments that give a daemon ``config``'s forwarded options: positionals
    first, then each option whose value differs from nothing (switches only when set)."""
    positionals: list[str] = []
    flags: list[str] = []
    for name, option in options():
        if not option.forward:
            continue
        value = getattr(config, name)
        if option.positional:
            positionals.append(str(value))
        elif option.switch:
            if value:
                flags.append(option.flags[0])
        elif value is not None:
            flags += [option.flags[0], str(value)]
    return positionals + flags


def parse_mount_options(text: str) -> dict[str, Any]:
    """``-o`` options (``cache_dir=/x,cache_size=10G,allow_other,ro``) -> the value of every
    option that ``-o`` may set, as the equivalent flags give it (defaults for those not named).

    Names take ``_`` or ``-``.  Options that mount(8) passes to every filesystem (``ro``,
    ``noatime``, ``_netdev``...) are accepted and mean nothing more (a mount is always
    read-only); ``rw`` is refused.  Values cannot contain commas.
    """
    settable = {name: option for name, option in options() if option.fstab and not option.positional}
    values: dict[str, Any] = {name: _default(name) for name in settable}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, has_value, raw = item.partition("=")
        name = key.replace("-", "_")
        if name in _GENERIC_MOUNT_OPTIONS and not has_value:
            continue
        if key.startswith("x-") or key == "comment":  # fstab's notes for systemd and other tools
            continue
        if name == "rw":
            raise InvalidArgument("mount option 'rw': artifactfs mounts are read-only")
        option = settable.get(name)
        if option is None:
            raise InvalidArgument(f"unknown mount option {key!r}")
        if option.switch:
            if has_value:
                raise InvalidArgument(f"mount option {key!r} takes no value")
            values[name] = True
            continue
        if not has_value:
            raise InvalidArgument(f"mount option {key!r} needs a value ({key}=...)")
        try:
            values[name] = option.convert(raw)
        except InvalidArgument as exc:
            raise InvalidArgument(f"mount option {key}: {exc}") from exc
    return values
