"""What the weight EMA bought: test accuracy of a run's averaged weights against its raw final weights.

python benchmarks/ema_gain.py --checkpoint checkpoints/last.ckpt --data-dir ../shared/data/cifar10-jpeg \
    --results benchmarks/results/ema_gain.jsonl

Lightning's WeightAveraging stores the average in the checkpoint's `state_dict` and the raw weights in
`current_model_state`; both are evaluated in fp32 on the test split. Prints one JSON line; with `--results`, also
appends it, with the command, commit and machine.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from results_log import append, provenance

from era_utils.config import NUM_CLASSES
from era_utils.data import ArrayDataset, load_split
from era_utils.evaluate import predict
from era_utils.export import to_plain_state
from era_utils.model import CustomResNet
from era_utils.train_config import TrainConfig
from era_utils.transforms import eval_transforms


def network(state_dict: dict[str, torch.Tensor], logit_scale: float) -> CustomResNet:
    net = CustomResNet(NUM_CLASSES, logit_scale=logit_scale)
    net.load_state_dict(to_plain_state(state_dict))
    return net


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/last.ckpt")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--logit-scale", type=float, help="default: the checkpoint's, else TrainConfig's")
    parser.add_argument("--results", type=Path, help="also append the figures as one JSON line (with the machine)")
    args = parser.parse_args(argv)
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)  # our own Lightning checkpoint
    if "current_model_state" not in checkpoint:
        raise SystemExit("error: this checkpoint was saved without the weight EMA; there is nothing to compare")
    recipe = checkpoint.get("callbacks", {}).get("RecipeCheck", {})  # older checkpoints lack it
    logit_scale = args.logit_scale or recipe.get("logit_scale", TrainConfig.logit_scale)
    dataset = ArrayDataset(load_split("test", args.data_dir), eval_transforms())
    result = {"epoch": checkpoint["epoch"], "global_step": checkpoint["global_step"]}
    for name, key in (("ema", "state_dict"), ("raw", "current_model_state")):
        report = predict(network(checkpoint[key], logit_scale), dataset).report()
        result[name] = {"accuracy": report["accuracy"], "accuracy_tta": report["accuracy_tta"]}
    if args.results:
        append(args.results, provenance("ema_gain.py", argv) | result)
    else:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
