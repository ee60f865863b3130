#!/usr/bin/env bash
# The CUDA paths of the project, checked in one go on a GPU machine (no internet needed):
#
#   bash benchmarks/gpu_check.sh smoke        # ~1 min: 60 steps of the gpu preset, bf16 autocast + --compile,
#                                             #   sample grid, checkpoint, resume to step 80
#   bash benchmarks/gpu_check.sh throughput   # ~3 min: images/s and MFU, eager and compiled: the paper's 378M
#                                             #   DiT-I on 32x32x4 latents, and the gpu preset's DiT-S/2
#   bash benchmarks/gpu_check.sh train        # ~7 min: the gpu preset on a 5-minute budget, then its benchmark
#   bash benchmarks/gpu_check.sh ddp          # ~1 min, 2+ GPUs: two NCCL ranks, 100 steps, weights in sync
#   bash benchmarks/gpu_check.sh all          # all four, in that order
#
# Everything lands under ${OUT:-runs/gpu_check}; summary.txt collects the lines worth reporting.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu_check}
mkdir -p "$out"
summary="$out/summary.txt"
note() { echo "$*" | tee -a "$summary"; }

header() {
    note "== $1 ($(date -u +%H:%M:%S))"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$summary"
    python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" | tee -a "$summary"
}

smoke() {
    header smoke
    rm -rf "$out/smoke"                          # a check starts afresh: train.py never reuses a run folder
    python train.py --preset gpu --compile --num_images 5000 --steps 60 --warmup 20 --sample_every 60 \
        --ckpt_every 60 --log_every 20 --name smoke --out_dir "$out"
    python train.py --name smoke --out_dir "$out" --resume --steps 80 --log_every 20
    note "$(tail -n 3 "$out/smoke/log.jsonl")"
}

throughput() {
    header throughput
    for compile in "" --compile; do
        note "$(python benchmarks/throughput.py --model paper --channels 4 --patch 2 --text-dim 2048 \
            --text-len 128 --batch 256 $compile | tail -n 1) $compile"
        note "$(python benchmarks/throughput.py --model S --patch 2 --text-len 48 --batch 512 $compile \
            | tail -n 1) $compile"
    done
}

train_and_score() {
    header train
    rm -rf "$out/gpu"
    python train.py --preset gpu --compile --time_budget 5 --name gpu --out_dir "$out"
    note "$(grep -E '"event"' "$out/gpu/log.jsonl" | tr '\n' ' ')"
    note "$(tail -n 2 "$out/gpu/log.jsonl" | head -n 1)"
    python eval.py shapes --ckpt "$out/gpu" | tee -a "$summary"
}

ddp() {
    header ddp
    if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -lt 2 ]; then
        note "ddp: skipped, fewer than 2 GPUs (NCCL cannot put two ranks on one GPU)"
        return
    fi
    rm -rf "$out/ddp"
    torchrun --standalone --nproc_per_node=2 train.py --preset gpu --num_images 5000 --steps 100 --warmup 20 \
        --sample_every 100 --ckpt_every 100 --name ddp --out_dir "$out"
    note "$(tail -n 1 "$out/ddp/log.jsonl")"
}

case "${1:-all}" in
    smoke) smoke ;;
    throughput) throughput ;;
    train) train_and_score ;;
    ddp) ddp ;;
    all) smoke; throughput; train_and_score; ddp ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [smoke|throughput|train|ddp|all]" >&2; exit 2 ;;
esac
