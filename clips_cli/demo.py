"""``clips demo``: the first command a newcomer runs.

Until the full demo lands (data generation -> pretraining -> evaluation -> LLaVA), this builds a
tiny CLIPS model, embeds generated images and captions through the real tokenizer and
transforms, round-trips it through both checkpoint formats, and prints what it measured.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _make_scene(colour: tuple[int, int, int], shape: str, size: int = 96):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
    return img


def run_demo(out: Path) -> dict:
    """Embed generated scenes with a tiny random model and check the checkpoint round trips.

    Returns a dict of what was measured (shapes, max round-trip differences).
    """
    import torch

    import clips_tower

    colours = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220)}
    scenes = [(c, s) for c in colours for s in ("circle", "square")]
    captions = [f"a {c} {s} on a grey background." for c, s in scenes]
    torch.manual_seed(0)
    model = clips_tower.create_model("clips-tiny").eval()
    tokenizer = clips_tower.load_tokenizer()
    preprocess = clips_tower.image_transform(model.config, train=False)
    images = torch.stack([preprocess(_make_scene(colours[c], s)) for c, s in scenes])
    ids = tokenizer(captions)
    with torch.no_grad():
        sims = model.encode_image(images, normalize=True) @ model.encode_text(ids, normalize=True).T
    result = {"images": list(images.shape), "token_ids": list(ids.shape), "similarity": list(sims.shape)}
    for fmt in ("clips", "open_clip"):
        folder = clips_tower.save_model(model, out / f"tiny-{fmt}", format=fmt, tokenizer=tokenizer)
        again = clips_tower.load_model(folder).eval()
        with torch.no_grad():
            diff = (again.encode_image(images) - model.encode_image(images)).abs().max().item()
        result[f"roundtrip_{fmt}_max_abs_diff"] = diff
    print(f"embedded {len(scenes)} generated scenes and captions with a random clips-tiny model")
    print(f"caption 0 tokens: {ids[0, :12].tolist()} ... {ids[0, -1].item()} (last = [CLS])")
    print("image-text cosine similarity (random weights, so no structure yet):")
    for cap, row in zip(captions, sims):
        print(f"  {cap:34s} " + " ".join(f"{v:+.2f}" for v in row.tolist()))
    for fmt in ("clips", "open_clip"):
        print(f"checkpoint round trip ({fmt}): max |diff| = {result[f'roundtrip_{fmt}_max_abs_diff']:.3g}")
    return result


def _cmd_demo(args: argparse.Namespace) -> int:
    run_demo(Path(args.out))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``clips`` command."""
    p = sub.add_parser("demo", help="run the built-in end-to-end demo (no downloads)")
    p.add_argument("--out", default="demo_out", help="output folder")
    p.set_defaults(func=_cmd_demo)
