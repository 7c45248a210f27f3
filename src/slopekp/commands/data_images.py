"""Sub-commands of ``slopekp data`` (see slopekp.commands.data)."""

from __future__ import annotations


def register(g) -> None:
    """Add sub-parsers to the ``data`` group."""
