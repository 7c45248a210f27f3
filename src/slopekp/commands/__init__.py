"""Sub-command groups of the ``slopekp`` CLI (see :mod:`slopekp.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from slopekp.config import Config, load_config


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The standard ``--config FILE`` plus trailing ``key=value`` overrides of every config-driven command."""
    p.add_argument("--config", default=None, help="YAML experiment file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. multiplex.steps=50")


def data_dir_arg(args: argparse.Namespace) -> Path:
    """``--data`` as a ``Path``, refused unless it is a directory."""
    data = Path(args.data)
    if not data.is_dir():
        raise ValueError(f"--data {data}: not a directory")
    return data


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, list(args.overrides))


def add_command(sub, name: str, help: str, doc: str) -> argparse.ArgumentParser:
    """Add the sub-command ``name`` with a one-line ``help`` and its module's docstring ``doc`` as the description,
    kept as written (its lines and lists)."""
    return sub.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_group(sub, name: str, help: str):
    """Add a command group (``slopekp <name> <sub-command>``); returns its sub-parsers object."""
    p = sub.add_parser(name, help=help, description=help)
    p.set_defaults(group_parser=p)
    return p.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")


def add_output_dir_args(p: argparse.ArgumentParser) -> None:
    """``--overwrite`` and ``--force-new`` for a command that writes an output folder with a run manifest
    (:func:`slopekp.manifest.prepare_output_dir`)."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the output folder's contents first when it holds something else (nothing stale stays)",
    )
    p.add_argument(
        "--force-new",
        action="store_true",
        help="when the output folder holds a run made from other data or settings, move it aside to "
        "OUT.old-<time> and start over",
    )
