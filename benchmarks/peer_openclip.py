"""The open_clip side of ``python -m benchmarks peer``: one open_clip CLIP or CoCa training step
(forward, loss, backward, grad clip, AdamW, logit-scale clamp: open_clip's ``train_one_epoch`` in
fp32), timed with :func:`pretrain.throughput.time_steps`, printed as one JSON line.

It runs inside open_clip's own virtual environment (see :mod:`benchmarks.peer`), where this
project is not installed, so it imports nothing of the project except ``pretrain/throughput.py``,
loaded by file path (that module imports only torch at the top). torchvision's C++ ops are not
built for this CPU torch; ``nms``, ``qnms`` and ``roi_align`` are registered as placeholders through
``torch.library`` before torchvision is imported (open_clip never calls them).

    <peer-venv>/bin/python benchmarks/peer_openclip.py --model clip --batch 16 --arch '{...}'
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import resource
import sys
from pathlib import Path

import torch

RESULT_PREFIX = "PEER_RESULT "
# The ops torchvision registers from its C++ extension at import; schemas as torchvision declares them.
TORCHVISION_PLACEHOLDERS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",  # fake-registered since 0.2x
    "roi_align": "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
                 "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
}
_LIBRARIES: list = []  # a torch.library.Library must stay alive for its definitions to stay


def register_torchvision_placeholders() -> None:
    """Define ``torchvision::nms`` / ``qnms`` / ``roi_align`` (where missing) with a kernel that
    raises, so torchvision's import-time fake registrations find them."""
    missing = [n for n in TORCHVISION_PLACEHOLDERS if not torch._C._dispatch_has_kernel(f"torchvision::{n}")
               and not _defined(n)]
    if not missing:
        return
    lib = torch.library.Library("torchvision", "DEF")
    for name in missing:
        lib.define(TORCHVISION_PLACEHOLDERS[name])

        def unavailable(*args, _name=name, **kwargs):
            raise RuntimeError(f"torchvision::{_name} is a placeholder in the peer benchmark's environment")

        lib.impl(name, unavailable, "CompositeExplicitAutograd")
    _LIBRARIES.append(lib)


def _defined(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def load_throughput():
    """``pretrain/throughput.py`` of this checkout, loaded by path (the project is not installed here)."""
    path = Path(__file__).resolve().parents[1] / "pretrain" / "throughput.py"
    spec = importlib.util.spec_from_file_location("clips_throughput", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def gelu_kwargs(act: str) -> dict:
    """open_clip's ``act_kwargs`` for one of our activations (``gelu`` exact, ``gelu_tanh``): our
    text towers use the tanh form, whose forward costs ~1.6x the exact one on these CPUs, so a
    peer with open_clip's default (exact) GELU would not be the same model."""
    forms = {"gelu": "none", "gelu_tanh": "tanh"}
    if act not in forms:
        raise ValueError(f"activation {act!r} has no open_clip equivalent here; expected one of {sorted(forms)}")
    return {"approximate": forms[act]}


def set_gelu(module: torch.nn.Module, act: str) -> None:
    """Make every ``nn.GELU`` under ``module`` compute our ``act`` (in place)."""
    approximate = gelu_kwargs(act)["approximate"]
    for m in module.modules():
        if isinstance(m, torch.nn.GELU):
            m.approximate = approximate


def build(kind: str, arch: dict):
    """open_clip model + loss with the shapes of ``arch`` (the project's model config, passed by
    :mod:`benchmarks.peer`): ViT (avg pool, no ln_pre, LN after pool) + bidirectional text pooled
    at the last token (the CLIPS encoder layout); CoCa adds open_clip's multimodal decoder of the
    captioner's width, depth and heads. Every tower uses the activation of ours (exact or tanh GELU)."""
    register_torchvision_placeholders()
    import open_clip
    from open_clip.loss import ClipLoss, CoCaLoss

    v, t, c = arch["vision"], arch["text"], arch["captioner"]
    vision = dict(image_size=v["image_size"], layers=v["layers"], width=v["width"], patch_size=v["patch_size"],
                  head_width=v["width"] // v["heads"], mlp_ratio=v["mlp_ratio"], no_ln_pre=True, pool_type="avg",
                  final_ln_after_pool=True, act_kwargs=gelu_kwargs(v["act"]))
    text = dict(context_length=t["context_length"], vocab_size=t["vocab_size"], width=t["width"], heads=t["heads"],
                layers=t["layers"], mlp_ratio=t["mlp_ratio"], no_causal_mask=True, pool_type="last",
                final_ln_after_pool=True, act_kwargs=gelu_kwargs(t["act"]))
    if kind == "clip":
        return open_clip.CLIP(arch["embed_dim"], vision, text, output_dict=True), ClipLoss()
    decoder = dict(width=c["width"], heads=c["heads"], layers=c["layers"], mlp_ratio=c["mlp_ratio"],
                   context_length=t["context_length"])
    # As open_clip's CoCa configs: a causal text tower with a CLS token appended, an attentional
    # pooler (its queries, embed_dim wide, are what the decoder cross-attends to), both emit tokens.
    text.update(embed_cls=True, pad_id=0, no_causal_mask=False, output_tokens=True)
    vision.update(output_tokens=True, attentional_pool=True, attn_pooler_heads=c["heads"])
    model = open_clip.CoCa(arch["embed_dim"], decoder, text, vision)
    set_gelu(model.text_decoder, c["act"])  # open_clip's decoder config has no act_kwargs
    return model, CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0, pad_id=0)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's groups: no weight decay on gains, biases, embeddings and the logit scale."""
    def exclude(n, p):
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay}]


def main(argv: list[str] | None = None) -> int:
    """Time the steps and print ``PEER_RESULT {json}``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["clip", "coca"], required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--arch", required=True, help="the model config as JSON (vision, text, captioner, embed_dim)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--count-flops", action="store_true")
    p.add_argument("--profile", type=int, default=0, help="torch.profiler table rows of one more step (0: none)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    throughput = load_throughput()
    torch.manual_seed(0)
    arch = json.loads(args.arch)
    model, loss_fn = build(args.model, arch)
    optimizer = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    g = torch.Generator().manual_seed(0)
    b = args.batch
    res, t = arch["vision"]["image_size"], arch["text"]
    images = torch.randn(b, 3, res, res, generator=g)
    texts = torch.randint(1000, t["vocab_size"], (b, t["context_length"]), generator=g)
    model.train()

    def step() -> None:
        out = model(images, texts)
        losses = loss_fn(**out, output_dict=True)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, norm_type=2.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    timed = throughput.time_steps(step, args.steps, args.warmup, args.count_flops, profile_rows=args.profile)
    counted = timed["counted_flops"]
    import open_clip

    row = {"side": f"open_clip {args.model}", "open_clip": open_clip.__version__, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "batch": b, "image_size": res,
           "step_s": timed["step_s"], "step_s_all": timed["step_s_all"],
           "counted_gflops_per_sample": counted / b / 1e9 if counted is not None else None,
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "profile": timed["profile"]}
    print(RESULT_PREFIX + json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
