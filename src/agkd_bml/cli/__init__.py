"""The command layer: one module per group of subcommands, each a typed function plus its parser.

The library below never imports this package; ``agkd_bml.cli.main`` is the ``agkd-bml`` entry point.
"""

from agkd_bml.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
