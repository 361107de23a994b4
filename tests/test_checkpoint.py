"""Checkpoint formats: own and official open_clip, strict loading, interpolation, CLI export."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import clips_tower
from clips_cli.main import main as clips_main
from clips_tower.checkpoint import CheckpointError, read_weights
from clips_tower.open_clip_format import config_from_open_clip, state_dict_to_open_clip
from clips_tower.vision import resize_pos_embed
from helpers.reference_open_clip import OpenCLIPReference


def _official_folder(tmp_path, model, weights="open_clip_pytorch_model.bin"):
    """Write a folder shaped like the released checkpoints: config JSON + fp32 pickled state dict."""
    cfg = model.config
    oc = {
        "model_cfg": {
            "embed_dim": cfg.embed_dim,
            "vision_cfg": {"image_size": cfg.vision.image_size, "layers": cfg.vision.layers, "width": cfg.vision.width,
                           "patch_size": cfg.vision.patch_size, "head_width": cfg.vision.width // cfg.vision.heads,
                           "no_ln_pre": True, "pool_type": "avg", "final_ln_after_pool": True,
                           "norm_kwargs": {"eps": 1e-6}},
            "text_cfg": {"context_length": 80, "vocab_size": 32000, "hf_tokenizer_name": "bert-base-uncased",
                         "tokenizer_mode": "clips", "width": cfg.text.width, "heads": cfg.text.heads,
                         "layers": cfg.text.layers, "pool_type": "last", "no_causal_mask": True,
                         "act_kwargs": {"approximate": "tanh"}, "norm_kwargs": {"eps": 1e-6}},
        },
        "preprocess_cfg": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                           "interpolation": "bilinear", "resize_mode": "squash"},
    }
    folder = tmp_path / "official"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(oc))
    sd = state_dict_to_open_clip(model.state_dict())
    if weights.endswith(".bin"):
        torch.save(sd, folder / weights)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, folder / weights)
    return folder


@pytest.fixture
def encoders():
    torch.manual_seed(0)
    return clips_tower.create_model("clips-tiny", captioner=False).eval()


def test_own_format_round_trip_with_captioner(tmp_path, tiny_model, tiny_batch, tokenizer):
    images, texts, targets = tiny_batch
    folder = clips_tower.save_model(tiny_model, tmp_path / "ckpt", tokenizer=tokenizer)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt"]
    again = clips_tower.load_model(folder)
    assert again.config == tiny_model.config
    with torch.no_grad():
        a, b = tiny_model.eval()(images, texts, targets), again.eval()(images, texts, targets)
    assert torch.equal(a["image_features"], b["image_features"])
    assert torch.equal(a["caption_logits"], b["caption_logits"])
    assert torch.equal(clips_tower.load_tokenizer(folder)(["hello"]), tokenizer(["hello"]))


@pytest.mark.parametrize("weights", ["open_clip_pytorch_model.bin", "open_clip_model.safetensors"])
def test_official_checkpoint_loads_strictly_and_embeds_like_open_clip(tmp_path, encoders, tokenizer, weights):
    folder = _official_folder(tmp_path, encoders, weights)
    loaded = clips_tower.load_model(folder)
    assert loaded.captioner is None
    assert loaded.config.vision.ln_eps == 1e-6 and loaded.config.text.act == "gelu_tanh"
    # Independent reference with torch.nn.MultiheadAttention and open_clip's module names.
    ref = OpenCLIPReference(loaded.config)
    ref.load_state_dict(read_weights(folder / weights), strict=True)
    images = torch.randn(3, 3, 32, 32)
    ids = tokenizer(["a photo of a cat", "two dogs", ""])
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(images, normalize=True), ref.encode_image(images), atol=1e-5)
        assert torch.allclose(loaded.encode_text(ids, normalize=True), ref.encode_text(ids), atol=1e-5)


def test_open_clip_export_round_trip(tmp_path, tiny_model):
    folder = clips_tower.save_model(tiny_model, tmp_path / "oc", format="open_clip")
    assert sorted(p.name for p in folder.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    again = clips_tower.load_model(folder)
    assert again.config == dataclasses.replace(tiny_model.config.without_captioner(), name="oc")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.encode_image(images), tiny_model.encode_image(images))


def test_direct_weights_file_path(tmp_path, encoders):
    folder = _official_folder(tmp_path, encoders)
    model = clips_tower.load_model(folder / "open_clip_pytorch_model.bin")
    assert torch.equal(model.visual.proj, encoders.visual.proj)


def test_wrong_shape_names_key_and_both_shapes(tmp_path, encoders):
    folder = _official_folder(tmp_path, encoders)
    sd = torch.load(folder / "open_clip_pytorch_model.bin", weights_only=True)
    sd["visual.proj"] = torch.zeros(64, 16)
    del sd["ln_final.bias"]
    sd["visual.ln_pre.weight"] = torch.zeros(64)
    torch.save(sd, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(CheckpointError) as e:
        clips_tower.load_model(folder)
    msg = str(e.value)
    assert "visual.proj: checkpoint shape [64, 16] != model shape [64, 32]" in msg
    assert "missing keys: ['text.ln_final.bias']" in msg
    assert "unexpected keys: ['visual.ln_pre.weight']" in msg
    assert "open_clip_pytorch_model.bin" in msg


def test_checkpoint_of_another_model_size_is_rejected(tmp_path, tiny_model):
    folder = clips_tower.save_model(tiny_model, tmp_path / "ckpt")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vision"]["width"] = 128
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"visual.conv1.weight: checkpoint shape \[64, 3, 8, 8\] != model shape \[128, 3, 8, 8\]"):
        clips_tower.load_model(folder)


def test_non_clips_open_clip_config_is_rejected():
    oc = {"model_cfg": {"embed_dim": 8, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
                        "text_cfg": {"context_length": 80, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}}}
    with pytest.raises(clips_tower.ConfigError, match="vision_cfg.no_ln_pre = False, but CLIPS needs True"):
        config_from_open_clip(oc)
    oc["model_cfg"]["vision_cfg"].update(no_ln_pre=True, pool_type="avg", final_ln_after_pool=True, attentional_pool=True)
    with pytest.raises(clips_tower.ConfigError, match="attentional_pool"):
        config_from_open_clip(oc)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        clips_tower.load_model(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        clips_tower.load_model(tmp_path / "nope")


def test_corrupt_pickle_is_a_checkpoint_error(tmp_path, encoders):
    folder = _official_folder(tmp_path, encoders)
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        clips_tower.load_model(folder)


def test_resize_pos_embed_properties():
    pos = torch.randn(1 + 4 * 4, 8)
    assert resize_pos_embed(pos, 4) is pos
    big = resize_pos_embed(pos, 6)
    assert big.shape == (37, 8)
    assert torch.equal(big[0], pos[0])  # CLS untouched
    const = torch.cat([torch.zeros(1, 3), torch.full((16, 3), 2.5)])
    assert torch.allclose(resize_pos_embed(const, 7)[1:], torch.full((49, 3), 2.5), atol=1e-5)
    with pytest.raises(ValueError, match="square grid"):
        resize_pos_embed(torch.randn(1 + 15, 8), 4)


def test_load_at_higher_resolution_interpolates(tmp_path, tiny_model):
    folder = clips_tower.save_model(tiny_model, tmp_path / "ckpt")
    big = clips_tower.load_model(folder, image_size=48)
    assert big.config.vision.image_size == 48
    assert big.visual.positional_embedding.shape == (37, 64)
    assert torch.equal(big.visual.conv1.weight, tiny_model.visual.conv1.weight)
    assert big.encode_image(torch.randn(1, 3, 48, 48)).shape == (1, 32)


def test_atomic_save_keeps_old_checkpoint_on_failure(tmp_path, tiny_model, monkeypatch):
    folder = clips_tower.save_model(tiny_model, tmp_path / "ckpt")
    before = (folder / "model.safetensors").read_bytes()
    import clips_tower.checkpoint as ck

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ck, "atomic_save_safetensors", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        clips_tower.save_model(tiny_model, folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_models_and_export(tmp_path, capsys, tiny_model):
    assert clips_main(["models"]) == 0
    table = capsys.readouterr().out
    for name in clips_tower.list_models():
        assert f"| {name} |" in table
    assert "525.68M" in table  # clips-vit-l-14-336 total with captioner
    src = clips_tower.save_model(tiny_model, tmp_path / "ckpt")
    assert clips_main(["export", "open-clip", "--model", str(src), "--out", str(tmp_path / "oc")]) == 0
    exported = clips_tower.load_model(tmp_path / "oc")
    assert torch.equal(exported.text.text_projection, tiny_model.text.text_projection)
