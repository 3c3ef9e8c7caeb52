"""Evaluating run folders and model files by path, into result folders: the library behind ``agkd-bml eval``,
``curves`` and ``audit`` (the CLI only parses their options).

Each function loads its models through :class:`~agkd_bml.evaluation.loader.ModelLoader` (our checkpoints, or
``py:`` factories, exported programs and TorchScript files), prints what it
measured and writes its tables. """

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from agkd_bml import distributed
from agkd_bml.attacks import TransferAttack, fmt_eps, full_length, parse_attacks
from agkd_bml.errors import UserError
from agkd_bml.evaluation.audit import audit, verdict, write_audit
from agkd_bml.evaluation.checks import checked_evaluation, model_flags, warn_stderr
from agkd_bml.evaluation.curves import Curves, accuracy_curves, write_curves
from agkd_bml.evaluation.loader import EvalOptions, ModelLoader, require_positive
from agkd_bml.evaluation.robust import AttackResult
from agkd_bml.evaluation.state import EvalState
from agkd_bml.evaluation.table import format_table, write_tables
from agkd_bml.models.external import is_external
from agkd_bml.provenance import provenance, tensor_digest


def evaluate_checkpoints(
    checkpoints: Sequence[str], *, attacks: str = "clean,fgsm,pgd-20", step_size: float | None = None,
    restarts: int = 1, targeted: bool = False, last_iterate: bool = False, out: str | None = None,
    state: str | None = None, names: Sequence[str] | None = None, options: EvalOptions = EvalOptions(),
) -> dict[str, list[AttackResult]]:
    """``agkd-bml eval``: each checkpoint (or foreign model) on the test set of
    its dataset (or ``options.dataset``).

    ``names``: the rows' names, one per checkpoint (default: the run folder's or the factory's name).

    ``last_iterate``: the PGD-family attacks score each image at their last iterate (the protocol of the
    paper's and the baselines' code) instead of at the first iterate that fools the model (ours: never
    weaker). Both are offered so that a table can show how much of a gap comes from the protocol. ``state``
    (default ``OUT/state`` with ``out``): per-sample results saved as they come, so the same command run again
    after a crash continues where it stopped and prints the same table. """
    require_positive(n=options.n, batch_size=options.batch_size, restarts=restarts)
    job, device = distributed.setup(options.device)  # under torchrun, each rank attacks every world-th batch
    try:
        return _evaluate(checkpoints, attacks=attacks, step_size=step_size, restarts=restarts,
                         targeted=targeted,
                         last_iterate=last_iterate, out=out, state=state, names=names,
                         options=dataclasses.replace(options, device=device,
                                                     progress=options.progress and job.main),
                         job=job)
    finally:
        distributed.teardown(job)


def check_out_attacks(out: Path, attacks: Sequence[str]) -> None:
    """Refuse an ``--out`` whose tables hold attacks this command would drop (it rewrites them whole).

    Each (model, attack) result is kept in ``OUT/state``, so naming the earlier attacks too costs nothing:
    they are read back, not run again.
    """
    summary = out / "eval.json"
    if not summary.is_file():
        return
    try:
        before = {r["attack"] for r in json.loads(summary.read_text())["results"]} - {"worst-case"}
    except (ValueError, KeyError, TypeError):
        return  # not our file's shape: it is replaced as any stale file is
    dropped = sorted(before - set(attacks))
    if dropped:
        raise UserError(f"{out} holds tables with {', '.join(dropped)}, which --attacks {','.join(attacks)} "
                        f"would drop: add them (--attacks {','.join([*attacks, *dropped])}; finished results "
                        f"are read back from {out / 'state'}, not rerun) or give another --out")


