"""What a run leaves besides its checkpoints and log: sample and report figures, the most confident mistakes, and
the app's weights, JSON, examples and misclassified store."""

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image
from torch.utils.data import Subset

from era_utils import plots
from era_utils.config import CLASS_NAMES
from era_utils.data import CIFAR10DataModule
from era_utils.evaluate import Predictions, predict
from era_utils.export import export_model
from era_utils.hardware import device_for
from era_utils.misclassified import caption, confident_mistakes, export_misclassified, save_store
from era_utils.model import CustomResNet
from era_utils.train_config import TrainConfig
from era_utils.transforms import denormalize


@rank_zero_only
def save_samples(dm: CIFAR10DataModule, path: Path, n: int = 32, seed: int = 0) -> None:
    """A random draw of augmented training images as the network sees them, denormalized, with their labels.

    Random, not the first `n`: an image folder's split is sorted by class, so those would all be airplanes.
    """
    dataset = dm.train_dataset()
    picks = np.random.default_rng(seed).choice(len(dataset), min(n, len(dataset)), replace=False)
    pairs = [dataset[int(i)] for i in picks]
    images = denormalize(torch.stack([x for x, _ in pairs]).numpy())
    plots.image_grid(images, [CLASS_NAMES[y] for _, y in pairs], path, title="Augmented training samples")


def save_examples(dm: CIFAR10DataModule, out_dir: Path) -> None:
    """One test image per class, as PNG, for the app's examples."""
    out_dir.mkdir(parents=True, exist_ok=True)
    split = dm.test_split
    for c, name in enumerate(CLASS_NAMES):
        hits = np.flatnonzero(split.labels == c)
        if len(hits):
            Image.fromarray(split.images[hits[0]]).save(out_dir / f"{name}.png")


def report_indices(cfg: TrainConfig, dm: CIFAR10DataModule) -> np.ndarray:
    """The test images the reports use: all of them, or with fast_dev_run one batch spread evenly over
    the split (an image folder's split is sorted by class, so its first batch would hold one class)."""
    n = len(dm.test_split.labels)
    if not cfg.fast_dev_run:
        return np.arange(n)
    return np.linspace(0, n - 1, min(cfg.batch_size, n)).round().astype(int)


def report(cfg: TrainConfig, net: CustomResNet, dm: CIFAR10DataModule) -> tuple[Predictions, dict]:
    """fp32 predictions on the test split (on the GPU when the run trained on one), then confusion matrix,
    per-class accuracy and mistakes."""
    indices = report_indices(cfg, dm)
    preds = predict(net.float().to(device_for(cfg)), Subset(dm.test_dataset(), indices.tolist()))
    net.cpu()
    metrics = preds.report(dm.test_split.file_format)
    labels, predicted = preds.labels, preds.probs.argmax(1)
    plots.confusion(labels, predicted, cfg.images_dir / "confusion_matrix.png")
    plots.per_class_accuracy(labels, predicted, cfg.images_dir / "per_class_accuracy.png")
    images = dm.test_split.images[indices]
    export_misclassified(images, labels, preds.probs, cfg.out_path / "misclassified_images", cfg.n_misclassified)
    idx = confident_mistakes(labels, preds.probs, cfg.n_misclassified)
    captions = [caption(labels[i], predicted[i], preds.probs[i].max()) for i in idx]
    grid_path = cfg.images_dir / "misclassified.png"
    plots.image_grid(images[idx], captions, grid_path, ncols=5, title="Most confident mistakes")
    return preds, metrics


def export_artifacts(
    cfg: TrainConfig, net: CustomResNet, dm: CIFAR10DataModule, preds: Predictions, max_lr: float
) -> Path:
    """Weights + JSON, the app's examples and its misclassified store, into `app_dir` (default `out`)."""
    metrics = preds.report(dm.test_split.file_format)  # the schema model.json carries: see Predictions.report
    training = asdict(cfg) | {"max_lr": max_lr}
    indices = report_indices(cfg, dm)
    save_store(
        dm.test_split.images[indices],
        preds.labels,
        preds.probs,
        cfg.app_path / "misclassified.npz",
        test_indices=indices,
    )
    save_examples(dm, cfg.app_path / "examples")
    return export_model(net, cfg.app_path, metrics, training)
