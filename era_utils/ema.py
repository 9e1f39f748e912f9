"""The exponential moving average of the weights and batch-norm buffers that validation, test and export use."""

from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities import rank_zero_warn


def warmup_decay(decay: float, num_averaged: int) -> float:
    """The decay of the update after `num_averaged` updates: min(decay, (1 + n) / (10 + n)), TensorFlow's
    ExponentialMovingAverage rule with `num_updates`."""
    return min(decay, (1 + num_averaged) / (10 + num_averaged))


def highest_reachable_decay(total_steps: int) -> float:
    """The warm-up's decay at the last update of a run of `total_steps` steps (the first update copies the
    weights, so the last comes after total_steps - 1): no configured decay above it is ever used."""
    return warmup_decay(1.0, max(total_steps - 1, 0))


def ema_with_warmup(decay: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """EMA update whose decay ramps up as min(decay, (1 + n) / (10 + n)) over the n updates so far.

    Without the ramp a short run exports mostly its random initial weights: 0.995 ** 98 = 61% after one epoch.
    Integer buffers (batch norm's step counters) are not averaged but follow the model: a mean would be truncated.
    """

    @torch.no_grad()
    def update(ema: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        if not ema.is_floating_point():
            return current
        step_decay = warmup_decay(decay, int(num_averaged))
        return step_decay * ema + (1 - step_decay) * current

    return update


class WeightEMA(WeightAveraging):
    """Lightning's WeightAveraging with the warm-up EMA of the weights and buffers, kept on the training device.

    Lightning makes the AveragedModel in `setup`, before the strategy moves the module to its device, so with
    `device=None` a GPU run's average stayed in host memory: every training step copied the weights and buffers
    (26 MB) off the GPU and averaged them on the CPU's cores, which on Colab's two vCPUs also feed the data loader.
    `on_fit_start` comes after the move (and after a resumed run's average is loaded into it).
    """

    def __init__(self, decay: float) -> None:
        super().__init__(use_buffers=True, avg_fn=ema_with_warmup(decay))
        self.decay = decay

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if self._average_model is not None:
            self._average_model.to(pl_module.device)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Warns of a decay above the warm-up's last: 0.998 in 24 epochs at batch 512 would train 0.9962's EMA."""
        steps = trainer.estimated_stepping_batches
        if trainer.fast_dev_run or steps == float("inf"):
            return
        highest = highest_reachable_decay(int(steps))
        if self.decay > highest:
            rank_zero_warn(
                f"EMA decay {self.decay} is never reached: its warm-up, min(decay, (1 + n) / (10 + n)) after n "
                f"updates, rises only to {highest:.4f} in this run's {int(steps)} steps, so any decay from there up "
                "averages the same weights"
            )
