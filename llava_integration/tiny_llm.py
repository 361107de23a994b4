"""A tiny language model built locally (no downloads): a byte-level BPE tokenizer trained on a
small corpus and a randomly initialised ``LlamaForCausalLM``, saved as a standard HF folder.

Tests and the demo use it wherever LLaVA needs "an LLM": it has a real tokenizer (special
tokens, a vicuna-style chat template) and the real Llama architecture, at ~150k parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .chat_template import VICUNA_CHAT_TEMPLATE

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"

# Enough English (and the words of the generated demo scenes) for BPE to learn useful merges.
_BUILTIN_CORPUS = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: What is shown in the image? ASSISTANT: The image shows a red circle on a grey background.",
    "USER: Describe the picture in detail. ASSISTANT: There is a small blue square in the centre of the picture.",
    "a red circle. a green square. a blue triangle. a yellow star. a white cross. a black ring.",
    "two dogs run on green grass. a cat sleeps on a wooden floor. a city skyline at night.",
    "What colour is the shape? It is red. It is green. It is blue. How many shapes are there? There are two.",
    "the quick brown fox jumps over the lazy dog. the sky is dark and the light is warm.",
    "Where is the object? It is on the left, on the right, at the top, at the bottom, in the middle.",
    "Answer the question using a single word or phrase. yes. no. one. two. three. four.",
)


def _train_tokenizer(corpus: Iterable[str], vocab_size: int):
    """Byte-level BPE (GPT-2 style pre-tokenisation) with BOS prepended on encode."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[UNK, BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no <unk> in practice
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    # Llama convention: the tokenizer adds <s> in front, never </s> (the chat template writes </s>).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return tok


def build_tiny_llm(
    out_dir: str | Path,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> Path:
    """Train a byte-level BPE tokenizer on ``corpus`` (a small built-in English corpus when None),
    build a randomly initialised ``LlamaForCausalLM`` of the given size (seeded), and
    ``save_pretrained`` both into ``out_dir`` (written atomically). Returns ``out_dir``.

    The tokenizer is a ``PreTrainedTokenizerFast`` with ``<s>``/``</s>``/``<unk>``/``<pad>`` and a
    vicuna-v1 chat template; the model's MLP is 2x ``hidden_size`` wide, embeddings untied.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from clips_tower.io import atomic_dir

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    corpus = list(_BUILTIN_CORPUS if corpus is None else corpus)
    if not corpus:
        raise ValueError("corpus is empty")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(corpus, vocab_size),
        bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        padding_side="right", model_max_length=1024,
    )
    tokenizer.chat_template = VICUNA_CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
