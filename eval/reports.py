"""Result files and figures: JSON (atomic), a markdown table, retrieval plots and grouped bar
charts (matplotlib Agg).

Every evaluation writes ``<out>/<task>.json`` and ``<out>/<task>.md`` (the table that is also
printed); retrieval also draws ``<out>/retrieval.png``: recall@K curves for both directions and,
when several models are compared, a grouped bar chart of R@1/5/10.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch

from clips_tower.io import atomic_path, atomic_write_json, atomic_write_text

from .data import BadEntry, count_by_reason
from .paper_numbers import paper_rows

# Table columns per task: (result key, header).
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "retrieval": (("i2t_R@1", "I->T R@1"), ("i2t_R@5", "I->T R@5"), ("i2t_R@10", "I->T R@10"),
                  ("t2i_R@1", "T->I R@1"), ("t2i_R@5", "T->I R@5"), ("t2i_R@10", "T->I R@10"),
                  ("mean_recall", "mean R")),
    "classify": (("top1", "top-1"), ("top5", "top-5"), ("mean_per_class_top1", "mean per-class top-1")),
    "caption": (("token_acc", "token acc %"), ("perplexity", "perplexity"), ("bleu4", "BLEU-4")),
}
CURVE_KS = (1, 2, 3, 5, 10, 20, 50, 100)


def skipped_summary(skipped: Sequence[BadEntry], limit: int = 100) -> dict:
    """Result-file fields for skipped entries: ``skipped`` count, ``skipped_by_reason``, and the
    first ``limit`` entries as text."""
    return {"skipped": len(skipped), "skipped_by_reason": count_by_reason(skipped),
            "skipped_entries": [str(p) for p in skipped[:limit]]}


def markdown_table(task: str, rows: Mapping[str, Mapping[str, float]], dataset: str | None = None) -> str:
    """A markdown table: one row per model (``rows``: label -> metrics), then the paper's numbers
    for ``dataset`` when it has any (missing cells shown as ``-``)."""
    columns = COLUMNS[task]
    all_rows = {**rows, **paper_rows(dataset)}
    lines = ["| model | " + " | ".join(h for _, h in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for label, metrics in all_rows.items():
        cells = [f"{metrics[k]:.2f}" if k in metrics else "-" for k, _ in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def recall_curve(ranks: torch.Tensor, gallery_size: int) -> dict[str, list]:
    """``{"k": [...], "recall": [...]}`` (percent) at the :data:`CURVE_KS` below ``gallery_size``
    and at ``gallery_size`` itself."""
    ks = [k for k in CURVE_KS if k < gallery_size] + [gallery_size]  # R@(gallery size) is 100 by definition
    return {"k": ks, "recall": [100.0 * (ranks < k).double().mean().item() for k in ks]}


def write_results(out_dir: str | Path, task: str, report: dict, table: str) -> dict[str, Path]:
    """Write ``<task>.json`` and ``<task>.md`` into ``out_dir`` atomically; returns their paths."""
    out = Path(out_dir)
    paths = {"json": out / f"{task}.json", "table": out / f"{task}.md"}
    atomic_write_json(paths["json"], report)
    atomic_write_text(paths["table"], table)
    return paths


def plot_retrieval(models: Mapping[str, Mapping], path: str | Path) -> Path:
    """Draw recall@K curves (I->T and T->I, one line per model) and, for several models, a grouped
    bar chart of R@1/5/10. ``models``: label -> that model's report entry (``metrics`` and
    ``recall_curve``). Written atomically as PNG; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if len(models) > 1 else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    for ax, direction, title in ((axes[0], "i2t", "image -> text"), (axes[1], "t2i", "text -> image")):
        for label, entry in models.items():
            curve = entry["recall_curve"][direction]
            ax.plot(curve["k"], curve["recall"], marker="o", label=label)
        ax.set_xscale("log")
        ticks = sorted({k for entry in models.values() for k in entry["recall_curve"][direction]["k"]})
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.minorticks_off()
        ax.set_xlabel("K")
        ax.set_ylabel("recall@K (%)")
        ax.set_ylim(0, 100)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if panels == 3:
        columns = COLUMNS["retrieval"][:6]  # R@1/5/10 both ways
        _grouped_bars(axes[2], [h for _, h in columns],
                      {label: [entry["metrics"][k] for k, _ in columns] for label, entry in models.items()},
                      ylabel="%", title="model comparison")
    return save_figure(fig, path)


def _grouped_bars(ax, categories: Sequence[str], series: Mapping[str, Sequence[float]], ylabel: str, title: str) -> None:
    """One group of bars per category, one bar (and legend entry) per series."""
    width = 0.8 / len(series)
    for j, (label, values) in enumerate(series.items()):
        ax.bar([i + j * width for i in range(len(categories))], values, width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(categories))], categories, rotation=30, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write the matplotlib figure ``fig`` atomically as a PNG at ``path`` and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)


def plot_grouped_bars(categories: Sequence[str], series: Mapping[str, Sequence[float]], path: str | Path,
                      ylabel: str = "", title: str = "") -> Path:
    """A grouped bar chart (``series``: label -> one value per category), PNG written atomically;
    returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(categories) * max(1, len(series)) / 2 + 2), 4))
    _grouped_bars(ax, categories, series, ylabel, title)
    return save_figure(fig, path)
