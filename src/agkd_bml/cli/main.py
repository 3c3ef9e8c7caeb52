"""``agkd-bml {train,eval,curves,audit,knn,tsne,attention,report,reproduce,quickstart,presets,methods}``.

Each subcommand lives with its parser in one module of this package and is a typed function; this file only
assembles the parsers. Bad input never shows a traceback: every :class:`UserError` is printed as one line and
the exit code is 2 (``--debug`` shows the traceback). """

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from agkd_bml import __version__
from agkd_bml.cli import analysis, evaluation, quickstart, reproduce, training
from agkd_bml.cli.options import Parser
from agkd_bml.errors import UserError

#: The modules that add subcommands, in the order ``--help`` lists them.
COMMAND_MODULES = (training, evaluation, analysis, reproduce, quickstart)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="agkd-bml",
                    description="AGKD-BML adversarial training, the methods "
                                "it is compared with, and their evaluation.")
    parser.add_argument("--version", action="version", version=f"agkd-bml {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMAND_MODULES:
        module.add_parsers(sub)
    return parser


class StderrLines(logging.Handler):
    """The package's log records as plain lines on whatever ``sys.stderr`` is when each is written."""

    def emit(self, record: logging.LogRecord) -> None:
        print(record.getMessage(), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `torchrun ... -m agkd_bml -- eval --n 100`: the "--" shields --n from torchrun's parser
    if argv[:1] == ["--"]:
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    # status and progress lines (AutoAttack's per part, among others) go to stderr; tables to stdout
    package_log = logging.getLogger("agkd_bml")
    if not any(isinstance(h, StderrLines) for h in package_log.handlers):
        package_log.addHandler(StderrLines())
        package_log.setLevel(logging.INFO)
    try:
        return args.handler(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"agkd-bml: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `agkd-bml presets | head`: the reader left; nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print(f"agkd-bml: interrupted; {_kept(args)}", file=sys.stderr)
        return 130


def _kept(args: argparse.Namespace) -> str:
    """What an interrupted command leaves to go on from, and how: each command keeps its work its own way
    (``--resume`` is ``train``'s option alone; an evaluation continues when the same command runs again)."""
    if args.command == "train":
        return "the last checkpoint is intact (the same command with --resume continues)"
    if args.command in ("reproduce", "quickstart"):
        return "finished epochs and evaluations are kept (the same command continues)"
    state = getattr(args, "state", None)
    if state is None and args.command == "eval" and args.out:
        state = f"{args.out}/state"
    if state:
        return f"finished batches are saved in {state} (the same command continues)"
    if args.command == "eval":
        return "nothing was saved (with --out or --state an evaluation keeps its finished batches)"
    return "nothing was saved"


if __name__ == "__main__":
    sys.exit(main())
