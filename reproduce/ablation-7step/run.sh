#!/usr/bin/env bash
# Which part of AGKD-BML-7 costs robustness against AT-7? A one-seed ablation at a reduced medium recipe
# (10,000 training images, 8 epochs, lr 0.05 decayed at epoch 6, 500 held out, best held-out weights), 7 training
# attack steps of eps/4 for every adversarial row. Trains in bf16 where the CPU computes it natively (the committed
# runs did) and in float32 elsewhere, where emulated bf16 would be slower. Resumes where it stopped.
# Usage, from the repository root: bash reproduce/ablation-7step/run.sh
set -euo pipefail
OUT=reproduce/ablation-7step
COMMON=(--dataset npz:../shared/data/cifar10.npz --arch small-cnn --train-limit 10000 --epochs 8 --milestones 6
        --lr 0.05 --batch-size 128 --val-split 500 --amp native-bf16 --seed 0 --no-progress)
run() {  # run NAME [train options...]
  local name=$1; shift
  local dir="$OUT/runs/$name"
  # a finished run committed without its training checkpoints (best.pt, config.yaml, metrics.jsonl): reuse it
  if [ ! -f "$dir/last.pt" ] && [ -f "$dir/best.pt" ] && [ "$(wc -l < "$dir/metrics.jsonl")" -ge 8 ]; then
    echo "$dir: finished (its training checkpoints are not kept); reused"; return
  fi
  local resume=(); [ -f "$dir/last.pt" ] && resume=(--resume)
  .venv/bin/agkd-bml train "${COMMON[@]}" "$@" --out "$OUT/runs/$name" "${resume[@]}"
}
run T --method standard --label-smoothing 0.5                         # the AGKD teacher (released code: LS 0.5)
run AT-7 --method pgd-at --steps 7                                   # PGD-AT, no smoothing
run AT-7-ls0.5 --method pgd-at --steps 7 --label-smoothing 0.5       # PGD-AT with AGKD-BML's smoothing
run AGKD-BML-7 --method agkd-bml --steps 7 --teacher "$OUT/runs/T"   # as in table1 (smoothing 0.5)
run AGKD-BML-7-ls0 --method agkd-bml --steps 7 --label-smoothing 0 --teacher "$OUT/runs/T"
run BML-7-ls0 --method bml --steps 7 --label-smoothing 0             # CE on targeted AEs + triplet: no AGKD, no smoothing
.venv/bin/agkd-bml eval "$OUT"/runs/{AT-7,AT-7-ls0.5,AGKD-BML-7,AGKD-BML-7-ls0,BML-7-ls0} --weights best \
  --attacks clean,pgd-20,cw-20,aa --n 500 --out "$OUT" --no-progress
