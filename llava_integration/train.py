"""LLaVA projector pretraining and instruction tuning on HF's native ``LlavaForConditionalGeneration``
with the HF Trainer and LLaVA's flag names.

One function runs any :class:`~llava_integration.stages.Stage`::

    run_stage("pretrain", ["--model_name_or_path", LLM, "--vision_tower", "clips:...", ...])

Flow: check flags -> assemble ``--vision_tower`` + ``--model_name_or_path`` into
``<output_dir>/base`` (or take an assembled LLaVA folder) -> check every sample with its processor
-> load the model (optional 4/8-bit LLM) -> load the stage-1 projector
(``--pretrain_mm_mlp_adapter``) -> choose what trains (stage, ``--tune_mm_mlp_adapter``, LoRA) ->
(stage 1) build/open the tower feature cache -> train ->
save what the stage saves (projector safetensors, HF LLaVA folder, or LoRA adapter [+ merged]).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from clips_tower.checkpoint import read_weights
from clips_tower.io import atomic_dir, atomic_save_safetensors, atomic_write_json

from .assemble import ASSEMBLY_FILE, assemble_llava
from .conversation import get_template
from .data import (CheckedData, CheckReport, DataCheckError, LlavaCollator, LlavaDataset, ModalityLengthGroupedSampler,
                   TokenSpec, check_samples, image_paths, load_records, sample_id)
from .feature_cache import CachedFeatureLlava, FeatureCache, build_feature_cache, cache_key
from .stages import MODULE_PATHS, Stage, get_stage
from .train_args import (SELECT_STRATEGIES, DataArguments, LlavaTrainingArguments, ModelArguments, SetupError,
                         lora_modules, parse_args, trainable_modules, validate_args)

log = logging.getLogger(__name__)

PROJECTOR_FILE = "mm_projector.safetensors"
PROJECTOR_CONFIG = "projector_config.json"
BASE_DIR, MERGED_DIR = "base", "merged"
DATA_CHECK_FILE, ARGS_FILE, TRAINING_INFO = "data_check.json", "llava_args.json", "clips_training.json"
# Projector key names in LLaVA's mm_projector.bin (nn.Sequential indices) -> HF's.
_LLAVA_PROJECTOR_LAYERS = {"0": "linear_1", "2": "linear_2"}
# Kept unquantised with --bits 4/8: the tower and projector (as LLaVA) and the output head.
QUANT_SKIP_MODULES = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]


# ----------------------------------------------------------------------------- model

def _is_llava_folder(path: Path) -> bool:
    cfg = path / "config.json"
    return cfg.is_file() and json.loads(cfg.read_text()).get("model_type") == "llava"


@contextlib.contextmanager
def plain_loading(t: TrainingArguments) -> Iterator[None]:
    """Inside the block ``from_pretrained`` builds whole models even in a ZeRO-3 run (whose
    Trainer config otherwise makes it partition every model it loads): for assembling and merging,
    which read and write complete weights on one process."""
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if t.deepspeed:
            set_hf_deepspeed_config(t.hf_deepspeed_config)


def prepare_base(m: ModelArguments, t: TrainingArguments) -> Path:
    """The HF LLaVA folder to train from: ``--model_name_or_path`` itself if it is one, else the
    assembly of ``--vision_tower`` + ``--model_name_or_path`` in ``<output_dir>/base`` (built by
    the main process; an existing one is reused only if it was built from the same parts)."""
    src = Path(m.model_name_or_path)
    src = src.resolve() if src.exists() else src  # absolute: a LoRA adapter records its base path
    if _is_llava_folder(src):
        if m.vision_tower:
            raise SetupError(f"{src} is an assembled LLaVA model with its own tower; drop --vision_tower")
        return src
    if not m.vision_tower:
        raise SetupError("--vision_tower is required when --model_name_or_path is a language model")
    base = Path(t.output_dir).resolve() / BASE_DIR
    wanted = {"tower": m.vision_tower, "llm": str(src), "projector": m.mm_projector_type,
              "vision_feature_layer": m.mm_vision_select_layer}
    with t.main_process_first(desc="assembling the LLaVA model"):
        if t.local_process_index == 0:
            recorded = json.loads((base / ASSEMBLY_FILE).read_text()) if (base / ASSEMBLY_FILE).is_file() else None
            if recorded is None or any(recorded.get(k) != v for k, v in wanted.items()):
                with plain_loading(t):
                    assemble_llava(m.vision_tower, src, base, projector=m.mm_projector_type,
                                   vision_feature_layer=m.mm_vision_select_layer,
                                   vision_feature_select_strategy=SELECT_STRATEGIES[m.mm_vision_select_feature])
        elif not _is_llava_folder(base):
            raise RuntimeError(f"the main process did not assemble {base}")
    return base


def compute_dtype(t: TrainingArguments) -> torch.dtype:
    """bf16 / fp16 / fp32 from ``--bf16`` / ``--fp16``."""
    return torch.bfloat16 if t.bf16 else torch.float16 if t.fp16 else torch.float32


def load_llava(base: Path, m: ModelArguments, t: LlavaTrainingArguments) -> nn.Module:
    """Load ``LlavaForConditionalGeneration`` from ``base``.

    Weights load in the compute dtype under DeepSpeed or quantisation (DeepSpeed keeps fp32
    master weights itself), else in fp32 with the Trainer's autocast doing mixed precision. With
    ``--bits 4|8`` the LLM is quantised by bitsandbytes; tower, projector and head are not.
    """
    from transformers import BitsAndBytesConfig, LlavaForConditionalGeneration

    dtype = compute_dtype(t)
    kwargs: dict[str, Any] = {"dtype": dtype if (t.deepspeed or t.bits < 16) else torch.float32}
    if m.attn_implementation:
        kwargs["attn_implementation"] = m.attn_implementation
    if t.bits < 16:
        kwargs["device_map"] = {"": t.device}
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=t.bits == 4, load_in_8bit=t.bits == 8, llm_int8_skip_modules=QUANT_SKIP_MODULES,
            bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=t.double_quant, bnb_4bit_quant_type=t.quant_type)
    return LlavaForConditionalGeneration.from_pretrained(base, **kwargs)


def _projector_state(sd: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    """Projector weights keyed as in HF's ``LlavaMultiModalProjector`` (``linear_1.weight`` ...).

    Accepts this project's files (already so), full HF LLaVA keys (``...multi_modal_projector.``)
    and LLaVA's ``mm_projector.bin`` (``model.mm_projector.0.weight`` ...)."""
    out = {}
    for key, value in sd.items():
        for marker in ("multi_modal_projector.", "mm_projector."):
            key = key.split(marker, 1)[1] if marker in key else key
        layer, _, rest = key.partition(".")
        out[f"{_LLAVA_PROJECTOR_LAYERS.get(layer, layer)}.{rest}"] = value
    if len(out) != len(sd):
        raise SetupError(f"{path}: projector keys collide after renaming: {sorted(sd)}")
    return out


