"""The edge between argparse and the typed command functions, and the options several commands share.

Each command is a function with keyword-only, typed parameters (callable from Python, by the other commands
and by tests); its ``add_parser`` declares the same names as options. :func:`call` is the one adapter from
parsed arguments to such a function: it passes each parameter whose name is an option, ``progress`` from
``--no-progress``, and ``options`` (:class:`EvalOptions`) from the shared options. """

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Callable
from fractions import Fraction
from typing import Any, NoReturn

from agkd_bml.evaluation import EvalOptions
from agkd_bml.models.checkpoint import WEIGHTS


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = (action.default not in (None, False, argparse.SUPPRESS) and
                 not isinstance(action.default, bool))
        if shown and action.option_strings and "default" not in text and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (and exit code 2), and every option shows its default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def number(text: str) -> float:
    """A float that may be written as a fraction, e.g. ``8/255``."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (write e.g. 0.031 or 8/255)") from exc


def add_progress(p: argparse.ArgumentParser, text: str = "no progress bars") -> None:
    p.add_argument("--no-progress", action="store_true", help=text)


def add_eval_options(p: argparse.ArgumentParser, n: int | None = None, *, data: bool = True,
                     foreign: bool = False) -> None:
    """The :class:`EvalOptions` as options (``data=False``: without --n, --dataset and --data-dir;
    ``foreign``: with --model-weights and --normalize, for commands that take models of any origin)."""
    if data:
        p.add_argument("--n", type=int, default=n,
                       help=f"use the first N test images (default: {n if n else 'all'})")
    p.add_argument("--batch-size", type=int, default=256, help="images per attacked batch")
    p.add_argument("--eps", type=number, default=None,
                   help="the attack budget (default: the dataset's, e.g. 8/255 for L-inf on CIFAR-10)")
    p.add_argument("--seed", type=int, default=0, help="seed of random starts and library attacks")
    if data:
        p.add_argument("--dataset", default=None, help="evaluate on this dataset instead of the checkpoint's")
        p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--weights", default="last", choices=WEIGHTS,
                   help="which weights of each run: last (last.pt), best (best.pt: best held-out PGD "
                        "accuracy, clean accuracy for standard runs, runs trained with --val-split) or ema "
                        "(the moving average of runs trained with --ema); default: last")
    if foreign:
        p.add_argument("--model-weights", metavar="FILE", action="append", default=None,
                       help="a state dict (torch.save, loaded with weights_only=True) for the py: factories' "
                            "models: "
                            "once for all of them, or repeated, one per py: model in their order; also under "
                            "a state_dict/model/net key, and saved from nn.DataParallel (module. keys)")
        p.add_argument("--normalize", metavar="MEAN,STD", default=None,
                       help="for a foreign model that expects normalised inputs: `dataset` (the data's own "
                            "mean and std), MEAN,STD, or one mean per channel then one std per channel")
    add_progress(p)


def eval_options(args: argparse.Namespace) -> EvalOptions:
    """The shared options of a parsed command line (absent ones keep their defaults)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvalOptions) if hasattr(args, f.name)}
    if "model_weights" in given:
        given["model_weights"] = tuple(given["model_weights"] or ())
    return EvalOptions(**given, progress=not args.no_progress)


#: parsed arguments that are not a command function's parameters: the
#: parser's own, and those :func:`call` maps
GLOBAL_OPTIONS = frozenset({"command", "handler", "debug", "no_progress"})


def unmatched_options(fn: Callable[..., Any], dests: set[str]) -> set[str]:
    """The options (argparse ``dest`` names) that no parameter of ``fn`` takes: each would be parsed and then
    silently dropped, so the command ran with the parameter's default instead of what the user asked for."""
    params = set(inspect.signature(fn).parameters)
    shared = {f.name for f in dataclasses.fields(EvalOptions)} if "options" in params else set()
    return dests - params - shared - GLOBAL_OPTIONS


def call(fn: Callable[..., Any], args: argparse.Namespace) -> Any:
    """Call a command function with the parsed arguments its parameters name (every option must name one)."""
    unmatched = unmatched_options(fn, set(vars(args)))
    if unmatched:  # a programming error, not the user's: say which option lost its parameter
        raise TypeError(f"{fn.__name__} takes no parameter for option(s) {', '.join(sorted(unmatched))}")
    params = inspect.signature(fn).parameters
    kwargs = {name: getattr(args, name) for name in params if hasattr(args, name)}
    if "progress" in params:
        kwargs["progress"] = not args.no_progress
    if "options" in params:
        kwargs["options"] = eval_options(args)
    return fn(**kwargs)


def command_handler(fn: Callable[..., Any], *, status: bool = False) -> Callable[[argparse.Namespace], int]:
    """The handler of a subcommand: ``fn`` called through :func:`call`; exit
    code 0 (or ``fn``'s if ``status``)."""

    def handler(args: argparse.Namespace) -> int:
        result = call(fn, args)
        return int(result) if status else 0

    handler.command = fn  # type: ignore[attr-defined]  # for the test that every option has its parameter
    return handler
