"""The CLIPS model: registry sweep, official layout, attention paths, mask, captioner, checkpointing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import clips_tower
from clips_tower.captioner import prefix_causal_mask, prefix_causal_mask_reference
from clips_tower.layers import reference_attention
from clips_tower.open_clip_format import state_dict_to_open_clip


@pytest.mark.parametrize("name", clips_tower.list_models())
def test_every_registered_model_instantiates(name):
    model = clips_tower.create_model(name, device="meta")
    cfg = model.config
    assert cfg.name == name
    assert model.visual.positional_embedding.shape == (cfg.vision.num_patches + 1, cfg.vision.width)
    assert model.text.positional_embedding.shape == (80, cfg.text.width)
    assert model.captioner.queries.shape == (128, cfg.captioner.width)
    # Analytic count of one tower's transformer: 12 W^2 + 13 W per block (qkv, out, fc, proj, 2 LN).
    w, L = cfg.vision.width, cfg.vision.layers
    blocks = sum(p.numel() for p in model.visual.transformer.parameters())
    assert blocks == L * (12 * w * w + 13 * w)


def _official_l14_336_layout() -> dict[str, tuple]:
    """Keys and shapes of the released ViT-L-14-336 open_clip checkpoint, written from the spec."""
    expected = {
        "visual.conv1.weight": (1024, 3, 14, 14),
        "visual.class_embedding": (1024,),
        "visual.positional_embedding": (577, 1024),
        "visual.ln_post.weight": (1024,), "visual.ln_post.bias": (1024,),
        "visual.proj": (1024, 768),
        "token_embedding.weight": (32000, 768),
        "positional_embedding": (80, 768),
        "ln_final.weight": (768,), "ln_final.bias": (768,),
        "text_projection": (768, 768),
        "logit_scale": (),
    }

    def block(prefix: str, w: int) -> dict[str, tuple]:
        return {
            f"{prefix}.ln_1.weight": (w,), f"{prefix}.ln_1.bias": (w,),
            f"{prefix}.attn.in_proj_weight": (3 * w, w), f"{prefix}.attn.in_proj_bias": (3 * w,),
            f"{prefix}.attn.out_proj.weight": (w, w), f"{prefix}.attn.out_proj.bias": (w,),
            f"{prefix}.ln_2.weight": (w,), f"{prefix}.ln_2.bias": (w,),
            f"{prefix}.mlp.c_fc.weight": (4 * w, w), f"{prefix}.mlp.c_fc.bias": (4 * w,),
            f"{prefix}.mlp.c_proj.weight": (w, 4 * w), f"{prefix}.mlp.c_proj.bias": (w,),
        }

    for i in range(24):
        expected.update(block(f"visual.transformer.resblocks.{i}", 1024))
    for i in range(12):
        expected.update(block(f"transformer.resblocks.{i}", 768))
    return expected


def test_l14_336_encoders_match_official_layout():
    model = clips_tower.create_model("clips-vit-l-14-336", device="meta", captioner=False)
    ours = {k: tuple(v.shape) for k, v in state_dict_to_open_clip(model.state_dict()).items()}
    assert ours == _official_l14_336_layout()


def test_h14_matches_released_sizes():
    model = clips_tower.create_model("clips-vit-h-14", device="meta", captioner=False)
    sd = state_dict_to_open_clip(model.state_dict())
    assert sd["visual.proj"].shape == (1280, 1024)
    assert sd["visual.transformer.resblocks.31.attn.in_proj_weight"].shape == (3840, 1280)
    assert sd["transformer.resblocks.23.mlp.c_fc.weight"].shape == (4096, 1024)
    assert "visual.transformer.resblocks.32.ln_1.weight" not in sd
    assert not any(k.startswith("visual.ln_pre") or "attn_mask" in k for k in sd)


@pytest.mark.parametrize("masked", [False, True])
def test_sdpa_equals_reference_attention(masked):
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    mask = prefix_causal_mask(4, 3, torch.device("cpu")) if masked else None
    ref = reference_attention(q, k, v, mask)
    assert torch.allclose(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), ref, atol=1e-6)


def test_model_sdpa_and_reference_paths_agree(tiny_model, tiny_batch):
    images, texts, targets = tiny_batch
    tiny_model.eval()
    with torch.no_grad():
        fast = tiny_model(images, texts, targets)
        tiny_model.set_attn_impl("reference")
        slow = tiny_model(images, texts, targets)
    assert torch.allclose(fast["image_features"], slow["image_features"], atol=1e-5)
    for name in texts:
        assert torch.allclose(fast["text_features"][name], slow["text_features"][name], atol=1e-5)
    assert torch.allclose(fast["caption_logits"], slow["caption_logits"], atol=1e-4)


@pytest.mark.parametrize("prefix,queries", [(1, 1), (3, 4), (5, 2), (0, 3), (6, 0)])
def test_captioner_mask_matches_brute_force(prefix, queries):
    assert torch.equal(prefix_causal_mask(prefix, queries, torch.device("cpu")), prefix_causal_mask_reference(prefix, queries))


def test_captioner_mask_is_built_once_per_shape():
    a = prefix_causal_mask(17, 128, torch.device("cpu"))
    assert prefix_causal_mask(17, 128, torch.device("cpu")) is a


def test_captioner_queries_are_causal(tiny_model, tiny_batch):
    """d logits[query i] / d queries[j] is zero for j > i and non-zero for j <= i."""
    images, texts, _ = tiny_batch
    cap = tiny_model.captioner
    _, image_tokens = tiny_model.visual(images[:1])
    _, text_tokens = tiny_model.text(texts["web"][:1])
    i = 10
    out = cap(image_tokens[:, 1:], text_tokens[:, :-1])[0, i].sum()
    (grad,) = torch.autograd.grad(out, cap.queries)
    per_query = grad.abs().sum(-1)
    assert torch.all(per_query[i + 1:] == 0)
    assert torch.all(per_query[: i + 1] > 0)


def test_forward_returns_features_and_supervised_positions(tiny_model, tiny_batch, tokenizer):
    images, texts, targets = tiny_batch
    out = tiny_model(images, texts, targets)
    assert out["image_features"].shape == (4, 32)
    assert set(out["text_features"]) == {"web", "sub"}
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(4), atol=1e-5)
    assert math.isclose(out["logit_scale"].item(), 1 / 0.07, rel_tol=1e-5)
    # labels = targets shifted left by one; every non-pad label is supervised exactly once.
    shifted = torch.cat([targets[:, 1:], torch.zeros(4, 1, dtype=targets.dtype)], dim=1)
    assert torch.equal(out["caption_labels"], shifted[shifted != 0])
    assert out["caption_logits"].shape == (int((shifted != 0).sum()), 32000)
    assert out["caption_labels"][0].item() == targets[0, 1].item()


def test_supervised_logits_equal_full_logits(tiny_model, tiny_batch):
    images, texts, targets = tiny_batch
    tiny_model.eval()
    with torch.no_grad():
        out = tiny_model(images, texts, targets)
        _, image_tokens = tiny_model.visual(images)
        _, text_tokens = tiny_model.text(texts["web"])
        full = tiny_model.captioner(image_tokens[:, 1:], text_tokens[:, :-1])
    keep = torch.cat([targets[:, 1:], torch.zeros(4, 1, dtype=targets.dtype)], dim=1) != 0
    assert torch.allclose(out["caption_logits"], full[keep], atol=1e-5)
    assert torch.equal(tiny_model.generate_caption_ids(images, texts["web"]), full.argmax(-1))


def _sampled_candidates(labels: torch.Tensor, vocab: int, k: int, seed: int) -> list[int]:
    """The candidate tokens of a sampled-softmax call made right after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return sorted(set(labels.tolist()) | set(torch.randint(vocab, (k,)).tolist()))


