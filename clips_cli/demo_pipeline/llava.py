"""Step 5 of the demo: LLaVA-1.5's two stages on a tiny language model trained from scratch, once
per vision tower, then answer accuracy on held-out scenes through lmms-eval's own CLI.

Both runs start from the same LLM initialisation and data and differ only in the (frozen) tower,
as in the paper's LLaVA comparison.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

from clips_tower.io import atomic_write_text

from .data import DemoData
from .parallel import Job, run_jobs
from .settings import DemoSettings

CPU_FLAGS = ["--use_cpu", "True", "--report_to", "none", "--dataloader_num_workers", "0", "--save_strategy", "no",
             "--logging_steps", "10", "--group_by_modality_length", "False"]
TASKS = ("clips_pope", "clips_gqa")
# task -> (metric key in lmms-eval's results, report name)
METRICS = {"clips_pope": ("pope_accuracy,none", "POPE-style yes/no accuracy"),
           "clips_gqa": ("exact_match,none", "GQA-style short-answer accuracy")}


def build_llm(out_dir: Path, data: DemoData, seed: int) -> Path:
    """The tiny Llama both LLaVA runs start from, with a byte-level BPE trained on every text it
    will read: the demo's LLaVA turns and stage 2's system prompt (``v1`` template), which then
    takes 29 tokens instead of 109 (a quarter of a stage-2 sequence saved). The 2048-entry cap is
    not reached: the demo's texts saturate at ~515 entries, every word whole."""
    from llava_integration.conversation import VICUNA_V1
    from llava_integration.tiny_llm import build_tiny_llm

    corpus = [VICUNA_V1.system] + [turn["value"] for name in ("captions", "instruct")
                                   for record in json.loads(data.llava[name].read_text())
                                   for turn in record["conversations"]]
    return build_tiny_llm(out_dir, corpus=corpus, vocab_size=2048, hidden_size=128, num_layers=2, num_heads=4, seed=seed)


def train_llava(tower: str, llm: Path, data: DemoData, out: Path, s: DemoSettings, seed: int) -> Path:
    """Assemble ``tower`` (a ``clips:<checkpoint>`` spec) with ``llm``, run stage 1 (projector on
    captions) then stage 2 (projector + LLM on the instruction data); returns the HF LLaVA folder.
    No progress bars: it runs in a worker (:func:`train_all` draws one bar for all runs)."""
    from llava_integration.assemble import assemble_llava
    from llava_integration.train import run_stage

    # The last block's tokens (LLaVA takes the second-to-last, -2, of a 24-layer tower; of the
    # demo's 2-layer towers that would be a single block: too little of what contrastive training learnt).
    base = assemble_llava(tower, llm, out / "base", vision_feature_layer=-1)
    common = ["--model_name_or_path", str(base), "--image_folder", str(data.llava["images"]),
              "--per_device_train_batch_size", str(s.llava_batch_size), "--seed", str(seed), "--disable_tqdm", "True", *CPU_FLAGS]
    stage1 = run_stage("pretrain", [*common, "--data_path", str(data.llava["captions"]), "--output_dir",
                                    str(out / "stage1"), "--max_steps", str(s.stage1_steps), "--learning_rate", "2e-3"])
    return run_stage("finetune", [*common, "--data_path", str(data.llava["instruct"]), "--output_dir", str(out / "stage2"),
                                  "--pretrain_mm_mlp_adapter", str(stage1 / "mm_projector.safetensors"),
                                  "--max_steps", str(s.stage2_steps), "--learning_rate", "3e-3",
                                  "--warmup_ratio", "0.05"])


def train_all(towers: dict[str, dict], llm: Path, data: DemoData, out: Path, s: DemoSettings,
              progress: bool = True) -> dict[str, tuple[Path, float]]:
    """:func:`train_llava` for every tower (name -> its pretraining record: ``model_dir``, ``seed``,
    which is also the LLaVA training seed) on ``s.workers`` processes, into ``out/<name>`` (log:
    ``train.log`` there). Returns name -> (HF LLaVA folder, wall seconds)."""
    jobs = [Job(name, train_llava, (f"clips:{run['model_dir']}", llm, data, out / name, s, run["seed"]),
                out / name / "train.log", s.stage1_steps + s.stage2_steps) for name, run in towers.items()]
    return run_jobs(jobs, s.workers, "LLaVA stage 1 + 2", progress)


@contextlib.contextmanager
def _offline_env(cache: Path) -> Iterator[None]:
    """Environment of the lmms-eval subprocess: offline, its datasets cache under the demo folder,
    one OpenMP thread (tiny models on 2 shared cores run much faster without thread spinning)."""
    values = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def lmms_accuracy(models: dict[str, Path], tasks_dir: Path, out: Path) -> dict[str, dict]:
    """Evaluate every HF LLaVA folder of ``models`` (name -> folder) on the held-out local tasks in
    ``tasks_dir`` with lmms-eval (``--model clips_llava``), in ONE lmms-eval process (a ``--config``
    list, so its start-up is paid once), writing under ``out``. Returns ``{name: {"accuracy": {task:
    percent}, "results": results JSON path}}``, each run's results found by its ``pretrained=``."""
    import yaml

    from eval.lmms import runner

    runner.install_tasks(tasks_dir)
    runs = [{"model": runner.MODEL_NAME, "model_args": f"pretrained={folder},dtype=float32", "tasks": ",".join(TASKS),
             "include_path": str(tasks_dir), "batch_size": 16, "device": "cpu", "log_samples": True}
            for folder in models.values()]
    config = out / "lmms_eval_runs.yaml"
    atomic_write_text(config, yaml.safe_dump(runs, sort_keys=False))
    with _offline_env(out / "hf_datasets"):
        runner.run_lmms_eval(["--config", str(config), "--output_path", str(out)])
    found = {}
    for path in sorted(out.rglob("*_results.json"), key=lambda p: p.stat().st_mtime):  # newest wins
        data = json.loads(path.read_text())
        found[data["config"]["model_args"].split(",")[0].removeprefix("pretrained=")] = (path, data["results"])
    report = {}
    for name, folder in models.items():
        if str(folder) not in found:
            raise runner.LmmsEvalError(f"lmms-eval wrote no results for {folder} under {out}")
        path, results = found[str(folder)]
        report[name] = {"results": str(path),
                        "accuracy": {task: 100.0 * float(results[task][METRICS[task][0]]) for task in TASKS}}
    return report


def accuracy_by_kind(results: Path, tasks_dir: Path) -> dict[str, float]:
    """GQA-style accuracy per question kind (the records' ``types``: colour, shape, count,
    position), percent, from the per-sample log lmms-eval wrote beside ``results`` (its ``doc_id``
    is the record's line in ``tasks_dir/clips_gqa.jsonl``)."""
    from eval.lmms.taskdata import TASK_DATA_FILES

    records = [json.loads(line) for line in (tasks_dir / TASK_DATA_FILES["clips_gqa"]).read_text().splitlines()]
    path = max(results.parent.glob("*_samples_clips_gqa.jsonl"), key=lambda p: p.stat().st_mtime)
    hits: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        hits.setdefault(records[row["doc_id"]]["types"], []).append(float(row["exact_match"]))
    return {kind: 100.0 * sum(v) / len(v) for kind, v in sorted(hits.items())}


def question_counts(tasks_dir: Path) -> dict[str, int]:
    """Number of held-out questions per task data file."""
    from eval.lmms.taskdata import TASK_DATA_FILES

    return {task: len((tasks_dir / TASK_DATA_FILES[task]).read_text().splitlines()) for task in TASKS}
