"""The demo report's reading of the retrieval table: each claim is judged against twice the
seed-to-seed std, and the verdict on the best row follows the numbers (tables built by hand here)."""

from __future__ import annotations

from clips_cli.demo_pipeline.pretraining import CLIPS_MODEL, MODELS, WEB_BASELINE
from clips_cli.demo_pipeline.report import FULL, PARTIAL, retrieval_reading
from clips_cli.demo_pipeline.retrieval import retrieval_table, summarize


def _metrics(per_seed_mean_recall: dict[str, list[float]]) -> dict:
    runs = {label: [{k: v for k in ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5", "mean_recall")} for v in values]
            for label, values in per_seed_mean_recall.items()}
    return {"retrieval": {"summary": summarize(runs)}}


def test_clear_clips_win_is_read_as_the_papers_order():
    m = _metrics({WEB_BASELINE: [40, 42], FULL: [30, 31], PARTIAL: [50, 52], CLIPS_MODEL: [60, 61]})
    lines = retrieval_reading(m)
    assert lines[0].startswith(f"- {PARTIAL} vs {FULL}: 51.0 vs 30.5 (+20.5 points; larger than twice")
    assert "larger than twice the seed-to-seed std (1.4)" in lines[2]
    assert lines[-1] == f"- Best mean recall: {CLIPS_MODEL}, clear of the runner-up ({PARTIAL}); as in the paper."


def test_a_tie_within_the_noise_is_not_called_a_win():
    m = _metrics({WEB_BASELINE: [40, 42], FULL: [30, 31], PARTIAL: [58, 63], CLIPS_MODEL: [56, 64]})
    lines = retrieval_reading(m)
    assert lines[2].endswith("60.0 vs 60.5 (-0.5 points; within twice the seed-to-seed std (5.7)).")
    assert "tied within the noise" in lines[-1] and "does NOT show at this scale" in lines[-1]


def test_one_seed_says_the_noise_is_not_measured():
    m = _metrics({label: [10.0 * i] for i, label in enumerate(MODELS, 1)})
    lines = retrieval_reading(m)
    assert all("one seed only" in line for line in lines[:3]) and "tied within the noise" in lines[-1]


def test_table_shows_mean_std_and_every_seed():
    m = _metrics({WEB_BASELINE: [40, 42], FULL: [30, 31], PARTIAL: [50, 52], CLIPS_MODEL: [60, 61]})
    table = retrieval_table(m["retrieval"]["summary"])
    assert f"| {WEB_BASELINE} | 41.0 ± 1.4 | 41.0 ± 1.4 | 41.0 ± 1.4 | 41.0 ± 1.4 | 41.0 ± 1.4 | 40.0, 42.0 |" in table
