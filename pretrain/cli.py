"""``clips pretrain`` and the ``clips data`` command group (``clips data shard``, ``clips data synthetic``).

    clips pretrain --config clips-tiny --data.train data/tiny --train.out_dir runs/tiny
    torchrun --nproc_per_node 8 -m clips_cli.main pretrain --config clips-vit-l-14 --dist.strategy fsdp2
    clips pretrain --config clips-vit-b-16 --dry-run              # resolved config, batch layout, FLOPs
    clips pretrain --config clips-tiny --benchmark-steps 5        # samples/s and MFU, no data needed
    clips data shard --input captions.jsonl --out shards/ --shard-size 10000
    clips data synthetic --out data/tiny --samples 2000 --eval-samples 100

Every config key is an option (``clips pretrain --help`` lists them): ``--section.key VALUE`` or
the bare ``--key VALUE`` where the name is unique; values are YAML.

Other packages add ``clips data ...`` subcommands with :func:`data_subcommands`, which creates the
group on first use and returns the same subparsers afterwards.
"""

from __future__ import annotations

import argparse
import json

_OVERRIDE_PREFIX = "override:"


def data_subcommands(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The subparsers of the ``clips data`` group (created on first call, shared afterwards)."""
    parser = sub.choices.get("data")
    if parser is None:
        parser = sub.add_parser("data", help="data preparation (sharding, ...)")
        parser.subcommands = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    return parser.subcommands


def _overrides(args: argparse.Namespace) -> list[str]:
    out = []
    for attr, value in vars(args).items():
        if attr.startswith(_OVERRIDE_PREFIX):
            out += [f"--{attr[len(_OVERRIDE_PREFIX):]}", value]
    return out


def _cmd_pretrain(args: argparse.Namespace) -> int:
    import logging

    from .config import load_config

    cfg = load_config(args.config, _overrides(args))
    if args.dry_run:
        print(json.dumps(dry_run_report(cfg), indent=2))
        return 0
    if args.benchmark_steps:
        from .throughput import measure_throughput

        print(json.dumps(measure_throughput(cfg, steps=args.benchmark_steps), indent=2))
        return 0
    from .trainer import train

    summary = train(cfg)
    logging.getLogger(__name__).info("%d/%d steps; summary in %s/summary.json", summary["steps"],
                                     summary["total_steps"], cfg.train.out_dir)
    return 0


def dry_run_report(cfg) -> dict:
    """What a run would do, without data or weights: config, per-stage batch layout (for
    ``$WORLD_SIZE`` ranks, default 1), parameter counts and training FLOPs (``clips pretrain --dry-run``)."""
    import os

    import clips_tower
    from clips_tower.flops import model_flops

    from .recipes import build_recipe

    base = clips_tower.get_model_config(cfg.model.name)
    recipe = build_recipe(cfg.recipe.name, cfg.recipe.strategy, cfg.recipe.tokens, cfg.recipe.web_fraction,
                          cfg.recipe.captioner if cfg.loss.caption_weight > 0 else False, cfg.recipe.text_weights)
    model = clips_tower.create_model(base, device="meta", captioner=recipe.captioner)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    stages = []
    for st in cfg.stages:
        size = st.image_size or base.vision.image_size
        micro = st.micro_batch_size or cfg.train.micro_batch_size or cfg.train.global_batch_size // world
        fl = model_flops(base, len(recipe.text_weights), recipe.captioner, None, cfg.train.global_batch_size, size)
        stages.append({"name": st.name, "steps": st.steps, "image_size": size, "ranks": world,
                       "micro_batch_size_per_rank": micro, "accum_steps": cfg.train.global_batch_size / (micro * world),
                       "samples": st.steps * cfg.train.global_batch_size,
                       "train_gflops_per_sample": round(fl.train / 1e9, 3),
                       "train_pflops_total": round(fl.train * st.steps * cfg.train.global_batch_size / 1e15, 3)})
    return {"config": cfg.to_dict(), "recipe": {"texts": recipe.text_weights, "captioner": recipe.captioner},
            "parameters": sum(p.numel() for p in model.parameters()), "stages": stages}


def _cmd_shard(args: argparse.Namespace) -> int:
    from .data.convert import shard_dataset
    from .data.sources import SourceOptions

    opts = SourceOptions(image_column=args.image_column, key_column=args.key_column, image_root=args.image_root,
                         caption_columns=(args.web_key, args.synthetic_key))
    report = shard_dataset(args.input, args.out, fmt=args.format, options=opts, web_key=args.web_key,
                           synthetic_key=args.synthetic_key, shard_size=args.shard_size, progress=not args.no_progress)
    print(json.dumps({"shards": len(report.sizes), "written": report.written, "skipped": report.skipped,
                      "out": str(args.out)}, indent=2))
    return 0


def _cmd_synthetic(args: argparse.Namespace) -> int:
    from .synthetic import write_retrieval_split, write_webdataset

    sizes = write_webdataset(args.out, args.samples, seed=args.seed, shard_size=args.shard_size,
                             image_size=args.image_size)
    report = {"train": str(args.out), "shards": len(sizes), "samples": sum(sizes.values())}
    if args.eval_samples:
        report["eval"] = str(write_retrieval_split(args.eval_out or f"{args.out}-eval", args.eval_samples,
                                                   seed=args.seed + 1, image_size=args.image_size))
    print(json.dumps(report, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pretrain`` and ``data shard`` to the ``clips`` command."""
    from .config import override_keys

    p = sub.add_parser("pretrain", help="pretrain CLIPS / CLIP baselines (one process, or under torchrun)",
                       description="Pretrain from a YAML config plus --key value overrides.")
    p.add_argument("--config", required=True, help="YAML config file, or a reference config name (e.g. clips-tiny)")
    p.add_argument("--dry-run", action="store_true", help="print config, batch layout, parameters and FLOPs; train nothing")
    p.add_argument("--benchmark-steps", type=int, default=0, metavar="N",
                   help="time N training steps on an in-memory batch and print samples/s and MFU")
    group = p.add_argument_group("config overrides (values are YAML; --section.key or a unique --key)")
    for key, path in override_keys().items():
        names = sorted({f"--{key}", f"--{key.replace('_', '-')}"})
        group.add_argument(*names, dest=_OVERRIDE_PREFIX + path, metavar="V", default=argparse.SUPPRESS,
                           help=argparse.SUPPRESS if key != path else None)
    p.set_defaults(func=_cmd_pretrain)

    s = data_subcommands(sub).add_parser("shard", help="JSONL/parquet + images -> webdataset shards + sizes.json")
    s.add_argument("--input", required=True, help="JSONL or parquet file(s) (brace patterns, '::' lists, folders)")
    s.add_argument("--out", required=True, help="output folder for NNNNN.tar shards and sizes.json")
    s.add_argument("--format", choices=["jsonl", "parquet"], default=None, help="input format (default: from the name)")
    s.add_argument("--image-root", default=None, help="folder image paths are relative to (default: the input's folder)")
    s.add_argument("--image-column", default="image", help="image path/bytes column or JSON key")
    s.add_argument("--key-column", default="key", help="sample key column or JSON key (optional in the data)")
    s.add_argument("--web-key", default="org_caption", help="web (alt-text) caption field")
    s.add_argument("--synthetic-key", default="re_caption", help="synthetic caption field")
    s.add_argument("--shard-size", type=int, default=10000, help="samples per shard")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_shard)

    g = data_subcommands(sub).add_parser("synthetic", help="generate a procedural image/caption dataset (shards + eval split)")
    g.add_argument("--out", required=True, help="output folder for the training shards")
    g.add_argument("--samples", type=int, default=2000, help="training samples")
    g.add_argument("--shard-size", type=int, default=500, help="samples per shard")
    g.add_argument("--eval-samples", type=int, default=0, help="also write a Karpathy-style eval split of N images")
    g.add_argument("--eval-out", default=None, help="eval split folder (default: <out>-eval)")
    g.add_argument("--image-size", type=int, default=64, help="rendered image side in pixels")
    g.add_argument("--seed", type=int, default=0, help="dataset seed (the eval split uses seed + 1)")
    g.set_defaults(func=_cmd_synthetic)
