"""LLaVA training data: templates, label masking, up-front checks, images, collator, sampler.

Uses a tiny byte-level BPE LLM assembled with a tiny CLIPS tower (built locally, no downloads).
The tiny LLaVA-format datasets come from ``helpers.llava_records``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llava_integration.conversation import (TEMPLATES, ConversationError, Rendered, get_template,
                                            validate_turns)
from llava_integration.data import (IGNORE_INDEX, DataCheckError, LabelMaskError, LlavaCollator,
                                    LlavaDataset, ModalityLengthGroupedSampler, TokenSpec, check_samples,
                                    encode_batch, encode_sample, expand_to_square, load_image, load_records)
from helpers.llava_records import instruction_records, write_images, write_json

@pytest.fixture(scope="module")
def assembled(tmp_path_factory) -> Path:
    """A tiny HF LLaVA folder: clips-tiny tower (32 px, 16 image tokens) + tiny Llama."""
    from llava_integration.assemble import assemble_llava
    from llava_integration.tiny_llm import build_tiny_llm

    root = tmp_path_factory.mktemp("llava_data")
    return assemble_llava("clips:clips-tiny", build_tiny_llm(root / "llm"), root / "llava")


@pytest.fixture(scope="module")
def processor(assembled):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(assembled)


@pytest.fixture(scope="module")
def spec(processor) -> TokenSpec:
    return TokenSpec.from_processor(processor)


def label_runs(labels: list[int]) -> list[list[int]]:
    """Contiguous runs of supervised label ids."""
    runs, cur = [], []
    for lab in labels:
        if lab == IGNORE_INDEX:
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append(lab)
    return runs + ([cur] if cur else [])


MULTI_TURN = {"id": "mt", "image": "0.png", "conversations": [
    {"from": "human", "value": "What is in the picture?\n<image>"}, {"from": "gpt", "value": "A red  circle, small."},
    {"from": "human", "value": "And the colour?"}, {"from": "gpt", "value": "red"},
    {"from": "human", "value": "Anything else?"}, {"from": "gpt", "value": "No.\nNothing else."}]}


# ----------------------------------------------------------------------------- label masking

SINGLE_TURN = {"plain"}  # stage-1 captioning: one image, one caption; every other template is multi-turn


@pytest.mark.parametrize("version", sorted(set(TEMPLATES) - SINGLE_TURN))
def test_multi_turn_labels_decode_to_the_answers(spec, version):
    enc = encode_sample(MULTI_TURN, get_template(version), spec, "mt")
    answers = [t["value"] for t in MULTI_TURN["conversations"][1::2]]
    decoded = [spec.tokenizer.decode(run) for run in label_runs(enc.labels)]
    # Each answer trains with the space that joins it to "ASSISTANT:" and the EOS separator after it.
    assert decoded == [" " + a + "</s>" for a in answers]
    # Labels are the input ids where supervised (no shift here: the model shifts).
    assert all(lab in (IGNORE_INDEX, tok) for lab, tok in zip(enc.labels, enc.input_ids))
    # One <image> became image_seq_len image tokens, none supervised.
    image_pos = [i for i, t in enumerate(enc.input_ids) if t == spec.image_token_id]
    assert len(image_pos) == spec.image_seq_len == 16 and image_pos == list(range(image_pos[0], image_pos[0] + 16))
    assert all(enc.labels[i] == IGNORE_INDEX for i in image_pos)


def test_masking_with_trimmed_offsets(spec):
    """Byte-level tokenizers with ``trim_offsets`` report whitespace tokens as empty spans; the
    spaces inside answers (here a double space) must still be trained on."""
    import copy

    from tokenizers import processors

    tokenizer = copy.deepcopy(spec.tokenizer)
    tokenizer.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    trimmed = TokenSpec(tokenizer, spec.image_token_id, spec.image_seq_len)
    r = get_template("v1").render(MULTI_TURN["conversations"], tokenizer)
    offsets = tokenizer(r.text, return_offsets_mapping=True)["offset_mapping"]
    assert any(s == e for s, e in offsets)  # the setting really trims
    enc = encode_batch([r], [1], ["mt"], trimmed)[0]
    answers = [t["value"] for t in MULTI_TURN["conversations"][1::2]]
    assert [tokenizer.decode(run) for run in label_runs(enc.labels)] == [" " + a + "</s>" for a in answers]


def test_v1_rendering_matches_llava_prompt_format(spec):
    r = get_template("v1").render(MULTI_TURN["conversations"], spec.tokenizer)
    system = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the user's questions.")
    # LLaVA moves <image> to the front of its message, followed by a newline.
    assert r.text == (f"{system} USER: <image>\nWhat is in the picture? ASSISTANT: A red  circle, small.</s>"
                      f"USER: And the colour? ASSISTANT: red</s>USER: Anything else? ASSISTANT: No.\nNothing else.</s>")


def test_chat_template_matches_the_llm_template_rendering(spec):
    """The `chat_template` version trains on exactly what the tokenizer's template renders."""
    r = get_template("chat_template").render(MULTI_TURN["conversations"], spec.tokenizer)
    messages = [{"role": "user" if t["from"] == "human" else "assistant",
                 "content": t["value"] if "<image>" not in t["value"] else "<image>\nWhat is in the picture?"}
                for t in MULTI_TURN["conversations"]]
    assert r.text == spec.tokenizer.apply_chat_template(messages, tokenize=False)


