"""Pretraining config (strict YAML + overrides), reference configs, optimizer groups, schedule, FLOPs."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import clips_tower
from clips_tower.flops import model_flops
from pretrain.cli import dry_run_report
from pretrain.config import ConfigError, StageSection, config_from_dict, list_reference_configs, load_config
from pretrain.losses import CLIPSLoss
from pretrain.optim import param_groups, stage_lr_factors


def _write(tmp_path, text: str):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_overrides_dotted_bare_equals_and_list_index(tmp_path):
    p = _write(tmp_path, "stages: [{steps: 10}, {steps: 5, image_size: 64}]\noptim: {lr: 1.0e-3}\n")
    cfg = load_config(p, ["--lr", "5e-4", "--train.global-batch-size=64", "--stages.1.steps", "7",
                          "--recipe.text_weights", "{web: 0.3, sub: 0.7}", "--precision", "fp32"])
    assert cfg.optim.lr == 5e-4  # "5e-4" is a string to YAML 1.1; floats accept it
    assert cfg.train.global_batch_size == 64 and cfg.train.precision == "fp32"
    assert [s.steps for s in cfg.stages] == [10, 7] and cfg.stages[1].image_size == 64
    assert cfg.recipe.text_weights == {"web": 0.3, "sub": 0.7}
    assert cfg.total_steps == 17


@pytest.mark.parametrize("text,overrides,match", [
    ("stages: [{steps: 1}]\ntrain: {globl_batch_size: 3}\n", [], r"cfg.yaml.train: unknown key\(s\) \['globl_batch_size'\]"),
    ("stages: [{steps: 1}]\ntrain: {seed: 1.5}\n", [], r"train.seed: expected an integer"),
    ("stages: [{steps: 1}]\ntrain: {progress: 'yes'}\n", [], r"train.progress: expected true/false"),
    ("stages: [{steps: 1}]\noptim: {betas: [0.9]}\n", [], r"cfg.yaml.optim.betas: expected 2 values, got 1"),
    ("stages: [{steps: 1}]\ntrain: {seed: true}\n", [], r"cfg.yaml.train.seed: expected an integer, got bool"),
    ("stages: [{image_size: 32}]\n", [], r"stages.0: missing required key\(s\) \['steps'\]"),
    ("stages: [{steps: 1}]\n", ["--recipe.strategy", "middle"], r"recipe.strategy must be one of"),
    ("stages: [{steps: 1}]\n", ["--nonsense", "1"], r"--nonsense: no such setting"),
    ("stages: [{steps: 1}]\n", ["--image_size", "1"], r"--image_size: no such setting"),
    ("stages: [{steps: 1}]\n", ["--format", "wds"], r"ambiguous, write one of \['data.format', 'eval.format'\]"),
    ("stages: [{steps: 1}]\n", ["--stages.3.steps", "1"], r"not an index of a 1-item list"),
    ("stages: []\n", [], r"at least one stage"),
    ("stages: [{steps: 1}]\n", ["--loss.caption_negatives", "0"], r"cfg.yaml: loss.caption_negatives must be >= 1"),
])
def test_bad_configs_name_the_key_and_file(tmp_path, text, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text), overrides)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config("clips-tiny", ["--lr", "3e-4"])
    again = load_config(_write(tmp_path, cfg.to_yaml()))
    assert again == cfg


@pytest.mark.parametrize("name", list_reference_configs())
def test_every_reference_config_loads_and_plans(name):
    cfg = load_config(name)
    report = dry_run_report(cfg)
    assert report["parameters"] > 0 and len(report["stages"]) == len(cfg.stages)
    assert all(s["train_gflops_per_sample"] > 0 for s in report["stages"])


def test_clips_l14_reference_matches_the_paper_recipe():
    cfg = load_config("clips-vit-l-14")
    assert cfg.train.global_batch_size == 32768 and cfg.optim.lr == pytest.approx(1.024e-3)
    assert cfg.optim.weight_decay == 0.2 and cfg.optim.betas == (0.9, 0.95)
    assert [s.image_size for s in cfg.stages] == [112, 224]
    assert cfg.recipe.name == "clips" and cfg.loss.caption_weight == 2.0 and cfg.train.precision == "bf16"


# ------------------------------------------------------------------ optimizer
def test_weight_decay_only_on_weight_matrices(tiny_model):
    loss = CLIPSLoss({"web": 1.0}, contrastive="siglip")
    module = torch.nn.ModuleDict({"model": tiny_model, "loss": loss})
    decay, no_decay = param_groups(module, 0.2)
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    names = set(decay["names"])
    for n in ("model.visual.conv1.weight", "model.visual.proj", "model.text.text_projection",
              "model.visual.transformer.resblocks.0.attn.in_proj_weight", "model.captioner.head.weight",
              "model.captioner.image_proj.weight", "model.text.transformer.resblocks.1.mlp.c_fc.weight"):
        assert n in names, n
    for n in ("model.visual.positional_embedding", "model.text.positional_embedding", "model.visual.class_embedding",
              "model.captioner.queries", "model.logit_scale", "loss.logit_bias", "model.text.token_embedding.weight",
              "model.visual.ln_post.weight", "model.visual.transformer.resblocks.0.attn.in_proj_bias"):
        assert n in no_decay["names"], n
    assert len(decay["names"]) + len(no_decay["names"]) == sum(1 for _ in module.parameters())


def test_warmup_then_cosine_per_stage():
    stages = [StageSection(steps=100, lr=None, warmup_steps=10), StageSection(steps=20, lr=1e-4, warmup_steps=5)]
    f = stage_lr_factors(stages, 1e-3, warmup_steps=0, schedule="cosine", min_lr_ratio=0.0)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)  # peak right after warm-up
    assert f(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert f(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert f(100) == pytest.approx(0.1 * 1 / 5)  # stage 2 warms up again to its own lr 1e-4
    assert f(104) == pytest.approx(0.1)
    assert f(119) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 14 / 15)))


# ------------------------------------------------------------------ FLOPs
def test_analytic_flops_equal_a_traced_count(tiny_model, tiny_batch):
    """clips_tower.flops against torch's FlopCounterMode on a real forward + loss (every matmul,
    conv and SDPA call counted by torch itself)."""
    images, texts, targets = tiny_batch
    b = images.shape[0]
    tiny_model.set_attn_impl("reference")  # explicit matmuls: torch's counter skips fused CPU SDPA
    loss = CLIPSLoss({"web": 0.5, "sub": 0.5})
    counter = FlopCounterMode(display=False)
    with counter:
        out = tiny_model(images, texts, targets)
        loss(out["image_features"], out["text_features"], out["logit_scale"], out["caption_logits"], out["caption_labels"])
    m = out["caption_labels"].numel()
    ours = model_flops(tiny_model.config, num_texts=2, caption_tokens=round(m / b), global_batch=b)
    # caption_tokens is an integer per sample: compare with the exact M by removing the rounding.
    head = 2 * tiny_model.config.captioner.width * tiny_model.config.text.vocab_size
    exact = ours.forward * b + head * (m - round(m / b) * b)
    assert counter.get_total_flops() == exact


def test_b16_flops_at_112_match_hand_count():
    cfg = clips_tower.get_model_config("clips-vit-b-16")
    f = model_flops(cfg, num_texts=1, captioner=False, image_size=112)
    # Hand count: ViT-B/16 on 50 tokens (12 x 715.5M + patch 57.8M + proj 0.8M) and 12x512 text on 80 tokens.
    assert f.vision == 12 * (8 * 50 * 768**2 + 4 * 50 * 768 * 3072 + 4 * 50**2 * 768) + 2 * 49 * 768 * 768 + 2 * 768 * 512
    assert f.text == 12 * (8 * 80 * 512**2 + 4 * 80 * 512 * 2048 + 4 * 80**2 * 512) + 2 * 512 * 512
    assert f.train == 3 * (f.vision + f.text)


def test_stage_layout_and_unknown_model_errors():
    with pytest.raises(ConfigError, match="must be >= 1"):
        config_from_dict({"stages": [{"steps": 0}]})
