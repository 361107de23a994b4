"""Stage 2 with a trainable vision tower (``--mm_tunable_parts``, ``--mm_vision_tower_lr``,
``--lora_target``): parameter groups, what changes and what stays, saving, checkpointing, ZeRO."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from llava_integration.feature_cache import FeatureCacheError, build_feature_cache
from llava_integration.stages import get_stage
from llava_integration.train import LlavaTrainer, add_lora, load_llava, lr_overrides, run_stage, set_trainable
from llava_integration.train_args import lora_modules, parse_args, trainable_modules, validate_args
from helpers.llava_records import caption_records, fixed_batch, instruction_records, write_images, write_json
from helpers.processes import free_port

CPU = ["--use_cpu", "True", "--report_to", "none", "--dataloader_num_workers", "0", "--seed", "0"]
ALL_PARTS = "mm_vision_tower,mm_mlp_adapter,mm_language_model"
TOWER, PROJ, LLM = "model.vision_tower.", "model.multi_modal_projector.", "model.language_model."


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    from llava_integration.assemble import assemble_llava
    from llava_integration.tiny_llm import build_tiny_llm

    root = tmp_path_factory.mktemp("tower_train")
    llm = build_tiny_llm(root / "llm")
    images = write_images(root / "images", 8)
    return {"root": root, "llm": llm, "images": root / "images",
            "llava": assemble_llava("clips:clips-tiny", llm, root / "llava"),
            "captions": write_json(root / "captions.json", caption_records(images)),
            "instruct": write_json(root / "instruct.json", instruction_records(images, n_text=2))}


def _args(env, *flags):
    return parse_args("finetune", ["--model_name_or_path", str(env["llava"]), "--data_path", str(env["instruct"]),
                                   "--output_dir", str(env["root"] / "unused"), *flags, *CPU])


def _part(name: str) -> str:
    """Which part a (possibly peft-wrapped) parameter name belongs to."""
    for part, marker in (("tower", TOWER), ("projector", PROJ), ("llm", LLM), ("llm", "lm_head")):
        if marker in name:
            return part
    raise AssertionError(name)


@pytest.mark.parametrize("lora_target", [None, "mm_language_model", "mm_language_model,mm_vision_tower"])
def test_param_groups_and_lrs_as_configured(env, lora_target):
    flags = ["--mm_tunable_parts", ALL_PARTS, "--learning_rate", "1e-3", "--mm_projector_lr", "2e-4",
             "--mm_vision_tower_lr", "1e-5"]
    if lora_target:
        flags += ["--lora_enable", "True", "--lora_r", "4", "--lora_target", lora_target]
    m, d, t = _args(env, *flags)
    stage = get_stage("finetune")
    validate_args(stage, m, d, t)
    modules, lora = trainable_modules(stage, m), lora_modules(t)
    assert set(modules) == {"vision_tower", "projector", "language_model"}
    model = load_llava(env["llava"], m, t)
    set_trainable(model, [k for k in modules if k not in lora])
    if lora_target:
        model = add_lora(model, t, modules, lora)
    trainer = LlavaTrainer(model=model, args=t, lr_overrides=lr_overrides(stage, t), modality_lengths=None)
    lr_of = {id(p): g["lr"] for g in trainer.create_optimizer().param_groups for p in g["params"]}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(lr_of) == len(trainable)  # frozen parameters never reach the optimizer
    want = {"tower": 1e-5, "projector": 2e-4, "llm": 1e-3}
    for name, p in trainable.items():
        assert lr_of[id(p)] == want[_part(name)], name
    assert {_part(n) for n in trainable} == {"tower", "projector", "llm"}
    tower_lora = [n for n in trainable if TOWER in n and "lora_" in n]
    if lora_target and "mm_vision_tower" in lora_target:
        # The tower is adapted, not trained fully: only its LoRA matrices learn.
        assert tower_lora and all("lora_" in n for n in trainable if TOWER in n)
    else:
        # LoRA does not wrap tower modules unless asked: the tower trains fully.
        assert not tower_lora
        assert not [n for n, _ in model.named_modules() if TOWER in n and "lora_" in n]
        n_tower = sum(p.numel() for n, p in trainable.items() if TOWER in n)
        assert n_tower == sum(p.numel() for p in load_llava(env["llava"], m, t).model.vision_tower.parameters())
    if lora_target:
        assert all("lora_" in n for n in trainable if LLM in n)  # the LLM only through LoRA


class KeepFinalWeights(TrainerCallback):
    """Copies every parameter of the trained model at the end of training (independent of saving)."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.weights = {n: p.detach().clone() for n, p in model.named_parameters()}


