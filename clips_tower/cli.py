"""``clips models`` and ``clips export``: inspect named configs, convert checkpoints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def count_parameters(name: str) -> dict[str, int]:
    """Parameter counts of a named model per part (built on the meta device: no memory used)."""
    from .model import create_model

    model = create_model(name, device="meta")
    parts = {"vision": model.visual, "text": model.text, "captioner": model.captioner}
    counts = {k: sum(p.numel() for p in m.parameters()) if m is not None else 0 for k, m in parts.items()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def models_table() -> list[dict]:
    """One row per registered model: name, resolution, patch, widths/depths and parameter counts."""
    from .registry import get_model_config, list_models

    rows = []
    for name in list_models():
        cfg = get_model_config(name)
        rows.append({"name": name, "image_size": cfg.vision.image_size, "patch": cfg.vision.patch_size,
                     "vision": f"{cfg.vision.layers}x{cfg.vision.width}", "text": f"{cfg.text.layers}x{cfg.text.width}",
                     "captioner": f"{cfg.captioner.layers}x{cfg.captioner.width}" if cfg.captioner else "-",
                     "embed_dim": cfg.embed_dim, **{f"params_{k}": v for k, v in count_parameters(name).items()}})
    return rows


def _cmd_models(args: argparse.Namespace) -> int:
    rows = models_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("| model | res/patch | vision | text | captioner | embed | vision params | text params | captioner params | total |")
    print("|---|---|---|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        m = {k: f"{r[f'params_{k}'] / 1e6:.2f}M" for k in ("vision", "text", "captioner", "total")}
        print(f"| {r['name']} | {r['image_size']}/{r['patch']} | {r['vision']} | {r['text']} | {r['captioner']} | "
              f"{r['embed_dim']} | {m['vision']} | {m['text']} | {m['captioner']} | {m['total']} |")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import load_model, save_model
    from .model import create_model
    from .registry import list_models
    from .tokenizer import load_tokenizer

    if args.model in list_models() and not Path(args.model).exists():
        model = create_model(args.model, image_size=args.image_size)  # a random-init named model
        tokenizer = load_tokenizer()
    else:
        model = load_model(args.model, image_size=args.image_size)
        tokenizer = load_tokenizer(args.model)
    fmt = args.format.replace("-", "_")
    save_model(model, args.out, format=fmt, tokenizer=tokenizer)
    print(f"wrote {fmt} checkpoint of {model.config.name} to {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``models`` and ``export`` to the ``clips`` command."""
    p = sub.add_parser("models", help="list named model configs with parameter counts")
    p.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("export", help="convert a checkpoint (own <-> official open_clip format)")
    p.add_argument("format", choices=["open-clip", "clips"], help="output format")
    p.add_argument("--model", required=True, help="checkpoint folder/file (either format) or a named model")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--image-size", type=int, default=None, help="re-target resolution (interpolates positions)")
    p.set_defaults(func=_cmd_export)