def test_plain_template_trains_on_caption_and_newline(spec):
    rec = {"id": "p", "image": "x.png", "conversations": [
        {"from": "human", "value": "Give a short description.\n<image>"}, {"from": "gpt", "value": "a cat sat on a mat"}]}
    enc = encode_sample(rec, get_template("plain"), spec, "p")
    assert [spec.tokenizer.decode(r) for r in label_runs(enc.labels)] == ["a cat sat on a mat\n"]
    # The human turn is dropped: BOS, then the image tokens, then the caption.
    assert enc.input_ids[0] == spec.tokenizer.bos_token_id
    assert enc.input_ids[1:17] == [spec.image_token_id] * 16
    assert spec.tokenizer.decode(enc.input_ids[17:]) == "a cat sat on a mat\n"
    for name in SINGLE_TURN:  # the templates left out of the multi-turn sweep refuse multi-turn samples
        with pytest.raises(ConversationError, match="needs exactly one human turn"):
            get_template(name).render(MULTI_TURN["conversations"], spec.tokenizer)


@dataclass(frozen=True)
class _BoundaryInsideAWord:
    """A deliberately bad template: the answer starts inside the word 'ASSISTANT'."""

    name: str = "bad"

    def render(self, turns, tokenizer):
        text = "USER: hi ASSIST"
        return Rendered(text + turns[1]["value"], ((len(text), len(text) + len(turns[1]["value"])),), True)


def test_tokenisation_mismatch_is_an_error_naming_the_sample(spec):
    rec = {"id": "bad-7", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ANT: ok"}]}
    with pytest.raises(LabelMaskError, match=r"sample bad-7: token .* spans the answer boundary"):
        encode_sample(rec, _BoundaryInsideAWord(), spec, "bad-7")
    # In the up-front check the same sample is reported (error) or dropped (skip), never trained fully masked.
    with pytest.raises(DataCheckError, match=r"label_mismatch: 1 sample\(s\)\n    id=bad-7"):
        check_samples([rec], None, _BoundaryInsideAWord(), spec, 512, "error")


def test_encode_batch_matches_one_by_one(spec):
    recs = [MULTI_TURN, {"id": "t", "conversations": [{"from": "human", "value": "hello"},
                                                       {"from": "gpt", "value": "hi there"}]}]
    tpl = get_template("v1")
    batch = encode_batch([tpl.render(r["conversations"], spec.tokenizer) for r in recs], [1, 0], ["mt", "t"], spec)
    for r, b in zip(recs, batch):
        single = encode_sample(r, tpl, spec, r["id"])
        assert (b.input_ids, b.labels) == (single.input_ids, single.labels)


def test_validate_turns_messages():
    with pytest.raises(ConversationError, match="turn 1 is 'human', expected 'gpt'"):
        validate_turns([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}])
    with pytest.raises(ConversationError, match="last turn must be from gpt"):
        validate_turns([{"from": "human", "value": "a"}])
    with pytest.raises(ConversationError, match=r"turn 1 \(gpt\) contains <image>"):
        validate_turns([{"from": "human", "value": "a"}, {"from": "gpt", "value": "<image>"}])
    with pytest.raises(ValueError, match="unknown conversation template --version 'v9'"):
        get_template("v9")
    assert {"plain", "v1", "vicuna_v1", "llava_v1", "chat_template"} <= set(TEMPLATES)


# ----------------------------------------------------------------------------- up-front checks

