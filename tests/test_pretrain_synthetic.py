"""Properties of the procedural dataset: deterministic by seed, long synthetic captions that name
every object in the clean world, every configured caption rate measured on generated text (and the
label rate on pixels), 5 complete references per eval image, and LLaVA question/answer data whose
answers agree with the scene and with the rendered pixels."""

from __future__ import annotations

import json
import re

import numpy as np
from PIL import Image

import pytest

from pretrain.synthetic import (CLEAN_WORLD, DEFAULT_WORLD, SHORT_ANSWER_PROMPT, WorldConfig, generate_sample,
                                write_instruction_data, write_retrieval_split)
from pretrain.synthetic.questions import NUMBER_WORDS
from pretrain.synthetic.scenes import COLOURS, LABEL_BAND, LABELS, POSITIONS, SHAPES

N = 150


def test_samples_are_a_function_of_seed_and_index():
    a, b, c = generate_sample(7, seed=3), generate_sample(7, seed=3), generate_sample(7, seed=4)
    assert (a.web, a.synthetic, a.scene) == (b.web, b.synthetic, b.scene)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert (a.synthetic, a.scene) != (c.synthetic, c.scene)


def test_clean_world_captions_are_long_complete_and_varied(tokenizer):
    samples = [generate_sample(i, seed=0, world=CLEAN_WORLD) for i in range(N)]
    lengths = [len(p) for p in tokenizer.wordpieces([s.synthetic for s in samples])]
    assert 50 <= min(lengths) and max(lengths) <= 150, (min(lengths), max(lengths))
    for s in samples:  # complete: every object's colour and shape is named
        words = set(re.findall(r"[a-z]+", s.synthetic.lower()))
        assert all({o.colour, o.shape} <= words for o in s.scene.objects), s.synthetic
        assert s.scene.label is None
    assert len({s.synthetic.split(".")[0] for s in samples}) > 1  # varied phrasing of the overview
    # Web captions are partial: far fewer of them name every object.
    complete_web = sum(all(o.colour in s.web and o.shape in s.web for o in s.scene.objects) for s in samples)
    assert complete_web < 0.6 * N, complete_web


_PAIR = re.compile(rf"\b({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b")
_PAIR_REVERSED = re.compile(rf"\b({'|'.join(SHAPES)}) ({'|'.join(COLOURS)})\b")


def _pairs(text: str) -> set[tuple[str, str]]:
    """(colour, shape) pairs a caption names ("red circle", or alt-text's "circle red")."""
    return set(_PAIR.findall(text)) | {(c, s) for s, c in _PAIR_REVERSED.findall(text)}


def _has_band(image: Image.Image, label: str) -> bool:
    """The bottom rows of ``image`` are the label's band colour (read from pixels, not the scene)."""
    rows = np.asarray(image, dtype=float)[-max(1, int(image.size[1] * LABEL_BAND) + 1) // 2:]
    return bool((np.abs(rows - LABELS[label]).max(-1) <= 2).mean() > 0.5)


def _within(measured: int, trials: int, rate: float, name: str) -> None:
    """``measured`` successes of ``trials`` agree with ``rate`` within 4 binomial standard errors."""
    se = max((rate * (1 - rate) / trials) ** 0.5, 1 / trials)
    assert abs(measured / trials - rate) <= 4 * se, f"{name}: measured {measured / trials:.3f} of {trials}, configured {rate}"


@pytest.mark.parametrize("world", [DEFAULT_WORLD, WorldConfig(0.3, 0.5, 0.3, 0.35, 0.4, 0.25)], ids=["default", "other"])
def test_measured_caption_rates_match_the_configured_ones(world):
    """Every rate of the world is measured from the generated text (object mentions, label names)
    and pixels (label bands), and agrees with its configured value within sampling error."""
    samples = [generate_sample(i, seed=11, world=world) for i in range(3000)]
    labelled = [s for s in samples if s.scene.label is not None]
    _within(sum(any(_has_band(s.image, name) for name in LABELS) for s in samples), len(samples), world.label_rate,
            "label_rate (pixels)")
    assert all(_has_band(s.image, s.scene.label) for s in labelled)
    _within(sum(s.scene.label in s.web for s in labelled), len(labelled), world.web_names_label, "web_names_label")
    _within(sum(s.scene.label in s.synthetic for s in labelled), len(labelled), world.synthetic_names_label,
            "synthetic_names_label")
    assert not any(name in s.synthetic for s in samples for name in LABELS if name != s.scene.label)
    # Web colour lies: among web captions that name an object, those naming a pair absent from the scene.
    named = [s for s in samples if _pairs(s.web)]
    wrong = sum(bool(_pairs(s.web) - {(o.colour, o.shape) for o in s.scene.objects}) for s in named)
    _within(wrong, len(named), world.web_wrong_colour, "web_wrong_colour")
    # Recaption omissions (per object) and hallucinations (per caption).
    objects = [(s, (o.colour, o.shape)) for s in samples for o in s.scene.objects]
    omitted = sum(pair not in _pairs(s.synthetic) for s, pair in objects)
    _within(omitted, len(objects), world.synthetic_omits_object, "synthetic_omits_object")
    hallucinated = sum(bool(_pairs(s.synthetic) - {(o.colour, o.shape) for o in s.scene.objects}) for s in samples)
    _within(hallucinated, len(samples), world.synthetic_hallucinates, "synthetic_hallucinates")


def test_default_synthetic_captions_stay_long(tokenizer):
    lengths = [len(p) for p in tokenizer.wordpieces([generate_sample(i, seed=0).synthetic for i in range(N)])]
    assert 40 <= min(lengths) and max(lengths) <= 150 and 60 <= np.median(lengths), (min(lengths), np.median(lengths))


def test_world_rates_must_be_probabilities():
    with pytest.raises(ValueError, match="WorldConfig.synthetic_hallucinates must be a probability"):
        WorldConfig(synthetic_hallucinates=1.5)


def test_retrieval_split_has_five_complete_references(tmp_path):
    data = json.loads(write_retrieval_split(tmp_path, 20, seed=5).read_text())
    assert len(data["images"]) == 20
    for i, entry in enumerate(data["images"]):
        assert (tmp_path / entry["filepath"] / entry["filename"]).is_file()
        assert len(entry["sentences"]) == 5
        scene = generate_sample(i, seed=5).scene
        for sentence in entry["sentences"]:
            assert all(f"{o.colour} {o.shape}" in sentence["raw"] for o in scene.objects), sentence["raw"]
            assert scene.label is None or scene.label in sentence["raw"]


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
