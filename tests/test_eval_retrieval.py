"""Retrieval metrics: brute force, hand-made cases with several captions and exact ties, chunking,
and bounded memory at COCO scale (5k images x 25k captions)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from eval.retrieval import (
    metrics_from_ranks,
    multi_target_ranks,
    retrieval_metrics,
    retrieval_ranks,
    target_ranks,
    topk_similar,
)


def brute_force_ranks(image_emb, text_emb, text_image_index):
    """Independent reference: float64 full score matrix, full sort of every row with ties broken
    AGAINST the correct items (wrong items first among equal scores), position of the first
    correct item."""
    img, txt = image_emb.double().numpy(), text_emb.double().numpy()
    owner = np.asarray(text_image_index)
    scores = img @ txt.T  # [N,M]
    i2t = []
    for i in range(len(img)):
        correct = owner == i
        order = np.lexsort((correct, -scores[i]))  # last key is primary: score desc, then wrong before right
        i2t.append(int(np.flatnonzero(correct[order])[0]))
    t2i = []
    for j in range(len(txt)):
        correct = np.arange(len(img)) == owner[j]
        order = np.lexsort((correct, -scores[:, j]))
        t2i.append(int(np.flatnonzero(correct[order])[0]))
    return np.array(i2t), np.array(t2i)


def brute_force_recall(ranks, k):
    return 100.0 * float(np.mean(ranks < k))


def _random_case(seed, n=40, e=6, integer=True):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 6, (n,), generator=g)  # 1..5 captions per image
    owner = torch.repeat_interleave(torch.arange(n), counts)
    owner = owner[torch.randperm(len(owner), generator=g)]  # captions not grouped by image
    if integer:  # small integers: float32 dot products are exact and ties are frequent
        img = torch.randint(-2, 3, (n, e), generator=g).float()
        txt = torch.randint(-2, 3, (len(owner), e), generator=g).float()
    else:  # gaussians rounded to 1/64: still exact in float32, ties rare
        img = torch.round(torch.randn(n, e, generator=g) * 64) / 64
        txt = torch.round((img[owner] + torch.randn(len(owner), e, generator=g)) * 64) / 64
    return img, txt, owner


@pytest.mark.parametrize("seed,integer", [(0, True), (1, True), (2, False), (3, False)])
@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_ranks_and_recall_match_brute_force(seed, integer, chunk_size):
    img, txt, owner = _random_case(seed, integer=integer)
    ref_i2t, ref_t2i = brute_force_ranks(img, txt, owner)
    i2t, t2i = retrieval_ranks(img, txt, owner, chunk_size=chunk_size)
    np.testing.assert_array_equal(i2t.numpy(), ref_i2t)
    np.testing.assert_array_equal(t2i.numpy(), ref_t2i)
    metrics = retrieval_metrics(img, txt, owner, chunk_size=chunk_size)
    for k in (1, 5, 10):
        assert metrics[f"i2t_R@{k}"] == pytest.approx(brute_force_recall(ref_i2t, k))
        assert metrics[f"t2i_R@{k}"] == pytest.approx(brute_force_recall(ref_t2i, k))
    six = [metrics[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert metrics["mean_recall"] == pytest.approx(sum(six) / 6)


def test_chunked_and_unchunked_agree_exactly_on_float_embeddings():
    g = torch.Generator().manual_seed(5)
    img = torch.nn.functional.normalize(torch.randn(300, 32, generator=g), dim=-1)
    owner = torch.arange(300).repeat_interleave(5)
    txt = torch.nn.functional.normalize(img[owner] + 0.8 * torch.randn(1500, 32, generator=g), dim=-1)
    full = retrieval_ranks(img, txt, owner, chunk_size=10**6)
    for chunk in (1, 13, 256):
        chunked = retrieval_ranks(img, txt, owner, chunk_size=chunk)
        assert torch.equal(full[0], chunked[0]) and torch.equal(full[1], chunked[1])
    assert retrieval_metrics(img, txt, owner, chunk_size=13) == retrieval_metrics(img, txt, owner, chunk_size=10**6)


def test_hand_made_several_captions_per_image():
    # Two images on the axes; image 0 owns captions 0, 1, 2; image 1 owns caption 3.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([
        [0.0, 1.0],   # caption 0 (image 0) points at image 1: a bad caption
        [0.6, 0.8],   # caption 1 (image 0)
        [0.1, 0.2],   # caption 2 (image 0)
        [0.8, 0.6],   # caption 3 (image 1) points more at image 0
    ])
    owner = torch.tensor([0, 0, 0, 1])
    i2t, t2i = retrieval_ranks(img, txt, owner)
    # image 0 scores captions [0, .6, .1, .8]: the wrong caption 3 (.8) beats its best correct one (.6).
    # image 1 scores captions [1, .8, .2, .6]: wrong captions 0 (1.0) and 1 (.8) beat caption 3 (.6).
    assert i2t.tolist() == [1, 2]
    # caption 0: image 0 scores 0, image 1 scores 1 -> rank 1; caption 1: .6 vs .8 -> 1;
    # caption 2: .1 vs .2 -> 1; caption 3: image 1 .6 vs image 0 .8 -> 1.
    assert t2i.tolist() == [1, 1, 1, 1]
    m = metrics_from_ranks(i2t, t2i, ks=(1, 2, 3))
    assert (m["i2t_R@1"], m["i2t_R@2"], m["i2t_R@3"]) == (0.0, 50.0, 100.0)
    assert (m["t2i_R@1"], m["t2i_R@2"]) == (0.0, 100.0)


def test_hand_made_exact_ties_count_against_the_correct_item():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # images 0 and 1 are identical
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    owner = torch.tensor([0, 1, 2, 2])
    i2t, t2i = retrieval_ranks(img, txt, owner)
    # Image 0's caption 0 ties with image 1's caption 1 (both score 1): pessimistic -> rank 1.
    # Image 2's two correct captions tie with each other only: that is not a tie against it -> rank 0.
    assert i2t.tolist() == [1, 1, 0]
    # Captions 0 and 1 tie between images 0 and 1 -> rank 1; captions 2 and 3 -> rank 0.
    assert t2i.tolist() == [1, 1, 0, 0]


def test_all_equal_embeddings_score_nothing_at_k1():
    img, txt = torch.ones(10, 4), torch.ones(30, 4)
    owner = torch.arange(10).repeat(3)
    m = retrieval_metrics(img, txt, owner, ks=(1, 27, 28))
    # every wrong item ties with the correct one: rank = all wrong items (27 captions, 9 images)
    assert m["i2t_R@1"] == 0.0 and m["i2t_R@27"] == 0.0 and m["i2t_R@28"] == 100.0
    assert m["t2i_R@1"] == 0.0


def test_target_ranks_is_the_single_target_special_case():
    img, txt, _ = _random_case(7)
    owner = torch.arange(len(img))  # one caption per image
    txt = txt[: len(img)]
    assert torch.equal(multi_target_ranks(img, txt, owner), target_ranks(img, txt, owner))


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.tensor([[float("nan"), 0.0]]), torch.ones(1, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="at least one correct"):
        retrieval_metrics(torch.ones(3, 2), torch.ones(2, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        retrieval_metrics(torch.ones(2, 2), torch.ones(2, 2), torch.tensor([0, 2]))


def test_topk_similar_matches_a_stable_sort():
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-2, 3, (20, 4), generator=g).float()
    gallery = torch.randint(-2, 3, (50, 4), generator=g).float()
    scores, idx = topk_similar(q, gallery, k=7, chunk_size=3)
    full = (q.double() @ gallery.double().T).numpy()
    for r in range(20):
        ref = np.argsort(-full[r], kind="stable")[:7]  # ties in gallery-index order
        np.testing.assert_array_equal(idx[r].numpy(), ref)
        np.testing.assert_allclose(scores[r].numpy(), full[r][ref])
    assert topk_similar(q, gallery, k=500)[1].shape == (20, 50)


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, torch
    from eval.retrieval import retrieval_ranks
    torch.manual_seed(0)
    n, m, e = 5000, 25000, 32  # COCO Karpathy test size; e = clips-tiny's embedding width
    img = torch.nn.functional.normalize(torch.randn(n, e), dim=-1)
    owner = torch.arange(n).repeat_interleave(5)
    txt = torch.nn.functional.normalize(img[owner] + torch.randn(m, e), dim=-1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    i2t, t2i = retrieval_ranks(img, txt, owner)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_increase_mib": (after - before) / 1024, "n": len(i2t), "m": len(t2i)}))
""")


def test_ranking_5k_images_25k_captions_stays_in_bounded_memory():
    # Own process so ru_maxrss (peak RSS, KiB on Linux) reflects only this run. The ranking is
    # what grows with N x M; the full float32 score matrix alone would be 5000*25000*4 B = 477 MiB.
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (result["n"], result["m"]) == (5000, 25000)
    # Measured 85 MiB on the dev machine (blocks of 4M scores); assert loosely.
    assert result["peak_increase_mib"] < 160, result
