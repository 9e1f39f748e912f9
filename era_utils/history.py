"""The per-epoch training log: Lightning's CSVLogger output, kept whole across a resume, read as a table."""

import csv
import io
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd

COLUMNS = {"train/loss": "train_loss", "train/acc": "train_acc", "val/loss": "val_loss", "val/acc": "val_acc"}


def epoch_table(metrics_csv: str | Path) -> pd.DataFrame:
    """One row per epoch: train/val loss and accuracy, and the learning rate at the epoch's last logged step."""
    raw = pd.read_csv(metrics_csv)
    lr_columns = [c for c in raw.columns if c.startswith("lr-")]
    table = raw.groupby("epoch").last()[[c for c in COLUMNS if c in raw.columns]].rename(columns=COLUMNS)
    if lr_columns:
        # LearningRateMonitor's rows carry a step but no epoch: place each in the epoch whose last step covers it.
        epoch_ends = raw.dropna(subset=["epoch"]).groupby("epoch")["step"].max()
        lr = raw.dropna(subset=[lr_columns[0]])
        lr = lr[lr["step"] <= epoch_ends.iloc[-1]]  # an interrupted run's unfinished epoch has no row
        position = np.searchsorted(epoch_ends.to_numpy(), lr["step"].to_numpy())
        table["lr"] = lr.groupby(epoch_ends.index[position])[lr_columns[0]].last()
    table = table.dropna(subset=[c for c in ("train_loss", "val_loss") if c in table.columns], how="all")
    table.index = table.index.astype(int) + 1
    table.index.name = "epoch"
    return table


class KeepLogOnResume(L.Callback):
    """Puts back, in a resumed run, the rows of `metrics.csv` logged before its checkpoint.

    The CSVLogger writes every attempt into the same folder and deletes the earlier `metrics.csv` when the resumed
    run starts; without this the log, the curves and the per-epoch table would begin at the interruption. Rows from
    the checkpoint's step on are left out: the resumed run logs those steps again. The rows go back when the fit
    starts, before its training loop, which a checkpoint of the last epoch skips (a run killed while testing); a
    resume that fails before then (a refused checkpoint) leaves the file as it was.
    """

    def __init__(self, metrics_csv: Path) -> None:
        self.metrics_csv = metrics_csv
        self.saved = metrics_csv.read_bytes() if metrics_csv.is_file() else b""  # read now: the logger deletes it
        self.checkpoint_step = 0

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.checkpoint_step = checkpoint["global_step"]  # loaded before on_fit_start, the trainer's step after it

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for row in csv.DictReader(io.StringIO(self.saved.decode(), newline="")):
            step = int(row.pop("step"))
            if step < self.checkpoint_step:
                trainer.logger.log_metrics({k: float(v) for k, v in row.items() if v != ""}, step=step)
        self.saved = b""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.saved:  # the rows are not back yet
            self.metrics_csv.write_bytes(self.saved)
