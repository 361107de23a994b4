"""The ``clips_llava`` lmms-eval adapter, called in-process on a tiny assembled LLaVA (clips-tiny
tower + tiny Llama), checked against plain transformers calls on the same folder."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from eval.lmms.taskdata import draw_scene, random_scene
from eval.lmms.tasks import common
from helpers.hf_llava import hf_answer_nll, hf_generate

pytestmark = pytest.mark.usefixtures("one_thread")


def make_request(kind: str, args: tuple, doc_id: int, task: str = "t"):
    from lmms_eval.api.instance import Instance

    return Instance(request_type=kind, arguments=args, idx=0, metadata={"task": task, "doc_id": doc_id, "repeats": 1})


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    from llava_integration.assemble import assemble_llava
    from llava_integration.tiny_llm import build_tiny_llm

    root = tmp_path_factory.mktemp("lmms_adapter")
    llm = build_tiny_llm(root / "llm")
    return {"llm": llm, "llava": assemble_llava("clips:clips-tiny", llm, root / "llava")}


@pytest.fixture(scope="module")
def hf(folders):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    return (LlavaForConditionalGeneration.from_pretrained(folders["llava"]).eval(),
            AutoProcessor.from_pretrained(folders["llava"]))


QUESTIONS = ["What colour is the circle?", "Is there a star in the image?", "Which shape is red?",
             "How many shapes are there?", "Describe it."]
DOCS = [{"image": draw_scene(random_scene(random.Random(k)), 64), "question": q} for k, q in enumerate(QUESTIONS)]


@pytest.fixture(scope="module")
def adapter(folders):
    from eval.lmms.adapter import ClipsLlava

    model = ClipsLlava(pretrained=str(folders["llava"]), device="cpu", batch_size=3)
    model.task_dict = {"t": {"test": DOCS}}
    return model


def visual(doc: dict) -> list[Image.Image]:
    return [doc["image"]]


GREEDY = {"max_new_tokens": 6, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False}


# ----------------------------------------------------------------------------- tests

def test_entry_point_registers_clips_llava():
    from lmms_eval.models import get_model

    from eval.lmms.adapter import ClipsLlava

    assert get_model("clips_llava") is ClipsLlava


def test_prompt_is_the_folders_vicuna_template(adapter):
    assert adapter.render_prompt("Is there a star?", 1) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nIs there a star? ASSISTANT:")
    assert adapter.render_prompt("<image>\nIs there a star?", 1) == adapter.render_prompt("Is there a star?", 1)
    with pytest.raises(ValueError, match="the context has 2 <image> placeholders but 1 images"):
        adapter.render_prompt("<image> and <image>", 1)


def test_generate_until_batched_equals_plain_generate(adapter, hf):
    """Batches of 3 (left padding), two generation_kwargs groups, original order kept."""
    short = {**GREEDY, "max_new_tokens": 2}
    requests = [make_request("generate_until", (d["question"], dict(GREEDY if k % 2 else short), visual, k, "t", "test"), k)
                for k, d in enumerate(DOCS)]
    got = adapter.generate_until(requests)
    expected = [hf_generate(*hf, d["image"], d["question"], 6 if k % 2 else 2) for k, d in enumerate(DOCS)]
    assert got == expected


def test_generation_stops_at_until(adapter, hf):
    """A stop string halts generation and is cut off with everything after it."""
    doc = DOCS[2]
    full = hf_generate(*hf, doc["image"], doc["question"], 6)
    stop = full[3:5]
    assert stop and full.index(stop) > 0
    request = make_request("generate_until", (doc["question"], {**GREEDY, "until": [stop]}, visual, 2, "t", "test"), 2)
    assert adapter.generate_until([request]) == [full[:full.index(stop)]]


def test_generate_until_multi_round_feeds_each_answer_to_the_next_round(adapter, hf):
    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        if round_idx == 1:
            return [doc["image"]], f"You said {previous_output[-1]!r}. Is that right?", False, previous_output, {"r": 1}
        assert previous_round_info == {"r": 1}
        return None, None, True, previous_output, None

    requests = [make_request("generate_until_multi_round",
                             (DOCS[k]["question"], dict(GREEDY), visual, doc_to_text, k, "t", "test"), k) for k in (0, 1)]
    got = adapter.generate_until_multi_round(requests)
    for k, rounds in zip((0, 1), got):
        first = hf_generate(*hf, DOCS[k]["image"], DOCS[k]["question"], 6)
        second = hf_generate(*hf, DOCS[k]["image"], f"You said {first!r}. Is that right?", 6)
        assert rounds == [first, second]


def test_loglikelihood_is_the_answer_nll_from_the_models_own_loss(adapter, hf):
    continuations = [" A", " B", " yes", " red circle"]
    requests = [make_request("loglikelihood", (d["question"], c, visual, k, "t", "test"), k)
                for k, d in enumerate(DOCS[:2]) for c in continuations]
    got = adapter.loglikelihood(requests)
    expected = [hf_answer_nll(*hf, d["image"], d["question"], c) for d in DOCS[:2] for c in continuations]
    assert [g for _, g in got] == [g for _, g in expected]
    assert [nll for nll, _ in got] == pytest.approx([nll for nll, _ in expected], rel=1e-4, abs=1e-4)
    # a callable target (output_type: loglikelihood) is applied to the doc
    by_doc = make_request("loglikelihood", (DOCS[0]["question"], lambda doc: " A", visual, 0, "t", "test"), 0)
    nll, greedy = adapter.loglikelihood([by_doc])[0]
    assert greedy == got[0][1] and nll == pytest.approx(got[0][0])


def test_errors_propagate_instead_of_empty_answers(adapter):
    from eval.lmms.taskdata import TaskDataError

    adapter.task_dict["bad"] = {"test": [{"question_id": 9, "question": "q", "image": "bm90IGFuIGltYWdl"},
                                         {"question_id": 10, "question": "q", "image": "/data/img.png"}]}
    broken = make_request("generate_until", ("q", dict(GREEDY), common.doc_to_visual, 0, "bad", "test"), 0, "bad")
    with pytest.raises(TaskDataError, match="record question_id=9"):
        adapter.generate_until([broken])
    a_path = make_request("generate_until", ("q", dict(GREEDY), lambda doc: [doc["image"]], 1, "bad", "test"), 1, "bad")
    with pytest.raises(TypeError, match=r"bad doc 1: visuals must be PIL images, got \['str'\]"):
        adapter.generate_until([a_path])
    typo = make_request("generate_until", ("q", {"max_new_token": 3}, visual, 0, "t", "test"), 0)
    with pytest.raises(ValueError, match=r"generation_kwargs \['max_new_token'\] are not supported"):
        adapter.generate_until([typo])


def test_bad_model_args_are_clear_errors(folders):
    from eval.lmms.adapter import ClipsLlava

    llava = str(folders["llava"])
    with pytest.raises(ValueError, match=r"unknown model_args \['temprature'\]; accepted: \['pretrained', 'device'"):
        ClipsLlava(pretrained=llava, temprature=0)
    with pytest.raises(ValueError, match=r"dtype='fp8'; choose from"):
        ClipsLlava(pretrained=llava, dtype="fp8")
    with pytest.raises(ValueError, match=r"batch_size='auto'; pass an integer"):
        ClipsLlava(pretrained=llava, batch_size="auto")
    with pytest.raises(ValueError, match=r"holds a 'llama' model; clips_llava evaluates"):
        ClipsLlava(pretrained=str(folders["llm"]))


def test_folder_without_chat_template_needs_one_named(folders, tmp_path, adapter):
    from eval.lmms.adapter import ClipsLlava

    bare = shutil.copytree(folders["llava"], tmp_path / "bare")
    for f in [*bare.glob("chat_template.*")]:
        f.unlink()
    with pytest.raises(ValueError, match="has no chat template; pass chat_template=vicuna_v1"):
        ClipsLlava(pretrained=str(bare))
    named = ClipsLlava(pretrained=str(bare), chat_template="vicuna_v1")
    assert named.render_prompt("Hi?", 1) == adapter.render_prompt("Hi?", 1)
    with pytest.raises(ValueError, match="chat_template='llama9' is neither a known template"):
        ClipsLlava(pretrained=str(bare), chat_template="llama9")


def test_generation_settings():
    from eval.lmms.adapter import GenerationSettings

    s = GenerationSettings.from_gen_kwargs({"until": "ASSISTANT:", "temperature": 0.2, "do_sample": False,
                                            "image_aspect_ratio": "pad", "max_new_tokens": 5}, "mmvet")
    assert not s.sample and s.until == ("ASSISTANT:",)
    assert s.generate_kwargs() == {"max_new_tokens": 5, "num_beams": 1, "do_sample": False, "repetition_penalty": None,
                                   "temperature": None, "top_p": None, "top_k": None}
    assert GenerationSettings.from_gen_kwargs({"temperature": 0.7, "top_p": 0.9}, "t").generate_kwargs()["top_p"] == 0.9
    assert GenerationSettings.from_gen_kwargs({"temperature": 0.7}, "t").sample  # LLaVA: temperature > 0 samples
    assert s.cut("B. red ASSISTANT: more") == "B. red "
    with pytest.raises(ValueError, match="t: do_sample=true needs temperature > 0"):
        GenerationSettings.from_gen_kwargs({"do_sample": True, "temperature": 0}, "t")
    with pytest.raises(ValueError, match="'until' must be a non-empty string"):
        GenerationSettings.from_gen_kwargs({"until": [""]}, "t")


def test_loglikelihood_pairs_reach_the_task_unstringified():
    """lmms-eval 0.7.3 stringifies (nll, greedy) pairs; the adapter's patch keeps them, and only them."""
    from lmms_eval import evaluator
    from lmms_eval.api.instance import GenerationResult, unwrap_generation_output

    from eval.lmms.adapter import keep_loglikelihood_pairs

    assert unwrap_generation_output((1.5, True)) == ("(1.5, True)", None)  # the bug being worked around
    keep_loglikelihood_pairs()
    assert evaluator.unwrap_generation_output((1.5, True)) == ((1.5, True), None)
    assert evaluator.unwrap_generation_output([2.0, False]) == ((2.0, False), None)
    assert evaluator.unwrap_generation_output("text") == ("text", None)
    assert evaluator.unwrap_generation_output(GenerationResult("t")) == ("t", None)
    assert keep_loglikelihood_pairs() is False  # idempotent


def test_the_chat_template_module_pulls_in_no_training_code():
    """eval imports the vicuna template from a leaf module: importing it loads no other module of
    llava_integration (conversation, data, training) and nothing heavy."""
    code = ("import sys, llava_integration.chat_template as c; assert c.VICUNA_CHAT_TEMPLATE; "
            "print(sorted(m for m in sys.modules if m.startswith(('llava_integration', 'torch', 'transformers'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['llava_integration', 'llava_integration.chat_template']"