def load_projector(model: nn.Module, path: str | Path) -> None:
    """Load a stage-1 projector into ``model.model.multi_modal_projector`` (strict: every key and
    shape must match; the error names the file and key). A ``projector_config.json`` beside the
    file is compared with the model: a different feature layer/strategy is an error, a different
    tower spec a warning."""
    from .towers import full_parameters

    path = Path(path)
    projector = model.model.multi_modal_projector
    sd = _projector_state(read_weights(path), str(path))
    with full_parameters(projector):
        own = projector.state_dict()
        missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        if missing or unexpected:
            raise SetupError(f"{path}: projector keys do not match (missing {missing}, unexpected {unexpected})")
        for k, v in sd.items():
            if v.shape != own[k].shape:
                raise SetupError(f"{path}: {k} has shape {tuple(v.shape)}, the model's projector {tuple(own[k].shape)} "
                                 f"(different tower or LLM?)")
        with torch.no_grad():
            for k, v in sd.items():
                own[k].copy_(v)
    info_path = path.parent / PROJECTOR_CONFIG
    if info_path.is_file():
        info, cfg = json.loads(info_path.read_text()), model.config
        for k in ("vision_feature_layer", "vision_feature_select_strategy"):
            if info.get(k) != getattr(cfg, k):
                raise SetupError(f"{path} was trained with {k}={info.get(k)!r}, this model uses {getattr(cfg, k)!r}")
        tower = _assembly(Path(model.name_or_path)).get("tower")
        if tower and info.get("vision_tower") and tower != info["vision_tower"]:
            log.warning("%s was trained on tower %s, this model has %s", path, info["vision_tower"], tower)
    log.info("loaded projector %s", path)


