"""``clips eval retrieval|classify|caption`` end to end on generated data, checked against
independent computations with the same model."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clips_tower
from clips_cli.main import main
from eval.data import load_retrieval_dataset
from eval.retrieval import evaluate_retrieval
from eval.templates import IMAGENET7
from helpers.eval_sets import corrupt_set, scene, write_karpathy


@pytest.fixture
def checkpoint(tmp_path, tiny_model, tokenizer):
    return clips_tower.save_model(tiny_model, tmp_path / "ckpt", tokenizer=tokenizer)


def test_retrieval_cli_writes_json_table_and_png(tmp_path, checkpoint, tiny_model, tokenizer, capsys):
    data = write_karpathy(tmp_path / "coco", n_test=6, per_image=5)
    out = tmp_path / "out"
    rc = main(["eval", "retrieval", "--data", str(data), "--model", str(checkpoint), "--model", "clips-tiny",
               "--out", str(out), "--batch-size", "4", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    table = (out / "retrieval.md").read_text()
    assert table in printed
    assert "| paper: CLIPS ViT-L/14-224 | 75.50 | - | - | 55.60 | - | - | - |" in table  # COCO: paper rows
    report = json.loads((out / "retrieval.json").read_text())
    assert list(report["models"]) == [str(checkpoint), "clips-tiny"]
    assert report["dataset"]["name"] == "coco" and report["dataset"]["split"] == "test"
    ours = report["models"][str(checkpoint)]
    expected = evaluate_retrieval(tiny_model, tokenizer, load_retrieval_dataset(data), progress=False)
    assert ours["metrics"] == pytest.approx(expected)
    assert f"| {checkpoint} | {expected['i2t_R@1']:.2f} | {expected['i2t_R@5']:.2f} |" in table
    curve = ours["recall_curve"]["t2i"]
    assert curve["k"] == [1, 2, 3, 5, 6] and curve["recall"][-1] == 100.0
    assert ours["skipped"] == 0 and ours["skipped_by_reason"] == {}
    with Image.open(out / "retrieval.png") as png:  # two models: curves + the comparison bar chart
        assert png.format == "PNG" and png.size == (1500, 400)


def test_retrieval_cli_bad_entries_fail_or_are_counted(tmp_path, capsys):
    data = corrupt_set(tmp_path / "coco")
    args = ["eval", "retrieval", "--data", str(data), "--model", "clips-tiny", "--out", str(tmp_path / "out"),
            "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "4 bad entries" in err and "img_0001.jpg: missing_image" in err and "img_0002.jpg: unreadable_image" in err
    assert not (tmp_path / "out" / "retrieval.json").exists()
    assert main(args + ["--skip-bad"]) == 0
    entry = json.loads((tmp_path / "out" / "retrieval.json").read_text())["models"]["clips-tiny"]
    assert entry["metrics"]["skipped"] == 4 and entry["metrics"]["num_images"] == 3
    assert entry["skipped_by_reason"] == {"missing_image": 1, "unreadable_image": 1, "empty_caption": 1, "missing_caption": 1}
    with Image.open(tmp_path / "out" / "retrieval.png") as png:  # one model: curves only
        assert png.size == (1000, 400)


CLASSES = [("red", "circle"), ("green", "square"), ("blue", "circle")]


def _expected_top1(model, tokenizer, images, labels, templates):
    """Independent zero-shot prediction: per class, mean of unit-norm prompt embeddings."""
    tf = clips_tower.image_transform(model.config)
    with torch.no_grad():
        img = model.eval().encode_image(torch.stack([tf(im) for im in images]), normalize=True)
        classes = []
        for c, s in CLASSES:
            e = model.encode_text(tokenizer([t.format(f"{c} {s}") for t in templates]), normalize=True)
            classes.append(F.normalize(e.mean(0), dim=0))
    pred = (img @ torch.stack(classes).T).argmax(1)
    return 100.0 * (pred == torch.tensor(labels)).double().mean().item()


def test_classify_cli_on_folder_and_csv(tmp_path, checkpoint, tiny_model, tokenizer, capsys):
    root = tmp_path / "folder"
    images, labels, rows = [], [], []
    for label, (c, s) in enumerate(CLASSES):
        (root / f"{c}_{s}").mkdir(parents=True)
        for k in range(3):
            img = scene(c, s, size=32 + 8 * k)
            img.save(root / f"{c}_{s}" / f"{k}.png")
            images.append(img)
            labels.append(label)
            rows.append({"image": f"folder/{c}_{s}/{k}.png", "label": f"{c} {s}"})
    expected = _expected_top1(tiny_model, tokenizer, images, labels, IMAGENET7)
    common = ["--model", str(checkpoint), "--templates", "imagenet7", "--no-progress"]

    assert main(["eval", "classify", "--data", str(root), "--out", str(tmp_path / "o1"), *common]) == 0
    report = json.loads((tmp_path / "o1" / "classify.json").read_text())
    metrics = report["models"][str(checkpoint)]["metrics"]
    assert metrics["top1"] == pytest.approx(expected)
    assert metrics["top5"] == 100.0 and metrics["num_classes"] == 3 and metrics["num_images"] == 9
    assert report["templates"] == {"set": "imagenet7", "count": 7}
    assert "| paper:" not in (tmp_path / "o1" / "classify.md").read_text()

    with open(tmp_path / "set.csv", "w", newline="") as f:  # the same set as CSV with class-name labels
        writer = csv.DictWriter(f, fieldnames=["image", "label"])
        writer.writeheader()
        writer.writerows(rows)
    assert main(["eval", "classify", "--data", str(tmp_path / "set.csv"), "--out", str(tmp_path / "o2"), *common]) == 0
    csv_metrics = json.loads((tmp_path / "o2" / "classify.json").read_text())["models"][str(checkpoint)]["metrics"]
    # CSV classes are the sorted distinct labels: blue circle, green square, red circle -> other
    # indices, same predictions.
    assert csv_metrics["top1"] == pytest.approx(expected)

    (tmp_path / "names.txt").write_text("".join(f"{c} {s}\n" for c, s in CLASSES))
    with open(tmp_path / "idx.csv", "w") as f:  # integer labels + a class-name file, named as ImageNet
        f.write("image,label\n" + "".join(f"{r['image']},{labels[i]}\n" for i, r in enumerate(rows)))
    assert main(["eval", "classify", "--data", str(tmp_path / "idx.csv"), "--classnames", str(tmp_path / "names.txt"),
                 "--dataset-name", "imagenet-1k", "--out", str(tmp_path / "o3"), *common]) == 0
    report3 = json.loads((tmp_path / "o3" / "classify.json").read_text())
    assert report3["models"][str(checkpoint)]["metrics"]["top1"] == pytest.approx(expected)
    assert "| paper: CLIPS ViT-L/14-224 | 78.50 | - | - |" in (tmp_path / "o3" / "classify.md").read_text()
    capsys.readouterr()


def _caption_set(tmp_path, n=5):
    lines = []
    for i in range(n):
        c, s = CLASSES[i % 3]
        scene(c, s).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "web_caption": f"{c} {s}",
                                 "synthetic_caption": f"A {c} {s} sits in the middle of a grey picture. It is small."}))
    (tmp_path / "caps.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "caps.jsonl"


def test_caption_cli_metrics_match_independent_computation(tmp_path, checkpoint, tiny_model, tokenizer, capsys):
    data = _caption_set(tmp_path)
    out = tmp_path / "out"
    assert main(["eval", "caption", "--data", str(data), "--model", str(checkpoint), "--out", str(out),
                 "--batch-size", "2", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "caption.json").read_text())["models"][str(checkpoint)]["metrics"]

    entries = [json.loads(line) for line in data.read_text().splitlines()]
    tf = clips_tower.image_transform(tiny_model.config)
    pixels = torch.stack([tf(Image.open(tmp_path / e["image"])) for e in entries])
    web = tokenizer([e["web_caption"] for e in entries])
    targets = tokenizer.encode_targets([e["synthetic_caption"] for e in entries])
    tiny_model.eval()
    with torch.no_grad():
        _, image_tokens = tiny_model.visual(pixels)
        _, text_tokens = tiny_model.text(web)
        logits = tiny_model.captioner(image_tokens[:, 1:], text_tokens[:, :-1])  # [B,128,V], all queries
    labels = torch.cat([targets[:, 1:], torch.zeros(len(entries), 1, dtype=torch.long)], dim=1)  # query i -> i+1
    keep = labels != 0
    generated = logits.argmax(-1)
    assert [r["generated"] for r in rows] == tokenizer.batch_decode(generated)
    assert metrics["token_acc"] == pytest.approx(100.0 * (generated[keep] == labels[keep]).double().mean().item())
    assert metrics["perplexity"] == pytest.approx(F.cross_entropy(logits[keep], labels[keep]).exp().item(), rel=1e-4)
    assert metrics["num_tokens"] == int(keep.sum()) and metrics["num_images"] == 5
    assert rows[0]["reference_tokenized"] == "a red circle sits in the middle of a grey picture. it is small."
    capsys.readouterr()


def test_caption_bleu_is_100_for_a_captioner_that_writes_the_reference(tmp_path, tiny_model, tokenizer, monkeypatch):
    from eval.captioning import load_caption_dataset, run_captioning

    dataset = load_caption_dataset(_caption_set(tmp_path))
    refs = {e: tokenizer.encode_targets(r)[0, 1:] for e, r in zip(dataset.web, dataset.references)}

    def perfect(images, web_ids):  # predicted tokens 1..128 of each reference (keyed by web caption)
        return torch.stack([F.pad(refs[tokenizer.decode(w)], (0, 1)) for w in web_ids])

    monkeypatch.setattr(tiny_model, "generate_caption_ids", perfect)
    result = run_captioning(tiny_model, tokenizer, dataset, batch_size=2, progress=False)
    assert result.metrics["bleu4"] == pytest.approx(100.0)
    assert all(r["generated"] == r["reference_tokenized"] for r in result.rows)


def test_caption_requires_a_captioner(tmp_path, tokenizer):
    from eval.captioning import load_caption_dataset, run_captioning

    model = clips_tower.create_model("clips-tiny", captioner=False)
    with pytest.raises(ValueError, match="has no captioner"):
        run_captioning(model, tokenizer, load_caption_dataset(_caption_set(tmp_path)), progress=False)
