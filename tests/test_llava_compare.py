"""``clips llava compare``: two towers through stage 1 + stage 2 + lmms-eval under one recipe."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers.towers import save_hf_clip_vision

from llava_integration.compare import (CompareData, compare_table, compare_towers, parse_extra, task_metrics,
                                       tower_name)
from helpers.llava_records import caption_records, instruction_records, write_images, write_json


def write_compare_data(root: Path, n_images: int = 8, n_scenes: int = 3) -> Path:
    """The ``--data`` layout: stage1.json, stage2.json, images/ and an lmms-eval task folder eval/."""
    from eval.lmms.taskdata import write_task_data

    images = write_images(root / "images", n_images)
    write_json(root / "stage1.json", caption_records(images))
    write_json(root / "stage2.json", instruction_records(images, n_text=2))
    write_task_data(root / "eval", num_scenes=n_scenes, image_size=32)
    return root


def test_tower_names_and_stage_args():
    assert tower_name("clips:clips-tiny") == "clips-clips-tiny"
    assert tower_name("clips:/ckpt/clips-l14-336/") == "clips-clips-l14-336"
    assert tower_name("clips:/ckpt/x/open_clip_pytorch_model.bin") == "clips-open_clip_pytorch_model"
    assert parse_extra(["finetune=--mm_tunable_parts a,b --max_steps 3", "finetune=--seed 1"]) == {
        "finetune": ["--mm_tunable_parts", "a,b", "--max_steps", "3", "--seed", "1"]}
    with pytest.raises(ValueError, match="expected STAGE='FLAGS'"):
        parse_extra(["--max_steps 3"])
    with pytest.raises(FileNotFoundError, match="missing stage1.json"):
        CompareData.from_dir("/no/such/data")


@pytest.mark.slow
def test_compare_two_towers_quick_and_resume(tmp_path, monkeypatch):
    from llava_integration.tiny_llm import build_tiny_llm

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    llm = build_tiny_llm(tmp_path / "llm")
    data = CompareData.from_dir(write_compare_data(tmp_path / "data"))
    clip = save_hf_clip_vision(tmp_path / "hf-clip")
    towers = ["clips:clips-tiny", f"clip:{clip}"]
    out = tmp_path / "cmp"
    paths = compare_towers(towers, llm, data, out, recipe="quick", tasks=["clips_pope", "clips_gqa"],
                           eval_batch_size=4)

    report = json.loads(paths["json"].read_text())
    names = ["clips-clips-tiny", "clip-hf-clip"]
    assert list(report["towers"]) == names
    table = paths["table"].read_text()
    assert table.splitlines()[0] == "| task | metric | clips-clips-tiny | clip-hf-clip |"
    assert paths["plot"].stat().st_size > 1000
    for name, spec in zip(names, towers):
        record = report["towers"][name]
        assert record["tower"] == spec
        # The table's numbers are lmms-eval's own, read back from its results file.
        results = json.loads(Path(record["results"]).read_text())["results"]
        assert record["metrics"]["clips_gqa"]["exact_match"] == results["clips_gqa"]["exact_match,none"]
        assert set(record["metrics"]) == {"clips_pope", "clips_gqa"}
        assert f"{record['metrics']['clips_gqa']['exact_match']:.4f}" in table
        # Same recipe: both towers' stages ran the same flags with the same seeds.
        for stage in ("stage1", "stage2"):
            args = json.loads((out / "towers" / name / stage / "llava_args.json").read_text())["training"]
            assert (args["seed"], args["data_seed"], args["max_steps"]) == (0, 0, 6)
            assert args["group_by_modality_length"] is False
        assert all(loss is not None for loss in record["train_loss"].values())

    # Resumable: finished towers are neither trained nor evaluated again.
    import eval.lmms.runner
    import llava_integration.train

    def fail(*args, **kwargs):
        raise AssertionError("a finished tower was re-run")

    monkeypatch.setattr(llava_integration.train, "run_stage", fail)
    monkeypatch.setattr(eval.lmms.runner, "run_lmms_eval", fail)
    paths["table"].unlink()
    again = compare_towers(towers, llm, data, out, recipe="quick", tasks=["clips_pope", "clips_gqa"])
    assert again["table"].read_text() == table
    with pytest.raises(ValueError, match="holds a comparison with a different seed"):
        compare_towers(towers, llm, data, out, recipe="quick", tasks=["clips_pope", "clips_gqa"], seed=1)


def test_task_metrics_and_table(tmp_path):
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"results": {"clips_pope": {
        "alias": "clips_pope", "pope_accuracy,none": 0.5, "pope_accuracy_stderr,none": "N/A", "pope_f1,none": 0.25}}}))
    metrics = task_metrics(results)
    assert metrics == {"clips_pope": {"pope_accuracy": 0.5, "pope_f1": 0.25}}
    table = compare_table({"a": {"metrics": metrics, "train_loss": {"pretrain": 1.0, "finetune": 2.0}},
                           "b": {"metrics": {}, "train_loss": {}}})
    assert "| clips_pope | pope_accuracy | 0.5000 | - |" in table
    assert "| finetune | final train loss | 2.0000 | - |" in table


def test_compare_cli_reports_bad_input(tmp_path, capsys):
    from clips_cli.main import main

    os.makedirs(tmp_path / "d")
    status = main(["llava", "compare", "--towers", "clips:clips-tiny", "--llm", "x", "--data", str(tmp_path / "d"),
                   "--out", str(tmp_path / "o")])
    assert status == 2 and "missing stage1.json" in capsys.readouterr().err
