"""LLaVA stage 1 / stage 2 training on HF's native LLaVA (tiny CLIPS tower + tiny Llama, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llava_integration.conversation import get_template
from llava_integration.data import DataCheckError, LlavaCollator, LlavaDataset, TokenSpec, check_samples
from llava_integration.feature_cache import (CachedFeatureLlava, FeatureCache, FeatureCacheError,
                                             build_feature_cache)
from llava_integration.stages import get_stage
from llava_integration.train import (LlavaTrainer, add_lora, load_llava, load_projector, lr_overrides, run_stage,
                                     set_trainable)
from llava_integration.train_args import deepspeed_config, parse_args, validate_args
from helpers.llava_records import caption_records, fixed_batch, instruction_records, write_images, write_json
from helpers.processes import free_port

CPU = ["--use_cpu", "True", "--report_to", "none", "--dataloader_num_workers", "0", "--seed", "0"]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    """Tiny LLM, its assembly with clips-tiny, and LLaVA-format caption/instruction data."""
    from llava_integration.assemble import assemble_llava
    from llava_integration.tiny_llm import build_tiny_llm

    root = tmp_path_factory.mktemp("llava_train")
    llm = build_tiny_llm(root / "llm")
    images = write_images(root / "images", 12)
    return {
        "root": root, "llm": llm, "images": root / "images",
        "llava": assemble_llava("clips:clips-tiny", llm, root / "llava"),
        "captions": write_json(root / "captions.json", caption_records(images)),
        "instruct": write_json(root / "instruct.json", instruction_records(images, n_text=4)),
    }


def _data_flags(env, kind: str) -> list[str]:
    return ["--data_path", str(env[kind]), "--image_folder", str(env["images"])]


@pytest.fixture(scope="module")
def stage1(env) -> Path:
    """Stage 1 from the assembled model: 4 steps, with a full checkpoint at the last step."""
    return run_stage("pretrain", ["--model_name_or_path", str(env["llava"]), *_data_flags(env, "captions"),
                                  "--output_dir", str(env["root"] / "stage1"), "--per_device_train_batch_size", "4",
                                  "--max_steps", "4", "--learning_rate", "1e-2", "--save_strategy", "steps",
                                  "--save_steps", "4", *CPU])


def _projector_keys(sd: dict) -> set[str]:
    return {k for k in sd if "multi_modal_projector" in k}


def test_stage1_changes_only_projector(stage1, env):
    before = load_file(env["llava"] / "model.safetensors")
    after = load_file(stage1 / "checkpoint-4" / "model.safetensors")
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == _projector_keys(before) and len(changed) == 4  # linear_1/2 weight+bias
    # mm_projector.safetensors holds exactly the final projector (checkpoint key names vary with the
    # transformers version's serialisation, so match on the projector-relative suffix).
    saved = load_file(stage1 / "mm_projector.safetensors")
    in_checkpoint = {k.split("multi_modal_projector.")[1]: after[k] for k in changed}
    assert set(saved) == set(in_checkpoint)
    for k, v in saved.items():
        assert torch.equal(v, in_checkpoint[k])
    info = json.loads((stage1 / "projector_config.json").read_text())
    assert info["vision_feature_layer"] == -2 and info["template"] == "plain"
    report = json.loads((stage1 / "data_check.json").read_text())
    assert report["total"] == report["kept"] == 12 and report["counts"] == {}


def test_stage1_rerun_resumes_from_its_checkpoint(stage1, env, tmp_path):
    """A killed (here: finished) run restarted on the same output folder continues from checkpoint-4."""
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(stage1, out)
    run_stage("pretrain", ["--model_name_or_path", str(env["llava"]), *_data_flags(env, "captions"),
                           "--output_dir", str(out), "--per_device_train_batch_size", "4", "--max_steps", "5",
                           "--learning_rate", "1e-2", "--save_strategy", "no", *CPU])
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 5
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps == [1, 2, 3, 4, 5]  # steps 1-4 restored from the checkpoint, only step 5 trained now
    assert not torch.equal(load_file(out / "mm_projector.safetensors")["linear_1.weight"],
                           load_file(stage1 / "mm_projector.safetensors")["linear_1.weight"])


def test_load_projector_accepts_llava_mm_projector_bin(env, tmp_path):
    """LLaVA's own stage-1 file (`model.mm_projector.{0,2}.*` in a torch pickle) loads too."""
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(env["llava"])
    g = torch.Generator().manual_seed(0)
    ours = {k: torch.randn(v.shape, generator=g) for k, v in model.model.multi_modal_projector.state_dict().items()}
    llava_names = {k.replace("linear_1", "model.mm_projector.0").replace("linear_2", "model.mm_projector.2"): v
                   for k, v in ours.items()}
    torch.save(llava_names, tmp_path / "mm_projector.bin")
    load_projector(model, tmp_path / "mm_projector.bin")
    for k, v in model.model.multi_modal_projector.state_dict().items():
        assert torch.equal(v, ours[k])
    torch.save({**llava_names, "model.mm_projector.0.weight": torch.zeros(3, 3)}, tmp_path / "bad.bin")
    with pytest.raises(ValueError, match=r"bad.bin: linear_1.weight has shape \(3, 3\)"):
        load_projector(model, tmp_path / "bad.bin")


