"""CLIPS towers inside the original LLaVA package (``llava-torch``, installed with --no-deps)."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch
from helpers.towers import save_clips, save_hf_clip_vision, tiny_clips

pytest.importorskip("llava.model", reason="llava-torch is not installed (pip install llava-torch --no-deps)")

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX  # noqa: E402
from llava.model import LlavaConfig, LlavaLlamaForCausalLM  # noqa: E402
from llava.model import llava_arch  # noqa: E402
from llava.model.multimodal_encoder import builder  # noqa: E402
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower  # noqa: E402

from llava_integration import original_llava  # noqa: E402
from llava_integration.towers import CLIPSVisionTower, CLIPVisionTowerHF  # noqa: E402


@pytest.fixture(scope="module")
def clips_ckpt(tmp_path_factory):
    return save_clips(tiny_clips(), tmp_path_factory.mktemp("ckpt") / "clips-tiny")


@pytest.fixture
def registered():
    original_llava.register()
    yield
    original_llava.unregister()


def _tower_args(tower: str) -> types.SimpleNamespace:
    """What LLaVA's train.py passes as ``model_args`` to initialize_vision_modules (LLaVA-1.5 stage 1)."""
    return types.SimpleNamespace(vision_tower=tower, mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                                 pretrain_mm_mlp_adapter=None, mm_patch_merge_type="flat", mm_projector_type="mlp2x_gelu")


def _tiny_llava(tower: str) -> LlavaLlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlavaConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=256)
    model = LlavaLlamaForCausalLM(cfg)
    model.get_model().initialize_vision_modules(model_args=_tower_args(tower))
    return model


def test_importing_the_plugin_does_not_import_llava():
    code = ("import sys, llava_integration.original_llava, llava_integration.towers, llava_integration.assemble; "
            "assert 'llava' not in sys.modules, sorted(m for m in sys.modules if m.startswith('llava.'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_register_routes_clips_and_keeps_llava_towers(registered, clips_ckpt, tmp_path):
    args = types.SimpleNamespace(mm_vision_tower=f"clips:{clips_ckpt}", mm_vision_select_layer=-2)
    for module in (builder, llava_arch):  # llava_arch imported the builder by name: both are patched
        tower = module.build_vision_tower(args, delay_load=True)
        assert isinstance(tower, CLIPSVisionTower) and not tower.is_loaded
    hf = save_hf_clip_vision(tmp_path / "hf-clip")
    other = llava_arch.build_vision_tower(types.SimpleNamespace(mm_vision_tower=str(hf), mm_vision_select_layer=-2))
    assert type(other) is CLIPVisionTower  # LLaVA's own tower, untouched
    ours = builder.build_vision_tower(types.SimpleNamespace(mm_vision_tower=f"clip:{hf}", mm_vision_select_layer=-2))
    assert type(ours) is CLIPVisionTowerHF and ours.is_loaded  # every kind prefix routes to this project's towers
    with pytest.raises(ValueError, match="Unknown vision tower: not-a-tower"):
        builder.build_vision_tower(types.SimpleNamespace(mm_vision_tower="not-a-tower"))
    wrapped = builder.build_vision_tower
    original_llava.register()  # idempotent: no double wrapping
    assert builder.build_vision_tower is wrapped
    original_llava.unregister()
    assert not hasattr(builder.build_vision_tower, "_clips_original_builder")
    assert not hasattr(llava_arch.build_vision_tower, "_clips_original_builder")


def test_llava_llama_forward_backward_with_a_clips_tower(registered, clips_ckpt):
    model = _tiny_llava(f"clips:{clips_ckpt}")
    tower = model.get_vision_tower()
    assert isinstance(tower, CLIPSVisionTower) and tower.is_loaded
    assert model.config.mm_hidden_size == 64 and model.config.mm_vision_tower == f"clips:{clips_ckpt}"
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 7, 8, 9], [1, IMAGE_TOKEN_INDEX, 7, 8, 9, 10]])
    labels = ids.masked_fill(ids == IMAGE_TOKEN_INDEX, IGNORE_INDEX)
    images = torch.randn(2, 3, 32, 32)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, images=images)
    assert out.logits.shape == (2, 5 + 16, 120) and torch.isfinite(out.loss)
    out.loss.backward()
    projector = model.get_model().mm_projector
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())
    assert all(p.grad is None for p in tower.parameters())  # frozen tower
    # The image embeddings LLaVA splices in are the projector applied to CLIPS' penultimate patch tokens.
    *_, embeds, _ = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, labels, images)
    with torch.no_grad():
        patches = tiny_clips().visual.forward_features(images, layer=-2)[:, 1:]
        assert torch.allclose(embeds[0, 2:18], projector(patches[0]), atol=1e-6)
        assert torch.allclose(embeds[1, 1:17], projector(patches[1]), atol=1e-6)


def test_saved_llava_reloads_the_tower_from_mm_vision_tower(registered, clips_ckpt, tmp_path):
    """As with LLaVA's CLIP tower, a saved LLaVA model rebuilds its tower lazily (delay_load) and
    takes the weights from the checkpoint named in the config, not from the LLaVA folder."""
    model = _tiny_llava(f"clips:{clips_ckpt}")
    with torch.no_grad():
        for p in model.get_vision_tower().parameters():
            p.zero_()
    model.save_pretrained(tmp_path / "llava")
    again = LlavaLlamaForCausalLM.from_pretrained(tmp_path / "llava")
    tower = again.get_vision_tower()
    assert isinstance(tower, CLIPSVisionTower) and not tower.is_loaded
    tower.load_model()
    want = tiny_clips().visual.state_dict()
    assert all(torch.equal(tower.vision_tower.state_dict()[k], want[k]) for k in want)
    assert torch.equal(again.get_model().mm_projector[0].weight, model.get_model().mm_projector[0].weight)


def test_chat_template_renders_llava_vicuna_v1():
    from llava.conversation import conv_vicuna_v1
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    from llava_integration.chat_template import VICUNA_CHAT_TEMPLATE

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                  bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.chat_template = VICUNA_CHAT_TEMPLATE
    conv = conv_vicuna_v1.copy()
    for role, text in [("USER", "<image>\nWhat is shown?"), ("ASSISTANT", "A red circle."), ("USER", "Colour?"),
                       ("ASSISTANT", "Red.")]:
        conv.append_message(role, text)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
                {"role": "assistant", "content": "A red circle."}, {"role": "user", "content": "Colour?"},
                {"role": "assistant", "content": "Red."}]
    assert tok.apply_chat_template(messages, tokenize=False) == conv.get_prompt()
    conv.messages[-1][1] = None  # LLaVA's generation prompt
    assert tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True) == conv.get_prompt()
