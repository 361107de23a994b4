"""Local lmms-eval tasks: generated data, metric functions, task YAMLs, ``clips eval lmms`` plumbing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval.lmms import runner
from eval.lmms.taskdata import (COLOURS, OPTION_LETTERS, SHAPES, TASK_DATA_FILES, TaskDataError, decode_image,
                                encode_image, write_task_data)
from eval.lmms.tasks import common, mmbench, pope


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lmms_data")
    write_task_data(out, num_scenes=10, seed=3)
    return out


def _records(folder: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def _has_colour(image: Image.Image, colour: str) -> bool:
    return bool((np.asarray(image) == np.array(COLOURS[colour], dtype=np.uint8)).all(-1).any())


def test_generation_is_deterministic_and_seeded(tmp_path, data):
    again = write_task_data(tmp_path / "again", num_scenes=10, seed=3)
    other = write_task_data(tmp_path / "other", num_scenes=10, seed=4)
    for name, path in again.items():
        assert path.read_bytes() == (data / name).read_bytes()
        assert path.read_bytes() != other[name].read_bytes()


def test_pope_records_are_balanced_and_ask_about_a_present_and_an_absent_object(data):
    records = _records(data, "clips_pope.jsonl")
    assert len(records) == 20 and Counter(r["answer"] for r in records) == {"yes": 10, "no": 10}
    assert [r["question_id"] for r in records] == list(range(20))
    for present, absent in zip(records[0::2], records[1::2]):
        assert (present["answer"], absent["answer"]) == ("yes", "no")
        assert present["image"] == absent["image"] and present["image_source"] == absent["image_source"]
        objects = [tuple(r["question"].removeprefix("Is there a ").removesuffix(" in the image?").split())
                   for r in (present, absent)]
        assert objects[0] != objects[1] and all(c in COLOURS and s in SHAPES for c, s in objects)
        assert _has_colour(decode_image(present["image"]), objects[0][0])


def test_colour_answers_are_drawn_in_the_image(data):
    """Every colour answer (GQA and MMBench) is a colour present in the record's pixels; options
    that are not the answer may or may not be, but at least one other colour is absent."""
    gqa = [r for r in _records(data, "clips_gqa.jsonl") if r["answer"] in COLOURS]
    mmb = [r for r in _records(data, "clips_mmbench.jsonl") if r[r["answer"]] in COLOURS]
    assert gqa and mmb
    for r in gqa:
        assert _has_colour(decode_image(r["image"]), r["answer"])
    for r in mmb:
        image = decode_image(r["image"])
        assert _has_colour(image, r[r["answer"]])
        assert not all(_has_colour(image, r[k]) for k in OPTION_LETTERS)


def test_mmbench_circular_rotations(data):
    records = _records(data, "clips_mmbench.jsonl")
    assert len(records) == 40
    groups: dict[int, list[dict]] = {}
    for r in records:
        groups.setdefault(r["index"] % 1_000_000, []).append(r)
    assert sorted(groups) == list(range(10))
    for rows in groups.values():
        assert sorted(r["index"] // 1_000_000 for r in rows) == [0, 1, 2, 3]
        answers = {r[r["answer"]] for r in rows}  # the right option's text is the same in every rotation
        assert len(answers) == 1 and len({r["question"] for r in rows}) == 1
        assert sorted(r["answer"] for r in rows) == list(OPTION_LETTERS)  # the answer visits every letter
        first = [rows[0][k] for k in OPTION_LETTERS]
        for r in rows:
            k = r["index"] // 1_000_000
            assert [r[x] for x in OPTION_LETTERS] == first[k:] + first[:k]


def test_image_round_trip_and_bad_image_names_the_record():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (7, 5, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(decode_image(encode_image(image))), np.asarray(image))
    with pytest.raises(TaskDataError, match=r"record question_id=7: 'image' is not a base64-encoded image"):
        common.doc_to_visual({"question_id": 7, "image": "bm90IGFuIGltYWdl"})
    with pytest.raises(TaskDataError, match=r"record index=3"):
        common.doc_to_visual({"index": 3, "image": "%%%"})


def test_prompts():
    kwargs = {"pre_prompt": "Q: ", "post_prompt": "\nAnswer the question using a single word or phrase."}
    assert common.doc_to_text({"question": " Is there a star in the image? "}, kwargs) == \
        "Q: Is there a star in the image?\nAnswer the question using a single word or phrase."
    doc = {"question": "What colour is the cross?", "hint": "", "A": "red", "B": "blue", "C": "white", "D": ""}
    assert mmbench.doc_to_text(doc, {"post_prompt": "\nAnswer with the option's letter."}) == (
        "What colour is the cross? There are several options:\nA. red\nB. blue\nC. white\nAnswer with the option's letter.")
    assert mmbench.doc_to_choice(doc) == ["A", "B", "C"]
    assert mmbench.doc_to_text({**doc, "hint": "Look closely."}).startswith("Look closely. What colour")


@pytest.mark.parametrize("answer,expected", [
    ("yes", "yes"), ("Yes, there is a circle.", "yes"), ("No", "no"), ("no.", "no"), ("NO", "no"),
    ("There is not a circle in the image.", "no"), ("Yes. No other shape is there.", "yes"), ("blue", "yes"), ("", "yes"),
])
def test_pope_answer_normalisation(answer, expected):
    assert pope.normalise_answer(answer) == expected


def test_pope_metrics_against_hand_counts():
    # predictions yes,yes,yes,no,no,no,yes against answers yes,no,yes,yes,no,no,no: TP 2, FP 2, FN 1, TN 2
    preds = ["Yes.", "yes", "yes", "No", "no", "No, it is not.", "blue"]
    answers = ["yes", "no", "yes", "yes", "no", "no", "no"]
    items = [pope.process_results({"question_id": i, "answer": a}, [p])["pope_accuracy"]
             for i, (p, a) in enumerate(zip(preds, answers))]
    assert pope.accuracy(items) == pytest.approx(4 / 7)
    assert pope.precision(items) == pytest.approx(2 / 4)
    assert pope.recall(items) == pytest.approx(2 / 3)
    assert pope.f1_score(items) == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert pope.yes_ratio(items) == pytest.approx(4 / 7)
    all_no = [{"prediction": "no", "answer": "yes"}] * 3
    assert pope.precision(all_no) == pope.f1_score(all_no) == 0.0
    with pytest.raises(ValueError, match="question_id=5: answer must be yes/no, got 'maybe'"):
        pope.process_results({"question_id": 5, "answer": "maybe"}, ["yes"])


@pytest.mark.parametrize("response,expected", [
    ("B", "B"), ("(C)", "C"), ("D.", "D"), ("The answer is A.", "A"), ("white", "C"), ("It is blue", "B"),
    ("A or B", None), ("green", None), ("", None), ("red and blue", None),
])
def test_mmbench_choice_extraction(response, expected):
    assert mmbench.extract_choice(response, {"A": "red", "B": "blue", "C": "white", "D": "black"}) == expected


def test_mmbench_accuracy_and_circular_accuracy():
    # group 0: right in all 4 rotations; group 1: right in 3 of 4; group 2: one rotation only, right
    rows = [(0, "A", "A"), (1_000_000, "B", "B"), (2_000_000, "C", "C"), (3_000_000, "D", "D"),
            (1, "A", "A"), (1_000_001, "B", "B"), (2_000_001, "C", "C"), (3_000_001, "A", "D"),
            (2, "B", "B")]
    items = [{"index": i, "prediction": p, "answer": a} for i, p, a in rows]
    assert mmbench.accuracy(items) == pytest.approx(8 / 9)
    assert mmbench.circular_accuracy(items) == pytest.approx(2 / 3)


def test_task_yamls_load_in_lmms_eval_and_read_the_data_folder(data):
    """Installed task YAMLs load with lmms-eval's own loader: includes resolved, every
    ``!function`` imported, and ``data_files`` resolved to the data folder's file."""
    from lmms_eval.utils import load_yaml_config

    assert runner.install_tasks(data) == list(TASK_DATA_FILES)
    for task, data_file in TASK_DATA_FILES.items():
        config = load_yaml_config(str(data / f"{task}.yaml"))
        assert config["task"] == task and config["tag"] == "clips_local"
        assert config["dataset_kwargs"]["data_files"] == {"test": str(data / data_file)}
        assert callable(config["doc_to_visual"]) and callable(config["doc_to_text"])


