"""Text-source recipes: which texts each image is contrasted with, and whether the captioner trains.

A recipe turns one sample's (web caption, synthetic caption) into named word-piece lists, e.g.
``{"web": [...], "sub": [...]}``; the names become the keys of the model's ``texts`` dict and of the
loss's per-name weights. Recipes of the paper's comparison:

| recipe | texts (contrastive weight) | captioner |
|---|---|---|
| ``clips`` | web (0.5), sampled part of the synthetic caption ``sub`` (0.5) | yes: web prefix -> full synthetic |
| ``clip-web`` | web (1) | no |
| ``clip-synthetic-full`` | whole synthetic caption, encoder-truncated (1) | no |
| ``clip-synthetic-partial`` | sampled part ``sub`` (1) | no |
| ``mixture`` | per sample: web with probability ``web_fraction`` (0.8) else the whole synthetic caption (1) | optional |

The captioner is always the CLIPS one: conditioned on the web caption, predicting the FULL
synthetic caption. Turning it on for a recipe without a ``web`` text adds ``web`` with weight 0
(encoded as the captioner's prefix, not contrasted).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from .sampling import get_strategy

PREFIX_TEXT = "web"


@dataclass(frozen=True)
class Captions:
    """One sample's captions; ``None`` when the source has none."""

    web: str | None
    synthetic: str | None


@dataclass(frozen=True)
class SampledTexts:
    """A recipe's output for one sample: word pieces per text name, and the captioner target pieces."""

    texts: dict[str, list[int]]
    target: list[int] | None


@dataclass(frozen=True)
class Recipe:
    """A configured recipe.

    ``text_weights``: contrastive weight per text name (0 = encoded only, e.g. the captioner's
    prefix); ``captioner``: train the captioner on the full synthetic caption; ``needs``: which
    captions a sample must have (``"web"``, ``"synthetic"``) to be usable.
    """

    name: str
    text_weights: dict[str, float]
    captioner: bool
    needs: frozenset[str]
    make_texts: Callable[[Captions, object, np.random.Generator], dict[str, list[int]]] = field(repr=False)

    def __call__(self, captions: Captions, tokenizer, rng: np.random.Generator) -> SampledTexts:
        """Word pieces of every text name (+ target pieces when the captioner trains) for one sample."""
        texts = self.make_texts(captions, tokenizer, rng)
        if self.captioner and PREFIX_TEXT not in texts:
            texts[PREFIX_TEXT] = tokenizer.wordpieces([captions.web])[0]
        target = tokenizer.wordpieces([captions.synthetic])[0] if self.captioner else None
        return SampledTexts(texts, target)


def _pieces(text: str, tokenizer) -> list[int]:
    return tokenizer.wordpieces([text])[0]


# Text makers: (captions, tokenizer, rng, strategy, budget, web_fraction) -> {name: pieces}. Plain
# module-level functions (bound with functools.partial) so a recipe pickles into loader workers.
def _clips(c: Captions, tok, rng, strategy, budget, web_fraction):
    return {"web": _pieces(c.web, tok), "sub": strategy(c.synthetic, tok, budget, rng)}


def _clip_web(c: Captions, tok, rng, strategy, budget, web_fraction):
    return {"web": _pieces(c.web, tok)}


def _clip_synthetic_full(c: Captions, tok, rng, strategy, budget, web_fraction):
    return {"synthetic": _pieces(c.synthetic, tok)}


def _clip_synthetic_partial(c: Captions, tok, rng, strategy, budget, web_fraction):
    return {"sub": strategy(c.synthetic, tok, budget, rng)}


def _mixture(c: Captions, tok, rng, strategy, budget, web_fraction):
    return {"text": _pieces(c.web if rng.random() < web_fraction else c.synthetic, tok)}


DEFAULT_STRATEGY, DEFAULT_TOKENS, DEFAULT_WEB_FRACTION = "subcaption", 32, 0.8


def _bind(maker: Callable, strategy: str, budget: int, web_fraction: float) -> Callable:
    """The recipe's ``make_texts``: ``maker`` with its sampling settings bound (picklable)."""
    return functools.partial(maker, strategy=get_strategy(strategy), budget=budget, web_fraction=web_fraction)


def _default(name: str, weights: dict[str, float], captioner: bool, needs: set[str], maker: Callable) -> Recipe:
    return Recipe(name, weights, captioner, frozenset(needs),
                  _bind(maker, DEFAULT_STRATEGY, DEFAULT_TOKENS, DEFAULT_WEB_FRACTION))


# The registry: every recipe with its defaults (contrastive weights, captioner, captions needed,
# the default strategy/K/web fraction); each entry is a usable :class:`Recipe`, equal in output to
# ``build_recipe(name)``, and :func:`build_recipe` configures others from it.
RECIPES: dict[str, Recipe] = {r.name: r for r in (
    _default("clips", {"web": 0.5, "sub": 0.5}, True, {"web", "synthetic"}, _clips),
    _default("clip-web", {"web": 1.0}, False, {"web"}, _clip_web),
    _default("clip-synthetic-full", {"synthetic": 1.0}, False, {"synthetic"}, _clip_synthetic_full),
    _default("clip-synthetic-partial", {"sub": 1.0}, False, {"synthetic"}, _clip_synthetic_partial),
    _default("mixture", {"text": 1.0}, False, {"web", "synthetic"}, _mixture),
)}


def build_recipe(
    name: str,
    strategy: str = DEFAULT_STRATEGY,
    budget: int = DEFAULT_TOKENS,
    web_fraction: float = DEFAULT_WEB_FRACTION,
    captioner: bool | None = None,
    text_weights: Mapping[str, float] | None = None,
) -> Recipe:
    """Configure the recipe ``name``.

    ``strategy``/``budget``: the token-reduction strategy and K for recipes that sample part of
    the synthetic caption; ``web_fraction``: share of web captions in ``mixture``; ``captioner``:
    override the recipe's default; ``text_weights``: override the per-name contrastive weights
    (must name exactly the recipe's texts).
    """
    try:
        base = RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}") from None
    weights, use_captioner, needs = dict(base.text_weights), base.captioner, base.needs
    if budget < 1:
        raise ValueError(f"recipe budget (tokens K) must be >= 1, got {budget}")
    if not 0.0 <= web_fraction <= 1.0:
        raise ValueError(f"web_fraction must be in [0, 1], got {web_fraction}")
    make = _bind(base.make_texts, strategy, budget, web_fraction)  # rebinds the defaults
    if captioner is not None:
        use_captioner = captioner
    if text_weights is not None:
        if set(text_weights) != set(weights):
            raise ValueError(f"recipe {name!r} has texts {sorted(weights)}; text_weights names {sorted(text_weights)}")
        weights = dict(text_weights)
    if use_captioner:
        needs = set(needs) | {"web", "synthetic"}
        weights = {**weights, PREFIX_TEXT: weights.get(PREFIX_TEXT, 0.0)}
    if not any(w > 0 for w in weights.values()):
        raise ValueError(f"recipe {name!r}: every contrastive weight is 0 ({weights})")
    return Recipe(name, weights, use_captioner, frozenset(needs), make)
