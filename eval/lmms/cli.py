"""``clips eval lmms`` (lmms-eval's CLI with local data) and ``clips eval lmms-data``."""

from __future__ import annotations

import argparse
import sys

LMMS_HELP = "benchmark an HF LLaVA folder with lmms-eval (--data-dir: local tasks and datasets)"
LAYOUTS = ("local", "hf")


def _lmms_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clips eval lmms", allow_abbrev=False, description=LMMS_HELP,
        epilog="Every other flag goes to lmms-eval unchanged (python -m lmms_eval --help lists them); --model "
               "defaults to clips_llava and --output_path to eval_results/lmms. Examples: clips eval lmms --data-dir "
               "lmms_data --model_args pretrained=checkpoints/llava-clips --tasks clips_pope,clips_gqa --batch_size 8; "
               "clips eval lmms --data-dir lmms_hf --model llava_hf --model_args pretrained=checkpoints/llava-clips "
               "--tasks pope,gqa,mme,mmbench_en_dev")
    p.add_argument("--data-dir", default=None,
                   help="folder from clips eval lmms-data: local clips_* task data (its YAMLs are installed and passed "
                        "as --include_path) and/or dataset repos in the HF layout of lmms-eval's own tasks "
                        "(lmms-lab-encoder/POPE, ...; lmms-eval then runs in this folder, which serves them)")
    return p


def _cmd_lmms(args: argparse.Namespace) -> int:
    from .hf_layout import HF_TASKS, check_hf_datasets
    from .runner import LmmsEvalError, install_tasks, lmms_eval_argv, requested_tasks, run_lmms_eval

    own, rest = _lmms_parser().parse_known_args(args.flags)
    try:
        cwd = include = None
        if own.data_dir is not None:
            local = install_tasks(own.data_dir, required=False)
            hf = check_hf_datasets(own.data_dir, requested_tasks(rest) or sorted(HF_TASKS))
            if not local and not hf:
                raise FileNotFoundError(f"{own.data_dir} holds neither local task data nor datasets in the HF layout of "
                                        f"the requested tasks; write them with `clips eval lmms-data [--layout hf] "
                                        f"{own.data_dir}`")
            if local:
                print(f"local tasks in {own.data_dir}: {', '.join(local)}")
                include = own.data_dir
            if hf:
                print(f"local datasets in {own.data_dir} for lmms-eval's {', '.join(hf)}")
                cwd = own.data_dir
        results = run_lmms_eval(lmms_eval_argv(rest, include, absolute=cwd is not None), cwd=cwd)
    except (LmmsEvalError, FileNotFoundError, ValueError) as e:
        print(f"clips eval lmms: error: {e}", file=sys.stderr)
        return 1
    print(f"results written to {results}")
    return 0


def _cmd_lmms_data(args: argparse.Namespace) -> int:
    sizes = dict(num_scenes=args.num_scenes, seed=args.seed, image_size=args.image_size, max_objects=args.max_objects)
    if args.layout == "hf":
        from .hf_layout import write_hf_datasets

        repos = write_hf_datasets(args.out, **sizes)
        print(f"wrote {', '.join(str(p) for p in repos.values())}")
        print(f"tasks {', '.join(repos)}: clips eval lmms --data-dir {args.out} --tasks {','.join(repos)} ...")
        return 0
    from .runner import install_tasks
    from .taskdata import write_task_data

    files = write_task_data(args.out, **sizes)
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
    p = sub.add_parser("lmms-data", help="write synthetic data for the local clips_* tasks (--layout local) or for "
                                         "lmms-eval's own pope/gqa/mme/mmbench_en_dev in their HF layout (--layout hf)")
    p.add_argument("out", help="output folder (for clips eval lmms --data-dir)")
    p.add_argument("--layout", choices=LAYOUTS, default="local",
                   help="local: clips_*.jsonl + task YAMLs; hf: lmms-lab-encoder/{POPE,GQA,MME,MMBench} dataset repos")
    p.add_argument("--num-scenes", type=int, default=100,
                   help="scenes (images); records per scene: POPE 2, MME 2 (hf), GQA 1, MMBench 4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    p.add_argument("--max-objects", type=int, default=2, help="each scene has 1..MAX_OBJECTS shapes (at most 4)")
    p.set_defaults(func=_cmd_lmms_data)
