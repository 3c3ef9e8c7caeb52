"""``agkd-bml eval``, ``curves`` and ``audit``: robust accuracy, accuracy curves and the masking audit."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from agkd_bml import distributed
from agkd_bml.attacks import TransferAttack, fmt_eps, full_length, parse_attacks, spec_help
from agkd_bml.cli.options import add_eval_options, command_handler, number
from agkd_bml.errors import UserError
from agkd_bml.evaluation import (
    AttackResult,
    Curves,
    EvalOptions,
    EvalState,
    ModelLoader,
    accuracy_curves,
    audit,
    format_table,
    require_positive,
    verdict,
    write_audit,
    write_curves,
    write_tables,
)
from agkd_bml.evaluation.checks import checked_evaluation, model_flags, warn_stderr
from agkd_bml.models.external import is_external
from agkd_bml.provenance import provenance, tensor_digest


def evaluate_checkpoints(
    checkpoints: Sequence[str], *, attacks: str = "clean,fgsm,pgd-20", step_size: float | None = None,
    restarts: int = 1, targeted: bool = False, last_iterate: bool = False, out: str | None = None,
    state: str | None = None, names: Sequence[str] | None = None, options: EvalOptions = EvalOptions(),
) -> dict[str, list[AttackResult]]:
    """``agkd-bml eval``: each checkpoint (or foreign model) on the test set of its dataset (or ``options.dataset``).

    ``names``: the rows' names, one per checkpoint (default: the run folder's or the factory's name).

    ``last_iterate``: the PGD-family attacks score each image at their last iterate (the protocol of the
    paper's and the baselines' code) instead of at the first iterate that fools the model (ours: never
    weaker). Both are offered so that a table can show how much of a gap comes from the protocol.
    ``state`` (default ``OUT/state`` with ``out``): per-sample results saved as they come, so the same
    command run again after a crash continues where it stopped and prints the same table.
    """
    require_positive(n=options.n, batch_size=options.batch_size, restarts=restarts)
    job, device = distributed.setup(options.device)  # under torchrun, each rank attacks every world-th batch
    try:
        return _evaluate(checkpoints, attacks=attacks, step_size=step_size, restarts=restarts, targeted=targeted,
                         last_iterate=last_iterate, out=out, state=state, names=names,
                         options=dataclasses.replace(options, device=device, progress=options.progress and job.main),
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
        raise UserError(f"{out} holds tables with {', '.join(dropped)}, which --attacks {','.join(attacks)} would drop: "
                        f"add them (--attacks {','.join([*attacks, *dropped])}; finished results are read back from "
                        f"{out / 'state'}, not rerun) or give another --out")


def _evaluate(
    checkpoints: Sequence[str], *, attacks: str, step_size: float | None, restarts: int, targeted: bool,
    last_iterate: bool, out: str | None, state: str | None, options: EvalOptions, job: distributed.Dist,
    names: Sequence[str] | None = None,
) -> dict[str, list[AttackResult]]:
    say = print if job.main else _quiet
    loader = ModelLoader(options, **({} if job.main else {"note": _quiet}))
    # Fail on a bad spec (or source checkpoint) before any work.
    # (any budget checks the specs: each model's own is resolved below, from its dataset)
    parse_attacks(attacks, eps=options.eps if options.eps is not None else 1.0, load_source=loader.source,
                  norm=options.norm)
    # the threat model is in every point's key (as the attack is), so L-inf and L2 points may share a folder
    settings = {"n": options.n, "eps": options.eps, "seed": options.seed, "batch_size": options.batch_size,
                "dataset": options.dataset, "weights": options.weights, "step_size": step_size, "restarts": restarts,
                "targeted": targeted, "last_iterate": last_iterate}
    saved = EvalState(state or f"{out}/state", settings) if (state or out) else None
    rows: dict[str, list[AttackResult]] = {}
    flags: dict[str, list[str]] = {}
    where: dict[str, str] = {}  #: the dataset of each row
    images: dict[str, str] = {}  #: the fingerprint of each row's test images and labels
    if names and len(names) != len(checkpoints):
        raise UserError(f"--name is given {len(names)} time(s) for {len(checkpoints)} model(s): give one per model")
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


def curves(checkpoints: Sequence[str], *, out: str = "curves", options: EvalOptions = EvalOptions()) -> dict[str, Curves]:
    """``agkd-bml curves``: accuracy vs PGD steps and vs eps for each checkpoint, plotted and as CSV."""
    require_positive(n=options.n, batch_size=options.batch_size)
    loader = ModelLoader(options)
    result: dict[str, Curves] = {}
    for path in checkpoints:
        label, model, data, x, y = loader.model(path)
        start = time.perf_counter()
        result[label] = c = accuracy_curves(model, x, y, eps=loader.eps(data), batch_size=options.batch_size,
                                            device=loader.device, seed=options.seed, progress=options.progress,
                                            desc=f"{label} ")
        steps = ", ".join(f"{k}: {100 * r.accuracy:.1f}" for k, r in c.by_steps)
        budgets = ", ".join(f"{fmt_eps(e) if e else 0}: {100 * r.accuracy:.1f}" for e, r in c.by_eps)
        print(f"{label} ({time.perf_counter() - start:.0f}s, n={x.shape[0]})\n  PGD steps -> accuracy %: {steps}"
              f"\n  eps (PGD-20) -> accuracy %: {budgets}")
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
                   tolerance=tolerance, batch_size=options.batch_size, device=loader.device, seed=options.seed,
                   progress=options.progress)
    flags = model_flags(model, x, y, num_classes=data.spec.num_classes, device=loader.device)
    lines = [f"audit of {label} ({loader.foreign.get(label, checkpoint)}), {time.perf_counter() - start:.0f}s on "
             f"{loader.device}:"]
    lines += [c.line() for c in checks] + [f"WARN  {f}" for f in flags] + [verdict(checks, x.shape[0], eps)]
    text = "\n".join(lines)
    print(text)
    if out:
        for f in write_audit(checks, text, out):
            print(f"wrote {f}", file=sys.stderr)
    return 1 if any(c.passed is False for c in checks) else 0


CHECKPOINTS_HELP = ("checkpoint files or run directories of this project, or any model: py:FILE.py:FACTORY "
                    "(or py:package.module:FACTORY; runs your code) with --model-weights, an exported program "
                    "(.pt2, torch.export.save) or a TorchScript file; foreign models need --dataset and take "
                    "inputs in [0, 1] (else add --normalize)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="robust accuracy of checkpoints under attacks (Table 1)",
                       description="Evaluate checkpoints on the test set of the dataset they were trained on. "
                       "A point counts as robust only if it is right clean and under the attack; the table "
                       "gives each accuracy with its 95% Wilson interval and every attack's settings.")
    e.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help=CHECKPOINTS_HELP)
    e.add_argument("--attacks", default="clean,fgsm,pgd-20", help=f"comma-separated specs. {spec_help()}")
    e.add_argument("--step-size", type=number, default=None, help="override the gradient attacks' step size")
    e.add_argument("--restarts", type=int, default=1, help="random restarts of PGD / CW")
    e.add_argument("--targeted", action="store_true",
                   help="gradient attacks target each image's most confusing class instead of being untargeted")
    e.add_argument("--last-iterate", action="store_true",
                   help="score each image at the last PGD iterate, as the paper's code does (default: at the first "
                   "iterate that fools the model, which is never weaker)")
    e.add_argument("--out", default=None, help="also write the table as eval.md, eval.csv, eval.json here (and save "
                   "the evaluation's progress in OUT/state, so the same command resumes after a crash)")
    e.add_argument("--state", metavar="DIR", default=None,
                   help="save per-sample results here as they are computed (default with --out: OUT/state); the "
                   "same command run again skips finished work; a folder written with other settings is refused")
    e.add_argument("--name", dest="names", metavar="NAME", action="append", default=None,
                   help="the row's name, once per CHECKPOINT in order (default: the run folder's or factory's name)")
    e.add_argument("--norm", choices=("linf", "l2"), default="linf",
                   help="threat model of every attack: linf (default; eps default the dataset's, 8/255 on CIFAR-10) "
                   "or l2 (eps default 0.5 on 3x32x32 images, scaled by sqrt(pixels) on others; FGSM is then FGM, "
                   "PGD / CW / BIM take normalised-gradient steps of eps/4, aa is AutoAttack's L2 version)")
    add_eval_options(e, foreign=True)
    e.set_defaults(handler=command_handler(evaluate_checkpoints))

    c = sub.add_parser("curves", help="accuracy vs PGD steps and vs eps (Figure 5), plotted",
                       description="PGD-k accuracy for k in 1..100 at the dataset's eps, and PGD-20 accuracy for "
                       "eps from 0 to 2.5x the dataset's (0..20/255 on CIFAR-10); writes curves.csv, "
                       "curves.png and curves.pdf.")
    c.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help=CHECKPOINTS_HELP)
    c.add_argument("--out", default="curves", help="folder for curves.csv / .png / .pdf (default: ./curves)")
    add_eval_options(c, foreign=True)
    c.set_defaults(handler=command_handler(curves))

    a = sub.add_parser("audit", help="gradient-masking checks with pass/fail lines; exit code 1 on a failure",
                       description="Checks that robustness is not an artefact of masked gradients: non-zero "
                       "input gradients; PGD beats FGSM; accuracy non-increasing in steps and in eps; an "
                       "unbounded attack reaches ~0; PGD has converged (more steps / restarts change little); "
                       "gradient-free attacks (Square, SpsaAttack) and transfer from --source are no stronger than "
                       "PGD. Exit code 0 when all pass, 1 when one fails, 2 on bad input.")
    a.add_argument("checkpoint", metavar="CHECKPOINT", help=CHECKPOINTS_HELP.replace("files or run directories", "file or run directory"))
    a.add_argument("--source", default=None, metavar="CHECKPOINT",
                   help="a different model (e.g. the clean teacher) to craft transfer AEs on")
    a.add_argument("--square-queries", type=int, default=1000, help="queries of the Square attack (default: 1000)")
    a.add_argument("--spsa-steps", type=int, default=0, help="also run SpsaAttack with this many iterations (slow)")
    a.add_argument("--tolerance", type=number, default=0.01,
                   help="accuracy difference (fraction) a check tolerates (default: 0.01 = 1 point)")
    a.add_argument("--out", default=None, help="also write audit.md and audit.json here")
    add_eval_options(a, n=500, foreign=True)
    a.set_defaults(handler=command_handler(audit_checkpoint, status=True))
