"""agkd-bml: AGKD-BML adversarial training and the methods it is compared with.

The package is laid out by job: :mod:`agkd_bml.data` (datasets as in-memory uint8 tensors),
:mod:`agkd_bml.models` (networks that return logits, last feature map and embedding in one pass),
:mod:`agkd_bml.attacks` (one projected-gradient L-inf routine), :mod:`agkd_bml.methods` (one training
objective per file), :mod:`agkd_bml.train` (the one training loop), :mod:`agkd_bml.evaluate` and
:mod:`agkd_bml.cli`.
"""

__version__ = "0.1.0"
