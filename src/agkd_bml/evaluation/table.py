"""Evaluation tables like the paper's Table 1: one row per model, one column per attack, plus worst case."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from agkd_bml.attacks import fmt_eps
from agkd_bml.evaluation.robust import AttackResult
from agkd_bml.fileio import write_text
from agkd_bml.provenance import provenance as made_by


def combined(results: list[AttackResult]) -> AttackResult:
    """The per-sample worst case: a sample counts as correct only if every attack run left it correct."""
    return AttackResult(results[0].attack, torch.stack([r.correct for r in results]).all(0), results[0].seed)


def worst_case(results: list[AttackResult]) -> float:
    """Accuracy of :func:`combined`."""
    return combined(results).accuracy


def _cell(r: AttackResult) -> str:
    lo, hi = r.wilson()
    return f"{100 * r.accuracy:.2f} [{100 * lo:.1f}, {100 * hi:.1f}]"


#: How a table names the weights it evaluated (``--weights``).
WEIGHTS_NOTE = {
    "last": "each run's last epoch (last.pt)",
    "best": "each run's best epoch by PGD accuracy on its held-out training images (best.pt, --val-split)",
    "ema": "each run's exponential moving average of the weights (--ema), at its last epoch",
}


def format_table(rows: dict[str, list[AttackResult]], weights: str | None = None,
                 foreign: dict[str, str] | None = None) -> str:
    """A Markdown table of accuracies (%), with a footnote line per attack giving its settings.

    ``weights`` (last, best, ema) adds a line saying which weights of the runs were evaluated; ``foreign``
    (row label -> description) says the same of models from elsewhere: their source, weights and inputs. """
    first = next(iter(rows.values()))
    header = [r.attack.name for r in first] + (["worst-case"] if len(first) > 1 else [])
    lines = ["| model | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    norm = first[0].attack.norm.title
    for name, results in rows.items():
        cells = [_cell(r) for r in results]
        if len(results) > 1:
            cells.append(_cell(combined(results)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Robust accuracy (%) on the first n={first[0].n} test images, seed {first[0].seed}, {norm} eps "
        f"{fmt_eps(first[0].attack.eps)}; a point counts only if it is right clean and attacked; worst-case: "
        "right under every attack. [low, high]: 95% Wilson interval."
        + (f" Weights: {WEIGHTS_NOTE[weights]}." if weights else "")
        + "".join(f" Model {label}: {text}." for label, text in (foreign or {}).items())
    )
    lines += [f"- {r.attack.describe()}" for r in first]
    return "\n".join(lines)


def _rounded(n: int, **fractions: float) -> dict[str, float]:
    """Fractions rounded to what ``n`` images resolve (one digit past 1/n: 46/450 is
    0.1022, not 0.10222221910953522)."""
    digits = len(str(max(n, 1))) + 1
    return {k: round(v, digits) if v == v else v for k, v in fractions.items()}


def records(rows: dict[str, list[AttackResult]], weights: str | None = None,
            foreign: dict[str, str] | None = None) -> list[dict]:
    """One flat record per (model, attack) with every setting and the 95% Wilson interval (and, for a model
    from elsewhere, its ``source``: what :func:`format_table` says of it)."""
    out = []
    for name, results in rows.items():
        extra = {"weights": weights} if weights else {}
        if foreign and name in foreign:
            extra["source"] = foreign[name]
        for r in results:
            lo, hi = r.wilson()
            parts = getattr(r.attack, "fooled_by", None)
            tally = {"fooled_by": dict(parts)} if parts else {}  # a cascade: how many images each part broke
            out.append({
                "model": name, "attack": r.attack.name, "correct": int(r.correct.sum()), "n": r.n,
                **_rounded(r.n, accuracy=r.accuracy, ci95_low=lo, ci95_high=hi), "seed": r.seed,
                "eps": r.attack.eps, "norm": r.attack.norm.name, "settings": r.attack.settings(), **extra,
                **tally,
            })
        if len(results) > 1:
            wc = combined(results)
            lo, hi = wc.wilson()
            out.append({"model": name, "attack": "worst-case", "correct": int(wc.correct.sum()), "n": wc.n,
                        **_rounded(wc.n, accuracy=wc.accuracy, ci95_low=lo, ci95_high=hi), "seed": wc.seed,
                        "eps": wc.attack.eps, "norm": results[0].attack.norm.name,
                        "settings": {"attacks": [r.attack.name for r in results]}, **extra})
    return out


def robustbench_record(name: str, results: list[AttackResult], dataset: str = "") -> dict:
    """A RobustBench-style summary of one model (``clean_acc`` / ``autoattack_acc`` as percent strings).

    RobustBench's leaderboard entries hold clean and AutoAttack accuracy for a threat model and budget; the
    same fields here let a result be set beside theirs (theirs use all
    10,000 test images: see ``n_examples``).
    """
    by_name = {r.attack.name: r for r in results}
    aa = next((r for r in results if r.attack.name.startswith("aa")), None)
    clean = by_name.get("clean")
    first = results[0]
    record = {"name": name, "dataset": dataset, "threat_model": first.attack.norm.name.capitalize(),
              "eps": fmt_eps(first.attack.eps), "n_examples": first.n,
              "clean_acc": f"{100 * clean.accuracy:.2f}" if clean else None,
              "autoattack_acc": f"{100 * aa.accuracy:.2f}" if aa else None,
              "autoattack": aa.attack.describe() if aa else None}
    if len(results) > 1:
        record["worst_case_acc"] = f"{100 * combined(results).accuracy:.2f}"
    return record


def write_tables(
    rows: dict[str, list[AttackResult]], out_dir: str | Path, stem: str = "eval", weights: str | None = None,
    flags: dict[str, list[str]] | None = None, datasets: dict[str, str] | None = None,
    foreign: dict[str, str] | None = None, provenance: dict | None = None,
) -> list[Path]:
    """Write the table as Markdown, CSV and JSON (atomically) into ``out_dir``.

    The JSON holds every (model, attack) record under ``results``, per model a RobustBench-style summary and
    the warnings of :mod:`agkd_bml.evaluation.checks` under ``models``, and what produced it (versions,
    device, commit, the images' fingerprint: :func:`agkd_bml.provenance.provenance`) under ``provenance``. """
    out = Path(out_dir)
    recs = records(rows, weights, foreign)
    models = {name: {"robustbench": robustbench_record(name, results, (datasets or {}).get(name, "")),
                     "flags": (flags or {}).get(name, []),
                     **({"source": foreign[name]} if foreign and name in foreign else {})}
              for name, results in rows.items()}
    summary = {"format": "agkd-bml-eval/3", "results": recs, "models": models,
               "provenance": provenance if provenance is not None else made_by()}
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for r in recs for k in r))
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows({**r, "settings": json.dumps(r["settings"], sort_keys=True)} for r in recs)
    warnings = [f"- {name}: {flag}" for name, m in models.items() for flag in m["flags"]]
    md = format_table(rows, weights, foreign) + ("\n\nWarnings (checks before and after the attacks):\n"
                                                 + "\n".join(warnings)
                                         if warnings else "")
    files = {f"{stem}.md": md + "\n", f"{stem}.csv": buf.getvalue(),
             f"{stem}.json": json.dumps(summary, indent=2) + "\n"}
    for name, text in files.items():
        write_text(out / name, text)
    return [out / n for n in files]
