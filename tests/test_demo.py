"""``clips demo --quick`` end to end: it writes the report, the plot and metrics.json, and every
number in them is recomputed here from what the run saved (checkpoints, lmms-eval sample logs,
generator), not trusted. Effect sizes are not asserted: --quick is far too small for effects."""

from __future__ import annotations

import json
import re
import statistics
import string
from pathlib import Path

import pytest
import torch
from PIL import Image

import clips_tower
from clips_cli.demo_pipeline import get_settings, run_demo
from clips_cli.demo_pipeline.pretraining import CLIPS_MODEL, MODELS
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
    args = build_parser().parse_args(["demo", "--quick", "--out", "x", "--seed", "4", "--seeds", "2", "--llava-seeds", "2"])
    assert (args.quick, args.out, args.seed, args.seeds, args.llava_seeds) == (True, "x", 4, 2, 2)


def test_llava_seeds_cannot_exceed_the_pretrained_seeds():
    assert get_settings("default", llava_seeds=3).retrieval_seeds == 3  # three seeds by default
    with pytest.raises(ValueError, match=r"llava_seeds must be between 1 and retrieval_seeds \(3\).*got 4"):
        get_settings("default", llava_seeds=4)


def test_report_plot_and_metrics_are_written(demo):
    out, m = demo["out"], demo["metrics"]
    assert m["seed"] == SEED and m["settings"] == json.loads(json.dumps(demo["returned"]["settings"]))
    report = (out / "report.md").read_text()
    for label in MODELS:
        # 5 metrics as mean ± std over the two seeds, then the mean recall of each seed.
        assert re.search(rf"^\| {re.escape(label)} \|( [\d.]+ ± [\d.]+ \|){{5}} [\d.]+, [\d.]+ \|$", report, re.M), label
    assert "![retrieval R@1](retrieval_r1.png)" in report
    # The paper's claims beside this run's numbers, each with the command that reproduces it.
    partial = m["retrieval"]["summary"]["CLIP (sub-captions)"]["mean_recall"]
    for claim in ("(i) sub-captions > full synthetic captions", "(ii) CLIPS > sub-caption CLIP",
                  "(iii) CLIPS tower > CLIP tower in LLaVA"):
        [row] = [line for line in report.splitlines() if line.startswith(f"| {claim} |")]
        assert row.endswith(f"| `clips demo --quick --seed {SEED}` |"), row
    assert f"{partial['mean']:.1f} ± {partial['std']:.1f} vs" in report
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
    seeds = get_settings("quick").retrieval_seeds
    for label, runs in m["pretrain"].items():
        assert [r["seed"] for r in runs] == [SEED + k for k in range(seeds)] and len(ret["per_seed"][label]) == seeds
        for run, metrics in zip(runs, ret["per_seed"][label]):
            assert run["recipe"] == MODELS[label] and run["model_dir"].startswith(str(demo["out"] / "runs"))
            assert all(0 <= metrics[k] <= 100 for k in ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5", "mean_recall"))
            assert metrics["num_images"] == get_settings("quick").eval_images
            assert metrics["num_captions"] == 5 * metrics["num_images"]
            i2t, t2i = _brute_force_recall_at_1(run["model_dir"], ret["dataset"])
            assert metrics["i2t_R@1"] == pytest.approx(i2t, abs=1e-6) and metrics["t2i_R@1"] == pytest.approx(t2i, abs=1e-6)
        values = [r["i2t_R@1"] for r in ret["per_seed"][label]]
        assert ret["summary"][label]["i2t_R@1"]["mean"] == pytest.approx(statistics.fmean(values))
        assert ret["summary"][label]["i2t_R@1"]["std"] == pytest.approx(statistics.stdev(values))


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
    seeds = get_settings("quick").llava_seeds
    for label, results in m["llava"].items():
        assert [r["tower_seed"] for r in results] == [SEED + k for k in range(seeds)]
        for result in results:
            _check_llava_run(out, label, result, gqa_docs, pope_docs)
    report = (out / "report.md").read_text()
    assert re.search(rf"^\| {re.escape(CLIPS_MODEL)}, seeds {SEED}, {SEED + 1} \|( [\d.]+ ± [\d.]+ \|)+$", report, re.M)
    assert "gap per tower seed" in report


def _check_llava_run(out: Path, label: str, result: dict, gqa_docs: list[dict], pope_docs: list[dict]) -> None:
    """One LLaVA run: its folders exist and its accuracies equal a recount of lmms-eval's sample logs."""
    assert result["scorer"] == "lmms-eval"
    slug = f"{MODELS[label]}-seed{result['tower_seed']}"
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
