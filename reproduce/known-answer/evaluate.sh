#!/usr/bin/env bash
# Score the known answer once train.sh has finished. First the weights as a half-precision state dict, the
# one tracked file allowed over 5 MB, for re-checking with another evaluator. Then the last epoch's weights
# (no selection, as Wong et al.) in float32 on the first 1,000 test images: clean, PGD-20 and AutoAttack
# (standard, L-inf 8/255), each with its 95% Wilson interval, into reproduce/known-answer/eval (resumable:
# run it again). AutoAttack takes many hours on 2 cores; each batch of 100 clean-correct images is attacked
# by every part before the next starts, so what is finished is the whole result on the first ~120 test
# images per batch, which `partial.py` reads at any time.
# Usage: bash reproduce/known-answer/evaluate.sh DATASET (the one train.sh was given).
set -euo pipefail
cd "$(dirname "$0")/../.."
dataset=${1:?usage: evaluate.sh DATASET (e.g. npz:cifar10.npz)}
here=reproduce/known-answer
run=$here/runs/fast-at-preact-resnet18
.venv/bin/python - "$run/last.pt" "$here/fast-at-preact-resnet18-fp16.pt" <<'PY'
import os, sys
import torch
from agkd_bml.train import load_checkpoint
ckpt = load_checkpoint(sys.argv[1])
half = {k: v.half() if v.is_floating_point() else v for k, v in ckpt.model.items()}
tmp = sys.argv[2] + ".tmp"
torch.save(half, tmp)
os.replace(tmp, sys.argv[2])
print(f"wrote {sys.argv[2]} ({os.path.getsize(sys.argv[2]) / 2**20:.1f} MB: the state dict of "
      f"agkd_bml.models.build_model('preact-resnet18', ...) after epoch {ckpt.epoch}, in float16; "
      "load_state_dict casts it into the float32 model)")
PY
nice -n 19 .venv/bin/agkd-bml eval "$run" --weights last --dataset "$dataset" --n 1000 --batch-size 100 \
    --eps 8/255 --attacks clean,pgd-20,aa --name "fast-at (ours)" --out "$here/eval" --no-progress
