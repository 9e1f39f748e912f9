"""The whole pipeline: LR finder -> fit -> test -> plots -> misclassified export -> weight export.

python -m era_utils.train --data-dir ../shared/data/cifar10-jpeg --epochs 24 --out runs/full
"""

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
    WeightAveraging,
)
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from PIL import Image
from torch.utils.data import Subset

from era_utils import plots
from era_utils.config import CLASS_NAMES, NUM_CLASSES
from era_utils.data import CIFAR10DataModule, DataError
from era_utils.evaluate import Predictions, predict
from era_utils.export import export_model
from era_utils.ghost_bn import use_ghost_batch_norm
from era_utils.history import KeepLogOnResume, epoch_table
from era_utils.lit_module import CheckpointMismatchError, LitClassifier, RecipeCheck
from era_utils.lr_finder import LRFinderError, LRFinderResult, find_lr
from era_utils.misclassified import caption, confident_mistakes, export_misclassified, save_store
from era_utils.model import CustomResNet
from era_utils.transforms import FLIPS, denormalize

# The smoke run's range test: a few more batches than the suggestion takes (lr_finder.MIN_BATCHES), since the
# loss may diverge before the last one.
FAST_DEV_LR_FIND_ITERS = 20


class ConfigError(ValueError):
    """A knob of TrainConfig is out of its range; the message names it and the range."""


# Numeric knobs and the ranges they must lie in (None, where a knob allows it, is always valid).
VALID_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "epochs": (lambda v: v >= 1, "at least 1"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "max_lr": (lambda v: v > 0, "positive"),
    "weight_decay": (lambda v: v >= 0, "0 or more"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "logit_scale": (lambda v: v > 0, "positive"),
    "ema_decay": (lambda v: 0 <= v < 1, "in [0, 1) (0 turns the EMA off)"),
    "pct_start": (lambda v: 0 < v < 1, "in (0, 1)"),
    "ghost_batch_size": (lambda v: v == 0 or v >= 2, "0 (off) or at least 2"),
    "lr_find_iters": (lambda v: v >= FAST_DEV_LR_FIND_ITERS, f"at least {FAST_DEV_LR_FIND_ITERS}"),
    "num_nodes": (lambda v: v >= 1, "at least 1"),
    "per_class": (lambda v: v >= 1, "at least 1"),
    "num_workers": (lambda v: v >= 0, "0 or more"),
    "n_misclassified": (lambda v: v >= 0, "0 or more"),
}

# What a resumed run must share with its checkpoint besides LitClassifier's hyperparameters and OneCycle's length.
RECIPE_OUTSIDE_THE_MODULE = ("seed", "flip", "ghost_batch_size", "ema_decay", "logit_scale", "per_class")


@dataclass
class TrainConfig:
    """Every knob of a run; written into the exported JSON."""

    data_dir: str | None = None  # offline image folder; None downloads CIFAR-10 with torchvision
    download_root: str = "data"  # where torchvision's download goes
    out: str = "runs/latest"  # logs, checkpoints, plots, weights
    epochs: int = 24
    batch_size: int = 512
    max_lr: float | None = None  # None: take the LR finder's suggestion
    weight_decay: float = 0.05  # decoupled (AdamW), conv and linear weights only
    label_smoothing: float = 0.1
    logit_scale: float = 0.125  # Page's output scaling; slows the last layer under Adam
    ema_decay: float = 0.995  # per-step EMA of weights and BN buffers, with warm-up; 0 turns it off
    pct_start: float = 5 / 24  # warm-up share of OneCycle: 5 of 24 epochs
    flip: str = "random"  # "random" (p = 0.5) or "alternating" (airbench's: the other way round each epoch)
    ghost_batch_size: int = 0  # training BN statistics over slices of this many images (Page: 32); 0: whole batch
    lr_find_iters: int = 200
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None  # None: 16-mixed on GPU; on CPU bf16-mixed where oneDNN supports it, else 32-true
    resume: bool = False
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

    @property
    def out_path(self) -> Path:
        return Path(self.out)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_path / "checkpoints"

    @property
    def images_dir(self) -> Path:
        return self.out_path / "images"

    @property
    def app_path(self) -> Path:
        """Where the weights, the app's examples and its misclassified store go."""
        return Path(self.app_dir) if self.app_dir else self.out_path


@dataclass
class RunResult:
    """What `run` produced: the max LR, Lightning's test metrics, the epoch table, the report, the weights."""

    max_lr: float
    test_metrics: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    weights: Path | None = None
    history: pd.DataFrame | None = None


def uses_gpu(cfg: TrainConfig) -> bool:
    """Whether the run trains on a CUDA GPU."""
    return cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())


