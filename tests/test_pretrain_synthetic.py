"""Properties of the procedural dataset: deterministic by seed, synthetic captions of 60-150 word
pieces that name every object, 5 complete references per eval image, and LLaVA question/answer data
whose answers agree with the scene and with the rendered pixels."""

from __future__ import annotations

import json
import re

import numpy as np
from PIL import Image

from pretrain.synthetic import (SHORT_ANSWER_PROMPT, generate_sample, write_instruction_data,
                                write_retrieval_split)
from pretrain.synthetic.questions import NUMBER_WORDS
from pretrain.synthetic.scenes import COLOURS, POSITIONS

N = 150


def test_samples_are_a_function_of_seed_and_index():
    a, b, c = generate_sample(7, seed=3), generate_sample(7, seed=3), generate_sample(7, seed=4)
    assert (a.web, a.synthetic, a.scene) == (b.web, b.synthetic, b.scene)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert (a.synthetic, a.scene) != (c.synthetic, c.scene)


def test_synthetic_captions_are_long_complete_and_varied(tokenizer):
    samples = [generate_sample(i, seed=0) for i in range(N)]
    lengths = [len(p) for p in tokenizer.wordpieces([s.synthetic for s in samples])]
    assert 60 <= min(lengths) and max(lengths) <= 150, (min(lengths), max(lengths))
    for s in samples:  # complete: every object's colour and shape is named
        words = set(re.findall(r"[a-z]+", s.synthetic.lower()))
        assert all({o.colour, o.shape} <= words for o in s.scene.objects), s.synthetic
    assert len({s.synthetic.split(".")[0] for s in samples}) > 1  # varied phrasing of the overview
    # Web captions are partial: far fewer of them name every object.
    complete_web = sum(all(o.colour in s.web and o.shape in s.web for o in s.scene.objects) for s in samples)
    assert complete_web < 0.6 * N, complete_web


def test_retrieval_split_has_five_complete_references(tmp_path):
    data = json.loads(write_retrieval_split(tmp_path, 20, seed=5).read_text())
    assert len(data["images"]) == 20
    for i, entry in enumerate(data["images"]):
        assert (tmp_path / entry["filepath"] / entry["filename"]).is_file()
        assert len(entry["sentences"]) == 5
        scene = generate_sample(i, seed=5).scene
        for sentence in entry["sentences"]:
            assert all(f"{o.colour} {o.shape}" in sentence["raw"] for o in scene.objects), sentence["raw"]


def _pixel(image: Image.Image, obj) -> np.ndarray:
    side = image.size[0]
    return np.asarray(image.convert("RGB"), dtype=float)[int(obj.y * side), int(obj.x * side)]


def test_instruction_answers_agree_with_scene_and_pixels(tmp_path):
    paths = write_instruction_data(tmp_path / "a", 40, seed=2)
    again = write_instruction_data(tmp_path / "b", 40, seed=2)
    assert paths["instruct"].read_text() == again["instruct"].read_text()  # deterministic
    records = json.loads(paths["instruct"].read_text())
    kinds_seen = set()
    for i, record in enumerate(records):
        scene = generate_sample(i, seed=2).scene
        image = Image.open(paths["images"] / record["image"])
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<image>\n") and sum("<image>" in t["value"] for t in turns) == 1
        for q, a in zip(turns[::2], turns[1::2]):
            text, answer = q["value"].replace("<image>\n", "").removesuffix(SHORT_ANSWER_PROMPT), a["value"]
            by_name = {o.name: o for o in scene.objects}
            if m := re.fullmatch(r"What color is the (\w+)\?", text):
                [obj] = [o for o in scene.objects if o.shape == m[1]]
                assert answer == obj.colour
                # The answer is the colour actually drawn at the object's centre (+-6 levels of noise).
                assert np.abs(_pixel(image, obj) - COLOURS[answer]).max() <= 8
                kinds_seen.add("colour")
            elif m := re.fullmatch(r"What shape is the (\w+) object\?", text):
                [obj] = [o for o in scene.objects if o.colour == m[1]]
                assert answer == obj.shape
                kinds_seen.add("shape")
            elif text == "How many shapes are there?":
                assert answer == NUMBER_WORDS[len(scene.objects)]
                kinds_seen.add("count")
            elif m := re.fullmatch(r"Where is the (\w+ \w+)\?", text):
                assert answer == POSITIONS[by_name[m[1]].cell]
                kinds_seen.add("position")
            elif m := re.fullmatch(r"Is there a (\w+ \w+) in the image\?", text):
                assert answer == ("yes" if m[1] in by_name else "no")
                if answer == "yes":
                    assert np.abs(_pixel(image, by_name[m[1]]) - COLOURS[by_name[m[1]].colour]).max() <= 8
                kinds_seen.add(answer)
            else:
                raise AssertionError(f"unexpected question {text!r}")
    assert kinds_seen == {"colour", "shape", "count", "position", "yes", "no"}
    captions = json.loads(paths["captions"].read_text())
    assert [c["image"] for c in captions] == [r["image"] for r in records]
