"""``clips demo --quick`` end to end: it writes the report, the plot and metrics.json, and every
number in them is recomputed here from what the run saved (checkpoints, lmms-eval sample logs,
generator), not trusted. Effect sizes are not asserted: --quick is far too small for effects."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest
import torch
from PIL import Image

import clips_tower
from clips_cli.demo_pipeline import get_settings, run_demo
from clips_cli.demo_pipeline.pretraining import MODELS
from clips_cli.main import build_parser
from eval.data import load_retrieval_dataset
from pretrain.synthetic import generate_sample

pytestmark = pytest.mark.slow
SEED = 3


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("demo")
    returned = run_demo(out, get_settings("quick"), seed=SEED, progress=False)
    return {"out": out, "returned": returned, "metrics": json.loads((out / "metrics.json").read_text())}


def test_cli_parses_the_documented_flags():
    args = build_parser().parse_args(["demo", "--quick", "--out", "x", "--seed", "4", "--seeds", "2"])
    assert (args.quick, args.out, args.seed, args.seeds) == (True, "x", 4, 2)


def test_report_plot_and_metrics_are_written(demo):
    out, m = demo["out"], demo["metrics"]
    assert m["seed"] == SEED and m["settings"] == json.loads(json.dumps(demo["returned"]["settings"]))
    report = (out / "report.md").read_text()
    for label in MODELS:
        assert re.search(rf"^\| {re.escape(label)} \|( [\d.]+ \|){{5}}$", report, re.M), label
    assert "![retrieval R@1](retrieval_r1.png)" in report
    with Image.open(out / "retrieval_r1.png") as png:
        assert png.format == "PNG" and png.size[0] > 100
    assert set(m["stage_times_s"]) == {"generate data", "pretrain (4 recipes, same budget)", "zero-shot retrieval",
                                       "captioner examples", "LLaVA stage 1 + 2 per tower, lmms-eval", "report"}


def _brute_force_recall_at_1(model_dir: str, dataset_json) -> tuple[float, float]:
    """I->T and T->I R@1 (percent) from scratch: embed, argmax, compare owners."""
    model = clips_tower.load_model(model_dir).eval()
    tok = clips_tower.load_tokenizer(context_length=model.config.text.context_length)
    tf = clips_tower.image_transform(model.config, train=False)
    ds = load_retrieval_dataset(dataset_json)
    owners = torch.tensor([i for i, caps in enumerate(ds.captions) for _ in caps])
    with torch.no_grad():
        img = model.encode_image(torch.stack([tf(Image.open(ref.path).convert("RGB")) for ref in ds.images]),
                                 normalize=True)
        txt = model.encode_text(tok([c for caps in ds.captions for c in caps]), normalize=True)
    sim = img @ txt.T
    i2t = (owners[sim.argmax(1)] == torch.arange(len(img))).double().mean().item()
    t2i = (sim.argmax(0) == owners).double().mean().item()
    return 100 * i2t, 100 * t2i


def test_retrieval_numbers_match_a_recomputation_from_the_checkpoints(demo):
    m = demo["metrics"]
    ret = m["retrieval"]
    assert set(ret["per_seed"]) == set(MODELS)
    for label, runs in m["pretrain"].items():
        [run] = runs
        assert run["recipe"] == MODELS[label]
        [metrics] = ret["per_seed"][label]
        assert all(0 <= metrics[k] <= 100 for k in ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5", "mean_recall"))
        assert metrics["num_images"] == get_settings("quick").eval_images and metrics["num_captions"] == 5 * metrics["num_images"]
        i2t, t2i = _brute_force_recall_at_1(run["model_dir"], ret["dataset"])
        assert metrics["i2t_R@1"] == pytest.approx(i2t, abs=1e-6) and metrics["t2i_R@1"] == pytest.approx(t2i, abs=1e-6)
        assert ret["summary"][label]["i2t_R@1"]["mean"] == pytest.approx(metrics["i2t_R@1"])


def test_caption_examples_show_the_true_captions(demo):
    rows = demo["metrics"]["captions"]
    assert len(rows) == get_settings("quick").caption_examples
    for i, row in enumerate(rows):
        sample = generate_sample(i, SEED + 1000)  # the held-out retrieval scenes
        assert (row["key"], row["web"], row["synthetic"]) == (sample.key, sample.web, sample.synthetic)
        assert isinstance(row["generated"], str)


def _normalise(text: str) -> str:
    return text.lower().translate(str.maketrans("", "", string.punctuation)).strip()


def test_llava_accuracies_are_recomputed_from_lmms_eval_samples(demo):
    out, m = demo["out"], demo["metrics"]
    tasks = out / "data" / "lmms_tasks"
    gqa_docs = [json.loads(line) for line in (tasks / "clips_gqa.jsonl").read_text().splitlines()]
    pope_docs = [json.loads(line) for line in (tasks / "clips_pope.jsonl").read_text().splitlines()]
    assert m["llava_eval_questions"] == {"clips_pope": len(pope_docs), "clips_gqa": len(gqa_docs)}
    assert {d["answer"] for d in pope_docs} == {"yes", "no"}
    for label, result in m["llava"].items():
        assert result["scorer"] == "lmms-eval"
        slug = MODELS[label]
        assert (out / "llava" / slug / "stage1" / "mm_projector.safetensors").is_file()
        assert (out / "llava" / slug / "stage2" / "config.json").is_file()
        logs = Path(result["results"]).parent
        assert json.loads(Path(result["results"]).read_text())["config"]["model_args"].startswith(
            f"pretrained={out / 'llava' / slug / 'stage2'},")
        [gqa_log] = logs.glob("*_samples_clips_gqa.jsonl")
        rows = [json.loads(line) for line in gqa_log.read_text().splitlines()]
        assert sorted(r["doc_id"] for r in rows) == list(range(len(gqa_docs)))
        # GQA-style exact match recomputed from the logged responses against our own answers.
        hits = [_normalise(r["filtered_resps"] if isinstance(r["filtered_resps"], str) else r["filtered_resps"][0])
                == _normalise(gqa_docs[r["doc_id"]]["answer"]) for r in rows]
        assert result["accuracy"]["clips_gqa"] == pytest.approx(100 * sum(hits) / len(hits))
        [pope_log] = logs.glob("*_samples_clips_pope.jsonl")
        rows = [json.loads(line) for line in pope_log.read_text().splitlines()]
        correct = [r["pope_accuracy"]["prediction"] == pope_docs[r["doc_id"]]["answer"] for r in rows]
        assert result["accuracy"]["clips_pope"] == pytest.approx(100 * sum(correct) / len(correct))
        assert all(0 <= v <= 100 for v in result["gqa_by_kind"].values())
