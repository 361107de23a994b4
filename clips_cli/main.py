"""Entry point of the ``clips`` command.

Each package owns a ``cli`` module with ``register(subparsers)``; the handlers are thin shells
over library functions (which the tests call directly) and import heavy dependencies lazily, so
``clips models`` does not import transformers or deepspeed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

SUBCOMMAND_MODULES = (
    "clips_cli.demo",
    "clips_cli.experiment",
    "clips_tower.cli",
    "pretrain.cli",
    "eval.cli",
    "llava_integration.cli",
    "benchmarks.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The full ``clips`` argument parser."""
    parser = argparse.ArgumentParser(prog="clips", description="CLIPS: pretrain, evaluate and plug into LLaVA.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
