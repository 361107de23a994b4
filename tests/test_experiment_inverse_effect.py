"""``clips experiment inverse-effect --quick`` end to end: every cell (4 strategies x 3 budgets +
full captions, 2 seeds) is trained with the encoder length of its budget, the table, plot and
findings are written, and every reported number is recomputed from the saved checkpoints."""

from __future__ import annotations

import json
import statistics

import pytest
from PIL import Image

import clips_tower
from clips_cli.demo_pipeline.retrieval import evaluate_checkpoint
from clips_cli.experiments.inverse_effect import (FULL, PAPER_FINDINGS, SPECIAL_POSITIONS, STRATEGIES, cells,
                                                  get_settings, run_inverse_effect)
from clips_cli.main import build_parser

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("inverse_effect")
    s = get_settings("quick")
    returned = run_inverse_effect(out, s, seed=2, progress=False)
    return {"out": out, "settings": s, "returned": returned, "metrics": json.loads((out / "metrics.json").read_text())}


def test_cli_parses_the_documented_flags():
    args = build_parser().parse_args(["experiment", "inverse-effect", "--quick", "--out", "x", "--seed", "3", "--seeds", "2"])
    assert (args.experiment, args.quick, args.out, args.seed, args.seeds) == ("inverse-effect", True, "x", 3, 2)


def test_unknown_preset_and_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="unknown inverse-effect preset 'big'"):
        get_settings("big")
    with pytest.raises(ValueError, match="budgets >= 1"):
        get_settings("quick", budgets=(0, 4))


def test_every_cell_trained_with_its_budget_and_seeds(experiment):
    s, runs = experiment["settings"], experiment["metrics"]["runs"]
    assert len(cells(s)) == len(STRATEGIES) * 3 + 1
    assert sorted((r["strategy"], r["tokens"], r["seed"]) for r in runs) == sorted(
        (label, k, seed) for label, k in cells(s) for seed in (2, 3))
    for r in runs:
        model = clips_tower.load_model(r["model_dir"])
        assert model.config.text.context_length == r["tokens"] + SPECIAL_POSITIONS
        log = (experiment["out"] / "runs").glob(f"*-k{r['tokens']}-seed{r['seed']}")
        assert any(json.loads(line)["step"] == s.pretrain_steps
                   for d in log for line in (d / "metrics.jsonl").read_text().splitlines())


def test_reported_numbers_are_recomputed_from_checkpoints(experiment):
    metrics = experiment["metrics"]
    data = metrics["retrieval_dataset"]
    for r in metrics["runs"][:3]:  # evaluation is deterministic: the same numbers again
        assert evaluate_checkpoint(r["model_dir"], __import__("pathlib").Path(data)) == pytest.approx(r["retrieval"])
    by_cell: dict = {}
    for r in metrics["runs"]:
        by_cell.setdefault(r["strategy"], {}).setdefault(str(r["tokens"]), []).append(r["retrieval"]["mean_recall"])
    for label, by_k in by_cell.items():
        for k, values in by_k.items():
            cell = metrics["summary"][label][k]
            assert cell["mean"] == pytest.approx(statistics.fmean(values))
            assert cell["std"] == pytest.approx(statistics.stdev(values))


def test_report_has_table_plot_and_both_findings(experiment):
    out, s = experiment["out"], experiment["settings"]
    text = (out / "report.md").read_text()
    for label in [*STRATEGIES, FULL]:
        assert f"| {label} |" in text
    for finding in [*PAPER_FINDINGS, *experiment["metrics"]["findings"]]:
        assert finding in text
    summary = experiment["metrics"]["summary"]
    sub = summary["sub-caption"][str(s.budgets[0])]
    assert f"{sub['mean']:.1f} ± {sub['std']:.1f}" in text
    with Image.open(out / "inverse_effect.png") as img:
        assert img.size[0] > 300 and img.size[1] > 200
