"""``agkd-bml train``, ``presets`` and ``methods``: the training options come
from the config and the methods."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

from agkd_bml.cli.options import add_progress, command_handler, number
from agkd_bml.config import FIELDS, HyperParam
from agkd_bml.methods import METHODS, PARAMS, methods_using
from agkd_bml.train import preset_names, preset_path, resolve, train


def _option(p: argparse.ArgumentParser, name: str, type_: str, default: Any, help: str, **extra: Any) -> None:
    """One ``--name`` option; unset options stay None so that presets and files below them show through."""
    text = help
    if "default" not in text:  # help texts that explain their default say it themselves
        shown = "[]" if default is dataclasses.MISSING else "none" if default is None else default
        text += f" (default: {shown})"
    kw: dict[str, Any] = {"default": None, "help": text}
    if type_.startswith("bool"):
        kw["action"] = argparse.BooleanOptionalAction
    elif type_.startswith("list"):
        kw.update(nargs=extra.get("nargs", "*"), type=int, metavar="N")
    elif type_.startswith("int"):
        kw.update(type=int, metavar="N")
    elif type_.startswith("float"):
        kw.update(type=number, metavar="X")
    else:
        kw["metavar"] = name.upper()
    p.add_argument("--" + name.replace("_", "-"), **kw)


def _param_help(p: HyperParam) -> str:
    users = methods_using(p.name)
    return f"{p.help} [{', '.join(users)}]" if len(users) < len(METHODS) else p.help


def add_config_options(p: argparse.ArgumentParser) -> None:
    """One option per :class:`TrainConfig` field, then one per method hyper-parameter (from the registry)."""
    for f in FIELDS.values():
        if not f.metadata.get("cli", True):
            continue
        meta = dict(f.metadata)
        if "per_method" in meta:  # a default that each method sets: listed from the registry
            values = {m: getattr(cls, meta["per_method"]) for m, cls in METHODS.items()}
            listed = ", ".join(f"{m} {v:g}" for m, v in values.items() if v)
            meta["help"] += f" (default per method: {listed}; 0 for the others)"
        _option(p, f.name, str(f.type), f.default, **meta)
    for hp in PARAMS.values():
        _option(p, hp.name, type(hp.default).__name__, hp.default, help=_param_help(hp))


def run_train(
    *, preset: str | None, config: str | None, overrides: dict[str, Any], resume: bool = False,
    start_if_none: bool = False,
    overwrite: bool = False, progress: bool = True, dry_run: bool = False,
) -> Path:
    """``agkd-bml train``: resolve the config (defaults < preset < file < overrides) and train it."""
    cfg = resolve(preset, config, overrides)
    path = train(cfg, resume=resume or start_if_none, start_if_none=start_if_none, overwrite=overwrite,
                 progress=progress, dry_run=dry_run)
    if not dry_run and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        print(f"checkpoint: {path}", file=sys.stderr)
    return path


def _train(args: argparse.Namespace) -> int:
    names = [n for n in (*FIELDS, *PARAMS) if n != "params"]
    overrides = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    run_train(preset=args.preset, config=args.config, overrides=overrides, resume=args.resume,
              start_if_none=args.start_if_none, overwrite=args.overwrite, progress=not args.no_progress,
              dry_run=args.dry_run)
    return 0


def list_presets() -> None:
    """``agkd-bml presets``: each shipped preset with its whole description
    (the comment lines that open it)."""
    for name in preset_names():
        lines = preset_path(name).read_text().splitlines()
        opening = itertools.takewhile(lambda ln: ln.startswith("#"), lines)
        text = " ".join(ln.lstrip("# ").strip() for ln in opening)
        print(f"{name}\n" + textwrap.fill(text, width=100, initial_indent="    ", subsequent_indent="    ",
                                                  break_on_hyphens=False))


def list_methods() -> None:
    """``agkd-bml methods``: each method with its default attack steps and what it needs."""
    for name, cls in METHODS.items():
        teacher = ", needs --teacher" if cls.needs_teacher else ""
        print(f"{name:10s} [{cls.default_steps}-step attacks by default{teacher}] {cls.summary}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train", help="train a model with one method",
        description="Train a model. Values come from the defaults, then --preset, "
        "then --config FILE.yaml, then the options given here. The run directory gets "
        "config.yaml, metrics.jsonl (one JSON line per epoch) and atomic checkpoints "
        "last.pt / prev.pt. Options marked [methods] apply to those methods only.",
    )
    t.add_argument("--preset", help="a shipped preset (see `agkd-bml presets`)")
    t.add_argument("--config", metavar="FILE", help="a YAML file of options (keys as below, with _ or -)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest checkpoint (an error where it has none)")
    t.add_argument("--start-if-none", action="store_true",
                   help="with or without --resume: resume the run in "
                        "--out, or start it where it has no checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a finished or unfinished run in --out")
    add_progress(t, "no progress bar (log lines only)")
    t.add_argument("--dry-run", action="store_true",
                   help="check config, data, teacher and run directory, then stop")
    add_config_options(t)
    t.set_defaults(handler=_train)
    for name, what, fn in (("presets", "the shipped presets", list_presets),
                           ("methods", "the training methods", list_methods)):
        sub.add_parser(name, help=f"list {what}").set_defaults(handler=command_handler(fn))
