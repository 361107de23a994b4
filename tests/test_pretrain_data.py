"""Data sources, worker splitting, exact stream resume, bad-sample accounting, `clips data shard`."""

from __future__ import annotations

import json
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch

import clips_tower
from clips_cli.main import main as clips_main
from pretrain.data.decode import SampleProcessor, collate
from pretrain.data.errors import BadSample
from pretrain.data.shards import SIZES_FILE, ShardWriter, json_bytes
from pretrain.data.sources import SourceOptions, expand_urls, open_source
from pretrain.data.stream import StreamConfig, TrainStream, make_loader, shard_plan
from pretrain.recipes import build_recipe
from pretrain.synthetic import encode_image, generate_sample, write_jsonl, write_parquet, write_webdataset

N = 24  # samples in the generated datasets


@pytest.fixture(scope="module")
def tok():
    return clips_tower.load_tokenizer()


@pytest.fixture(scope="module")
def processor(tok):
    cfg = clips_tower.get_model_config("clips-tiny")
    return SampleProcessor(build_recipe("clips"), tok, clips_tower.image_transform(cfg, train=True), seed=3)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("wds")
    write_webdataset(out, N, seed=0, shard_size=6, image_size=40)  # 4 shards
    return out


def _stream(source, processor, tok, batch, workers, cursors=None, rotate=0, seed=0, buffer=5, resampled=False):
    cfg = StreamConfig(seed=seed, batch_size=batch, shuffle_buffer=buffer, resampled=resampled, num_workers=workers)
    return TrainStream(source, processor, tok, cfg, cursors, rotate)


def _take(stream, n):
    it = iter(make_loader(stream))
    return [next(it) for _ in range(n)]


def test_expand_urls_braces_lists_folders_and_pipes(shards):
    assert expand_urls(f"{shards}/{{00000..00002}}.tar", ".tar") == [f"{shards}/0000{i}.tar" for i in range(3)]
    assert expand_urls(f"{shards}/00000.tar::{shards}/00003.tar", ".tar") == [f"{shards}/00000.tar", f"{shards}/00003.tar"]
    assert expand_urls(str(shards), ".tar") == [str(p) for p in sorted(shards.glob("*.tar"))]
    assert expand_urls("pipe:cat a.tar", ".tar") == ["pipe:cat a.tar"]


def test_sizes_json_counts(shards):
    assert json.loads((shards / SIZES_FILE).read_text()) == {f"0000{i}.tar": 6 for i in range(4)}
    assert open_source(str(shards)).num_samples() == N
    assert open_source(f"{shards}/{{00000..00001}}.tar").num_samples() == 12


def test_three_formats_give_identical_batches(tmp_path, shards, processor, tok):
    """The same generated samples as tar shards, JSONL + images and parquet decode to the same tensors."""
    write_jsonl(tmp_path / "jsonl", N, seed=0, image_size=40)
    write_parquet(tmp_path / "data.parquet", N, seed=0, image_size=40)
    batches = {}
    for name, spec in [("wds", str(shards)), ("jsonl", str(tmp_path / "jsonl" / "captions.jsonl")),
                       ("parquet", str(tmp_path / "data.parquet"))]:
        source = open_source(spec)
        records = sorted((r for s in source.shards for r in source.read(s)), key=lambda r: r.key)
        batches[name] = collate([processor(r, epoch=0) for r in records], tok)
    assert open_source(str(tmp_path / "data.parquet")).num_samples() == N
    for name in ("jsonl", "parquet"):
        assert batches[name]["keys"] == batches["wds"]["keys"]
        assert torch.equal(batches[name]["images"], batches["wds"]["images"])
        for t in ("web", "sub"):
            assert torch.equal(batches[name]["texts"][t], batches["wds"]["texts"][t])
        assert torch.equal(batches[name]["targets"], batches["wds"]["targets"])


def test_pipe_urls_read_like_files(shards, processor):
    direct = open_source(f"{shards}/00001.tar")
    piped = open_source(f"pipe:cat {shards}/00001.tar")
    keys = [r.key for r in direct.read(direct.shards[0])]
    assert keys == [r.key for r in piped.read(piped.shards[0])] and len(keys) == 6


