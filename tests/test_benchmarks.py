"""Benchmarks: the entry points run on clips-tiny with tiny counts and write well-formed tables and
JSON (no timing is asserted), plus the correctness of what the performance work changed."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import torch

from benchmarks.cli import main as bench_main
from benchmarks.common import Column, PeakRSS, append_results, markdown_table
from pretrain.metrics import matmul_roofline


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_markdown_table_and_results_file(tmp_path):
    rows = [{"a": "x", "b": 0.5}, {"a": "y"}]
    table = markdown_table(rows, [Column("a", "A"), Column("b", "B", ".1%")])
    assert table.splitlines() == ["| A | B |", "|---|---|", "| x | 50.0% |", "| y | - |"]
    out = tmp_path / "sub" / "r.jsonl"
    append_results(out, "demo", rows, {"k": 1})
    append_results(out, "demo2", [], {})
    recs = _records(out)
    assert [r["benchmark"] for r in recs] == ["demo", "demo2"]
    assert recs[0]["rows"] == rows and recs[0]["args"] == {"k": 1}
    assert {"cpu", "native_bf16", "threads"} <= set(recs[0]["machine"])


def test_peak_rss_sees_a_large_allocation():
    with PeakRSS() as mem:
        x = torch.ones(64 * 2**20)  # 256 MiB, touched
        del x
    assert mem.delta_mib > 200


def test_roofline_reports_both_layouts_per_shape():
    shapes = ((128, 128, 128), (256, 64, 192))
    r = matmul_roofline(torch.float32, shapes=shapes, min_seconds=0.01)
    assert r["nn"] > 0 and r["nt"] > 0 and r["best"] == max(r["nn"], r["nt"])
    assert set(r["by_shape"]) == {"128x128x128", "256x64x192"} and max(r["by_shape"].values()) == r["best"]


def test_captioner_attention_baselines_match_the_model_path():
    """The benchmark's dense-mask and reference baselines compute the same attention as the model's
    SDPA + shared bool mask path (so the comparison is like for like)."""
    from benchmarks.captioner_cost import attention_impls, attention_inputs

    q, k, v, mask = attention_inputs("clips-tiny", 32, 2)
    outs = [fn(q, k, v, mask) for fn in attention_impls().values()]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-5, rtol=1e-5)


def test_fused_adamw_matches_foreach():
    """The engines' fused AdamW gives the same update as the foreach implementation (with the
    decay / no-decay groups of :func:`pretrain.optim.param_groups`)."""
    from pretrain.optim import build_optimizer

    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
              for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=g) for p in models[0].parameters()]
    for model, fused in zip(models, (None, True)):
        opt = build_optimizer(model, 1e-2, (0.9, 0.98), 1e-6, 0.2, fused=fused)
        for _ in range(3):
            for p, gr in zip(model.parameters(), grads):
                p.grad = gr.clone()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_engine_uses_fused_adamw_and_warns_on_emulated_bf16(monkeypatch, caplog):
    import clips_tower
    from pretrain import engines
    from pretrain.config import load_config
    from pretrain.losses import CLIPSLoss
    from pretrain.objective import CLIPSObjective

    cfg = load_config("clips-tiny")
    obj = CLIPSObjective(clips_tower.create_model("clips-tiny"), CLIPSLoss({"web": 1.0}))
    eng = engines.TorchEngine(obj, strategy="ddp", device=torch.device("cpu"), world=1, optim_cfg=cfg.optim,
                              lr_factor=lambda s: 1.0, precision="fp32", grad_clip=None, max_logit_scale=100.0)
    assert eng.optimizer.defaults["fused"] is True
    monkeypatch.setattr(engines, "native_bf16_cpu", lambda: False)
    engines._warn_emulated_bf16.cache_clear()
    with caplog.at_level(logging.WARNING, logger="pretrain.engines"):
        with engines.autocast(torch.device("cpu"), "bf16"):
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        with engines.autocast(torch.device("cpu"), "fp32"):
            pass
    assert sum("emulates bf16" in r.message for r in caplog.records) == 1


def test_train_bench_tiny_rows_are_consistent(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert bench_main(["train", "--models", "tiny", "--precisions", "fp32", "--batch", "2", "--steps", "1",
                       "--compile", "--out", str(out)]) == 0
    (rec,) = _records(out)
    eager, compiled = rec["rows"]
    assert (eager["compiled"], compiled["compiled"]) == ("no", "yes")
    for row in (eager, compiled):
        assert row["model"] == "clips-tiny" and row["batch"] == 2 and row["precision"] == "fp32"
        assert row["samples_per_s"] == pytest.approx(2 / row["step_s"])
        assert row["mfu"] == pytest.approx(row["achieved_tflops"] / row["roofline_tflops"])
        assert row["achieved_tflops"] == pytest.approx(row["train_gflops_per_sample"] * row["samples_per_s"] / 1e3)
        assert row["peak_rss_mib"] > 0
    # same model, same FLOPs: compiling changes the time only
    assert compiled["train_gflops_per_sample"] == eager["train_gflops_per_sample"]
    table = capsys.readouterr().out
    assert "| clips-tiny | 32 | fp32 | clips | no |" in table and "| clips-tiny | 32 | fp32 | clips | yes |" in table


def test_retrieval_and_data_benches_tiny(tmp_path):
    out = tmp_path / "r.jsonl"
    bench_main(["retrieval", "--images", "10", "--out", str(out)])
    bench_main(["data", "--workers", "0", "--batch", "4", "--batches", "2", "--samples", "16", "--steps", "1",
                "--out", str(out)])
    retrieval, data = _records(out)
    assert [r["phase"] for r in retrieval["rows"]] == ["embed images", "embed texts", "rank (both directions)"]
    assert [r["items"] for r in retrieval["rows"]] == [10, 50, 500]
    assert [r["case"] for r in data["rows"]][1:] == ["data stream, 0 workers"]
    model, stream = data["rows"]
    assert stream["vs_model"] == pytest.approx(stream["samples_per_s"] / model["samples_per_s"])


def _count_trainer_steps(monkeypatch) -> list[tuple]:
    """Patch ``Trainer.train_step`` to record (compile, grad checkpointing, precision, strategy) per call."""
    from pretrain.trainer import Trainer

    calls = []
    real_step = Trainer.train_step

    def counting_step(self, s, batches):
        calls.append((self.cfg.model.compile, s.objective.model.visual.transformer.grad_checkpointing,
                      self.cfg.train.precision, self.cfg.dist.strategy))
        return real_step(self, s, batches)

    monkeypatch.setattr(Trainer, "train_step", counting_step)
    return calls


def test_gpu_script_bf16_fsdp2_and_llava_through_the_trainer_step_on_cpu(tmp_path, monkeypatch):
    """``bench gpu --tiny`` on CPU takes the GPU run's bf16 autocast, FSDP2 wrap and LLaVA stage-1
    paths, and times the trainer's own ``Trainer.train_step``: 1 warm-up + 1 timed call."""
    calls = _count_trainer_steps(monkeypatch)
    out = tmp_path / "r.jsonl"
    bench_main(["gpu", "--tiny", "--cases", "eager", "--precision", "bf16", "--strategy", "fsdp2", "--out", str(out)])
    rows = _records(out)[0]["rows"]
    assert [r.get("error") for r in rows] == [None, None], rows
    assert [r["case"] for r in rows] == ["eager", "llava stage 1"]
    assert calls == [(False, False, "bf16", "fsdp2")] * 2
    assert rows[1]["samples_per_s"] > 0 and rows[0]["roofline_tflops"] > 0


