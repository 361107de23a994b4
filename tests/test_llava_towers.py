"""Vision-tower registry and the original-LLaVA tower contract (CLIPS, HF CLIP, HF SigLIP)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers.towers import (
    TOWER_FOLDERS,
    random_image,
    save_clips,
    save_hf_clip_full,
    save_hf_clip_vision,
    save_hf_siglip_vision,
    tiny_clips,
)
from safetensors.torch import load_file, save_file

import clips_tower
from clips_tower.checkpoint import CheckpointError
from llava_integration.image_processing import clips_image_processor
from llava_integration.towers import (
    TOWER_KINDS,
    CLIPSVisionTower,
    CLIPVisionTowerHF,
    SiglipVisionTowerHF,
    load_vision_tower,
    tower_kind,
)


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> dict:
    """A tiny CLIPS model saved in both formats, plus tiny HF CLIP and SigLIP vision folders."""
    root = tmp_path_factory.mktemp("towers")
    model = tiny_clips()
    return {
        "model": model,
        "clips": save_clips(model, root / "clips"),
        "open_clip": save_clips(model, root / "open_clip", fmt="open_clip"),
        "hf_clip": save_hf_clip_vision(root / "hf_clip"),
        "hf_clip_full": save_hf_clip_full(root / "hf_clip_full"),
        "hf_siglip": save_hf_siglip_vision(root / "hf_siglip"),
    }


def test_registry_picks_the_kind_from_the_spec(towers):
    clips_dir, oc_dir = towers["clips"], towers["open_clip"]
    assert tower_kind(f"clips:{clips_dir}") == "clips"
    assert tower_kind(f"clips:{clips_dir / 'model.safetensors'}") == "clips"
    assert tower_kind("clips:clips-tiny") == "clips"
    assert tower_kind(f"clip:{towers['hf_clip_full']}") == "clip"
    # The bare-path fallback: HF model_type first, then a CLIPS checkpoint.
    assert tower_kind(str(oc_dir)) == "clips"
    assert tower_kind(str(towers["hf_clip"])) == "clip"
    assert tower_kind(str(towers["hf_clip_full"])) == "clip"
    assert tower_kind(str(towers["hf_siglip"])) == "siglip"
    assert isinstance(load_vision_tower(str(towers["hf_siglip"]), delay_load=True), SiglipVisionTowerHF)
    with pytest.raises(ValueError, match="unknown vision tower 'no/such/tower'"):
        tower_kind("no/such/tower")
    with pytest.raises(ValueError, match="unknown vision tower 'clips-tiny'"):  # named models need the prefix
        tower_kind("clips-tiny")
    with pytest.raises(ValueError, match="not an existing checkpoint path and not a named model"):
        load_vision_tower("clips:no-such-model")
    with pytest.raises(ValueError, match=r"config.json has model_type 'siglip_vision_model', expected one of \['clip'"):
        load_vision_tower(f"clip:{towers['hf_siglip']}")
    with pytest.raises(ValueError, match="is not a local folder"):
        load_vision_tower("siglip:no/such/folder")


@pytest.mark.parametrize("kind", sorted(TOWER_KINDS))
def test_every_tower_kind_from_its_prefix_and_its_bare_path(kind, tmp_path):
    """Swept from the registry: a kind added to TOWER_KINDS without a test folder fails here."""
    folder = TOWER_FOLDERS[kind](tmp_path / kind)
    for spec in (f"{kind}:{folder}", str(folder)):
        assert tower_kind(spec) == kind
        tower = load_vision_tower(spec)
        assert type(tower) is TOWER_KINDS[kind] and tower.kind == kind and tower.vision_tower_name == spec
        pixels = tower.image_processor(random_image(), return_tensors="pt")["pixel_values"]
        features = tower(pixels)
        assert features.shape == (1, tower.num_patches, tower.hidden_size)
        with torch.no_grad():  # the stock HF model the tower exports gives the same features
            hidden = tower.to_hf_vision_model()(pixels, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(features, hidden[:, tower.num_prefix_tokens:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["clips", "open_clip"])
@pytest.mark.parametrize("select_layer,select_feature", [(-2, "patch"), (-1, "cls_patch"), (0, "patch")])
def test_clips_features_equal_the_clips_model(towers, fmt, select_layer, select_feature):
    """Features = visual.forward_features(pixels, layer) of the model the checkpoint was saved from."""
    tower = load_vision_tower(f"clips:{towers[fmt]}", select_layer=select_layer, select_feature=select_feature)
    assert isinstance(tower, CLIPSVisionTower)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = towers["model"].visual.forward_features(pixels, layer=select_layer)
    want = want[:, 1:] if select_feature == "patch" else want
    got = tower(pixels)
    assert got.shape == (3, 16 + (select_feature == "cls_patch"), 64)
    assert torch.equal(got, want)
    assert (tower.hidden_size, tower.num_patches, tower.num_patches_per_side, tower.image_size) == (64, 16, 4, 32)
    assert (tower.config.patch_size, tower.config.image_size) == (8, 32)
    assert torch.equal(tower.dummy_feature, torch.zeros(1, 64))


def test_dtype_contract_and_list_input(towers):
    tower = load_vision_tower(f"clips:{towers['clips']}")
    pixels = torch.randn(2, 3, 32, 32)
    ref = tower(pixels)
    per_image = tower(list(pixels))  # as CLIPVisionTower: a list of [1, N, hidden]
    assert [f.shape for f in per_image] == [(1, 16, 64)] * 2
    assert torch.allclose(torch.cat(per_image), ref, atol=1e-6)
    tower.to(torch.bfloat16)
    out = tower(pixels)  # fp32 in -> computed in bf16 -> fp32 out
    assert tower.dtype == torch.bfloat16 and out.dtype == torch.float32
    assert not torch.equal(out, ref) and torch.allclose(out, ref, atol=0.1, rtol=0.05)
    assert tower(pixels.half()).dtype == torch.float16


def test_frozen_tower_runs_without_grad(towers):
    tower = load_vision_tower(f"clips:{towers['clips']}")
    pixels = torch.randn(1, 3, 32, 32, requires_grad=True)
    assert not any(p.requires_grad for p in tower.parameters())
    assert not tower(pixels).requires_grad  # frozen: no graph even with grad enabled
    tower.vision_tower.requires_grad_(True)  # LLaVA's unfreeze_mm_vision_tower
    out = tower(pixels)
    out.sum().backward()
    assert tower.vision_tower.conv1.weight.grad.abs().sum() > 0


def test_delay_load_gives_config_and_processor_without_weights(towers):
    tower = load_vision_tower(f"clips:{towers['open_clip']}", delay_load=True)
    assert not tower.is_loaded and list(tower.parameters()) == []
    assert (tower.hidden_size, tower.num_patches, tower.image_processor.crop_size["height"]) == (64, 16, 32)
    with pytest.raises(RuntimeError, match="not loaded"):
        tower(torch.randn(1, 3, 32, 32))
    tower.load_model()
    weights = [p.clone() for p in tower.parameters()]
    tower.load_model()  # idempotent: no reload
    assert all(torch.equal(a, b) for a, b in zip(weights, tower.parameters()))


def test_named_model_gets_the_same_seeded_weights_every_time():
    a, b = load_vision_tower("clips:clips-tiny"), load_vision_tower("clips:clips-tiny")
    sa, sb = a.vision_tower.state_dict(), b.vision_tower.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sa["conv1.weight"].std() > 0 and sa["transformer.resblocks.0.ln_1.weight"].eq(1).all()


def test_mismatched_checkpoint_names_the_key(tmp_path):
    folder = save_clips(tiny_clips(), tmp_path / "broken")
    sd = load_file(folder / "model.safetensors")
    sd["visual.positional_embedding"] = sd["visual.positional_embedding"][:-1]
    save_file(sd, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"positional_embedding: checkpoint shape \[16, 64\] != model shape \[17, 64\]"):
        load_vision_tower(f"clips:{folder}")


def test_select_options_are_checked(towers):
    with pytest.raises(ValueError, match="select_feature must be one of"):
        load_vision_tower("clips:clips-tiny", select_feature="cls")
    with pytest.raises(ValueError, match="select_layer 3 out of range for 2 layers"):
        load_vision_tower("clips:clips-tiny", select_layer=3)
    with pytest.raises(ValueError, match="siglip towers have no CLS token"):
        load_vision_tower(str(towers["hf_siglip"]), select_feature="cls_patch")


@pytest.mark.parametrize("kind", ["hf_clip", "hf_clip_full", "hf_siglip"])
def test_hf_towers_select_patch_tokens_of_the_hf_model(towers, kind):
    from transformers import AutoConfig, CLIPVisionModel, SiglipVisionModel

    tower = load_vision_tower(str(towers[kind]))
    hf_class = SiglipVisionModel if kind == "hf_siglip" else CLIPVisionModel
    assert isinstance(tower, SiglipVisionTowerHF if kind == "hf_siglip" else CLIPVisionTowerHF)
    pixels = tower.image_processor(random_image(), return_tensors="pt")["pixel_values"]
    hf = hf_class.from_pretrained(towers[kind]).eval()
    with torch.no_grad():
        hidden = hf(pixels, output_hidden_states=True).hidden_states[-2]
    prefix = 0 if kind == "hf_siglip" else 1  # SigLIP has no CLS: every token is a patch
    got = tower(pixels)
    assert got.shape == (1, 16, tower.hidden_size) and tower.num_patches == 16
    assert torch.equal(got, hidden[:, prefix:])
    assert AutoConfig.from_pretrained(towers[kind]).model_type in tower.model_types


@pytest.mark.parametrize("mode", ["RGB", "L", "P"])
@pytest.mark.parametrize("size", [(57, 41), (20, 90), (32, 32)])
def test_image_processor_equals_clips_eval_transform(mode, size):
    cfg = clips_tower.get_model_config("clips-tiny")
    processor, transform = clips_image_processor(cfg), clips_tower.image_transform(cfg, train=False)
    img = random_image(*size, mode=mode, seed=size[0])
    got = processor(img, return_tensors="pt")["pixel_values"][0]
    assert got.shape == (3, 32, 32)
    assert (got - transform(img)).abs().max() <= 1e-5


def test_image_processor_follows_the_config_preprocess():
    """Other open_clip preprocess settings map too: shortest-side resize + centre crop, bicubic."""
    import dataclasses

    cfg = clips_tower.get_model_config("clips-tiny")
    cfg = dataclasses.replace(cfg, preprocess=dataclasses.replace(cfg.preprocess, resize_mode="shortest",
                                                                  interpolation="bicubic", mean=(0.5,) * 3))
    processor, transform = clips_image_processor(cfg), clips_tower.image_transform(cfg, train=False)
    for size in [(64, 48), (45, 77)]:
        img = random_image(*size, seed=1)
        assert (processor(img, return_tensors="pt")["pixel_values"][0] - transform(img)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="has no image-processor equivalent"):
        clips_image_processor(dataclasses.replace(cfg, preprocess=dataclasses.replace(cfg.preprocess, resize_mode="pad")))


_ZERO3_SCRIPT = textwrap.dedent("""
    import importlib, sys
    import torch, torch.distributed as dist
    from llava_integration.towers import load_vision_tower  # imports transformers before zero.Init
    import clips_tower, deepspeed
    # The CPU accelerator compiles a shared-memory all-reduce kernel on first use (minutes); a
    # single process never needs it, so the test skips that build.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    dist.init_process_group("gloo", rank=0, world_size=1)
    ckpt = sys.argv[1]
    ref = clips_tower.load_model(ckpt).visual
    ref_named = load_vision_tower("clips:clips-tiny").vision_tower.state_dict()
    ds = {"zero_optimization": {"stage": 3}, "train_batch_size": 1}
    with deepspeed.zero.Init(config_dict_or_path=ds):
        tower = load_vision_tower("clips:" + ckpt)
        named = load_vision_tower("clips:clips-tiny")
    params = list(tower.parameters()) + list(named.parameters())
    assert all(hasattr(p, "ds_id") and p.numel() == 0 for p in params), "weights were not partitioned"
    try:  # the failure the tower's loading avoids
        tower.vision_tower.load_state_dict(ref.state_dict())
        raise SystemExit("plain load_state_dict into partitioned params unexpectedly worked")
    except RuntimeError as e:
        assert "size mismatch" in str(e)
    with deepspeed.zero.GatheredParameters(params):
        got, got_named, want = tower.vision_tower.state_dict(), named.vision_tower.state_dict(), ref.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        assert all(torch.equal(got_named[k], ref_named[k]) for k in ref_named)
    engine, *_ = deepspeed.initialize(model=tower, config=ds)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(engine(x), ref.forward_features(x, layer=-2)[:, 1:])
    print("ZERO3_OK")
""")


def test_zero3_loading_into_partitioned_parameters(towers, tmp_path):
    """Built inside deepspeed.zero.Init (as under HF from_pretrained with ZeRO-3), the tower's
    parameters are partitioned; loading still writes the checkpoint's exact values, and the
    ZeRO-3 engine's forward equals the CLIPS model."""
    pytest.importorskip("deepspeed")
    script = tmp_path / "zero3.py"
    script.write_text(_ZERO3_SCRIPT)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 1000),
           "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    proc = subprocess.run([sys.executable, str(script), str(towers["clips"])], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and "ZERO3_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
