"""Test-split accuracy of exported weights, plain and with flip test-time augmentation.

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
from torch import nn
from torch.utils.data import DataLoader, Dataset

from era_utils.config import CLASS_NAMES
from era_utils.data import ArrayDataset, DataError, load_split
from era_utils.export import load_model, write_metrics
from era_utils.transforms import test_transforms


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, num_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """num_classes × num_classes counts: row = true class, column = predicted class."""
    k = num_classes
    return np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)


@dataclass
class Predictions:
    labels: np.ndarray
    probs: np.ndarray
    probs_tta: np.ndarray

    def report(self) -> dict:
        """Overall and per-class accuracy, plain and with flip TTA, and the single view's confusion counts."""
        out: dict = {"n": int(len(self.labels))}
        for key, probs in (("", self.probs), ("_tta", self.probs_tta)):
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
def predict(net: nn.Module, dataset: Dataset, batch_size: int = 500) -> Predictions:
    """Softmax probabilities over `dataset` in fp32, plain and with flip TTA."""
    net.eval()
    device = next(net.parameters()).device
    probs, probs_tta, labels = [], [], []
    for images, y in DataLoader(dataset, batch_size=batch_size):
        images = images.to(device)
        logits = net(images).float()
        flipped = net(torch.flip(images, dims=[3])).float()
        probs.append(logits.softmax(1).cpu())
        probs_tta.append(((logits + flipped) / 2).softmax(1).cpu())
        labels.append(y)
    return Predictions(torch.cat(labels).numpy(), torch.cat(probs).numpy(), torch.cat(probs_tta).numpy())


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
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
        dataset = ArrayDataset(load_split("test", args.data_dir), test_transforms())
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    metrics = predict(net, dataset, args.batch_size).report()
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
