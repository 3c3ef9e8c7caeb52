"""t-SNE of penultimate embeddings (the paper's Figures 3, 6-9): where do a class's AEs land?

Clean test points are triangles coloured by class; the AEs of one chosen class are red circles. A model whose
AEs stay inside their class's cluster has a feature space the attack cannot move far. """

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from agkd_bml.analysis.embeddings import Embedded
from agkd_bml.analysis.plotting import pyplot, save_figure


def tsne_2d(points: np.ndarray, seed: int = 0) -> np.ndarray:
    """scikit-learn's exact-seeded Barnes-Hut t-SNE to 2-D (PCA init,
    perplexity 30 or less for few points)."""
    from sklearn.manifold import TSNE

    perplexity = min(30.0, max(2.0, (points.shape[0] - 1) / 3))
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(points)


def tsne_figure(
    panels: dict[str, tuple[Embedded, dict[int, Embedded]]],
    class_names: tuple[str, ...],
    stem: Path,
    *,
    title: str = "",
    seed: int = 0,
) -> list[Path]:
    """One column per model, one row per chosen class: ``panels[model] = (clean, {class: its AEs})``."""
    plt = pyplot()
    classes = list(next(iter(panels.values()))[1])
    fig, axes = plt.subplots(len(classes), len(panels), figsize=(4 * len(panels), 4 * len(classes)),
                             squeeze=False)
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for col, (name, (clean, advs)) in enumerate(panels.items()):
        for row, c in enumerate(classes):
            adv = advs[c]
            xy = tsne_2d(torch.cat([clean.embedding, adv.embedding]).numpy(), seed)
            ax = axes[row][col]
            n = clean.embedding.shape[0]
            labels = clean.labels.numpy()
            for k in np.unique(labels):
                sel = labels == k
                ax.scatter(xy[:n][sel, 0], xy[:n][sel, 1], marker="^", s=10, color=cmap(int(k) % cmap.N),
                           label=class_names[int(k)], alpha=0.7)
            fooled = (adv.pred != adv.labels).float().mean().item()
            ax.scatter(xy[n:, 0], xy[n:, 1], marker="o", s=14, facecolors="none", edgecolors="red",
                       label=f"AEs of {class_names[c]}")
            ax.set_title(f"{name}: AEs of {class_names[c]} ({100 * fooled:.0f}% fooled)", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, stem)
