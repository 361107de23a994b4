"""Step 3 of the demo: zero-shot retrieval of every pretrained model on the held-out split, the
ablation table (mean +- std over seeds) and its bar chart."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Mapping, Sequence

import torch

COLUMNS = (("i2t_R@1", "I->T R@1"), ("i2t_R@5", "I->T R@5"), ("t2i_R@1", "T->I R@1"), ("t2i_R@5", "T->I R@5"),
           ("mean_recall", "mean recall"))


def evaluate_checkpoint(model_dir: str | Path, dataset_json: Path, progress: bool = False) -> dict[str, float]:
    """Load the model saved in ``model_dir`` and run :func:`eval.retrieval.evaluate_retrieval` on the
    Karpathy split ``dataset_json``; returns its metrics (percent)."""
    import clips_tower
    from eval.data import load_retrieval_dataset
    from eval.retrieval import evaluate_retrieval

    model = clips_tower.load_model(model_dir).eval()
    tok = clips_tower.load_tokenizer(context_length=model.config.text.context_length)
    with torch.no_grad():
        return evaluate_retrieval(model, tok, load_retrieval_dataset(dataset_json), progress=progress)


def summarize(per_seed: Mapping[str, Sequence[Mapping[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """label -> metric -> ``{"mean", "std", "n", "values"}`` over seeds (std 0 for one seed;
    ``values`` in seed order)."""
    out = {}
    for label, runs in per_seed.items():
        out[label] = {}
        for key, _ in COLUMNS:
            values = [r[key] for r in runs]
            out[label][key] = {"mean": statistics.fmean(values), "n": len(values), "values": values,
                               "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def retrieval_table(summary: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Markdown table, one row per model; cells ``mean`` or ``mean ± std`` over seeds, and the
    mean recall of every seed in the last column (the spread at a glance)."""
    lines = ["| model | " + " | ".join(h for _, h in COLUMNS) + " | mean recall per seed |",
             "|---|" + "---:|" * len(COLUMNS) + "---|"]
    for label, metrics in summary.items():
        cells = [f"{m['mean']:.1f}" + (f" ± {m['std']:.1f}" if m["n"] > 1 else "")
                 for m in (metrics[k] for k, _ in COLUMNS)]
        cells.append(", ".join(f"{v:.1f}" for v in metrics["mean_recall"]["values"]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_ablation(summary: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path, chance: float) -> Path:
    """Grouped bars of I->T and T->I R@1 per model (error bars: std over seeds), with the chance
    level as a dashed line; PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eval.reports import save_figure

    labels = list(summary)
    fig, ax = plt.subplots(figsize=(8, 4))
    for j, (key, name) in enumerate((("i2t_R@1", "image -> text R@1"), ("t2i_R@1", "text -> image R@1"))):
        ax.bar([i + 0.4 * j for i in range(len(labels))], [summary[m][key]["mean"] for m in labels], 0.4,
               yerr=[summary[m][key]["std"] for m in labels], capsize=3, label=name)
    ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label=f"chance ({chance:.1f}%)")
    ax.set_xticks([i + 0.2 for i in range(len(labels))], [l.replace(" (", "\n(") for l in labels], fontsize=8)
    ax.set_ylabel("recall@1 (%) on held-out scenes")
    ax.set_title("zero-shot retrieval, same pretraining budget")
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=120)

