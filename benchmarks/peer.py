"""Benchmark 7: this project's training step against open_clip's at identical shapes, in one run.

Pairs (same image tower, text tower and batch; fp32):

- ``clip``: our ``clip-web`` recipe vs open_clip ``CLIP`` (the same architecture: a direct
  samples/s ratio);
- ``coca``: our ``clips`` recipe (2 texts + the 12x512 parallel captioner) vs open_clip ``CoCa``
  (12x512 autoregressive decoder): caption lengths and FLOPs differ, so the ratio is step time
  per model FLOP.

Each side runs in its own process (so peak RSS is its own): ours through ``Trainer.train_step``
(:func:`pretrain.throughput.measure_throughput`), open_clip in its own virtual environment
(built on first use, see :func:`ensure_peer_venv`) through :mod:`benchmarks.peer_openclip`. The
two alternate, ``--rounds`` times (median of per-round ratios). FLOPs per sample are counted the
same way for both (``torch.utils.flop_counter.FlopCounterMode`` on the first warm-up step); MFU
divides by a fp32 matmul roofline measured by this process before and after the rounds.

    python -m benchmarks peer                                  # batch 16 and 64, 112 and 224 px
    python -m benchmarks peer --pairs clip --batches 16 --sizes 112 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from .common import Column, machine_info, report

RESULT_PREFIX = "PEER_RESULT "  # the line a worker prints its JSON result on (also in peer_openclip.py)
HERE = Path(__file__).resolve().parent
PEER_SCRIPT = HERE / "peer_openclip.py"
DEFAULT_VENV = Path(os.environ.get("CLIPS_PEER_VENV", Path.home() / ".cache" / "clips-bench" / "peer-venv"))
# open_clip, timm and torchvision pin torch versions that are not this CPU wheel: --no-deps, next to
# torch==2.13.0 and the pure-Python packages they import.
PEER_DEPS = ("numpy", "pillow", "ftfy", "regex", "tqdm", "huggingface_hub", "safetensors", "pyyaml")
PEER_NO_DEPS = ("open_clip_torch==3.3.0", "timm", "torchvision==0.28.0")  # 0.28 is torch 2.13's torchvision
TORCH_PIN = "torch==2.13.0"
# pair -> (our recipe, open_clip model, how the two are compared)
PAIRS = {"clip": ("clip-web", "clip", "samples/s"), "coca": ("clips", "coca", "s per TFLOP")}
TARGETS = {"clip": "samples/s >= 1.1", "coca": "s/FLOP <= 0.9"}
COLUMNS = [Column("pair", "pair"), Column("side", "side"), Column("batch", "batch"), Column("image_size", "px"),
           Column("step_s", "step s", ".2f"), Column("samples_per_s", "samples/s", ".2f"),
           Column("counted_gflops_per_sample", "GFLOP/sample (counted)", ".1f"),
           Column("analytic_gflops_per_sample", "GFLOP/sample (analytic)", ".1f"),
           Column("s_per_tflop", "s per TFLOP", ".2f"), Column("mfu", "MFU", ".1%"),
           Column("peak_rss_mib", "peak RSS MiB", ".0f"), Column("ratio", "ours/open_clip", ".2f"), Column("target", "target"),
           Column("rounds", "per-round ratios"), Column("load", "load 1m")]


def ensure_peer_venv(venv: Path, python: str = sys.executable) -> Path:
    """open_clip's virtual environment at ``venv`` (built on first use: a few minutes); returns its
    python. open_clip + timm + torchvision are installed ``--no-deps`` beside ``torch==2.13.0``."""
    py = venv / "bin" / "python"
    ready = venv / ".ready"
    if ready.is_file():
        return py
    print(f"building open_clip's environment in {venv} (first use)", file=sys.stderr, flush=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, TORCH_PIN, *PEER_DEPS], check=True)
    subprocess.run([*pip, "--no-deps", TORCH_PIN, *PEER_NO_DEPS], check=True)
    check = ("import runpy; m = runpy.run_path(%r); m['register_torchvision_placeholders'](); "
             "import open_clip, timm, torchvision; print(open_clip.__version__)" % str(PEER_SCRIPT))
    subprocess.run([str(py), "-c", check], check=True)
    ready.write_text("ok\n")
    return py


def run_worker(cmd: list[str]) -> dict:
    """Run one worker process and return the JSON it printed after :data:`RESULT_PREFIX`."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-15:])
        raise RuntimeError(f"benchmark worker failed (exit {proc.returncode}): {shlex.join(cmd)}\n{tail}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def arch_json(model: str, image_size: int) -> str:
    """Our model config at ``image_size`` as the JSON the open_clip worker builds its model from."""
    import clips_tower

    return json.dumps(asdict(clips_tower.get_model_config(model).with_image_size(image_size)))


def our_worker(args: argparse.Namespace) -> dict:
    """Our side of one measurement (run in its own process): ``Trainer.train_step`` of ``recipe``."""
    import resource

    from pretrain.throughput import measure_throughput

    from .train_step import step_config

    cfg = step_config(args.model, args.image_size, "fp32", args.batch, args.recipe)
    # The roofline is measured once by the parent; 1.0 only keeps measure_throughput from measuring it here.
    r = measure_throughput(cfg, steps=args.steps, warmup=args.warmup, count_flops=args.count_flops, peak_tflops=1.0,
                           profile_rows=args.profile)
    return {"side": f"ours {args.recipe}", "batch": args.batch, "image_size": args.image_size, "step_s": r["step_s"],
            "step_s_all": r["step_s_all"], "counted_gflops_per_sample": r["counted_gflops_per_sample"],
            "analytic_gflops_per_sample": r["train_gflops_per_sample"], "threads": r["threads"],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "profile": r["profile"]}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``bench peer``."""
    p.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=["clip", "coca"])
    p.add_argument("--batches", nargs="+", type=int, default=[16, 64])
    p.add_argument("--sizes", nargs="+", type=int, default=[112, 224])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (median of per-round ratios)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per process (median)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps per process first (measured: the first steps of a process run 10-40%% slower)")
    p.add_argument("--model", default="clips-vit-b-16",
                   help="our model config; the open_clip side is built with the same shapes")
    p.add_argument("--peer-venv", type=Path, default=DEFAULT_VENV,
                   help="open_clip's virtual environment (built on first use; env CLIPS_PEER_VENV)")
    p.add_argument("--peer-command", default=None,
                   help="command that runs the open_clip worker (default: <peer-venv>/bin/python "
                        "benchmarks/peer_openclip.py); the worker flags are appended")
    p.add_argument("--profile", type=int, default=0,
                   help="print torch.profiler's top N ops of one extra step per side (first round)")
    p.add_argument("--worker", choices=["ours"], help=argparse.SUPPRESS)
    p.add_argument("--recipe", default="clip-web", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--image-size", type=int, default=112, help=argparse.SUPPRESS)
    p.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def summarise(pair: str, results: list[dict], roofline_tflops: float) -> list[dict]:
    """Rows of one (pair, shape): one per side from its rounds, the ratio on our row.

    ``results``: the workers' outputs in run order, each with ``round`` and ``side_key``
    (``"ours"`` / ``"peer"``). Per round, ``ratio`` is ours/open_clip samples/s (``clip``, target
    >= 1.1) or ours/open_clip step time per counted FLOP (``coca``, target <= 0.9).
    """
    from pretrain.throughput import rates

    by_side = {k: [r for r in results if r["side_key"] == k] for k in ("ours", "peer")}
    flops = {k: next((r["counted_gflops_per_sample"] for r in rs if r.get("counted_gflops_per_sample")), None)
             for k, rs in by_side.items()}
    per_round = []
    for rnd in sorted({r["round"] for r in results}):
        o = next(r for r in by_side["ours"] if r["round"] == rnd)
        p = next(r for r in by_side["peer"] if r["round"] == rnd)
        if PAIRS[pair][2] == "samples/s":
            per_round.append(p["step_s"] / o["step_s"])  # same batch: samples/s ratio
        elif flops["ours"] and flops["peer"]:  # step time per counted FLOP
            per_round.append((o["step_s"] / flops["ours"]) / (p["step_s"] / flops["peer"]))
    rows = []
    for k, rs in by_side.items():
        step_s = _median([r["step_s"] for r in rs])
        first = rs[0]
        gflops = flops[k]
        r = rates(first["batch"], step_s, gflops * 1e9 if gflops else None, roofline_tflops)
        rows.append({"pair": pair, "side": first["side"], "batch": first["batch"], "image_size": first["image_size"],
                     "step_s": step_s, "samples_per_s": r["samples_per_s"], "counted_gflops_per_sample": gflops,
                     "analytic_gflops_per_sample": first.get("analytic_gflops_per_sample"),
                     "s_per_tflop": step_s / (gflops * first["batch"] / 1e3) if gflops else None, "mfu": r["mfu"],
                     "peak_rss_mib": max(x["peak_rss_mib"] for x in rs),
                     "load": f"{min(x['load_1m'] for x in rs):.1f}-{max(x['load_1m'] for x in rs):.1f}",
                     "step_s_rounds": [x["step_s"] for x in rs]})
    rows[0]["ratio"] = _median(per_round) if per_round else None
    rows[0]["target"] = TARGETS[pair]
    rows[0]["rounds"] = " ".join(f"{x:.2f}" for x in per_round)
    rows[0]["rss_ratio"] = rows[0]["peak_rss_mib"] / rows[1]["peak_rss_mib"]
    return rows


def run(args: argparse.Namespace) -> dict:
    """Alternate the two sides ``--rounds`` times per (pair, batch, size); returns the JSON record."""
    if args.worker == "ours":
        print(RESULT_PREFIX + json.dumps(our_worker(args)), flush=True)
        return {}
    import torch

    from pretrain.metrics import matmul_roofline

    peer_cmd = shlex.split(args.peer_command) if args.peer_command else [
        str(ensure_peer_venv(args.peer_venv)), str(PEER_SCRIPT)]
    ours_cmd = [sys.executable, "-m", "benchmarks", "peer", "--out", "", "--worker", "ours", "--model", args.model]
    before = matmul_roofline(torch.float32)
    shapes = [(b, s) for s in args.sizes for b in args.batches]
    results: dict[tuple, list[dict]] = {}
    for rnd in range(args.rounds):
        for pair in args.pairs:
            recipe, peer_model, _ = PAIRS[pair]
            for batch, size in shapes:
                common = ["--batch", str(batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
                          *(["--count-flops", "--profile", str(args.profile)] if rnd == 0 else [])]
                sides = {"ours": [*ours_cmd, "--recipe", recipe, "--image-size", str(size), *common],
                         "peer": [*peer_cmd, "--model", peer_model, "--arch", arch_json(args.model, size), *common]}
                order = ["ours", "peer"] if rnd % 2 == 0 else ["peer", "ours"]  # alternate who runs first
                for key in order:
                    load = os.getloadavg()[0]
                    r = run_worker(sides[key])
                    r.update(side_key=key, round=rnd, load_1m=load)
                    if r.get("profile"):
                        print(f"\nprofile, {pair} b{batch}@{size} {r['side']}:\n{r.pop('profile')}", flush=True)
                    results.setdefault((pair, batch, size), []).append(r)
                    print(f"round {rnd + 1}/{args.rounds} {pair} b{batch}@{size} {r['side']}: {r['step_s']:.2f} s/step "
                          f"(load {load:.1f})", file=sys.stderr, flush=True)
    after = matmul_roofline(torch.float32)
    roofline = max(before["best"], after["best"])
    rows = [row for (pair, _, _), rs in results.items() for row in summarise(pair, rs, roofline)]
    info = machine_info()
    notes = [f"fp32 roofline {roofline * 1e3:.1f} GFLOP/s (best of before {before['best'] * 1e3:.1f} / after "
             f"{after['best'] * 1e3:.1f}; by shape before: "
             + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in before["by_shape"].items()) + ")",
             "ratio: clip = ours/open_clip samples/s (higher is better); coca = ours/open_clip step time per "
             "counted FLOP (lower is better); median of the per-round ratios (the sides alternate, each in its own process)",
             "peak RSS: each side's process (ru_maxrss), max over rounds; FLOPs: FlopCounterMode on one "
             "training step (forward + backward matmuls, convolutions, attention)",
             f"machine: {info['cpu']} ({info['cpu_capability']}, native bf16 {info['native_bf16']}), "
             f"{info['threads']} threads, load at the end {info.get('load_1m')}"]
    return report(args.out, "peer", rows, COLUMNS, {k: str(v) for k, v in vars(args).items()}, notes)
