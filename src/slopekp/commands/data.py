"""``slopekp data ...`` sub-commands."""

from __future__ import annotations

from slopekp.commands import add_group


def register(sub) -> None:
    add_group(sub, "data", "data commands")
