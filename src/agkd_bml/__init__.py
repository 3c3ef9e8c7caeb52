"""agkd-bml: AGKD-BML adversarial training and the methods it is compared with.

The package is laid out by job, in layers that import only downwards (checked by ``lint-imports``):
:mod:`agkd_bml.cli` (the commands) above :mod:`agkd_bml.analysis` and :mod:`agkd_bml.train` (the one
training loop), above :mod:`agkd_bml.evaluation` and :mod:`agkd_bml.methods` (one training objective per
file), above :mod:`agkd_bml.attacks`, :mod:`agkd_bml.models` (networks that return logits, last feature
map and embedding in one pass), :mod:`agkd_bml.data` (datasets as in-memory uint8 tensors) and
:mod:`agkd_bml.config`. :mod:`agkd_bml.api` (``agkd_bml.evaluate``, ``agkd_bml.benchmark``) is the evaluator
as a Python function for any model.
"""

import os

__version__ = "0.1.0"

# CPU tensors of 2 MB and more on transparent huge pages: PyTorch's own opt-in (read once, at its first
# allocation, hence here before anything imports torch), as NumPy does by default. A WideResNet step on
# the CPU allocates and frees gigabytes of activations; with 4 KB pages the kernel spends much of the
# step faulting them in (AGKD-BML-2 on WRN-16-4: 23% faster on 2 cores). THP_MEM_ALLOC_ENABLE=0 opts out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def __getattr__(name: str) -> object:
    """``agkd_bml.evaluate`` / ``benchmark`` / ``Evaluation``, imported on first use (``import agkd_bml`` stays light)."""
    if name in ("evaluate", "benchmark", "Evaluation"):
        from agkd_bml import api

        return getattr(api, name)
    raise AttributeError(f"module 'agkd_bml' has no attribute {name!r}")
