"""lmms-eval's OWN tasks (``pope``, ``mme``, ``gqa``: the YAMLs and utils of the installed wheel)
on local datasets in their HF layout (``clips eval lmms-data --layout hf``), offline, through both
lmms-eval's built-in ``llava_hf`` model and this project's ``clips_llava``, on a tiny assembled
CLIPS-LLaVA folder briefly trained on other generated scenes (so that answers are words, some
right). Each reported metric is recomputed here from the logged answers, and the two models must
give the same answers (same folder, same prompt, greedy)."""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from eval.lmms import runner
from eval.lmms.hf_layout import HF_TASKS, HFLayoutError, check_hf_datasets, write_hf_datasets
from eval.lmms.taskdata import write_task_data
from helpers.lmms_tasks import train_tiny_llava

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

TASKS = ("pope", "mme", "gqa")
MODELS = ("llava_hf", "clips_llava")
# The metric keys lmms-eval reports for each task (``<metric>,<filter>``).
METRICS = {
    "pope": ["pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio"],
    "mme": ["mme_perception_score"],
    "gqa": ["exact_match"],
}


def _env(root: Path) -> dict[str, str]:
    # Offline; one thread (tiny models on a shared machine are much faster without OpenMP spinning).
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "HF_DATASETS_CACHE": str(root / "hf_datasets"), "HF_HOME": str(root / "hf_home")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    from llava_integration.assemble import assemble_llava
    from llava_integration.tiny_llm import build_tiny_llm

    root = tmp_path_factory.mktemp("lmms_hf")
    base = assemble_llava("clips:clips-tiny", build_tiny_llm(root / "llm"), root / "base")
    write_task_data(root / "train", num_scenes=150, seed=1, max_objects=1)
    runner.install_tasks(root / "train")
    model = train_tiny_llava(base, root / "train", root / "train", root / "model")
    data = root / "data"
    write_hf_datasets(data, num_scenes=3, seed=0)
    out = {}
    for name in MODELS:
        # The CLI from another working directory, with a relative output path: the runner must
        # make paths absolute before running lmms-eval inside the data folder.
        cmd = [sys.executable, "-m", "clips_cli.main", "eval", "lmms", "--data-dir", str(data), "--model", name,
               "--model_args", f"pretrained={model}", "--tasks", ",".join(TASKS), "--batch_size", "1",
               "--output_path", f"out_{name}", "--log_samples"]
        proc = subprocess.run(cmd, env=_env(root), cwd=root, capture_output=True, text=True, timeout=900)
        found = sorted((root / f"out_{name}").rglob("*_results.json"))
        assert proc.returncode == 0 and len(found) == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
        samples = {}
        for task in TASKS:
            [path] = (root / f"out_{name}").rglob(f"*_samples_{task}.jsonl")
            samples[task] = sorted((json.loads(line) for line in path.read_text().splitlines()),
                                   key=lambda r: r["doc_id"])
        out[name] = {"results": json.loads(found[0].read_text())["results"], "samples": samples, "log": proc.stdout}
    return {"root": root, "data": data, "model": model, **out}


def _answer(sample: dict) -> str:
    resp = sample["filtered_resps"]
    return resp if isinstance(resp, str) else resp[0]


@pytest.mark.parametrize("name", MODELS)
def test_lmms_evals_own_tasks_report_their_metrics(runs, name):
    results = runs[name]["results"]
    for task in TASKS:
        assert {f"{m},none" for m in METRICS[task]} <= set(results[task]), (task, sorted(results[task]))
    # Every doc of the local datasets was evaluated: POPE and MME 2 per scene, GQA 1.
    assert [len(runs[name]["samples"][t]) for t in TASKS] == [6, 6, 3]
    assert {s["target"] for s in runs[name]["samples"]["pope"]} == {"yes", "no"}
    assert {s["target"] for s in runs[name]["samples"]["mme"]} == {"Yes", "No"}


@pytest.mark.parametrize("name", MODELS)
def test_metrics_recomputed_from_the_logged_answers(runs, name):
    """POPE, MME and GQA scores as their definitions give them on the logged answers."""
    results, samples = runs[name]["results"], runs[name]["samples"]
    pope = [(_answer(s).lower().strip(), s["target"]) for s in samples["pope"]]
    tp = sum(p == g == "yes" for p, g in pope)
    fp = sum(p == "yes" and g == "no" for p, g in pope)
    fn = sum(p == "no" and g == "yes" for p, g in pope)
    assert results["pope"]["pope_accuracy,none"] == pytest.approx(sum(p == g for p, g in pope) / len(pope))
    assert results["pope"]["pope_precision,none"] == pytest.approx(tp / (tp + fp) if tp + fp else 0)
    assert results["pope"]["pope_recall,none"] == pytest.approx(tp / (tp + fn) if tp + fn else 0)
    assert results["pope"]["pope_yes_ratio,none"] == pytest.approx(0.5)  # lmms-eval's pope: share of ground-truth yes
    # MME: per image (question_id) accuracy + accuracy+ (both right), x100, averaged, summed over categories.
    per_image = defaultdict(list)
    for s in samples["mme"]:
        pred = _answer(s).lower().strip().replace(".", "")
        label = pred if pred in ("yes", "no") else ("yes" if "yes" in pred[:4] else "no" if "no" in pred[:4] else "other")
        if len(pred) == 1:
            label = {"y": "yes", "n": "no"}.get(pred, "other")
        per_image[s["mme_perception_score"]["question_id"]].append(label == s["target"].lower())
    assert all(len(v) == 2 for v in per_image.values())
    score = sum(100 * sum(v) / 2 + 100 * all(v) for v in per_image.values()) / len(per_image)
    assert results["mme"]["mme_perception_score,none"] == pytest.approx(score)
    drop = str.maketrans("", "", string.punctuation)  # the task's exact_match: ignore_case, ignore_punctuation
    gqa = [_answer(s).lower().translate(drop) == s["target"].lower().translate(drop) for s in samples["gqa"]]
    assert results["gqa"]["exact_match,none"] == pytest.approx(sum(gqa) / len(gqa))


