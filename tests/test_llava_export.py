"""CLIPS tower -> stock transformers ViTModel; assembled HF LLaVA folders; the tiny local LLM."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers.towers import random_image, save_clips, save_hf_siglip_vision, tiny_clips

import clips_tower
from clips_cli.main import main as clips_main
from llava_integration.assemble import assemble_llava
from llava_integration.export import export_vision_tower
from llava_integration.tiny_llm import build_tiny_llm
from llava_integration.towers import hf_vision_config_and_state


@pytest.fixture(scope="module")
def tiny_llm_dir(tmp_path_factory):
    return build_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny-llama")


@pytest.fixture(scope="module")
def clips_ckpt(tmp_path_factory):
    return save_clips(tiny_clips(), tmp_path_factory.mktemp("ckpt") / "clips-tiny")


def test_tiny_llm_is_a_standard_hf_folder(tiny_llm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llm_dir)
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == ("<s>", "</s>", "<unk>", "<pad>")
    assert len(tok) == 512 and model.config.vocab_size == 512
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 200_000
    text = "What colour is the circle? It is red."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.decode(ids, skip_special_tokens=True) == text
    assert len(ids) < len(text) // 2  # BPE learned merges from the corpus
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("A chat between") and prompt.endswith("USER: hi ASSISTANT:")


@pytest.mark.parametrize("vision", [{}, {"layers": 3, "width": 96, "heads": 3, "act": "gelu_tanh", "ln_eps": 1e-5,
                                         "image_size": 48, "patch_size": 16}])
def test_exported_vit_reproduces_every_hidden_state(tmp_path, vision):
    from transformers import ViTModel

    model = tiny_clips(seed=3, **vision)
    out = export_vision_tower(f"clips:{save_clips(model, tmp_path / 'ckpt')}", tmp_path / "vit")
    vit, info = ViTModel.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    v = model.config.vision
    assert (vit.config.layer_norm_eps, vit.config.num_hidden_layers, vit.config.hidden_size) == (v.ln_eps, v.layers, v.width)
    pixels = torch.randn(2, 3, v.image_size, v.image_size)
    with torch.no_grad():
        out = vit.eval()(pixel_values=pixels, output_hidden_states=True)
        assert len(out.hidden_states) == v.layers + 1
        for i, hidden in enumerate(out.hidden_states):
            want = model.visual.forward_features(pixels, layer=i)
            assert (hidden - want).abs().max() <= 1e-5, f"hidden_states[{i}]"
        # last_hidden_state = ln_post per token (CLIPS pools before ln_post; see hf_export).
        assert torch.allclose(out.last_hidden_state, model.visual.ln_post(out.hidden_states[-1]), atol=1e-6)
        assert out.pooler_output.abs().max() == 0  # no CLIPS counterpart: exported as zeros


def test_hf_vision_config_and_state_fit_the_model_llava_builds(clips_ckpt):
    """HF LLaVA builds its tower with AutoModel.from_config(vision_config): the state must fit it exactly."""
    from transformers import AutoModel

    config, state = hf_vision_config_and_state(f"clips:{clips_ckpt}")
    model = AutoModel.from_config(config)
    assert type(model).__name__ == "ViTModel"
    model.load_state_dict(state, strict=True)


def test_export_vit_command_saves_the_clips_image_processor(clips_ckpt, tmp_path):
    from transformers import AutoImageProcessor

    assert clips_main(["llava", "export-vit", "--tower", str(clips_ckpt), "--out", str(tmp_path / "vit")]) == 0
    processor = AutoImageProcessor.from_pretrained(tmp_path / "vit")
    img = random_image(70, 30)
    transform = clips_tower.image_transform(clips_tower.load_model(clips_ckpt).config)
    assert (processor(img, return_tensors="pt")["pixel_values"][0] - transform(img)).abs().max() <= 1e-5
    assert json.loads((tmp_path / "vit" / "clips_export.json").read_text())["hf_class"] == "ViTModel"


# Runs with `python -I` in an empty folder, with every package of this project made unimportable:
# the assembled folder must work with plain transformers.
_PLAIN_TRANSFORMERS_SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys
    BLOCKED = ("clips_tower", "clips_cli", "llava_integration", "pretrain", "eval", "benchmarks", "llava")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} must not be needed to load the assembled LLaVA")

    sys.meta_path.insert(0, Block())
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    folder, image_file, expected_file = sys.argv[1:4]
    model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=Image.open(image_file), text=prompt, return_tensors="pt")
    with torch.no_grad():
        hidden = model.model.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states
        features = hidden[model.config.vision_feature_layer][:, 1:]
        generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    print(json.dumps({
        "vision_class": type(model.model.vision_tower).__name__,
        "image_tokens": int((inputs["input_ids"] == model.config.image_token_id).sum()),
        "prompt": prompt,
        "feature_max_abs_diff": (features - torch.load(expected_file)).abs().max().item(),
        "new_tokens": generated.shape[1] - inputs["input_ids"].shape[1],
        "project_modules": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
    }))
""")