@torch.no_grad()
def _loss(model, batch) -> float:
    return model.eval()(**batch).loss.item()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora", "qlora"])
def test_stage2_trains_and_loss_falls(mode, stage1, env):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out = env["root"] / f"stage2-{mode}"
    flags = {"full": ["--learning_rate", "2e-3"],
             "lora": ["--lora_enable", "True", "--lora_r", "8", "--lora_alpha", "16", "--learning_rate", "1e-2",
                      "--mm_projector_lr", "2e-3", "--merge_lora", "True"],
             "qlora": ["--lora_enable", "True", "--bits", "4", "--lora_r", "8", "--lora_alpha", "16",
                       "--learning_rate", "1e-2", "--merge_lora", "True"]}[mode]
    run_stage("finetune", ["--model_name_or_path", str(env["llava"]), *_data_flags(env, "instruct"),
                           "--pretrain_mm_mlp_adapter", str(stage1 / "mm_projector.safetensors"),
                           "--output_dir", str(out), "--per_device_train_batch_size", "4", "--max_steps", "5",
                           "--save_strategy", "no", *flags, *CPU])
    state = json.loads((out / "train_results.json").read_text())
    assert state["train_steps_per_second"] > 0

    before_model = LlavaForConditionalGeneration.from_pretrained(env["llava"])
    load_projector(before_model, stage1 / "mm_projector.safetensors")
    trained_dir = out if mode == "full" else out / "merged"
    # The result is a plain HF LLaVA folder: stock transformers loads model and processor.
    trained = LlavaForConditionalGeneration.from_pretrained(trained_dir)
    processor = AutoProcessor.from_pretrained(trained_dir)
    batch = fixed_batch(env["instruct"], env["images"], TokenSpec.from_processor(processor), processor)
    before, after = _loss(before_model, batch), _loss(trained, batch)
    assert after < before - 0.1, (before, after)

    if mode == "lora":  # merging changes nothing: adapter on base == merged
        from peft import PeftModel

        base = LlavaForConditionalGeneration.from_pretrained(json.loads(
            (out / "adapter_config.json").read_text())["base_model_name_or_path"])
        assert abs(_loss(PeftModel.from_pretrained(base, out), batch) - after) < 1e-4
    assert json.loads((trained_dir / "clips_training.json").read_text())["template"] == "v1"
    if mode == "full":
        from PIL import Image

        inputs = processor(images=Image.new("RGB", (32, 32), (200, 30, 30)),
                           text="USER: <image>\nWhat colour is the shape? ASSISTANT:", return_tensors="pt")
        generated = trained.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


