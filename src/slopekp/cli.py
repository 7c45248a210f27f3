"""The ``slopekp`` command line: one command with sub-commands.

Each sub-command group lives in ``slopekp/commands/<group>.py`` and exposes ``register(subparsers)``, which adds
its parsers and sets ``func`` on them. This module only parses and dispatches; it imports the groups lazily so
that ``slopekp --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from slopekp import __version__

#: Sub-command groups, in ``--help`` order: module name under ``slopekp.commands``.
COMMAND_GROUPS = ("quickstart", "config", "data", "multiplex", "mesh")


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slopekp",
        description="Self-supervised single-image 3D reconstruction (SLOPE-KP / U-CMR) in pure PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"slopekp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_GROUPS:
        module = importlib.import_module(f"slopekp.commands.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # a group without its sub-command, or no command at all: show the relevant help
        (getattr(args, "group_parser", None) or parser).print_help()
        return 0 if args.command is None else 2
    try:
        return int(func(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as e:
        print(f"slopekp: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("slopekp: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