def test_assembled_llava_runs_with_plain_transformers(clips_ckpt, tiny_llm_dir, tmp_path):
    out = tmp_path / "llava-clips"
    assert clips_main(["llava", "assemble", "--tower", f"clips:{clips_ckpt}", "--llm", str(tiny_llm_dir),
                       "--out", str(out)]) == 0
    img = random_image(50, 40)
    img.save(tmp_path / "image.png")
    model = clips_tower.load_model(clips_ckpt).eval()
    with torch.no_grad():  # what CLIPS itself computes for this image: preprocessing + penultimate block
        pixels = clips_tower.image_transform(model.config)(img)[None]
        torch.save(model.visual.forward_features(pixels, layer=-2)[:, 1:], tmp_path / "expected.pt")
    (tmp_path / "run.py").write_text(_PLAIN_TRANSFORMERS_SCRIPT)
    work = tmp_path / "empty"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-I", str(tmp_path / "run.py"), str(out), str(tmp_path / "image.png"),
                           str(tmp_path / "expected.pt")], cwd=work, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["project_modules"] == []
    assert result["vision_class"] == "ViTModel"
    assert result["image_tokens"] == 16  # (32 / 8)^2 patches, CLS dropped
    assert result["prompt"].endswith("USER: <image>\nWhat is shown? ASSISTANT:")
    assert result["feature_max_abs_diff"] <= 1e-5
    assert result["new_tokens"] == 4


def test_swapping_towers_changes_only_the_tower(clips_ckpt, tiny_llm_dir, tmp_path):
    """The same LLM assembled with a CLIPS and a SigLIP tower: identical LM weights, each with its
    own vision model, processor and feature selection; both run a training forward/backward."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    folders = {
        "clips": assemble_llava(f"clips:{clips_ckpt}", tiny_llm_dir, tmp_path / "clips"),
        "siglip": assemble_llava(str(save_hf_siglip_vision(tmp_path / "siglip-tower")), tiny_llm_dir, tmp_path / "siglip"),
    }
    models = {k: LlavaForConditionalGeneration.from_pretrained(f) for k, f in folders.items()}
    for part in ("model.language_model", "lm_head"):  # same LM weights (incl. the new <image> row)
        ref, got = models["clips"].get_submodule(part).state_dict(), models["siglip"].get_submodule(part).state_dict()
        assert ref.keys() == got.keys() and all(torch.equal(ref[n], got[n]) for n in ref)
    assert models["clips"].config.vision_config.model_type == "vit"
    assert models["siglip"].config.vision_config.model_type == "siglip_vision_model"
    assert models["clips"].config.vision_feature_select_strategy == "default"
    assert models["siglip"].config.vision_feature_select_strategy == "full"  # no CLS to drop
    for kind, folder in folders.items():
        processor = AutoProcessor.from_pretrained(folder)
        inputs = processor(images=random_image(), text="<image>\nA red circle.", return_tensors="pt")
        assert int((inputs["input_ids"] == models[kind].config.image_token_id).sum()) == 16
        model = models[kind].float().train()
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        assert torch.isfinite(loss) and model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0


def test_assemble_in_bfloat16(clips_ckpt, tiny_llm_dir, tmp_path):
    from transformers import LlavaForConditionalGeneration

    folder = assemble_llava(f"clips:{clips_ckpt}", tiny_llm_dir, tmp_path / "bf16", dtype=torch.bfloat16)
    model = LlavaForConditionalGeneration.from_pretrained(folder)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_unknown_projector_is_a_clear_error(clips_ckpt, tiny_llm_dir, tmp_path):
    with pytest.raises(ValueError, match=r"unknown projector 'linear': supported \['mlp2x_gelu'\]"):
        assemble_llava(f"clips:{clips_ckpt}", tiny_llm_dir, tmp_path / "x", projector="linear")
    with pytest.raises(ValueError, match="vision_feature_select_strategy must be one of"):
        assemble_llava(f"clips:{clips_ckpt}", tiny_llm_dir, tmp_path / "x", vision_feature_select_strategy="cls")
    assert not (tmp_path / "x").exists()
