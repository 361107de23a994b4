"""``clips eval retrieval|classify|caption``: thin shells over :mod:`eval.commands`.

More subcommands join the group by adding a module with ``register(eval_subparsers)`` to
:data:`SUBCOMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules adding further ``clips eval`` subcommands (each has ``register(eval_subparsers)``).
SUBCOMMAND_MODULES: tuple[str, ...] = ("eval.lmms.cli",)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Options every evaluation takes: models, tokenizer, device/precision, batching, output."""
    p.add_argument("--model", action="append", required=True, metavar="PATH_OR_NAME",
                   help="checkpoint folder/file (own or open_clip format) or a registered model name (random "
                        "weights); repeat to compare models")
    p.add_argument("--tokenizer", default=None, help="tokenizer path (default: the checkpoint's own, else bert-base-uncased)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16 runs the towers under autocast")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="image-decoding worker processes")
    p.add_argument("--skip-bad", action="store_true",
                   help="drop unreadable images/captions and count them in the result instead of failing")
    p.add_argument("--out", default="eval_results", help="folder for the result files")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _options(args: argparse.Namespace):
    from .commands import EvalOptions

    return EvalOptions(models=args.model, out=args.out, tokenizer=args.tokenizer, device=args.device,
                       precision=args.precision, batch_size=args.batch_size, workers=args.workers,
                       skip_bad=args.skip_bad, progress=not args.no_progress)


def _run(command, args: argparse.Namespace, *inputs) -> int:
    """Run one ``eval.commands`` pipeline; a bad eval set is a clean error (exit 2), not a traceback."""
    from .data import BadEntriesError

    try:
        report = command(_options(args), *inputs)
    except BadEntriesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report["table"], end="")
    print(f"results written to {args.out}/{report['task']}.json")
    return 0


def _cmd_retrieval(args: argparse.Namespace) -> int:
    from .commands import retrieval_command

    return _run(retrieval_command, args, args.data, args.image_root, args.split, args.format, args.dataset_name,
                args.chunk_size)


def _cmd_classify(args: argparse.Namespace) -> int:
    from .commands import classify_command

    return _run(classify_command, args, args.data, args.classnames, args.image_root, args.templates,
                args.dataset_name)


def _cmd_caption(args: argparse.Namespace) -> int:
    from .commands import caption_command

    return _run(caption_command, args, args.data, args.image_root)


def _add_retrieval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retrieval", help="zero-shot image<->text retrieval (R@1/5/10)")
    p.add_argument("--data", required=True,
                   help="Karpathy split JSON (dataset_coco.json, dataset_flickr30k.json), a JSONL of "
                        "{image, captions}, or webdataset shards (any training shard spec: .tar, brace pattern, "
                        "folder, '::' list, pipe:CMD, URL)")
    p.add_argument("--image-root", default=None, help="folder the image paths are relative to (default: the file's folder)")
    p.add_argument("--split", default="test", help="Karpathy split to evaluate")
    p.add_argument("--format", default=None, choices=["karpathy", "jsonl", "wds"], help="default: from the path")
    p.add_argument("--dataset-name", default=None, help="e.g. coco / flickr30k, to show the paper's numbers")
    p.add_argument("--chunk-size", type=int, default=None, help="query rows scored at once (default: about 4M scores per block)")
    add_model_args(p)
    p.set_defaults(func=_cmd_retrieval)


def _add_classify(sub: argparse._SubParsersAction) -> None:
    from .templates import TEMPLATE_SETS

    p = sub.add_parser("classify", help="zero-shot classification (top-1/top-5)")
    p.add_argument("--data", required=True, help="image folder (root/<class>/<image>) or a CSV with image,label columns")
    p.add_argument("--classnames", default=None, help="text file, one class name per line (folder order / label index)")
    p.add_argument("--image-root", default=None, help="folder the CSV's image paths are relative to")
    p.add_argument("--templates", default="imagenet80",
                   help=f"prompt set: {', '.join(TEMPLATE_SETS)}, or a text file with one template per line")
    p.add_argument("--dataset-name", default=None, help="e.g. imagenet, to show the paper's numbers")
    add_model_args(p)
    p.set_defaults(func=_cmd_classify)


def _add_caption(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="generate synthetic captions; token accuracy, perplexity, BLEU-4")
    p.add_argument("--data", required=True, help="JSONL of {image, web_caption, synthetic_caption (reference)}")
    p.add_argument("--image-root", default=None, help="folder the image paths are relative to")
    add_model_args(p)
    p.set_defaults(func=_cmd_caption)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` command group to the ``clips`` command."""
    p = sub.add_parser("eval", help="evaluate models: retrieval, classification, captioning")
    eval_sub = p.add_subparsers(dest="eval_command", required=True, metavar="EVAL_COMMAND")
    for add in (_add_retrieval, _add_classify, _add_caption):
        add(eval_sub)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(eval_sub)