@pytest.mark.slow
@pytest.mark.timeout(2400)  # inductor compiles C++ kernels on CPU: ~15 min at a load of 10 on 2 cores
def test_gpu_script_compile_and_checkpointing_on_cpu(tmp_path, monkeypatch):
    """The ``compile+ckpt`` case of ``bench gpu`` (torch.compile with inductor, gradient
    checkpointing) runs through the trainer's step on CPU (a compile error shows up here, not on the GPU)."""
    calls = _count_trainer_steps(monkeypatch)
    out = tmp_path / "r.jsonl"
    bench_main(["gpu", "--tiny", "--cases", "compile+ckpt", "--llava-steps", "0", "--out", str(out)])
    (row,) = _records(out)[0]["rows"]
    assert row.get("error") is None, row
    assert calls == [(True, True, "fp32", "ddp")] * 2


FAKE_PEER = """
import argparse, json
p = argparse.ArgumentParser()
for flag in ("--model", "--arch", "--batch", "--steps", "--warmup", "--profile"):
    p.add_argument(flag)
p.add_argument("--count-flops", action="store_true")
a = p.parse_args()
arch = json.loads(a.arch)
print("PEER_RESULT " + json.dumps({"side": "fake " + a.model, "batch": int(a.batch), "arch": arch,
      "image_size": arch["vision"]["image_size"], "step_s": 2.0, "step_s_all": [2.0], "peak_rss_mib": 1.0,
      "counted_gflops_per_sample": 0.5 if a.count_flops else None}))
"""


