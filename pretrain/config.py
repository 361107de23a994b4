"""Pretraining configuration: typed dataclasses, loaded strictly from YAML plus command-line overrides.

    cfg = load_config("pretrain/configs/clips-tiny.yaml", ["--train.out_dir", "runs/x", "--lr", "5e-4"])

- Unknown keys and wrong types are errors naming the key and the file (the project's one strict
  loader, :mod:`clips_tower.schema`, shared with the model configs).
- Overrides: ``--a.b value`` or ``--a.b=value`` (a dotted path; list items by index, e.g.
  ``--stages.1.steps 500``), or ``--name value`` for a field name that exists in exactly one
  section (``--lr`` = ``--optim.lr``). Values are YAML (``--stages '[{steps: 10}]'``); dashes in
  names may be written for underscores.
- A reference config can be named instead of a path: ``load_config("clips-vit-l-14")`` reads
  ``pretrain/configs/clips-vit-l-14.yaml``.

Training stages are data: ``stages`` is a list of ``{steps, image_size, lr, ...}``; the run goes
through them in order (CLIPA-style low-resolution pretraining then high-resolution fine-tuning).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

# ConfigError is the project's one config error (re-exported here, its historical home for run configs).
from clips_tower.schema import ConfigError, build_dataclass

from .data.errors import IMAGE_EXTENSIONS

CONFIG_DIR = Path(__file__).parent / "configs"
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class ModelSection:
    """``name``: a registered model (``clips models``) or a model-config JSON path; ``init_from``:
    a checkpoint (own or open_clip) whose weights start the run."""

    name: str = "clips-tiny"
    init_from: str | None = None
    grad_checkpointing: bool = False
    attn_impl: str = "sdpa"
    compile: bool = False


@dataclass
class AugmentSection:
    """Training augmentation (``clips_tower.transforms.TrainTransform`` arguments); ``enabled:
    false`` uses the eval preprocessing (squash resize) instead."""

    enabled: bool = True
    scale: tuple[float, float] = (0.4, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    p_jitter: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    p_gray: float = 0.2


@dataclass
class DataSection:
    """Training data. ``train``: shard spec (see :mod:`pretrain.data.sources`); ``format``: wds,
    parquet or jsonl (None: from the file names); caption fields ``web_key``/``synthetic_key``;
    ``num_samples``: dataset size for epoch logging (None: sizes.json / parquet footers / lines);
    ``max_caption_chars``: samples with a longer caption are skipped as ``caption_too_long`` (None:
    no limit; tokenizing a runaway caption of 100k+ characters would stall its data worker);
    ``memory_cache_mib``: keep local shards, images decoded, in memory after their first read, up
    to this many MiB of pixels per process (0: off; for small datasets read for many epochs, see
    :mod:`pretrain.data.cache`)."""

    train: str = ""
    format: str | None = None
    image_root: str | None = None
    web_key: str = "org_caption"
    synthetic_key: str = "re_caption"
    image_exts: tuple[str, ...] = IMAGE_EXTENSIONS
    image_column: str = "image"
    key_column: str = "key"
    num_samples: int | None = None
    max_caption_chars: int | None = 10000
    resampled: bool = False
    shuffle_buffer: int = 1000
    memory_cache_mib: int = 0
    num_workers: int = 2
    prefetch_factor: int = 2
    augment: AugmentSection = field(default_factory=AugmentSection)


@dataclass
class RecipeSection:
    """Text-source recipe (:mod:`pretrain.recipes`): ``strategy`` and ``tokens`` (K) pick the part
    of the synthetic caption; ``captioner`` overrides the recipe default; ``text_weights``
    overrides the per-text contrastive weights."""

    name: str = "clips"
    strategy: str = "subcaption"
    tokens: int = 32
    web_fraction: float = 0.8
    captioner: bool | None = None
    text_weights: dict[str, float] | None = None


@dataclass
class LossSection:
    """``L = contrastive_weight * sum_t w_t * CON(img, t) + caption_weight * CE``; ``contrastive``
    is ``clip`` (InfoNCE) or ``siglip`` (sigmoid); ``local_loss``: each rank computes the rows of
    its own samples only (same gradients, less memory). ``caption_negatives``: None for the
    captioner's softmax over the whole vocabulary (the paper's loss), or k for a sampled softmax over
    each micro-batch's target tokens plus k uniformly drawn ones (small models, whose 32k-word head
    would dominate the step)."""

    contrastive: str = "clip"
    contrastive_weight: float = 1.0
    caption_weight: float = 2.0
    local_loss: bool = False
    max_logit_scale: float = 100.0
    siglip_bias_init: float = -10.0
    caption_negatives: int | None = None


@dataclass
class OptimSection:
    """AdamW with decoupled weight decay on weight matrices only; ``schedule`` cosine|constant
    after ``warmup_steps`` of linear warm-up, decaying to ``min_lr_ratio * lr``."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.2
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0


