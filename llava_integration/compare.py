"""``clips llava compare``: the paper's LLaVA tower comparison as one command.

Every tower goes through the same pipeline: stage 1 (projector pretraining) -> stage 2
(instruction tuning, from stage 1's projector) -> lmms-eval, under one recipe: the same flags,
seed and data-order seed, and the same LLM initialisation (the assembly seeds the projector and
the new ``<image>`` embedding row, so one LLM assembled with two towers differs only in the tower).
Modality-length grouping is switched off so that the data order is the plain seeded shuffle, which
does not depend on how many tokens a tower's images take.

The pipeline is data (:data:`PIPELINE`, :data:`RECIPES`); each stage is run by
:func:`llava_integration.train.run_stage` and the benchmark by :mod:`eval.lmms.runner`.

Output folder::

    OUT/compare.json        per tower: spec, metrics per task, final training loss per stage
    OUT/compare.md          one markdown table: a row per (task, metric), a column per tower
    OUT/compare.png         grouped bar chart of the same numbers
    OUT/compare_config.json the recipe; a rerun with another recipe on the same OUT is refused
    OUT/towers/<name>/      stage1/, stage2/, eval/ and result.json (written last: a tower with
                            one is finished and not re-run; a finished stage is not re-run either)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

from clips_tower.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

RESULT_FILE, CONFIG_FILE, STAGE_DONE = "result.json", "compare_config.json", "done.json"


@dataclass(frozen=True)
class PipelineStage:
    """One training stage of the comparison: the :data:`~llava_integration.stages.STAGES` name, its
    sub-folder, the data it reads (a :class:`CompareData` field pair) and how it starts from the
    previous stage's output (flags built from that folder; None for the first stage)."""

    stage: str
    folder: str
    data: str
    images: str
    from_previous: tuple[str, str] | None = None  # (flag, file inside the previous stage's folder)


PIPELINE: tuple[PipelineStage, ...] = (
    PipelineStage("pretrain", "stage1", data="stage1", images="stage1_images"),
    PipelineStage("finetune", "stage2", data="stage2", images="stage2_images",
                  from_previous=("--pretrain_mm_mlp_adapter", "mm_projector.safetensors")),
)

# Flags every tower gets on top of each stage's own LLaVA-1.5 recipe (stages.py).
COMMON_FLAGS = ("--group_by_modality_length", "False", "--report_to", "none")
# Named recipes: stage name -> flags on top of the stage's recipe.
RECIPES: Mapping[str, Mapping[str, tuple[str, ...]]] = MappingProxyType({
    "llava-1.5": {"pretrain": (), "finetune": ()},
    # A few steps of each stage on a tiny model: for tests and trials on a CPU.
    "quick": {
        "pretrain": ("--max_steps", "6", "--per_device_train_batch_size", "4", "--learning_rate", "2e-3",
                     "--save_strategy", "no", "--dataloader_num_workers", "0", "--logging_steps", "1"),
        "finetune": ("--max_steps", "6", "--per_device_train_batch_size", "4", "--learning_rate", "2e-3",
                     "--warmup_ratio", "0", "--save_strategy", "no", "--dataloader_num_workers", "0",
                     "--logging_steps", "1"),
    },
})


@dataclass(frozen=True)
class CompareData:
    """The comparison's data: LLaVA-format JSON for each stage, their image folders, and an
    lmms-eval task folder (``clips eval lmms-data``) or None (then ``tasks`` must be lmms-eval's
    own). :meth:`from_dir` reads the default layout."""

    stage1: Path
    stage2: Path
    stage1_images: Path
    stage2_images: Path
    eval_dir: Path | None

    @classmethod
    def from_dir(cls, root: str | Path) -> CompareData:
        """``root/stage1.json``, ``root/stage2.json``, ``root/images/`` (both stages) and
        ``root/eval/`` (if present); a missing file is a ``FileNotFoundError`` naming it."""
        root = Path(root)
        for need in (root / "stage1.json", root / "stage2.json", root / "images"):
            if not need.exists():
                raise FileNotFoundError(f"--data {root}: missing {need.name} (expected stage1.json, stage2.json, "
                                        f"images/ and optionally eval/)")
        eval_dir = root / "eval"
        return cls(root / "stage1.json", root / "stage2.json", root / "images", root / "images",
                   eval_dir if eval_dir.is_dir() else None)


