"""``clips bench ...`` / ``python -m benchmarks ...``: run benchmarks, print markdown tables and
append JSON records to a results file (``--out``, default ``runs/bench/results.jsonl``).

    python -m benchmarks all                   # every CPU benchmark with short defaults
    python -m benchmarks train --sizes 112 224 --force-bf16
    clips bench retrieval --images 5000
"""

from __future__ import annotations

import argparse
import importlib

from .common import DEFAULT_OUT

# Subcommand -> module (each has add_arguments(parser) and run(args) -> record).
BENCHMARKS = {
    "train": "benchmarks.train_step",
    "captioner": "benchmarks.captioner_cost",
    "data": "benchmarks.data_pipeline",
    "retrieval": "benchmarks.retrieval_eval",
    "llava": "benchmarks.llava_steps",
    "gpu": "benchmarks.gpu_l14_336",
    "peer": "benchmarks.peer",
}
CPU_SUITE = ("train", "captioner", "data", "retrieval", "llava")


def _run_one(args: argparse.Namespace) -> int:
    args.out = args.out or None
    importlib.import_module(BENCHMARKS[args.bench_command]).run(args)
    return 0


def _run_all(args: argparse.Namespace) -> int:
    """Every CPU benchmark with its default flags (the GPU one needs a GPU)."""
    args.out = args.out or None
    for name in CPU_SUITE:
        sub = argparse.ArgumentParser()
        module = importlib.import_module(BENCHMARKS[name])
        module.add_arguments(sub)
        bench_args = sub.parse_args([])
        bench_args.out, bench_args.bench_command = args.out, name
        module.run(bench_args)
    return 0


def add_subcommands(p: argparse.ArgumentParser) -> None:
    """The benchmark subcommands (and ``all``) under parser ``p``."""
    sub = p.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        summary = " ".join(module.__doc__.split("\n\n")[0].split()).split(": ", 1)[-1]
        b = sub.add_parser(name, help=summary,
                           description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        b.add_argument("--out", default=str(DEFAULT_OUT), help="JSON-lines results file to append to ('' = none)")
        module.add_arguments(b)
        b.set_defaults(func=_run_one)
    a = sub.add_parser("all", help="every CPU benchmark with its short defaults")
    a.add_argument("--out", default=str(DEFAULT_OUT), help="JSON-lines results file to append to ('' = none)")
    a.set_defaults(func=_run_all)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` to the ``clips`` command."""
    p = sub.add_parser("bench", help="performance benchmarks (markdown tables + JSON results)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_subcommands(p)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks``: parse ``argv`` and run the chosen benchmark."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_subcommands(p)
    args = p.parse_args(argv)
    return args.func(args)