def _assembly(folder: Path) -> dict:
    f = folder / ASSEMBLY_FILE
    return json.loads(f.read_text()) if f.is_file() else {}


def set_trainable(model: nn.Module, modules: Sequence[str]) -> None:
    """Freeze everything, then unfreeze the parameters of the given module keys."""
    model.requires_grad_(False)
    for key in modules:
        for path in MODULE_PATHS[key]:
            model.get_submodule(path).requires_grad_(True)


def add_lora(model: nn.Module, t: LlavaTrainingArguments, modules: Sequence[str],
             lora: Sequence[str] = ("language_model",)) -> nn.Module:
    """Wrap ``model`` with peft LoRA on every linear layer of the ``lora`` modules (default: the
    language model; ``lm_head`` is never adapted); the other trainable ``modules`` (the projector,
    a fully trained tower) train fully as ``modules_to_save`` (saved in the adapter). A module in
    neither stays frozen: LoRA never lands on a part that was not asked for.
    With ``--bits 4|8`` the quantised model is first prepared for k-bit training."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if t.bits < 16:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=t.gradient_checkpointing)
    prefixes = tuple(MODULE_PATHS[k][0] + "." for k in lora)
    targets = [n for n, mod in model.named_modules() if n.startswith(prefixes) and isinstance(mod, nn.Linear)]
    full = [p for k in modules if k not in lora for p in MODULE_PATHS[k]]
    config = LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout, bias=t.lora_bias,
                        target_modules=targets, modules_to_save=full or None)
    return get_peft_model(model, config)


# ----------------------------------------------------------------------------- trainer

class LlavaTrainer(Trainer):
    """HF Trainer with LLaVA's two additions: per-module learning rates (``lr_overrides``:
    module path -> lr, e.g. the projector at ``--mm_projector_lr``) and the modality-length
    grouping sampler (``modality_lengths``: signed sample lengths, or None)."""

    def __init__(self, *args: Any, lr_overrides: dict[str, float], modality_lengths: list[int] | None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lr_overrides, self.modality_lengths = lr_overrides, modality_lengths

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        if self.modality_lengths is None:
            return super()._get_train_sampler(train_dataset)
        a = self.args
        # One global batch = per-device batch x devices x accumulation steps, as LLaVA groups.
        return ModalityLengthGroupedSampler(self.modality_lengths, a.train_batch_size,
                                            a.world_size * a.gradient_accumulation_steps, a.seed)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            lr = next((lr for path, lr in self.lr_overrides.items() if path in name), self.args.learning_rate)
            wd = self.args.weight_decay if name in decay else 0.0
            groups.setdefault((lr, wd), []).append(p)
        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls([{"params": ps, "lr": lr, "weight_decay": wd}
                                        for (lr, wd), ps in groups.items()], **kwargs)
        return self.optimizer


def lr_overrides(stage: Stage, t: LlavaTrainingArguments) -> dict[str, float]:
    """Module path -> learning rate for the stage's modules whose lr flag is set."""
    return {path: getattr(t, flag) for key, flag in stage.lr_flags.items() if getattr(t, flag) is not None
            for path in MODULE_PATHS[key]}


# ----------------------------------------------------------------------------- data

def _on_main_then_shared(t: TrainingArguments, path: Path, compute: Callable[[], dict]) -> dict:
    """Run ``compute`` on the main process, write its JSON result (or its DataCheckError) to
    ``path``; the other processes read it. Every process raises the same error."""
    with t.main_process_first(local=False, desc=path.name):
        if t.process_index == 0:
            path.unlink(missing_ok=True)
            try:
                result = compute()
            except DataCheckError as e:
                result = {"error": str(e)}
            atomic_write_json(path, result)
        elif not path.is_file():
            raise RuntimeError(f"the main process failed before writing {path}")
        else:
            result = json.loads(path.read_text())
    if "error" in result:
        raise DataCheckError(result["error"])
    return result


