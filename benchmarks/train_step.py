"""Training-step and evaluation throughput, measured side by side in one process (issue: speed and scale).

    python -m benchmarks.train_step [--arch small-cnn] [--batch 128] [--repeats 5] [--device auto]

For every method: images/s of one real training step (``Method.loss`` + backward + SGD step), and its
*overhead*: the step time over the time of the bare network passes the method must make (the same number of
forward / forward+backward passes of the same model on the same batch sizes, timed in turns with the step in
one round-robin over all methods, so that load on a shared machine slows all alike). Also the achieved FLOP/s
of each step (FLOPs counted by torch's flop counter over the whole step) over the rate of the model's fastest
convolution run alone, measured in the same run, AGKD-BML-2 over PGD-AT-7, our PGD-20 evaluation against
torchattacks' PGD on a trained checkpoint (``--eval-checkpoint``), our AutoAttack against the same cascade
composed from torchattacks (``--aa-n``), and peak memory. Writes ``benchmarks/results.json`` and prints a
Markdown table; nothing here is a unit test. """

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from agkd_bml.attacks import parse_attacks
from agkd_bml.attacks.torchattacks_adapter import LogitsOnly
from agkd_bml.config import TrainConfig
from agkd_bml.data import DataSpec, ImageSampler
from agkd_bml.data.augment import Augment
from agkd_bml.device import device_name, resolve_device
from agkd_bml.methods import METHODS, MethodContext
from agkd_bml.models import build_model

#: (label, method, attack steps) of the step benchmark.
METHODS_UNDER_TEST = [("standard", "standard", 0), ("pgd-at-7", "pgd-at", 7), ("pgd-at-10", "pgd-at", 10),
                      ("trades-10", "trades", 10), ("agkd-bml-2", "agkd-bml", 2),
                      ("agkd-bml-7", "agkd-bml", 7),
                      ("agkd-bml-10", "agkd-bml", 10)]


def bare_passes(method: str, steps: int) -> list[tuple[str, int]]:
    """The network passes a method's step needs, as (kind, batch multiple): the lower bound of its cost.

    ``infer``: no-grad forward; ``attack``: eval forward + backward to the input only; ``train``: train-mode
    forward + backward to the weights.
    """
    if method == "standard":
        return [("train", 1)]
    if method == "pgd-at":
        return [("attack", 1)] * steps + [("train", 1)]
    if method == "trades":
        return [("infer", 1)] + [("attack", 1)] * steps + [("train", 2)]
    if method == "agkd-bml":  # y_mc, attacks on forward+backward images, teacher on both, student on 3B
        return [("infer", 1)] + [("attack", 2)] * steps + [("infer", 2), ("train", 3)]
    raise ValueError(method)


