"""Command-line arguments of the LLaVA training stages: LLaVA's flag names as dataclasses for
``transformers.HfArgumentParser``, the stage recipes as defaults, and the checks that reject flag
combinations before anything loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from transformers import HfArgumentParser, TrainingArguments

from .conversation import get_template
from .data import ASPECT_MODES, POLICIES
from .feature_cache import DTYPES
from .stages import TUNABLE_PARTS, Stage, get_stage

# LLaVA's --mm_vision_select_feature -> HF's vision_feature_select_strategy.
SELECT_STRATEGIES = {"patch": "default", "cls_patch": "full"}


class SetupError(ValueError):
    """Flags, model parts or a projector file that cannot make a valid run; the message says why."""


@dataclass
class ModelArguments:
    """Model flags (LLaVA's ``ModelArguments`` names)."""

    model_name_or_path: str = field(metadata={"help": "HF causal-LM folder (assembled with --vision_tower), or an "
                                                      "assembled HF LLaVA folder"})
    vision_tower: str | None = field(default=None, metadata={"help": "tower spec: clips:<checkpoint|named model> or "
                                                                     "an HF CLIP/SigLIP vision folder"})
    version: str | None = field(default=None, metadata={"help": "conversation template (plain, v1, vicuna_v1, "
                                                                "llava_v1, chat_template); default: the stage's"})
    mm_vision_select_layer: int = field(default=-2, metadata={"help": "tower hidden state fed to the projector"})
    mm_vision_select_feature: str = field(default="patch", metadata={"help": "patch (drop CLS) | cls_patch",
                                                                     "choices": sorted(SELECT_STRATEGIES)})
    mm_projector_type: str = field(default="mlp2x_gelu", metadata={"help": "projector (HF LLaVA: mlp2x_gelu)"})
    pretrain_mm_mlp_adapter: str | None = field(default=None, metadata={
        "help": "stage-1 projector (mm_projector.safetensors, or LLaVA's mm_projector.bin)"})
    tune_mm_mlp_adapter: bool = field(default=False, metadata={"help": "train the projector only"})
    mm_tunable_parts: str | None = field(default=None, metadata={
        "help": "LLaVA-NeXT: comma list of the parts that train, of mm_vision_tower, mm_mlp_adapter, "
                "mm_language_model (default: the stage's; stage 1 trains only mm_mlp_adapter)"})
    attn_implementation: str | None = field(default=None, metadata={"help": "eager | sdpa | flash_attention_2"})
    mm_use_im_start_end: bool = field(default=False, metadata={"help": "LLaVA compatibility; must be False"})
    mm_use_im_patch_token: bool = field(default=False, metadata={"help": "LLaVA compatibility; must be False"})


@dataclass
class DataArguments:
    """Data flags (LLaVA's ``DataArguments`` names plus the data-check and feature-cache flags)."""

    data_path: str = field(metadata={"help": "LLaVA-format JSON (or JSONL) file"})
    image_folder: str | None = field(default=None, metadata={"help": "root of the 'image' paths"})
    image_aspect_ratio: str = field(default="square", metadata={"help": "pad (to square, mean colour) | square",
                                                                "choices": sorted(ASPECT_MODES)})
    on_bad_sample: str = field(default="error", metadata={"help": "what the up-front data check does with bad "
                                                                  "samples", "choices": list(POLICIES)})
    feature_cache: str | None = field(default=None, metadata={"help": "stage 1: folder of precomputed tower "
                                                                      "features (built if missing)"})
    feature_cache_dtype: str = field(default="float16", metadata={"help": "storage dtype of the feature cache",
                                                                  "choices": sorted(DTYPES)})
    lazy_preprocess: bool = field(default=True, metadata={"help": "LLaVA compatibility; data is always lazy"})


@dataclass
class LlavaTrainingArguments(TrainingArguments):
    """HF ``TrainingArguments`` plus LLaVA's training flags."""

    model_max_length: int = field(default=2048, metadata={"help": "longer samples are reported by the data check"})
    bits: int = field(default=16, metadata={"help": "16, or 4/8 to quantise the LLM (QLoRA; needs --lora_enable)",
                                            "choices": [4, 8, 16]})
    double_quant: bool = field(default=True, metadata={"help": "bitsandbytes double quantisation (4-bit)"})
    quant_type: str = field(default="nf4", metadata={"help": "bitsandbytes 4-bit type", "choices": ["nf4", "fp4"]})
    lora_enable: bool = field(default=False, metadata={"help": "train the LLM through LoRA adapters"})
    lora_r: int = field(default=64)
    lora_alpha: int = field(default=16)
    lora_dropout: float = field(default=0.05)
    lora_bias: str = field(default="none", metadata={"choices": ["none", "all", "lora_only"]})
    lora_target: str = field(default="mm_language_model", metadata={
        "help": "comma list of trainable parts that get LoRA adapters (mm_language_model, mm_vision_tower); "
                "other trainable parts train fully"})
    merge_lora: bool = field(default=False, metadata={"help": "also save the LoRA-merged HF LLaVA folder "
                                                              "(<output_dir>/merged)"})
    mm_projector_lr: float | None = field(default=None, metadata={"help": "projector learning rate "
                                                                          "(default --learning_rate)"})
    mm_vision_tower_lr: float | None = field(default=None, metadata={"help": "vision tower learning rate when it "
                                                                             "trains (default --learning_rate)"})
    group_by_modality_length: bool = field(default=False, metadata={"help": "batches of one modality and "
                                                                            "similar length"})
    warmup_ratio: float | None = field(default=None, metadata={"help": "LLaVA's name: warm-up as a fraction of the "
                                                                       "steps (sets --warmup_steps)"})
    remove_unused_columns: bool = field(default=False)

    def __post_init__(self) -> None:
        if isinstance(self.deepspeed, str):
            self.deepspeed = str(deepspeed_config(self.deepspeed))
        # transformers 5 folded warmup_ratio into warmup_steps (a float < 1 is a ratio).
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise SetupError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            self.warmup_steps = self.warmup_ratio
        super().__post_init__()


DEEPSPEED_DIR = Path(__file__).parent / "deepspeed"


def deepspeed_config(name_or_path: str) -> Path:
    """A DeepSpeed config file: an existing path, or a shipped one by name (``zero2``, ``zero3``,
    ``zero3_offload``, with or without ``.json``)."""
    if Path(name_or_path).is_file():
        return Path(name_or_path)
    shipped = DEEPSPEED_DIR / (name_or_path if name_or_path.endswith(".json") else name_or_path + ".json")
    if not shipped.is_file():
        names = sorted(p.stem for p in DEEPSPEED_DIR.glob("*.json"))
        raise FileNotFoundError(f"--deepspeed {name_or_path}: no such file and not a shipped config ({names})")
    return shipped

def parse_args(stage: Stage | str, argv: Sequence[str]) -> tuple[ModelArguments, DataArguments, LlavaTrainingArguments]:
    """Parse LLaVA-style flags for ``stage``; the stage's recipe supplies defaults the flags override."""
    stage = get_stage(stage) if isinstance(stage, str) else stage
    parser = HfArgumentParser((ModelArguments, DataArguments, LlavaTrainingArguments),
                              prog=f"clips llava {stage.name}", description=stage.help)
    return parser.parse_args_into_dataclasses(args=stage.recipe_argv() + list(argv), look_for_args_file=False)


def parse_parts(value: str, flag: str) -> tuple[str, ...]:
    """Module keys of a comma list of LLaVA-NeXT part names (``mm_vision_tower,mm_mlp_adapter``)."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in TUNABLE_PARTS]
    if unknown or not names:
        raise SetupError(f"--{flag} {value!r}: unknown part(s) {unknown}; choose from {list(TUNABLE_PARTS)}")
    return tuple(dict.fromkeys(TUNABLE_PARTS[n] for n in names))


def trainable_modules(stage: Stage, model_args: ModelArguments) -> tuple[str, ...]:
    """Module keys that learn: ``--mm_tunable_parts``, else only the projector with
    ``--tune_mm_mlp_adapter``, else the stage's."""
    if model_args.mm_tunable_parts is not None:
        return parse_parts(model_args.mm_tunable_parts, "mm_tunable_parts")
    return ("projector",) if model_args.tune_mm_mlp_adapter else stage.trainable


def lora_modules(t: LlavaTrainingArguments) -> tuple[str, ...]:
    """Module keys that train through LoRA adapters (none without ``--lora_enable``)."""
    return parse_parts(t.lora_target, "lora_target") if t.lora_enable else ()


def _ds_config(t: TrainingArguments) -> dict:
    if not t.deepspeed:
        return {}
    return t.hf_deepspeed_config.config


def validate_args(stage: Stage, m: ModelArguments, d: DataArguments, t: LlavaTrainingArguments) -> None:
    """Reject flag combinations that cannot work, before anything is loaded."""
    get_template(m.version or stage.template)
    trainable, lora = trainable_modules(stage, m), lora_modules(t)
    part_name = {key: part for part, key in TUNABLE_PARTS.items()}
    problems = []
    if m.mm_tunable_parts is not None and m.tune_mm_mlp_adapter:
        problems.append("--tune_mm_mlp_adapter and --mm_tunable_parts both choose what trains; pass one")
    beyond = [part_name[k] for k in trainable if k not in stage.tunable]
    if beyond:
        problems.append(f"stage {stage.name!r} saves only {', '.join(part_name[k] for k in stage.tunable)}: it cannot "
                        f"train {', '.join(beyond)} (--mm_tunable_parts)")
    if "projector" in lora:
        problems.append("--lora_target mm_mlp_adapter: the projector always trains fully; LoRA targets "
                        "mm_language_model and/or mm_vision_tower")
    frozen_lora = [part_name[k] for k in lora if k not in trainable and k != "projector"]
    if frozen_lora:
        problems.append(f"--lora_enable adapts {', '.join(frozen_lora)} (--lora_target {t.lora_target}), which stage "
                        f"{stage.name!r} keeps frozen here (--mm_tunable_parts)")
    if t.mm_vision_tower_lr is not None and "vision_tower" not in trainable:
        problems.append("--mm_vision_tower_lr is set but the vision tower is frozen: add mm_vision_tower to "
                        "--mm_tunable_parts")
    if m.mm_use_im_start_end or m.mm_use_im_patch_token:
        problems.append("--mm_use_im_start_end/--mm_use_im_patch_token are not part of HF LLaVA-1.5; set them False")
    if m.mm_vision_select_feature not in SELECT_STRATEGIES:
        problems.append(f"--mm_vision_select_feature must be one of {sorted(SELECT_STRATEGIES)}")
    if d.on_bad_sample not in POLICIES:
        problems.append(f"--on_bad_sample must be one of {POLICIES}")
    if t.bits not in (4, 8, 16):
        problems.append(f"--bits must be 4, 8 or 16, got {t.bits}")
    if t.bits < 16 and not t.lora_enable:
        problems.append(f"--bits {t.bits} quantises the LLM, which then trains only through LoRA: add --lora_enable True")
    if t.merge_lora and not t.lora_enable:
        problems.append("--merge_lora needs --lora_enable")
    if d.feature_cache and not stage.feature_cache:
        problems.append(f"--feature_cache is for projector pretraining; stage {stage.name!r} does not support it")
    if d.feature_cache and "vision_tower" in trainable:
        problems.append("--feature_cache stores the frozen tower's features once; it cannot be used while the vision "
                        "tower trains (mm_vision_tower in --mm_tunable_parts)")
    ds = _ds_config(t)
    if "optimizer" in ds and any(getattr(t, flag) is not None for flag in stage.lr_flags.values()):
        problems.append(f"the DeepSpeed config {t.deepspeed} builds DeepSpeed's own optimizer (one learning rate for "
                        f"all); drop {', '.join('--' + f for f in stage.lr_flags.values())} or use a config "
                        f"without an 'optimizer' section (zero2.json / zero3.json)")
    if t.bits < 16 and ds.get("zero_optimization", {}).get("stage") == 3:
        problems.append("--bits 4/8 (bitsandbytes) does not work with ZeRO-3; use zero2.json")
    if problems:
        raise SetupError("invalid flags:\n  " + "\n  ".join(problems))
