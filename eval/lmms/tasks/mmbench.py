"""MMBench-style multiple choice: the prompt, answer matching, accuracy and CircularEval.

Prompt (lmms-eval's MMBench layout): ``"{hint} {question} There are several options:\\nA. ...\\nB.
..." + post_prompt``. A generated answer is matched to a letter without an LLM judge: a single
option letter standing alone (``"B"``, ``"(B)"``, ``"B."``), else the one option whose text the
answer contains; anything else counts as wrong.

CircularEval (MMBench): a question is asked once per rotation of its options (records with
``index = group + k * 1e6``) and counts as solved only if every rotation is answered correctly,
which removes the gain from a bias towards one letter. ``mmbench_circular_accuracy`` is that score;
``mmbench_accuracy`` is the plain per-record accuracy.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from eval.lmms.taskdata import CIRCULAR_STRIDE, OPTION_LETTERS

OPTIONS_HEADER = "There are several options:"
METRICS = ("mmbench_accuracy", "mmbench_circular_accuracy")


def options(doc: dict) -> dict[str, str]:
    """Letter -> option text for the letters the record fills (``A``-``D``, skipping empty ones)."""
    return {k: str(doc[k]) for k in OPTION_LETTERS if doc.get(k) not in (None, "", "nan")}


def doc_to_choice(doc: dict) -> list[str]:
    """The option letters, the continuations scored by the log-likelihood variant."""
    return list(options(doc))


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """Hint, question and the lettered options, between ``pre_prompt`` and ``post_prompt``."""
    kwargs = lmms_eval_specific_kwargs or {}
    lines = "\n".join(f"{k}. {v}" for k, v in options(doc).items())
    hint = str(doc.get("hint") or "").strip()
    query = f"{hint + ' ' if hint and hint != 'nan' else ''}{doc['question'].strip()} {OPTIONS_HEADER}\n{lines}"
    return f"{kwargs.get('pre_prompt', '')}{query}{kwargs.get('post_prompt', '')}"


def extract_choice(response: str, choices: dict[str, str]) -> str | None:
    """The option letter ``response`` names (see the module docstring), or None."""
    named = {t.strip("()[].,:;") for t in response.split()} & set(choices)
    if len(named) == 1:
        return named.pop()
    text = response.lower()
    matches = [k for k, v in choices.items() if v.lower() in text]
    return matches[0] if len(matches) == 1 else None


def process_results(doc: dict, results: Sequence[str]) -> dict[str, dict]:
    """One item per metric: record index, matched letter (or None), answer letter."""
    item = {"index": doc["index"], "prediction": extract_choice(results[0], options(doc)), "answer": doc["answer"],
            "response": results[0]}
    return {m: item for m in METRICS}


def accuracy(items: Sequence[dict]) -> float:
    """Share of records whose matched letter is the answer."""
    return sum(i["prediction"] == i["answer"] for i in items) / len(items)


def circular_accuracy(items: Sequence[dict]) -> float:
    """Share of question groups (``index mod 1e6``) answered correctly in every rotation."""
    groups: dict[int, bool] = defaultdict(lambda: True)
    for i in items:
        groups[i["index"] % CIRCULAR_STRIDE] &= i["prediction"] == i["answer"]
    return sum(groups.values()) / len(groups)