@dataclass
class StageSection:
    """One training stage: ``steps`` optimizer steps at ``image_size`` (None: the model's), with
    its own lr schedule (``lr``/``warmup_steps`` default to the optim section's) and optionally a
    different ``micro_batch_size``."""

    steps: int
    image_size: int | None = None
    name: str = ""
    lr: float | None = None
    warmup_steps: int | None = None
    micro_batch_size: int | None = None


@dataclass
class TrainSection:
    """Run settings. ``global_batch_size`` = ``micro_batch_size`` x ranks x accumulation steps
    (``micro_batch_size`` None: no accumulation). ``resume``: ``auto`` (latest checkpoint in
    ``out_dir`` if any), ``none`` or a checkpoint path. ``stop_after_steps`` ends this process
    after that global step (an orderly preemption). ``mfu_peak_tflops``: None measures a matmul
    roofline at start, 0 turns MFU off. ``max_nonfinite_skips``: a step whose loss or gradient is
    NaN/Inf is skipped (no update) this many times over the run; the next one stops the run with
    an error naming the step and the loss term (0: stop at the first)."""

    out_dir: str = "runs/clips"
    seed: int = 0
    global_batch_size: int = 32
    micro_batch_size: int | None = None
    precision: str = "bf16"
    grad_clip: float | None = 1.0
    log_every: int = 10
    save_every: int = 1000
    keep_last: int = 3
    resume: str = "auto"
    stop_after_steps: int | None = None
    progress: bool = True
    tensorboard: bool = True
    torch_threads: int | None = None
    mfu_peak_tflops: float | None = None
    max_nonfinite_skips: int = 5
    device: str | None = None


@dataclass
class DistSection:
    """``strategy``: ``ddp`` (plain on one process), ``fsdp2`` or ``deepspeed`` (ZeRO
    ``zero_stage``, extra JSON in ``deepspeed_config`` merged over the generated one);
    ``backend`` None: nccl on GPU, gloo on CPU. ``timeout_minutes``: how long a collective waits
    for a rank that is gone or stuck before the job fails (instead of hanging)."""

    strategy: str = "ddp"
    backend: str | None = None
    zero_stage: int = 2
    deepspeed_config: str | None = None
    timeout_minutes: float = 30.0


@dataclass
class EvalSection:
    """Periodic zero-shot retrieval on ``dataset`` (Karpathy JSON / JSONL / shards) every
    ``every_steps`` steps (0: only at the end); off when ``dataset`` is None."""

    dataset: str | None = None
    image_root: str | None = None
    format: str | None = None
    split: str = "test"
    every_steps: int = 0
    batch_size: int = 64


