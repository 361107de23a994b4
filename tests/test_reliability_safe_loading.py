"""Safe loading, enforced on the source tree: no pickle-executing loads, no remote code, no archive
member names used as file-system paths, safetensors for weights; plus what a malicious file does.

The scan parses every Python file of the project (AST, so comments and docstrings cannot trip it)
and fails naming file, line and rule when a violation appears.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

from clips_tower.checkpoint import CheckpointError, read_weights
from pretrain.checkpointing import STATE_FILE, load_trainer_state

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("clips_tower", "pretrain", "eval", "llava_integration", "clips_cli", "benchmarks", "scripts", "tests")
# The one place allowed to pickle with torch.save: trainer_state.pt holds plain tensors/containers and is
# read back with weights_only=True (model weights are safetensors).
TORCH_SAVE_ALLOWED = {"pretrain/checkpointing.py"}
# (file, rule prefix) -> why it is safe there.
EXEMPT = {("tests/test_tokenizer.py", "pickle.loads"): "round trip of a tokenizer the test itself just pickled"}


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _dotted(node: ast.expr) -> str:
    """``a.b.c`` for an attribute chain / name, '' otherwise."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def violations(source: str, rel: str) -> list[str]:
    """Safe-loading rule violations in one file's ``source`` as ``"rel:line: rule"``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        attr = node.func.attr if isinstance(node.func, ast.Attribute) else name

        def bad(rule: str) -> None:
            found.append(f"{rel}:{node.lineno}: {rule}")

        if name == "torch.load" and not _is_const(_kw(node, "weights_only"), True):
            bad("torch.load without weights_only=True")
        if name in ("pickle.load", "pickle.loads", "dill.load", "dill.loads", "joblib.load", "cloudpickle.load"):
            bad(f"{name} (unpickling runs arbitrary code)")
        if name in ("np.load", "numpy.load") and not _is_const(_kw(node, "allow_pickle") or ast.Constant(False), False):
            bad("np.load with allow_pickle")
        trc = _kw(node, "trust_remote_code")
        if trc is not None and not _is_const(trc, False):
            bad("trust_remote_code not False")
        if attr in ("extractall", "extract") or name == "shutil.unpack_archive":
            bad(f"{attr}: archive member names used as file-system paths")
        if attr == "save_pretrained" and _kw(node, "safe_serialization") is not None and \
                not _is_const(_kw(node, "safe_serialization"), True):
            bad("save_pretrained without safetensors")
        if name == "torch.save" and rel not in TORCH_SAVE_ALLOWED and not rel.startswith("tests/"):
            bad("torch.save of weights (use safetensors: clips_tower.io.atomic_save_safetensors)")
    return found


def _project_files() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]


def test_scanner_catches_each_rule():
    bad = """
import torch, pickle, tarfile, numpy as np
torch.load("x.pt")
torch.load("x.pt", weights_only=False)
pickle.loads(b"")
np.load("a.npy", allow_pickle=True)
AutoModel.from_pretrained("m", trust_remote_code=True)
tarfile.open("a.tar").extractall("out")
model.save_pretrained("d", safe_serialization=False)
torch.save(model.state_dict(), "w.bin")
"""
    rules = [v.split(": ", 1)[1] for v in violations(bad, "pkg/mod.py")]
    assert len(rules) == 8, rules
    good = """
import torch, numpy as np
torch.load("x.pt", map_location="cpu", weights_only=True)
np.load("a.npy", mmap_mode="r")
AutoModel.from_pretrained("m", trust_remote_code=False)
tar.extractfile(member).read()
model.save_pretrained("d")
"""
    assert violations(good, "pkg/mod.py") == []


def test_source_tree_has_no_unsafe_loading():
    files = _project_files()
    assert len(files) > 50 and any(f.name == "checkpoint.py" for f in files)  # the scan really sees the tree
    found = [v for f in files for v in violations(f.read_text(encoding="utf-8"), str(f.relative_to(REPO)))
             if not any(v.startswith(f"{path}:") and v.split(": ", 1)[1].startswith(rule) for path, rule in EXEMPT)]
    assert found == [], "\n".join(found)


class _Payload:
    """Unpickling this calls ``Path.touch`` on ``marker``: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickles_are_refused_without_running_their_code(tmp_path):
    marker = tmp_path / "code_ran"
    weights = tmp_path / "open_clip_pytorch_model.bin"
    weights.write_bytes(pickle.dumps({"visual.proj": torch.zeros(1), "x": _Payload(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match=f"{weights}: cannot read weights"):
        read_weights(weights)
    ckpt = tmp_path / "step_00000001"
    ckpt.mkdir()
    (ckpt / STATE_FILE).write_bytes(pickle.dumps({"step": 1, "rng": _Payload(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match=f"{ckpt / STATE_FILE}: cannot read trainer state"):
        load_trainer_state(ckpt)
    assert not marker.exists()
