"""``clips llava pretrain|finetune|merge-lora``: the LLaVA training stages.

``pretrain`` and ``finetune`` take LLaVA's flags (``--data_path --image_folder --vision_tower
--model_name_or_path --version ... --deepspeed zero2``) and any HF ``TrainingArguments`` flag; they
are parsed by ``transformers.HfArgumentParser`` (``clips llava finetune --help`` lists them all).
"""

from __future__ import annotations

import argparse
import functools
import sys

from .stages import STAGES


def _run_stage(name: str, args: argparse.Namespace) -> int:
    from .data import DataCheckError
    from .feature_cache import FeatureCacheError
    from .train import run_stage
    from .train_args import SetupError

    try:
        run_stage(name, args.flags)
    except (SetupError, DataCheckError, FeatureCacheError, FileNotFoundError) as e:  # the message says what to fix
        print(f"clips llava {name}: error: {e}", file=sys.stderr)
        return 2
    return 0


def _merge_lora(args: argparse.Namespace) -> int:
    import torch

    from .train import merge_lora

    merge_lora(args.adapter_dir, args.output_dir, base=args.base, dtype=getattr(torch, args.dtype))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pretrain``, ``finetune`` and ``merge-lora`` to the ``clips llava`` group."""
    for stage in STAGES.values():
        # No '-' options here: every flag (including --help) passes through to HfArgumentParser.
        p = sub.add_parser(stage.name, help=stage.help, description=stage.help, add_help=False, prefix_chars="+")
        p.add_argument("flags", nargs=argparse.REMAINDER, help="LLaVA / HF Trainer flags (--help lists them)")
        p.set_defaults(func=functools.partial(_run_stage, stage.name))
    p = sub.add_parser("merge-lora", help="merge a stage-2 LoRA adapter into its base: an HF LLaVA folder")
    p.add_argument("adapter_dir", help="output folder of a --lora_enable finetune run")
    p.add_argument("output_dir", help="where to write the merged HF LLaVA folder")
    p.add_argument("--base", help="base LLaVA folder (default: the one recorded in adapter_config.json)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.set_defaults(func=_merge_lora)
