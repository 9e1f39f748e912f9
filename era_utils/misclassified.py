"""The model's most confident mistakes on the test split, as image files and one compact store."""

import re
from pathlib import Path

import numpy as np
from PIL import Image

from era_utils.config import CLASS_NAMES


def confident_mistakes(labels: np.ndarray, probs: np.ndarray, n: int) -> np.ndarray:
    """Indices of the `n` wrong predictions with the highest confidence, most confident first."""
    preds = probs.argmax(1)
    wrong = np.flatnonzero(preds != labels)
    return wrong[np.argsort(-probs[wrong].max(1), kind="stable")][:n]


def caption(label: int, pred: int, confidence: float) -> str:
    """`true → predicted (confidence%)`, e.g. `dog → cat (97%)`."""
    return f"{CLASS_NAMES[label]} → {CLASS_NAMES[pred]} ({100 * confidence:.0f}%)"


FILE_NAME = re.compile(r"\d+_([a-z]+)_as_([a-z]+)_(\d+)pct\.png")


def file_name(rank: int, label: int, pred: int, confidence: float) -> str:
    """`<rank>_<true>_as_<pred>_<confidence>pct.png`; `parse_file_name` reads it back."""
    return f"{rank:02d}_{CLASS_NAMES[label]}_as_{CLASS_NAMES[pred]}_{100 * confidence:.0f}pct.png"


def parse_file_name(name: str) -> tuple[int, int, float]:
    """(true label, predicted label, confidence) from a name that `file_name` wrote."""
    true, pred, percent = FILE_NAME.fullmatch(name).groups()
    return CLASS_NAMES.index(true), CLASS_NAMES.index(pred), int(percent) / 100


def export_misclassified(
    images: np.ndarray, labels: np.ndarray, probs: np.ndarray, out_dir: str | Path, n: int = 20
) -> list[Path]:
    """Save the `n` most confident mistakes as PNGs named by `file_name`, e.g. `01_bird_as_frog_98pct.png`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*_as_*.png"):
        old.unlink()
    paths = []
    for rank, i in enumerate(confident_mistakes(labels, probs, n), start=1):
        pred = int(probs[i].argmax())
        name = file_name(rank, labels[i], pred, probs[i, pred])
        Image.fromarray(images[i]).save(out_dir / name)
        paths.append(out_dir / name)
    return paths


def save_store(
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    path: str | Path,
    n: int = 100,
    test_indices: np.ndarray | None = None,
) -> Path:
    """One compressed .npz for the app: uint8 images, true labels, predictions, confidences, test indices.

    `test_indices[i]` is the position of row i in the test split (default: rows are the whole split).
    """
    idx = confident_mistakes(labels, probs, n)
    positions = np.arange(len(labels)) if test_indices is None else np.asarray(test_indices)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        images=images[idx],
        labels=labels[idx].astype(np.int64),
        preds=probs[idx].argmax(1).astype(np.int64),
        confidences=probs[idx].max(1).astype(np.float32),
        test_indices=positions[idx].astype(np.int64),
        classes=np.asarray(CLASS_NAMES),
    )
    return path
