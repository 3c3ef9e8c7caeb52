"""Analyses behind the paper's figures and side tables: k-NN on embeddings, t-SNE, attention, training time."""

from agkd_bml.analysis.attention import attention_figures, overlay, upsample
from agkd_bml.analysis.embeddings import Embedded, embed
from agkd_bml.analysis.knn import METRICS, knn_predict
from agkd_bml.analysis.timing import run_timing, timing_table
from agkd_bml.analysis.tsne import tsne_figure

__all__ = [
    "METRICS",
    "Embedded",
    "attention_figures",
    "embed",
    "knn_predict",
    "overlay",
    "run_timing",
    "timing_table",
    "tsne_figure",
    "upsample",
]
