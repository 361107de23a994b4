#!/usr/bin/env bash
# LLaVA-1.5 stage 2 with LoRA (LLaVA's scripts/v1_5/finetune_lora.sh) and a CLIPS vision tower:
# LoRA r=128, alpha=256 on every linear layer of the LLM at lr 2e-4; the projector trains fully at
# --mm_projector_lr 2e-5; ZeRO-3. Saves the peft adapter (+ projector) in $OUT and, with
# --merge_lora True, a merged HF LLaVA folder in $OUT/merged.
#
#   TOWER=clips:/ckpt/clips-vit-l-14-336 LLM=/models/vicuna-7b-v1.5 bash scripts/llava/finetune_lora.sh
#
# QLoRA: append `--bits 4 --deepspeed zero2` (bitsandbytes does not run under ZeRO-3).
# Everything else is finetune.sh's recipe; flags given later override earlier ones (argparse).
set -euo pipefail

export OUT=${OUT:-./checkpoints/llava-v1.5-7b-clips-lora}
exec bash "$(dirname "$0")/finetune.sh" \
    --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 \
    --merge_lora True \
    --learning_rate 2e-4 \
    "$@"
