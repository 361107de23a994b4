"""End-to-end pretraining on generated data: it learns, logs, evaluates, checkpoints and resumes exactly.

The tiny model here differs from ``clips-tiny`` in two ways that keep a ~100-step CPU run inside the
test budget: a 32-token text context (the text tower pools the last position, which has to learn to
look past the padding; with 80 positions that takes several hundred steps) and 16 captioner
queries (the 32k-vocabulary caption head is most of a tiny model's step time).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import clips_tower
from pretrain.checkpointing import list_checkpoints, load_trainer_state
from pretrain.config import config_from_dict
from pretrain.data.shards import ShardWriter, json_bytes
from pretrain.synthetic import CLEAN_WORLD, encode_image, generate_sample, write_retrieval_split, write_webdataset
from pretrain.trainer import train

TINY = {
    "name": "tiny-test",
    "embed_dim": 32,
    "vision": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "heads": 2},
    "text": {"vocab_size": 32000, "context_length": 32, "width": 32, "layers": 2, "heads": 2},
    "captioner": {"width": 32, "layers": 2, "heads": 2, "num_queries": 16},
}
REPO = Path(__file__).resolve().parents[1]


def _cfg(root: Path, shards: Path | str, **sections) -> dict:
    model_json = root / "tiny-test.json"
    model_json.write_text(json.dumps(TINY))
    cfg = {
        "model": {"name": str(model_json)},
        "data": {"train": str(shards), "num_workers": 1, "shuffle_buffer": 64, "augment": {"enabled": False}},
        "recipe": {"name": "clips", "strategy": "subcaption"},
        "optim": {"lr": 1.0e-3, "weight_decay": 0.0, "warmup_steps": 5, "schedule": "constant"},
        "stages": [{"steps": 120}],
        "train": {"out_dir": str(root / "run"), "global_batch_size": 32, "precision": "fp32", "grad_clip": None,
                  "log_every": 10, "save_every": 60, "keep_last": 1, "progress": False, "mfu_peak_tflops": None},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            values = {**cfg.get(section, {}), **values}
            if section == "data":
                values["augment"] = {**cfg["data"]["augment"], **values.get("augment", {})}
        cfg[section] = values
    return cfg


def _metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def _train_retrieval_r1(model: clips_tower.CLIPS, n: int = 64) -> tuple[float, float]:
    """Brute-force image->text R@1 over the first ``n`` training scenes, with their web and their
    full synthetic captions (chance = 1/n)."""
    tok = clips_tower.load_tokenizer(context_length=TINY["text"]["context_length"])
    tf = clips_tower.image_transform(model.config)
    samples = [generate_sample(i, seed=0, world=CLEAN_WORLD) for i in range(n)]
    model.eval()
    with torch.no_grad():
        img = model.encode_image(torch.stack([tf(s.image) for s in samples]), normalize=True)
        r1 = []
        for texts in ([s.web for s in samples], [s.synthetic for s in samples]):
            txt = model.encode_text(tok(texts), normalize=True)
            r1.append(((img @ txt.T).argmax(1) == torch.arange(n)).float().mean().item())
    return r1[0], r1[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """~120 steps of CLIPS (web + sub-caption contrastive + captioner) on 128 generated samples,
    with a mid-run and a final retrieval eval on a Karpathy-style split of training scenes. The
    clean world (complete recaptions, no labels): this checks that the trainer learns, not how
    much a noisy world's web captions hold."""
    root = tmp_path_factory.mktemp("tiny_run")
    write_webdataset(root / "data", 128, seed=0, shard_size=32, world=CLEAN_WORLD)
    val = write_retrieval_split(root / "val", 32, seed=0, world=CLEAN_WORLD)
    cfg = config_from_dict(_cfg(root, root / "data", eval={"dataset": str(val), "every_steps": 60, "batch_size": 32}))
    start = time.perf_counter()
    summary = train(cfg)
    return {"root": root, "cfg": cfg, "summary": summary, "seconds": time.perf_counter() - start}


