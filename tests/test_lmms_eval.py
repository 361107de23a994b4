"""End to end: lmms-eval's own CLI (``python -m lmms_eval --model clips_llava``) in a subprocess
evaluates a tiny LLaVA, briefly trained on generated task data, on every local task; each metric
in the results JSON is recomputed here from the model's own answers / log-probabilities obtained
with plain transformers calls."""

from __future__ import annotations

import json
import os
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest

from eval.lmms import runner
from eval.lmms.taskdata import TASK_DATA_FILES, decode_image, write_task_data
from pretrain.synthetic import CLEAN_WORLD
from eval.lmms.tasks import mmbench, pope
from helpers.hf_llava import hf_answer_nll, hf_generate
from helpers.lmms_tasks import read_docs, task_config, task_prompt, train_tiny_llava

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

def _env(root: Path) -> dict[str, str]:
    # One thread: tiny models on a shared 2-core machine are ~30x faster without OpenMP spinning.
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "HF_DATASETS_CACHE": str(root / "hf_datasets")}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    from llava_integration.assemble import assemble_llava
    from llava_integration.tiny_llm import build_tiny_llm

    root = tmp_path_factory.mktemp("lmms_eval")
    base = assemble_llava("clips:clips-tiny", build_tiny_llm(root / "llm"), root / "base")
    data = root / "data"
    # Label-free scenes: the tiny model learns to read the one object within the test's step budget.
    write_task_data(data, num_scenes=12, seed=0, world=CLEAN_WORLD)
    runner.install_tasks(data)
    write_task_data(root / "train", num_scenes=150, seed=1, max_objects=1, world=CLEAN_WORLD)
    model_dir = train_tiny_llava(base, root / "train", data, root / "model")
    out = root / "out"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "clips_llava", "--model_args", f"pretrained={model_dir},dtype=float32",
           "--tasks", "clips_local", "--include_path", str(data), "--batch_size", "4", "--device", "cpu",
           "--output_path", str(out), "--log_samples"]
    proc = subprocess.run(cmd, env=_env(root), capture_output=True, text=True, timeout=600)
    found = sorted(out.rglob("*_results.json"))
    assert proc.returncode == 0 and len(found) == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    samples = {}
    for task in TASK_DATA_FILES:
        [path] = out.rglob(f"*_samples_{task}.jsonl")
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        samples[task] = sorted(rows, key=lambda r: r["doc_id"])
    return {"root": root, "data": data, "model": model_dir, "stdout": proc.stdout,
            "results": json.loads(found[0].read_text())["results"], "samples": samples}


@pytest.fixture(scope="module")
def reference(run):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(run["model"]).eval(), AutoProcessor.from_pretrained(run["model"])


def _answers(run, reference, task: str) -> list[str]:
    """The model's greedy answers to the task's docs, unbatched, as lmms-eval strips them."""
    config = task_config(run["data"], task)
    max_new_tokens = config["generation_kwargs"]["max_new_tokens"]
    return [hf_generate(*reference, decode_image(d["image"]), task_prompt(config, d), max_new_tokens).strip()
            for d in read_docs(run["data"], task)]


def _metric(run, task: str, name: str) -> float:
    return run["results"][task][f"{name},none"]


def test_results_table_lists_every_local_task(run):
    for task, metric in [("clips_pope", "pope_f1_score"), ("clips_gqa", "exact_match"),
                         ("clips_mmbench", "mmbench_circular_accuracy"), ("clips_mmbench_mcppl", "acc")]:
        assert any(line.startswith(f"|{task}") and f"|{metric}" in line for line in run["stdout"].splitlines()), task
    assert {t: len(s) for t, s in run["samples"].items()} == {
        "clips_pope": 24, "clips_gqa": 12, "clips_mmbench": 48, "clips_mmbench_mcppl": 48}