@dataclass
class PretrainConfig:
    """A whole pretraining run."""

    stages: list[StageSection]
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    recipe: RecipeSection = field(default_factory=RecipeSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    dist: DistSection = field(default_factory=DistSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for tuples) that :func:`config_from_dict` reads back."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        """The resolved config as YAML (saved beside the checkpoints)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def total_steps(self) -> int:
        """Optimizer steps over all stages."""
        return sum(s.steps for s in self.stages)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _validate(cfg: PretrainConfig, source: str) -> None:
    from .losses import CONTRASTIVE_LOSSES
    from .optim import SCHEDULES
    from .recipes import RECIPES
    from .sampling import STRATEGIES

    choices = {
        "recipe.name": (cfg.recipe.name, RECIPES), "recipe.strategy": (cfg.recipe.strategy, STRATEGIES),
        "loss.contrastive": (cfg.loss.contrastive, CONTRASTIVE_LOSSES), "optim.schedule": (cfg.optim.schedule, SCHEDULES),
        "train.precision": (cfg.train.precision, PRECISIONS),
        "dist.strategy": (cfg.dist.strategy, ("ddp", "fsdp2", "deepspeed")),
        "model.attn_impl": (cfg.model.attn_impl, ("sdpa", "reference")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{source}: {key} must be one of {sorted(allowed)}, got {value!r}")
    if not cfg.stages:
        raise ConfigError(f"{source}: stages must list at least one stage")
    for i, st in enumerate(cfg.stages):
        if st.steps < 1:
            raise ConfigError(f"{source}: stages.{i}.steps must be >= 1, got {st.steps}")
    positive = {"train.global_batch_size": cfg.train.global_batch_size, "train.log_every": cfg.train.log_every,
                "train.save_every": cfg.train.save_every, "train.keep_last": cfg.train.keep_last,
                "recipe.tokens": cfg.recipe.tokens, "data.shuffle_buffer": cfg.data.shuffle_buffer}
    if cfg.data.max_caption_chars is not None:
        positive["data.max_caption_chars"] = cfg.data.max_caption_chars
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{source}: {key} must be >= 1, got {value}")
    if cfg.train.max_nonfinite_skips < 0:
        raise ConfigError(f"{source}: train.max_nonfinite_skips must be >= 0, got {cfg.train.max_nonfinite_skips}")
    if cfg.dist.timeout_minutes <= 0:
        raise ConfigError(f"{source}: dist.timeout_minutes must be > 0, got {cfg.dist.timeout_minutes}")
    if cfg.loss.caption_negatives is not None and cfg.loss.caption_negatives < 1:
        raise ConfigError(f"{source}: loss.caption_negatives must be >= 1 (or null for the full softmax), "
                          f"got {cfg.loss.caption_negatives}")
    if cfg.loss.max_logit_scale <= 0:
        raise ConfigError(f"{source}: loss.max_logit_scale must be > 0")
    if cfg.dist.strategy == "deepspeed" and cfg.train.precision == "fp16":
        # The DeepSpeed engine keeps torch autocast but has no loss scaler: fp16 would underflow.
        raise ConfigError(f"{source}: train.precision fp16 is not supported with dist.strategy deepspeed; use bf16")


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> PretrainConfig:
    """Build and validate a :class:`PretrainConfig` from a dict (``source`` names it in errors)."""
    cfg = build_dataclass(PretrainConfig, data, source, float_strings=True)
    _validate(cfg, source)
    return cfg


def resolve_config_path(path_or_name: str | Path) -> Path:
    """A config file path, or the reference config of that name in ``pretrain/configs``."""
    p = Path(path_or_name)
    if p.is_file():
        return p
    ref = CONFIG_DIR / f"{path_or_name}.yaml"
    if ref.is_file():
        return ref
    names = sorted(f.stem for f in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"config {path_or_name!r} is neither a file nor a reference config ({', '.join(names)})")


def list_reference_configs() -> list[str]:
    """Names of the reference configs shipped in ``pretrain/configs``."""
    return sorted(f.stem for f in CONFIG_DIR.glob("*.yaml"))


def _leaf_index(cls: Any, prefix: str = "") -> dict[str, list[str]]:
    """field name -> dotted paths of that field in every section (lists not entered)."""
    out: dict[str, list[str]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            for k, v in _leaf_index(hints[f.name], path + ".").items():
                out.setdefault(k, []).extend(v)
        elif prefix:
            out.setdefault(f.name, []).append(path)
    return out


def override_keys() -> dict[str, str]:
    """Every key an override may name -> its dotted path: ``section.field`` for each field of
    each section, ``field`` alone where unique, and ``stages`` (a YAML list)."""
    keys = {"stages": "stages"}
    sections = {f.name for f in dataclasses.fields(PretrainConfig)}
    for name, paths in _leaf_index(PretrainConfig).items():
        for p in paths:
            keys[p] = p
        if len(paths) == 1 and name not in sections:
            keys.setdefault(name, paths[0])
    return keys


def parse_overrides(argv: Sequence[str]) -> list[tuple[str, Any]]:
    """``["--a.b", "1", "--c=x"]`` -> ``[("a.b", 1), ("c", "x")]`` (values parsed as YAML)."""
    out, i = [], 0
    argv = list(argv)
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--") or len(tok) == 2:
            raise ConfigError(f"override {tok!r}: expected --key value or --key=value")
        if "=" in tok:
            key, raw = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"override {tok!r} has no value")
            key, raw = tok[2:], argv[i + 1]
            i += 2
        out.append((key.replace("-", "_"), yaml.safe_load(raw) if raw != "" else ""))
    return out


def apply_overrides(data: dict[str, Any], overrides: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """Set each ``(dotted key, value)`` in the raw config dict (a bare unique field name is expanded)."""
    leaves = _leaf_index(PretrainConfig)
    sections = {f.name for f in dataclasses.fields(PretrainConfig)}
    for key, value in overrides:
        if "." not in key and key not in sections:
            paths = leaves.get(key, [])
            if len(paths) != 1:
                raise ConfigError(f"override --{key}: " + (f"ambiguous, write one of {paths}" if paths else
                                                           "no such setting; use a dotted path like --train.seed"))
            key = paths[0]
        node: Any = data
        parts = key.split(".")
        for j, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override --{key}: {'.'.join(parts[:j + 1])} is not an index of a {len(node)}-item list")
                node = node[int(part)]
            else:
                if node.get(part) is None:  # absent or null: an empty mapping to fill
                    node[part] = {}
                node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override --{key}: {last!r} is not an index of a {len(node)}-item list")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def load_config(path_or_name: str | Path, overrides: Sequence[str] = ()) -> PretrainConfig:
    """Read a YAML (or JSON) config file or reference config name, apply ``--key value`` overrides."""
    path = resolve_config_path(path_or_name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    apply_overrides(data, parse_overrides(overrides))
    return config_from_dict(data, str(path))
