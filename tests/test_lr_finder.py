from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from learning_helpers import CPU_FLAGS, cpu_config
from torch.utils.data import DataLoader

from era_utils import lr_finder, train
from era_utils.config import NUM_CLASSES
from era_utils.data import CIFAR10DataModule
from era_utils.hardware import cpu_has_fast_bf16
from era_utils.lr_finder import LRFinderResult, find_lr
from era_utils.model import CustomResNet
from era_utils.train import build_datamodule, run_lr_finder
from era_utils.train_config import FAST_DEV_LR_FIND_ITERS, TrainConfig

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


class RecordingFinder:
    """Stands in for torch-lr-finder's LRFinder: records the optimizer and loss it is given, runs no batch."""

    seen: list["RecordingFinder"] = []

    batches = lr_finder.MIN_BATCHES  # how many the range test records before it stops

    def __init__(self, model, optimizer, criterion, **kwargs) -> None:
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.history = {"lr": [1e-3] * self.batches, "loss": [2.3] * self.batches}
        self.restored = False
        RecordingFinder.seen.append(self)

    def range_test(self, *args, **kwargs) -> None:
        pass

    def plot(self, ax, suggest_lr: bool, **skips: int):
        return ax, 1e-3

    def reset(self) -> None:
        self.restored = True


