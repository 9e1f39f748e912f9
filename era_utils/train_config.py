"""TrainConfig: every knob of a run, each numeric one checked against its range when the config is made."""

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from era_utils.transforms import DEFAULT_FLIP, FLIPS

# The smoke run's range test: a few more batches than the suggestion takes (lr_finder.MIN_BATCHES), since the
# loss may diverge before the last one.
FAST_DEV_LR_FIND_ITERS = 20


class ConfigError(ValueError):
    """A knob of TrainConfig is out of its range; the message names it and the range."""


# Numeric knobs and the ranges they must lie in (None, where a knob allows it, is always valid).
VALID_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "epochs": (lambda v: v >= 1, "at least 1"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "max_lr": (lambda v: 0 < v < math.inf, "positive and finite"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "0 or more and finite"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "logit_scale": (lambda v: 0 < v < math.inf, "positive and finite"),
    "ema_decay": (lambda v: 0 <= v < 1, "in [0, 1) (0 turns the EMA off)"),
    "pct_start": (lambda v: 0 < v < 1, "in (0, 1)"),
    "ghost_batch_size": (lambda v: v == 0 or v >= 2, "0 (off) or at least 2"),
    "lr_find_iters": (
        lambda v: v == 0 or v >= FAST_DEV_LR_FIND_ITERS,
        f"0 (no range test) or at least {FAST_DEV_LR_FIND_ITERS}",
    ),
    "num_nodes": (lambda v: v >= 1, "at least 1"),
    "seed": (lambda v: 0 <= v < 2**32, f"from 0 to {2**32 - 1} (numpy's range)"),
    "per_class": (lambda v: v >= 1, "at least 1"),
    "num_workers": (lambda v: v >= 0, "0 or more"),
    "n_misclassified": (lambda v: v >= 0, "0 or more"),
}

# What a resumed run must share with its checkpoint besides LitClassifier's hyperparameters and OneCycle's length
# (which a changed batch size or epoch count can keep: 40 images make 5 batches of 8 and 5 of 9).
RECIPE_OUTSIDE_THE_MODULE = (
    "epochs",
    "batch_size",
    "seed",
    "flip",
    "ghost_batch_size",
    "ema_decay",
    "logit_scale",
    "per_class",
)


@dataclass
class TrainConfig:
    """Every knob of a run; written into the exported JSON."""

    data_dir: str | None = None  # offline image folder; None downloads CIFAR-10 with torchvision
    download_root: str = "data"  # where torchvision's download goes
    out: str = "runs/latest"  # logs, checkpoints, plots, weights
    epochs: int = 24
    batch_size: int = 512
    max_lr: float | None = 0.01  # OneCycle's peak, read off the LR finder's plot; None: the finder's suggestion
    weight_decay: float = 0.2  # decoupled (AdamW), conv and linear weights only
    label_smoothing: float = 0.2
    logit_scale: float = 0.125  # Page's output scaling; slows the last layer under Adam
    ema_decay: float = 0.995  # per-step EMA of weights and BN buffers, with warm-up; 0 turns it off
    pct_start: float = 5 / 24  # warm-up share of OneCycle: 5 of 24 epochs
    flip: str = DEFAULT_FLIP  # airbench's alternating flip: the other way round each epoch; or "random" (p = 0.5)
    ghost_batch_size: int = 32  # training BN statistics over slices of this many images (Page's); 0: whole batch
    lr_find_iters: int = 200  # the LR range test's batches; 0: no range test (then max_lr must be given)
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None  # None: 16-mixed on GPU; on CPU bf16-mixed where oneDNN supports it, else 32-true
    resume: bool = False
    overwrite: bool = False  # start afresh in an OUT whose checkpoint holds an earlier run
    seed: int = 42
    fast_dev_run: bool = False
    per_class: int | None = None  # keep only this many images per class (smoke runs)
    num_workers: int = 2
    n_misclassified: int = 20
    app_dir: str | None = None  # where weights, examples and the misclassified store go; None: `out`

    def __post_init__(self) -> None:
        if self.flip not in FLIPS:
            raise ConfigError(f"flip must be one of {', '.join(FLIPS)}, got {self.flip!r}")
        for name, (valid, must_be) in VALID_RANGES.items():
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, int | float):
                raise ConfigError(f"{name} must be a number, got {value!r}")
            if not valid(value):
                raise ConfigError(f"{name} must be {must_be}, got {value}")
        if self.resume and self.overwrite:
            raise ConfigError("resume continues the run in out and overwrite starts a new one there: choose one")
        if self.resume and self.fast_dev_run:
            raise ConfigError(
                "resume continues the run in out and fast_dev_run is a smoke run, which continues none and writes no "
                "checkpoint: choose one"
            )
        if self.max_lr is None and self.lr_find_iters == 0 and not self.resume:
            raise ConfigError(
                "max_lr 'finder' (None) takes the LR finder's suggestion, but lr_find_iters 0 runs no range test"
            )

    @property
    def out_path(self) -> Path:
        return Path(self.out)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        """The checkpoint written at every epoch's end, which `resume` continues."""
        return self.checkpoint_dir / "last.ckpt"

    @property
    def images_dir(self) -> Path:
        return self.out_path / "images"

    @property
    def app_path(self) -> Path:
        """Where the weights, the app's examples and its misclassified store go."""
        return Path(self.app_dir) if self.app_dir else self.out_path
