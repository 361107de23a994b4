"""Fault injection, training side: NaN/Inf steps, bad checkpoints and tokenizers, and a run killed
while it writes a checkpoint.

(A run SIGKILLed between checkpoints and resumed to bit-identical weights is
``test_pretrain_train.py::test_killed_run_resumes_to_the_same_weights``; unknown keys and wrong types
in run configs are ``test_pretrain_config.py::test_bad_configs_name_the_key_and_file``.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import clips_tower
from clips_tower.checkpoint import CheckpointError
from clips_tower.tokenizer import check_tokenizer_fits
from pretrain import losses
from pretrain.checkpointing import list_checkpoints, load_trainer_state, step_dir
from pretrain.config import config_from_dict
from pretrain.engines import TorchEngine
from pretrain.nonfinite import NonFiniteError
from pretrain.synthetic import write_webdataset
from pretrain.trainer import Trainer, train
from helpers.runs import TINY, run_config


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("data")
    write_webdataset(out, 24, seed=0, shard_size=12, image_size=16)
    return str(out)


def _cfg(root: Path, data: str, steps: int, **train) -> dict:
    cfg = run_config(root, data, save_every=1, keep_last=100, **train)
    cfg["stages"] = [{"steps": steps}]
    return cfg


def _weights(root: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(step_dir(root / "run", step) / "model" / "model.safetensors")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _all_finite(sd: dict) -> bool:
    return all(torch.isfinite(v).all() for v in sd.values())


@pytest.fixture
def nan_caption_at(monkeypatch):
    """``nan_caption_at({2, 3})``: the caption loss (and so the total) is NaN at those 1-based steps
    (one loss call per step: no gradient accumulation in these runs)."""
    def arm(steps: set[int]) -> None:
        original, calls = losses.CLIPSLoss.forward, []

        def forward(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            calls.append(1)
            if len(calls) in steps:
                out = {**out, "caption": out["caption"] * float("nan"), "loss": out["loss"] * float("nan")}
            return out

        monkeypatch.setattr(losses.CLIPSLoss, "forward", forward)
    return arm


# ------------------------------------------------------------------ NaN / Inf
def test_nonfinite_steps_are_skipped_without_touching_weights_or_moments(tmp_path, data, nan_caption_at):
    nan_caption_at({2, 3})
    summary = train(config_from_dict(_cfg(tmp_path, data, 5, max_nonfinite_skips=2)))
    assert summary["steps"] == 5
    w = {s: _weights(tmp_path, s) for s in range(1, 6)}
    assert all(_all_finite(sd) for sd in w.values())
    # Skipped steps 2 and 3 changed nothing; steps 4 and 5 trained again.
    assert _same(w[1], w[2]) and _same(w[1], w[3]) and not _same(w[3], w[4]) and not _same(w[4], w[5])
    s1, s3 = load_trainer_state(step_dir(tmp_path / "run", 1)), load_trainer_state(step_dir(tmp_path / "run", 3))
    for name, st in s1["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg"], s3["optimizer"]["state"][name]["exp_avg"]), name
        assert float(st["step"]) == float(s3["optimizer"]["state"][name]["step"]) == 1
    assert s3["nonfinite_skips"] == 2
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m.get("nonfinite_skips", 0) for m in logged] == [0, 1, 2, 2, 2]
    assert "caption" not in logged[1] and all(torch.isfinite(torch.tensor(m["loss"])) for m in (logged[0], logged[3]))


def test_nonfinite_past_the_limit_stops_naming_step_and_term(tmp_path, data, nan_caption_at):
    nan_caption_at({2, 3, 4})
    with pytest.raises(NonFiniteError, match=r"step 4: non-finite loss term\(s\) caption, loss .*"
                                             r"2 step\(s\) skipped already, train.max_nonfinite_skips=2"):
        train(config_from_dict(_cfg(tmp_path, data, 6, max_nonfinite_skips=2)))
    saved = list_checkpoints(tmp_path / "run")
    assert [s for s, _ in saved] == [1, 2, 3] and all(_all_finite(_weights(tmp_path, s)) for s, _ in saved)


def test_nonfinite_gradient_with_finite_loss_stops_at_once(tmp_path, data, monkeypatch):
    original = Trainer.build_session

    def build_session(self, *args, **kwargs):
        s = original(self, *args, **kwargs)
        s.objective.model.logit_scale.register_hook(lambda g: g * float("inf"))
        return s

    monkeypatch.setattr(Trainer, "build_session", build_session)
    with pytest.raises(NonFiniteError, match=r"step 1: non-finite gradient \(0 step\(s\) skipped already.*"
                                             r"no checkpoint was written yet"):
        train(config_from_dict(_cfg(tmp_path, data, 3, max_nonfinite_skips=0)))
    assert list_checkpoints(tmp_path / "run") == []


def test_nan_weights_are_never_checkpointed(tmp_path, data, monkeypatch):
    """An update that leaves NaN in a parameter (finite loss and gradients): the checkpoint of
    that step is refused, naming the parameter; the previous one stays intact."""
    original, calls = TorchEngine.step, []

    def step(self):
        norm = original(self)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                self.objective.model.text.ln_final.weight[0] = float("nan")
        return norm

    monkeypatch.setattr(TorchEngine, "step", step)
    with pytest.raises(NonFiniteError, match=r"step 2: parameter 'model.text.ln_final.weight' holds NaN/Inf; "
                                             r"not writing checkpoint .*step_00000002; the last complete checkpoint "
                                             r"is .*step_00000001"):
        train(config_from_dict(_cfg(tmp_path, data, 3)))
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [1]
    assert _all_finite(_weights(tmp_path, 1)) and not list((tmp_path / "run" / "checkpoints").glob(".*"))


# ------------------------------------------------------------------ checkpoints and tokenizers that do not fit
def _other_size(root: Path) -> Path:
    """A model config like TINY with a wider text tower (another model size)."""
    other = {**TINY, "name": "tiny-wide", "text": {**TINY["text"], "width": 24}}
    path = root / "tiny-wide.json"
    path.write_text(json.dumps(other))
    return path


def test_resume_from_another_model_size_fails_before_any_step(tmp_path, data):
    train(config_from_dict(_cfg(tmp_path, data, 1)))
    cfg = _cfg(tmp_path, data, 2)
    cfg["model"]["name"] = str(_other_size(tmp_path))
    weights = step_dir(tmp_path / "run", 1) / "model" / "model.safetensors"
    with pytest.raises(CheckpointError) as e:
        train(config_from_dict(cfg))
    msg = str(e.value)
    assert f"train.resume checkpoint {weights}" in msg
    assert "text.ln_final.weight: checkpoint shape [16] != model shape [24]" in msg
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [1]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1  # nothing trained


def test_init_from_another_model_size_names_key_file_and_shapes(tmp_path, data, monkeypatch):
    torch.manual_seed(0)
    folder = clips_tower.save_model(clips_tower.create_model(clips_tower.load_config(_other_size(tmp_path))),
                                    tmp_path / "wide")
    cfg = _cfg(tmp_path, data, 2)
    cfg["model"]["init_from"] = str(folder)
    steps = []
    monkeypatch.setattr(Trainer, "train_step", lambda *a: steps.append(1))
    with pytest.raises(CheckpointError, match=re.escape(f"model.init_from={folder} ({folder / 'model.safetensors'}) for "
                                                        "model 'tiny-rel' does not fit the model:") + r"(.|\n)*"
                                              r"text.ln_final.weight: checkpoint shape \[24\] != model shape \[16\]"):
        train(config_from_dict(cfg))
    assert steps == []


def test_tokenizer_that_does_not_fit_the_model_is_a_clear_error(tmp_path):
    cfg = clips_tower.load_config(_other_size(tmp_path))  # 16-token context, 8 captioner queries
    tok = clips_tower.load_tokenizer()  # 80 / 128 and the 30522-token bert vocab
    with pytest.raises(ValueError, match=r"tokenizer .*vocab.txt does not match model 'tiny-wide': context_length "
                                         r"80 != model text.context_length 16; target_length 128 != model "
                                         r"captioner.num_queries 8"):
        check_tokenizer_fits(tok, cfg, f"tokenizer {tok.source}")
    small_vocab = clips_tower.create_model(dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, vocab_size=1000)))
    fitting = clips_tower.load_tokenizer(context_length=16, target_length=8)
    with pytest.raises(ValueError, match=r"vocab size 30522 > model text.vocab_size 1000"):
        clips_tower.save_model(small_vocab, tmp_path / "out", tokenizer=fitting)
    assert not (tmp_path / "out").exists()
    check_tokenizer_fits(fitting, cfg)  # the matching one passes
    # `clips eval --tokenizer`: a checkpoint with its own (fitting) tokenizer, evaluated with another one.
    from clips_tower.tokenizer import default_vocab_path
    from eval.commands import load_eval_model

    folder = clips_tower.save_model(clips_tower.create_model(cfg), tmp_path / "wide", tokenizer=fitting)
    load_eval_model(str(folder))
    with pytest.raises(ValueError, match=r"context_length 80 != model text.context_length 16"):
        load_eval_model(str(folder), tokenizer=str(default_vocab_path()))


def test_resaving_a_step_keeps_a_complete_copy_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    """Re-saving an existing step (a run resumed from an older checkpoint): the old folder is moved
    aside, not deleted, until the new one has its final name; after a crash in between, resume
    puts the complete old copy back."""
    import pretrain.checkpointing as C

    cfg = clips_tower.load_config(_other_size(tmp_path))
    tok = clips_tower.load_tokenizer(context_length=16, target_length=8)

    def save(seed: int) -> None:
        torch.manual_seed(seed)
        sd = {f"model.{k}": v for k, v in clips_tower.create_model(cfg).state_dict().items()}
        C.save_checkpoint(step_dir(tmp_path, 1), is_main=True, objective_state=sd, model_config=cfg, tokenizer=tok,
                          trainer_state={"step": 1, "seed": seed}, config_yaml="", write_extra=lambda folder: None)

    save(0)
    save(1)
    assert load_trainer_state(step_dir(tmp_path, 1))["seed"] == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000001"]
    real = os.replace

    def crash_on_final_rename(src, dst):
        if Path(src).name.endswith(".tmp") and Path(dst).name == "step_00000001":
            raise OSError("killed")
        real(src, dst)

    monkeypatch.setattr(C.os, "replace", crash_on_final_rename)
    with pytest.raises(OSError, match="killed"):
        save(2)
    assert list_checkpoints(tmp_path) == []  # only ".step_00000001.old" (seed 1) and the new ".tmp" remain
    ckpt = C.resolve_resume("auto", tmp_path)  # resume puts the complete old copy back
    assert ckpt == step_dir(tmp_path, 1) and load_trainer_state(ckpt)["seed"] == 1
    clips_tower.load_model(ckpt / "model")


# ------------------------------------------------------------------ SIGKILL during a checkpoint write
_PAUSE_IN_CHECKPOINT = """
import sys, time
from pathlib import Path
import pretrain.checkpointing as C