def test_install_tasks_installs_only_tasks_with_data(tmp_path, data):
    only_pope = tmp_path / "pope_only"
    only_pope.mkdir()
    (only_pope / "clips_pope.jsonl").write_bytes((data / "clips_pope.jsonl").read_bytes())
    assert runner.install_tasks(only_pope) == ["clips_pope"]
    assert sorted(p.name for p in only_pope.iterdir()) == [
        "_default_template_clips_mmbench_yaml", "clips_pope.jsonl", "clips_pope.yaml"]
    with pytest.raises(FileNotFoundError, match="holds none of the task data files"):
        runner.install_tasks(tmp_path / "empty")


def test_lmms_eval_argv_defaults_and_conflicts():
    assert runner.lmms_eval_argv(["--tasks", "pope"], "d") == [
        "--tasks", "pope", "--model", "clips_llava", "--output_path", "eval_results/lmms", "--include_path", "d"]
    # Flags the user gave are kept as given (llava_hf's device fixes: tests/test_lmms_hf_tasks.py).
    assert runner.lmms_eval_argv(["--model=clips_llava", "--output_path", "o"]) == ["--model=clips_llava", "--output_path", "o"]
    with pytest.raises(ValueError, match="--data-dir or --include_path, not both"):
        runner.lmms_eval_argv(["--include_path", "x"], "d")


def test_run_lmms_eval_returns_the_new_results_file_or_fails(tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "model" / "old_results.json").write_text('{"results": {}}')
    calls = []

    def lmms_eval_writing(path):
        def run(cmd, **kwargs):
            calls.append(cmd)
            if path is not None:
                path.write_text('{"results": {}}')
            return subprocess.CompletedProcess(cmd, 0)
        return run

    monkeypatch.setattr(runner.subprocess, "run", lmms_eval_writing(out / "model" / "new_results.json"))
    assert runner.run_lmms_eval(["--tasks", "x", "--output_path", str(out)]) == out / "model" / "new_results.json"
    assert calls[0] == [sys.executable, "-m", "lmms_eval", "--tasks", "x", "--output_path", str(out)]
    monkeypatch.setattr(runner.subprocess, "run", lmms_eval_writing(None))  # lmms-eval caught an error: exit 0, no file
    with pytest.raises(runner.LmmsEvalError, match="exited with status 0 and wrote no results under"):
        runner.run_lmms_eval(["--output_path", str(out)])
    with pytest.raises(ValueError, match="needs --output_path"):
        runner.run_lmms_eval(["--tasks", "x"])


def test_cli_is_light_and_documents_its_flags():
    """``clips eval`` stays importable without lmms-eval; ``clips eval lmms --help`` shows our flag."""
    code = ("import sys, eval.cli, eval.lmms.cli; heavy = {'lmms_eval', 'transformers', 'torch'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "clips_cli.main", "eval", "lmms", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "--data-dir" in out and "clips_llava" in out
