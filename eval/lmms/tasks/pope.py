"""POPE metrics: accuracy, precision, recall, F1 and yes-ratio of yes/no answers.

Answers are normalised as POPE's own evaluation does (and LLaVA's ``eval_pope.py``): keep the text
before the first ``.``, drop commas, and read it as ``no`` if one of its words is ``no`` or
``not`` (case-insensitive here), otherwise as ``yes``. "Positive" is ``yes``; the yes-ratio is the
share of *predicted* ``yes`` (POPE's definition; lmms-eval's own ``pope`` task reports the share
of ``yes`` in the ground truth under that name).
"""

from __future__ import annotations

from typing import Sequence

METRICS = ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio")


def normalise_answer(text: str) -> str:
    """``"yes"`` or ``"no"``, by POPE's rule (see the module docstring)."""
    words = text.split(".")[0].replace(",", "").lower().split()
    return "no" if "no" in words or "not" in words else "yes"


def process_results(doc: dict, results: Sequence[str]) -> dict[str, dict]:
    """One item per metric: the record id, the normalised prediction and the ground truth."""
    answer = doc["answer"].strip().lower()
    if answer not in ("yes", "no"):
        raise ValueError(f"POPE record question_id={doc.get('question_id')!r}: answer must be yes/no, got {doc['answer']!r}")
    item = {"question_id": doc["question_id"], "prediction": normalise_answer(results[0]), "answer": answer,
            "response": results[0]}
    return {m: item for m in METRICS}


def _counts(items: Sequence[dict]) -> tuple[int, int, int, int]:
    """(true positives, false positives, false negatives, true negatives) with yes as positive."""
    pairs = [(i["prediction"] == "yes", i["answer"] == "yes") for i in items]
    return (sum(p and a for p, a in pairs), sum(p and not a for p, a in pairs),
            sum(a and not p for p, a in pairs), sum(not p and not a for p, a in pairs))


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def accuracy(items: Sequence[dict]) -> float:
    """Share of answers equal to the ground truth."""
    tp, fp, fn, tn = _counts(items)
    return _ratio(tp + tn, len(items))


def precision(items: Sequence[dict]) -> float:
    """TP / (TP + FP); 0 when nothing is predicted ``yes``."""
    tp, fp, _, _ = _counts(items)
    return _ratio(tp, tp + fp)


def recall(items: Sequence[dict]) -> float:
    """TP / (TP + FN); 0 when the ground truth has no ``yes``."""
    tp, _, fn, _ = _counts(items)
    return _ratio(tp, tp + fn)


def f1_score(items: Sequence[dict]) -> float:
    """Harmonic mean of precision and recall (0 when both are 0)."""
    p, r = precision(items), recall(items)
    return _ratio(2 * p * r, p + r)


def yes_ratio(items: Sequence[dict]) -> float:
    """Share of predictions that are ``yes``."""
    tp, fp, _, _ = _counts(items)
    return _ratio(tp + fp, len(items))
