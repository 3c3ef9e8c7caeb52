"""What evaluate.sh has finished so far, as a table beside RobustBench's Wong2020Fast (10,000 test images).

An attack runs on the clean-correct images only, in test-set order and in batches, each batch attacked by
every part of AutoAttack before the next starts (each seeded by its own index). So the finished batches are
the attack's whole result on the first m test images, m running up to the image after the last one
attacked: accuracy there is (images still correct) / m, exactly what the finished evaluation of those m
images would say. AutoAttack on 1,000 images takes many hours on 2 cores; this reads its progress at any
time without disturbing it.
Usage: .venv/bin/python reproduce/known-answer/partial.py [STATE_DIR]
(default: reproduce/known-answer/eval/state)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from agkd_bml.evaluation.stats import wilson_interval

#: RobustBench's Wong2020Fast entry (all 10,000 CIFAR-10 test images, L-inf 8/255, standard AutoAttack)
ROBUSTBENCH = {"clean": 83.34, "aa": 43.21}


def _points(folder: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(key, saved point) of every point in the state folder."""
    points = []
    for path in sorted(folder.glob("*.pt")):
        raw = torch.load(path, map_location="cpu", weights_only=True)
        points.append((json.loads(raw["key"]), raw))
    return points


def _row(name: str, correct: int, m: int, status: str) -> str:
    acc = correct / m
    lo, hi = wilson_interval(acc, m)
    reference = f"{ROBUSTBENCH[name]:.2f}%" if name in ROBUSTBENCH else "-"
    return f"| {name} | {m} | {100 * acc:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] | {reference} | {status} |"


def raw_batch_size(points: list[tuple[dict[str, Any], dict[str, Any]]]) -> int:
    """The batch size the evaluation ran with (every point of one evaluation has the same)."""
    return int(points[0][0]["batch_size"])

def main(folder: Path) -> None:
    points = _points(folder)
    clean = [(k, raw) for k, raw in points if k["attack"] == {"attack": "none"} and raw["done"]]
    if not clean:
        sys.exit(f"partial.py: no finished clean evaluation in {folder} yet (run evaluate.sh first)")
    print("| attack | first test images | accuracy [95% Wilson] | RobustBench (10,000) | status |")
    print("|---|---:|---|---:|---|")
    for clean_key, clean_raw in clean:
        correct = torch.cat(clean_raw["batches"])
        attacked = correct.nonzero().squeeze(1)  # the test indices each attack runs on, in order
        print(_row("clean", int(correct.sum()), correct.numel(), "done"))
        finished: dict[str, torch.Tensor] = {}  # attack name -> robust flags over the clean-correct images
        prefixes: list[tuple[str, int, int]] = []  # (attack, m, k) of each attack still running
        batches = -(-attacked.numel() // raw_batch_size(points))
        for key, raw in points:
            if key["model"] != clean_key["model"] or key["attack"]["attack"] == "none":
                continue  # the clean filter itself, and the clean row of the table (printed above)
            name = key["attack"]["name"]
            kept = torch.cat(raw["batches"]) if raw["batches"] else torch.zeros(0, dtype=torch.bool)
            if raw["done"]:
                finished[name] = kept
                print(_row(name, int(kept.sum()), correct.numel(), "done"))
                continue
            if kept.numel() == 0:
                print(f"| {name} | 0 | - | - | batch 1 of {batches} under way |")
                continue
            # the first m test images: up to the next image still to attack
            m = int(attacked[kept.numel()])
            print(_row(name, int(kept.sum()), m, f"batch {len(raw['batches']) + 1} of {batches} under way"))
            prefixes.append((name, m, kept.numel()))
        for name, m, k in prefixes:  # the finished rows on the same images, for a paired reading
            same = ", ".join(f"{other} {100 * int(f[:k].sum()) / m:.1f}%" for other, f in finished.items())
            print(f"\nOn the first {m} test images, the ones {name} has finished: clean {100 * k / m:.1f}%, "
                  f"{same}.")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "eval" / "state")
