"""``mount.fuse.artifactfs``: the helper mount(8) runs for ``-t fuse.artifactfs`` and fstab lines.

mount(8) looks for ``/sbin/mount.<type>`` and calls it as
``mount.fuse.artifactfs SOURCE MOUNTPOINT [-sfnv] [-N NAMESPACE] [-o OPTIONS] [-t TYPE]``, so
once the helper is linked there::

    sudo ln -s "$(command -v mount.fuse.artifactfs)" /sbin/mount.fuse.artifactfs

both of these work::

    mount -t fuse.artifactfs /srv/registry /mnt/a -o cache_dir=/var/cache/artifactfs,cache_size=100G
    # /etc/fstab
    /srv/registry  /mnt/a  fuse.artifactfs  cache_dir=/var/cache/artifactfs,cache_size=100G,allow_other,_netdev  0 0

``-o`` is parsed by :func:`artifactfs.options.parse_mount_options`, the same declaration that
gives ``artifactfs mount`` its flags, and the mount is then made exactly as ``artifactfs mount``
makes it: checks, a daemon, and a return only once the mount answers (or one error line and exit
status 32, mount(8)'s "mount failure").  Options every filesystem gets (``ro``, ``noatime``,
``_netdev``, ``nofail``, ``x-systemd.*``...) are accepted and ignored, and so is the ``rw``
that mount(8) adds when a line does not say ``ro``: the mount is read-only whatever it says.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from . import defaults
from .errors import ArtifactFSError
from .options import MountConfig

# mount(8)'s exit statuses (see its man page, "RETURN CODES").
EXIT_USAGE = 1
EXIT_FAILURE = 32

USAGE = (
    "usage: mount.fuse.artifactfs REGISTRY MOUNTPOINT [-sfnv] [-N NAMESPACE] [-o OPTIONS] [-t fuse.artifactfs]\n"
    "       (run by mount -t fuse.artifactfs and by fstab lines; options as 'artifactfs mount --help' with "
    "'-' or '_': cache_dir=DIR,cache_size=SIZE,allow_other,...)"
)


def parse_argv(argv: Sequence[str]) -> tuple[list[str], str, bool, bool]:
    """``(positionals, options, fake, verbose)`` of a helper command line as mount(8) writes it.

    Written by hand rather than with argparse: mount(8) may put the flags after the positionals
    and glue them (``-sv``, ``-ofoo``), and ``-N`` takes a value."""
    positionals: list[str] = []
    options: list[str] = []
    fake = verbose = False
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            positionals += args[i:]
            break
        if not arg.startswith("-") or arg == "-":
            positionals.append(arg)
            continue
        flags = arg[1:]
        while flags:
            flag, flags = flags[0], flags[1:]
            if flag in "otN":
                value = flags
                if not value:
                    if i >= len(args):
                        raise ValueError(f"option -{flag} needs a value")
                    value = args[i]
                    i += 1
                if flag == "o":
                    options.append(value)
                elif flag == "t" and value not in ("fuse.artifactfs", "artifactfs"):
                    raise ValueError(f"this helper mounts type fuse.artifactfs, not {value}")
                elif flag == "N":
                    raise ValueError("mounting into another mount namespace (-N) is not supported")
                flags = ""
            elif flag == "f":
                fake = True
            elif flag == "v":
                verbose = True
            elif flag in "sn":  # sloppy options, no mtab: nothing to do
                pass
            else:
                raise ValueError(f"unknown flag -{flag}")
    return positionals, ",".join(options), fake, verbose


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        positionals, options, fake, verbose = parse_argv(argv)
    except ValueError as exc:
        print(f"mount.fuse.artifactfs: {exc}\n{USAGE}", file=sys.stderr)
        return EXIT_USAGE
    if len(positionals) != 2:
        print(f"mount.fuse.artifactfs: expected REGISTRY and MOUNTPOINT\n{USAGE}", file=sys.stderr)
        return EXIT_USAGE
    registry, mountpoint = positionals
    # mount(8) adds "rw" to the options of every line that does not say "ro": here it means no
    # more than its default.  The mount is read-only whatever it says.
    options = ",".join(o for o in options.split(",") if o.strip() != "rw")
    level = logging.INFO if verbose else getattr(logging, defaults.LOG_LEVEL)
    logging.basicConfig(level=level, format="mount.fuse.artifactfs: %(levelname)s %(name)s: %(message)s")
    logging.getLogger("urllib3").setLevel(max(level, logging.WARNING))
    try:
        config = MountConfig.from_mount_options(registry, mountpoint, options)
        # The mount's own level (-o log_level, default INFO), as `artifactfs mount` has it: its
        # daemon (a fork of this process) logs with it.
        level = min(level, getattr(logging, config.log_level))
        logging.getLogger().setLevel(level)
        logging.getLogger("urllib3").setLevel(max(level, logging.WARNING))
        if fake:
            return 0
        from .mount import start_daemon

        return start_daemon(config)
    except ArtifactFSError as exc:
        print(f"mount.fuse.artifactfs: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"mount.fuse.artifactfs: error: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
