"""The command layer: one module per group of subcommands, each a typed function plus its parser.

The library below never imports this package; ``agkd_bml.cli.main`` is the ``agkd-bml`` entry point.
"""

import os

# CPU tensors of 2 MB and more on transparent huge pages: PyTorch's own opt-in (read once, at its first
# allocation, hence here, before the commands import torch), as NumPy does by default. A WideResNet step on
# the CPU allocates and frees gigabytes of activations; with 4 KB pages the kernel spends much of the step
# faulting them in (AGKD-BML-2 on WRN-16-4: 23% faster on 2 cores). THP_MEM_ALLOC_ENABLE=0 opts out. Set
# by the command line only: a library import must not change its host process.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from agkd_bml.cli.main import build_parser, main  # noqa: E402 - after the allocator setting

__all__ = ["build_parser", "main"]
