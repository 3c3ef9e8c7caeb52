#!/usr/bin/env bash
# Resume the whole medium reproduction where it stopped (training and evaluation both resume; finished runs and
# points are reused): table5 and table1, then the audit of AGKD-BML-2. Hours on 2 cores; run it in the background,
# from the repository root, after `make install`:
#   nohup bash reproduce/medium/resume.sh > reproduce/medium/resume.log 2>&1 &
# Commit reproduce/medium from time to time: a running command ends with the session that started it.
set -uo pipefail
A=.venv/bin/agkd-bml
OUT=reproduce/medium
$A reproduce table5 --scale medium --out "$OUT" --no-progress || exit $?
$A reproduce table1 --scale medium --out "$OUT" --no-progress || exit $?
[ -f "$OUT/audit-AGKD-BML-2-s0/audit.md" ] || $A audit "$OUT/runs/AGKD-BML-2-s0" --weights best --n 500 \
  --source "$OUT/runs/T-s0" --out "$OUT/audit-AGKD-BML-2-s0" --no-progress