def test_sampled_caption_softmax_is_the_full_softmax_restricted_to_candidates(tiny_model, tiny_batch):
    """caption_negatives=k: logits are the full logits at the batch's target tokens plus k uniform
    draws (sorted, distinct), labels index them, and the loss equals a brute-force restricted softmax."""
    images, texts, targets = tiny_batch
    tiny_model.eval()
    with torch.no_grad():
        full = tiny_model(images, texts, targets)
        torch.manual_seed(7)
        sampled = tiny_model(images, texts, targets, caption_negatives=50)
    candidates = _sampled_candidates(full["caption_labels"], 32000, 50, seed=7)
    assert sampled["caption_logits"].shape == (full["caption_logits"].shape[0], len(candidates))
    assert torch.allclose(sampled["caption_logits"], full["caption_logits"][:, candidates], atol=1e-5)
    assert [candidates[i] for i in sampled["caption_labels"].tolist()] == full["caption_labels"].tolist()
    brute = [-(row[label] - torch.logsumexp(row[candidates], 0)) for row, label
             in zip(full["caption_logits"], full["caption_labels"].tolist())]
    loss = F.cross_entropy(sampled["caption_logits"], sampled["caption_labels"], reduction="sum")
    assert torch.allclose(loss, torch.stack(brute).sum(), atol=1e-4)


def test_sampled_caption_softmax_updates_only_candidate_rows(tiny_model, tiny_batch):
    images, texts, targets = tiny_batch
    torch.manual_seed(3)
    out = tiny_model(images, texts, targets, caption_negatives=20)
    F.cross_entropy(out["caption_logits"], out["caption_labels"]).backward()
    touched = tiny_model.captioner.head.weight.grad.abs().sum(-1).nonzero().flatten().tolist()
    labels = targets[:, 1:][targets[:, 1:] != 0]
    assert touched == _sampled_candidates(labels, 32000, 20, seed=3)


def test_forward_without_captioner_rejects_targets(tiny_batch):
    images, texts, targets = tiny_batch
    model = clips_tower.create_model("clips-tiny", captioner=False)
    assert "caption_logits" not in model(images, texts)
    with pytest.raises(ValueError, match="no captioner"):
        model(images, texts, targets)


