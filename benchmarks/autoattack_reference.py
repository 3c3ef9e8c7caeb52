"""Our AutoAttack (``aa``, ``aa-bf16``) against the reference implementation, side by side on one checkpoint.

The reference is fra31/auto-attack as kept in ``../shared/reference/auto-attack`` (never imported by the
package). All three runs attack the same model (float32 weights), the same first ``--n`` test images, the
same eps and threat model (``--norm``), standard version; each reports robust accuracy (right clean and after the whole cascade) and its
wall time, the reference's per-part times from its own log, ours from the cascade's per-part clocks. The
runs alternate (reference, aa, aa-bf16) ``--repeats`` times and each time is the median of its repeats,
so a burst of load on the shared machine slows all three alike.

    python -m benchmarks.autoattack_reference --checkpoint RUN --n 200
    python -m benchmarks.autoattack_reference --checkpoint RUN --n 200 --norm l2   # AutoAttack-L2, eps 0.5
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from agkd_bml.attacks import parse_attacks
from agkd_bml.attacks.torchattacks_adapter import LogitsOnly
from agkd_bml.data import load_dataset, to_float
from agkd_bml.device import device_name, resolve_device
from agkd_bml.evaluation import default_budget, evaluate_attacks
from agkd_bml.models.checkpoint import load_model

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "auto-attack"
PARTS = ("apgd-ce", "apgd-t", "fab-t", "square")


def run_reference(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, device: torch.device,
                  batch: int, norm: str) -> tuple[float, float, dict[str, float]]:
    """(seconds, robust accuracy, per-part seconds) of the reference's standard AutoAttack."""
    sys.path.insert(0, str(REFERENCE))
    try:
        from autoattack import AutoAttack as Reference
    finally:
        sys.path.remove(str(REFERENCE))
    logits = LogitsOnly(model).eval()
    xf, yd = to_float(x).to(device), y.to(device)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # its log gives the per-part times; keep it out of the table
        adversary = Reference(logits, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, version="standard", device=str(device), seed=0, verbose=True)
        start = time.perf_counter()
        adv = adversary.run_standard_evaluation(xf, yd, bs=batch)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        robust = (logits(xf).argmax(1) == yd) & (logits(adv).argmax(1) == yd)
    totals = [float(t) for t in re.findall(r"robust accuracy after \S+: [\d.]+% \(total time ([\d.]+) s\)", log.getvalue())]
    parts = dict(zip(PARTS, [b - a for a, b in zip([0.0, *totals], totals, strict=False)], strict=False))
    return seconds, float(robust.float().mean()), parts


def run_ours(spec: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, classes: int,
             device: torch.device, batch: int, norm: str) -> tuple[float, float, dict[str, float]]:
    """(seconds, robust accuracy, per-part seconds) of one of our AutoAttack specs."""
    attack = parse_attacks(spec, eps=eps, num_classes=classes, norm=norm)
    start = time.perf_counter()
    res = evaluate_attacks(model, x, y, attack, batch_size=batch, device=device, seed=0)[0]
    return time.perf_counter() - start, res.accuracy, dict(attack[0].seconds_by)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a run directory or checkpoint of this project")
    p.add_argument("--n", type=int, default=200, help="first N test images (default 200)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf", help="threat model (eps: the dataset's default)")
    p.add_argument("--out", default=None, help="JSON results (default benchmarks/results-autoattack[-l2].json)")
    args = p.parse_args()
    if not (REFERENCE / "autoattack" / "autoattack.py").is_file():
        print(f"skipped: the reference auto-attack is not at {REFERENCE} (see ../shared/reference/auto-attack/README.md)")
        return
    device = resolve_device(args.device)
    model, ckpt = load_model(args.checkpoint, device)
    data = load_dataset(ckpt.config["dataset"])
    x, y = data.x_test[: args.n], data.y_test[: args.n]
    eps, classes = default_budget(data.spec, args.norm), data.spec.num_classes
    runs: dict[str, list[tuple[float, float, dict[str, float]]]] = {"reference": [], "aa": [], "aa-bf16": []}
    for _ in range(args.repeats):
        runs["reference"].append(run_reference(model, x, y, eps, device, args.batch, args.norm))
        for spec in ("aa", "aa-bf16"):
            runs[spec].append(run_ours(spec, model, x, y, eps, classes, device, args.batch, args.norm))
    summary = {}
    for name, rs in runs.items():
        summary[name] = {"seconds": statistics.median(r[0] for r in rs), "accuracy": rs[0][1],
                         "accuracies": [r[1] for r in rs],
                         "parts_s": {k: statistics.median(r[2].get(k, 0.0) for r in rs) for k in PARTS}}
    ref = summary["reference"]["seconds"]
    result = {"machine": f"{platform.machine()} {device_name(device)}", "torch": torch.__version__,
              "checkpoint": args.checkpoint, "n": args.n, "eps": eps, "norm": args.norm, "repeats": args.repeats, **summary}
    suffix = "" if args.norm == "linf" else f"-{args.norm}"
    Path(args.out or Path(__file__).with_name(f"results-autoattack{suffix}.json")).write_text(
        json.dumps(result, indent=2) + "\n")
    print(f"{result['machine']}, torch {torch.__version__}; {args.checkpoint}, first {args.n} test images, "
          f"standard AutoAttack, {args.norm} eps {eps:.4g}, median of {args.repeats}")
    print("| run | robust acc. | seconds | speed-up | " + " | ".join(PARTS) + " |")
    print("|---|---|---|---|" + "---|" * len(PARTS))
    for name, s in summary.items():
        parts = " | ".join(f"{s['parts_s'][k]:.1f}" for k in PARTS)
        print(f"| {name} | {100 * s['accuracy']:.2f}% | {s['seconds']:.1f} | {ref / s['seconds']:.2f}x | {parts} |")
    gap = max(abs(s["accuracy"] - summary["reference"]["accuracy"]) for s in summary.values()) * args.n
    print(f"largest difference from the reference: {gap:.0f} image(s) of {args.n}")


if __name__ == "__main__":
    main()
