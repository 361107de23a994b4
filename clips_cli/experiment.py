"""``clips experiment``: reproduce one figure of the paper at laptop scale (thin shells over
:mod:`clips_cli.experiments`)."""

from __future__ import annotations

import argparse


def _cmd_inverse_effect(args: argparse.Namespace) -> int:
    from clips_cli.experiments.inverse_effect import get_settings, run_inverse_effect

    overrides = {key: value for key, value in (("seeds", args.seeds), ("pretrain_steps", args.steps),
                                               ("train_samples", args.samples)) if value is not None}
    run_inverse_effect(args.out, get_settings("quick" if args.quick else "default", **overrides), seed=args.seed,
                       progress=not args.no_progress)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``experiment`` (with ``inverse-effect``) to the ``clips`` command."""
    p = sub.add_parser("experiment", help="reproduce one of the paper's figures at laptop scale")
    group = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    q = group.add_parser("inverse-effect", help="CLIP with sub-caption/block/random/truncation at 3 token budgets "
                                                "+ full captions: table, plot, paper's findings beside ours")
    q.add_argument("--out", default="inverse_effect_out", help="output folder (report.md, inverse_effect.png, metrics.json, runs)")
    q.add_argument("--quick", action="store_true", help="tiny sizes (~2 minutes): checks the pipeline, not the effects")
    q.add_argument("--seed", type=int, default=0, help="seed of the data and of the first training run")
    q.add_argument("--seeds", type=int, default=None, help="training seeds per cell (default: the preset's, 3)")
    q.add_argument("--steps", type=int, default=None, help="training steps per run (default: the preset's, 600)")
    q.add_argument("--samples", type=int, default=None, help="training pairs (default: the preset's, 4000)")
    q.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    q.set_defaults(func=_cmd_inverse_effect)
