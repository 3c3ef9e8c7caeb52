"""One prepared GPU check: throughput, the known answer, AutoAttack against the reference, torchrun.

    benchmarks/gpu_check --dataset npz:cifar10.npz --out gpu-check        # on a GPU machine (540 s budget)
    benchmarks/gpu_check --smoke --out /tmp/gpu-check                     # the same code on the CPU, < 1 min
    benchmarks/gpu_check --list                                           # the parts and their time bounds

GPU time comes in short loans, so every part has a time bound and the parts run in the order of what they tell
(throughput first); a part whose bound no longer fits the budget is skipped with a line saying so. Writes
``gpu_check.json`` and ``gpu_check.md`` into ``--out`` after every part, so a run cut short still leaves what
it measured. ``--smoke`` runs every part with tiny shapes on the CPU (the test suite runs it, so the script
cannot rot between loans). See benchmarks/README.md for what to carry to the machine. """

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import agkd_bml
from agkd_bml.config import TrainConfig
from agkd_bml.data import ImageSampler, load_dataset
from agkd_bml.device import device_name, resolve_device
from agkd_bml.fileio import write_text
from agkd_bml.methods import METHODS, MethodContext
from agkd_bml.methods.base import resolve_attack
from agkd_bml.models import build_model
from agkd_bml.models.checkpoint import load_model
from agkd_bml.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
#: the paper's Table 7: seconds per AGKD-BML-2 epoch of WRN-28-10 on CIFAR-10 (one V100)
PAPER_EPOCH_S = 528.0
#: RobustBench's Wong2020Fast entry (CIFAR-10, Linf 8/255, all 10,000 test images)
WONG2020FAST = {"clean": 83.34, "aa": 43.21}


@dataclass(frozen=True, kw_only=True)
class Scale:
    """The shapes of one run of the check: the real one on a GPU, or the smoke test's on the CPU."""

    arch: str
    dataset: str
    batch: int
    repeats: int
    precisions: tuple[str, ...]
    compile: tuple[bool, ...]
    known_arch: str
    known_epochs: int
    known_limit: int | None
    known_aa_n: int
    aa_model: str
    aa_n: int


def real_scale(dataset: str) -> Scale:
    return Scale(arch="wrn-28-10", dataset=dataset, batch=128, repeats=5, precisions=("fp32", "bf16"),
                 compile=(False, True), known_arch="preact-resnet18", known_epochs=15, known_limit=None,
                 known_aa_n=1000, aa_model=str(ROOT / "reproduce/capacity/w64/runs/AT-7-s0/best.pt"),
                 aa_n=500)


SMOKE = Scale(arch="small-cnn", dataset="digits", batch=16, repeats=1, precisions=("fp32",), compile=(False,),
              known_arch="small-cnn", known_epochs=1, known_limit=256, known_aa_n=8, aa_model="", aa_n=8)


