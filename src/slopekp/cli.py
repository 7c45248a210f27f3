"""The ``slopekp`` command line: one command with sub-commands.

Each sub-command group lives in ``slopekp/commands/<group>.py`` and exposes ``register(subparsers)``, which adds
its parsers and sets ``func`` on them. This module only parses and dispatches; it imports the groups lazily so
that ``slopekp --help`` stays fast.

Expected failures — bad input (``ValueError``, which includes config and output-folder errors), file system
errors (every ``OSError``: no permission, a folder where a file is needed, disk full ...) and running out of
memory — print one line ``slopekp: error: ...`` on stderr and exit with status 2; ``--debug`` re-raises them
so that the traceback shows. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from slopekp.version import __version__

#: Sub-command groups, in ``--help`` order: module name under ``slopekp.commands``.
COMMAND_GROUPS = ("quickstart", "config", "data", "multiplex", "train", "eval", "predict", "viewer", "video", "mesh")


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slopekp",
        description="Self-supervised single-image 3D reconstruction (SLOPE-KP / U-CMR) in pure PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"slopekp {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error instead of a one-line message"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_GROUPS:
        module = importlib.import_module(f"slopekp.commands.{name}")
        module.register(sub)
    return parser


def error_message(e: BaseException, command: str = "slopekp") -> str | None:
    """The one-line message for an expected failure ``e`` of ``command``, or None for a bug.

    ``OSError`` -> ``PATH: strerror`` (``SRC -> DST: strerror`` for a failed rename); running out of memory
    (``MemoryError``, torch's allocator errors) -> ``out of memory while running `COMMAND` (...); try a smaller
    size``; ``ValueError`` (config, output-folder and argument errors) -> its message.
    """
    if _is_out_of_memory(e):
        detail = str(e).strip().splitlines()[0] if isinstance(e, MemoryError) and str(e).strip() else ""
        return f"out of memory while running `{command}`{f' ({detail})' if detail else ''}; try a smaller size"
    if isinstance(e, OSError):
        if e.filename is None or not e.strerror:
            return e.strerror or str(e)  # e.g. FileNotFoundError("<data>: no train_cub_cleaned.mat")
        where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
        return f"{where}: {e.strerror}"
    if isinstance(e, (UserError, ValueError)):
        return str(e)
    return None


def _is_out_of_memory(e: BaseException) -> bool:
    """``MemoryError``, torch's CPU allocator failure or a CUDA out-of-memory error (both RuntimeErrors)."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return isinstance(e, RuntimeError) and any(
        s in str(e) for s in ("can't allocate memory", "CUDA out of memory")
    )


def _command_name(args: argparse.Namespace) -> str:
    """``slopekp mesh export`` for the parsed ``args``."""
    sub = getattr(args, f"{args.command}_command", None) if args.command else None
    return " ".join(["slopekp", *(p for p in (args.command, sub) if p)])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line, for records of the run
    func = getattr(args, "func", None)
    if func is None:
        # a group without its sub-command, or no command at all: show the relevant help
        (getattr(args, "group_parser", None) or parser).print_help()
        return 0 if args.command is None else 2
    try:
        return int(func(args) or 0)
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("slopekp: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        message = None if args.debug else error_message(e, _command_name(args))
        if message is None:
            raise
        print(f"slopekp: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
