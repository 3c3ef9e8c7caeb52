"""Our AutoAttack (``aa``, ``aa-bf16``) against the reference implementation, side by side on one checkpoint.

The reference is fra31/auto-attack as kept in ``../shared/reference/auto-attack`` (never imported by the
package). All three runs attack the same model (float32 weights), the same first ``--n`` test images, the
same eps and threat model (``--norm``), standard version; each reports robust accuracy (right clean and after
the whole cascade) and its wall time, the reference's per-part times from its own log, ours from the cascade's
per-part clocks. The runs alternate (reference, aa, aa-bf16) ``--repeats`` times and each time is the median
of its repeats, so a burst of load on the shared machine slows all three alike.

For our runs the benchmark also counts each part's network passes (a forward hook on the attacked
model: images per forward, and whether an input gradient follows) and turns them into FLOPs with
torch's counter on one image, so each part's GFLOP/s can be set against the machine's peak for the
same work (the model's fastest convolution alone, forward + backward, as ``benchmarks.train_step``; in
bf16 for ``aa-bf16``): the share of each part's time spent in passes at that rate, the rest being
everything else (projections, bookkeeping, Python). Square's windowed queries skip the model's forward,
so their convolutions are counted where each window is computed (output values x inputs each reads).

    python -m benchmarks.autoattack_reference --checkpoint RUN --n 200
    python -m benchmarks.autoattack_reference --checkpoint RUN --n 200
--norm l2   # AutoAttack-L2, eps 0.5 """

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from agkd_bml.attacks import parse_attacks
from agkd_bml.attacks.autoattack import AutoAttack
from agkd_bml.attacks.torchattacks_adapter import LogitsOnly
from agkd_bml.data import to_float
from agkd_bml.device import device_name
from agkd_bml.evaluation import evaluate_attacks
from agkd_bml.evaluation.loader import EvalOptions, ModelLoader
from agkd_bml.models import windowed as windowed_mod
from agkd_bml.models.inference import channels_last, inference_copy
from agkd_bml.models.windowed import WindowedForward
from benchmarks.train_step import conv_peak, counted_flops

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
        adversary = Reference(logits, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, version="standard",
                              device=str(device), seed=0, verbose=True)
        start = time.perf_counter()
        adv = adversary.run_standard_evaluation(xf, yd, bs=batch)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        robust = (logits(xf).argmax(1) == yd) & (logits(adv).argmax(1) == yd)
    totals = [float(t) for t in re.findall(r"robust accuracy after \S+: [\d.]+% \(total time ([\d.]+) s\)",
                                           log.getvalue())]
    parts = dict(zip(PARTS, [b - a for a, b in zip([0.0, *totals], totals, strict=False)], strict=False))
    return seconds, float(robust.float().mean()), parts


class PassCounter:
    """Counts the attacked model's passes: images forward only, and images forward with an input gradient to
    follow, per AutoAttack part. The hook sits on the model itself, not on every module (a global hook would
    put a Python call on each layer of each pass and slow the timed run); the attacks' inference copy is a
    deep copy, so it carries the hook. Square's windowed queries (:mod:`agkd_bml.models.windowed`) bypass
    the model's forward: their convolutions' FLOPs are counted where each window is computed, plus the
    convolutions and linear layers they run on whole values."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.forward = self.with_grad = 0
        self.windowed_flops = 0.0
        self.by_part: dict[str, tuple[int, int, float]] = {}

    def __enter__(self) -> PassCounter:
        def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _out: object) -> None:
            n = inputs[0].shape[0]
            if torch.is_grad_enabled() and inputs[0].requires_grad:
                self.with_grad += n
            else:
                self.forward += n

        self.handle = self.model.register_forward_hook(hook)
        call, unpadded = WindowedForward._call, windowed_mod._unpadded

        def conv_flops(module: torch.nn.Module, out: torch.Tensor) -> None:
            conv = windowed_mod._windowable_conv(module)
            # multiply-adds: each output value reads in_channels / groups x kernel inputs
            if conv is not None:
                self.windowed_flops += (2 * out.numel() * conv.in_channels // conv.groups
                                        * math.prod(conv.kernel_size))
            elif type(module) is torch.nn.Linear:  # as torch's counter
                self.windowed_flops += 2 * out.numel() * module.in_features

        def counted_unpadded(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
            out = unpadded(module, x)
            conv_flops(module, out)
            return out

        def counted_call(windowed: WindowedForward, node: Any, args: Any, kwargs: Any) -> Any:
            out = call(windowed, node, args, kwargs)
            if node.op == "call_module":
                conv_flops(windowed.modules[str(node.target)], out)
            return out

        self.restore = [(WindowedForward, "_call", call), (windowed_mod, "_unpadded", unpadded)]
        WindowedForward._call = counted_call  # type: ignore[method-assign]
        windowed_mod._unpadded = counted_unpadded
        return self

    def __exit__(self, *args: object) -> None:
        self.handle.remove()
        for owner, name, original in self.restore:
            setattr(owner, name, original)

    def part_done(self, part: str) -> None:
        """Attribute the passes since the last call to ``part``."""
        done = [sum(v[i] for v in self.by_part.values()) for i in range(3)]
        f0, g0, w0 = self.by_part.get(part, (0, 0, 0.0))
        self.by_part[part] = (f0 + self.forward - done[0], g0 + self.with_grad - done[1],
                              w0 + self.windowed_flops - done[2])


OURS = ("aa", "aa-bf16")
KINDS = ("forward", "input-gradient")


def measure_peaks(model: torch.nn.Module, x: torch.Tensor, device: torch.device, spec: str) -> list[float]:
    """The peak FLOP/s of each kind of pass (:data:`KINDS`), in ``spec``'s precision. Measured before and
    after the runs and the larger kept: a peak is the best this machine did, and load on a shared machine only
    lowers a measurement."""
    sample = to_float(x[:128]).to(device).contiguous(memory_format=torch.channels_last)
    return [conv_peak(model, sample, device, bf16=spec == "aa-bf16", kind=kind)[0] for kind in KINDS]


def per_image_flops(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(FLOPs of one image's forward, of its forward + input-gradient backward) on the attacked model copy."""
    fast = inference_copy(model)
    one = channels_last(to_float(x[:1]).to(next(model.parameters()).device))

    def forward() -> None:
        # an input that requires grad sends the copy's conv + ReLU pairs down their unfused path: torch's
        # counter does not know the fused oneDNN op (it would count 0), and the arithmetic is the same
        fast(one.clone().requires_grad_(True))

    def with_grad() -> None:
        xi = one.clone().requires_grad_(True)
        torch.autograd.grad(fast(xi).logits.sum(), xi)

    return counted_flops(forward), counted_flops(with_grad)


