"""Benchmark 4: zero-shot retrieval at COCO scale (5k images x 5 captions = 25k), time split into
image embedding, text embedding and ranking, with the peak resident memory of each phase.

Images are generated (:func:`pretrain.synthetic.write_retrieval_split`, 64 px JPEGs) and the
model is a random ``clips-tiny``; the phases are :mod:`eval.embedding` and
:func:`eval.retrieval.retrieval_ranks`, the same calls ``clips eval retrieval`` makes.

    python -m benchmarks retrieval --images 5000
"""

from __future__ import annotations

import argparse
import tempfile
import time

from .common import Column, PeakRSS, report

COLUMNS = [Column("phase", "phase"), Column("items", "items"), Column("seconds", "seconds", ".2f"),
           Column("items_per_s", "items/s", ".0f"), Column("peak_rss_mib", "peak RSS MiB", ".0f"),
           Column("peak_rss_delta_mib", "extra RSS MiB", ".0f")]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``bench retrieval``."""
    p.add_argument("--images", type=int, default=5000, help="images (5 captions each); COCO 5k by default")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--model", default="clips-tiny")


def run(args: argparse.Namespace) -> dict:
    """Generate the split, embed, rank; returns the JSON record."""
    import clips_tower
    from eval.data import load_retrieval_dataset
    from eval.embedding import embed_images, embed_texts
    from eval.retrieval import metrics_from_ranks, retrieval_ranks
    from pretrain.synthetic import write_retrieval_split

    model = clips_tower.create_model(args.model, captioner=False)
    tok = clips_tower.load_tokenizer(context_length=model.config.text.context_length)
    rows = []
    with tempfile.TemporaryDirectory(prefix="clips-bench-retrieval-") as tmp:
        start = time.perf_counter()
        ds = load_retrieval_dataset(write_retrieval_split(tmp, n=args.images, seed=1))
        gen_s = time.perf_counter() - start
        texts, index = ds.flat_captions()
        transform = clips_tower.image_transform(model.config, train=False)
        phases = {
            "embed images": (len(ds), lambda: embed_images(model, ds.images, transform, batch_size=args.batch_size,
                                                           progress=False).emb),
            "embed texts": (len(texts), lambda: embed_texts(model, tok, texts, batch_size=args.batch_size,
                                                            progress=False)),
        }
        out = {}
        for name, (n, fn) in phases.items():
            with PeakRSS() as mem:
                start = time.perf_counter()
                out[name] = fn()
                sec = time.perf_counter() - start
            rows.append({"phase": name, "items": n, "seconds": sec, "items_per_s": n / sec,
                         "peak_rss_mib": mem.peak_mib, "peak_rss_delta_mib": mem.delta_mib})
        with PeakRSS() as mem:
            start = time.perf_counter()
            i2t, t2i = retrieval_ranks(out["embed images"], out["embed texts"], index)
            sec = time.perf_counter() - start
        rows.append({"phase": "rank (both directions)", "items": len(ds) * len(texts), "seconds": sec,
                     "items_per_s": len(ds) * len(texts) / sec, "peak_rss_mib": mem.peak_mib,
                     "peak_rss_delta_mib": mem.delta_mib})
    metrics = metrics_from_ranks(i2t, t2i)
    notes = [f"{len(ds)} images, {len(texts)} captions (generated in {gen_s:.1f} s, not counted); "
             f"random {args.model}: mean recall {metrics['mean_recall']:.2f}% (chance level, as expected)"]
    return report(args.out, "retrieval_eval", rows, COLUMNS, vars(args), notes)
