"""A tiny pretraining run: a 1-layer, 16 px model config and a run config around it."""

from __future__ import annotations

import json
from pathlib import Path

TINY = {
    "name": "tiny-rel", "embed_dim": 16,
    "vision": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
    "text": {"vocab_size": 32000, "context_length": 16, "width": 16, "layers": 1, "heads": 2},
    "captioner": {"width": 16, "layers": 1, "heads": 2, "num_queries": 8},
}


def run_config(root: Path, data: str, **train) -> dict:
    """A 1-layer, 16 px model on ``data``; no augmentation, no shuffle, one thread, no eval/MFU."""
    (root / "tiny-rel.json").write_text(json.dumps(TINY))
    return {
        "model": {"name": str(root / "tiny-rel.json")},
        "data": {"train": data, "num_workers": 0, "shuffle_buffer": 1, "augment": {"enabled": False}},
        "optim": {"lr": 1e-3, "warmup_steps": 0, "schedule": "constant"},
        "stages": [{"steps": 2}],
        "train": {"out_dir": str(root / "run"), "global_batch_size": 3, "precision": "fp32", "log_every": 1,
                  "save_every": 100, "progress": False, "tensorboard": False, "mfu_peak_tflops": 0,
                  "torch_threads": 1, **train},
    }