def run_ours(spec: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, classes: int,
             device: torch.device, batch: int,
             norm: str) -> tuple[float, float, dict[str, float], dict[str, tuple[int, int]]]:
    """(seconds, robust accuracy, per-part seconds, per-part (forward images, gradient images, windowed
    FLOPs)) of one spec."""
    (attack,) = parse_attacks(spec, eps=eps, num_classes=classes, norm=norm)
    assert isinstance(attack, AutoAttack)
    counter = PassCounter(model)
    counted = _counting(attack, counter)
    start = time.perf_counter()
    with counter:
        res = evaluate_attacks(model, x, y, [counted], batch_size=batch, device=device, seed=0)[0]
    return time.perf_counter() - start, res.accuracy, dict(counted.seconds_by), counter.by_part


def _counting(attack: AutoAttack, counter: PassCounter) -> AutoAttack:
    """``attack`` that also tells ``counter`` when each part ends (through the cascade's per-part clock)."""

    class Counted(type(attack)):  # type: ignore[misc]
        def _count(self, part: str, fooled: torch.Tensor, started: float) -> None:
            super()._count(part, fooled, started)
            counter.part_done(part)

    fields = {f: getattr(attack, f) for f in attack.__dataclass_fields__ if f not
              in ("fooled_by", "seconds_by")}
    return Counted(**fields)


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(str(__doc__).split("\n\n")[0].split()))
    p.add_argument("--checkpoint", required=True, metavar="MODEL",
                   help="a run directory or checkpoint of this project, or a model from elsewhere "
                        "(py:FILE.py:FACTORY, .pt2, TorchScript) with --dataset, --model-weights and "
                        "--normalize, as `agkd-bml eval` takes")
    p.add_argument("--weights", default="last", choices=("last", "best", "ema"),
                   help="of a run of this project")
    p.add_argument("--dataset", default=None,
                   help="the data of a model from elsewhere (e.g. npz:../shared/data/cifar10.npz)")
    p.add_argument("--model-weights", default=None, help="a state dict for a py: factory's model")
    p.add_argument("--normalize", default=None,
                   help="normalisation in front of a model from elsewhere (dataset, M,S, ...)")
    p.add_argument("--n", type=int, default=200, help="first N test images (default 200)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf",
                   help="threat model (eps: the dataset's default)")
    p.add_argument("--out", default=None,
                   help="JSON results (default benchmarks/results-autoattack[-l2].json)")
    args = p.parse_args()
    if not (REFERENCE / "autoattack" / "autoattack.py").is_file():
        print(f"skipped: the reference auto-attack is not at {REFERENCE} (see "
              "../shared/reference/auto-attack/README.md)")
        return
    loader = ModelLoader(EvalOptions(n=args.n, device=args.device, weights=args.weights, dataset=args.dataset,
                                     model_weights=(args.model_weights,) if args.model_weights else (),
                                     normalize=args.normalize, norm=args.norm))
    device = loader.device
    _, model, data, x, y = loader.model(args.checkpoint)
    eps, classes = loader.eps(data), data.spec.num_classes
    before = {spec: measure_peaks(model, x, device, spec) for spec in OURS}
    runs: dict[str, list[tuple]] = {"reference": [], "aa": [], "aa-bf16": []}
    for _ in range(args.repeats):
        runs["reference"].append(run_reference(model, x, y, eps, device, args.batch, args.norm))
        for spec in OURS:
            runs[spec].append(run_ours(spec, model, x, y, eps, classes, device, args.batch, args.norm))
    summary = {}
    for name, rs in runs.items():
        summary[name] = {"seconds": statistics.median(r[0] for r in rs), "accuracy": rs[0][1],
                         "accuracies": [r[1] for r in rs], "all_seconds": [r[0] for r in rs],
                         "parts_s": {k: statistics.median(r[2].get(k, 0.0) for r in rs) for k in PARTS}}
    ref = summary["reference"]["seconds"]
    peaks = {spec: {kind: max(p, q) for kind, p,
                    q in zip(KINDS, before[spec], measure_peaks(model, x, device, spec),
                                                           strict=True)} for spec in OURS}
    fwd, grad = per_image_flops(model, x)
    passes = {}
    for spec, peak in peaks.items():
        passes[spec] = {"peak_gflops": {k: v / 1e9 for k, v in peak.items()}, "parts": {}}
        for part in PARTS:
            f_imgs, g_imgs, w_flops = runs[spec][0][3].get(part, (0, 0, 0.0))  # the same in every repeat
            gflop = (f_imgs * fwd + g_imgs * grad + w_flops) / 1e9
            # the time these passes take at the peak rate of their own kind of work
            ideal = (f_imgs * fwd + w_flops) / peak["forward"] + g_imgs * grad / peak["input-gradient"]
            secs = summary[spec]["parts_s"][part]
            passes[spec]["parts"][part] = {"forward_images": f_imgs, "gradient_images": g_imgs,
                                           "windowed_gflop": w_flops / 1e9, "gflop": gflop,
                                           "gflops": gflop / secs if secs else 0.0,
                                           "of_peak": ideal / secs if secs else 0.0}
    result = {"machine": f"{platform.machine()} {device_name(device)}", "torch": torch.__version__,
              "checkpoint": args.checkpoint, "n": args.n, "eps": eps, "norm": args.norm,
              "repeats": args.repeats,
              **summary, "passes": passes,
              "flops_per_image": {"forward": fwd, "forward_and_input_gradient": grad}}
    suffix = "" if args.norm == "linf" else f"-{args.norm}"
    Path(args.out or Path(__file__).with_name(f"results-autoattack{suffix}.json")).write_text(
        json.dumps(result, indent=2) + "\n")
    print(f"{result['machine']}, torch {torch.__version__}; {args.checkpoint}, first {args.n} test images, "
          f"standard AutoAttack, {args.norm} eps {eps:.4g}, median of {args.repeats}")
    print("| run | robust acc. | seconds | speed-up | " + " | ".join(PARTS) + " |")
    print("|---|---|---|---|" + "---|" * len(PARTS))
    for name, s in summary.items():
        parts = " | ".join(f"{s['parts_s'][k]:.1f}" for k in PARTS)
        print(f"| {name} | {100 * s['accuracy']:.2f}% | "
              f"{s['seconds']:.1f} | {ref / s['seconds']:.2f}x | {parts} |")
    # the reference's speed drifts between rounds: each round's ratio, measured back to back
    if args.repeats > 1:
        print("speed-up per round (reference / ours, each round run back to back): " + "; ".join(
            f"{spec} " + ", ".join(f"{r / o:.2f}x" for r, o in zip(summary["reference"]["all_seconds"],
                                                                   summary[spec]["all_seconds"], strict=True))
            for spec in OURS))
    gap = max(abs(s["accuracy"] - summary["reference"]["accuracy"]) for s in summary.values()) * args.n
    print(f"largest difference from the reference: {gap:.0f} image(s) of {args.n}")
    print(f"\nour parts' network passes (FLOPs per image: forward {fwd / 1e6:.1f} M, with input gradient "
          f"{grad / 1e6:.1f} M); of peak: the time they would take at the peak rate of their own kind of "
          "work (the model's fastest convolution alone, forward / forward + input gradient) over the part's "
          "time; windowed: the multiply-adds of Square's windowed queries (the changed windows' "
          "convolutions and the linear head), counted as they run, at the forward peak")
    print("| run | part | forward images | gradient images | windowed GFLOP | GFLOP | GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|---|---|")
    for spec, info in passes.items():
        pk = info["peak_gflops"]
        for part, q in info["parts"].items():
            print(f"| {spec} (peaks {pk['forward']:.0f} / {pk['input-gradient']:.0f} GFLOP/s) | {part} | "
                  f"{q['forward_images']} | {q['gradient_images']} | {q['windowed_gflop']:.0f} | "
                  f"{q['gflop']:.0f} | {q['gflops']:.0f} | {100 * q['of_peak']:.0f}% |")


if __name__ == "__main__":
    main()
