#!/usr/bin/env bash
# LLaVA-1.5 stage 1 (projector pretraining on LCS-558K) with a CLIPS vision tower.
# Same recipe as LLaVA's scripts/v1_5/pretrain.sh: only the mlp2x_gelu projector trains,
# template "plain", lr 1e-3, global batch 256, 1 epoch, cosine with 3% warm-up, bf16, ZeRO-2.
#
#   TOWER=clips:/ckpt/clips-vit-l-14-336 LLM=/models/vicuna-7b-v1.5 bash scripts/llava/pretrain.sh
#
# Extra flags are passed through, e.g. `--feature_cache /fast/clips-l14-336-lcs558k` to precompute
# the frozen tower's features once (see docs/llava-training.md).
set -euo pipefail

LLM=${LLM:-lmsys/vicuna-7b-v1.5}
TOWER=${TOWER:?set TOWER, e.g. TOWER=clips:/path/to/clips-vit-l-14-336}
DATA=${DATA:-./playground/data/LLaVA-Pretrain}
OUT=${OUT:-./checkpoints/llava-v1.5-7b-clips-pretrain}
NGPUS=${NGPUS:-8}
BATCH=32                                     # per device; global batch 256 as LLaVA-1.5
ACCUM=$(( 256 / (BATCH * NGPUS) ))

deepspeed --num_gpus "$NGPUS" --module clips_cli.main llava pretrain \
    --deepspeed zero2 \
    --model_name_or_path "$LLM" \
    --version plain \
    --data_path "$DATA/blip_laion_cc_sbu_558k.json" \
    --image_folder "$DATA/images" \
    --vision_tower "$TOWER" \
    --mm_projector_type mlp2x_gelu \
    --tune_mm_mlp_adapter True \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --bf16 True \
    --output_dir "$OUT" \
    --num_train_epochs 1 \
    --per_device_train_batch_size "$BATCH" \
    --gradient_accumulation_steps "$ACCUM" \
    --eval_strategy no \
    --save_strategy steps \
    --save_steps 24000 \
    --save_total_limit 1 \
    --learning_rate 1e-3 \
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