def test_qlora_quantises_only_the_llm_and_projector_lr(env):
    import bitsandbytes as bnb

    m, d, t = parse_args("finetune", ["--model_name_or_path", str(env["llava"]), "--data_path", "unused.json",
                                      "--output_dir", str(env["root"] / "q"), "--bits", "4", "--lora_enable", "True",
                                      "--learning_rate", "1e-2", "--mm_projector_lr", "3e-4", *CPU])
    validate_args(get_stage("finetune"), m, d, t)
    model = load_llava(env["llava"], m, t)
    kinds = {n: type(mod) for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    llm = {n for n in kinds if n.startswith("model.language_model.")}
    assert llm and all(kinds[n] is bnb.nn.Linear4bit for n in llm)
    assert all(kinds[n] is torch.nn.Linear for n in kinds if n not in llm)  # tower, projector, lm_head
    set_trainable(model, ["projector"])
    peft_model = add_lora(model, t, ["projector", "language_model"])
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or "multi_modal_projector.modules_to_save" in n for n in trainable)
    assert sum("modules_to_save" in n for n in trainable) == 4

    trainer = LlavaTrainer(model=peft_model, args=t, lr_overrides=lr_overrides(get_stage("finetune"), t),
                           modality_lengths=None)
    groups = trainer.create_optimizer().param_groups
    by_id = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(peft_model.named_parameters())
    assert {by_id[id(named[n])] for n in trainable if "multi_modal_projector" in n} == {3e-4}
    assert {by_id[id(named[n])] for n in trainable if "lora_" in n} == {1e-2}
    assert len(by_id) == len(trainable)  # frozen parameters never reach the optimizer


def _cache_setup(env):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(env["llava"])
    set_trainable(model, ["projector"])  # the cache refuses a trainable tower
    processor = AutoProcessor.from_pretrained(env["llava"])
    spec = TokenSpec.from_processor(processor)
    checked = check_samples(json.loads(env["captions"].read_text()), env["images"], get_template("plain"), spec, 512)
    images = [r["image"] for r in checked.records]
    return model, processor, spec, checked, images


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-6), ("float16", 2e-3)])
def test_feature_cache_gives_live_projector_gradients(env, tmp_path, dtype, tol):
    model, processor, spec, checked, images = _cache_setup(env)
    cache = build_feature_cache(model, images, env["images"], processor.image_processor, tmp_path / "c",
                                "square", dtype, batch_size=5)
    pixels = torch.stack([LlavaDataset(checked, get_template("plain"), spec, processor.image_processor,
                                       env["images"], "square")[i]["pixel_values"][0] for i in range(6)])
    # Independent reference for the cached rows: the tower's penultimate hidden state without CLS.
    with torch.no_grad():
        ref = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    torch.testing.assert_close(torch.stack([cache[p] for p in images[:6]]).float(), ref, atol=tol * 10, rtol=tol)

    grads = []
    for feature_cache, net in ((None, model), (cache, CachedFeatureLlava(model))):
        ds = LlavaDataset(checked, get_template("plain"), spec, processor.image_processor, env["images"], "square",
                          feature_cache=feature_cache)
        batch = LlavaCollator(spec.tokenizer.pad_token_id)([ds[i] for i in range(6)])
        assert ("image_features" in batch) == (feature_cache is not None)
        set_trainable(model, ["projector"])
        model.zero_grad()
        net.train()(**batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert set(grads[0]) == set(grads[1]) and len(grads[0]) == 4
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=tol * 1e-2, rtol=tol * 10)


