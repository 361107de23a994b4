"""References for the lmms-eval adapter tests: plain transformers calls on an HF LLaVA folder."""

from __future__ import annotations

import torch
from PIL import Image


def chat_prompt(processor, text: str) -> str:
    """The standard transformers way to prompt an HF LLaVA: one user turn, image first."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def hf_generate(model, processor, image: Image.Image, text: str, max_new_tokens: int) -> str:
    """Greedy answer of the model for one image + question, unbatched."""
    enc = processor(text=[chat_prompt(processor, text)], images=[image], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=processor.tokenizer.pad_token_id)
    return processor.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def hf_answer_nll(model, processor, image: Image.Image, text: str, answer: str) -> tuple[float, bool]:
    """-log P(answer | prompt) from the model's own loss (mean over the answer's tokens, encoded
    separately and appended), and whether the answer is the greedy continuation."""
    enc = processor(text=[chat_prompt(processor, text)], images=[image], return_tensors="pt")
    answer_ids = processor.tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"]
    input_ids = torch.cat([enc["input_ids"], answer_ids], dim=1)
    labels = torch.full_like(input_ids, -100)
    labels[:, -answer_ids.shape[1]:] = answer_ids
    with torch.inference_mode():
        out = model(input_ids=input_ids, pixel_values=enc["pixel_values"], labels=labels)
    n = answer_ids.shape[1]
    greedy = out.logits[0, -n - 1:-1].argmax(-1)
    return float(out.loss) * n, bool(torch.equal(greedy, answer_ids[0]))