def peak_memory(device: torch.device) -> float:
    """Peak memory in GiB since the last reset: the GPU's allocator, or the
    process's resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _timed(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` after one warm-up call (which pays compilation and cuDNN's autotuning)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def throughput(sc: Scale, device: torch.device, deadline: float) -> dict[str, Any]:
    """Images/s of one AGKD-BML-2 and one PGD-AT-7 training step, and of the bare forward+backward pass."""
    data = load_dataset(sc.dataset)
    rows = []
    for precision in sc.precisions:
        for channels_last in (True, False):
            for compiled in sc.compile:
                if time.monotonic() > deadline:
                    rows.append({"skipped": f"{precision}, channels-last {channels_last}, compile "
                                 f"{compiled}: out of time"})
                    continue
                rows.append(_measure(sc, data, device, precision=precision, channels_last=channels_last,
                                     compiled=compiled))
    return {"arch": sc.arch, "batch": sc.batch, "paper_agkd_bml_2_epoch_s_v100": PAPER_EPOCH_S, "rows": rows}


def _measure(sc: Scale, data: Any, device: torch.device, *, precision: str, channels_last: bool,
             compiled: bool) -> dict[str, Any]:
    """One row of :func:`throughput`: the bare pass, then each method's whole step, in one configuration."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = data.x_train[:sc.batch].float().div(255).to(device).contiguous(memory_format=layout)
    y = data.y_train[:sc.batch].to(device)
    torch.manual_seed(0)
    model = build_model(sc.arch, data.spec).to(device, memory_format=layout)
    if compiled:
        model.compile()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dtype = torch.bfloat16 if precision == "bf16" else None
    row: dict[str, Any] = {"precision": precision, "channels_last": channels_last, "compile": compiled}

    def bare() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(x).logits.float().logsumexp(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()

    bare_s = _timed(bare, device, sc.repeats)
    row["bare_images_per_s"] = sc.batch / bare_s
    for label, name, steps in (("agkd-bml-2", "agkd-bml", 2), ("pgd-at-7", "pgd-at", 7)):
        cfg = TrainConfig.of(method=name, steps=steps, arch=sc.arch)
        cls = METHODS[name]
        teacher = (build_model(sc.arch, data.spec).to(device, memory_format=layout).eval()
                   if cls.needs_teacher else None)
        sampler = ImageSampler(data.x_train[:2048], data.y_train[:2048], data.spec.num_classes,
                               data.spec.augment,
                               device) if cls.needs_sampler else None
        method = cls(cfg,
                     MethodContext(num_classes=data.spec.num_classes, attack=resolve_attack(cfg, data.spec),
                                   teacher=teacher, sampler=sampler))
        gen = torch.Generator(device=device).manual_seed(0)

        def step(method: Any = method, gen: torch.Generator = gen) -> None:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = sum(method.loss(model, x, y, gen).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        seconds = _timed(step, device, sc.repeats)
        row[f"{label}_images_per_s"] = sc.batch / seconds
        row[f"{label}_epoch_s"] = 50_000 * seconds / sc.batch
        row[f"{label}_over_bare"] = seconds / bare_s
    return row


def _agkd(args: list[str], timeout: float, *, torchrun: bool = False) -> subprocess.CompletedProcess[str]:
    """The command line in a child process (killed at ``timeout``), as a user runs it."""
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m",
            "agkd_bml",
            "--"] if torchrun else [sys.executable, "-m", "agkd_bml"]
    return subprocess.run([*head, *args], capture_output=True, text=True, timeout=max(timeout, 1), cwd=ROOT)


def known_answer(sc: Scale, device: torch.device, deadline: float, out: Path) -> dict[str, Any]:
    """Wong et al.'s fast AT (RobustBench's Wong2020Fast recipe), then AutoAttack on the first test images."""
    run = out / "known-answer"
    train = ["train", "--method", "fast-at", "--arch", sc.known_arch, "--dataset", sc.dataset, "--epochs",
             str(sc.known_epochs), "--lr-schedule", "cyclic", "--lr", "0.2", "--weight-decay", "5e-4",
             "--amp", "native-bf16" if device.type == "cpu" else "bf16", "--val-n", "0", "--device",
             str(device),
             "--out", str(run), "--no-progress", "--start-if-none"]
    if sc.known_limit:
        train += ["--train-limit", str(sc.known_limit)]
    started = time.perf_counter()
    try:
        done = _agkd(train, deadline - time.monotonic())
    except subprocess.TimeoutExpired:
        return {"skipped": f"training did not finish in its bound ({time.perf_counter() - started:.0f} s)"}
    if done.returncode:
        return {"failed": done.stderr.strip().splitlines()[-1:]}
    model = load_model(run, device)[0].eval()
    data = load_dataset(sc.dataset)
    n = min(sc.known_aa_n, data.x_test.shape[0])
    ev = agkd_bml.evaluate(model, data.x_test[:n], data.y_test[:n], attacks="clean,aa", device=device,
                           batch_size=500 if device.type == "cuda" else 64)
    acc, ci = ev.accuracy, ev.wilson()
    return {"train_s": time.perf_counter() - started, "n": n, "clean": 100 * acc["clean"],
            "aa": 100 * acc["aa"],
            "clean_ci95": [100 * v for v in ci["clean"]], "aa_ci95": [100 * v for v in ci["aa"]],
            "robustbench_wong2020fast": WONG2020FAST}


def autoattack_vs_reference(sc: Scale, device: torch.device, deadline: float,
                            reference: Path) -> dict[str, Any]:
    """``aa`` and ``aa-bf16`` against the reference AutoAttack on the same
    images: per-image agreement, seconds."""
    if not (reference / "autoattack").is_dir():
        return {"skipped": f"reference AutoAttack not found at {reference}"}
    sys.path.insert(0, str(reference))
    from autoattack import AutoAttack as Reference

    if sc.aa_model:
        model = load_model(sc.aa_model, device)[0].eval()
        data = load_dataset(sc.dataset)
    else:  # smoke: a briefly trained digits model
        data = load_dataset("digits")
        torch.manual_seed(0)
        model = build_model("small-cnn", data.spec).to(device).eval()
    n = min(sc.aa_n, data.x_test.shape[0])
    x, y = data.x_test[:n].float().div(255).to(device), data.y_test[:n].to(device)
    eps = data.spec.default_eps
    plain = _Logits(model)
    out: dict[str, Any] = {"model": sc.aa_model or "small-cnn (untrained, smoke)", "n": n}
    start = time.perf_counter()
    ref = Reference(plain, norm="Linf", eps=eps, version="standard", device=str(device), verbose=False)
    ref_adv = ref.run_standard_evaluation(x, y, bs=500)
    with torch.no_grad():
        ref_robust = plain(ref_adv).argmax(1) == y
    out["reference_s"] = time.perf_counter() - start
    for spec in ("aa", "aa-bf16"):
        if time.monotonic() > deadline:
            out[spec] = "skipped: out of time"
            continue
        start = time.perf_counter()
        ours = agkd_bml.attack(model, x.cpu(), y.cpu(), spec, eps=eps, device=device, batch_size=500)
        seconds = time.perf_counter() - start
        out[spec] = {"seconds": seconds, "speedup": out["reference_s"] / seconds,
                     "robust": int(ours.robust.sum()), "reference_robust": int(ref_robust.sum()),
                     "same_per_image": bool(torch.equal(ours.robust, ref_robust.cpu()))}
    return out


class _Logits(torch.nn.Module):
    """Our model as the reference expects it: a module returning the logits tensor."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).logits


def torchrun_path(sc: Scale, device: torch.device, deadline: float, out: Path) -> dict[str, Any]:
    """A one-process torchrun training of a few steps (NCCL on CUDA, gloo on the
    CPU) and a torchrun evaluation."""
    run = out / "torchrun"
    args = ["train", "--method", "pgd-at", "--steps", "2", "--arch", "small-cnn", "--dataset", "digits",
            "--epochs", "1", "--train-limit", "512", "--val-n", "32", "--out", str(run), "--no-progress",
            "--device", "cuda" if device.type == "cuda" else "cpu", "--start-if-none"]
    result: dict[str, Any] = {}
    for label, cmd in (("train", args), ("eval", ["eval", str(run), "--attacks", "clean,pgd-5", "--n", "64",
                                                     "--no-progress"])):
        start = time.perf_counter()
        try:
            done = _agkd(cmd, deadline - time.monotonic(), torchrun=True)
        except subprocess.TimeoutExpired:
            result[label] = "skipped: out of time"
            break
        result[label] = {"ok": done.returncode == 0, "seconds": time.perf_counter() - start,
                         "last_line": (done.stdout.strip() or done.stderr.strip()).splitlines()[-1:]}
    return result


#: (name, time bound in seconds on the GPU, function): in the order of what they tell
PARTS: tuple[tuple[str, int, Callable[..., dict[str, Any]]], ...] = (
    ("throughput", 150, throughput),
    ("known-answer", 240, known_answer),
    ("autoattack-vs-reference", 90, autoattack_vs_reference),
    ("torchrun", 45, torchrun_path),
)


def summary_markdown(report: dict[str, Any]) -> str:
    """The short summary: one section per part, its numbers as they came."""
    lines = [f"# GPU check ({report['device']})", "", f"torch {report['provenance']['torch']}, "
             f"CUDA {report['provenance']['cuda']}, agkd-bml {report['provenance']['agkd_bml']}, "
             f"commit {report['provenance']['commit']}", ""]
    for name, _bound, _fn in PARTS:
        part = report["parts"].get(name)
        lines += [f"## {name}", "", "```json", json.dumps(part, indent=1) if part is not None else "not run",
                  "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu-check", help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget of all parts together")
    p.add_argument("--dataset", default="npz:cifar10.npz",
                   help="CIFAR-10 as npz:PATH or cifar10 (with its files)")
    p.add_argument("--reference", default=str(ROOT.parent / "shared" / "reference" / "auto-attack"),
                   help="the reference AutoAttack's source folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes on the CPU (under a minute): checks the script")
    p.add_argument("--only", default="", help="comma-separated parts to run (default: all)")
    p.add_argument("--list", action="store_true", help="print each part with its time bound and exit")
    args = p.parse_args(argv)
    if args.list:
        for name, bound, fn in PARTS:  # each docstring's first paragraph, its ``literals`` as `literals`
            summary = " ".join(str(fn.__doc__).split("\n\n")[0].split()).replace("``", "`")
            print(f"{name}: at most {bound} s - {summary}")
        return 0
    sc = SMOKE if args.smoke else real_scale(args.dataset)
    device = torch.device("cpu") if args.smoke else resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    begin = time.monotonic()
    report: dict[str, Any] = {"device": device_name(device), "smoke": args.smoke, "budget_s": args.budget_s,
                              "platform": platform.platform(), "provenance": provenance(device), "parts": {}}
    chosen = [n for n in args.only.split(",") if n] or [n for n, _b, _f in PARTS]
    for name, bound, fn in PARTS:
        if name not in chosen:
            continue
        left = args.budget_s - (time.monotonic() - begin)
        if left < bound and not args.smoke:
            report["parts"][name] = {"skipped": f"needs up to {bound} s, {left:.0f} s of the budget left"}
            print(f"{name}: skipped ({left:.0f} s left, bound {bound} s)", file=sys.stderr)
            continue
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        extra = {"out": out} if name in ("known-answer", "torchrun") else {}
        if name == "autoattack-vs-reference":
            extra = {"reference": Path(args.reference)}
        try:
            result = fn(sc, device, time.monotonic() + bound, **extra)
        except Exception as exc:  # noqa: BLE001 - one part's failure must not lose the others' numbers
            result = {"failed": f"{type(exc).__name__}: {exc}"}
        result.update(seconds=time.perf_counter() - start, peak_memory_gib=peak_memory(device))
        report["parts"][name] = result
        print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
        write_text(out / "gpu_check.json", json.dumps(report, indent=2) + "\n")
        write_text(out / "gpu_check.md", summary_markdown(report))
    write_text(out / "gpu_check.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "gpu_check.md", summary_markdown(report))
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}", file=sys.stderr)
    failed = [n for n, r in report["parts"].items() if "failed" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    sys.exit(main())