def check_data(records: list, d: DataArguments, template: Any, spec: TokenSpec,
               t: LlavaTrainingArguments) -> CheckedData:
    """Run the up-front data check once (main process) and share the kept samples; the full
    report is written to ``<output_dir>/data_check.json``."""
    def compute() -> dict:
        checked = check_samples(records, d.image_folder, template, spec, t.model_max_length, d.on_bad_sample)
        log.info("%s", checked.report.summary())
        return {**checked.report.to_dict(), "indices": checked.indices, "lengths": checked.lengths}

    result = _on_main_then_shared(t, Path(t.output_dir) / DATA_CHECK_FILE, compute)
    report = CheckReport(total=result["total"], kept=result["kept"])
    idx = result["indices"]
    return CheckedData([records[i] for i in idx], idx, [sample_id(records[i], i) for i in idx], result["lengths"], report)


def open_feature_cache(model: nn.Module, data: CheckedData, d: DataArguments, image_processor: Any,
                       t: TrainingArguments) -> FeatureCache:
    """Build the tower feature cache on the main process (resuming a partial one); the others
    open it once it is complete and check it belongs to this tower and preprocessing."""
    images = [p for r in data.records for p in image_paths(r)]
    with t.main_process_first(desc="building the feature cache"):
        if t.local_process_index == 0:
            return build_feature_cache(model, images, d.image_folder, image_processor, d.feature_cache,
                                       d.image_aspect_ratio, d.feature_cache_dtype,
                                       batch_size=t.per_device_train_batch_size,
                                       num_workers=t.dataloader_num_workers)
        cache = FeatureCache(d.feature_cache)
        cache.check_key(cache_key(model, image_processor, d.image_aspect_ratio))
        return cache


# ----------------------------------------------------------------------------- saving

def save_projector(trainer: Trainer, llava: nn.Module, out: Path, info: dict) -> None:
    """``mm_projector.safetensors`` (HF ``linear_1/linear_2`` keys) + ``projector_config.json``."""
    from .towers import full_parameters

    projector = llava.model.multi_modal_projector
    with full_parameters(projector):  # collective under ZeRO-3: every rank enters
        sd = {k: v.detach().to("cpu", copy=True) for k, v in projector.state_dict().items()}
    if trainer.is_world_process_zero():
        atomic_save_safetensors(sd, out / PROJECTOR_FILE, metadata={"format": "pt"})
        atomic_write_json(out / PROJECTOR_CONFIG, info)


def save_llava(trainer: Trainer, llava: nn.Module, out: Path, info: dict) -> None:
    """The trained model: an HF LLaVA folder (full training) or a peft LoRA adapter (with
    ``--lora_enable``; plus ``<out>/merged``, an HF LLaVA folder, with ``--merge_lora``).
    The processor is saved alongside by the Trainer; ``clips_training.json`` records the tower,
    LLM and conversation template (the prompt format to use at inference)."""
    trainer.save_model(str(out))
    args = trainer.args
    if not trainer.is_world_process_zero():
        return
    atomic_write_json(out / TRAINING_INFO, info)
    if args.lora_enable and args.merge_lora:
        with plain_loading(args):
            merge_lora(out, out / MERGED_DIR, dtype=compute_dtype(args))
        atomic_write_json(out / MERGED_DIR / TRAINING_INFO, info)


SAVERS: dict[str, Callable[[Trainer, nn.Module, Path, dict], None]] = {
    "projector": save_projector,
    "llava": save_llava,
}


def merge_lora(adapter_dir: str | Path, out_dir: str | Path, base: str | Path | None = None,
               dtype: torch.dtype = torch.float32) -> Path:
    """Merge a LoRA adapter (saved by stage 2) into its base LLaVA model and save an HF LLaVA
    folder with the processor; returns ``out_dir``. ``base``: default the adapter's recorded base.

    The base is loaded unquantised, so a QLoRA adapter merges into the full-precision weights."""
    from peft import PeftModel
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    adapter_dir = Path(adapter_dir)
    base = base or json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = LlavaForConditionalGeneration.from_pretrained(base, dtype=dtype)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    processor = AutoProcessor.from_pretrained(adapter_dir)
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    log.info("merged LoRA %s into %s -> %s", adapter_dir, base, out_dir)
    return Path(out_dir)


# ----------------------------------------------------------------------------- the stage

