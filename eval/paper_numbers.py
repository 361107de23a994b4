"""Headline zero-shot numbers of the CLIPS paper (arXiv 2411.16828), shown beside our results.

Only R@1 (retrieval) and top-1 (ImageNet-1k) are published in the headline table, so the other
metric columns of a paper row stay empty.
"""

from __future__ import annotations

import re

# dataset -> metric -> {model: value}
PAPER_NUMBERS: dict[str, dict[str, dict[str, float]]] = {
    "coco": {
        "i2t_R@1": {"CLIPS ViT-L/14-224": 75.5, "CLIPS ViT-H/14-224": 76.4, "OpenAI CLIP-L": 56.3, "SigLIP-L": 70.8},
        "t2i_R@1": {"CLIPS ViT-L/14-224": 55.6, "CLIPS ViT-H/14-224": 57.2, "OpenAI CLIP-L": 36.5, "SigLIP-L": 52.3},
    },
    "flickr30k": {
        "i2t_R@1": {"CLIPS ViT-L/14-224": 96.5, "CLIPS ViT-H/14-224": 96.6, "OpenAI CLIP-L": 85.2, "SigLIP-L": 91.8},
        "t2i_R@1": {"CLIPS ViT-L/14-224": 82.3, "CLIPS ViT-H/14-224": 83.9, "OpenAI CLIP-L": 65.0, "SigLIP-L": 79.0},
    },
    "imagenet": {
        "top1": {"CLIPS ViT-L/14-224": 78.5, "CLIPS ViT-H/14-224": 79.9, "OpenAI CLIP-L": 75.5, "SigLIP-L": 80.5},
    },
}

# Spellings users (and the Karpathy files' "dataset" field) give -> key of PAPER_NUMBERS.
_ALIASES = {
    "coco": "coco", "mscoco": "coco", "coco2014": "coco", "cocokarpathy": "coco", "datasetcoco": "coco",
    "flickr30k": "flickr30k", "flickr": "flickr30k", "f30k": "flickr30k", "datasetflickr30k": "flickr30k",
    "imagenet": "imagenet", "imagenet1k": "imagenet", "in1k": "imagenet", "ilsvrc2012": "imagenet",
    "imagenetval": "imagenet", "imagenet1kval": "imagenet",
}


def canonical_dataset(name: str | None) -> str | None:
    """The PAPER_NUMBERS key for a dataset name (case, dashes and underscores ignored), or None."""
    if not name:
        return None
    return _ALIASES.get(re.sub(r"[^a-z0-9]", "", name.lower()))


def paper_rows(dataset: str | None) -> dict[str, dict[str, float]]:
    """``{"paper: <model>": {metric: value}}`` for a dataset name; empty when the paper has none."""
    key = canonical_dataset(dataset)
    rows: dict[str, dict[str, float]] = {}
    for metric, per_model in PAPER_NUMBERS.get(key, {}).items():
        for model, value in per_model.items():
            rows.setdefault(f"paper: {model}", {})[metric] = value
    return rows
