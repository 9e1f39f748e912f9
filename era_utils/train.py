"""The whole pipeline: LR finder -> fit -> test -> plots -> misclassified export -> weight export.

python -m era_utils.train --data-dir ../shared/data/cifar10-jpeg --epochs 24 --out runs/full
"""

import argparse
import json
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from era_utils import plots
from era_utils.artifacts import export_artifacts, report, save_samples
from era_utils.config import NUM_CLASSES
from era_utils.data import CIFAR10DataModule, DataError
from era_utils.ema import WeightEMA
from era_utils.ghost_bn import use_ghost_batch_norm
from era_utils.hardware import check_hardware_settings, default_precision, device_for, hardware_settings
from era_utils.history import KeepLogOnResume, epoch_table
from era_utils.lit_module import CheckpointMismatchError, LitClassifier, RecipeCheck
from era_utils.lr_finder import LRFinderError, LRFinderResult, find_lr
from era_utils.model import CustomResNet
from era_utils.train_config import (
    FAST_DEV_LR_FIND_ITERS,
    RECIPE_OUTSIDE_THE_MODULE,
    VALID_RANGES,
    ConfigError,
    TrainConfig,
)
from era_utils.transforms import FLIPS

LR_FINDER_PLOT = "lr_finder.png"
# What to do when the checkpoint to resume cannot be read
START_AFRESH = "--overwrite instead of --resume starts a new run there"


@dataclass
class RunResult:
    """What `run` produced: the max LR, Lightning's test metrics, the epoch table, the report, the weights."""

    max_lr: float
    test_metrics: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    weights: Path | None = None
    history: pd.DataFrame | None = None


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
        plot_path=cfg.images_dir / LR_FINDER_PLOT,
    )
    net.cpu()
    return result


class TrainingDivergedError(RuntimeError):
    """The weights became NaN or infinite: the loss diverged (too high a max LR or weight decay)."""


class StopOnDivergence(L.Callback):
    """Stops the run at the end of the epoch in which its weights became NaN or infinite, before that epoch's
    checkpoint (ModelCheckpoint's hook runs after the others) and any export replace the files of a good epoch."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not all(t.isfinite().all() for t in pl_module.state_dict().values()):
            raise TrainingDivergedError(
                f"training diverged in epoch {trainer.current_epoch + 1}: the weights hold NaN or infinity; nothing "
                "was exported, the last checkpoint (if any) is the epoch's before; train again with a lower --max-lr "
                "or --weight-decay"
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
        ModelCheckpoint(dirpath=cfg.checkpoint_dir, filename=cfg.last_checkpoint.stem, enable_version_counter=False),
        RecipeCheck(**{name: getattr(cfg, name) for name in RECIPE_OUTSIDE_THE_MODULE}),
        StopOnDivergence(),
    ]
    # Each row goes to disk as it is logged, so a killed run's log holds every row up to its checkpoint, and a
    # resume keeps those rows (the logger deletes the file when the resumed run starts).
    logger = CSVLogger(cfg.out, name="logs", version="", flush_logs_every_n_steps=1)
    if cfg.resume:
        callbacks.append(KeepLogOnResume(Path(logger.log_dir) / "metrics.csv"))
    if cfg.ema_decay > 0:
        callbacks.append(WeightEMA(cfg.ema_decay))
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
    last = cfg.last_checkpoint
    if not last.is_file():
        raise DataError(f"--resume: no checkpoint at {last}; run once without --resume first")
    return str(last)


def refuse_to_replace_a_run(cfg: TrainConfig) -> None:
    """A new run into an OUT that holds an earlier run's checkpoint (hours of training, perhaps interrupted) needs
    --overwrite: it would replace the log at once and the checkpoint after one epoch."""
    last = cfg.last_checkpoint
    if last.exists() and not (cfg.resume or cfg.overwrite):
        raise ConfigError(
            f"{last} holds an earlier run: --resume continues it, --overwrite starts a new run in its place "
            "(replacing its checkpoint, log, plots and weights), or choose another --out"
        )


def read_checkpoint(path: str) -> dict:
    """The checkpoint `--resume` continues, or a clear error if it is damaged or not a checkpoint of this project."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, OSError, RuntimeError, ValueError, pickle.UnpicklingError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise DataError(f"--resume: {path} is not a readable checkpoint ({reason}); {START_AFRESH}") from None
    if not isinstance(checkpoint, dict) or "max_lr" not in checkpoint.get("hyper_parameters", {}):
        raise DataError(f"--resume: {path} is not a checkpoint of era_utils.train; {START_AFRESH}")
    return checkpoint


