"""Analyses behind the paper's figures and side tables: k-NN on embeddings, t-SNE, attention, training time,
and (from :mod:`agkd_bml.evaluation.stats`) how a paired accuracy gap moves with model size."""

from agkd_bml.analysis.attention import attention_figures, overlay, upsample
from agkd_bml.analysis.embeddings import Embedded, embed
from agkd_bml.analysis.knn import METRICS, knn_predict
from agkd_bml.analysis.timing import run_timing, timing_table
from agkd_bml.analysis.tsne import tsne_figure
from agkd_bml.evaluation.stats import Gap, Trend, log_linear_trend, paired_gap

__all__ = [
    "METRICS",
    "Embedded",
    "Gap",
    "Trend",
    "attention_figures",
    "embed",
    "knn_predict",
    "log_linear_trend",
    "overlay",
    "paired_gap",
    "run_timing",
    "timing_table",
    "tsne_figure",
    "upsample",
]
