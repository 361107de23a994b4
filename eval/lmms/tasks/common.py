"""``doc_to_visual`` / ``doc_to_text`` shared by the local tasks."""

from __future__ import annotations

from PIL import Image

from eval.lmms.taskdata import decode_image


def record_name(doc: dict) -> str:
    """How error messages name a record: by its ``question_id`` (POPE, GQA) or ``index`` (MMBench)."""
    key = "question_id" if "question_id" in doc else "index"
    return f"record {key}={doc.get(key)!r}"


def doc_to_visual(doc: dict) -> list[Image.Image]:
    """The record's one image (decoded from its base64 ``"image"`` field), as an RGB PIL image."""
    return [decode_image(doc["image"], record_name(doc))]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """``pre_prompt + question + post_prompt`` (the POPE / GQA prompt of lmms-eval)."""
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question'].strip()}{kwargs.get('post_prompt', '')}"
