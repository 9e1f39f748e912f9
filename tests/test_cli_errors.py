"""Mistakes on the command lines that used to end in a traceback or a silent wrong result: each is now one `error:`
line and exit code 2, with the files of earlier runs left as they were."""

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from learning_helpers import CPU_FLAGS, cpu_config

from era_utils.train import StopOnDivergence, TrainingDivergedError, build_datamodule, build_net, fit, main


class PoisonInEpoch(L.Callback):
    """Sets one weight to NaN at the first batch of `epoch`, as a diverging loss would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                weight = next(pl_module.parameters())
                weight[(0,) * weight.ndim] = float("nan")


@pytest.mark.usefixtures("no_lr_finder")
def test_a_diverging_run_stops_with_one_line_and_exports_nothing(image_folder: Path, tmp_path: Path, capsys) -> None:
    """A weight decay that blows the weights up (finite, so allowed) trained to NaN weights and exported them with
    exit code 0 and an accuracy of 0.1, replacing the app's model: now the run stops and the app's files stay."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "model.json").write_text("the shipped model's")
    args = ["--data-dir", str(image_folder), "--out", str(tmp_path / "run"), "--app-dir", str(app)]
    flags = ["--epochs", "1", "--lr-find-iters", "0", "--batch-size", "8", "--num-workers", "0", *CPU_FLAGS]
    assert main([*args, *flags, "--weight-decay", "1e30"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: training diverged in epoch 1: the weights hold NaN or infinity")
    assert sorted(p.name for p in app.iterdir()) == ["model.json"]
    assert (app / "model.json").read_text() == "the shipped model's"


def test_a_run_diverging_in_a_later_epoch_keeps_the_checkpoint_of_the_epoch_before(
    image_folder: Path, tmp_path: Path
) -> None:
    cfg = cpu_config(image_folder, tmp_path, epochs=2, batch_size=8)
    with pytest.raises(TrainingDivergedError, match="in epoch 2"):
        fit(cfg, build_net(cfg), build_datamodule(cfg), 0.01, extra_callbacks=[PoisonInEpoch(1)])
    checkpoint = torch.load(cfg.last_checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 0
    assert all(t.isfinite().all() for t in checkpoint["state_dict"].values())


def test_a_single_weight_gone_nan_stops_the_run() -> None:
    """A NaN or infinity from the epoch's last step has not spread to the other weights yet (the runs above spread
    it over a whole epoch): one element of one tensor is enough, or its checkpoint would replace the good one."""
    net = torch.nn.Linear(3, 2)
    StopOnDivergence().on_train_epoch_end(SimpleNamespace(current_epoch=2), net)  # finite: goes on
    for bad in (float("nan"), float("inf")):
        with torch.no_grad():
            net.weight[0, 0] = bad
        with pytest.raises(TrainingDivergedError, match="in epoch 3"):
            StopOnDivergence().on_train_epoch_end(SimpleNamespace(current_epoch=2), net)
