"""Shared fixtures: tiny random models and the offline bert-base-uncased vocab. No downloads."""

from __future__ import annotations

import pytest
import torch

import clips_tower


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tokenizer() -> clips_tower.CLIPSTokenizer:
    return clips_tower.load_tokenizer()


@pytest.fixture
def tiny_model() -> clips_tower.CLIPS:
    torch.manual_seed(0)
    return clips_tower.create_model("clips-tiny")


@pytest.fixture
def tiny_batch(tiny_model, tokenizer):
    """images [4,3,32,32], web/sub ids [4,80], targets [4,128] with real tokenization."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 32, 32, generator=g)
    web = tokenizer(["a red ball", "two dogs on grass", "city at night", "a bowl of fruit"])
    sub = tokenizer(["a small red ball.", "dogs.", "a city skyline with lights.", "apples in a bowl."])
    targets = tokenizer.encode_targets([
        "a small red ball lies on a wooden floor. the light is warm.",
        "two brown dogs run on green grass. one has a stick.",
        "a city skyline at night with many lights. the sky is dark.",
        "a bowl of fruit with apples and bananas on a table.",
    ])
    return images, {"web": web, "sub": sub}, targets


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for the module: tiny models on a shared 2-core machine run ~30x faster
    on one thread (no OpenMP spinning)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