def test_pope_metrics_from_the_models_answers(run, reference):
    answers = _answers(run, reference, "clips_pope")
    assert [s["filtered_resps"] for s in run["samples"]["clips_pope"]] == answers
    assert len(set(answers)) > 1  # the trained model does not answer constantly
    truth = [d["answer"] == "yes" for d in read_docs(run["data"], "clips_pope")]
    said_yes = [pope.normalise_answer(a) == "yes" for a in answers]
    tp = sum(p and t for p, t in zip(said_yes, truth))
    fp = sum(p and not t for p, t in zip(said_yes, truth))
    fn = sum(t and not p for p, t in zip(said_yes, truth))
    precision, recall = tp / (tp + fp) if tp + fp else 0.0, tp / (tp + fn) if tp + fn else 0.0
    assert _metric(run, "clips_pope", "pope_accuracy") == pytest.approx(sum(p == t for p, t in zip(said_yes, truth)) / 24)
    assert _metric(run, "clips_pope", "pope_precision") == pytest.approx(precision)
    assert _metric(run, "clips_pope", "pope_recall") == pytest.approx(recall)
    assert _metric(run, "clips_pope", "pope_f1_score") == pytest.approx(
        2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    assert _metric(run, "clips_pope", "pope_yes_ratio") == pytest.approx(sum(said_yes) / 24)


def test_gqa_exact_match_from_the_models_answers(run, reference):
    answers = _answers(run, reference, "clips_gqa")
    assert [s["filtered_resps"] for s in run["samples"]["clips_gqa"]] == answers
    assert len(set(answers)) > 1
    norm = lambda s: s.lower().translate(str.maketrans("", "", string.punctuation))  # noqa: E731
    golds = [d["answer"] for d in read_docs(run["data"], "clips_gqa")]
    assert _metric(run, "clips_gqa", "exact_match") == pytest.approx(
        sum(norm(a) == norm(g) for a, g in zip(answers, golds)) / len(golds))


def test_mmbench_accuracies_from_the_models_answers(run, reference):
    answers = _answers(run, reference, "clips_mmbench")
    assert [s["filtered_resps"] for s in run["samples"]["clips_mmbench"]] == answers
    docs = read_docs(run["data"], "clips_mmbench")
    right = [mmbench.extract_choice(a, mmbench.options(d)) == d["answer"] for a, d in zip(answers, docs)]
    groups: dict[int, list[bool]] = {}
    for d, r in zip(docs, right):
        groups.setdefault(d["index"] % 1_000_000, []).append(r)
    assert _metric(run, "clips_mmbench", "mmbench_accuracy") == pytest.approx(sum(right) / len(right))
    assert _metric(run, "clips_mmbench", "mmbench_circular_accuracy") == pytest.approx(
        sum(all(g) for g in groups.values()) / len(groups))


def test_loglikelihood_ranking_equals_direct_answer_log_probs(run, reference):
    """clips_mmbench_mcppl: each option letter's -log P from lmms-eval equals the model's own loss on
    that answer, so the chosen option (argmin) and the accuracy are the direct ones."""
    config = task_config(run["data"], "clips_mmbench_mcppl")
    hits = []
    for d, sample in zip(read_docs(run["data"], "clips_mmbench"), run["samples"]["clips_mmbench_mcppl"]):
        letters = mmbench.doc_to_choice(d)
        direct = [hf_answer_nll(*reference, decode_image(d["image"]), task_prompt(config, d), " " + c) for c in letters]
        logged = [(float(nll), greedy == "True") for nll, greedy in sample["filtered_resps"]]
        assert [nll for nll, _ in logged] == pytest.approx([nll for nll, _ in direct], rel=1e-4, abs=1e-4)
        assert [g for _, g in logged] == [g for _, g in direct]
        best = min(range(len(letters)), key=lambda k: direct[k][0])
        assert best == min(range(len(letters)), key=lambda k: logged[k][0])
        hits.append(letters[best] == d["answer"])
    assert _metric(run, "clips_mmbench_mcppl", "acc") == pytest.approx(sum(hits) / len(hits))


def test_clips_eval_lmms_fails_loudly_on_a_generation_error(run, tmp_path):
    """A record whose image does not decode stops the run: lmms-eval prints the adapter's error (it
    exits 0 itself) and ``clips eval lmms`` exits 1 instead of reporting a score."""
    data = tmp_path / "data"
    data.mkdir()
    docs = read_docs(run["data"], "clips_gqa")[:3]
    docs[1]["image"] = "bm90IGFuIGltYWdl"
    (data / "clips_gqa.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    cmd = [sys.executable, "-m", "clips_cli.main", "eval", "lmms", "--data-dir", str(data), "--model_args",
           f"pretrained={run['model']}", "--tasks", "clips_gqa", "--device", "cpu", "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=_env(run["root"]), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "record question_id='00001': 'image' is not a base64-encoded image" in proc.stdout + proc.stderr
    assert "clips eval lmms: error: lmms-eval exited with status 0 and wrote no results" in proc.stderr
    assert not list((tmp_path / "out").rglob("*_results.json"))


@pytest.mark.distributed
def test_two_processes_reproduce_the_single_process_results(run, tmp_path):
    """torchrun with 2 CPU processes: lmms-eval shards the requests by rank (the adapter takes its
    rank from accelerate) and gathers them; the metrics equal the single-process run's."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lmms_eval",
           "--model", "clips_llava", "--model_args", f"pretrained={run['model']}", "--tasks", "clips_pope,clips_mmbench_mcppl",
           "--include_path", str(run["data"]), "--batch_size", "4", "--output_path", str(out)]
    proc = subprocess.run(cmd, env=_env(run["root"]), capture_output=True, text=True, timeout=600)
    found = sorted(out.rglob("*_results.json"))
    assert proc.returncode == 0 and len(found) == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    log = proc.stdout + proc.stderr
    assert "Running on rank 1" in log
    assert re.search(r"clips_llava generate: 100%\|[^|]*\| 12/12", log)  # rank 0 answered half of the 24 POPE docs
    results = json.loads(found[0].read_text())["results"]
    for task in ("clips_pope", "clips_mmbench_mcppl"):
        single = {k: v for k, v in run["results"][task].items() if isinstance(v, float)}
        assert {k: results[task][k] for k in single} == pytest.approx(single)
