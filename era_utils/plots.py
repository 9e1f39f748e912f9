"""Figures, each saved to a file (and returned, so a notebook shows it)."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from era_utils.config import CLASS_NAMES
from era_utils.evaluate import confusion_counts


def save(fig: Figure, path: str | Path | None) -> Figure:
    """Write `fig` to `path` (folders made as needed) unless it is None; return it for display."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return fig


def image_grid(
    images: np.ndarray, captions: Sequence[str], path: str | Path | None = None, ncols: int = 8, title: str = ""
) -> Figure:
    """NHWC images (uint8, or float in [0, 1]) with a caption under each."""
    nrows = max(1, -(-len(images) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols, 2.1 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions, strict=False):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)


def training_curves(table: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Loss and accuracy per epoch, train against validation, from `history.epoch_table`."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for stage, style in (("train", "-o"), ("val", "-s")):
        loss_ax.plot(table.index, table[f"{stage}_loss"], style, ms=3, label=stage)
        acc_ax.plot(table.index, 100 * table[f"{stage}_acc"], style, ms=3, label=stage)
    loss_ax.set(title="Loss (cross-entropy with label smoothing)", xlabel="epoch", ylabel="loss")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save(fig, path)


def confusion(labels: np.ndarray, preds: np.ndarray, path: str | Path | None = None) -> Figure:
    """Confusion matrix of counts, true class by row."""
    matrix = confusion_counts(labels, preds)
    fig, ax = plt.subplots(figsize=(8.5, 7))
    sns.heatmap(matrix, annot=True, fmt="d", cmap="Blues", xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES, ax=ax)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (test split)")
    fig.tight_layout()
    return save(fig, path)


def per_class_accuracy(labels: np.ndarray, preds: np.ndarray, path: str | Path | None = None) -> Figure:
    """One bar per class present in `labels` (a smoke run's small test subset may lack some)."""
    present = [c for c in range(len(CLASS_NAMES)) if np.any(labels == c)]
    correct = [100 * np.mean(preds[labels == c] == c) for c in present]
    fig, ax = plt.subplots(figsize=(9, 4))
    sns.barplot(x=[CLASS_NAMES[c] for c in present], y=correct, color="tab:blue", ax=ax)
    ax.bar_label(ax.containers[0], fmt="%.1f")
    ax.set(ylabel="accuracy (%)", ylim=(min(correct) - 10, 100), title="Per-class test accuracy")
    fig.tight_layout()
    return save(fig, path)