def test_shard_plan_partitions_every_epoch():
    for workers in (1, 3, 4):
        for epoch in range(3):
            got = sorted(s for w in range(workers) for s in shard_plan(10, epoch, w, workers, 0, False)[0])
            assert got == list(range(10))
    assert shard_plan(10, 0, 0, 1, 0, False)[0] != shard_plan(10, 1, 0, 1, 0, False)[0]  # reshuffled per epoch
    # Fewer shards than workers: every worker reads all and keeps every G-th sample.
    assert shard_plan(2, 0, 1, 3, 0, False)[1:] == (3, 1)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_one_epoch_visits_every_sample_once(shards, processor, tok, workers):
    batches = _take(_stream(open_source(str(shards)), processor, tok, batch=4, workers=workers), N // 4)
    keys = [k for b in batches for k in b["keys"]]
    assert sorted(keys) == sorted(f"0000{i:08d}" for i in range(N))
    assert {b["epoch"] for b in batches} == {0}


def test_fewer_shards_than_workers_split_by_sample(shards, processor, tok):
    source = open_source(f"{shards}/00000.tar")  # 6 samples, 2 workers
    keys = [k for b in _take(_stream(source, processor, tok, batch=3, workers=2), 2) for k in b["keys"]]
    assert sorted(keys) == [f"0000{i:08d}" for i in range(6)]


def test_epochs_reshuffle_and_resampled_mode_runs(shards, processor, tok):
    source = open_source(str(shards))
    batches = _take(_stream(source, processor, tok, batch=4, workers=0), 2 * N // 4)
    e0 = [k for b in batches[:6] for k in b["keys"]]
    e1 = [k for b in batches[6:] for k in b["keys"]]
    assert sorted(e0) == sorted(e1) and e0 != e1 and batches[-1]["epoch"] == 1
    res = _take(_stream(source, processor, tok, batch=4, workers=0, resampled=True), 8)
    assert all(b["images"].shape == (4, 3, 32, 32) for b in res)


@pytest.mark.parametrize("workers,stop", [(0, 5), (2, 5), (2, 4)])
def test_stream_resumes_exactly_from_cursors(shards, processor, tok, workers, stop):
    """Consume `stop` batches, rebuild the loader from the cursors (as a checkpoint does): the
    following batches equal those of the uninterrupted stream, across an epoch boundary."""
    source = open_source(str(shards))
    full = _take(_stream(source, processor, tok, batch=4, workers=workers), stop + 6)
    cursors, next_worker = {}, 0
    w = max(1, workers)
    for b in full[:stop]:
        cursors[b["worker"]] = (b["epoch"], b["position"])
        next_worker = (b["worker"] + 1) % w
    resumed = _take(_stream(source, processor, tok, batch=4, workers=workers, cursors=cursors, rotate=next_worker), 6)
    for a, b in zip(full[stop:], resumed):
        assert a["keys"] == b["keys"] and a["worker"] == b["worker"]
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["texts"]["sub"], b["texts"]["sub"])


# ------------------------------------------------------------------ bad samples
def _bad_shard(folder) -> dict[str, int]:
    """A shard mixing 6 good samples with one bad sample per reason; returns the expected counts."""
    good = [generate_sample(i, seed=5, image_size=40) for i in range(6)]
    img = encode_image(good[0].image)
    ok_meta = {"org_caption": "a red circle", "re_caption": "A red circle. It is large."}
    with ShardWriter(folder, shard_size=100) as w:
        for s in good[:3]:
            w.write(s.key, {"jpg": encode_image(s.image), "json": json_bytes({"org_caption": s.web, "re_caption": s.synthetic})})
        w.write("bad_image", {"jpg": b"\xff\xd8 not a jpeg", "json": json_bytes(ok_meta)})
        w.write("truncated_image", {"jpg": img[: len(img) // 3], "json": json_bytes(ok_meta)})
        w.write("no_image", {"json": json_bytes(ok_meta)})
        w.write("no_json", {"jpg": img})
        w.write("bad_json", {"jpg": img, "json": b"{not json"})
        w.write("latin1", {"jpg": img, "json": '{"org_caption": "caf\xe9", "re_caption": "x."}'.encode("latin-1")})
        w.write("no_web", {"jpg": img, "json": json_bytes({"re_caption": "A circle."})})
        w.write("empty_web", {"jpg": img, "json": json_bytes({"org_caption": "  ", "re_caption": "A circle."})})
        w.write("no_sentence", {"jpg": img, "json": json_bytes({"org_caption": "circle", "re_caption": " ... !! "})})
        w.write("number_caption", {"jpg": img, "json": json_bytes({"org_caption": 7, "re_caption": "A circle."})})
        for s in good[3:]:
            w.write(s.key, {"png": encode_image(s.image, "png"), "json": json_bytes({"org_caption": s.web, "re_caption": s.synthetic})})
    return {"unreadable_image": 2, "missing_image": 1, "missing_caption": 3, "malformed_record": 1, "not_utf8": 1,
            "empty_caption": 1, "no_sentence": 1}


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_bad_samples_are_skipped_and_counted_by_reason_in_workers(tmp_path, processor, tok, workers):
    expected = _bad_shard(tmp_path / "bad")
    source = open_source(str(tmp_path / "bad"))
    # One epoch = 6 good samples: batches of 3 -> 2 batches (one per worker with 2 workers).
    batches = _take(_stream(source, processor, tok, batch=3, workers=workers, buffer=1), 2)
    counts = Counter()
    for b in batches:
        counts.update(b["bad"])
    assert dict(counts) == expected
    assert sorted(k for b in batches for k in b["keys"]) == sorted(generate_sample(i, seed=5).key for i in range(6))


@pytest.fixture
def cache():
    from pretrain.data import cache
    cache.clear()
    yield cache
    cache.clear()


@pytest.mark.parametrize("workers", [0, 2])
def test_memory_cache_gives_the_uncached_batches_over_epochs(shards, processor, tok, cache, workers):
    """Three epochs through the cache (filled in the first, replayed after) equal the uncached stream."""
    n = 3 * N // 4
    plain = _take(_stream(open_source(str(shards)), processor, tok, batch=4, workers=workers), n)
    cached = cache.MemoryCachedSource(open_source(str(shards)), budget_mib=64)
    for _ in range(2):  # the second stream replays shards a previous run (same process) cached
        got = _take(_stream(cached, processor, tok, batch=4, workers=workers), n)
        assert [b["keys"] for b in got] == [b["keys"] for b in plain] and got[-1]["epoch"] == 2
        for a, b in zip(plain, got):
            assert torch.equal(a["images"], b["images"]) and torch.equal(a["texts"]["sub"], b["texts"]["sub"])
            assert torch.equal(a["targets"], b["targets"])
    if workers == 0:  # loader workers fill their own copies; the main process's cache holds all 4 shards
        assert len(cache._SHARDS) == 4 and cache._held[0] == N * 40 * 40 * 3


def test_memory_cache_counts_bad_samples_every_epoch_and_sees_rewritten_shards(tmp_path, processor, tok, cache):
    expected = _bad_shard(tmp_path / "bad")
    source = cache.MemoryCachedSource(open_source(str(tmp_path / "bad")), budget_mib=64)
    batches = _take(_stream(source, processor, tok, batch=3, workers=0, buffer=1), 6)  # 3 epochs
    for epoch in range(3):
        counts = Counter()
        for b in batches[2 * epoch: 2 * epoch + 2]:
            counts.update(b["bad"])
        assert dict(counts) == expected, epoch
    # A rewritten shard (new size / mtime) is read again, not replayed from memory.
    shard = next((tmp_path / "bad").glob("*.tar"))
    with ShardWriter(tmp_path / "new", shard_size=100) as w:
        w.write("only", {"jpg": encode_image(generate_sample(0, seed=1).image),
                         "json": json_bytes({"org_caption": "a circle", "re_caption": "A circle."})})
    shard.write_bytes(next((tmp_path / "new").glob("*.tar")).read_bytes())
    assert [r.key for r in source.read(str(shard))] == ["only"]


def test_memory_cache_keeps_nothing_over_its_budget(shards, cache):
    source = cache.MemoryCachedSource(open_source(str(shards)), budget_mib=1)
    big = cache.MemoryCachedSource(open_source(str(shards)), budget_mib=64)
    cache._held[0] = 2**20 - 100  # nearly full: a 6 x 40 x 40 x 3 shard does not fit
    assert len(list(source.read(source.shards[0]))) == 6 and not cache._SHARDS
    cache.clear()
    assert len(list(big.read(big.shards[0]))) == 6 and len(cache._SHARDS) == 1
    with pytest.raises(ValueError, match="memory_cache_mib must be positive"):
        cache.MemoryCachedSource(open_source(str(shards)), budget_mib=0)


def test_truncated_archive_is_one_unreadable_shard(tmp_path, shards):
    data = (shards / "00000.tar").read_bytes()
    with tarfile.open(shards / "00000.tar") as t:
        cut = t.getmembers()[6].offset_data + 100  # inside the 4th sample's image
    (tmp_path / "cut.tar").write_bytes(data[:cut])
    source = open_source(str(tmp_path / "cut.tar"))
    out = list(source.read(source.shards[0]))
    assert [r.key for r in out[:-1]] == [f"0000{i:08d}" for i in range(3)]
    assert isinstance(out[-1], BadSample) and out[-1].reason == "unreadable_shard"


def test_all_bad_data_fails_loudly(tmp_path, processor, tok):
    with ShardWriter(tmp_path / "x", 10) as w:
        w.write("a", {"jpg": b"nope", "json": json_bytes({"org_caption": "x", "re_caption": "y."})})
    with pytest.raises(RuntimeError, match="every sample of epoch 0 was bad"):
        _take(_stream(open_source(str(tmp_path / "x")), processor, tok, batch=2, workers=0), 1)


# ------------------------------------------------------------------ clips data shard
def test_clips_data_shard_from_jsonl_with_broken_rows(tmp_path, capsys):
    src = tmp_path / "src"
    write_jsonl(src, 7, seed=2, image_size=40)
    lines = (src / "captions.jsonl").read_text().splitlines()
    lines.append(json.dumps({"image": "images/missing.jpg", "org_caption": "x", "re_caption": "y."}))
    lines.append("{broken")
    lines.append(json.dumps({"image": lines and json.loads(lines[0])["image"], "org_caption": "", "re_caption": "y."}))
    (src / "captions.jsonl").write_text("\n".join(lines) + "\n")
    rc = clips_main(["data", "shard", "--input", str(src / "captions.jsonl"), "--out", str(tmp_path / "out"),
                     "--shard-size", "3", "--no-progress"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["written"] == 7 and report["shards"] == 3
    assert report["skipped"] == {"malformed_record": 1, "empty_caption": 1, "missing_image": 1}
    sizes = json.loads((tmp_path / "out" / SIZES_FILE).read_text())
    assert sizes == {"00000.tar": 3, "00001.tar": 3, "00002.tar": 1}
    source = open_source(str(tmp_path / "out"))
    records = [r for s in source.shards for r in source.read(s)]
    want = {generate_sample(i, seed=2).key: generate_sample(i, seed=2) for i in range(7)}
    for r in records:
        meta = json.loads(r.meta)
        assert meta["org_caption"] == want[meta["key"]].web and meta["re_caption"] == want[meta["key"]].synthetic
        assert r.image[:2] == b"\xff\xd8"  # JPEG bytes kept as they were


def test_processor_is_reproducible_per_epoch_and_key(shards, processor):
    source = open_source(f"{shards}/00000.tar")
    rec = next(iter(source.read(source.shards[0])))
    a, b, c = processor(rec, 0), processor(rec, 0), processor(rec, 1)
    assert torch.equal(a.image, b.image) and a.texts == b.texts
    assert not torch.equal(a.image, c.image)  # new augmentation next epoch
    assert SourceOptions().caption_columns == ("org_caption", "re_caption")
    assert np.isfinite(a.image.numpy()).all()