def checkpoint_max_lr(cfg: TrainConfig) -> float:
    """The max LR of the run `--resume` continues."""
    return float(read_checkpoint(resume_checkpoint(cfg))["hyper_parameters"]["max_lr"])


def choose_max_lr(cfg: TrainConfig, net: CustomResNet, dm: CIFAR10DataModule, processes: int = 1) -> float:
    """OneCycle's max LR: `max_lr`, or with None the LR finder's suggestion (on resume the checkpoint's).

    A run that is not resumed runs the range test for its plot even with `max_lr` given, as the notebook does,
    unless `lr_find_iters` is 0 or several processes train (each would run it); `fit` refuses a resume whose
    max LR differs from the checkpoint's."""
    if cfg.resume:
        return checkpoint_max_lr(cfg) if cfg.max_lr is None else cfg.max_lr
    if cfg.max_lr is None:
        return run_lr_finder(cfg, net, dm).suggested_lr
    if cfg.lr_find_iters and processes == 1:
        try:
            suggested = run_lr_finder(cfg, net, dm).suggested_lr
            print(f"LR finder's suggestion: {suggested:.3e}; training at --max-lr {cfg.max_lr:g} (not 'finder')")
        except LRFinderError as err:
            (cfg.images_dir / LR_FINDER_PLOT).unlink(missing_ok=True)  # an earlier run's, in the same folder
            print(f"no LR finder plot: the range test's loss diverged after {err.batches} batches")
    return cfg.max_lr


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


def run(cfg: TrainConfig) -> RunResult:
    """Run every stage; in multi-process runs only global rank 0 writes the reports."""
    # First the settings, the checkpoint and the data: a mistake in any fails before anything is printed or written.
    processes = check_hardware_settings(cfg)
    refuse_to_replace_a_run(cfg)
    if cfg.resume:
        read_checkpoint(resume_checkpoint(cfg))
    dm = build_datamodule(cfg)
    make_output_dirs(cfg)
    L.seed_everything(cfg.seed, workers=True)
    save_samples(dm, cfg.images_dir / "augmented_samples.png")
    net = build_net(cfg)
    max_lr = choose_max_lr(cfg, net, dm, processes)
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


def max_lr_arg(text: str) -> float | None:
    """`--max-lr`: a positive number, or "finder" (None) for the LR finder's suggestion."""
    if text == "finder":
        return None
    valid, must_be = VALID_RANGES["max_lr"]
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not valid(value):
        raise argparse.ArgumentTypeError(f"max_lr must be {must_be}, or 'finder', got {text}")
    return value


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
        type=max_lr_arg,
        default=defaults.max_lr,
        help="OneCycle's peak LR (the committed recipe's, read off the LR finder's plot); 'finder': the LR finder's "
        "suggestion (one process only; on --resume the checkpoint's)",
    )
    p.add_argument(
        "--weight-decay", type=float, default=defaults.weight_decay, help="AdamW's, on conv and linear weights only"
    )
    p.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing, help="of the cross-entropy")
    p.add_argument(
        "--ema-decay",
        type=float,
        default=defaults.ema_decay,
        help="0 turns the weight EMA off; its warm-up caps the decay at (1 + n) / (10 + n) after n steps, 0.9962 at "
        "the last of 24 epochs at batch 512 (a higher decay is warned of)",
    )
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
        help="alternating: each training image mirrored at random in the first epoch, then the other way round in "
        "every next one (airbench); random: mirrored with p = 0.5 in every epoch",
    )
    p.add_argument(
        "--lr-find-iters",
        type=int,
        default=defaults.lr_find_iters,
        help="the LR range test's batches (it runs for its plot with any --max-lr); 0: no range test",
    )
    p.add_argument("--accelerator", default=defaults.accelerator, help="Lightning's: cpu, gpu, auto")
    p.add_argument("--devices", default=defaults.devices, help="Lightning's: a count, or auto")
    p.add_argument("--strategy", default=defaults.strategy, help="Lightning's, e.g. ddp")
    p.add_argument("--num-nodes", type=int, default=defaults.num_nodes, help="machines, for DDP")
    p.add_argument(
        "--precision",
        help="Lightning precision; default 16-mixed on GPU, and on CPU bf16-mixed where it runs fast, else 32-true",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    p.add_argument(
        "--overwrite", action="store_true", help="start a new run in an OUT that holds an earlier run's checkpoint"
    )
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
    except (CheckpointMismatchError, ConfigError, DataError, LRFinderError, TrainingDivergedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.report:
        summary = {k: result.report[k] for k in ("n", "accuracy", "accuracy_tta", "accuracy_tta_translate")}
        print(json.dumps(summary | {"max_lr": result.max_lr, "weights": str(result.weights)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