def _problem_dataset(tmp_path: Path) -> tuple[list[dict], Path]:
    images = write_images(tmp_path / "img", 3)
    (tmp_path / "img" / "corrupt.jpg").write_bytes(b"not an image at all")
    good = instruction_records(images, n_text=2)
    long_answer = " ".join(["word"] * 400)
    bad = [
        {"id": "no-file", "image": "missing.png", "conversations": good[0]["conversations"]},
        {"id": "corrupt", "image": "corrupt.jpg", "conversations": good[0]["conversations"]},
        {"id": "two-humans", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
        {"id": "gpt-first", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]},
        {"id": "image-without-placeholder", "image": "0.png", "conversations": good[-1]["conversations"]},
        {"id": "placeholder-without-image", "conversations": good[0]["conversations"]},
        {"id": "too-long", "conversations": [{"from": "human", "value": "talk"}, {"from": "gpt", "value": long_answer}]},
        {"id": "not-a-conversation", "image": "0.png"},
    ]
    return good + bad, tmp_path / "img"


EXPECTED_PROBLEMS = {
    "missing_image": ["no-file"],
    "unreadable_image": ["corrupt"],
    "malformed_conversation": ["two-humans", "gpt-first"],
    "image_placeholder_mismatch": ["image-without-placeholder", "placeholder-without-image"],
    "too_long": ["too-long"],
    "malformed_record": ["not-a-conversation"],
}


def test_check_reports_every_problem_with_ids_and_counts(tmp_path, spec):
    records, folder = _problem_dataset(tmp_path)
    with pytest.raises(DataCheckError) as err:
        check_samples(records, folder, get_template("v1"), spec, model_max_length=300, policy="error")
    msg = str(err.value)
    assert "data check: 13 samples, 8 with problems" in msg and "--on_bad_sample skip" in msg
    for reason, ids in EXPECTED_PROBLEMS.items():
        assert f"{reason}: {len(ids)} sample(s)" in msg
        for sid in ids:
            assert f"id={sid}:" in msg

    checked = check_samples(records, folder, get_template("v1"), spec, model_max_length=300, policy="skip")
    assert checked.ids == ["ins0", "ins1", "ins2", "txt0", "txt1"]
    assert checked.indices == [0, 1, 2, 3, 4]
    assert checked.report.counts == {k: len(v) for k, v in EXPECTED_PROBLEMS.items()}
    assert {k: [s for s, _ in v] for k, v in checked.report.problems.items()} == EXPECTED_PROBLEMS
    # Lengths: + for image samples, - for text-only, and equal to the real encoded length.
    for rec, sid, n in zip(checked.records, checked.ids, checked.lengths):
        enc = encode_sample(rec, get_template("v1"), spec, sid)
        assert n == (len(enc.input_ids) if "image" in rec else -len(enc.input_ids))
    assert json.loads(json.dumps(checked.report.to_dict()))["counts"]["too_long"] == 1


def test_check_length_limit_is_inclusive(spec):
    rec = {"id": "t", "conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "hi"}]}
    n = len(encode_sample(rec, get_template("v1"), spec, "t").input_ids)
    assert check_samples([rec], None, get_template("v1"), spec, n, "error").lengths == [-n]
    with pytest.raises(DataCheckError, match=f"{n} tokens > model_max_length {n - 1}"):
        check_samples([rec], None, get_template("v1"), spec, n - 1, "error")


def test_load_records_json_and_jsonl(tmp_path):
    recs = [{"id": 1, "conversations": []}, {"id": 2, "conversations": []}]
    assert load_records(write_json(tmp_path / "d.json", recs)) == recs
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    assert load_records(tmp_path / "d.jsonl") == recs
    (tmp_path / "bad.json").write_text('{"id": 1}')
    with pytest.raises(ValueError, match="bad.json: expected a JSON list of samples, found dict"):
        load_records(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="--data_path .*nope.json does not exist"):
        load_records(tmp_path / "nope.json")


# ----------------------------------------------------------------------------- images

def test_expand_to_square_centres_on_background():
    a = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3)  # H=2, W=5
    out = np.asarray(expand_to_square(Image.fromarray(a), (7, 8, 9)))
    ref = np.empty((5, 5, 3), np.uint8)
    ref[:] = (7, 8, 9)
    ref[1:3] = a  # (5 - 2) // 2 = 1 row of background above
    np.testing.assert_array_equal(out, ref)
    tall = np.asarray(expand_to_square(Image.fromarray(a.transpose(1, 0, 2).copy()), (7, 8, 9)))
    np.testing.assert_array_equal(tall[:, 1:3], a.transpose(1, 0, 2))
    assert (tall[:, [0, 3, 4]] == (7, 8, 9)).all()


