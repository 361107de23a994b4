"""Registry sweeps: every registered model, lmms-eval chat template and training engine is tested
from its registry, so a new entry is tested without anyone listing it here.

(Next to the tests of their modules: tower kinds in ``test_llava_towers.py``, recipes and caption
strategies in ``test_pretrain_sampling.py``, conversation templates in ``test_llava_data.py``,
contrastive losses in ``test_pretrain_losses.py``, model configs on the meta device in
``test_model.py``.)

Models: each registered model trains (forward + backward) at its real widths, heads, MLP ratio,
activation, patch size, vocabulary, embedding and captioner-query sizes, with one transformer
block per tower and a 2x2 patch input; its full depth and resolution are checked on the meta
device (``test_model.py::test_every_registered_model_instantiates``), not trained here.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
from helpers.models import one_block, restore_depth
from tokenizers import Tokenizer, models

import clips_tower
from pretrain.config import OptimSection, StageSection
from pretrain.engines import ENGINES, Engine
from pretrain.losses import CLIPSLoss
from pretrain.nonfinite import NonFiniteStep
from pretrain.objective import CLIPSObjective
from pretrain.optim import stage_lr_factors
from pretrain.step import StepSettings, train_step

# ------------------------------------------------------------------ models

CAPTIONS = ["a red ball on a wooden floor.", "two dogs run on green grass. one has a stick."]


@pytest.mark.parametrize("name", clips_tower.list_models())
@pytest.mark.usefixtures("one_thread")
def test_every_registered_model_trains_and_every_parameter_gets_a_gradient(name, tokenizer):
    full = clips_tower.get_model_config(name)
    cfg = one_block(full)
    assert restore_depth(cfg, full) == full  # only the depths and the input size differ
    model = clips_tower.create_model(cfg)

    lengths = (cfg.text.context_length, cfg.captioner.num_queries if cfg.captioner else tokenizer.target_length)
    tok = tokenizer if (tokenizer.context_length, tokenizer.target_length) == lengths else (
        clips_tower.load_tokenizer(context_length=lengths[0], target_length=lengths[1]))
    images = torch.randn(len(CAPTIONS), 3, cfg.vision.image_size, cfg.vision.image_size)
    texts = {"web": tok(["a red ball", "two dogs"]), "sub": tok(CAPTIONS)}
    targets = tok.encode_targets(CAPTIONS) if cfg.captioner else None
    out = model(images, texts, targets)
    assert out["image_features"].shape == (2, cfg.embed_dim)
    terms = CLIPSLoss({"web": 0.5, "sub": 0.5})(out["image_features"], out["text_features"], out["logit_scale"],
                                                 out.get("caption_logits"), out.get("caption_labels"))
    assert set(terms) >= {"contrastive", "loss"} | ({"caption"} if cfg.captioner else set())
    terms["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# ------------------------------------------------------------------ chat templates (lmms-eval prompts)

def test_every_chat_template_renders_its_training_conversation_template():
    """The Jinja template lmms-eval prompts with writes exactly what the training-side conversation
    template of the same name writes, for a multi-turn conversation (BOS is the tokenizer's to add)."""
    from eval.lmms.adapter import CHAT_TEMPLATES
    from llava_integration.conversation import get_template
    from transformers import PreTrainedTokenizerFast

    turns = [{"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A red circle."},
             {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Red."}]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
                {"role": "assistant", "content": "A red circle."}, {"role": "user", "content": "Colour?"},
                {"role": "assistant", "content": "Red."}]
    assert CHAT_TEMPLATES
    for name, jinja in CHAT_TEMPLATES.items():
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                      bos_token="<s>", eos_token="</s>", unk_token="<unk>")
        tok.chat_template = jinja
        training = get_template(name).render(turns, tok).text
        assert tok.apply_chat_template(messages, tokenize=False) == training, name


# ------------------------------------------------------------------ training engines

def test_every_engine_implements_the_engine_protocol():
    members = [m for m in Engine.__dict__ if not m.startswith("_")] + list(typing.get_type_hints(Engine))
    for name, cls in ENGINES.items():
        missing = [m for m in members if m != "module" and not hasattr(cls, m)]
        assert missing == [], f"{name}: {cls.__name__} lacks {missing}"
        assert isinstance(cls.can_skip_update, bool)


def _tiny_objective(contrastive_weight: float = 1.0) -> tuple[CLIPSObjective, list[dict]]:
    torch.manual_seed(0)
    cfg = clips_tower.get_model_config("clips-tiny")
    cfg = dataclasses.replace(cfg, captioner=dataclasses.replace(cfg.captioner, num_queries=16))
    tok = clips_tower.load_tokenizer(target_length=16)
    obj = CLIPSObjective(clips_tower.create_model(cfg), CLIPSLoss({"web": 0.5, "sub": 0.5}))
    batch = {"images": torch.randn(4, 3, 32, 32), "texts": {"web": tok([f"web {i}" for i in range(4)]),
                                                            "sub": tok([f"a sentence {i}." for i in range(4)])},
             "targets": tok.encode_targets([f"word {i} and more." for i in range(4)])}
    return obj, [batch]


def _engine(name: str, obj: CLIPSObjective) -> Engine:
    if name == "deepspeed":
        pytest.skip("DeepSpeed needs its own process group and accelerator setup: trained end to end in "
                    "test_pretrain_distributed.py::test_deepspeed_zero2_single_process_trains_and_resumes")
    lr = stage_lr_factors([StageSection(steps=4)], 1e-3, 0, "cosine", 0.0)
    return ENGINES[name](obj, strategy=name, device=torch.device("cpu"), world=1, optim_cfg=OptimSection(lr=1e-3),
                         lr_factor=lr, precision="fp32", grad_clip=1.0, max_logit_scale=100.0, micro_batch_size=4,
                         accum_steps=1, zero_stage=2, deepspeed_config=None)


SETTINGS = StepSettings(torch.device("cpu"), 1, "fp32", 1.0, 2.0)


@pytest.mark.parametrize("name", sorted(ENGINES))
@pytest.mark.usefixtures("one_thread")
def test_every_engine_steps_and_handles_a_nonfinite_step_as_it_declares(name, monkeypatch):
    obj, batches = _tiny_objective()
    engine = _engine(name, obj)
    before = {n: p.detach().clone() for n, p in obj.named_parameters()}
    values, tokens = train_step(engine, batches, SETTINGS)
    assert tokens == float((batches[0]["targets"][:, 1:] != 0).sum())
    assert values["loss"] == pytest.approx(values["contrastive"] + 2.0 * values["caption"])
    changed = {n for n, p in obj.named_parameters() if not torch.equal(p, before[n])}
    assert "model.visual.proj" in changed and "model.captioner.queries" in changed

    after_one = {n: p.detach().clone() for n, p in obj.named_parameters()}
    lr_before = engine.lr
    forward = obj.loss.forward

    def nan_caption(*args, **kwargs):
        out = forward(*args, **kwargs)
        return {**out, "caption": out["caption"] * float("nan"), "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(obj.loss, "forward", nan_caption)
    with pytest.raises(NonFiniteStep) as e:
        train_step(engine, batches, SETTINGS)
    assert e.value.skipped is engine.can_skip_update
    assert "caption" in e.value.what and "loss" in e.value.what
    if engine.can_skip_update:  # nothing updated, the gradients dropped, the schedule moved on
        assert all(torch.equal(p, after_one[n]) for n, p in obj.named_parameters())
        assert all(p.grad is None for p in obj.parameters())
        assert engine.lr != lr_before