def _clock(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up."""
    return timed_in_turns([fn], repeats, device)[0]


def timed_in_turns(fns: list[Callable[[], object]], repeats: int, device: torch.device) -> list[float]:
    """Median seconds of each of ``fns``, run in turns (a, b, a, b, ...) after one warm-up each.

    A ratio of two of them is then measured side by side: a burst of load on a shared machine slows both alike
    instead of whichever happened to run at the time. """
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            ts.append(_clock(fn, device))
    return [statistics.median(ts) for ts in times]


def conv_peak(model: torch.nn.Module, x: torch.Tensor, device: torch.device, *,
              bf16: bool = False, kind: str = "train") -> tuple[float, str]:
    """FLOP/s of the fastest of the model's own convolutions run alone, and which.

    ``kind`` is the work timed: ``train`` (forward + backward to weights and input, a training step's),
    ``forward`` (an attack's query) or ``input-gradient`` (forward + backward to the input only, an
    attack's gradient step); ``bf16``: under bf16 autocast, the yardstick of bf16 passes.

    The same kind of work as a training step (these convolutions, this dtype and memory layout), with its
    FLOPs counted by the same counter, so a step's share of it is a fraction of what this machine does with
    that work. A large matmul is a poor yardstick here: on the 2-core test machine oneDNN's channels-last
    convolutions run about 1.5-2x faster than a 4096x4096 fp32 matmul. """
    shapes: dict[str, tuple[torch.nn.Conv2d, torch.Size]] = {}
    def record(name: str) -> Callable[..., None]:
        def hook(mod: torch.nn.Module, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            # returns None: a forward hook's result would replace the output
            shapes[name] = (mod, inp[0].shape)

        return hook

    hooks = [m.register_forward_hook(record(name)) for name,
             m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    best, which = 0.0, ""
    for name, (conv, shape) in shapes.items():
        layer = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                conv.padding,
                                bias=conv.bias is not None).to(device, memory_format=torch.channels_last)
        layer.requires_grad_(kind == "train")
        xi = torch.randn(shape, device=device).contiguous(memory_format=torch.channels_last)
        xi.requires_grad_(True)

        def fn(layer=layer, xi=xi):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                if kind == "forward":
                    with torch.no_grad():
                        return layer(xi)
                out = layer(xi).float().sum()
            if kind == "train":
                out.backward()
            else:
                torch.autograd.grad(out, xi)

        rate = counted_flops(fn) / timed(fn, 5, device)
        if rate > best:
            best, which = (rate,
                           f"{name} {tuple(shape)} -> {conv.out_channels} ch, "
                           f"{conv.kernel_size[0]}x{conv.kernel_size[1]}")
    return best, which


class _GlobalFlops:
    """torch's FlopCounterMode without its per-module tracking, whose backward hooks make
    ``torch.autograd.grad`` on input images (every attack step) fail; the counting itself is torch's."""

    def __enter__(self) -> _GlobalFlops:
        from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode  # pinned torch (pyproject)

        self.counter = FlopCounterMode(display=False)
        self.mode = _FlopCounterMode(self.counter)
        self.mode.__enter__()
        return self

    def __exit__(self, *args: object) -> None:
        self.mode.__exit__(*args)

    def total(self) -> float:
        return float(self.counter.get_total_flops())


def counted_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call of ``fn``: every forward and backward pass, attack steps included."""
    with _GlobalFlops() as flops:
        fn()
    return flops.total()


def compare_pgd20(checkpoint: str, n: int, device: torch.device) -> dict[str, float]:
    """Seconds and robust accuracy of our PGD-20 evaluation and of
    torchattacks' PGD, same model and images."""
    import torchattacks

    from agkd_bml.data import load_dataset, to_float
    from agkd_bml.evaluation import evaluate_attacks
    from agkd_bml.train import load_model

    model, ckpt = load_model(checkpoint, device)
    data = load_dataset(ckpt.config["dataset"])
    x, y = data.x_test[:n], data.y_test[:n]
    eps = data.spec.default_eps
    start = time.perf_counter()
    ours = evaluate_attacks(model, x, y, parse_attacks("pgd-20", eps=eps), batch_size=250, device=device)[0]
    t_ours = time.perf_counter() - start
    ref = torchattacks.PGD(LogitsOnly(model).eval(), eps=eps, alpha=eps / 4, steps=20, random_start=True)
    start = time.perf_counter()
    right = []
    for i in range(0, n, 250):
        xb, yb = to_float(x[i : i + 250]).to(device), y[i : i + 250].to(device)
        adv = ref(xb, yb)
        with torch.no_grad():
            right.append((model(adv).logits.argmax(1) == yb).cpu())
    t_ref = time.perf_counter() - start
    return {"pgd20_ours_s": t_ours, "pgd20_torchattacks_s": t_ref, "pgd20_speedup": t_ref / t_ours,
            "pgd20_ours_accuracy": ours.accuracy,
            "pgd20_torchattacks_accuracy": float(torch.cat(right).float().mean())}


def compare_autoattack(checkpoint: str, n: int, device: torch.device) -> dict[str, float]:
    """Seconds and robust accuracy of our AutoAttack (``aa``, and
    ``aa-bf16``) and of the torchattacks cascade.

    Same model, images, eps and per-sample cascade; both report a point robust only if it is right clean
    and every part fails on it.
    """
    from agkd_bml.data import load_dataset
    from agkd_bml.evaluation import evaluate_attacks
    from agkd_bml.train import load_model

    model, ckpt = load_model(checkpoint, device)
    data = load_dataset(ckpt.config["dataset"])
    x, y = data.x_test[:n], data.y_test[:n]
    out: dict[str, float] = {}
    for spec, key in (("aa", "ours"), ("aa-bf16", "bf16"), ("aa-torchattacks", "torchattacks")):
        attack = parse_attacks(spec, eps=data.spec.default_eps, num_classes=data.spec.num_classes)
        start = time.perf_counter()
        res = evaluate_attacks(model, x, y, attack, device=device, seed=0)[0]
        out[f"aa_{key}_s"], out[f"aa_{key}_accuracy"] = time.perf_counter() - start, res.accuracy
    out["aa_speedup"] = out["aa_torchattacks_s"] / out["aa_ours_s"]
    out["aa_bf16_speedup"] = out["aa_torchattacks_s"] / out["aa_bf16_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(str(__doc__).split("\n\n")[0].split()))
    p.add_argument("--arch", default="small-cnn")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--methods", default=",".join(label for label, _, _ in METHODS_UNDER_TEST),
                   help="comma-separated rows of the step table (default: all)")
    p.add_argument("--eval-checkpoint", default=None,
                   help="a trained checkpoint: time our PGD-20 evaluation "
                        "against torchattacks' PGD on its test set")
    p.add_argument("--eval-n", type=int, default=1000, help="test images for that comparison")
    p.add_argument("--aa-n", type=int, default=0,
                   help="also time our AutoAttack against the torchattacks cascade on this many test images "
                        "of --eval-checkpoint (slow: about 7 minutes per 200 images of a small CNN on 2 "
                        "cores; 0 = skip)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = p.parse_args()
    wanted = args.methods.split(",")
    unknown = set(wanted) - {label for label, _, _ in METHODS_UNDER_TEST}
    if unknown:
        p.error(f"unknown --methods {sorted(unknown)}; choose from "
                f"{[label for label, _, _ in METHODS_UNDER_TEST]}")
    device = resolve_device(args.device)
    torch.manual_seed(0)
    spec = DataSpec(name="bench", num_classes=10, channels=3, size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
                    default_eps=8 / 255, class_names=tuple("0123456789"), augment=Augment())
    # the training loop's layout: channels-last model, teacher and batches
    model = build_model(args.arch, spec).to(device, memory_format=torch.channels_last)
    teacher = build_model(args.arch, spec).to(device, memory_format=torch.channels_last).eval()
    for q in teacher.parameters():
        q.requires_grad_(False)
    B = args.batch
    pool_x = torch.randint(0, 256, (max(1000, 4 * B), 3, 32, 32), dtype=torch.uint8)
    pool_y = torch.arange(pool_x.shape[0]) % 10
    sampler = ImageSampler(pool_x, pool_y, 10, Augment(), device)
    x = (pool_x[:B].float() / 255).to(device).contiguous(memory_format=torch.channels_last)
    y = pool_y[:B].to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator(device=device).manual_seed(0)

    def bare(kind: str, mult: int) -> Callable[[], None]:
        xb = x.repeat(mult, 1, 1, 1).contiguous(memory_format=torch.channels_last)
        if kind == "infer":
            def fn():
                with torch.no_grad():
                    model.eval()(xb)
        elif kind == "attack":
            def fn():
                xa = xb.clone().requires_grad_(True)
                loss = model.eval()(xa).logits.sum()
                torch.autograd.grad(loss, xa)
        else:
            def fn():
                model.train()(xb).logits.sum().backward()
                opt.zero_grad(set_to_none=True)
        return fn

    bare_fns = {(k, m): bare(k, m) for k in ("infer", "attack", "train") for m in (1, 2, 3)}
    peak, peak_op = conv_peak(model, x, device)
    chosen = [row for row in METHODS_UNDER_TEST if row[0] in wanted]
    fns: list[Callable[[], object]] = []
    step_flops: list[float] = []
    for _label, method, steps in chosen:
        cfg = TrainConfig.of(method=method, steps=steps or None, dataset="digits")
        ctx = MethodContext(num_classes=10, attack=8 / 255,
                            teacher=teacher if METHODS[method].needs_teacher else None, sampler=sampler)
        m = METHODS[method](cfg, ctx)

        def step(m=m):
            model.train()
            loss = sum(m.loss(model, x, y, gen).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        passes = bare_passes(method, steps)

        def bare_step(passes=passes):
            for p in passes:
                bare_fns[p]()

        fns += [step, bare_step]
        step_flops.append(counted_flops(step))
    # every step and every bare pass in one round-robin: any ratio in the table is measured side by side
    times = timed_in_turns(fns, args.repeats, device)
    rows = []
    for i, (label, _method, _steps) in enumerate(chosen):
        t, t_bare = times[2 * i], times[2 * i + 1]
        flops = step_flops[i]
        rows.append({"method": label, "images_per_s": B / t, "step_s": t, "bare_s": t_bare,
                     "overhead": t / t_bare,
                     "flops_per_s": flops / t, "peak_fraction": flops / t / peak})
    by = {r["method"]: r for r in rows}
    both = "agkd-bml-2" in by and "pgd-at-7" in by
    ratio = by["agkd-bml-2"]["step_s"] / by["pgd-at-7"]["step_s"] if both else None
    bare_ratio = by["agkd-bml-2"]["bare_s"] / by["pgd-at-7"]["bare_s"] if both else None

    # evaluation: our PGD-20 (the eval path: clean-correct points only, per-image early stop) against
    # torchattacks' PGD on the same trained model and real test images
    evals = {}
    if args.eval_checkpoint:
        evals = compare_pgd20(args.eval_checkpoint, args.eval_n, device)
        if args.aa_n:
            evals |= compare_autoattack(args.eval_checkpoint, args.aa_n, device)
    peak_mem = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    result = {"machine": f"{platform.machine()} {device_name(device)}", "torch": torch.__version__,
              "arch": args.arch,
              "batch": B, "conv_peak_flops": peak, "conv_peak_op": peak_op, "rows": rows,
              "agkd_bml2_over_pgd_at7": ratio, "bare_ratio": bare_ratio, **evals,
              "peak_memory_bytes": peak_mem}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    print(f"{result['machine']}, torch {torch.__version__}, {args.arch}, batch {B}, median of "
          f"{args.repeats}; peak {peak / 1e9:.1f} GFLOP/s (the fastest of the model's convolutions alone, "
          f"fwd+bwd: {peak_op})")
    print("| method | images/s | step ms | bare passes ms | overhead | GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['images_per_s']:.0f} | {1e3 * r['step_s']:.1f} | "
              f"{1e3 * r['bare_s']:.1f} | "
              f"{r['overhead']:.2f}x | {r['flops_per_s'] / 1e9:.1f} | {100 * r['peak_fraction']:.0f}% |")
    if both:
        print(f"\nAGKD-BML-2 / PGD-AT-7 step time: {ratio:.2f} (their bare passes: {bare_ratio:.2f}; "
              "paper: 528/502 = 1.05)")
    if evals:
        print(f"PGD-20 evaluation on {args.eval_n} test images of {args.eval_checkpoint}: ours "
              f"{evals['pgd20_ours_s']:.1f}s (robust accuracy {100 * evals['pgd20_ours_accuracy']:.2f}%), "
              f"torchattacks {evals['pgd20_torchattacks_s']:.1f}s "
              f"({100 * evals['pgd20_torchattacks_accuracy']:.2f}%) -> {evals['pgd20_speedup']:.2f}x")
    if "aa_speedup" in evals:
        print(f"AutoAttack (standard) on {args.aa_n} test images: ours {evals['aa_ours_s']:.1f}s (robust "
              f"accuracy {100 * evals['aa_ours_accuracy']:.2f}%), torchattacks cascade "
              f"{evals['aa_torchattacks_s']:.1f}s "
              f"({100 * evals['aa_torchattacks_accuracy']:.2f}%) -> {evals['aa_speedup']:.2f}x")
        print("AutoAttack with bf16 search (aa-bf16, successes confirmed in fp32): "
              f"{evals['aa_bf16_s']:.1f}s ({100 * evals['aa_bf16_accuracy']:.2f}%) -> "
              f"{evals['aa_bf16_speedup']:.2f}x the torchattacks cascade")
    print(f"peak memory: {peak_mem / 2**20:.0f} MiB ({'max allocated' if device.type == 'cuda' else 'RSS'})")


if __name__ == "__main__":
    main()