real = C.atomic_write_text

def paused(path, text):
    # The last file of a checkpoint, written after the weights and trainer_state.pt: stop half-way
    # through it and wait to be killed.
    if Path(path).parent.name == ".step_00000004.tmp":
        Path(path).write_text(text[: len(text) // 2])
        Path(sys.argv[2]).touch()
        time.sleep(600)
    real(path, text)

C.atomic_write_text = paused
from clips_cli.main import main
sys.exit(main(["--log-level", "WARNING", "pretrain", "--config", sys.argv[1]]))
"""


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_kill_during_checkpoint_write_keeps_previous_and_resumes_exactly(tmp_path, data):
    """SIGKILL while checkpoint 4 is half written: checkpoint 2 is untouched and loads, the half
    folder is ignored, and the resumed run ends bit-identical to an uninterrupted one. Exact
    equality holds because weights, AdamW state, schedule, data cursors and RNG are all restored
    and both runs use one thread and no data workers (the same reduction order)."""
    def cfg(out: str, keep_last: int = 1) -> dict:
        c = run_config(tmp_path, data, save_every=2, keep_last=keep_last, out_dir=str(tmp_path / out))
        c["stages"] = [{"steps": 6}]
        c["data"].update(shuffle_buffer=8)
        return c

    ref = train(config_from_dict(cfg("ref", keep_last=3)))
    path = tmp_path / "killed.json"
    path.write_text(json.dumps(cfg("killed")))
    marker = tmp_path / "paused"
    script = tmp_path / "run_paused.py"
    script.write_text(_PAUSE_IN_CHECKPOINT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(marker)], env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), f"the run never reached checkpoint 4: {proc.stderr.read()[-2000:]}"
    ckpts = tmp_path / "killed" / "checkpoints"
    half = ckpts / ".step_00000004.tmp"
    assert (half / "trainer_state.pt").is_file()  # the interrupted write is there, under a temporary name
    assert [s for s, _ in list_checkpoints(tmp_path / "killed")] == [2]
    # The previous checkpoint loads and holds what the uninterrupted run had at step 2.
    prev = step_dir(tmp_path / "killed", 2)
    assert load_trainer_state(prev)["step"] == 2
    clips_tower.load_model(prev / "model")
    assert _same(load_file(prev / "model" / "model.safetensors"),
                 load_file(step_dir(tmp_path / "ref", 2) / "model" / "model.safetensors"))

    summary = train(config_from_dict(cfg("killed")))
    assert summary["resumed_from"] == str(prev) and summary["steps"] == 6
    a = load_file(Path(ref["checkpoint"]) / "model" / "model.safetensors")
    b = load_file(Path(summary["checkpoint"]) / "model" / "model.safetensors")
    assert _same(a, b)
    assert not half.exists()  # the next save of step 4 replaced the half-written folder
    assert [s for s, _ in list_checkpoints(tmp_path / "killed")] == [6]