def device_for(cfg: TrainConfig) -> torch.device:
    """The GPU when the run trains on one, else the CPU: where the LR finder and the test report run."""
    return torch.device("cuda" if uses_gpu(cfg) else "cpu")


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bf16 on this CPU (on x86: AVX-512; PyTorch's own check).

    Where it does, bf16 autocast trained 1.85x faster than fp32; on an AVX2-only CPU it trained 12x slower,
    3.1 against 36.7 images/s (benchmarks/train_throughput.py, README "Performance").
    """
    try:  # a private op of PyTorch's (its tests use it); without it, fp32 is the safe answer
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def default_precision(cfg: TrainConfig) -> str:
    """fp16 mixed precision on GPU; bf16 autocast on a CPU that runs it fast, else fp32."""
    if cfg.precision:
        if cfg.precision.startswith("bf16") and not uses_gpu(cfg) and not cpu_has_fast_bf16():
            rank_zero_warn(f"--precision {cfg.precision}: this CPU runs bf16 about 12x slower than fp32 (32-true)")
        return cfg.precision
    if uses_gpu(cfg):
        return "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


def build_datamodule(cfg: TrainConfig) -> CIFAR10DataModule:
    """The data module, its splits loaded (downloaded or read from `data_dir`), so data errors come first."""
    dm = CIFAR10DataModule(
        cfg.data_dir, cfg.batch_size, cfg.num_workers, cfg.per_class, cfg.download_root, cfg.seed, cfg.flip
    )
    dm.prepare_data()
    dm.setup()
    return dm


def build_net(cfg: TrainConfig) -> CustomResNet:
    """The network initialised from `cfg.seed`, leaving the global RNG as it was: with the data order and
    augmentation, which follow the seed too, a notebook run repeats as a command-line run does.

    With `ghost_batch_size` its batch norms train on slices of the batch; the weights keep their shapes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = CustomResNet(num_classes=NUM_CLASSES, logit_scale=cfg.logit_scale)
    return use_ghost_batch_norm(net, cfg.ghost_batch_size) if cfg.ghost_batch_size else net


def run_lr_finder(cfg: TrainConfig, net: CustomResNet, dm: CIFAR10DataModule) -> LRFinderResult:
    """Range test on the training loader with the training optimizer; the weights are restored after."""
    net.to(device_for(cfg), memory_format=torch.channels_last)  # as in training: faster on CPU, in bf16 and in fp32
    result = find_lr(
        net,
        dm.train_dataloader(),
        weight_decay=cfg.weight_decay,
        label_smoothing=cfg.label_smoothing,
        num_iter=FAST_DEV_LR_FIND_ITERS if cfg.fast_dev_run else cfg.lr_find_iters,
        bf16=default_precision(cfg).startswith("bf16"),
        plot_path=cfg.images_dir / "lr_finder.png",
    )
    net.cpu()
    return result


def ema_with_warmup(decay: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """EMA update whose decay ramps up as min(decay, (1 + n) / (10 + n)) over the n updates so far
    (TensorFlow's ExponentialMovingAverage rule with `num_updates`).

    Without the ramp a short run exports mostly its random initial weights: 0.995 ** 98 = 61% after one epoch.
    """

    @torch.no_grad()
    def update(ema: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = float(num_averaged)
        step_decay = min(decay, (1 + n) / (10 + n))
        return step_decay * ema + (1 - step_decay) * current

    return update


def hardware_settings(cfg: TrainConfig) -> dict:
    """The Trainer's accelerator, devices, strategy, nodes and precision."""
    devices = int(cfg.devices) if str(cfg.devices).isdigit() else cfg.devices
    return {
        "accelerator": cfg.accelerator,
        "devices": devices,
        "strategy": cfg.strategy,
        "num_nodes": cfg.num_nodes,
        "precision": default_precision(cfg),
    }


def check_hardware_settings(cfg: TrainConfig) -> None:
    """Lightning's own checks of the hardware settings, run now rather than after the LR finder's minutes; and
    with several processes, a max LR given rather than found by each."""
    settings = hardware_settings(cfg)
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # the probe Trainer would print "GPU available: ..." a second time
    try:
        probe = L.Trainer(
            **settings, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
        )
    except (MisconfigurationException, TypeError, ValueError) as err:
        flags = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in settings.items())
        raise ConfigError(f"Lightning refuses {flags}: {err}") from None
    finally:
        lightning_log.setLevel(level)
    if probe.world_size > 1 and cfg.max_lr is None and not cfg.resume:
        raise ConfigError(
            f"--max-lr is required with {probe.world_size} processes: each would run its own LR finder and could "
            "train with another max LR (the committed recipe used --max-lr 0.01)"
        )


def build_trainer(cfg: TrainConfig, extra_callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    """The Trainer: progress bar, LR log, `last.ckpt` every epoch, recipe check, EMA, CSV log in `OUT/logs`."""
    callbacks = [
        *extra_callbacks,
        # The plain-text bar: it also renders in notebooks run by papermill, where Rich's live display is lost.
        TQDMProgressBar(refresh_rate=10),
        LearningRateMonitor(logging_interval="step"),
        # Only `last.ckpt`, at every epoch end. (Lightning's OnExceptionCheckpoint is left out on purpose:
        # with it, every fit silently resumes from an old `last.ckpt`, even without --resume.)
        ModelCheckpoint(dirpath=cfg.checkpoint_dir, filename="last", enable_version_counter=False),
        RecipeCheck(**{name: getattr(cfg, name) for name in RECIPE_OUTSIDE_THE_MODULE}),
    ]
    # Each row goes to disk as it is logged, so a killed run's log holds every row up to its checkpoint, and a
    # resume keeps those rows (the logger deletes the file when the resumed run starts).
    logger = CSVLogger(cfg.out, name="logs", version="", flush_logs_every_n_steps=1)
    if cfg.resume:
        callbacks.append(KeepLogOnResume(Path(logger.log_dir) / "metrics.csv"))
    if cfg.ema_decay > 0:
        callbacks.append(WeightAveraging(device=None, use_buffers=True, avg_fn=ema_with_warmup(cfg.ema_decay)))
    return L.Trainer(
        max_epochs=cfg.epochs,
        **hardware_settings(cfg),
        logger=logger,
        callbacks=callbacks,
        fast_dev_run=cfg.fast_dev_run,
        log_every_n_steps=10,
    )


def resume_checkpoint(cfg: TrainConfig) -> str | None:
    """`OUT/checkpoints/last.ckpt` with `--resume` (a clear error if there is none), else None."""
    if not cfg.resume:
        return None
    last = cfg.checkpoint_dir / "last.ckpt"
    if not last.is_file():
        raise DataError(f"--resume: no checkpoint at {last}; run once without --resume first")
    return str(last)


def choose_max_lr(cfg: TrainConfig, net: CustomResNet, dm: CIFAR10DataModule) -> float:
    """`--max-lr` if given; on resume the checkpoint's (its OneCycle schedule goes on with it, and `fit` refuses
    a `--max-lr` that differs from it); else the LR finder's suggestion."""
    if cfg.max_lr is not None:
        return cfg.max_lr
    if cfg.resume:
        checkpoint = torch.load(resume_checkpoint(cfg), map_location="cpu", weights_only=True)
        return float(checkpoint["hyper_parameters"]["max_lr"])
    return run_lr_finder(cfg, net, dm).suggested_lr


def make_output_dirs(cfg: TrainConfig) -> None:
    """The plots' folder and the app's, or one clear error if a file stands in the way or access is denied."""
    for folder in (cfg.images_dir, cfg.app_path):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create the output folder {folder} ({err.strerror})") from None


def fit(
    cfg: TrainConfig,
    net: CustomResNet,
    dm: CIFAR10DataModule,
    max_lr: float,
    extra_callbacks: Sequence[L.Callback] = (),
) -> tuple[L.Trainer, LitClassifier]:
    """Train with Lightning; returns the trainer and module (EMA weights swapped in at the end)."""
    lit = LitClassifier(
        net,
        num_classes=NUM_CLASSES,
        max_lr=max_lr,
        weight_decay=cfg.weight_decay,
        label_smoothing=cfg.label_smoothing,
        pct_start=cfg.pct_start,
    )
    trainer = build_trainer(cfg, extra_callbacks)
    trainer.fit(lit, datamodule=dm, ckpt_path=resume_checkpoint(cfg))
    return trainer, lit


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
    metrics = preds.report()
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
    metrics = preds.report()  # the schema model.json carries: see Predictions.report
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


def run(cfg: TrainConfig) -> RunResult:
    """Run every stage; in multi-process runs only global rank 0 writes the reports."""
    # First the settings, the checkpoint and the data: a mistake in any fails before anything is printed or written.
    check_hardware_settings(cfg)
    resume_checkpoint(cfg)
    dm = build_datamodule(cfg)
    make_output_dirs(cfg)
    L.seed_everything(cfg.seed, workers=True)
    save_samples(dm, cfg.images_dir / "augmented_samples.png")
    net = build_net(cfg)
    max_lr = choose_max_lr(cfg, net, dm)
    print(f"max LR for OneCycle: {max_lr:.3e}")
    trainer, lit = fit(cfg, net, dm, max_lr)
    test_metrics = trainer.test(lit, datamodule=dm)[0]
    result = RunResult(max_lr=max_lr, test_metrics=test_metrics)
    if not trainer.is_global_zero:
        return result
    if not cfg.fast_dev_run:  # fast_dev_run logs nothing
        result.history = epoch_table(Path(trainer.logger.log_dir) / "metrics.csv")
        plots.training_curves(result.history, cfg.images_dir / "training_curves.png")
    preds, result.report = report(cfg, lit.net, dm)
    result.weights = export_artifacts(cfg, lit.net, dm, preds, max_lr)
    return result


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each flag's default after its help (unless it has none)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default in (None, False) else super()._get_help_string(action)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The command line as a TrainConfig."""
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m era_utils.train", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--data-dir", help="offline image folder with train/<class>/ and test/<class>/; default: download")
    p.add_argument("--download-root", default=defaults.download_root, help="where CIFAR-10 is downloaded to")
    p.add_argument("--out", default=defaults.out, help="artifacts folder")
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="training epochs")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per training step")
    p.add_argument(
        "--max-lr",
        type=float,
        help="OneCycle's peak LR (the committed recipe: 0.01), skipping the LR finder; required with several "
        "processes; default: the LR finder's suggestion, or on --resume the checkpoint's",
    )
    p.add_argument(
        "--weight-decay", type=float, default=defaults.weight_decay, help="AdamW's, on conv and linear weights only"
    )
    p.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing, help="of the cross-entropy")
    p.add_argument("--ema-decay", type=float, default=defaults.ema_decay, help="0 turns the weight EMA off")
    p.add_argument(
        "--pct-start",
        type=float,
        default=defaults.pct_start,
        help="OneCycle's warm-up share of the steps (default: 5/24 = %(default).3f)",
    )
    p.add_argument(
        "--ghost-batch-size",
        type=int,
        default=defaults.ghost_batch_size,
        help="batch-norm statistics in training over slices of this many images (Page: 32); 0: the whole batch",
    )
    p.add_argument(
        "--flip",
        choices=FLIPS,
        default=defaults.flip,
        help="random: each training image mirrored with p = 0.5; alternating: at random in the first epoch, "
        "then the other way round in every next one (airbench)",
    )
    p.add_argument("--lr-find-iters", type=int, default=defaults.lr_find_iters, help="the LR range test's batches")
    p.add_argument("--accelerator", default=defaults.accelerator, help="Lightning's: cpu, gpu, auto")
    p.add_argument("--devices", default=defaults.devices, help="Lightning's: a count, or auto")
    p.add_argument("--strategy", default=defaults.strategy, help="Lightning's, e.g. ddp")
    p.add_argument("--num-nodes", type=int, default=defaults.num_nodes, help="machines, for DDP")
    p.add_argument(
        "--precision",
        help="Lightning precision; default 16-mixed on GPU, and on CPU bf16-mixed where it runs fast, else 32-true",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    p.add_argument("--seed", type=int, default=defaults.seed, help="of the initialisation, data order and augmentation")
    p.add_argument("--fast-dev-run", action="store_true", help="one batch of each stage (smoke test)")
    p.add_argument("--per-class", type=int, help="use only this many images per class")
    p.add_argument("--num-workers", type=int, default=defaults.num_workers, help="data-loading processes")
    p.add_argument(
        "--n-misclassified", type=int, default=defaults.n_misclassified, help="mistakes written as PNG files"
    )
    p.add_argument("--app-dir", help="write weights, examples and the misclassified store here (default: OUT)")
    try:
        return TrainConfig(**vars(p.parse_args(argv)))
    except ConfigError as err:
        p.error(str(err))


def main(argv: list[str] | None = None) -> int:
    """The command line: 0 on success, 2 with one `error:` line for a mistake in the settings or the data."""
    cfg = parse_args(argv)
    try:
        result = run(cfg)
    except (CheckpointMismatchError, ConfigError, DataError, LRFinderError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.report:
        summary = {k: result.report[k] for k in ("n", "accuracy", "accuracy_tta", "accuracy_tta_translate")}
        print(json.dumps(summary | {"max_lr": result.max_lr, "weights": str(result.weights)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
