"""The three evaluation pipelines behind ``clips eval``: load data and models, evaluate, write
the JSON / markdown / PNG reports, return the report dict. The CLI only parses arguments."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterator, Sequence

import torch

from . import reports
from .paper_numbers import paper_rows

log = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


@dataclasses.dataclass
class EvalOptions:
    """Settings shared by every evaluation command.

    ``models``: checkpoint folders/files or registered model names (random init, for smoke
    tests); ``tokenizer``: overrides each checkpoint's own tokenizer; ``precision``: a key of
    :data:`PRECISIONS` (autocast dtype); ``out``: folder for the result files.
    """

    models: Sequence[str]
    out: str | Path = "eval_results"
    tokenizer: str | None = None
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 64
    workers: int = 0
    skip_bad: bool = False
    progress: bool = True

    def run_kwargs(self) -> dict:
        """Keyword arguments of the ``run_*`` evaluation functions."""
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        return {"batch_size": self.batch_size, "device": self.device, "autocast_dtype": PRECISIONS[self.precision],
                "progress": self.progress, "skip_bad": self.skip_bad, "num_workers": self.workers}

    def settings(self) -> dict:
        """The options as recorded in result files."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("models", "out", "progress")}


def load_eval_model(spec: str, tokenizer: str | None = None, device: str = "cpu"):
    """(model, tokenizer) for a checkpoint folder/file (either format) or a registered model name.

    A registered name that is not also an existing path builds a randomly initialised model
    (seed 0) with the default vocab. The tokenizer is ``tokenizer`` if given, else the
    checkpoint's own (its folder), else the default bert-base-uncased vocab.
    """
    import clips_tower

    if spec in clips_tower.list_models() and not Path(spec).exists():
        torch.manual_seed(0)
        model, own_tokenizer = clips_tower.create_model(spec, device=device), None
        log.warning("%s: a registered model name, so the weights are RANDOM (use a checkpoint path for real numbers)", spec)
    else:
        model = clips_tower.load_model(spec, device=device)
        own_tokenizer = Path(spec) if Path(spec).is_dir() else Path(spec).parent
    tok = clips_tower.load_tokenizer(tokenizer or own_tokenizer)
    clips_tower.tokenizer.check_tokenizer_fits(tok, model.config, f"tokenizer {tokenizer or own_tokenizer or tok.source}")
    return model.eval(), tok


def _each_model(opts: EvalOptions) -> Iterator[tuple[str, torch.nn.Module, object]]:
    # One model in memory at a time: comparisons may involve several large checkpoints.
    seen: dict[str, int] = {}
    for spec in opts.models:
        seen[spec] = seen.get(spec, 0) + 1
        label = spec if seen[spec] == 1 else f"{spec} #{seen[spec]}"  # result keys must stay distinct
        model, tokenizer = load_eval_model(spec, opts.tokenizer, opts.device)
        yield label, model, tokenizer
        del model


def retrieval_command(opts: EvalOptions, data: str | Path, image_root: str | Path | None = None, split: str = "test",
                      fmt: str | None = None, dataset_name: str | None = None, chunk_size: int | None = None) -> dict:
    """Zero-shot retrieval of every model in ``opts.models`` on one dataset; writes
    ``retrieval.json``, ``retrieval.md`` and ``retrieval.png`` into ``opts.out`` and returns the report.

    ``dataset_name`` picks the paper's numbers (default: the Karpathy file's ``dataset`` field).
    """
    from .data import detect_format, load_retrieval_dataset
    from .retrieval import run_retrieval

    fmt = fmt or detect_format(data)
    dataset = load_retrieval_dataset(data, image_root, split, fmt, skip_bad=opts.skip_bad)
    name = dataset_name or dataset.name
    entries = {}
    for label, model, tokenizer in _each_model(opts):
        r = run_retrieval(model, tokenizer, dataset, chunk_size=chunk_size, **opts.run_kwargs())
        entries[label] = {
            "metrics": r.metrics, "timings": r.timings,
            "recall_curve": {"i2t": reports.recall_curve(r.i2t_ranks, r.metrics["num_captions"]),
                             "t2i": reports.recall_curve(r.t2i_ranks, r.metrics["num_images"])},
            **reports.skipped_summary(r.skipped),
        }
    report = {"task": "retrieval",
              "dataset": {"path": str(data), "format": fmt, "split": split if fmt == "karpathy" else None,
                          "name": name, "image_root": str(image_root) if image_root else None},
              "settings": opts.settings() | {"chunk_size": chunk_size}, "models": entries, "paper": paper_rows(name)}
    table = reports.markdown_table("retrieval", {k: e["metrics"] for k, e in entries.items()}, name)
    reports.write_results(opts.out, "retrieval", report, table)
    reports.plot_retrieval(entries, Path(opts.out) / "retrieval.png")
    return report | {"table": table}


def classify_command(opts: EvalOptions, data: str | Path, classnames: str | Path | None = None,
                     image_root: str | Path | None = None, templates: str = "imagenet80",
                     dataset_name: str | None = None) -> dict:
    """Zero-shot classification of every model on an image-folder or CSV dataset; writes
    ``classify.json`` and ``classify.md`` into ``opts.out`` and returns the report.

    ``templates``: a name in :data:`eval.templates.TEMPLATE_SETS` or a text file of templates.
    """
    from .classification import load_classification_dataset, run_classification
    from .templates import get_templates

    prompts = get_templates(templates)
    dataset = load_classification_dataset(data, classnames, image_root, name=dataset_name, skip_bad=opts.skip_bad)
    entries = {}
    for label, model, tokenizer in _each_model(opts):
        r = run_classification(model, tokenizer, dataset, prompts, **opts.run_kwargs())
        entries[label] = {"metrics": r.metrics, **reports.skipped_summary(r.skipped)}
    report = {"task": "classify",
              "dataset": {"path": str(data), "name": dataset.name, "num_classes": len(dataset.classnames)},
              "templates": {"set": str(templates), "count": len(prompts)},
              "settings": opts.settings(), "models": entries, "paper": paper_rows(dataset.name)}
    table = reports.markdown_table("classify", {k: e["metrics"] for k, e in entries.items()}, dataset.name)
    reports.write_results(opts.out, "classify", report, table)
    return report | {"table": table}


def caption_command(opts: EvalOptions, data: str | Path, image_root: str | Path | None = None) -> dict:
    """Caption a JSONL set with every model; writes ``captions[-<i>].jsonl`` (one per model),
    ``caption.json`` and ``caption.md`` into ``opts.out`` and returns the report."""
    from .captioning import load_caption_dataset, run_captioning, write_captions_jsonl

    dataset = load_caption_dataset(data, image_root, skip_bad=opts.skip_bad)
    entries = {}
    for i, (label, model, tokenizer) in enumerate(_each_model(opts)):
        r = run_captioning(model, tokenizer, dataset, **opts.run_kwargs())
        out_file = Path(opts.out) / (f"captions-{i}.jsonl" if len(opts.models) > 1 else "captions.jsonl")
        write_captions_jsonl(r.rows, out_file)
        entries[label] = {"metrics": r.metrics, "captions_file": str(out_file), **reports.skipped_summary(r.skipped)}
    report = {"task": "caption", "dataset": {"path": str(data), "has_references": dataset.references is not None},
              "settings": opts.settings(), "models": entries}
    table = reports.markdown_table("caption", {k: e["metrics"] for k, e in entries.items()})
    reports.write_results(opts.out, "caption", report, table)
    return report | {"table": table}
