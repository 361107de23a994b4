"""``clips demo``: the first command a newcomer runs (a thin shell over :func:`clips_cli.demo_pipeline.run_demo`)."""

from __future__ import annotations

import argparse


def _cmd_demo(args: argparse.Namespace) -> int:
    from clips_cli.demo_pipeline import get_settings, run_demo

    overrides = {key: value for key, value in (("retrieval_seeds", args.seeds), ("llava_seeds", args.llava_seeds))
                 if value is not None}
    run_demo(args.out, get_settings("quick" if args.quick else "default", **overrides), seed=args.seed,
             progress=not args.no_progress)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``clips`` command."""
    p = sub.add_parser("demo", help="run the built-in end-to-end demo (no downloads): data, 4 pretrained models, "
                                    "retrieval, captions, LLaVA, report.md")
    p.add_argument("--out", default="demo_out", help="output folder (report.md, metrics.json, plots, runs)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (~2 minutes): checks the pipeline, not the effects")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of the first training run")
    p.add_argument("--seeds", type=int, default=None,
                   help="pretrain each model with this many seeds to measure the noise (default: the preset's)")
    p.add_argument("--llava-seeds", type=int, default=None,
                   help="repeat the LLaVA comparison with the towers of this many seeds (default 1; at most --seeds)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(func=_cmd_demo)
