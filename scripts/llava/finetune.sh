#!/usr/bin/env bash
# LLaVA-1.5 stage 2 (visual instruction tuning on llava_v1_5_mix665k) with a CLIPS vision tower.
# Same recipe as LLaVA's scripts/v1_5/finetune.sh: LLM + projector train, tower frozen, template
# "v1", image_aspect_ratio pad, modality-grouped batches, lr 2e-5, global batch 128, 1 epoch,
# cosine with 3% warm-up, bf16, ZeRO-3. Loads the stage-1 projector from $PRETRAIN.
#
#   TOWER=clips:/ckpt/clips-vit-l-14-336 LLM=/models/vicuna-7b-v1.5 bash scripts/llava/finetune.sh
#
# The output folder is a plain HF LLaVA model: LlavaForConditionalGeneration.from_pretrained(OUT).
set -euo pipefail

LLM=${LLM:-lmsys/vicuna-7b-v1.5}
TOWER=${TOWER:?set TOWER, e.g. TOWER=clips:/path/to/clips-vit-l-14-336}
DATA=${DATA:-./playground/data}
PRETRAIN=${PRETRAIN:-./checkpoints/llava-v1.5-7b-clips-pretrain}
OUT=${OUT:-./checkpoints/llava-v1.5-7b-clips}
NGPUS=${NGPUS:-8}
BATCH=16                                     # per device; global batch 128 as LLaVA-1.5
ACCUM=$(( 128 / (BATCH * NGPUS) ))

deepspeed --num_gpus "$NGPUS" --module clips_cli.main llava finetune \
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
    --learning_rate 2e-5 \
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
