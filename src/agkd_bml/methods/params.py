"""Hyper-parameters that several methods share, declared once (a method lists those it reads).

A method's own parameter is one more :class:`~agkd_bml.config.HyperParam` in its ``params``; the CLI
option, the YAML key, the ``--help`` line and the check that it applies
to the chosen method all follow. """

from __future__ import annotations

from agkd_bml.config import HyperParam
from agkd_bml.methods.losses import ATTENTION_KINDS

BETA = HyperParam(name="beta", default=6.0, help="TRADES / MART trade-off weight")
MARGIN = HyperParam(name="margin", default=0.03, help="triplet margin of SML / BML")
LAMBDA_TRIPLET = HyperParam(name="lambda_triplet", default=2.0,
                            help="weight of the metric-learning loss (lambda_1)")
LAMBDA_NORM = HyperParam(name="lambda_norm", default=0.001,
                         help="weight of the embedding-norm term inside it (lambda_2)")
METRIC = (MARGIN, LAMBDA_TRIPLET, LAMBDA_NORM)
ATTENTION = HyperParam(
    name="attention", default="agkd",
    help="map AGKD distils (Table 6): agkd (class-irrelevant, the paper's), gc-orig / gc-false "
    "(Grad-CAM of the original / false class), cam-avg (CAM averaged over classes)",
    choices=tuple(ATTENTION_KINDS),
)
MART = HyperParam(name="mart", default=False,
                  help="add MART's BCE + beta * weighted KL to AGKD-BML (the released 10-step code)")
