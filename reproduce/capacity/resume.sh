#!/usr/bin/env bash
# Continue the capacity study on the CPU where it stopped: w64 (training and evaluation resume; finished runs
# and points are reused), the whole table, then the audit of w64's AGKD-BML-7 (the largest AGKD-BML model on
# the CPU). Hours on 2 cores; from the repository root, after `make install`:
#   nohup bash reproduce/capacity/resume.sh > reproduce/capacity/resume.log 2>&1 &
# w128 is a GPU job (reproduce/capacity/parallel.sh). Commit reproduce/capacity from time to time, with the
# last.pt of an unfinished run (git add -f) once, near a session's end: a running command ends with the session
# that started it, and each committed last.pt adds about 12 MB to the history.
set -uo pipefail
A=.venv/bin/agkd-bml
OUT=reproduce/capacity
$A reproduce capacity --scale medium --out "$OUT" --only w64:AT-7,w64:AGKD-BML-7 --no-progress || exit $?
$A reproduce capacity --scale medium --out "$OUT" --only w16:AT-7,w16:AGKD-BML-7,w32:AT-7,w32:AGKD-BML-7,w64:AT-7,w64:AGKD-BML-7 --no-progress || exit $?
[ -f "$OUT/w64/audit-AGKD-BML-7-s0/audit.md" ] || $A audit "$OUT/w64/runs/AGKD-BML-7-s0" --weights best --n 500 \
  --source "$OUT/w64/runs/T-s0" --out "$OUT/w64/audit-AGKD-BML-7-s0" --no-progress