def test_feature_cache_resumes_and_checks_its_key(env, tmp_path, monkeypatch):
    import llava_integration.feature_cache as fc

    model, processor, _, _, images = _cache_setup(env)
    whole = build_feature_cache(model, images, env["images"], processor.image_processor, tmp_path / "whole",
                                batch_size=4)
    real, calls = fc.tower_features, []

    def dies_on_third_batch(m, pixels):
        calls.append(len(pixels))
        if len(calls) == 4:  # shape probe, batch 1, batch 2, then "killed"
            raise KeyboardInterrupt
        return real(m, pixels)

    monkeypatch.setattr(fc, "tower_features", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        build_feature_cache(model, images, env["images"], processor.image_processor, tmp_path / "c", batch_size=4)
    assert json.loads((tmp_path / "c" / "progress.json").read_text())["done"] == 8
    calls.clear()
    monkeypatch.setattr(fc, "tower_features", lambda m, p: (calls.append(len(p)), real(m, p))[1])
    resumed = build_feature_cache(model, images, env["images"], processor.image_processor, tmp_path / "c",
                                  batch_size=4)
    assert calls == [1, 4]  # shape probe + only the last batch of 12
    assert torch.equal(torch.from_numpy(resumed.array[:]), torch.from_numpy(whole.array[:]))
    assert not (tmp_path / "c" / "progress.json").exists()
    with pytest.raises(FeatureCacheError, match="image_aspect_ratio differ"):
        build_feature_cache(model, images, env["images"], processor.image_processor, tmp_path / "c", "pad")
    assert isinstance(FeatureCache(tmp_path / "c"), FeatureCache)


def test_stage1_from_llm_and_tower_with_feature_cache(env):
    """The full stage-1 path: assemble --vision_tower + LLM, cache features, train, save the projector."""
    out = run_stage("pretrain", ["--model_name_or_path", str(env["llm"]), "--vision_tower", "clips:clips-tiny",
                                 *_data_flags(env, "captions"), "--output_dir", str(env["root"] / "s1c"),
                                 "--feature_cache", str(env["root"] / "cache"), "--per_device_train_batch_size", "4",
                                 "--max_steps", "2", "--save_strategy", "no", *CPU])
    assert (env["root"] / "cache" / "features.npy").is_file()
    assert set(load_file(out / "mm_projector.safetensors")) == {"linear_1.weight", "linear_1.bias",
                                                                "linear_2.weight", "linear_2.bias"}
    assert not (out / "base").exists()  # the assembly is dropped once the projector is saved


@pytest.mark.parametrize("stage, flags, message", [
    ("finetune", ["--bits", "4"], "--bits 4 quantises the LLM, which then trains only through LoRA"),
    ("pretrain", ["--lora_enable", "True"], "--lora_enable adapts mm_language_model .*which stage 'pretrain' keeps"),
    ("finetune", ["--feature_cache", "x"], "--feature_cache is for projector pretraining"),
    ("finetune", ["--tune_mm_mlp_adapter", "True", "--lora_enable", "True"], "--lora_enable adapts mm_language_model"),
    ("finetune", ["--merge_lora", "True"], "--merge_lora needs --lora_enable"),
])
def test_invalid_flag_combinations(stage, flags, message):
    args = parse_args(stage, ["--model_name_or_path", "x", "--data_path", "y", "--output_dir", "z", *flags, *CPU])
    with pytest.raises(ValueError, match=message):
        validate_args(get_stage(stage), *args)


def test_shipped_deepspeed_configs():
    stages = {name: json.loads(deepspeed_config(name).read_text())["zero_optimization"]
              for name in ("zero2", "zero3", "zero3_offload")}
    assert {k: v["stage"] for k, v in stages.items()} == {"zero2": 2, "zero3": 3, "zero3_offload": 3}
    assert stages["zero3"]["stage3_gather_16bit_weights_on_model_save"] is True  # HF folder on save
    assert stages["zero3_offload"]["offload_optimizer"]["device"] == "cpu"
    assert deepspeed_config("zero2.json") == deepspeed_config("zero2")
    with pytest.raises(FileNotFoundError, match=r"--deepspeed zero9: no such file and not a shipped config"):
        deepspeed_config("zero9")


def test_bad_data_stops_before_training(env, tmp_path):
    records = json.loads(env["instruct"].read_text())
    records[3]["image"] = "gone.png"
    data = write_json(tmp_path / "bad.json", records)
    with pytest.raises(DataCheckError, match=r"missing_image: 1 sample\(s\)\n    id=ins3"):
        run_stage("finetune", ["--model_name_or_path", str(env["llava"]), "--data_path", str(data),
                               "--image_folder", str(env["images"]), "--output_dir", str(tmp_path / "o"), *CPU])
    assert "missing_image" in json.loads((tmp_path / "o" / "data_check.json").read_text())["error"]
    assert not (tmp_path / "o" / "trainer_state.json").exists()


@pytest.mark.slow
def test_deepspeed_zero2_single_process(env):
    """`clips llava finetune --deepspeed zero2` (the shipped config) in one CPU process."""
    out = env["root"] / "ds"
    env_vars = {**os.environ, "DS_ACCELERATOR": "cpu", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    cmd = [sys.executable, "-m", "clips_cli.main", "llava", "finetune", "--model_name_or_path", str(env["llava"]),
           *_data_flags(env, "instruct"), "--output_dir", str(out), "--deepspeed", "zero2",
           "--per_device_train_batch_size", "4", "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
           "--learning_rate", "1e-3", *CPU]
    proc = subprocess.run(cmd, env=env_vars, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "checkpoint-2" / "global_step2").is_dir()  # a DeepSpeed engine checkpoint
    losses = [h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    from transformers import LlavaForConditionalGeneration

    assert LlavaForConditionalGeneration.from_pretrained(out).config.model_type == "llava"
