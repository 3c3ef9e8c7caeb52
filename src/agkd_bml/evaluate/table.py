"""Evaluation tables like the paper's Table 1: one row per model, one column per attack, plus worst case."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from agkd_bml.attacks import fmt_eps
from agkd_bml.evaluate.robust import AttackResult
from agkd_bml.fileio import write_text


def combined(results: list[AttackResult]) -> AttackResult:
    """The per-sample worst case: a sample counts as correct only if every attack run left it correct."""
    return AttackResult(results[0].attack, torch.stack([r.correct for r in results]).all(0), results[0].seed)


def worst_case(results: list[AttackResult]) -> float:
    """Accuracy of :func:`combined`."""
    return combined(results).accuracy


def _cell(r: AttackResult) -> str:
    lo, hi = r.wilson()
    return f"{100 * r.accuracy:.2f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def format_table(rows: dict[str, list[AttackResult]]) -> str:
    """A Markdown table of accuracies (%), with a footnote line per attack giving its settings."""
    first = next(iter(rows.values()))
    header = [r.attack.name for r in first] + (["worst-case"] if len(first) > 1 else [])
    lines = ["| model | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for name, results in rows.items():
        cells = [_cell(r) for r in results]
        if len(results) > 1:
            cells.append(_cell(combined(results)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Robust accuracy (%) on the first n={first[0].n} test images, seed {first[0].seed}, L-inf eps "
        f"{fmt_eps(first[0].attack.eps)}; a point counts only if it is right clean and attacked; worst-case: "
        "right under every attack. [low, high]: 95% Wilson interval."
    )
    lines += [f"- {r.attack.describe()}" for r in first]
    return "\n".join(lines)


def records(rows: dict[str, list[AttackResult]]) -> list[dict]:
    """One flat record per (model, attack) with every setting and the 95% Wilson interval."""
    out = []
    for name, results in rows.items():
        for r in results:
            lo, hi = r.wilson()
            out.append({
                "model": name, "attack": r.attack.name, "accuracy": r.accuracy, "ci95_low": lo, "ci95_high": hi,
                "n": r.n, "seed": r.seed, "eps": r.attack.eps, "settings": r.attack.settings(),
            })
        if len(results) > 1:
            wc = combined(results)
            lo, hi = wc.wilson()
            out.append({"model": name, "attack": "worst-case", "accuracy": wc.accuracy, "ci95_low": lo,
                        "ci95_high": hi, "n": wc.n, "seed": wc.seed, "eps": wc.attack.eps,
                        "settings": {"attacks": [r.attack.name for r in results]}})
    return out


def write_tables(rows: dict[str, list[AttackResult]], out_dir: str | Path, stem: str = "eval") -> list[Path]:
    """Write the table as Markdown, CSV and JSON (atomically) into ``out_dir``."""
    out = Path(out_dir)
    recs = records(rows)
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for r in recs for k in r))
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows({**r, "settings": json.dumps(r["settings"], sort_keys=True)} for r in recs)
    files = {f"{stem}.md": format_table(rows) + "\n", f"{stem}.csv": buf.getvalue(), f"{stem}.json": json.dumps(recs, indent=2) + "\n"}
    for name, text in files.items():
        write_text(out / name, text)
    return [out / n for n in files]
