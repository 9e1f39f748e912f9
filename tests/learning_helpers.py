"""Helpers for the tests of the learning itself: a tiny learnable image folder, and one short fit through the
project's own `fit` with a callback that records the recipe step by step (learning rate, beta1, the last
step's batch and loss, and an exponential moving average of the weights computed here from the README's rule)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import WeightAveraging
from PIL import Image

from era_utils.config import CLASS_NAMES, IMAGE_SIZE
from era_utils.lit_module import LitClassifier
from era_utils.train import build_datamodule, build_net, fit
from era_utils.train_config import TrainConfig

# Training tests run on one CPU process: "auto" would switch precision on a GPU runner and start DDP inside
# pytest on a multi-GPU one.
CPU = dict(accelerator="cpu", devices="1")
CPU_FLAGS = ["--accelerator", "cpu", "--devices", "1"]

SQUARE = 8  # side of each class's square, in pixels
JITTER = 2  # the square moves up to this many pixels from its class's place, per image
# One colour and one place (top-left corner, row and column) per class; the squares never touch the border.
COLOURS = (
    (230, 25, 25),
    (25, 200, 25),
    (25, 25, 230),
    (240, 220, 20),
    (220, 20, 220),
    (20, 220, 220),
    (250, 250, 250),
    (10, 10, 10),
    (250, 140, 0),
    (120, 40, 200),
)
PLACES = ((3, 3), (3, 12), (3, 21), (12, 3), (12, 21), (21, 3), (21, 12), (21, 21), (12, 12), (8, 16))


@dataclass
class Squares:
    """The image folder and, for its test split in the order the data module reads it, each square's corner."""

    root: Path
    test_corners: np.ndarray  # (N, 2): row, column


def make_squares_folder(root: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> Squares:
    """train/<class>/ and test/<class>/ PNGs: uniform grey-ish noise with the class's coloured square on it."""
    rng = np.random.default_rng(seed)
    corners: list[tuple[int, int]] = []
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for c, name in enumerate(CLASS_NAMES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(64, 192, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
                row, col = np.asarray(PLACES[c]) + rng.integers(-JITTER, JITTER + 1, 2)
                pixels[row : row + SQUARE, col : col + SQUARE] = COLOURS[c]
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
                if split == "test":
                    corners.append((int(row), int(col)))
    return Squares(root, np.asarray(corners))


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Floating-point parameters and buffers (batch-norm statistics), detached copies."""
    named = [*module.named_parameters(), *module.named_buffers()]
    return {k: v.detach().clone() for k, v in named if v.is_floating_point()}


def max_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two states with the same keys."""
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


class StepLog(L.Callback):
    """Per training step: each parameter group's LR and beta1 as the step uses them, and the step's loss."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.beta1s: list[list[float]] = []
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        groups = trainer.optimizers[0].param_groups
        self.lrs.append([g["lr"] for g in groups])
        self.beta1s.append([g["betas"][0] for g in groups])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        self.losses.append(float(outputs["loss"]))


class Recorder(StepLog):
    """Records the recipe as it runs (StepLog's figures, and more); keeps its own EMA with decay
    min(decay, (1 + n) / (10 + n)) after n updates.

    Listed before the project's callbacks, so each hook here runs before theirs.
    """

    def __init__(self, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.ema: dict[str, torch.Tensor] | None = None
        self.updates = 0
        self.step_gaps: list[float] = []  # per step: |the callback's average - this EMA|, both before the step
        self.val_gaps: list[float] = []  # per validation: |the module validated - this EMA|
        # The last step's batch and network (as the step found it).
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.net: torch.nn.Module | None = None
        self.raw_final: dict[str, torch.Tensor] | None = None

    def _update_ema(self, current: dict[str, torch.Tensor]) -> None:
        if self.ema is None:
            self.ema = current  # the first update copies
        else:
            d = min(self.decay, (1 + self.updates) / (10 + self.updates))
            self.ema = {k: d * self.ema[k] + (1 - d) * current[k] for k in current}
        self.updates += 1

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: LitClassifier, batch, batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self.batch = (batch[0].clone(), batch[1].clone())
        self.net = copy.deepcopy(pl_module.net)
        if self.ema is not None:
            # WeightAveraging keeps its average in a private AveragedModel; read only.
            (averaging,) = [cb for cb in trainer.callbacks if isinstance(cb, WeightAveraging)]
            self.step_gaps.append(max_gap(_state(averaging._average_model.module), self.ema))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: LitClassifier, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._update_ema(_state(pl_module))

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: LitClassifier, batch, batch_idx: int, *_
    ) -> None:
        if not trainer.sanity_checking and batch_idx == 0:
            self.val_gaps.append(max_gap(_state(pl_module), self.ema))

    def on_train_end(self, trainer: L.Trainer, pl_module: LitClassifier) -> None:
        self.raw_final = _state(pl_module)  # before WeightAveraging copies the average in


@dataclass
class SquaresFit:
    cfg: TrainConfig
    trainer: L.Trainer
    lit: LitClassifier
    recorder: Recorder
    test_metrics: dict[str, float]
    squares: Squares


def cpu_config(data_dir: Path, out: Path, **overrides: object) -> TrainConfig:
    """The default recipe at max LR 0.01 in fp32 on one CPU process without workers: the same on every runner."""
    base = dict(data_dir=str(data_dir), out=str(out), max_lr=0.01, num_workers=0, precision="32-true")
    return TrainConfig(**(base | CPU | overrides))


def fit_squares(squares: Squares, out: Path, seed: int = 0, epochs: int = 3, batch_size: int = 20) -> SquaresFit:
    """A short fit with the default recipe (fp32, CPU, one device: the same on every runner), then its test."""
    cfg = cpu_config(squares.root, out, epochs=epochs, batch_size=batch_size, seed=seed)
    dm = build_datamodule(cfg)
    L.seed_everything(seed)
    recorder = Recorder(cfg.ema_decay)
    trainer, lit = fit(cfg, build_net(cfg), dm, cfg.max_lr, extra_callbacks=[recorder])
    (metrics,) = trainer.test(lit, datamodule=dm)
    return SquaresFit(cfg, trainer, lit, recorder, metrics, squares)
