"""Weights for the app: safetensors (no pickle) plus a JSON holding everything inference needs."""

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from era_utils.config import CIFAR_MEAN, CIFAR_STD, CLASS_NAMES, IMAGE_SIZE
from era_utils.model import ARCHITECTURE, GRADCAM_LAYERS, CustomResNet

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "model.json"


def sha256_of(path: str | Path) -> str:
    """The file's SHA-256 as hex, as model.json records it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export_model(
    net: CustomResNet,
    out_dir: str | Path,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write `model.safetensors` and `model.json` into `out_dir`; returns the weights' path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_NAME
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(weights))
    config = {
        "architecture": ARCHITECTURE,
        "num_classes": len(CLASS_NAMES),
        "classes": list(CLASS_NAMES),
        "mean": list(CIFAR_MEAN),
        "std": list(CIFAR_STD),
        "image_size": IMAGE_SIZE,
        "logit_scale": net.logit_scale,
        "gradcam_layers": GRADCAM_LAYERS,
        "parameters": sum(p.numel() for p in net.parameters()),
        "metrics": metrics or {},
        "training": training or {},
        "weights_file": WEIGHTS_NAME,
        "sha256": sha256_of(weights),
    }
    write_config(out_dir / CONFIG_NAME, config)
    return weights


def write_config(path: Path, config: dict[str, Any]) -> None:
    """Write the JSON through a temporary file, so a failed write leaves the old file whole."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, path)


def read_config(weights: str | Path) -> dict[str, Any]:
    """The JSON beside `weights`, after checking the weights against its sha256."""
    weights = Path(weights)
    config_path = weights.with_name(CONFIG_NAME)
    if weights.is_dir():
        raise FileNotFoundError(f"{weights} is a folder; pass the {WEIGHTS_NAME} in it")
    if weights.suffix == ".json":
        raise ValueError(f"{weights} is JSON; pass the weights beside it ({weights.with_name(WEIGHTS_NAME)})")
    if not weights.is_file() or not config_path.is_file():
        raise FileNotFoundError(f"need {weights} and {config_path} side by side")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON ({err})") from None
    if not isinstance(config, dict) or "sha256" not in config:
        raise ValueError(f"{config_path} has no sha256: is it a model.json from era_utils.export?")
    if sha256_of(weights) != config["sha256"]:
        raise ValueError(f"{weights} does not match the sha256 in {config_path}")
    return config


def network_settings(config: dict[str, Any], config_path: Path) -> tuple[int, float]:
    """The JSON's class count and logit scale, or a ValueError naming what is missing or of the wrong kind."""
    for key in ("num_classes", "classes", "logit_scale"):
        if key not in config:
            raise ValueError(f"{config_path} lacks '{key}'")
    num_classes, logit_scale = config["num_classes"], config["logit_scale"]
    if type(num_classes) is not int or num_classes < 1 or type(logit_scale) not in (int, float) or logit_scale <= 0:
        raise ValueError(
            f"{config_path} has num_classes {num_classes!r} and logit_scale {logit_scale!r}: "
            "they must be a count and a positive number"
        )
    return num_classes, logit_scale


def load_model(weights: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network from its JSON and load the verified weights, in eval mode."""
    config = read_config(weights)
    config_path = Path(weights).with_name(CONFIG_NAME)
    if config.get("architecture") != ARCHITECTURE:
        raise ValueError(f"unknown architecture {config.get('architecture')!r} in {config_path}")
    num_classes, logit_scale = network_settings(config, config_path)
    try:
        net = CustomResNet(num_classes=num_classes, logit_scale=logit_scale)
        state = load_file(str(weights))
    except SafetensorError as err:
        raise ValueError(f"{weights} is not a safetensors file ({err})") from None
    expected = net.state_dict()
    missing, extra = expected.keys() - state.keys(), state.keys() - expected.keys()
    reshaped = {k for k in expected.keys() & state.keys() if state[k].shape != expected[k].shape}
    if missing or extra or reshaped:
        raise ValueError(
            f"{weights} does not hold the weights {config_path} describes: {len(missing)} tensors missing, "
            f"{len(extra)} unexpected, {len(reshaped)} of another shape"
        )
    net.load_state_dict(state)
    return net.eval(), config


def write_metrics(weights: str | Path, metrics: dict[str, Any]) -> Path:
    """Replace "metrics" in the JSON beside `weights` (checked against its sha256), keeping the rest."""
    config = read_config(weights)
    path = Path(weights).with_name(CONFIG_NAME)
    write_config(path, config | {"metrics": metrics})
    return path


def to_plain_state(state: dict[str, torch.Tensor], prefix: str = "net.") -> dict[str, torch.Tensor]:
    """The network's own state dict out of a LightningModule's (keys start with `net.`)."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