def tower_name(spec: str) -> str:
    """A folder- and table-friendly name of a tower spec: ``<kind>-<last path part>``."""
    from .towers import spec_target, tower_kind

    target = Path(spec_target(spec).rstrip("/"))
    stem = target.stem if target.suffix in (".safetensors", ".bin", ".pt") else target.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{tower_kind(spec)}-{stem}")


def _final_loss(stage_dir: Path) -> float | None:
    state = stage_dir / "trainer_state.json"
    if not state.is_file():
        return None
    losses = [h["loss"] for h in json.loads(state.read_text())["log_history"] if "loss" in h]
    return losses[-1] if losses else None


def task_metrics(results_json: Path) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` of an lmms-eval results file: every numeric metric, the
    ``,none`` filter suffix dropped, standard errors left out."""
    results = json.loads(Path(results_json).read_text())["results"]
    out: dict[str, dict[str, float]] = {}
    for task, values in results.items():
        for key, value in values.items():
            metric = key.removesuffix(",none")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "_stderr" not in metric:
                out.setdefault(task, {})[metric] = float(value)
    return out


def _run_once(folder: Path, run, *args):
    """``run(*args)`` unless ``folder`` holds its done-marker (a finished stage is not re-run)."""
    if (folder / STAGE_DONE).is_file():
        log.info("%s is finished; not re-run", folder)
        return folder
    result = run(*args)
    atomic_write_json(folder / STAGE_DONE, {"done": True})
    return result


def run_tower(spec: str, llm: str | Path, data: CompareData, out: Path, recipe: str, tasks: Sequence[str],
              seed: int, extra: Mapping[str, Sequence[str]], eval_batch_size: int) -> dict:
    """Stage 1 + stage 2 + lmms-eval for one tower into ``out`` (see the module docstring);
    returns its result record (also ``out/result.json``)."""
    import torch

    from eval.lmms import runner

    from .towers import tower_kind
    from .train import MERGED_DIR, run_stage

    if (out / RESULT_FILE).is_file():
        log.info("tower %s is finished (%s); not re-run", spec, out / RESULT_FILE)
        return json.loads((out / RESULT_FILE).read_text())
    previous: Path | None = None
    for step in PIPELINE:
        argv = ["--model_name_or_path", str(llm), "--vision_tower", spec, "--seed", str(seed), "--data_seed", str(seed),
                "--data_path", str(getattr(data, step.data)), "--image_folder", str(getattr(data, step.images)),
                "--output_dir", str(out / step.folder), *COMMON_FLAGS, *RECIPES[recipe][step.stage],
                *extra.get(step.stage, ())]
        if step.from_previous is not None:
            argv += [step.from_previous[0], str(previous / step.from_previous[1])]
        previous = _run_once(out / step.folder, run_stage, step.stage, argv)
    model_dir = previous / MERGED_DIR if (previous / MERGED_DIR).is_dir() else previous
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{previous} holds no HF LLaVA folder to evaluate (a LoRA run needs --merge_lora True)")
    lmms_args = ["--model_args", f"pretrained={model_dir},dtype=float32", "--tasks", ",".join(tasks),
                 "--batch_size", str(eval_batch_size), "--device", "cuda" if torch.cuda.is_available() else "cpu",
                 "--output_path", str(out / "eval")]
    results = runner.run_lmms_eval(runner.lmms_eval_argv(lmms_args, data.eval_dir))
    record = {"tower": spec, "kind": tower_kind(spec), "model": str(model_dir), "results": str(results),
              "metrics": task_metrics(results),
              "train_loss": {step.stage: _final_loss(out / step.folder) for step in PIPELINE}}
    atomic_write_json(out / RESULT_FILE, record)
    return record


def compare_table(records: Mapping[str, dict]) -> str:
    """Markdown: a row per (task, metric), a column per tower, then each stage's final loss."""
    names = list(records)
    rows = sorted({(task, metric) for r in records.values() for task, ms in r["metrics"].items() for metric in ms})
    lines = ["| task | metric | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for task, metric in rows:
        cells = [records[n]["metrics"].get(task, {}).get(metric) for n in names]
        lines.append(f"| {task} | {metric} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in cells) + " |")
    for step in PIPELINE:
        losses = [records[n]["train_loss"].get(step.stage) for n in names]
        lines.append(f"| {step.stage} | final train loss | "
                     + " | ".join("-" if v is None else f"{v:.4f}" for v in losses) + " |")
    return "\n".join(lines) + "\n"


def compare_towers(towers: Sequence[str], llm: str | Path, data: CompareData, out: str | Path, *,
                   recipe: str = "llava-1.5", tasks: Sequence[str] | None = None, seed: int = 0,
                   extra: Mapping[str, Sequence[str]] | None = None, eval_batch_size: int = 8) -> dict[str, Path]:
    """Run :func:`run_tower` for every tower spec under one recipe and write the table, JSON and bar
    chart; returns their paths. ``tasks``: lmms-eval task names (default: every local task of
    ``data.eval_dir``); ``extra``: stage name -> flags appended for every tower (e.g.
    ``{"finetune": ["--mm_tunable_parts", "mm_vision_tower,mm_mlp_adapter,mm_language_model"]}``)."""
    from eval.lmms import runner
    from eval.reports import plot_grouped_bars

    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {sorted(RECIPES)}")
    extra = {k: list(v) for k, v in (extra or {}).items()}
    unknown = sorted(set(extra) - {s.stage for s in PIPELINE})
    if unknown:
        raise ValueError(f"extra flags for unknown stage(s) {unknown}; stages: {[s.stage for s in PIPELINE]}")
    names = [tower_name(spec) for spec in towers]  # also checks every spec names a known tower kind
    if len(set(names)) != len(names):
        raise ValueError(f"towers must differ in name: {dict(zip(towers, names))}")
    if data.eval_dir is not None:
        local = runner.install_tasks(data.eval_dir)
        tasks = list(tasks or local)
    if not tasks:
        raise ValueError("no lmms-eval tasks: give --tasks or an eval/ task folder in --data")
    out = Path(out)
    config = {"towers": dict(zip(names, towers)), "llm": str(llm), "recipe": recipe, "seed": seed,
              "tasks": list(tasks), "extra": extra, "data": {k: str(v) for k, v in dataclasses.asdict(data).items()}}
    if (out / CONFIG_FILE).is_file():
        before = json.loads((out / CONFIG_FILE).read_text())
        changed = sorted(k for k in config if k != "towers" and before.get(k) != config[k])
        changed += [n for n in names if n in before.get("towers", {}) and before["towers"][n] != config["towers"][n]]
        if changed:
            raise ValueError(f"{out} holds a comparison with a different {', '.join(changed)}; use another --out")
        config["towers"] = {**before.get("towers", {}), **config["towers"]}  # towers may be added later
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CONFIG_FILE, config)

    records = {name: run_tower(spec, llm, data, out / "towers" / name, recipe, tasks, seed, extra, eval_batch_size)
               for name, spec in zip(names, towers)}
    paths = {"json": out / "compare.json", "table": out / "compare.md", "plot": out / "compare.png"}
    atomic_write_json(paths["json"], {"config": config, "towers": records})
    atomic_write_text(paths["table"], compare_table(records))
    categories = sorted({f"{t}\n{m}" for r in records.values() for t, ms in r["metrics"].items() for m in ms})
    series = {n: [r["metrics"].get(c.split("\n")[0], {}).get(c.split("\n")[1], 0.0) for c in categories]
              for n, r in records.items()}
    plot_grouped_bars(categories, series, paths["plot"], ylabel="score", title="LLaVA tower comparison")
    return paths


def parse_extra(values: Sequence[str]) -> dict[str, list[str]]:
    """``["finetune=--mm_tunable_parts mm_vision_tower,mm_mlp_adapter", ...]`` -> stage -> flags."""
    extra: dict[str, list[str]] = {}
    for value in values:
        stage, sep, flags = value.partition("=")
        if not sep:
            raise ValueError(f"--stage-args {value!r}: expected STAGE='FLAGS' (e.g. finetune='--max_steps 10')")
        extra.setdefault(stage, []).extend(shlex.split(flags))
    return extra
