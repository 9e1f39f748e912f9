"""Test-split accuracy of exported weights: single view, flip TTA, and flip + translation TTA.

python -m era_utils.evaluate --weights space_app/model.safetensors --data-dir ../shared/data/cifar10-jpeg

With --write-metrics the report also replaces "metrics" in the model.json beside the weights
(everything else in it, and the weights, stay as they are).
"""

import argparse
import json
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from era_utils.config import CLASS_NAMES
from era_utils.data import ArrayDataset, DataError, load_split
from era_utils.export import load_model, write_metrics
from era_utils.lit_module import flip_tta_logits
from era_utils.transforms import eval_transforms


def confusion_counts(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Counts over the classes × classes: row = true class, column = predicted class."""
    k = len(CLASS_NAMES)
    return np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)


def tta_logits(net: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of three views, from six forward passes: the image; flip TTA (the mean with its mirror image);
    and airbench94's flip + translation TTA, half the flip TTA and half the mean flip TTA of the image
    shifted by one pixel up-left and down-right (reflect padding)."""
    logits = net(images)
    flip = flip_tta_logits(net, images, logits)
    height, width = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., :height, :width], padded[..., 2:, 2:]]
    return logits, flip, flip / 2 + sum(flip_tta_logits(net, s) for s in shifted) / 4


@dataclass
class Predictions:
    """Softmax probabilities of each test image: single view, flip TTA, flip + translation TTA."""

    labels: np.ndarray
    probs: np.ndarray
    probs_tta: np.ndarray
    probs_tta_translate: np.ndarray

    def report(self, file_format: str | None = None) -> dict:
        """Overall and per-class accuracy of each view, and the single view's confusion counts; with the test
        images' `file_format` (an image folder's `Split.file_format`), also that, as "test_files"."""
        out: dict = {"n": int(len(self.labels))}
        if file_format:
            out["test_files"] = file_format
        views = (("", self.probs), ("_tta", self.probs_tta), ("_tta_translate", self.probs_tta_translate))
        for key, probs in views:
            correct = probs.argmax(1) == self.labels
            out[f"accuracy{key}"] = round(float(correct.mean()), 4)
            out[f"per_class{key}"] = {
                name: round(float(correct[self.labels == c].mean()), 4)
                for c, name in enumerate(CLASS_NAMES)
                if (self.labels == c).any()
            }
        out["confusion"] = confusion_counts(self.labels, self.probs.argmax(1)).tolist()
        return out


@torch.no_grad()
def predict(net: nn.Module, dataset: Dataset, batch_size: int = 500, progress: bool = False) -> Predictions:
    """Softmax probabilities over `dataset` in fp32 (TF32 off on GPUs that default to it), on the network's device:
    single view, flip TTA, flip + translation TTA.

    With `progress`, a progress bar on stderr (six forward passes per image take minutes on a CPU)."""
    net.eval()
    device = next(net.parameters()).device
    views: list[list[torch.Tensor]] = [[], [], []]
    labels = []
    loader = DataLoader(dataset, batch_size=batch_size)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for images, y in tqdm(loader, desc="test images, 6 views each", unit="batch", disable=not progress):
            for view, logits in zip(views, tta_logits(net, images.to(device)), strict=True):
                view.append(logits.float().softmax(1).cpu())
            labels.append(y)
    return Predictions(torch.cat(labels).numpy(), *(torch.cat(view).numpy() for view in views))


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """The command line: prints one JSON line (or writes model.json's metrics); 2 with one `error:` line."""
    parser = argparse.ArgumentParser(
        prog="python -m era_utils.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", required=True, help="model.safetensors, with model.json beside it")
    parser.add_argument("--data-dir", default=None, help="offline image folder (train/ and test/); default: download")
    parser.add_argument("--batch-size", type=positive_int, default=500)
    parser.add_argument(
        "--write-metrics", action="store_true", help='also replace "metrics" in the model.json beside the weights'
    )
    args = parser.parse_args(argv)
    try:
        net, config = load_model(args.weights)
        if config["classes"] != list(CLASS_NAMES):
            raise ValueError(f"{args.weights} was trained on classes {config['classes']}, not CIFAR-10's")
        split = load_split("test", args.data_dir)
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    net.to("cuda" if torch.cuda.is_available() else "cpu")
    dataset = ArrayDataset(split, eval_transforms())
    metrics = predict(net, dataset, args.batch_size, progress=True).report(split.file_format)
    if args.write_metrics:
        try:
            write_metrics(args.weights, metrics)
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
