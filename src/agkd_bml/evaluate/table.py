"""Evaluation tables like the paper's Table 1: one row per model, one column per attack, plus worst case."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from agkd_bml.attacks.specs import fmt_eps
from agkd_bml.evaluate.robust import AttackResult
from agkd_bml.fileio import write_text


def worst_case(results: list[AttackResult]) -> float:
    """Accuracy when a sample counts as correct only if every attack run left it correct."""
    return float(torch.stack([r.correct for r in results]).all(0).float().mean())


def format_table(rows: dict[str, list[AttackResult]]) -> str:
    """A Markdown table of accuracies (%), with a footnote line per attack giving its settings."""
    first = next(iter(rows.values()))
    header = [r.spec.name for r in first] + (["worst-case"] if len(first) > 1 else [])
    lines = ["| model | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for name, results in rows.items():
        cells = [f"{100 * r.accuracy:.2f}" for r in results]
        if len(results) > 1:
            cells.append(f"{100 * worst_case(results):.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Accuracy (%) on n={first[0].n} test images, seed {first[0].seed}; L-inf, eps {fmt_eps(first[0].spec.eps)}.")
    lines += [f"- {r.spec.describe()}" for r in first]
    return "\n".join(lines)


def records(rows: dict[str, list[AttackResult]]) -> list[dict]:
    """One flat record per (model, attack) with every setting and the 95% Wilson interval."""
    out = []
    for name, results in rows.items():
        for r in results:
            lo, hi = r.wilson()
            s = r.spec
            out.append({
                "model": name, "attack": s.name, "accuracy": r.accuracy, "ci95_low": lo, "ci95_high": hi,
                "n": r.n, "seed": r.seed, "steps": s.steps, "step_size": s.step_size, "eps": s.eps,
                "restarts": s.restarts, "random_start": s.random_start, "loss": s.loss, "momentum": s.momentum,
            })
        if len(results) > 1:
            out.append({"model": name, "attack": "worst-case", "accuracy": worst_case(results), "n": results[0].n,
                        "seed": results[0].seed, "attacks": [r.spec.name for r in results]})
    return out


def write_tables(rows: dict[str, list[AttackResult]], out_dir: str | Path, stem: str = "eval") -> list[Path]:
    """Write the table as Markdown, CSV and JSON (atomically) into ``out_dir``."""
    out = Path(out_dir)
    recs = records(rows)
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for r in recs for k in r))
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(recs)
    files = {f"{stem}.md": format_table(rows) + "\n", f"{stem}.csv": buf.getvalue(), f"{stem}.json": json.dumps(recs, indent=2) + "\n"}
    for name, text in files.items():
        write_text(out / name, text)
    return [out / n for n in files]
