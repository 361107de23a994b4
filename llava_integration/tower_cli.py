"""``clips llava export-vit | assemble | tiny-llm``: towers as stock transformers models."""

from __future__ import annotations

import argparse

DTYPES = ("float32", "bfloat16", "float16")
TOWER_HELP = ("tower spec: clips:<checkpoint folder/file or named model>, a CLIPS checkpoint folder, "
              "or a folder of an HF CLIPVisionModel/SiglipVisionModel")


def _cmd_export_vit(args: argparse.Namespace) -> int:
    from .export import export_vision_tower

    out = export_vision_tower(args.tower, args.out)
    print(f"wrote HF vision model + image processor of {args.tower} to {out}")
    return 0


def _cmd_assemble(args: argparse.Namespace) -> int:
    import torch

    from .assemble import assemble_llava

    out = assemble_llava(
        args.tower, args.llm, args.out,
        projector=args.projector,
        vision_feature_layer=args.vision_feature_layer,
        vision_feature_select_strategy=args.vision_feature_select_strategy,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
    )
    print(f"wrote LlavaForConditionalGeneration + LlavaProcessor to {out}")
    return 0


def _cmd_tiny_llm(args: argparse.Namespace) -> int:
    from .tiny_llm import build_tiny_llm

    out = build_tiny_llm(args.out, vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                         num_layers=args.num_layers, num_heads=args.num_heads, seed=args.seed)
    print(f"wrote a tiny random LlamaForCausalLM + BPE tokenizer to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export-vit``, ``assemble`` and ``tiny-llm`` to the ``clips llava`` group."""
    p = sub.add_parser("export-vit", help="save a tower as a stock transformers vision model (CLIPS -> ViTModel)")
    p.add_argument("--tower", required=True, help=TOWER_HELP)
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.set_defaults(func=_cmd_export_vit)

    p = sub.add_parser("assemble", help="build an HF LlavaForConditionalGeneration + LlavaProcessor folder")
    p.add_argument("--tower", required=True, help=TOWER_HELP)
    p.add_argument("--llm", required=True, help="HF causal-LM folder (model + tokenizer)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--projector", default="mlp2x_gelu", help="LLaVA projector type (only mlp2x_gelu)")
    p.add_argument("--vision-feature-layer", type=int, default=-2, help="tower hidden state fed to the projector")
    p.add_argument("--vision-feature-select-strategy", default="default", choices=["default", "full"],
                   help="default: patch tokens only (drop CLS); full: keep CLS")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="dtype of the saved weights (default: the LM's)")
    p.set_defaults(func=_cmd_assemble)

    p = sub.add_parser("tiny-llm", help="build a tiny random Llama + BPE tokenizer (no download) for trials")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_tiny_llm)