def _by_suffix(sd: dict, marker: str) -> dict:
    """Tensors under ``marker`` keyed by the name after it (checkpoint key names vary by version)."""
    return {k.split(marker, 1)[1]: v for k, v in sd.items() if marker in k}


def _tower_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.model.vision_tower.state_dict().items()}


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b) and a
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _differs(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_tuned_tower_full_finetune_saves_the_trained_tower(env):
    """Tower + projector tune (own lrs), the LLM is frozen; gradient checkpointing is on. The saved
    folder loads in stock transformers with exactly the trained tower."""
    from transformers import LlavaForConditionalGeneration

    keep = KeepFinalWeights()
    out = run_stage("finetune", ["--model_name_or_path", str(env["llava"]), "--data_path", str(env["instruct"]),
                                 "--image_folder", str(env["images"]), "--output_dir", str(env["root"] / "full"),
                                 "--mm_tunable_parts", "mm_vision_tower,mm_mlp_adapter", "--learning_rate", "5e-3",
                                 "--mm_vision_tower_lr", "1e-3", "--per_device_train_batch_size", "4",
                                 "--max_steps", "4", "--save_strategy", "no", "--gradient_checkpointing", "True",
                                 "--logging_steps", "1", *CPU], callbacks=[keep])
    initial = LlavaForConditionalGeneration.from_pretrained(env["llava"])
    saved = LlavaForConditionalGeneration.from_pretrained(out)  # stock transformers, nothing of this project
    trained_tower = {k.removeprefix("model.vision_tower."): v for k, v in keep.weights.items() if k.startswith(TOWER)}
    _assert_same({k: v for k, v in _tower_state(saved).items() if k in trained_tower}, trained_tower)
    assert _differs(_tower_state(saved), _tower_state(initial))
    assert _differs(dict(saved.model.multi_modal_projector.state_dict()),
                    dict(initial.model.multi_modal_projector.state_dict()))
    _assert_same(dict(saved.model.language_model.state_dict()), dict(initial.model.language_model.state_dict()))
    _assert_same(dict(saved.lm_head.state_dict()), dict(initial.lm_head.state_dict()))
    info = json.loads((out / "clips_training.json").read_text())
    assert info["trained"] == ["vision_tower", "projector"] and info["lora"] == []
    losses = [h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.slow
def test_lora_llm_with_a_fully_trained_tower_merges_the_trained_tower(env):
    """LoRA on the LLM only (default --lora_target): the tower trains fully (peft modules_to_save),
    the merged folder holds exactly that tower, and no LoRA layer landed on the tower."""
    from transformers import LlavaForConditionalGeneration

    keep = KeepFinalWeights()
    out = run_stage("finetune", ["--model_name_or_path", str(env["llava"]), "--data_path", str(env["instruct"]),
                                 "--image_folder", str(env["images"]), "--output_dir", str(env["root"] / "lora"),
                                 "--mm_tunable_parts", ALL_PARTS, "--lora_enable", "True", "--lora_r", "4",
                                 "--learning_rate", "5e-3", "--mm_vision_tower_lr", "1e-3", "--merge_lora", "True",
                                 "--per_device_train_batch_size", "4", "--max_steps", "3", "--save_strategy", "no",
                                 *CPU], callbacks=[keep])
    adapter = load_file(out / "adapter_model.safetensors")
    assert not [k for k in adapter if "vision_tower" in k and "lora_" in k]
    assert [k for k in adapter if "vision_tower" in k]  # the fully trained tower travels in the adapter
    trained = _by_suffix({k: v for k, v in keep.weights.items() if "modules_to_save" in k and "vision_tower" in k},
                         "vision_tower.modules_to_save.default.")
    merged = LlavaForConditionalGeneration.from_pretrained(out / "merged")
    initial = LlavaForConditionalGeneration.from_pretrained(env["llava"])
    _assert_same({k: v for k, v in _tower_state(merged).items() if k in trained}, trained)
    assert _differs(_tower_state(merged), _tower_state(initial))


def test_gradient_checkpointing_reaches_a_training_tower(env):
    """With the tower trainable, the Trainer's checkpointing re-runs the tower's blocks in the
    backward pass and leaves every gradient as without checkpointing."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from llava_integration.data import TokenSpec

    processor = AutoProcessor.from_pretrained(env["llava"])
    batch = fixed_batch(env["instruct"], env["images"], TokenSpec.from_processor(processor), processor)
    grads, calls = [], []
    for checkpointing in (False, True):
        model = LlavaForConditionalGeneration.from_pretrained(env["llava"])
        set_trainable(model, ["vision_tower", "projector"])
        if checkpointing:
            model.enable_input_require_grads()
            model.gradient_checkpointing_enable()  # what the HF Trainer calls for --gradient_checkpointing
        count = []  # runs of the first tower block's attention (inside the checkpointed region)
        model.model.vision_tower.layers[0].attention.register_forward_hook(lambda *a: count.append(1))
        model.train()(**batch).loss.backward()
        calls.append(len(count))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert calls == [1, 2]  # the checkpointed block ran again during backward
    assert set(grads[0]) == set(grads[1]) and any(TOWER in n for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-5)


def test_feature_cache_refuses_a_trainable_tower(env, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    args = parse_args("pretrain", ["--model_name_or_path", "x", "--data_path", "y", "--output_dir", "z",
                                   "--feature_cache", "c", "--mm_tunable_parts", "mm_vision_tower,mm_mlp_adapter",
                                   *CPU])
    with pytest.raises(ValueError, match="--feature_cache stores the frozen tower's features once; it cannot be used "
                                         "while the vision tower trains"):
        validate_args(get_stage("pretrain"), *args)
    model = LlavaForConditionalGeneration.from_pretrained(env["llava"])
    set_trainable(model, ["vision_tower", "projector"])
    processor = AutoProcessor.from_pretrained(env["llava"])
    with pytest.raises(FeatureCacheError, match=r"the feature cache needs a frozen vision tower, but \d+ tower"):
        build_feature_cache(model, ["img0.png"], env["images"], processor.image_processor, tmp_path / "c")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("stage, flags, message", [
    ("pretrain", ["--mm_tunable_parts", "mm_vision_tower,mm_mlp_adapter"],
     "stage 'pretrain' saves only mm_mlp_adapter: it cannot train mm_vision_tower"),
    ("finetune", ["--mm_tunable_parts", "mm_vision,mm_mlp_adapter"], r"unknown part\(s\) \['mm_vision'\]"),
    ("finetune", ["--mm_vision_tower_lr", "1e-5"], "--mm_vision_tower_lr is set but the vision tower is frozen"),
    ("finetune", ["--mm_tunable_parts", "mm_mlp_adapter", "--tune_mm_mlp_adapter", "True"], "pass one"),
    ("finetune", ["--lora_enable", "True", "--lora_target", "mm_vision_tower"],
     "--lora_enable adapts mm_vision_tower .*keeps frozen here"),
    ("finetune", ["--lora_enable", "True", "--lora_target", "mm_mlp_adapter"], "the projector always trains fully"),
])
def test_invalid_tunable_part_flags(stage, flags, message):
    args = parse_args(stage, ["--model_name_or_path", "x", "--data_path", "y", "--output_dir", "z", *flags, *CPU])
    with pytest.raises(ValueError, match=message):
        validate_args(get_stage(stage), *args)


def _deepspeed(env, out: Path, model: Path, zero: str, *flags: str) -> None:
    env_vars = {**os.environ, "DS_ACCELERATOR": "cpu", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    cmd = [sys.executable, "-m", "clips_cli.main", "llava", "finetune", "--model_name_or_path", str(model),
           "--data_path", str(env["instruct"]), "--image_folder", str(env["images"]), "--output_dir", str(out),
           "--deepspeed", zero, "--per_device_train_batch_size", "4", "--mm_tunable_parts", ALL_PARTS,
           "--mm_vision_tower_lr", "1e-3", *flags, *CPU]
    proc = subprocess.run(cmd, env=env_vars, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_saves_and_reloads_the_trained_tower(env, zero):
    """Under ZeRO-2/3 (one CPU process) the tower trains; the saved HF folder's tower equals the
    fp32 weights in DeepSpeed's own checkpoint (reconstructed by DeepSpeed's zero_to_fp32) and
    differs from the initial tower. The saved folder then reloads under ZeRO-3 (partitioned
    loading) and saves again unchanged (learning rate 0): the round trip keeps the tower."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import LlavaForConditionalGeneration

    out = env["root"] / f"ds-{zero}"
    _deepspeed(env, out, env["llava"], zero, "--learning_rate", "5e-3", "--max_steps", "2",
               "--save_strategy", "steps", "--save_steps", "2")
    reference = _by_suffix(get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoint-2")), "vision_tower.")
    saved = _tower_state(LlavaForConditionalGeneration.from_pretrained(out))
    _assert_same({k: v for k, v in saved.items() if k in reference}, reference)
    assert _differs(saved, _tower_state(LlavaForConditionalGeneration.from_pretrained(env["llava"])))
    if zero == "zero3":
        again = env["root"] / "ds-zero3-reload"
        _deepspeed(env, again, out, "zero3", "--learning_rate", "0", "--mm_vision_tower_lr", "0", "--max_steps", "1",
                   "--save_strategy", "no")
        _assert_same(_tower_state(LlavaForConditionalGeneration.from_pretrained(again)), saved)