@pytest.mark.slow
def test_tiny_run_every_loss_term_decreases(tiny_run):
    logs = [m for m in _metrics(tiny_run["root"] / "run") if "loss" in m]
    assert [m["step"] for m in logs] == list(range(10, 121, 10))
    first, last = logs[:3], logs[-3:]
    for term in ("contrastive/web", "contrastive/sub", "caption", "loss"):
        before = sum(m[term] for m in first) / 3
        after = sum(m[term] for m in last) / 3
        # Measured (fp32, 2 threads): web 3.42 -> ~2.1, sub 3.40 -> ~3.0, caption 9.4 -> ~2.6.
        assert after < before - 0.15, f"{term}: {before:.3f} -> {after:.3f}"


@pytest.mark.slow
def test_tiny_run_retrieval_far_above_chance(tiny_run):
    model = clips_tower.load_model(tiny_run["summary"]["checkpoint"] + "/model")
    web_r1, syn_r1 = _train_retrieval_r1(model)
    # Chance is 1/64 = 0.016. Measured after 120 steps: web ~0.3, synthetic ~0.1.
    assert web_r1 >= 0.12, web_r1
    assert syn_r1 >= 0.05, syn_r1


@pytest.mark.slow
def test_tiny_run_logs_eval_checkpoints_and_summary(tiny_run):
    root, cfg, summary = tiny_run["root"], tiny_run["cfg"], tiny_run["summary"]
    out = root / "run"
    assert summary["steps"] == 120 and summary["samples_seen"] == 120 * 32 and summary["bad_samples"] == {}
    logs = _metrics(out)
    train_logs = [m for m in logs if "loss" in m]
    for key in ("lr", "logit_scale", "samples_per_s", "mfu", "grad_norm", "data_wait", "epoch"):
        assert all(key in m for m in train_logs), key
    assert 0 < train_logs[-1]["mfu"] < 1 and train_logs[-1]["epoch"] >= 20  # 3840 samples of 128
    assert train_logs[-1]["epochs_seen"] == pytest.approx(30.0)  # sizes.json: 128 samples
    assert train_logs[-1]["lr"] == pytest.approx(1e-3)
    # Periodic zero-shot retrieval (eval package) at steps 60 and 120, in percent, above chance (1/32).
    evals = [m for m in logs if "val/i2t_R@1" in m]
    assert [m["step"] for m in evals] == [60, 120]
    assert summary["eval"]["val/mean_recall"] > 100 / 32
    # Outputs: resolved config, TensorBoard events, keep-last-1 checkpoint loadable as a model.
    assert (out / "config.yaml").read_text() == cfg.to_yaml()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert [s for s, _ in list_checkpoints(out)] == [120]
    ckpt = Path(summary["checkpoint"])
    assert (ckpt / "config.yaml").read_text() == cfg.to_yaml()
    state = load_trainer_state(ckpt)
    assert state["step"] == 120 and set(state["optimizer"]["state"]) >= {"model.logit_scale", "model.visual.proj"}


