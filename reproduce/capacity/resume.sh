#!/usr/bin/env bash
# Continue the capacity study on the CPU where it stopped: w16, then w64 (training and evaluation resume;
# finished runs and points are reused), then the whole table. Hours on 2 cores; from the repository root,
# after `make install`:
#   nohup bash reproduce/capacity/resume.sh > reproduce/capacity/resume.log 2>&1 &
# w128 is a GPU job (reproduce/capacity/parallel.sh). Commit reproduce/capacity from time to time, with the
# last.pt of unfinished runs (git add -f): a running command ends with the session that started it.
set -uo pipefail
A=.venv/bin/agkd-bml
OUT=reproduce/capacity
for size in w16 w64; do
  $A reproduce capacity --scale medium --out "$OUT" --only "$size:AT-7,$size:AGKD-BML-7" --no-progress || exit $?
done
$A reproduce capacity --scale medium --out "$OUT" --only w16:AT-7,w16:AGKD-BML-7,w32:AT-7,w32:AGKD-BML-7,w64:AT-7,w64:AGKD-BML-7 --no-progress
