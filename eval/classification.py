"""Zero-shot classification: class-name prompts -> averaged class embeddings -> top-1 / top-5.

Datasets (picked by :func:`load_classification_dataset`):

- image folder: ``root/<class folder>/<image>``; class index = position in the sorted folder
  names (torchvision ``ImageFolder`` order); class names are the folder names with ``_`` shown
  as spaces, or the lines of a ``classnames`` file (one per line, in that order; e.g. the
  ImageNet class names for the ``n01440764``-style folders).
- CSV: a header with ``image`` and ``label`` columns; image paths are relative to ``image_root``
  (default: the CSV's folder). With a ``classnames`` file, a label is a class index or one of the
  names; without one, the classes are the sorted distinct labels.

Ranks use the retrieval tie rule (:mod:`eval.retrieval`): a class scoring the same as the true
class counts against it.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import torch

from pretrain.data.errors import IMAGE_EXTENSIONS, UNKNOWN_LABEL

from .data import BadEntriesError, BadEntry, FileImage, check_image
from .embedding import embed_images, embed_texts
from .retrieval import recall_at_k, target_ranks


@dataclasses.dataclass
class ClassificationDataset:
    """``images[i]`` (lazy file reference) has class ``labels[i]`` (LongTensor [N]) named
    ``classnames[labels[i]]``; ``skipped`` lists entries dropped with ``skip_bad``."""

    images: list[FileImage]
    labels: torch.Tensor
    classnames: list[str]
    source: str
    name: str | None = None
    skipped: list[BadEntry] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def _read_classnames(path: str | Path) -> list[str]:
    names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: no class names")
    return names


def _read_folder(root: Path, classnames: list[str] | None):
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"{root}: no class folders (expected root/<class>/<image>)")
    if classnames is not None and len(classnames) != len(folders):
        raise ValueError(f"{len(classnames)} class names for {len(folders)} class folders in {root}")
    names = classnames or [f.name.replace("_", " ") for f in folders]
    items = [(FileImage(p), label, None) for label, folder in enumerate(folders) for p in sorted(folder.iterdir())
             if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS]
    return items, names


def _read_csv(path: Path, classnames: list[str] | None, image_root: Path | None):
    root = image_root or path.parent
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"image", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: needs a header with 'image' and 'label' columns, got {reader.fieldnames}")
        rows = [(lineno, row) for lineno, row in enumerate(reader, 2)]
    names = classnames or sorted({row["label"].strip() for _, row in rows if row["label"] and row["label"].strip()})
    lookup = {n: i for i, n in enumerate(names)}
    if classnames is not None:
        lookup |= {str(i): i for i in range(len(names))}
    items = []
    for lineno, row in rows:
        label = lookup.get((row["label"] or "").strip())
        problem = None if label is not None else BadEntry(f"{path}:{lineno}", UNKNOWN_LABEL, repr(row["label"]))
        items.append((FileImage(root / (row["image"] or "")), label, problem))
    return items, names


def load_classification_dataset(
    path: str | Path,
    classnames: str | Path | None = None,
    image_root: str | Path | None = None,
    *,
    name: str | None = None,
    skip_bad: bool = False,
    check_images: bool = True,
) -> ClassificationDataset:
    """Read an image-folder (``path`` is a folder) or CSV (``path`` is a ``.csv``) dataset.

    ``classnames``: optional file of class names. ``name`` names the dataset for the paper column
    (default: the folder / file stem). Missing or unreadable images and unknown labels raise
    :class:`BadEntriesError` listing every one, unless ``skip_bad`` drops them into ``skipped``.
    """
    path = Path(path)
    names = _read_classnames(classnames) if classnames else None
    if path.is_dir():
        items, names = _read_folder(path, names)
    elif path.suffix.lower() == ".csv" and path.is_file():
        items, names = _read_csv(path, names, Path(image_root) if image_root else None)
    else:
        raise FileNotFoundError(f"{path}: expected an image folder (root/<class>/<image>) or a .csv file")
    problems, images, labels = [], [], []
    for image, label, problem in items:
        problem = problem or (check_image(image) if check_images else None)
        if problem:
            problems.append(problem)
        else:
            images.append(image)
            labels.append(label)
    if problems and not skip_bad:
        raise BadEntriesError(str(path), problems)
    if not images:
        raise ValueError(f"{path}: no usable images ({len(problems)} bad entries)")
    return ClassificationDataset(images, torch.tensor(labels, dtype=torch.long), names, str(path),
                                 name or (path.stem if path.is_file() else path.name), problems)


def zero_shot_classifier(
    model: torch.nn.Module,
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Class embeddings float32 [C,E]: each class's prompts (``template.format(name)`` for every
    template) are embedded and unit-normed, averaged, and the mean re-normalised (CLIP's ensemble)."""
    prompts = [t.format(c) for c in classnames for t in templates]
    emb = embed_texts(model, tokenizer, prompts, batch_size=batch_size, device=device,
                      autocast_dtype=autocast_dtype, progress=progress)
    return torch.nn.functional.normalize(emb.view(len(classnames), len(templates), -1).mean(dim=1), dim=-1)


@dataclasses.dataclass
class ClassificationResult:
    """Metrics (see :func:`evaluate_classification`) and the bad entries skipped."""

    metrics: dict[str, float]
    skipped: list[BadEntry]


def run_classification(
    model: torch.nn.Module,
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    dataset: ClassificationDataset,
    templates: Sequence[str],
    *,
    transform: Callable | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
    skip_bad: bool = False,
    num_workers: int = 0,
) -> ClassificationResult:
    """Zero-shot classification of ``dataset`` (see :func:`evaluate_classification`)."""
    if transform is None:
        import clips_tower

        transform = clips_tower.image_transform(model.config, train=False)
    classes = zero_shot_classifier(model, tokenizer, dataset.classnames, templates, batch_size=batch_size,
                                   device=device, autocast_dtype=autocast_dtype, progress=progress)
    images = embed_images(model, dataset.images, transform, batch_size=batch_size, device=device,
                          autocast_dtype=autocast_dtype, num_workers=num_workers, progress=progress)
    if images.failed and not skip_bad:
        raise BadEntriesError(dataset.source, images.failed)
    labels = dataset.labels[images.ok]
    ranks = target_ranks(images.emb[images.ok], classes, labels)
    top = recall_at_k(ranks, (1, 5))
    per_class = [(ranks[labels == c] < 1).double().mean().item() for c in labels.unique().tolist()]
    skipped = dataset.skipped + images.failed
    metrics = {"top1": top[1], "top5": top[5], "mean_per_class_top1": 100.0 * sum(per_class) / len(per_class),
               "num_images": int(images.ok.sum()), "num_classes": len(dataset.classnames), "skipped": len(skipped)}
    return ClassificationResult(metrics, skipped)


def evaluate_classification(
    model: torch.nn.Module,
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    dataset: ClassificationDataset,
    templates: Sequence[str],
    **kwargs,
) -> dict[str, float]:
    """Zero-shot accuracy of ``model`` on ``dataset`` with the prompt ``templates`` (e.g.
    ``eval.templates.IMAGENET80``); keyword options as :func:`run_classification`.

    Returns ``top1``, ``top5`` (percent; top-k with k >= the number of classes is 100),
    ``mean_per_class_top1`` (balanced accuracy), ``num_images``, ``num_classes``, ``skipped``.
    Undecodable images raise :class:`BadEntriesError` unless ``skip_bad``.
    """
    return run_classification(model, tokenizer, dataset, templates, **kwargs).metrics
