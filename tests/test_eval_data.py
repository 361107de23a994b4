"""Eval data formats (Karpathy JSON, JSONL, webdataset shards), bad-entry handling, and the
retrieval driver on a tiny model."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clips_tower
from eval.data import BadEntriesError, detect_format, load_retrieval_dataset
from eval.retrieval import evaluate_retrieval, retrieval_metrics, run_retrieval
from helpers.eval_sets import corrupt_set, scene, scenes, write_karpathy

def test_karpathy_coco_layout_and_split(tmp_path):
    path = write_karpathy(tmp_path, n_test=6, per_image=5, n_train=3)
    ds = load_retrieval_dataset(path)
    assert detect_format(path) == "karpathy" and ds.name == "coco"
    assert len(ds) == 6 and ds.num_captions == 30 and ds.skipped == []
    assert ds.images[2].path == tmp_path / "val2014" / "img_0002.jpg"
    texts, index = ds.flat_captions()
    assert texts[7] == "a green circle on grey, view 2." and index.tolist() == [i for i in range(6) for _ in range(5)]
    np.testing.assert_array_equal(np.asarray(ds[1]), np.asarray(Image.open(ds.images[1].path)))
    assert len(load_retrieval_dataset(path, split="train")) == 3
    with pytest.raises(ValueError, match=r"no images in split 'val'; splits present: \{'test': 6, 'train': 3\}"):
        load_retrieval_dataset(path, split="val")


def test_karpathy_flickr_layout_with_image_root(tmp_path):
    path = write_karpathy(tmp_path / "ann", dataset="flickr30k")
    moved = tmp_path / "flickr30k-images"
    (tmp_path / "ann" / "images").rename(moved)
    ds = load_retrieval_dataset(path, image_root=moved)
    assert ds.name == "flickr30k" and ds.images[0].path == moved / "img_0000.jpg"
    with pytest.raises(BadEntriesError, match="6 bad entries"):
        load_retrieval_dataset(path)  # default root is the JSON's folder: every image is missing


def test_jsonl_and_webdataset_formats_hold_the_same_set(tmp_path):
    items = scenes(5)
    lines, shard = [], tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for i, (c, s) in enumerate(items):
            scene(c, s).save(tmp_path / f"{i}.png")
            captions = [f"a {c} {s}.", f"{s} coloured {c}."]
            lines.append(json.dumps({"image": f"{i}.png", "captions": captions}))
            buf = io.BytesIO()
            scene(c, s).save(buf, format="PNG")
            members = {f"s/{i:03d}.png": buf.getvalue(),
                       f"s/{i:03d}.txt" if i % 2 else f"s/{i:03d}.json":
                           ("\n".join(captions) if i % 2 else json.dumps({"captions": captions})).encode()}
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "set.jsonl").write_text("\n".join(lines) + "\n")
    jl = load_retrieval_dataset(tmp_path / "set.jsonl")
    # every shard spec training reads (pretrain.data.sources.expand_urls), pipe: streams included
    for wds_path in (shard, tmp_path, str(tmp_path / "shard-{000..000}.tar"), f"pipe:cat {shard}"):
        wds = load_retrieval_dataset(wds_path)
        assert wds.captions == jl.captions
        for i in range(5):  # decoded on access from the member's bytes
            np.testing.assert_array_equal(np.asarray(wds[i]), np.asarray(jl[i]))
    assert wds.images[3].name == f"pipe:cat {shard}:s/003"
    both = load_retrieval_dataset(f"{shard}::pipe:cat {shard}")  # a '::' list of two copies
    assert both.captions == jl.captions * 2 and both.images[3].name == f"{shard}:s/003"


def test_webdataset_spec_errors_name_the_shard(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"shards not found: \[.*gone-001.tar"):
        load_retrieval_dataset(str(tmp_path / "gone-{000..001}.tar"))
    good = tmp_path / "good.tar"
    with tarfile.open(good, "w") as tar:
        for name, data in {"a.png": _png(scene("red", "circle")), "a.txt": b"a red circle"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[:700])  # inside the first member's data
    with pytest.raises(ValueError, match=r"cut.tar: not a readable tar shard"):
        load_retrieval_dataset(f"pipe:cat {cut}", fmt="wds")


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_bad_entries_are_all_listed(tmp_path):
    path = corrupt_set(tmp_path)
    with pytest.raises(BadEntriesError) as err:
        load_retrieval_dataset(path)
    msg = str(err.value)
    assert "4 bad entries" in msg and "--skip-bad" in msg
    assert f"{tmp_path / 'val2014' / 'img_0001.jpg'}: missing_image" in msg
    assert f"{tmp_path / 'val2014' / 'img_0002.jpg'}: unreadable_image" in msg
    assert "images[3] (img_0003.jpg) caption 1: empty_caption" in msg
    assert "images[4] (img_0004.jpg): missing_caption" in msg
    assert len(err.value.problems) == 4


def test_skip_bad_drops_and_counts(tmp_path):
    ds = load_retrieval_dataset(corrupt_set(tmp_path), skip_bad=True)
    # images 1, 2 and 4 are dropped; image 3 keeps its two good captions
    assert [im.path.name for im in ds.images] == ["img_0000.jpg", "img_0003.jpg", "img_0005.jpg"]
    assert [len(c) for c in ds.captions] == [3, 2, 3]
    assert sorted(p.reason for p in ds.skipped) == ["empty_caption", "missing_caption", "missing_image", "unreadable_image"]


def _write_truncated_jpeg(path: Path) -> None:
    """A JPEG whose header is intact but whose pixel data is cut: it fails only when decoded."""
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])


def test_truncated_image_fails_the_eval_pass_unless_skip_bad(tmp_path, tiny_model, tokenizer):
    path = write_karpathy(tmp_path, n_test=5, per_image=2)
    _write_truncated_jpeg(tmp_path / "val2014" / "img_0003.jpg")
    ds = load_retrieval_dataset(path)  # the header check passes
    with pytest.raises(BadEntriesError, match=r"(?s)1 bad entry.*img_0003.jpg: unreadable_image \(OSError: image file is truncated"):
        evaluate_retrieval(tiny_model, tokenizer, ds, progress=False)
    result = run_retrieval(tiny_model, tokenizer, ds, progress=False, skip_bad=True)
    assert result.metrics["num_images"] == 4 and result.metrics["num_captions"] == 8
    assert result.metrics["skipped"] == 1 and result.skipped[0].reason == "unreadable_image"


def test_eval_pass_decodes_with_the_training_decoder_and_its_reasons(tmp_path, tiny_model, tokenizer, monkeypatch):
    """Images are decoded by pretrain.data's decoder: an image over PIL's pixel limit is refused
    from its header as ``image_too_large`` (as in training), a vanished file is ``missing_image``."""
    path = write_karpathy(tmp_path, n_test=4, per_image=2)
    ds = load_retrieval_dataset(path)
    big = tmp_path / "val2014" / "img_0001.jpg"
    Image.new("RGB", (300, 300), (1, 2, 3)).save(big)
    (tmp_path / "val2014" / "img_0002.jpg").unlink()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200 * 200)  # the 40x40 scenes pass, the 300x300 one does not
    result = run_retrieval(tiny_model, tokenizer, ds, progress=False, skip_bad=True)
    assert sorted((p.entry.rsplit("/", 1)[1], p.reason) for p in result.skipped) == [
        ("img_0001.jpg", "image_too_large"), ("img_0002.jpg", "missing_image")]
    assert result.metrics["num_images"] == 2


def test_evaluate_retrieval_matches_metrics_of_directly_computed_embeddings(tmp_path, tiny_model, tokenizer):
    ds = load_retrieval_dataset(write_karpathy(tmp_path, n_test=8, per_image=3))
    tiny_model.train()
    metrics = evaluate_retrieval(tiny_model, tokenizer, ds, batch_size=3, progress=False)
    assert tiny_model.training  # mode restored for the trainer
    tiny_model.eval()
    tf = clips_tower.image_transform(tiny_model.config)
    with torch.no_grad():
        img = tiny_model.encode_image(torch.stack([tf(Image.open(im.path)) for im in ds.images]), normalize=True)
        caps = [c for cs in ds.captions for c in cs]
        txt = tiny_model.encode_text(tokenizer(caps), normalize=True)
    expected = retrieval_metrics(img, txt, torch.arange(8).repeat_interleave(3))
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)
    assert (metrics["num_images"], metrics["num_captions"], metrics["skipped"]) == (8, 24, 0)
    bf16 = evaluate_retrieval(tiny_model, tokenizer, ds, autocast_dtype=torch.bfloat16, progress=False)
    assert set(bf16) == set(metrics)


def test_malformed_jsonl_lines_and_shard_samples_are_listed(tmp_path):
    scene("red", "circle").save(tmp_path / "ok.png")
    (tmp_path / "set.jsonl").write_text("\n".join([
        json.dumps({"image": "ok.png", "captions": ["a red circle."]}),
        "{not json",
        json.dumps({"captions": ["no image key"]}),
        json.dumps({"image": "ok.png", "captions": "not a list"}),
    ]) + "\n")
    with pytest.raises(BadEntriesError) as err:
        load_retrieval_dataset(tmp_path / "set.jsonl")
    listed = [str(p).split("set.jsonl:")[1] for p in err.value.problems]
    assert len(listed) == 3
    assert listed[0].startswith("2: malformed_record (invalid JSON")
    assert listed[1] == "3: malformed_record (missing 'image' path)"
    assert listed[2] == "4: missing_caption (expected a non-empty list, got 'not a list')"

    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for name, data in {"a.png": (tmp_path / "ok.png").read_bytes(), "a.txt": b"red circle",
                           "b.txt": b"caption without image", "c.png": (tmp_path / "ok.png").read_bytes()}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ds = load_retrieval_dataset(tmp_path / "s.tar", skip_bad=True)
    assert ds.captions == [["red circle"]]
    assert sorted(str(p).split("s.tar:")[1] for p in ds.skipped) == [
        "b: malformed_record (0 image members (expected 1))",
        "c: missing_caption (0 caption members (expected one .txt or .json))"]
