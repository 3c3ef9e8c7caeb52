"""Hyper-parameters that several methods share, declared once as small records a method's own record
inherits from (:class:`~agkd_bml.config.HyperParams`).

A method's own parameter is one more field (:func:`~agkd_bml.config.hyper`) of its record: the CLI option,
the YAML key, the ``--help`` line and the check that it applies to the chosen method all follow.
"""

from __future__ import annotations

from dataclasses import dataclass

from agkd_bml.config import HyperParams, hyper
from agkd_bml.methods.losses import ATTENTION_KINDS


@dataclass(kw_only=True, frozen=True)
class BetaParams(HyperParams):
    beta: float = hyper(6.0, "TRADES / MART trade-off weight")


@dataclass(kw_only=True, frozen=True)
class MetricParams(HyperParams):
    """The metric-learning loss of SML and BML (the paper's lambda_1, lambda_2 and margin)."""

    margin: float = hyper(0.03, "triplet margin of SML / BML")
    lambda_triplet: float = hyper(2.0, "weight of the metric-learning loss (lambda_1)")
    lambda_norm: float = hyper(0.001, "weight of the embedding-norm term inside it (lambda_2)")


@dataclass(kw_only=True, frozen=True)
class AttentionParams(HyperParams):
    attention: str = hyper(
        "agkd", "map AGKD distils (Table 6): agkd (class-irrelevant, the paper's), gc-orig / gc-false "
        "(Grad-CAM of the original / false class), cam-avg (CAM averaged over classes)",
        choices=tuple(ATTENTION_KINDS))


@dataclass(kw_only=True, frozen=True)
class MartTermParams(HyperParams):
    mart: bool = hyper(False, "add MART's BCE + beta * weighted KL to AGKD-BML (the released 10-step code)")
