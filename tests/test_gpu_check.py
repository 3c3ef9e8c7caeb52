"""The prepared GPU check runs end to end in its smoke mode, so it cannot rot between GPU loans."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check"


def test_gpu_check_lists_its_parts_with_their_time_bounds():
    out = subprocess.run([str(SCRIPT), "--list"], capture_output=True, text=True, check=True).stdout
    for part in ("throughput", "known-answer", "autoattack-vs-reference", "torchrun"):
        assert f"{part}: at most " in out
    # each part's whole first paragraph (a docstring wrapped over lines once cut it mid-sentence)
    assert all(line.endswith(".") for line in out.splitlines()), out
    assert "``" not in out  # reST literals read as plain `code` on a terminal


def test_gpu_check_smoke_runs_every_part_and_writes_its_report(tmp_path, reference_autoattack):
    done = subprocess.run([str(SCRIPT), "--smoke", "--out", str(tmp_path), "--reference",
                           str(reference_autoattack)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert set(parts) == {"throughput", "known-answer", "autoattack-vs-reference", "torchrun"}
    assert not [name for name, part in parts.items() if "failed" in part or "skipped" in part]
    row = parts["throughput"]["rows"][0]
    # a step costs more than one pass
    assert row["pgd-at-7_images_per_s"] > 0 and row["agkd-bml-2_over_bare"] > 1
    assert parts["autoattack-vs-reference"]["aa"]["same_per_image"] is True
    assert parts["torchrun"]["train"]["ok"] and parts["torchrun"]["eval"]["ok"]
    assert {"clean", "aa", "aa_ci95"} <= parts["known-answer"].keys()
    assert "## throughput" in (tmp_path / "gpu_check.md").read_text()
