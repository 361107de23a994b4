"""Caption sampling strategies and text-source recipes (pure functions, fast)."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain.recipes import RECIPES, Captions, Recipe, build_recipe
from pretrain.sampling import STRATEGIES, NoSentenceError, get_strategy, sample_rng, split_sentences

CAPTION = ("The image shows two shapes on a gray background. A large red circle is in the top left!! "
           "The blue square sits at the bottom right... There is nothing else in the picture. "
           "Colors are bright and flat.")
K = 8


def _is_subsequence(small: list[int], big: list[int]) -> bool:
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


def test_split_sentences_on_runs_of_dots_and_bangs():
    assert split_sentences("A b. C d!! E f... .  ! G") == ["A b", "C d", "E f", "G"]
    assert split_sentences(" ... !! . ") == []


def test_truncate_is_the_prefix(tokenizer):
    pieces = tokenizer.wordpieces([CAPTION])[0]
    got = get_strategy("truncate")(CAPTION, tokenizer, K, np.random.default_rng(0))
    assert got == pieces[:K]


@pytest.mark.parametrize("seed", range(20))
def test_block_is_contiguous_at_a_valid_start(tokenizer, seed):
    pieces = tokenizer.wordpieces([CAPTION])[0]
    got = get_strategy("block")(CAPTION, tokenizer, K, np.random.default_rng(seed))
    starts = [s for s in range(len(pieces) - K + 1) if pieces[s:s + K] == got]
    assert len(got) == K and starts, "not a contiguous window of the caption"


def test_block_start_covers_the_whole_valid_range(tokenizer):
    pieces = tokenizer.wordpieces([CAPTION])[0]
    fn = get_strategy("block")
    starts = set()
    for seed in range(400):
        got = fn(CAPTION, tokenizer, K, np.random.default_rng(seed))
        starts.add(next(s for s in range(len(pieces) - K + 1) if pieces[s:s + K] == got))
    # Uniform over [0, n-K]: both ends reachable, all positions hit with 400 draws.
    assert starts == set(range(len(pieces) - K + 1))


@pytest.mark.parametrize("seed", range(20))
def test_random_keeps_order_and_length(tokenizer, seed):
    pieces = tokenizer.wordpieces([CAPTION])[0]
    got = get_strategy("random")(CAPTION, tokenizer, K, np.random.default_rng(seed))
    assert len(got) == K
    assert _is_subsequence(got, pieces)


def test_random_positions_are_a_sorted_sample(tokenizer):
    # Forty distinct whole words: each id maps back to one position.
    words = [w for w in tokenizer.batch_decode([[i] for i in range(3000, 3200)]) if w.isalpha()][:40]
    caption = " ".join(words)
    pieces = tokenizer.wordpieces([caption])[0]
    assert len(set(pieces)) == len(pieces) == 40
    for seed in range(10):
        got = get_strategy("random")(caption, tokenizer, K, np.random.default_rng(seed))
        positions = [pieces.index(x) for x in got]
        assert positions == sorted(positions) and len(set(positions)) == K


@pytest.mark.parametrize("seed", range(20))
def test_subcaption_is_exactly_one_sentence(tokenizer, seed):
    sentences = split_sentences(CAPTION)
    options = [tokenizer.wordpieces([s])[0] for s in sentences]
    got = get_strategy("subcaption")(CAPTION, tokenizer, K, np.random.default_rng(seed))
    assert got in options


def test_subcaption_picks_every_sentence_uniformly(tokenizer):
    sentences = split_sentences(CAPTION)
    options = [tokenizer.wordpieces([s])[0] for s in sentences]
    counts = np.zeros(len(options))
    for seed in range(500):
        counts[options.index(get_strategy("subcaption")(CAPTION, tokenizer, K, np.random.default_rng(seed)))] += 1
    # 500 draws over 5 sentences: expected 100 each, binomial sd ~9; 60..140 is > 4 sd.
    assert counts.min() > 60 and counts.max() < 140


def test_subcaption_without_a_sentence_raises(tokenizer):
    with pytest.raises(NoSentenceError):
        get_strategy("subcaption")("... !!", tokenizer, K, np.random.default_rng(0))


DETERMINISTIC = {"truncate", "full"}  # every other registered strategy must draw from the rng


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_returns_a_short_caption_whole(tokenizer, name):
    pieces = tokenizer.wordpieces(["a red ball"])[0]
    assert STRATEGIES[name]("a red ball", tokenizer, K, np.random.default_rng(0)) == pieces


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_keeps_caption_order_and_varies_only_through_its_rng(tokenizer, name):
    fn, pieces = STRATEGIES[name], tokenizer.wordpieces([CAPTION])[0]
    keys = [f"{i:06d}" for i in range(30)]

    def draw(seed, epoch):
        return [fn(CAPTION, tokenizer, K, sample_rng(seed, epoch, k)) for k in keys]

    first = draw(0, 0)
    assert all(d and _is_subsequence(d, pieces) for d in first)
    assert first == draw(0, 0)
    # Over 30 keys, an epoch change (or another seed) changes some samples of a random strategy
    # and none of a deterministic one.
    assert (first != draw(0, 1)) == (first != draw(1, 0)) == (name not in DETERMINISTIC)


def test_sample_rng_is_independent_of_process_hash_seed():
    # blake2b of the key, not Python's salted hash(): a fixed value across processes.
    assert sample_rng(0, 0, "abc").integers(1 << 30) == sample_rng(0, 0, "abc").integers(1 << 30)
    assert sample_rng(0, 0, "abc").integers(1 << 30) != sample_rng(0, 0, "abd").integers(1 << 30)


def test_unknown_strategy_lists_the_choices():
    with pytest.raises(KeyError, match="block.*full.*random.*subcaption.*truncate"):
        get_strategy("middle")


# ------------------------------------------------------------------ recipes
WEB, SYN = "red circle", CAPTION


_RECIPE_TABLE = [  # the paper's comparison (module docstring of pretrain.recipes)
    pytest.param("clips", {"web": 0.5, "sub": 0.5}, True, id="clips"),
    pytest.param("clip-web", {"web": 1.0}, False, id="clip-web"),
    pytest.param("clip-synthetic-full", {"synthetic": 1.0}, False, id="clip-synthetic-full"),
    pytest.param("clip-synthetic-partial", {"sub": 1.0}, False, id="clip-synthetic-partial"),
    pytest.param("mixture", {"text": 1.0}, False, id="mixture"),
]


@pytest.mark.parametrize("name,texts,captioner", _RECIPE_TABLE)
def test_recipe_texts_weights_and_targets(tokenizer, name, texts, captioner):
    r = build_recipe(name)
    assert r.text_weights == texts and r.captioner is captioner
    out = r(Captions(WEB, SYN), tokenizer, np.random.default_rng(0))
    assert set(out.texts) == set(texts)
    if captioner:
        assert out.target == tokenizer.wordpieces([SYN])[0]  # the FULL synthetic caption
    else:
        assert out.target is None
    if "web" in out.texts:
        assert out.texts["web"] == tokenizer.wordpieces([WEB])[0]
    if "synthetic" in out.texts:
        assert out.texts["synthetic"] == tokenizer.wordpieces([SYN])[0]
    if "sub" in out.texts:
        assert out.texts["sub"] in [tokenizer.wordpieces([s])[0] for s in split_sentences(SYN)]


def test_recipe_table_covers_the_registry_and_entries_are_the_defaults(tokenizer):
    """Every registered recipe is in the table above, and each registry entry is a usable
    :class:`Recipe` whose texts equal ``build_recipe(name)``'s for the same seed."""
    table = {p.values[0] for p in _RECIPE_TABLE}
    assert table == set(RECIPES)
    for name, registered in RECIPES.items():
        assert isinstance(registered, Recipe) and registered.name == name
        built = build_recipe(name)
        assert (registered.text_weights, registered.captioner, registered.needs) == (
            built.text_weights, built.captioner, built.needs)
        for seed in range(3):
            a = registered(Captions(WEB, SYN), tokenizer, np.random.default_rng(seed))
            b = built(Captions(WEB, SYN), tokenizer, np.random.default_rng(seed))
            assert a == b
    built = build_recipe("clips")
    built.text_weights["web"] = 9.0  # a configured recipe does not share the registry's dict
    assert RECIPES["clips"].text_weights["web"] == 0.5


def test_mixture_is_80_20_per_sample(tokenizer):
    r = build_recipe("mixture", web_fraction=0.8)
    web = tokenizer.wordpieces([WEB])[0]
    n = 1000
    hits = sum(r(Captions(WEB, SYN), tokenizer, np.random.default_rng(i)).texts["text"] == web for i in range(n))
    # Binomial(1000, 0.8): sd 12.6; 740..860 is > 4.5 sd.
    assert 740 < hits < 860


def test_captioner_on_a_recipe_without_web_adds_a_zero_weight_prefix(tokenizer):
    r = build_recipe("clip-synthetic-partial", strategy="block", budget=4, captioner=True)
    assert r.text_weights == {"sub": 1.0, "web": 0.0}
    out = r(Captions(WEB, SYN), tokenizer, np.random.default_rng(0))
    assert len(out.texts["sub"]) == 4 and out.texts["web"] == tokenizer.wordpieces([WEB])[0]


def test_recipe_weight_override_must_name_the_texts():
    assert build_recipe("clips", text_weights={"web": 0.3, "sub": 0.7}).text_weights == {"web": 0.3, "sub": 0.7}
    with pytest.raises(ValueError, match="has texts"):
        build_recipe("clips", text_weights={"web": 1.0})
