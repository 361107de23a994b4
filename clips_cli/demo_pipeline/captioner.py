"""Step 4 of the demo: what the CLIPS captioner writes for held-out images, next to their web
caption (its prompt) and their true synthetic caption."""

from __future__ import annotations

from pathlib import Path

import torch


def caption_examples(model_dir: str | Path, n: int, seed: int, image_size: int) -> list[dict]:
    """Greedy captions of the first ``n`` held-out scenes of ``seed`` by the model in ``model_dir``,
    conditioned on each scene's web caption; rows ``{"key", "web", "generated", "synthetic"}``."""
    import clips_tower
    from pretrain.synthetic import generate_sample

    model = clips_tower.load_model(model_dir).eval()
    tok = clips_tower.load_tokenizer(context_length=model.config.text.context_length)
    tf = clips_tower.image_transform(model.config, train=False)
    samples = [generate_sample(i, seed, image_size) for i in range(n)]
    with torch.no_grad():
        ids = model.generate_caption_ids(torch.stack([tf(s.image) for s in samples]), tok([s.web for s in samples]))
    return [{"key": s.key, "web": s.web, "generated": text, "synthetic": s.synthetic}
            for s, text in zip(samples, tok.batch_decode(ids))]


def captions_markdown(rows: list[dict]) -> str:
    """The rows as a markdown table (web caption | captioner | true synthetic caption)."""
    lines = ["| web caption (captioner prompt) | CLIPS captioner | true synthetic caption |", "|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join(t.replace("|", "/") for t in (r["web"], r["generated"], r["synthetic"])) + " |")
    return "\n".join(lines) + "\n"
