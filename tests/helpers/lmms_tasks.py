"""The local lmms-eval tasks as the tests read them (config, prompts, records), and a tiny HF
LLaVA trained on their generated training records."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from eval.lmms.taskdata import TASK_DATA_FILES, decode_image

READOUT_STEPS, STEPS, BATCH, LR = 80, 250, 16, 3e-3  # train_tiny_llava: read-out steps first, then all tasks


def task_config(data: Path, task: str) -> dict:
    """The installed task YAML as lmms-eval loads it (includes and ``!function`` resolved)."""
    from lmms_eval.utils import load_yaml_config

    return load_yaml_config(str(data / f"{task}.yaml"))


def task_prompt(config: dict, doc: dict) -> str:
    """The task's prompt text for ``doc`` (its ``doc_to_text`` with the default kwargs)."""
    return config["doc_to_text"](doc, config["lmms_eval_specific_kwargs"]["default"])


def read_docs(data: Path, task: str) -> list[dict]:
    """The records of ``task`` in data folder ``data``."""
    return [json.loads(line) for line in (data / TASK_DATA_FILES[task]).read_text().splitlines()]


def train_tiny_llava(base: Path, train_data: Path, task_dir: Path, out: Path) -> Path:
    """AdamW on the answers (prompt tokens masked) of generated training records: first GQA's
    direct read-out questions, then the three tasks (MMBench twice as often), so that answers come
    to depend on the image and the question. Saves an HF LLaVA folder to ``out``."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(base)
    model = LlavaForConditionalGeneration.from_pretrained(base)
    tok = processor.tokenizer
    examples: dict[str, list] = {}
    for task in ("clips_pope", "clips_gqa", "clips_mmbench"):
        config, docs = task_config(task_dir, task), read_docs(train_data, task)
        prompts = [processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": task_prompt(config, d)}]}],
            add_generation_prompt=True, tokenize=False) + f" {d['answer']}{tok.eos_token}" for d in docs]
        enc = processor(text=prompts, images=[decode_image(d["image"]) for d in docs])
        for ids, pixels, d in zip(enc["input_ids"], enc["pixel_values"], docs):
            n_answer = len(tok(f" {d['answer']}{tok.eos_token}", add_special_tokens=False)["input_ids"])
            examples.setdefault(task, []).append((torch.tensor(ids), n_answer, torch.as_tensor(pixels)))

    def batch(items: list) -> dict:
        length = max(len(ids) for ids, _, _ in items)
        input_ids = torch.full((len(items), length), tok.pad_token_id)
        attention_mask = torch.zeros((len(items), length), dtype=torch.long)
        labels = torch.full((len(items), length), -100)
        for r, (ids, n, _) in enumerate(items):
            input_ids[r, :len(ids)], attention_mask[r, :len(ids)] = ids, 1
            labels[r, len(ids) - n:len(ids)] = ids[-n:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "pixel_values": torch.stack([p for _, _, p in items])}

    rng, mix = random.Random(0), ["clips_pope", "clips_gqa", "clips_mmbench", "clips_mmbench"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()
    for step in range(STEPS):
        tasks = ["clips_gqa"] * BATCH if step < READOUT_STEPS else [mix[k % len(mix)] for k in range(BATCH)]
        model(**batch([rng.choice(examples[t]) for t in tasks])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    return out
