"""A run's training as curves: each loss term, the learning rate, held-out clean and PGD accuracy, best epoch.

Read from ``metrics.jsonl`` only, so it works on a run still training (each finished epoch is a point) and on
the committed runs of a reproduction; several runs share the axes, one colour each. """

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.ticker import MaxNLocator

from agkd_bml.analysis.plotting import pyplot, save_figure
from agkd_bml.analysis.timing import read_metrics


def plot_training(runs: Sequence[str | Path], out: str | Path) -> list[Path]:
    """Draw the training curves of ``runs`` into ``out``.png and ``out``.pdf; return their paths."""
    fig, (loss_ax, lr_ax, acc_ax) = pyplot().subplots(1, 3, figsize=(15, 4.2))
    for i, run in enumerate(runs):
        folder, epochs = read_metrics(run)
        colour = f"C{i % 10}"
        x = [e["epoch"] for e in epochs]
        for k, term in enumerate(sorted({t for e in epochs for t in e.get("loss", {})})):
            loss_ax.plot(x, [e.get("loss", {}).get(term, float("nan")) for e in epochs], color=colour,
                         linestyle=("-", "--", ":", "-.")[k % 4], label=f"{folder.name}: {term}")
        lr_ax.plot(x, [e["lr"] for e in epochs], color=colour, label=folder.name)
        if any("val_clean" in e for e in epochs):
            where = f"{epochs[-1].get('val_n', '?')} {epochs[-1].get('val_source', 'images')}"
            acc_ax.plot(x, [100 * e.get("val_clean", float("nan")) for e in epochs], color=colour,
                        linestyle="--",
                        label=f"{folder.name}: clean ({where})")
            acc_ax.plot(x, [100 * e.get("val_pgd", float("nan")) for e in epochs], color=colour,
                        label=f"{folder.name}: "
                              f"PGD-{epochs[-1].get('val_attack', 'PGD').split(':')[0].split('-')[-1]}")
            best = epochs[-1].get("best_epoch")
            if best:
                pick = next(e for e in epochs if e["epoch"] == best)
                acc_ax.plot([best], [100 * pick["val_pgd"]], marker="*", markersize=14, color=colour,
                            linestyle="none",
                            label=f"{folder.name}: best.pt (epoch {best})")
    loss_ax.set(title="loss terms (epoch means)", xlabel="epoch")
    lr_ax.set(title="learning rate (last step of each epoch)", xlabel="epoch")
    acc_ax.set(title="held-out accuracy", xlabel="epoch", ylabel="%")
    for ax in (loss_ax, lr_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, Path(out).with_suffix(""))