def _evaluate(
    checkpoints: Sequence[str], *, attacks: str, step_size: float | None, restarts: int, targeted: bool,
    last_iterate: bool, out: str | None, state: str | None, options: EvalOptions, job: distributed.Dist,
    names: Sequence[str] | None = None,
) -> dict[str, list[AttackResult]]:
    say = print if job.main else _quiet
    loader = ModelLoader(options) if job.main else ModelLoader(options, note=_quiet)
    # Fail on a bad spec (or source checkpoint) before any work.
    # (any budget checks the specs: each model's own is resolved below, from its dataset)
    parse_attacks(attacks, eps=options.eps if options.eps is not None else 1.0, load_source=loader.source,
                  norm=options.norm)
    # the threat model is in every point's key (as the attack is), so L-inf and L2 points may share a folder
    settings = {"n": options.n, "eps": options.eps, "seed": options.seed, "batch_size": options.batch_size,
                "dataset": options.dataset, "weights": options.weights, "step_size": step_size,
                "restarts": restarts,
                "targeted": targeted, "last_iterate": last_iterate}
    saved = EvalState(state or f"{out}/state", settings) if (state or out) else None
    rows: dict[str, list[AttackResult]] = {}
    flags: dict[str, list[str]] = {}
    where: dict[str, str] = {}  #: the dataset of each row
    images: dict[str, str] = {}  #: the fingerprint of each row's test images and labels
    if names and len(names) != len(checkpoints):
        raise UserError(f"--name is given {len(names)} time(s) for {len(checkpoints)} model(s): give one per "
                        "model")
    if out:
        check_out_attacks(Path(out), [a.name for a in parse_attacks(attacks, eps=1.0, norm=options.norm)])
    for i, path in enumerate(checkpoints):
        label, model, data, x, y = loader.model(path, names[i] if names else None)
        images[label] = tensor_digest(x, y)
        parsed = parse_attacks(
            attacks, eps=loader.eps(data), num_classes=data.spec.num_classes, step_size=step_size,
            restarts=restarts, targeted=targeted, load_source=loader.source, norm=options.norm,
        )
        if last_iterate:
            parsed = [full_length(a) for a in parsed]
        for attack in parsed:
            if isinstance(attack, TransferAttack):
                loader.check_source(attack.source_path, data.spec)
        where[label] = data.spec.name
        start = time.perf_counter()
        rows[label], flags[label] = checked_evaluation(
            model, x, y, parsed, num_classes=data.spec.num_classes, label=label, device=loader.device,
            warn=warn_stderr if job.main else None, batch_size=options.batch_size, seed=options.seed,
            progress=options.progress, state=saved)
        ranks = f" x {job.world} processes" if job.enabled else ""
        say(f"{label}: evaluated in {time.perf_counter() - start:.1f}s on {loader.device}{ranks}")
    # foreign models have only the weights they were given: the last / best / EMA note is about our runs
    weights = options.weights if not all(is_external(p) for p in checkpoints) else None
    say(format_table(rows, weights, loader.foreign))
    if out and job.main:
        made_by = provenance(loader.device, ",".join(sorted(set(images.values()))))
        for f in write_tables(rows, out, weights=weights, flags=flags, datasets=where, foreign=loader.foreign,
                              provenance=made_by):
            print(f"wrote {f}", file=sys.stderr)
    return rows


def _quiet(*_args: object, **_kw: object) -> None:
    """``print`` on ranks other than 0."""


def curves(checkpoints: Sequence[str], *, out: str = "curves",
           options: EvalOptions = EvalOptions()) -> dict[str, Curves]:
    """``agkd-bml curves``: accuracy vs PGD steps and vs eps for each checkpoint, plotted and as CSV."""
    require_positive(n=options.n, batch_size=options.batch_size)
    loader = ModelLoader(options)
    result: dict[str, Curves] = {}
    for path in checkpoints:
        label, model, data, x, y = loader.model(path)
        start = time.perf_counter()
        result[label] = c = accuracy_curves(model, x, y, eps=loader.eps(data), batch_size=options.batch_size,
                                            device=loader.device, seed=options.seed,
                                            progress=options.progress,
                                            desc=f"{label} ")
        steps = ", ".join(f"{k}: {100 * r.accuracy:.1f}" for k, r in c.by_steps)
        budgets = ", ".join(f"{fmt_eps(e) if e else 0}: {100 * r.accuracy:.1f}" for e, r in c.by_eps)
        print(f"{label} ({time.perf_counter() - start:.0f}s, n={x.shape[0]})\n  PGD steps -> accuracy %: "
              f"{steps}\n  eps (PGD-20) -> accuracy %: {budgets}")
    for f in write_curves(result, out):
        print(f"wrote {f}", file=sys.stderr)
    return result


def audit_checkpoint(
    checkpoint: str, *, source: str | None = None, square_queries: int = 1000, spsa_steps: int = 0,
    tolerance: float = 0.01, out: str | None = None, options: EvalOptions = EvalOptions(n=500),
) -> int:
    """``agkd-bml audit``: gradient-masking checks; returns the exit code (1 when one fails)."""
    require_positive(n=options.n, batch_size=options.batch_size, square_queries=square_queries)
    if spsa_steps < 0 or not 0 <= tolerance < 1:
        raise UserError("--spsa-steps must be >= 0 and --tolerance in [0, 1)")
    loader = ModelLoader(options)
    source_model = loader.source(source) if source else None
    label, model, data, x, y = loader.model(checkpoint)
    if source:
        loader.check_source(source, data.spec)
    eps = loader.eps(data)
    if not 0 < eps <= 1:
        raise UserError(f"--eps must be in (0, 1]; got {eps}")
    start = time.perf_counter()
    checks = audit(model, x, y, eps=eps, num_classes=data.spec.num_classes, source=source_model,
                   source_name=source or "source", square_queries=square_queries, spsa_steps=spsa_steps,
                   tolerance=tolerance, batch_size=options.batch_size, device=loader.device,
                   seed=options.seed,
                   progress=options.progress)
    flags = model_flags(model, x, y, num_classes=data.spec.num_classes, device=loader.device)
    lines = [f"audit of {label} ({loader.foreign.get(label, checkpoint)}), "
             f"{time.perf_counter() - start:.0f}s on {loader.device}:"]
    lines += [c.line() for c in checks] + [f"WARN  {f}" for f in flags] + [verdict(checks, x.shape[0], eps)]
    text = "\n".join(lines)
    print(text)
    if out:
        for f in write_audit(checks, text, out):
            print(f"wrote {f}", file=sys.stderr)
    return 1 if any(c.passed is False for c in checks) else 0
