"""``clips llava ...``: tower export/assembly commands, the two LLaVA training stages and the tower comparison."""

from __future__ import annotations

import argparse

from . import compare_cli, tower_cli, train_cli


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``llava`` command group to the ``clips`` command."""
    p = sub.add_parser("llava", help="LLaVA integration: export/assemble towers, train stages")
    llava_sub = p.add_subparsers(dest="llava_command", required=True, metavar="LLAVA_COMMAND")
    tower_cli.register(llava_sub)
    train_cli.register(llava_sub)
    compare_cli.register(llava_sub)
