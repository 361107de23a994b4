"""Step 6 of the demo: ``report.md`` from the collected metrics, with a reading of the numbers
that says plainly when an effect is within the seed-to-seed noise or absent at this scale."""

from __future__ import annotations

from pathlib import Path

from clips_tower.io import atomic_write_text

from .captioner import captions_markdown
from .llava import METRICS
from .pretraining import CLIPS_MODEL, WEB_BASELINE
from .retrieval import retrieval_table

FULL, PARTIAL = "CLIP (full synthetic captions)", "CLIP (sub-captions)"


def _compare(summary: dict, a: str, b: str, key: str) -> str:
    """One sentence: ``a`` vs ``b`` on ``key``, and whether the gap exceeds the seed spread."""
    ma, mb = summary[a][key], summary[b][key]
    gap = ma["mean"] - mb["mean"]
    n = ma["n"]
    if n > 1:
        noise = max(ma["std"], mb["std"])
        verdict = ("larger than" if abs(gap) > 2 * noise else "within") + f" twice the seed-to-seed std ({noise:.1f})"
    else:
        verdict = "one seed only, so the noise is not measured in this run (see docs/demo.md)"
    return f"{a} vs {b}: {ma['mean']:.1f} vs {mb['mean']:.1f} ({gap:+.1f} points; {verdict})"


def retrieval_reading(m: dict) -> list[str]:
    """Bullet points comparing the ablation rows on mean recall (the average of R@1/5 both ways)."""
    s = m["retrieval"]["summary"]
    lines = [f"- {_compare(s, CLIPS_MODEL, WEB_BASELINE, 'mean_recall')}.",
             f"- {_compare(s, PARTIAL, FULL, 'mean_recall')}.",
             f"- {_compare(s, CLIPS_MODEL, PARTIAL, 'mean_recall')}."]
    best = max(s, key=lambda label: s[label]["mean_recall"]["mean"])
    paper = "as in the paper" if best == CLIPS_MODEL else f"the paper's order does NOT reproduce here ({best} is best)"
    lines.append(f"- Best mean recall: {best}; {paper}.")
    return lines


def llava_reading(m: dict) -> list[str]:
    """Bullet points comparing the two towers per task, against chance where it is known."""
    towers = m["llava"]
    a, b = towers[CLIPS_MODEL]["accuracy"], towers[WEB_BASELINE]["accuracy"]
    n = m["llava_eval_questions"]
    lines = []
    for task, (_, name) in METRICS.items():
        # Binomial standard error of an accuracy near 50% on n questions, in points.
        se = 100 * (0.25 / max(1, n[task])) ** 0.5
        verdict = "larger than" if abs(a[task] - b[task]) > 2 * se * 2 ** 0.5 else "within"
        lines.append(f"- {name} ({n[task]} questions): CLIPS tower {a[task]:.1f}% vs web-CLIP tower {b[task]:.1f}% "
                     f"({a[task] - b[task]:+.1f} points, {verdict} the sampling noise of ~±{2 * se * 2 ** 0.5:.0f} points"
                     + ("; chance is 50%" if task == "clips_pope" else "") + ").")
    return lines


def write_report(out: Path, m: dict) -> Path:
    """Write ``out/report.md`` from the metrics ``m`` (as :func:`.pipeline.run_demo` builds them)."""
    s = m["settings"]
    ret = m["retrieval"]
    seeds = ret["summary"][WEB_BASELINE]["i2t_R@1"]["n"]
    kinds = sorted({k for t in m["llava"].values() for k in t["gqa_by_kind"]})
    llava_rows = ["| vision tower | " + " | ".join(name for _, name in METRICS.values()) + " | "
                  + " | ".join(f"GQA-style: {k}" for k in kinds) + " |",
                  "|---|" + "---:|" * (len(METRICS) + len(kinds))]
    for label, t in m["llava"].items():
        llava_rows.append(f"| {label} | " + " | ".join(f"{t['accuracy'][task]:.1f}" for task in METRICS) + " | "
                          + " | ".join(f"{t['gqa_by_kind'].get(k, float('nan')):.1f}" for k in kinds) + " |")
    text = f"""# CLIPS demo report

Everything here was generated and trained on this machine from scratch (no downloads): procedural
scenes of coloured shapes, each with a short noisy web caption (alt-text style) and a long, complete
synthetic caption (MLLM-recaption style).

Setup: {s['train_samples']} training pairs; every model gets {s['pretrain_steps']} steps x batch
{s['batch_size']}; {s['eval_images']} held-out images with 5 captions each (chance R@1 =
{ret['chance_R@1']:.1f}%); {seeds} seed(s) per model (cells show mean ± std over seeds when there are several).

## 1. Zero-shot retrieval on held-out scenes (the paper's ablation)

{retrieval_table(ret['summary'])}
![retrieval R@1](retrieval_r1.png)

Reading:
{chr(10).join(retrieval_reading(m))}

## 2. What the CLIPS captioner writes (held-out images)

The captioner sees the image and the web caption and was trained to write the full synthetic
caption; it has {m['captioner_positions']} output positions, so longer captions are cut there.

{captions_markdown(m['captions'])}
## 3. LLaVA with a tiny LLM trained from scratch (accuracy %, held-out scenes, lmms-eval)

Stage 1 ({s['stage1_steps']} steps, projector only, captions) then stage 2 ({s['stage2_steps']} steps,
projector + LLM, {s['llava_train_scenes']} instruction conversations) with batch
{s['llava_batch_size']}, the vision tower frozen; only the tower differs between the rows. Scored by
{m['llava'][CLIPS_MODEL]['scorer']} on the local tasks `clips_pope` and `clips_gqa`.

{chr(10).join(llava_rows)}

Reading:
{chr(10).join(llava_reading(m))}

## Times

""" + "\n".join(f"- {k}: {v:.0f} s" for k, v in m["stage_times_s"].items()) + "\n"
    atomic_write_text(out / "report.md", text)
    return out / "report.md"