def test_forward_features_layers(tiny_model):
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        last = tiny_model.visual.forward_features(images, layer=-1)
        _, tokens = tiny_model.visual(images)
        emb = tiny_model.visual.forward_features(images, layer=0)
        penult = tiny_model.visual.forward_features(images, layer=-2)
        manual = tiny_model.visual.transformer.resblocks[0](emb)
    assert last.shape == (2, 17, 64)
    assert torch.equal(last, tokens)
    assert torch.allclose(emb, tiny_model.visual.embed(images))
    assert torch.allclose(penult, manual)
    with pytest.raises(IndexError):
        tiny_model.visual.forward_features(images, layer=3)


def test_wrong_image_size_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match=r"expected images \[B,3,32,32\]"):
        tiny_model.encode_image(torch.randn(1, 3, 64, 64))


def test_gradient_checkpointing_gives_same_gradients(tiny_batch):
    images, texts, targets = tiny_batch

    def grads(ckpt: bool) -> dict:
        torch.manual_seed(0)
        model = clips_tower.create_model("clips-tiny")
        model.set_grad_checkpointing(ckpt)
        out = model(images, texts, targets)
        loss = out["logit_scale"] * (out["image_features"] * out["text_features"]["sub"]).sum() + F.cross_entropy(
            out["caption_logits"], out["caption_labels"])
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, ckpt = grads(False), grads(True)
    for name in plain:
        assert torch.allclose(plain[name], ckpt[name], atol=1e-6), name


def test_bf16_autocast_forward_backward(tiny_model, tiny_batch):
    images, texts, targets = tiny_batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny_model(images, texts, targets)
        loss = F.cross_entropy(out["caption_logits"].float(), out["caption_labels"])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in tiny_model.parameters() if p.grad is not None)
    with torch.no_grad():
        ref = tiny_model(images, texts)["image_features"]
    assert torch.allclose(out["image_features"].float(), ref, atol=0.05)


def test_config_errors_name_key_and_source(tmp_path):
    cfg = clips_tower.get_model_config("clips-tiny").to_dict()
    cfg["vision"]["widht"] = 3
    path = tmp_path / "bad.json"
    import json

    path.write_text(json.dumps(cfg))
    with pytest.raises(clips_tower.ConfigError, match=r"bad.json.vision: unknown key\(s\) \['widht'\]"):
        clips_tower.load_config(path)
    cfg["vision"].pop("widht")
    cfg["text"]["layers"] = "2"
    path.write_text(json.dumps(cfg))
    with pytest.raises(clips_tower.ConfigError, match=r"text.layers: expected an integer, got str"):
        clips_tower.load_config(path)


@pytest.mark.parametrize("section,key,value,match", [
    ("preprocess", "mean", [0.5, 0.5], r"bad.json.preprocess.mean: expected 3 values, got 2"),
    ("preprocess", "std", [0.2, 0.2, 0.2, 0.2], r"bad.json.preprocess.std: expected 3 values, got 4"),
    ("vision", "layers", True, r"bad.json.vision.layers: expected an integer, got bool True"),
    ("vision", "mlp_ratio", False, r"bad.json.vision.mlp_ratio: expected a number, got bool False"),
    ("vision", "mlp_ratio", "4.0", r"bad.json.vision.mlp_ratio: expected a number, got str"),
])
def test_config_tuple_lengths_and_bools_name_key_and_file(tmp_path, section, key, value, match):
    """Model configs go through the same strict loader as run configs (one ConfigError)."""
    import json

    import pretrain.config

    cfg = clips_tower.get_model_config("clips-tiny").to_dict()
    cfg[section][key] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(pretrain.config.ConfigError, match=match):  # the same class as clips_tower.ConfigError
        clips_tower.load_config(path)
    cfg.pop("embed_dim")
    path.write_text(json.dumps(cfg))
    with pytest.raises(clips_tower.ConfigError, match=r"bad.json: missing required key\(s\) \['embed_dim'\]"):
        clips_tower.load_config(path)


def test_config_round_trip():
    for name in clips_tower.list_models():
        cfg = clips_tower.get_model_config(name)
        assert clips_tower.config.config_from_dict(cfg.to_dict()) == cfg


def test_unknown_model_name_lists_registered():
    with pytest.raises(KeyError, match=r"not a registered name nor a model JSON file.*clips-tiny"):
        clips_tower.create_model("clips-vit-z-99")


def test_model_config_from_a_json_path(tmp_path):
    import json

    cfg = clips_tower.get_model_config("clips-tiny").to_dict()
    cfg["name"] = "my-variant"
    (tmp_path / "my.json").write_text(json.dumps(cfg))
    loaded = clips_tower.get_model_config(str(tmp_path / "my.json"))
    assert loaded.name == "my-variant" and loaded.to_dict() == cfg
