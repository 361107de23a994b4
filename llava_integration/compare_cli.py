"""``clips llava compare``: stage 1 + stage 2 + lmms-eval per tower under one recipe, one table."""

from __future__ import annotations

import argparse
import sys

HELP = "train and benchmark LLaVA once per vision tower under one recipe; one table + JSON + bar chart"


def _cmd_compare(args: argparse.Namespace) -> int:
    from eval.lmms.runner import LmmsEvalError

    from .compare import CompareData, compare_towers, parse_extra
    from .data import DataCheckError
    from .feature_cache import FeatureCacheError

    try:
        paths = compare_towers(args.towers, args.llm, CompareData.from_dir(args.data), args.out,
                               recipe="quick" if args.quick else args.recipe,
                               tasks=args.tasks.split(",") if args.tasks else None, seed=args.seed,
                               extra=parse_extra(args.stage_args), eval_batch_size=args.eval_batch_size)
    except (ValueError, FileNotFoundError, DataCheckError, FeatureCacheError, LmmsEvalError) as e:
        print(f"clips llava compare: error: {e}", file=sys.stderr)
        return 2
    print(paths["table"].read_text(), end="")
    print(f"wrote {paths['table']}, {paths['json']}, {paths['plot']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``compare`` to the ``clips llava`` group."""
    from .compare import RECIPES

    p = sub.add_parser("compare", help=HELP, description=HELP)
    p.add_argument("--towers", nargs="+", required=True,
                   help="tower specs, e.g. clips:ckpt/clips-l14-336 clip:models/clip-l14-336 siglip:models/siglip")
    p.add_argument("--llm", required=True, help="HF causal-LM folder every tower is assembled with")
    p.add_argument("--data", required=True, help="folder with stage1.json, stage2.json, images/ and eval/ "
                                                 "(an lmms-eval task folder from `clips eval lmms-data`)")
    p.add_argument("--out", required=True, help="output folder; a rerun skips finished towers")
    p.add_argument("--tasks", default=None, help="comma list of lmms-eval tasks (default: every task in DATA/eval)")
    p.add_argument("--recipe", default="llava-1.5", choices=sorted(RECIPES), help="stage flags every tower gets")
    p.add_argument("--quick", action="store_true", help="the 'quick' recipe: a few steps per stage (tests, trials)")
    p.add_argument("--seed", type=int, default=0, help="training seed and data-order seed of every tower")
    p.add_argument("--stage-args", action="append", default=[], metavar="STAGE=FLAGS",
                   help="extra flags for one stage of every tower, e.g. "
                        "finetune='--mm_tunable_parts mm_vision_tower,mm_mlp_adapter,mm_language_model' (repeatable)")
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.set_defaults(func=_cmd_compare)
