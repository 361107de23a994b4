"""Two processes (torchrun, gloo) == one process on the concatenated batch: loss and gradients.

Runs this file as the torchrun worker (``__main__``): each rank takes half of an 8-sample batch and
computes the CLIPS loss under DDP (global loss, local loss, local loss + 2-step accumulation) and
under FSDP2; rank 0 saves the rank-averaged loss and the gradients, which the test compares with a
single process on all 8 samples. Everything is float64 so the comparison can be tight.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.processes import free_port

import clips_tower
from pretrain.losses import CLIPSLoss
from pretrain.objective import CLIPSObjective, FeatureBank

B = 8
MODES = ("ddp-global", "ddp-local", "ddp-local-accum", "fsdp2-global")


def _setup(contrastive="clip"):
    torch.manual_seed(0)
    cfg = clips_tower.get_model_config("clips-tiny")
    cfg = dataclasses.replace(cfg, captioner=dataclasses.replace(cfg.captioner, num_queries=16))
    tok = clips_tower.load_tokenizer(target_length=16)
    model = clips_tower.create_model(cfg).double()
    loss = CLIPSLoss({"web": 0.5, "sub": 0.5}, contrastive=contrastive).double()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(B, 3, 32, 32, generator=g, dtype=torch.float64)
    texts = {"web": tok([f"web caption {i}" for i in range(B)]),
             "sub": tok([f"a sentence about thing {i} {'and more ' * (i % 3)}" for i in range(B)])}
    targets = tok.encode_targets([("word " * (i + 2)).strip() + "." for i in range(B)])  # uneven lengths
    return model, loss, images, texts, targets


def _reference(contrastive="clip"):
    model, loss, images, texts, targets = _setup(contrastive)
    obj = CLIPSObjective(model, loss)
    out = obj(images, texts, targets, caption_norm=(targets[:, 1:] != 0).sum().double())
    out["loss"].backward()
    return out["loss"].item(), {n: p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None}


def _worker(out_dir: Path) -> None:
    import torch.distributed as dist

    from pretrain.distributed import all_reduce_sum
    from pretrain.engines import TorchEngine
    from pretrain.optim import stage_lr_factors
    from pretrain.config import OptimSection, StageSection

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for mode in MODES:
        strategy, kind = mode.split("-", 1)
        model, loss, images, texts, targets = _setup()
        obj = CLIPSObjective(model, loss, rank, world, local_loss=kind.startswith("local"))
        engine = TorchEngine(obj, strategy=strategy, device=torch.device("cpu"), world=world, optim_cfg=OptimSection(),
                             lr_factor=stage_lr_factors([StageSection(steps=1)], 1e-3, 0, "cosine", 0.0),
                             precision="fp32", grad_clip=None, max_logit_scale=100.0)
        norm = (targets[:, 1:] != 0).sum().double() / world  # global token count / ranks (see objective.py)
        per = B // world
        mine = slice(rank * per, (rank + 1) * per)
        imgs, txts, tgts = images[mine], {k: v[mine] for k, v in texts.items()}, targets[mine]
        if kind.endswith("accum"):  # 2 micro-batches of per/2 on each rank, negatives over all 8
            micro = [slice(0, per // 2), slice(per // 2, per)]
            with torch.no_grad():
                feats = [engine.module(imgs[m], {k: v[m] for k, v in txts.items()}, features_only=True) for m in micro]
            bank = FeatureBank(torch.cat([f[0] for f in feats]), {n: torch.cat([f[1][n] for f in feats]) for n in txts},
                               feats[0][0].shape[0])
            total = 0.0
            for j, m in enumerate(micro):
                with engine.sync(j == 1):
                    out = engine.module(imgs[m], {k: v[m] for k, v in txts.items()}, tgts[m], bank=bank, micro=j,
                                        live_scale=j == 1, caption_norm=norm)
                    engine.backward(out["loss"])
                total = total + out["contrastive"].detach() * (j == 1) + 2.0 * out["caption"].detach()
            loss_value = total
        else:
            out = engine.module(imgs, txts, tgts, caption_norm=norm)
            engine.backward(out["loss"])
            loss_value = out["loss"].detach()
        engine.reduce_replicated_grads()
        loss_value = (all_reduce_sum(loss_value) / world).item()
        grads = {}
        for n, p in obj.named_parameters():
            if p.grad is not None:
                g = p.grad
                grads[n] = g.full_tensor() if hasattr(g, "full_tensor") else g
        if rank == 0:
            torch.save({"loss": loss_value, "grads": {k: v.detach().clone() for k, v in grads.items()}},
                       out_dir / f"{mode}.pt")
        dist.barrier()
    _fsdp2_trainer_run(out_dir, rank)
    dist.destroy_process_group()


def _fsdp2_trainer_run(out_dir: Path, rank: int) -> None:
    """The trainer under FSDP2 on 2 ranks: stop after 2 steps (sharded state gathered into a
    checkpoint), resume to 3 (full state re-sharded)."""
    import torch.distributed as dist

    from pretrain.config import config_from_dict
    from pretrain.synthetic import write_webdataset
    from pretrain.trainer import train

    if rank == 0:
        write_webdataset(out_dir / "data", 16, seed=0, shard_size=4)
    dist.barrier()
    cfg = {"model": {"name": "clips-tiny"}, "dist": {"strategy": "fsdp2"}, "stages": [{"steps": 3}],
           "data": {"train": str(out_dir / "data"), "num_workers": 0, "shuffle_buffer": 4},
           "train": {"out_dir": str(out_dir / "fsdp2-run"), "global_batch_size": 8, "precision": "fp32",
                     "save_every": 2, "progress": False, "mfu_peak_tflops": 0, "tensorboard": False, "log_every": 1}}
    first = train(config_from_dict({**cfg, "train": {**cfg["train"], "stop_after_steps": 2}}))
    second = train(config_from_dict(cfg))
    if rank == 0:
        (out_dir / "fsdp2-trainer.json").write_text(json.dumps([first, second]))


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(Path(__file__).resolve()), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = {m: torch.load(out / f"{m}.pt", weights_only=True) for m in MODES}
    results["fsdp2-trainer"] = json.loads((out / "fsdp2-trainer.json").read_text())
    return results


@pytest.mark.distributed
@pytest.mark.parametrize("mode", MODES)
def test_two_ranks_equal_one_process_on_the_concatenated_batch(two_rank_results, mode):
    ref_loss, ref_grads = _reference()
    got = two_rank_results[mode]
    assert got["loss"] == pytest.approx(ref_loss, rel=1e-10)
    assert set(got["grads"]) == set(ref_grads)
    for n, g in ref_grads.items():
        torch.testing.assert_close(got["grads"][n], g, rtol=1e-8, atol=1e-12, msg=f"{mode}: {n}")


@pytest.mark.distributed
def test_fsdp2_trainer_checkpoints_and_resumes_on_two_ranks(two_rank_results):
    first, second = two_rank_results["fsdp2-trainer"]
    assert first["steps"] == 2 and first["stopped_early"]
    assert second["steps"] == 3 and second["resumed_from"].endswith("step_00000002")
    model = clips_tower.load_model(Path(second["checkpoint"]) / "model")  # gathered full weights
    assert model.visual.positional_embedding.shape == (17, 64) and model.logit_scale.ndim == 0


_DEEPSPEED_RUN = """
import json, sys
from pretrain.config import config_from_dict
from pretrain.trainer import train
cfg = json.loads(sys.argv[1])
first = train(config_from_dict({**cfg, "train": {**cfg["train"], "stop_after_steps": 2}}))
second = train(config_from_dict(cfg))
print(json.dumps([first, second]))
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_deepspeed_zero2_single_process_trains_and_resumes(tmp_path):
    """DeepSpeed ZeRO-2 (CPU accelerator, one process): 2 steps with 2-step accumulation, a stop,
    then a resume from DeepSpeed's own optimizer state to step 3."""
    from pretrain.synthetic import write_webdataset

    write_webdataset(tmp_path / "data", 24, seed=0, shard_size=12)
    model_json = tmp_path / "tiny.json"
    cfg_tiny = clips_tower.get_model_config("clips-tiny").to_dict()
    cfg_tiny["captioner"]["num_queries"] = 16
    model_json.write_text(json.dumps(cfg_tiny))
    cfg = {"model": {"name": str(model_json)},
           "data": {"train": str(tmp_path / "data"), "num_workers": 0, "shuffle_buffer": 8},
           "dist": {"strategy": "deepspeed", "zero_stage": 2},
           "stages": [{"steps": 3}],
           "train": {"out_dir": str(tmp_path / "run"), "global_batch_size": 8, "micro_batch_size": 4,
                     "precision": "fp32", "save_every": 2, "progress": False, "mfu_peak_tflops": 0,
                     "tensorboard": False, "log_every": 1}}
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", _DEEPSPEED_RUN, json.dumps(cfg)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    first, second = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first["steps"] == 2 and first["stopped_early"]
    assert second["steps"] == 3 and second["resumed_from"].endswith("step_00000002")
    assert (Path(second["checkpoint"]) / "deepspeed").is_dir()
    losses = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in losses] == [1, 2, 3] and all(math.isfinite(m["loss"]) for m in losses)
    init = clips_tower.create_model(clips_tower.load_config(model_json))  # what the trainer starts from (seed 0)
    trained = clips_tower.load_model(Path(second["checkpoint"]) / "model")
    assert not torch.equal(init.visual.proj, trained.visual.proj)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
