"""Sub-command groups of the ``slopekp`` CLI (see :mod:`slopekp.cli`)."""

from __future__ import annotations

import argparse

from slopekp.config import Config, load_config


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The standard ``--config FILE`` plus trailing ``key=value`` overrides of every config-driven command."""
    p.add_argument("--config", default=None, help="YAML experiment file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. multiplex.steps=50")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, list(args.overrides))


def add_group(sub, name: str, help: str):
    """Add a command group (``slopekp <name> <sub-command>``); returns its sub-parsers object."""
    p = sub.add_parser(name, help=help, description=help)
    p.set_defaults(group_parser=p)
    return p.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
