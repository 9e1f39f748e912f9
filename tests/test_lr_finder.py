import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from era_utils.config import NUM_CLASSES
from era_utils.data import CIFAR10DataModule
from era_utils.lr_finder import find_lr
from era_utils.model import CustomResNet
from era_utils.train import cpu_has_fast_bf16

START_LR, END_LR, NUM_ITER = 1e-7, 0.1, 20  # up to 0.1, not 10: no early stop on divergence


def test_range_test_ramps_exponentially_suggests_the_steepest_fall_and_restores_the_weights(image_folder, tmp_path):
    torch.manual_seed(0)
    net = CustomResNet(NUM_CLASSES)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loader = DataLoader(CIFAR10DataModule(image_folder).train_dataset(), batch_size=8)
    bf16 = cpu_has_fast_bf16()
    result = find_lr(
        net, loader, 0.05, start_lr=START_LR, end_lr=END_LR, num_iter=NUM_ITER, bf16=bf16, plot_path=tmp_path / "lr.png"
    )

    # The LR grows by the same factor every batch, from START_LR to END_LR over the NUM_ITER batches.
    assert len(result.lrs) == len(result.losses) == NUM_ITER
    ratios = np.diff(np.log(result.lrs))
    assert ratios == pytest.approx(np.full(NUM_ITER - 1, np.log(END_LR / START_LR) / (NUM_ITER - 1)))
    assert result.lrs[-1] == pytest.approx(END_LR)
    # The first loss is the untrained network's cross-entropy on the first batch (the range test trains `net`
    # on `loader`), and the suggestion is where the smoothed loss falls fastest, torch-lr-finder's window
    # (the first 10 and last 5 batches left out) computed here again.
    untrained = CustomResNet(NUM_CLASSES)
    untrained.load_state_dict(before)
    images, labels = next(iter(loader))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        first = F.cross_entropy(untrained.train()(images).float(), labels).item()
    assert result.losses[0] == pytest.approx(first, rel=2e-2 if bf16 else 1e-5)
    window = slice(10, NUM_ITER - 5)
    steepest = np.gradient(np.asarray(result.losses[window])).argmin()
    assert result.suggested_lr == result.lrs[window][steepest]
    assert (tmp_path / "lr.png").stat().st_size > 0
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
