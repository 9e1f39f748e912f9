"""Leslie Smith's LR range test with torch-lr-finder; the network and optimizer are restored after."""

import gc
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch_lr_finder import LRFinder

from era_utils.lit_module import param_groups

# The suggestion leaves out the first and last batches of the curve, and needs two more to take a slope.
SKIP_START, SKIP_END = 10, 5
MIN_BATCHES = SKIP_START + SKIP_END + 2


class LRFinderError(RuntimeError):
    """The range test stopped (its loss diverged) after `batches`, too early for a suggestion."""

    def __init__(self, batches: int) -> None:
        super().__init__(
            f"the LR range test's loss diverged after {batches} batches, too few to suggest a max LR (it takes "
            f"{MIN_BATCHES}); give one (a number for --max-lr, or for MAX_LR in the notebook), or more --lr-find-iters"
        )
        self.batches = batches


@dataclass
class LRFinderResult:
    """The steepest-descent suggestion and the recorded curve (LR, smoothed loss per batch)."""

    suggested_lr: float
    lrs: list[float]
    losses: list[float]
    plot_path: Path | None


def find_lr(
    net: nn.Module,
    loader: DataLoader,
    weight_decay: float,
    label_smoothing: float = 0.0,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 200,
    bf16: bool = False,
    plot_path: str | Path | None = None,
) -> LRFinderResult:
    """Exponential range test over `num_iter` batches with the training optimizer (AdamW).

    The suggestion is the learning rate where the smoothed loss falls fastest.
    """
    device = next(net.parameters()).device
    optimizer = torch.optim.AdamW(param_groups(net, weight_decay), lr=start_lr)
    amp = {"device_type": device.type, "dtype": torch.bfloat16} if bf16 else None
    finder = LRFinder(
        net,
        optimizer,
        nn.CrossEntropyLoss(label_smoothing=label_smoothing),
        device=device,
        amp_backend="torch" if bf16 else None,
        amp_config=amp,
        grad_scaler=torch.amp.GradScaler(device.type, enabled=False) if bf16 else None,
    )
    finder.range_test(loader, end_lr=end_lr, num_iter=num_iter, step_mode="exp")
    if len(finder.history["lr"]) < MIN_BATCHES:
        finder.reset()
        raise LRFinderError(len(finder.history["lr"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax, suggested = finder.plot(skip_start=SKIP_START, skip_end=SKIP_END, ax=ax, suggest_lr=True)
    ax.set_title(f"LR range test: suggested max LR {suggested:.2e}")
    if plot_path is not None:
        plot_path = Path(plot_path)
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot_path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    result = LRFinderResult(float(suggested), list(finder.history["lr"]), list(finder.history["loss"]), plot_path)
    finder.reset()
    # Collect the range test's loader iterator now: left to a later GC, it can be finalized inside a forked
    # training worker, which prints "Exception ignored in _MultiProcessingDataLoaderIter.__del__".
    del finder
    gc.collect()
    return result
