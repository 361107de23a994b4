"""Assemble a transformers-native LLaVA folder from a vision tower and a causal LM.

``LlavaForConditionalGeneration`` = the tower's stock HF vision model (``ViTModel`` for CLIPS,
``CLIPVisionModel`` / ``SiglipVisionModel`` otherwise) + a freshly initialised ``mlp2x_gelu``
projector (HF's ``linear_1 -> GELU -> linear_2``, PyTorch's default ``nn.Linear`` init as LLaVA) +
the LM's weights. The ``LlavaProcessor`` pairs the tower's image processor with the LM tokenizer
(``<image>`` added as a special token, embeddings resized) and the vicuna-v1 chat template.
The folder loads with plain transformers; nothing of this project is needed to use it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from clips_tower.io import atomic_dir, atomic_write_json

from .chat_template import VICUNA_CHAT_TEMPLATE

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
ASSEMBLY_FILE = "clips_assembly.json"
# LLaVA projector names -> the activation of HF's two-layer LlavaMultiModalProjector.
PROJECTORS = {"mlp2x_gelu": "gelu"}
SELECT_STRATEGIES = ("default", "full")
INIT_SEED = 0  # seeds the new <image> embedding row and the projector


def hf_select_strategy(strategy: str, num_prefix_tokens: int) -> str:
    """HF ``vision_feature_select_strategy`` for a tower.

    ``"default"`` means "drop the CLS token" (LLaVA's ``select_feature="patch"``); a tower without
    one (SigLIP) already yields only patch tokens, which HF spells ``"full"``.
    """
    if strategy not in SELECT_STRATEGIES:
        raise ValueError(f"vision_feature_select_strategy must be one of {SELECT_STRATEGIES}, got {strategy!r}")
    return "full" if num_prefix_tokens == 0 else strategy


def _add_image_token(tokenizer) -> int:
    """Add ``<image>`` as a special token (kept if already present); returns its id."""
    from tokenizers import AddedToken

    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def assemble_llava(
    tower: str,
    llm: str | Path,
    out_dir: str | Path,
    *,
    projector: str = "mlp2x_gelu",
    vision_feature_layer: int = -2,
    vision_feature_select_strategy: str = "default",
    dtype: torch.dtype | None = None,
) -> Path:
    """Build and ``save_pretrained`` a ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` into
    ``out_dir`` (written atomically); returns ``out_dir``.

    ``tower``: a spec of :func:`~llava_integration.towers.load_vision_tower`; ``llm``: an HF
    causal-LM folder (model + tokenizer). ``dtype``: of the saved weights (default: the LM's).
    The processor expands each ``<image>`` into as many tokens as the tower yields patches
    (+1 with ``vision_feature_select_strategy="full"`` on a CLS tower).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    from .towers import load_vision_tower

    if projector not in PROJECTORS:
        raise ValueError(f"unknown projector {projector!r}: supported {sorted(PROJECTORS)} "
                         "(HF's LlavaMultiModalProjector is LLaVA's mlp2x_gelu)")
    start = time.perf_counter()
    vt = load_vision_tower(tower, select_layer=vision_feature_layer)
    strategy = hf_select_strategy(vision_feature_select_strategy, vt.num_prefix_tokens)
    vision = vt.to_hf_vision_model()
    image_processor = vt.image_processor

    tokenizer = AutoTokenizer.from_pretrained(llm)
    lm = AutoModelForCausalLM.from_pretrained(llm, dtype=dtype or "auto")
    dtype = lm.dtype
    image_token_id = _add_image_token(tokenizer)
    num_image_tokens = vt.num_patches + (vt.num_prefix_tokens if strategy == "full" else 0)
    # Seeded: the same LM assembled with two towers gets the same <image> embedding row and projector.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        if len(tokenizer) > lm.get_input_embeddings().weight.shape[0]:
            lm.resize_token_embeddings(len(tokenizer))
        config = LlavaConfig(
            vision_config=vision.config,
            text_config=lm.config,
            image_token_index=image_token_id,
            image_seq_length=num_image_tokens,
            projector_hidden_act=PROJECTORS[projector],
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=strategy,
            multimodal_projector_bias=True,
        )
        # Build the shell on the meta device and plug in the real parts: no throw-away random
        # init of a multi-billion-parameter LM.
        with torch.device("meta"):
            model = LlavaForConditionalGeneration(config)
        model.model.multi_modal_projector = LlavaMultiModalProjector(config)
    model.model.vision_tower = vision
    model.model.language_model = lm.get_decoder()
    model.lm_head = lm.get_output_embeddings()
    left_on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise RuntimeError(f"assembly left tensors without weights: {left_on_meta[:10]}")
    model.generation_config = lm.generation_config
    model.to(dtype).eval()

    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vt.config.patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=vt.num_prefix_tokens,
        chat_template=VICUNA_CHAT_TEMPLATE,
    )
    tokenizer.chat_template = VICUNA_CHAT_TEMPLATE
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        atomic_write_json(tmp / ASSEMBLY_FILE, {
            "tower": tower, "tower_kind": vt.kind, "llm": str(llm), "projector": projector,
            "vision_feature_layer": vision_feature_layer, "vision_feature_select_strategy": strategy,
            "num_image_tokens": num_image_tokens, "dtype": str(dtype).removeprefix("torch."),
        })
    log.info("assembled LLaVA (%s tower %s + %s) into %s in %.1f s", vt.kind, tower, llm, out_dir,
             time.perf_counter() - start)
    return Path(out_dir)
