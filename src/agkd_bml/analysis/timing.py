"""Training time per method (the paper's Table 7), read from a run's metrics.jsonl and config.yaml."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from agkd_bml.errors import UserError
from agkd_bml.migration import read_config_yaml


def read_metrics(run: str | Path) -> tuple[Path, list[dict[str, Any]]]:
    """(run directory, one record per finished epoch) of a run directory or a file in it."""
    run = Path(run)
    if run.is_file():
        run = run.parent
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{run} has no metrics.jsonl; give a run directory made by `agkd-bml train`")
    epochs = []
    for line in metrics.read_text().splitlines():
        try:
            epochs.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a crash
    if not epochs:
        raise UserError(f"{metrics} holds no finished epoch")
    return run, epochs


def run_timing(run: str | Path) -> dict[str, Any]:
    """Method, attack steps, epochs done, mean seconds/epoch, total hours, images/s and device of a run."""
    run, epochs = read_metrics(run)
    config = run / "config.yaml"
    cfg = read_config_yaml(config) if config.is_file() else None
    seconds = [float(e["seconds"]) for e in epochs]
    last = epochs[-1]
    return {
        "run": run.name, "method": last.get("method", cfg.method if cfg else "?"), "steps": last.get("steps"),
        "arch": cfg.model.arch if cfg else "?", "dataset": cfg.data.dataset if cfg else "?",
        "device": last.get("device", cfg.runtime.device if cfg else "?"),
        "epochs": len(epochs), "seconds_per_epoch": sum(seconds) / len(seconds), "hours": sum(seconds) / 3600,
        "median_seconds_per_epoch": statistics.median(seconds),
        "images_per_s": sum(float(e.get("images_per_s", 0)) for e in epochs) / len(epochs),
    }


def timing_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`run_timing` rows."""
    lines = ["| run | method | attack steps | arch | epochs | s/epoch | total h | images/s | device |",
             "|---" * 9 + "|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['method']} | {r['steps']} | {r['arch']} | "
                     f"{r['epochs']} | {r['seconds_per_epoch']:.1f} | "
                     f"{r['hours']:.3f} | {r['images_per_s']:.0f} | {r['device']} |")
    return "\n".join(lines)