def test_a_range_test_that_diverges_too_early_is_one_clear_line_and_restores_the_weights(
    image_folder, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """torch-lr-finder stops once the loss diverges; with fewer batches than its suggestion takes, its plot raises
    a bare RuntimeError. A run that trains at the suggestion must stop with advice instead, before training, its
    network restored."""
    monkeypatch.setattr(lr_finder, "LRFinder", RecordingFinder)
    monkeypatch.setattr(RecordingFinder, "batches", lr_finder.MIN_BATCHES - 1)
    RecordingFinder.seen = []
    args = ["--data-dir", str(image_folder), "--out", str(tmp_path / "run"), "--fast-dev-run", "--num-workers", "0"]
    assert train.main([*args, "--max-lr", "finder", *CPU_FLAGS]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: the LR range test's loss diverged after {lr_finder.MIN_BATCHES - 1} batches")
    assert "--max-lr" in error
    (finder,) = RecordingFinder.seen
    assert finder.restored
    assert not (tmp_path / "run" / "checkpoints").exists()  # no training started


@pytest.mark.parametrize("batches", [lr_finder.MIN_BATCHES - 1, lr_finder.MIN_BATCHES])
def test_a_range_test_is_refused_exactly_when_torch_lr_finder_cannot_suggest(batches, monkeypatch) -> None:
    """torch-lr-finder's own plot (not a stand-in) on a curve stopped after `batches`: from MIN_BATCHES on it
    suggests a max LR; below, the range test is refused with advice, not with the library's bare RuntimeError."""
    lrs = np.geomspace(START_LR, END_LR, batches).tolist()

    def stopped_early(finder, *args, **kwargs) -> None:
        finder.history = {"lr": lrs, "loss": [2.3 - 0.01 * i * i for i in range(batches)]}  # falling ever faster

    monkeypatch.setattr(lr_finder.LRFinder, "range_test", stopped_early)
    net = CustomResNet(NUM_CLASSES)
    if batches < lr_finder.MIN_BATCHES:
        with pytest.raises(lr_finder.LRFinderError, match=f"diverged after {batches} batches"):
            find_lr(net, DataLoader([]), weight_decay=0.05)
    else:
        suggested = find_lr(net, DataLoader([]), weight_decay=0.05).suggested_lr
        assert suggested in lrs[lr_finder.SKIP_START : -lr_finder.SKIP_END]


def test_range_test_optimizer_decays_conv_and_linear_weights_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """An AdamW over net.parameters() would decay batch-norm scales and shifts and the linear bias too (or decay
    nothing, or the wrong amount), so the range test would not probe the optimizer training uses."""
    monkeypatch.setattr(lr_finder, "LRFinder", RecordingFinder)
    RecordingFinder.seen = []
    net = CustomResNet(NUM_CLASSES)
    find_lr(net, DataLoader([]), weight_decay=0.07, label_smoothing=0.15, num_iter=5)
    (finder,) = RecordingFinder.seen
    assert finder.model is net
    assert isinstance(finder.optimizer, torch.optim.AdamW)
    assert finder.criterion.label_smoothing == 0.15
    decay: dict[int, float] = {}
    for group in finder.optimizer.param_groups:
        for p in group["params"]:
            assert id(p) not in decay, "a parameter in two groups"
            decay[id(p)] = group["weight_decay"]
    assert set(decay) == {id(p) for p in net.parameters()}
    checked = {"bn": 0, "conv": 0, "linear": 0}
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert decay[id(module.weight)] == 0.0 and decay[id(module.bias)] == 0.0, name
            checked["bn"] += 1
        elif isinstance(module, torch.nn.Conv2d):
            assert decay[id(module.weight)] == 0.07, name
            checked["conv"] += 1
        elif isinstance(module, torch.nn.Linear):
            assert decay[id(module.weight)] == 0.07 and decay[id(module.bias)] == 0.0, name
            checked["linear"] += 1
    assert checked == {"bn": 8, "conv": 8, "linear": 1}


def test_training_lr_finder_uses_the_runs_weight_decay_label_smoothing_and_batches(
    image_folder, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_lr_finder leaving out weight_decay or label_smoothing would range-test another loss or optimizer than
    the one the run trains with (find_lr's default smoothing is 0); it runs `lr_find_iters` batches, and a smoke
    run's few (not its 200 by default)."""
    calls = []

    def fake_find_lr(net, loader, **kwargs) -> LRFinderResult:
        calls.append((net, loader, kwargs))
        return LRFinderResult(1e-3, [1e-3], [2.3], kwargs.get("plot_path"))

    monkeypatch.setattr(train, "find_lr", fake_find_lr)
    cfg = TrainConfig(
        data_dir=str(image_folder),
        out=str(tmp_path),
        num_workers=0,
        weight_decay=0.07,
        label_smoothing=0.15,
        lr_find_iters=30,
    )
    net, dm = CustomResNet(NUM_CLASSES), build_datamodule(cfg)
    result = run_lr_finder(cfg, net, dm)
    ((net_seen, loader, kwargs),) = calls
    assert result.suggested_lr == 1e-3
    assert net_seen is net
    assert isinstance(loader, DataLoader)
    assert kwargs.get("weight_decay") == 0.07
    assert kwargs.get("label_smoothing") == 0.15
    assert kwargs.get("num_iter") == 30
    run_lr_finder(replace(cfg, fast_dev_run=True), net, dm)
    assert calls[-1][2].get("num_iter") == FAST_DEV_LR_FIND_ITERS


def test_a_given_max_lr_is_trained_at_and_the_range_test_still_runs_for_its_plot(
    image_folder, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """As in the notebook: the plot and the suggestion are shown, and the run trains at the max LR it was given."""
    monkeypatch.setattr(lr_finder, "LRFinder", RecordingFinder)
    RecordingFinder.seen = []
    cfg = cpu_config(image_folder, tmp_path, max_lr=0.02)
    assert train.choose_max_lr(cfg, CustomResNet(NUM_CLASSES), build_datamodule(cfg)) == 0.02
    assert len(RecordingFinder.seen) == 1 and RecordingFinder.seen[0].restored
    assert (tmp_path / "images" / "lr_finder.png").stat().st_size > 0
    assert "LR finder's suggestion: 1.000e-03; training at --max-lr 0.02" in capsys.readouterr().out
    assert train.choose_max_lr(replace(cfg, max_lr=None), CustomResNet(NUM_CLASSES), build_datamodule(cfg)) == 1e-3


def test_a_plot_only_range_test_that_diverges_early_leaves_no_stale_plot_and_the_run_goes_on(
    image_folder, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(lr_finder, "LRFinder", RecordingFinder)
    monkeypatch.setattr(RecordingFinder, "batches", lr_finder.MIN_BATCHES - 1)
    RecordingFinder.seen = []
    earlier_plot = tmp_path / "images" / "lr_finder.png"
    earlier_plot.parent.mkdir()
    earlier_plot.write_bytes(b"an earlier run's plot")
    cfg = cpu_config(image_folder, tmp_path, max_lr=0.02)
    assert train.choose_max_lr(cfg, CustomResNet(NUM_CLASSES), build_datamodule(cfg)) == 0.02
    assert RecordingFinder.seen[0].restored and not earlier_plot.exists()
    assert f"no LR finder plot: the range test's loss diverged after {lr_finder.MIN_BATCHES - 1} batches" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("overrides", "processes"),
    [({"lr_find_iters": 0}, 1), ({}, 2), ({"lr_find_iters": 0, "max_lr": None, "resume": True}, 1)],
)
@pytest.mark.usefixtures("no_lr_finder")
def test_no_range_test_with_lr_find_iters_0_or_several_processes(image_folder, tmp_path, overrides, processes):
    """Several processes would each run it on the same device and write the same plot. (A resume needs none: the
    checkpoint's max LR is asked for here, and there is no checkpoint, so its error shows the finder was skipped.)"""
    cfg = cpu_config(image_folder, tmp_path, **({"max_lr": 0.02} | overrides))
    if cfg.resume:
        with pytest.raises(train.DataError, match="no checkpoint"):
            train.choose_max_lr(cfg, CustomResNet(NUM_CLASSES), build_datamodule(cfg), processes)
    else:
        assert train.choose_max_lr(cfg, CustomResNet(NUM_CLASSES), build_datamodule(cfg), processes) == 0.02


def test_the_finders_suggestion_needs_a_range_test():
    with pytest.raises(train.ConfigError, match="lr_find_iters 0 runs no range test"):
        TrainConfig(max_lr=None, lr_find_iters=0)