@pytest.mark.slow
def test_peer_bench_alternates_sides_at_identical_shapes(tmp_path, capsys):
    """The orchestration of ``bench peer`` with a stand-in for the open_clip worker (building open_clip's
    environment takes minutes; the real worker is run by ``python -m benchmarks peer``): our side is
    the trainer's real step in its own process, the sides alternate per round, the peer is built from
    our model config, and FLOPs are counted on both sides in the first round only."""
    fake = tmp_path / "fake_peer.py"
    fake.write_text(FAKE_PEER)
    out = tmp_path / "r.jsonl"
    bench_main(["peer", "--model", "clips-tiny", "--pairs", "clip", "coca", "--batches", "2", "--sizes", "32",
                "--rounds", "2", "--steps", "1", "--peer-command", f"{sys.executable} {fake}", "--out", str(out)])
    log = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("round ")]
    sides = [ln.split(": ")[0].split()[-1] for ln in log]
    assert sides == ["clip-web", "clip", "clips", "coca", "clip", "clip-web", "coca", "clips"]
    rows = _records(out)[0]["rows"]
    assert [(r["pair"], r["side"]) for r in rows] == [("clip", "ours clip-web"), ("clip", "fake clip"),
                                                    ("coca", "ours clips"), ("coca", "fake coca")]
    ours_clip, peer_clip, ours_clips, _ = rows
    assert peer_clip["counted_gflops_per_sample"] == 0.5 and peer_clip["step_s"] == 2.0
    assert ours_clip["peak_rss_mib"] > 100  # our worker process's own RSS (torch alone is more)
    # The CLIPS step does more work than the CLIP step at the same shape, and both were counted.
    assert ours_clips["counted_gflops_per_sample"] > 2 * ours_clip["counted_gflops_per_sample"] > 0
    assert len(ours_clip["rounds"].split()) == 2


@pytest.mark.parametrize("model", ["clips-tiny", "clips-vit-b-16"])
def test_peer_uses_our_activation_in_every_tower(model):
    """The open_clip peer must be the same model: our text towers and captioner use tanh GELU
    (the released checkpoints' choice) where open_clip defaults to exact GELU. ``set_gelu`` turns
    open_clip's ``nn.GELU`` modules into the activation of the config, checked numerically."""
    from benchmarks import peer_openclip
    from benchmarks.peer import arch_json
    from clips_tower.layers import MLP

    arch = json.loads(arch_json(model, 32))
    x = torch.linspace(-4, 4, 101)
    for tower in ("vision", "text", "captioner"):
        act = arch[tower]["act"]
        mlp = torch.nn.Sequential(torch.nn.Linear(101, 101), torch.nn.GELU())
        peer_openclip.set_gelu(mlp, act)
        ours = MLP(101, 404, act)  # the project's own MLP: its activation is the reference
        ours = torch.nn.functional.gelu(x, approximate=ours.approximate)
        torch.testing.assert_close(mlp[1](x), ours, rtol=0, atol=0)
    assert arch["text"]["act"] == "gelu_tanh" and arch["vision"]["act"] == "gelu"  # the spec's choice
    with pytest.raises(ValueError, match="quick_gelu"):
        peer_openclip.gelu_kwargs("quick_gelu")


@pytest.mark.parametrize("recipe", ["clip-web", "clips"])
def test_analytic_flops_match_flop_counter(recipe):
    """:func:`clips_tower.flops.model_flops` (what MFU divides by) against torch's FlopCounterMode on
    one real training step of the trainer (forward + backward matmuls, convolutions, attention)."""
    from benchmarks.train_step import step_config
    from pretrain.throughput import measure_throughput

    r = measure_throughput(step_config("clips-tiny", 32, "fp32", 2, recipe), steps=1, count_flops=True,
                           peak_tflops=1.0)
    assert r["counted_gflops_per_sample"] == pytest.approx(r["train_gflops_per_sample"], rel=0.05)


def test_rates_mfu():
    """:func:`pretrain.throughput.rates`, the one MFU computation of the trainer's log and the
    benchmarks: 8 samples in 0.5 s at 1 GFLOP per sample against 0.032 TFLOP/s per device is 50%
    on one device and 25% on two."""
    from pretrain.throughput import rates

    r = rates(8, 0.5, 1e9, 0.032)
    assert r["samples_per_s"] == 16 and r["mfu"] == pytest.approx(0.5)
    assert rates(8, 0.5, 1e9, 0.032, world=2)["mfu"] == pytest.approx(0.25)
    assert rates(8, 0.5, None, 0.032)["mfu"] is None


@pytest.mark.slow
def test_llava_bench_stage1_tiny(tmp_path):
    out = tmp_path / "r.jsonl"
    bench_main(["llava", "--stages", "pretrain", "--steps", "2", "--samples", "8", "--batch", "2", "--out", str(out)])
    live, cached = _records(out)[0]["rows"]
    assert live["case"] == "stage 1, live tower" and cached["case"] == "stage 1, feature cache"
    assert cached["ratio"] == pytest.approx(cached["steps_per_s"] / live["steps_per_s"])
