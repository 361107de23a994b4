"""``clips eval lmms`` (lmms-eval's CLI with the local tasks) and ``clips eval lmms-data``."""

from __future__ import annotations

import argparse
import sys

LMMS_HELP = "benchmark an HF LLaVA folder with lmms-eval (--data-dir adds the local tasks)"


def _lmms_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clips eval lmms", allow_abbrev=False, description=LMMS_HELP,
        epilog="Every other flag goes to lmms-eval unchanged (python -m lmms_eval --help lists them); --model "
               "defaults to clips_llava and --output_path to eval_results/lmms. Example: clips eval lmms --data-dir "
               "lmms_data --model_args pretrained=checkpoints/llava-clips --tasks clips_pope,clips_gqa --batch_size 8")
    p.add_argument("--data-dir", default=None,
                   help="folder with local task data (clips eval lmms-data); its task YAMLs are installed and "
                        "passed as --include_path")
    return p


def _cmd_lmms(args: argparse.Namespace) -> int:
    from .runner import LmmsEvalError, install_tasks, lmms_eval_argv, run_lmms_eval

    own, rest = _lmms_parser().parse_known_args(args.flags)
    try:
        if own.data_dir is not None:
            print(f"local tasks in {own.data_dir}: {', '.join(install_tasks(own.data_dir))}")
        results = run_lmms_eval(lmms_eval_argv(rest, own.data_dir))
    except (LmmsEvalError, FileNotFoundError, ValueError) as e:
        print(f"clips eval lmms: error: {e}", file=sys.stderr)
        return 1
    print(f"results written to {results}")
    return 0


def _cmd_lmms_data(args: argparse.Namespace) -> int:
    from .runner import install_tasks
    from .taskdata import write_task_data

    files = write_task_data(args.out, num_scenes=args.num_scenes, seed=args.seed, image_size=args.image_size,
                            max_objects=args.max_objects)
    tasks = install_tasks(args.out)
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    print(f"tasks {', '.join(tasks)}: python -m lmms_eval --include_path {args.out} --tasks {','.join(tasks)} ...")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``lmms`` and ``lmms-data`` to the ``clips eval`` group."""
    # No '-' options at this level: lmms-eval's flags (and --help) pass through to _cmd_lmms.
    p = sub.add_parser("lmms", help=LMMS_HELP, description=LMMS_HELP, add_help=False, prefix_chars="+")
    p.add_argument("flags", nargs=argparse.REMAINDER, help="--data-dir DIR and lmms-eval flags (--help lists ours)")
    p.set_defaults(func=_cmd_lmms)
    p = sub.add_parser("lmms-data", help="write POPE/GQA/MMBench-shaped data + task YAMLs for the local lmms-eval tasks")
    p.add_argument("out", help="output folder (a task folder for --include_path / --data-dir)")
    p.add_argument("--num-scenes", type=int, default=100, help="scenes (images); records: POPE 2, GQA 1, MMBench 4 per scene")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    p.add_argument("--max-objects", type=int, default=2, help="each scene has 1..MAX_OBJECTS shapes (at most 4)")
    p.set_defaults(func=_cmd_lmms_data)
