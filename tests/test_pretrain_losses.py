"""Losses against brute-force definitions; local rows; gradient accumulation == one big batch."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import clips_tower
from pretrain.losses import CONTRASTIVE_LOSSES, CLIPSLoss, clip_loss, siglip_loss
from pretrain.objective import CLIPSObjective, FeatureBank


def _feats(n=6, e=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, e, generator=g, dtype=torch.float64), dim=-1),
            F.normalize(torch.randn(n, e, generator=g, dtype=torch.float64), dim=-1))


def test_clip_loss_is_symmetric_infonce():
    img, txt = _feats()
    s = torch.tensor(10.0, dtype=torch.float64)
    i2t = t2i = 0.0
    for i in range(6):  # written out per row from the definition
        li = [s * (img[i] @ txt[j]) for j in range(6)]
        lt = [s * (txt[i] @ img[j]) for j in range(6)]
        i2t += -(li[i] - torch.logsumexp(torch.stack(li), 0))
        t2i += -(lt[i] - torch.logsumexp(torch.stack(lt), 0))
    assert clip_loss(img, txt, s).item() == pytest.approx(((i2t + t2i) / 12).item(), rel=1e-12)


def test_siglip_loss_is_the_pairwise_sigmoid_sum():
    img, txt = _feats()
    s, b = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
    total = 0.0
    for i in range(6):
        for j in range(6):
            z = 1.0 if i == j else -1.0
            total += -math.log(1 / (1 + math.exp(-z * (s * (img[i] @ txt[j]) + b).item())))
    assert siglip_loss(img, txt, s, b).item() == pytest.approx(total / 6, rel=1e-12)


@pytest.mark.parametrize("name", sorted(CONTRASTIVE_LOSSES))
def test_row_partitions_average_to_the_full_loss(name):
    fn = CONTRASTIVE_LOSSES[name]
    img, txt = _feats(n=8)
    s, b = torch.tensor(7.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    parts = [fn(img, txt, s, b, rows=torch.arange(4 * r, 4 * r + 4)) for r in range(2)]
    assert ((parts[0] + parts[1]) / 2).item() == pytest.approx(fn(img, txt, s, b).item(), rel=1e-12)


def test_clips_loss_combines_terms_with_their_weights():
    img, web = _feats(seed=1)
    _, sub = _feats(seed=2)
    g = torch.Generator().manual_seed(3)
    logits, labels = torch.randn(10, 50, generator=g), torch.randint(0, 50, (10,), generator=g)
    s = torch.tensor(5.0)
    out = CLIPSLoss({"web": 0.5, "sub": 0.5})(img.float(), {"web": web.float(), "sub": sub.float()}, s, logits, labels)
    con = 0.5 * clip_loss(img.float(), web.float(), s) + 0.5 * clip_loss(img.float(), sub.float(), s)
    cap = F.cross_entropy(logits, labels)
    assert out["contrastive"].item() == pytest.approx(con.item(), rel=1e-6)
    assert out["caption"].item() == pytest.approx(cap.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx((1.0 * con + 2.0 * cap).item(), rel=1e-6)
    plain = CLIPSLoss({"web": 1.0}, caption_weight=0.0)(img.float(), {"web": web.float()}, s, logits, labels)
    assert "caption" not in plain and plain["loss"].item() == pytest.approx(clip_loss(img.float(), web.float(), s).item(), rel=1e-6)


def _grads(module):
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("contrastive", sorted(CONTRASTIVE_LOSSES))
def test_gradient_accumulation_equals_one_big_batch(contrastive):
    """Two micro-batches of 4 with the feature bank == one batch of 8: same loss, same gradients
    (logit scale and SigLIP bias counted once; caption CE normalised over all 8 samples' tokens)."""
    torch.manual_seed(0)
    cfg = clips_tower.get_model_config("clips-tiny")
    cfg = dataclasses.replace(cfg, captioner=dataclasses.replace(cfg.captioner, num_queries=16))  # keeps it fast in fp64
    tokenizer = clips_tower.load_tokenizer(target_length=16)
    model = clips_tower.create_model(cfg).double()
    obj = CLIPSObjective(model, CLIPSLoss({"web": 0.5, "sub": 0.5}, contrastive=contrastive).double())
    g = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64)
    texts = {"web": tokenizer([f"a photo number {i}" for i in range(8)]),
             "sub": tokenizer([f"sentence {i} about a red {'ball' * (i % 3 + 1)}." for i in range(8)])}
    targets = tokenizer.encode_targets([("a long caption " * (i + 1)).strip() + "." for i in range(8)])
    tokens = (targets[:, 1:] != 0).sum().double()

    full = obj(images, texts, targets, caption_norm=tokens)
    full["loss"].backward()
    ref = _grads(obj)
    obj.zero_grad()

    halves = [slice(0, 4), slice(4, 8)]
    with torch.no_grad():
        feats = [obj(images[h], {k: v[h] for k, v in texts.items()}, features_only=True) for h in halves]
    bank = FeatureBank(torch.cat([f[0] for f in feats]), {n: torch.cat([f[1][n] for f in feats]) for n in texts}, 4)
    caption = 0.0
    for j, h in enumerate(halves):
        out = obj(images[h], {k: v[h] for k, v in texts.items()}, targets[h], bank=bank, micro=j,
                  live_scale=j == 1, caption_norm=tokens)
        out["loss"].backward()
        caption += out["caption"].item()
        assert out["contrastive"].item() == pytest.approx(full["contrastive"].item(), rel=1e-12)
    assert caption == pytest.approx(full["caption"].item(), rel=1e-12)
    got = _grads(obj)
    assert got.keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-9, atol=1e-12, msg=n)


def test_logit_scale_is_capped_in_the_loss(tiny_model, tiny_batch):
    images, texts, targets = tiny_batch
    with torch.no_grad():
        tiny_model.logit_scale.fill_(math.log(500.0))
    seen = {}
    loss = CLIPSLoss({"web": 1.0})
    orig = loss.forward

    def spy(image, texts, scale, *a, **k):
        seen["scale"] = scale.item()
        return orig(image, texts, scale, *a, **k)

    loss.forward = spy
    CLIPSObjective(tiny_model, loss, max_logit_scale=100.0)(images, texts, targets)
    assert seen["scale"] == pytest.approx(100.0)
