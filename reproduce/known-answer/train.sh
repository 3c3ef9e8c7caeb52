#!/usr/bin/env bash
# The known answer at scale: RobustBench's Wong2020Fast recipe (fast AT, Wong et al. 2020) on all 50,000
# CIFAR-10 training images: PreAct ResNet-18, one FGSM step of 10/255 from a uniform random start, eps 8/255,
# 15 epochs, cyclic lr up to 0.2, SGD momentum 0.9, weight decay 5e-4, batch 128, bf16 where the CPU has it.
# Resumable: run it again after an interruption. Usage: bash reproduce/known-answer/train.sh DATASET
# (DATASET: npz:PATH or cifar10 with --data-dir; the per-epoch trace uses the first 500 test images).
set -euo pipefail
cd "$(dirname "$0")/../.."
dataset=${1:?usage: train.sh DATASET (e.g. npz:cifar10.npz)}
run=reproduce/known-answer/runs/fast-at-preact-resnet18
exec nice -n 19 .venv/bin/agkd-bml train --method fast-at --arch preact-resnet18 --dataset "$dataset" \
    --epochs 15 --lr-schedule cyclic --lr 0.2 --momentum 0.9 --weight-decay 5e-4 --batch-size 128 \
    --eps 8/255 --step-size 10/255 --amp native-bf16 --val-n 500 --val-steps 10 --seed 0 \
    --out "$run" --no-progress --resume --start-if-none
