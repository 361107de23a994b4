"""``clips experiment inverse-effect``: the paper's token-reduction strategy figure at laptop scale.

CLIP is trained on the synthetic captions of the demo's world with each of the four strategies of
:mod:`pretrain.sampling` (sub-caption, block, random, truncation) at three text-token budgets K,
plus once on full captions, with the same steps, data and hyper-parameters (the demo's config and
model, :func:`clips_cli.demo_pipeline.pretraining.pretrain_model`). The budget is the text
encoder's length: a model trained at budget K has ``context_length = K + 3`` (``[bos]``, ``[eos]``,
``[CLS]``) and is evaluated at that length, as a model trained on K tokens is used. Every run is
scored by zero-shot retrieval on the held-out split (mean recall, mean +- std over seeds); the
report has one table, one line plot (``inverse_effect.png``) and the paper's qualitative findings
next to ours.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Mapping

from clips_tower.io import atomic_write_json, atomic_write_text

# Strategy label (as in the paper's figure) -> ``recipe.strategy`` name.
STRATEGIES: dict[str, str] = {"sub-caption": "subcaption", "block": "block", "random": "random", "truncation": "truncate"}
FULL = "full caption"
# [bos] + [eos] + the [CLS] slot: encoder positions that carry no caption piece.
SPECIAL_POSITIONS = 3
# What the paper reports (CLIPS, arXiv 2411.16828, token-reduction figure), printed beside ours.
PAPER_FINDINGS = (
    "sub-caption and block sampling are the best strategies",
    "every partial strategy beats training on full captions",
    "the best budget is usually 32 of 128 tokens (a quarter of the full length; 16 of 64 here)",
)


@dataclass(frozen=True)
class InverseEffectSettings:
    """Sizes of one experiment: ``train_samples`` pairs, ``eval_images`` held-out retrieval images,
    ``pretrain_steps`` x ``batch_size`` per run, ``seeds`` runs per cell, token ``budgets`` K of
    the partial strategies and ``full_tokens`` of the full-caption baseline, ``workers`` processes."""

    train_samples: int
    eval_images: int
    pretrain_steps: int
    batch_size: int
    seeds: int
    budgets: tuple[int, ...]
    full_tokens: int
    workers: int = 2
    image_size: int = 64


PRESETS: dict[str, InverseEffectSettings] = {
    "default": InverseEffectSettings(train_samples=4000, eval_images=300, pretrain_steps=600, batch_size=64, seeds=3,
                                     budgets=(8, 16, 32), full_tokens=64),
    "quick": InverseEffectSettings(train_samples=64, eval_images=16, pretrain_steps=3, batch_size=8, seeds=2,
                                   budgets=(4, 8, 16), full_tokens=32),
}


def get_settings(preset: str = "default", **overrides) -> InverseEffectSettings:
    """The preset ``preset`` with ``overrides`` (field -> value) applied."""
    try:
        settings = replace(PRESETS[preset], **overrides)
    except KeyError:
        raise ValueError(f"unknown inverse-effect preset {preset!r}; choose from {sorted(PRESETS)}") from None
    if settings.seeds < 1 or not settings.budgets or min(settings.budgets) < 1:
        raise ValueError(f"need seeds >= 1 and budgets >= 1, got seeds={settings.seeds} budgets={settings.budgets}")
    return settings


def _model_config(tokens: int, folder: Path) -> Path:
    """The demo model with a text encoder of ``tokens`` caption pieces, written to ``folder``."""
    from clips_cli.demo_pipeline.settings import MODEL_CONFIG

    config = json.loads(MODEL_CONFIG.read_text())
    config["name"] = f"{config['name']}-text{tokens}"
    config["text"]["context_length"] = tokens + SPECIAL_POSITIONS
    path = folder / f"{config['name']}.json"
    atomic_write_json(path, config)
    return path


def cells(s: InverseEffectSettings) -> list[tuple[str, int]]:
    """Every (strategy label, budget) trained: the four strategies x budgets, then the full caption."""
    return [(label, k) for label in STRATEGIES for k in s.budgets] + [(FULL, s.full_tokens)]


def run_inverse_effect(out: str | Path, s: InverseEffectSettings, seed: int = 0, progress: bool = True) -> dict:
    """Generate the data, train every cell of :func:`cells` with seeds ``seed .. seed + s.seeds - 1``
    on ``s.workers`` processes, score them, write ``report.md``, ``inverse_effect.png`` and
    ``metrics.json`` into ``out``; returns the metrics."""
    import time

    from clips_cli.demo_pipeline.data import HELD_OUT_RETRIEVAL
    from clips_cli.demo_pipeline.parallel import Job, run_jobs
    from clips_cli.demo_pipeline.pretraining import pretrain_model, steps_logged
    from clips_cli.demo_pipeline.retrieval import evaluate_checkpoint
    from pretrain.synthetic import write_retrieval_split, write_webdataset

    out = Path(out)
    t0 = time.perf_counter()
    shards = out / "data" / "pretrain"
    write_webdataset(shards, s.train_samples, seed=seed, shard_size=max(1, s.train_samples // 4), image_size=s.image_size)
    retrieval = write_retrieval_split(out / "data" / "retrieval", s.eval_images, seed=seed + HELD_OUT_RETRIEVAL,
                                      image_size=s.image_size)
    models = {k: _model_config(k, out / "models") for k in {*s.budgets, s.full_tokens}}
    jobs, where = [], {}
    # Longest texts first, so the workers finish together.
    for label, k in sorted(cells(s), key=lambda c: -c[1]):
        recipe = "clip-synthetic-full" if label == FULL else "clip-synthetic-partial"
        strategy = STRATEGIES.get(label, "full")
        for run_seed in range(seed, seed + s.seeds):
            run_dir = out / "runs" / f"{strategy}-k{k}-seed{run_seed}"
            name = f"{label} K={k} seed {run_seed}"
            where[name] = (label, k, run_seed)
            overrides = ("--model.name", str(models[k]), "--recipe.strategy", strategy, "--recipe.tokens", str(k))
            jobs.append(Job(name, pretrain_model, (recipe, shards, run_dir, s, run_seed, overrides), run_dir / "train.log",
                            s.pretrain_steps, lambda d=run_dir: steps_logged(d)))
    t_train = time.perf_counter()
    done = run_jobs(jobs, s.workers, "inverse-effect pretraining", progress)
    t_eval = time.perf_counter()
    scores: dict[str, dict[int, list[float]]] = {}
    runs = []
    for name, (summary, wall) in sorted(done.items(), key=lambda kv: where[kv[0]]):
        label, k, run_seed = where[name]
        metrics = evaluate_checkpoint(summary["checkpoint"] + "/model", retrieval)
        scores.setdefault(label, {}).setdefault(k, []).append(metrics["mean_recall"])
        runs.append({"strategy": label, "tokens": k, "seed": run_seed, "wall_time_s": wall, "retrieval": metrics,
                     "model_dir": summary["checkpoint"] + "/model"})
    table = summarize(scores)
    result = {"settings": asdict(s), "seed": seed, "runs": runs, "summary": table, "findings": findings(table, s),
              "paper_findings": list(PAPER_FINDINGS), "retrieval_dataset": str(retrieval),
              "stage_times_s": {"data": t_train - t0, "pretraining": t_eval - t_train,
                                "retrieval": time.perf_counter() - t_eval}}
    plot(table, s, out / "inverse_effect.png")
    atomic_write_text(out / "report.md", report(result))
    result["wall_time_s"] = time.perf_counter() - t0
    atomic_write_json(out / "metrics.json", result)
    print(f"report: {out / 'report.md'}\nplot: {out / 'inverse_effect.png'}", flush=True)
    return result


def summarize(scores: Mapping[str, Mapping[int, list[float]]]) -> dict[str, dict[int, dict]]:
    """strategy -> budget -> ``{"mean", "std", "values"}`` of the mean recall over seeds (std 0 for one)."""
    return {label: {k: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "values": v}
                    for k, v in sorted(by_k.items())} for label, by_k in scores.items()}


def findings(table: Mapping[str, Mapping[int, Mapping]], s: InverseEffectSettings) -> list[str]:
    """Our counterpart of each of :data:`PAPER_FINDINGS`, worded from the numbers (same order)."""
    partial = {label: table[label] for label in STRATEGIES}
    full = table[FULL][s.full_tokens]
    best = {label: max(by_k.values(), key=lambda m: m["mean"])["mean"] for label, by_k in partial.items()}
    ranking = sorted(best, key=best.get, reverse=True)
    noise = 2 * max(m["std"] for by_k in table.values() for m in by_k.values())
    beaten = [(label, k) for label, by_k in partial.items() for k, m in by_k.items() if m["mean"] > full["mean"]]
    beyond = [(label, k) for label, k in beaten if partial[label][k]["mean"] - full["mean"] > noise]
    n_cells = sum(len(by_k) for by_k in partial.values())
    best_k = {label: max(by_k, key=lambda k: by_k[k]["mean"]) for label, by_k in partial.items()}
    return [
        "best strategy at its best budget: " + " > ".join(f"{label} {best[label]:.1f}" for label in ranking)
        + f" (twice the largest seed std: {noise:.1f})",
        f"{len(beaten)} of {n_cells} partial cells beat the full caption ({full['mean']:.1f}), "
        f"{len(beyond)} by more than {noise:.1f}",
        "best budget per strategy: " + ", ".join(f"{label} K={k}" for label, k in best_k.items())
        + f" (full caption: {s.full_tokens} tokens)",
    ]


def table_markdown(table: Mapping[str, Mapping[int, Mapping]], s: InverseEffectSettings) -> str:
    """One row per strategy, one column per budget (mean recall, mean ± std over seeds)."""
    lines = ["| strategy | " + " | ".join(f"K={k}" for k in s.budgets) + f" | full ({s.full_tokens} tokens) |",
             "|---|" + "---:|" * (len(s.budgets) + 1)]
    fmt = lambda m: f"{m['mean']:.1f} ± {m['std']:.1f}"  # noqa: E731
    for label in STRATEGIES:
        lines.append(f"| {label} | " + " | ".join(fmt(table[label][k]) for k in s.budgets) + " | |")
    lines.append(f"| {FULL} | " + " | " * len(s.budgets) + fmt(table[FULL][s.full_tokens]) + " |")
    return "\n".join(lines) + "\n"


def report(result: Mapping) -> str:
    """``report.md``: settings, the table, the plot, the paper's findings beside ours."""
    s = InverseEffectSettings(**{**result["settings"], "budgets": tuple(result["settings"]["budgets"])})
    paper_vs_ours = "\n".join(f"| {p} | {o} |" for p, o in zip(PAPER_FINDINGS, result["findings"]))
    return (f"# Inverse effect: token-reduction strategies x text budgets\n\n"
            f"CLIP on the synthetic captions, {s.pretrain_steps} steps x batch {s.batch_size}, {s.train_samples} "
            f"training pairs, seeds {result['seed']}..{result['seed'] + s.seeds - 1}; zero-shot retrieval on "
            f"{s.eval_images} held-out images (mean recall = mean of R@1/5/10 both ways, %, mean ± std over seeds). "
            f"K = caption pieces the text encoder sees.\n\n"
            + table_markdown(result["summary"], s)
            + "\n![retrieval vs token budget](inverse_effect.png)\n\n"
            "| the paper (CLIPS, at scale) | this run |\n|---|---|\n" + paper_vs_ours + "\n")


def plot(table: Mapping[str, Mapping[int, Mapping]], s: InverseEffectSettings, path: Path) -> Path:
    """Mean recall vs token budget, one line per strategy (error bars: std over seeds), the
    full-caption run as a dashed line with its std band; PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eval.reports import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, marker in zip(STRATEGIES, "osD^"):
        by_k = table[label]
        ax.errorbar(list(by_k), [m["mean"] for m in by_k.values()], yerr=[m["std"] for m in by_k.values()],
                    marker=marker, capsize=3, label=label)
    full = table[FULL][s.full_tokens]
    ax.axhline(full["mean"], color="gray", linestyle="--", label=f"{FULL} ({s.full_tokens} tokens)")
    ax.axhspan(full["mean"] - full["std"], full["mean"] + full["std"], color="gray", alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(s.budgets), [str(k) for k in s.budgets])
    ax.set_xlabel("text tokens K seen by the encoder")
    ax.set_ylabel("zero-shot retrieval, mean recall (%)")
    ax.set_title("token-reduction strategy vs budget (error bars: std over seeds)", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=120)