def train(stage: Stage | str, m: ModelArguments, d: DataArguments, t: LlavaTrainingArguments,
          callbacks: Sequence[Any] = ()) -> Path:
    """Run ``stage`` with parsed arguments; returns ``--output_dir``. ``callbacks``: extra HF
    ``TrainerCallback``s.

    Writes there: ``llava_args.json`` (resolved flags), ``data_check.json`` (the data report),
    ``trainer_state.json``/``train_results.json`` (loss log, steps/s), and the stage's artefact.
    """
    from transformers import AutoProcessor, set_seed

    stage = get_stage(stage) if isinstance(stage, str) else stage
    validate_args(stage, m, d, t)
    out = Path(t.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if t.process_index == 0:
        atomic_write_json(out / ARGS_FILE, {"stage": stage.name, "model": dataclasses.asdict(m),
                                            "data": dataclasses.asdict(d), "training": t.to_dict()})
    if t.deepspeed:
        import deepspeed

        # On CPU, accelerate starts torch.distributed without DeepSpeed's comm layer, and
        # ZeRO-3's partitioned loading would then see one process; no-op where it is up already.
        deepspeed.init_distributed()
    set_seed(t.seed)
    template = get_template(m.version or stage.template)
    modules = trainable_modules(stage, m)

    base = prepare_base(m, t)
    processor = AutoProcessor.from_pretrained(base)
    spec = TokenSpec.from_processor(processor)
    data = check_data(load_records(d.data_path), d, template, spec, t)  # before any weights load

    llava = load_llava(base, m, t)
    if spec.image_seq_len != llava.config.image_seq_length:
        raise SetupError(f"{base}: the processor makes {spec.image_seq_len} image tokens per image, the model "
                         f"config says {llava.config.image_seq_length}")
    if m.pretrain_mm_mlp_adapter:
        load_projector(llava, m.pretrain_mm_mlp_adapter)
    lora = lora_modules(t)
    set_trainable(llava, [k for k in modules if k not in lora])
    if t.gradient_checkpointing:
        # Frozen embeddings + checkpointing still need input grads. transformers hooks the input
        # embeddings of every sub-model, the tower's patch embedding included, and the Trainer's
        # gradient_checkpointing_enable() reaches the tower's blocks too, so a training tower is
        # checkpointed like the LLM (tests/test_llava_tower_training.py checks both).
        llava.enable_input_require_grads()
    model = add_lora(llava, t, modules, lora) if t.lora_enable else llava
    cache = open_feature_cache(llava, data, d, processor.image_processor, t) if d.feature_cache else None
    if cache is not None:
        model = CachedFeatureLlava(llava)
    dataset = LlavaDataset(data, template, spec, processor.image_processor, d.image_folder,
                           d.image_aspect_ratio, feature_cache=cache)
    n_trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    log.info("stage %s: %d samples, training %s (%d parameters%s)", stage.name, len(dataset), ", ".join(modules),
             n_trainable, ", LoRA" if t.lora_enable else "")

    pad_id = spec.tokenizer.pad_token_id if spec.tokenizer.pad_token_id is not None else spec.tokenizer.eos_token_id
    trainer = LlavaTrainer(model=model, args=t, train_dataset=dataset, data_collator=LlavaCollator(pad_id),
                           processing_class=processor, lr_overrides=lr_overrides(stage, t),
                           modality_lengths=dataset.modality_lengths if t.group_by_modality_length else None,
                           callbacks=list(callbacks) or None)
    resume = any(out.glob("checkpoint-*"))
    metrics = trainer.train(resume_from_checkpoint=True if resume else None).metrics
    trainer.save_metrics("train", metrics)
    trainer.save_state()

    info = {"stage": stage.name, "vision_tower": _assembly(base).get("tower"), "language_model": m.model_name_or_path,
            "projector_type": m.mm_projector_type, "vision_feature_layer": llava.config.vision_feature_layer,
            "vision_feature_select_strategy": llava.config.vision_feature_select_strategy,
            "template": template.name, "trained": list(modules), "lora": list(lora)}
    SAVERS[stage.save](trainer, llava, out, info)
    if base == out.resolve() / BASE_DIR and not t.lora_enable and trainer.is_world_process_zero():
        shutil.rmtree(base)  # the trained artefact holds everything; a LoRA adapter still needs its base
    return out


def run_stage(stage: Stage | str, argv: Sequence[str], callbacks: Sequence[Any] = ()) -> Path:
    """Parse ``argv`` (LLaVA-style flags) and run ``stage``; returns the output folder."""
    stage = get_stage(stage) if isinstance(stage, str) else stage
    return train(stage, *parse_args(stage, argv), callbacks=callbacks)
