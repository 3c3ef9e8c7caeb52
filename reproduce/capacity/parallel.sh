#!/usr/bin/env bash
# The capacity study (`agkd-bml reproduce capacity --scale medium`) as parallel processes on one machine:
# one per width and row (the AGKD-BML-7 process trains its teacher first), then the whole table from their
# runs and evaluation state. On one GPU the small widths share it with the large ones; every run resumes, so
# the same command continues a stopped study. Usage, from the repository root:
#   bash reproduce/capacity/parallel.sh [OUT]        (AGKD="python -m agkd_bml" to run without installing)
set -u
OUT=${1:-reproduce/capacity}
AGKD=${AGKD:-agkd-bml}
SCALE=${SCALE:-medium}  # tiny-medium: a smoke test on digits
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # eight processes share the cores
mkdir -p "$OUT"
for item in w128:AGKD-BML-7 w128:AT-7 w64:AGKD-BML-7 w64:AT-7 w32:AGKD-BML-7 w32:AT-7 w16:AGKD-BML-7 w16:AT-7; do
  $AGKD reproduce capacity --scale "$SCALE" --out "$OUT" --only "$item" --no-progress > "$OUT/${item/:/-}.log" 2>&1 &
done
wait
$AGKD reproduce capacity --scale "$SCALE" --out "$OUT" --no-progress > "$OUT/capacity.log" 2>&1
tail -n 40 "$OUT/capacity.log"