# ------------------------------------------------------------------ kill and resume
def _resume_cfg(root: Path, data: str, out: str) -> dict:
    """Two stages (32 px, then 48 px with interpolated positions), checkpoints every 3 steps."""
    return _cfg(root, data,
                data={"num_workers": 2, "augment": {"enabled": True, "hue": 0.0}},
                stages=[{"steps": 5, "image_size": 32}, {"steps": 4, "image_size": 48, "lr": 5.0e-4, "warmup_steps": 2}],
                optim={"schedule": "cosine", "warmup_steps": 2},
                train={"out_dir": out, "global_batch_size": 12, "micro_batch_size": 4, "save_every": 3, "keep_last": 5,
                       "log_every": 1, "torch_threads": 1, "mfu_peak_tflops": 0, "tensorboard": False,
                       "grad_clip": 1.0})


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path):
    """SIGKILL a `clips pretrain` process right after a checkpoint appears, resume it, and compare
    with an uninterrupted run: weights must be bit-identical. Exact equality is expected because
    every source of change is restored (weights, AdamW moments and step, schedule, data position of
    each worker, RNG) and both runs use one thread (same reduction order); the run crosses a stage
    boundary (re-built at 48 px) and uses 3-step gradient accumulation with 2 data workers (so the
    checkpoint falls between the two workers' turns)."""
    write_webdataset(tmp_path / "good", 40, seed=1, shard_size=10)
    with ShardWriter(tmp_path / "bad", shard_size=10) as w:  # bad samples in their own shard
        w.write("broken_jpeg", {"jpg": b"not an image", "json": json_bytes({"org_caption": "a", "re_caption": "B."})})
        w.write("no_sentence", {"jpg": encode_image(generate_sample(0).image),
                                "json": json_bytes({"org_caption": "a", "re_caption": " ... "})})
    data = f"{tmp_path / 'good'}::{tmp_path / 'bad' / '00000.tar'}"
    ref = config_from_dict(_resume_cfg(tmp_path, data, str(tmp_path / "ref")))
    ref_summary = train(ref)

    killed_cfg = tmp_path / "killed.yaml"
    killed_cfg.write_text(json.dumps(_resume_cfg(tmp_path, data, str(tmp_path / "killed"))))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "clips_cli.main", "--log-level", "WARNING", "pretrain",
                             "--config", str(killed_cfg)], env=env, stderr=subprocess.PIPE, text=True)
    first = tmp_path / "killed" / "checkpoints" / "step_00000003"
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    done = [s for s, _ in list_checkpoints(tmp_path / "killed")]
    assert done and done[-1] < 9

    summary = train(config_from_dict(_resume_cfg(tmp_path, data, str(tmp_path / "killed"))))
    assert summary["resumed_from"].endswith(f"step_{done[-1]:08d}") and summary["steps"] == 9
    a = load_file(Path(ref_summary["checkpoint"]) / "model" / "model.safetensors")
    b = load_file(Path(summary["checkpoint"]) / "model" / "model.safetensors")
    assert a.keys() == b.keys() and a["visual.positional_embedding"].shape[0] == 37  # 6 x 6 patches + CLS
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The logs of the killed run past its checkpoint were replaced by the resumed run's.
    logs = [m for m in _metrics(tmp_path / "killed") if "loss" in m]
    assert [m["step"] for m in logs] == list(range(1, 10))
    # Skipped samples are counted by reason, carried through the checkpoint, and summed in the summary.
    assert set(ref_summary["bad_samples"]) == {"unreadable_image", "no_sentence"}
    assert summary["bad_samples"] == ref_summary["bad_samples"]
    assert logs[-1]["bad/unreadable_image"] == ref_summary["bad_samples"]["unreadable_image"]


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step")
@pytest.mark.parametrize("max_norm", [None, 1e-3, 1e6])
def test_engine_clips_with_one_gradient_norm(monkeypatch, max_norm):
    """The engine computes the gradient norm once per step (the NaN/Inf check and clipping share
    it) and clips exactly as ``torch.nn.utils.clip_grad_norm_`` on a copy of the same gradients."""
    from pretrain import engines
    from pretrain.config import load_config
    from pretrain.losses import CLIPSLoss
    from pretrain.objective import CLIPSObjective

    torch.manual_seed(0)
    obj = CLIPSObjective(clips_tower.create_model("clips-tiny"), CLIPSLoss({"web": 1.0}))
    eng = engines.TorchEngine(obj, strategy="ddp", device=torch.device("cpu"), world=1,
                              optim_cfg=load_config("clips-tiny").optim, lr_factor=lambda s: 1.0, precision="fp32",
                              grad_clip=max_norm, max_logit_scale=100.0)
    norm_fn, calls = engines.global_grad_norm, []
    monkeypatch.setattr(engines, "global_grad_norm", lambda ps: calls.append(1) or norm_fn(ps))
    eng.backward(eng.module(torch.randn(4, 3, 32, 32), {"web": torch.randint(3, 1000, (4, 80))})["loss"])
    ref = [torch.nn.Parameter(torch.zeros_like(p)) for p in eng.params if p.grad is not None]
    for r, p in zip(ref, (p for p in eng.params if p.grad is not None)):
        r.grad = p.grad.clone()
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, max_norm or float("inf"))
    seen = {}
    step = eng.optimizer.step
    monkeypatch.setattr(eng.optimizer, "step", lambda *a, **k: seen.update(
        grads=[p.grad.clone() for p in eng.params if p.grad is not None]) or step(*a, **k))
    assert torch.isfinite(eng.grad_norm())
    assert eng.step() == pytest.approx(float(ref_norm), rel=1e-5)
    assert calls == [1]
    for got, r in zip(seen["grads"], ref):
        torch.testing.assert_close(got, r.grad, rtol=1e-5, atol=1e-9)
    if max_norm == 1e-3:  # this one clipped
        assert float(torch.nn.utils.get_total_norm(seen["grads"])) == pytest.approx(1e-3, rel=1e-4)