def test_load_image_pad_vs_square(tmp_path, processor):
    ip = processor.image_processor
    Image.new("RGB", (64, 16), (255, 0, 0)).save(tmp_path / "wide.png")
    padded = load_image(tmp_path / "wide.png", ip, "pad")
    squashed = load_image(tmp_path / "wide.png", ip, "square")
    assert padded.shape == squashed.shape == (3, 32, 32)
    mean, std = torch.tensor(ip.image_mean)[:, None], torch.tensor(ip.image_std)[:, None]
    # 64x16 -> 64x64 canvas (image rows 24..39) -> 32x32: rows 0..10 are pure padding, which holds
    # the processor's mean colour (rounded to 8 bits) and so normalises to ~0.
    assert padded[:, :11].abs().max() <= (0.5 / 255) / std.min() + 1e-6
    # Rows 13..18 are pure image (red); the squashed image is red everywhere.
    red = ((torch.tensor([1.0, 0.0, 0.0])[:, None] - mean) / std)
    torch.testing.assert_close(padded[:, 13:19].reshape(3, -1), red.expand(3, 192), atol=1e-5, rtol=0)
    torch.testing.assert_close(squashed.reshape(3, -1), red.expand(3, 1024), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown --image_aspect_ratio 'anyres'"):
        load_image(tmp_path / "wide.png", ip, "anyres")


# ----------------------------------------------------------------------------- batches

def test_dataset_and_collator(tmp_path, spec, processor):
    images = write_images(tmp_path / "img", 2)
    checked = check_samples(instruction_records(images, 1), tmp_path / "img", get_template("v1"), spec, 512)
    ds = LlavaDataset(checked, get_template("v1"), spec, processor.image_processor, tmp_path / "img", "pad")
    items = [ds[2], ds[0], ds[1]]  # text-only first
    assert "pixel_values" not in items[0] and items[1]["pixel_values"].shape == (1, 3, 32, 32)
    batch = LlavaCollator(pad_token_id=spec.tokenizer.pad_token_id)(items)
    lengths = [len(it["input_ids"]) for it in items]
    assert batch["input_ids"].shape == (3, max(lengths))
    for b, (it, n) in enumerate(zip(items, lengths)):
        assert torch.equal(batch["input_ids"][b, :n], it["input_ids"])
        assert (batch["input_ids"][b, n:] == spec.tokenizer.pad_token_id).all()
        assert (batch["labels"][b, n:] == IGNORE_INDEX).all() and torch.equal(batch["labels"][b, :n], it["labels"])
        assert batch["attention_mask"][b].tolist() == [1] * n + [0] * (max(lengths) - n)
    # Images stacked in sample order, matching the image tokens in reading order.
    assert torch.equal(batch["pixel_values"], torch.cat([items[1]["pixel_values"], items[2]["pixel_values"]]))
    assert (batch["input_ids"] == spec.image_token_id).sum() == 2 * spec.image_seq_len


# ----------------------------------------------------------------------------- sampler

def test_modality_sampler_groups_batches_by_modality():
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(10, 100, 37)] + [-int(n) for n in rng.integers(10, 100, 23)]
    sampler = ModalityLengthGroupedSampler(lengths, batch_size=4, world_size=2, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(60))
    batches = [order[i:i + 8] for i in range(0, 48, 8)]  # global batch = 4 per device x 2 devices
    # 37 = 4*8 + 5 image, 23 = 2*8 + 7 text: 6 single-modality global batches, then the 12 leftovers.
    assert [sum(lengths[i] > 0 for i in b) for b in batches].count(8) == 4
    assert [sum(lengths[i] < 0 for i in b) for b in batches].count(8) == 2
    assert sum(lengths[i] > 0 for i in order[48:]) == 5 and sum(lengths[i] < 0 for i in order[48:]) == 7
    # Within a global batch, longest first (each device slice gets similar lengths).
    for b in batches:
        assert [abs(lengths[i]) for i in b] == sorted((abs(lengths[i]) for i in b), reverse=True)
    assert list(ModalityLengthGroupedSampler(lengths, 4, 2, seed=3)) == order
    sampler.set_epoch(1)
    assert list(sampler) != order and sorted(sampler) == list(range(60))
