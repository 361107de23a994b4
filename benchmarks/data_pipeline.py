"""Benchmark 3: the training data pipeline (shard read, JPEG decode, augmentation, caption
sampling, tokenization, collation) with 0, 1 and 2 loader workers, against the tiny model's
training consumption at the same batch (measured in the same run).

Shards are generated (:func:`pretrain.synthetic.write_webdataset`) into a temporary folder and
read through the trainer's own stream (:class:`pretrain.data.stream.TrainStream`).

    python -m benchmarks data --workers 0 1 2 --batches 8
"""

from __future__ import annotations

import argparse
import tempfile
import time

from .common import Column, report
from .train_step import measure_step, step_config

COLUMNS = [Column("case", "case"), Column("samples_per_s", "samples/s", ".1f"),
           Column("vs_model", "x tiny model consumption", ".2f")]


def pipeline_rate(shards: str, workers: int, batch: int, batches: int, image_size: int = 32) -> float:
    """Samples/s of the trainer's stream over ``shards`` with ``workers`` loader processes,
    timed over ``batches`` batches after the first (which includes worker start-up)."""
    from pretrain.data.sources import open_source
    from pretrain.data.stream import StreamConfig, TrainStream, make_loader
    from pretrain.trainer import Trainer

    cfg = step_config("clips-tiny", image_size, "fp32", batch)
    tr = Trainer(cfg)
    stream = TrainStream(open_source(shards), tr.processor(image_size), tr.tokenizer,
                         StreamConfig(seed=0, batch_size=batch, shuffle_buffer=64, num_workers=workers))
    it = iter(make_loader(stream))
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    elapsed = time.perf_counter() - start
    del it  # shuts the workers down
    return batches * batch / elapsed


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``bench data``."""
    p.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--batch", type=int, default=32, help="the tiny config's global batch")
    p.add_argument("--batches", type=int, default=8, help="timed batches per worker count")
    p.add_argument("--samples", type=int, default=1024, help="generated samples (64 px JPEGs)")
    p.add_argument("--steps", type=int, default=2, help="timed tiny-model steps")


def run(args: argparse.Namespace) -> dict:
    """Tiny-model consumption, then the stream at each worker count; returns the JSON record."""
    from pretrain.synthetic import write_webdataset

    model = measure_step("clips-tiny", 32, "fp32", args.batch, args.steps)
    rows = [{"case": f"clips-tiny training step (batch {args.batch}, fp32)", "samples_per_s": model["samples_per_s"],
             "vs_model": 1.0}]
    with tempfile.TemporaryDirectory(prefix="clips-bench-data-") as tmp:
        write_webdataset(tmp, n=args.samples, seed=0, shard_size=max(1, args.samples // 4))
        for w in args.workers:
            rate = pipeline_rate(tmp, w, args.batch, args.batches)
            rows.append({"case": f"data stream, {w} workers", "samples_per_s": rate,
                         "vs_model": rate / model["samples_per_s"]})
    return report(args.out, "data_pipeline", rows, COLUMNS, vars(args))
