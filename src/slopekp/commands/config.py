"""``slopekp config show``: print the resolved configuration."""

from __future__ import annotations

from slopekp.commands import add_config_args, add_group, config_from_args
from slopekp.config import config_to_yaml


def register(sub) -> None:
    g = add_group(sub, "config", "inspect experiment configuration")
    p = g.add_parser("show", help="print the resolved config (defaults <- --config <- overrides) as YAML")
    add_config_args(p)
    p.set_defaults(func=_show)


def _show(args) -> int:
    print(config_to_yaml(config_from_args(args)), end="")
    return 0
