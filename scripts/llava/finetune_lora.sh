#!/usr/bin/env bash
# LLaVA-1.5 stage 2 with LoRA (LLaVA's scripts/v1_5/finetune_lora.sh) and a CLIPS vision tower:
# LoRA r=128, alpha=256 on every linear layer of the LLM at lr 2e-4; the projector trains fully at
# --mm_projector_lr 2e-5; ZeRO-3. Saves the peft adapter (+ projector) in $OUT and, with
# --merge_lora True, a merged HF LLaVA folder in $OUT/merged.
#
#   TOWER=clips:/ckpt/clips-vit-l-14-336 LLM=/models/vicuna-7b-v1.5 bash scripts/llava/finetune_lora.sh
#
# QLoRA: append `--bits 4 --deepspeed zero2` (bitsandbytes does not run under ZeRO-3).
set -euo pipefail

LLM=${LLM:-lmsys/vicuna-7b-v1.5}
TOWER=${TOWER:?set TOWER, e.g. TOWER=clips:/path/to/clips-vit-l-14-336}
DATA=${DATA:-./playground/data}
PRETRAIN=${PRETRAIN:-./checkpoints/llava-v1.5-7b-clips-pretrain}
OUT=${OUT:-./checkpoints/llava-v1.5-7b-clips-lora}
NGPUS=${NGPUS:-8}
BATCH=16
ACCUM=$(( 128 / (BATCH * NGPUS) ))

deepspeed --num_gpus "$NGPUS" --module clips_cli.main llava finetune \
    --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 \
    --merge_lora True \
    --deepspeed zero3 \
    --model_name_or_path "$LLM" \
    --version v1 \
    --data_path "$DATA/llava_v1_5_mix665k.json" \
    --image_folder "$DATA" \
    --vision_tower "$TOWER" \
    --pretrain_mm_mlp_adapter "$PRETRAIN/mm_projector.safetensors" \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    --bf16 True \
    --output_dir "$OUT" \
    --num_train_epochs 1 \
    --per_device_train_batch_size "$BATCH" \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps "$ACCUM" \
    --eval_strategy no \
    --save_strategy steps \
    --save_steps 50000 \
    --save_total_limit 1 \
    --learning_rate 2e-4 \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type cosine \
    --logging_steps 1 \
    --tf32 True \
    --model_max_length 2048 \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --lazy_preprocess True \
    --report_to "${REPORT_TO:-none}" \
    "$@"