def test_llava_hf_and_clips_llava_give_the_same_answers(runs):
    """Same folder, same prompt (the folder's chat template, BOS once), greedy: same answers. A
    template that wrote BOS itself would give llava_hf two BOS tokens and other answers."""
    for task in TASKS:
        assert [_answer(s).strip() for s in runs["llava_hf"]["samples"][task]] == \
               [_answer(s).strip() for s in runs["clips_llava"]["samples"][task]], task


def test_missing_column_is_an_error_naming_task_file_and_column(tmp_path):
    import pyarrow.parquet as pq

    write_hf_datasets(tmp_path, tasks=["pope", "mme"], num_scenes=1)
    assert check_hf_datasets(tmp_path, ["pope", "mme", "gqa"]) == ["pope", "mme"]  # no GQA repo: from the HF cache
    path = tmp_path / HF_TASKS["pope"].repo / HF_TASKS["pope"].splits[0].file
    table = pq.read_table(path)
    pq.write_table(table.drop(["answer"]).replace_schema_metadata(table.schema.metadata), path)
    with pytest.raises(HFLayoutError, match=r"task pope: .*test-00000-of-00001.parquet has no column 'answer'"):
        check_hf_datasets(tmp_path, ["pope"])
    # An image column of plain bytes (not an HF Image feature) is refused too.
    path = tmp_path / HF_TASKS["mme"].repo / HF_TASKS["mme"].splits[0].file
    pq.write_table(pq.read_table(path).replace_schema_metadata({}), path)
    with pytest.raises(HFLayoutError, match=r"task mme: .*column 'image' is not an HF datasets Image feature"):
        check_hf_datasets(tmp_path, ["mme"])


def test_clips_eval_lmms_reports_the_bad_dataset_before_running(tmp_path, capsys):
    from clips_cli.main import main

    import pyarrow.parquet as pq

    write_hf_datasets(tmp_path, tasks=["gqa"], num_scenes=1)
    path = tmp_path / HF_TASKS["gqa"].repo / HF_TASKS["gqa"].splits[0].file
    table = pq.read_table(path)
    pq.write_table(table.drop(["imageId"]).replace_schema_metadata(table.schema.metadata), path)
    assert main(["eval", "lmms", "--data-dir", str(tmp_path), "--model_args", "pretrained=x", "--tasks", "gqa"]) == 1
    err = capsys.readouterr().err
    assert "task gqa:" in err and "testdev_balanced_instructions" in err and "no column 'imageId'" in err


def test_argv_for_llava_hf_in_another_working_directory(tmp_path, monkeypatch):
    """llava_hf gets a real device and device_map (its defaults fail on transformers 5 / without
    CUDA) unless given; relative paths become absolute because lmms-eval runs in the data folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    argv = runner.lmms_eval_argv(["--model", "llava_hf", "--model_args", "pretrained=model,dtype=float32",
                                  "--device", "cpu", "--tasks", "pope", "--output_path", "out"], absolute=True)
    assert argv[argv.index("--model_args") + 1] == f"pretrained={tmp_path / 'model'},dtype=float32,device_map=cpu"
    assert argv[argv.index("--output_path") + 1] == str(tmp_path / "out")
    argv = runner.lmms_eval_argv(["--model", "llava_hf", "--model_args", "pretrained=hub/id,device_map=auto",
                                  "--device", "cuda:1"])
    assert argv[argv.index("--model_args") + 1] == "pretrained=hub/id,device_map=auto"  # the user's choice stays
    argv = runner.lmms_eval_argv(["--model_args=pretrained=model"])  # clips_llava: unchanged
    assert argv == ["--model_args=pretrained=model", "--model", "clips_llava", "--output_path", runner.DEFAULT_OUTPUT]


def test_a_task_file_named_like_results_is_not_a_finished_run(tmp_path):
    """MMBench writes ``submissions/mmbench_en_dev_results.json`` before its aggregation can fail:
    only lmms-eval's own results file (with a ``results`` table) counts."""
    (tmp_path / "submissions").mkdir()
    (tmp_path / "submissions" / "mmbench_en_dev_results.json").write_text('{"overall_acc": 0.0}')
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "20260101_000000_results.json").write_text('{"results": {}}')
    assert runner._results_files(tmp_path) == {tmp_path / "m" / "20260101_000000_results.json"}
