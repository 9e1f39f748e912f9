"""The learning itself: the pipeline learns, and the recipe (OneCycle, AdamW groups, loss, flip TTA) is the README's.

Most tests read the one short fit on coloured squares that `conftest.squares_fit` runs once per session.
"""

import re
from fractions import Fraction
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from learning_helpers import StepLog
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from era_utils.config import NUM_CLASSES
from era_utils.data import CIFAR10DataModule
from era_utils.lit_module import LitClassifier
from era_utils.model import CustomResNet
from era_utils.train_config import TrainConfig
from era_utils.transforms import eval_transforms


def number(text: str) -> float:
    """A value as the table writes it: 0.2, 24 or a fraction such as 5/24."""
    return float(Fraction(text))


# Where the README's Hyperparameters table states each knob of the recipe: (row, pattern of the value, its reader).
README_ROWS = {
    "epochs": ("epochs", r"(\d+)", number),
    "batch_size": ("batch size", r"(\d+)", number),
    "weight_decay": ("optimizer", r"weight decay ([\d.]+)", number),
    "label_smoothing": ("loss", r"label smoothing ([\d.]+)", number),
    "logit_scale": ("loss", r"logits scaled by ([\d.]+)", number),
    "ema_decay": ("weight averaging", r"decay ([\d.]+) per step", number),
    "pct_start": ("schedule", r"warm-up over the first (\d+/\d+) of the steps", number),
    "flip": ("augmentation", r"(\w+) horizontal flip", str),
    "ghost_batch_size": ("batch norm", r"slices of (\d+) images", number),
}


def readme_recipe() -> dict[str, float | str]:
    """The recipe as README.md's Hyperparameters table states it (a shipped run with another recipe changes the
    table and TrainConfig's defaults together, or this fails)."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = text.split("### Hyperparameters", 1)[1].split("\n#", 1)[0]
    rows = dict(line.split(" | ", 1) for line in (row.strip("| ") for row in table.splitlines()) if " | " in line)
    recipe = {}
    for knob, (row, pattern, read) in README_ROWS.items():
        recipe[knob] = read(re.search(pattern, rows[row]).group(1))
    return recipe


README_RECIPE = readme_recipe()
DIV, FINAL_DIV = 100, 100  # OneCycle starts at max/100 and ends at max/10^4
BETA1_HIGH, BETA1_LOW = 0.95, 0.85


def cpu_trainer(**kwargs) -> L.Trainer:
    """A quiet fp32 trainer pinned to one CPU process, for tests that drive LitClassifier directly."""
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(accelerator="cpu", devices=1, precision="32-true", **quiet, **kwargs)


def test_the_config_defaults_are_the_readme_recipe(squares_fit):
    cfg, hp = squares_fit.cfg, squares_fit.lit.hparams
    assert {k: getattr(TrainConfig(), k) for k in README_RECIPE} == README_RECIPE
    # The shared fit trains with the recipe but for its own length and batch size.
    assert {k: getattr(cfg, k) for k in README_RECIPE} == README_RECIPE | {"epochs": 3, "batch_size": 20}
    assert (hp.div_factor, hp.final_div_factor) == (DIV, FINAL_DIV)
    assert squares_fit.lit.net.logit_scale == cfg.logit_scale


def smoothed_loss_floor(label_smoothing: float, classes: int = NUM_CLASSES) -> float:
    """The least cross-entropy a label-smoothed target allows: the entropy of that target."""
    target = torch.full((classes,), label_smoothing / classes)
    target[0] += 1 - label_smoothing
    return -(target * target.log()).sum().item()


def test_a_short_fit_learns_the_squares_far_above_chance(squares_fit):
    # 60 held-out images, 10 classes: chance is 10% and a loss of ln 10 = 2.30; label smoothing 0.2 keeps the loss
    # above 0.87. Seeds 0, 1 and 2 scored 100%, 100% and 90%, with losses 1.31, 1.54 and 1.41.
    chance, floor = torch.log(torch.tensor(NUM_CLASSES)).item(), smoothed_loss_floor(squares_fit.cfg.label_smoothing)
    assert squares_fit.test_metrics["test/acc"] >= 0.75
    assert squares_fit.test_metrics["test/loss"] < (chance + floor) / 2  # more than halfway from chance to the floor


class LossLog(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_with_augmentation_off_the_loss_on_one_fixed_batch_falls_by_a_large_factor(image_folder):
    dm = CIFAR10DataModule(image_folder, per_class=1)
    batch = next(iter(DataLoader(dm.train_dataset(eval_transforms()), batch_size=NUM_CLASSES)))
    loader = DataLoader(TensorDataset(*batch), batch_size=NUM_CLASSES)  # the same 10 noise images every step
    torch.manual_seed(0)
    net = CustomResNet(NUM_CLASSES, logit_scale=README_RECIPE["logit_scale"])
    # Without label smoothing the loss can fall towards 0 (with the recipe's 0.2 it cannot go below 0.87).
    lit = LitClassifier(net, NUM_CLASSES, max_lr=0.01, label_smoothing=0.0)
    log = LossLog()
    cpu_trainer(max_epochs=30, callbacks=[log], limit_val_batches=0).fit(lit, loader)
    assert len(log.losses) == 30
    assert log.losses[0] == pytest.approx(torch.log(torch.tensor(10.0)).item(), abs=0.3)  # uniform at the start
    assert log.losses[-1] < log.losses[0] / 20


def one_cycle(step: int, total: int, high: float, low_start: float, low_end: float, pct_start: float) -> float:
    """The README's schedule, linear both ways: `low_start` -> `high` at step pct_start*total - 1 -> `low_end`."""
    peak = pct_start * total - 1
    if step <= peak:
        return low_start + (high - low_start) * step / peak
    return high + (low_end - high) * (step - peak) / (total - 1 - peak)


def assert_one_cycle_at_every_step(log: StepLog, max_lr: float, low_start: float, low_end: float, pct: float) -> None:
    """Both parameter groups' LR and beta1 at each logged step are OneCycle's (linear, beta1 cycled inversely)."""
    total = len(log.lrs)
    for step, (lrs, beta1s) in enumerate(zip(log.lrs, log.beta1s, strict=True)):
        lr = one_cycle(step, total, max_lr, low_start, low_end, pct)
        beta1 = one_cycle(step, total, BETA1_LOW, BETA1_HIGH, BETA1_HIGH, pct)
        assert lrs == pytest.approx([lr] * 2, rel=1e-9), f"step {step}"
        assert beta1s == pytest.approx([beta1] * 2, rel=1e-9), f"step {step}"


def test_lr_and_beta1_follow_one_cycle_at_every_step(squares_fit):
    cfg, rec = squares_fit.cfg, squares_fit.recorder
    total = cfg.epochs * 8  # 160 training images in batches of 20
    assert len(rec.lrs) == total == squares_fit.trainer.global_step
    max_lr, pct = cfg.max_lr, cfg.pct_start
    assert_one_cycle_at_every_step(rec, max_lr, max_lr / DIV, max_lr / (DIV * FINAL_DIV), pct)
    lrs = [lr for lr, _ in rec.lrs]
    assert lrs[0] == pytest.approx(max_lr / 100) and lrs[-1] == pytest.approx(max_lr / 1e4)
    assert max(lrs) == pytest.approx(max_lr) and lrs.index(max(lrs)) == round(pct * total) - 1


def test_every_knob_of_the_module_reaches_the_optimizer_the_schedule_and_the_loss():
    """The shared fit runs the defaults, where a knob taken from TrainConfig instead of the module's own
    hyperparameters would pass unseen, and so would div_factor swapped with final_div_factor (both 100).
    Here each has a value of its own, and the schedule, the groups' decay and the first loss must follow it."""
    knobs = dict(
        max_lr=0.04, weight_decay=0.02, label_smoothing=0.3, pct_start=0.25, div_factor=10, final_div_factor=1e3
    )
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(40, 3, 32, 32, generator=g), torch.randint(0, NUM_CLASSES, (40,), generator=g)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, NUM_CLASSES))
    with torch.no_grad():
        first_logits = net(images[:4])  # the first batch (the loader does not shuffle), before any step
    log = StepLog()
    lit = LitClassifier(net, NUM_CLASSES, **knobs)
    cpu_trainer(max_epochs=2, callbacks=[log], limit_val_batches=0).fit(
        lit, DataLoader(TensorDataset(images, labels), 4)
    )
    total, max_lr = 20, knobs["max_lr"]
    assert len(log.lrs) == total
    low_start, low_end = max_lr / knobs["div_factor"], max_lr / (knobs["div_factor"] * knobs["final_div_factor"])
    assert_one_cycle_at_every_step(log, max_lr, low_start, low_end, knobs["pct_start"])
    assert log.lrs[-1][0] == pytest.approx(4e-6) and log.lrs[0][0] == pytest.approx(4e-3)
    # The linear layer's weight is decayed with the module's weight decay, its bias not at all.
    (optimizer,) = lit.trainer.optimizers
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decay_of == {id(net[1].weight): knobs["weight_decay"], id(net[1].bias): 0.0}
    expected = F.cross_entropy(first_logits, labels[:4], label_smoothing=knobs["label_smoothing"]).item()
    assert log.losses[0] == pytest.approx(expected, rel=1e-5)
    assert F.cross_entropy(first_logits, labels[:4], label_smoothing=0.1).item() != pytest.approx(expected, rel=1e-3)


def test_batch_norm_parameters_and_biases_are_not_decayed_and_weights_are(squares_fit):
    (optimizer,) = squares_fit.trainer.optimizers
    assert isinstance(optimizer, torch.optim.AdamW)  # decoupled weight decay
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(decay_of)  # no parameter twice
    net = squares_fit.lit.net
    expected = {}
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            expected |= {id(module.weight): 0.0, id(module.bias): 0.0}
        elif isinstance(module, nn.Conv2d | nn.Linear):
            expected[id(module.weight)] = README_RECIPE["weight_decay"]
            if module.bias is not None:
                expected[id(module.bias)] = 0.0
    assert {id(p) for p in net.parameters()} == set(expected)  # every parameter is a BN, conv or linear one
    assert decay_of == expected


def test_the_training_loss_is_smoothed_cross_entropy_on_scaled_logits(squares_fit):
    cfg, rec = squares_fit.cfg, squares_fit.recorder
    images, labels = rec.batch
    net = rec.net  # the weights the last step saw, in train mode (batch statistics) as in training
    net.logit_scale = 1.0  # unscaled logits; the scale is applied here
    with torch.no_grad():
        logits = net(images.float()) * cfg.logit_scale
    expected = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing).item()
    assert rec.losses[-1] == pytest.approx(expected, rel=1e-5)
    # The network is confident by then, so the check tells the recipe from its likely slips.
    for slip in (
        F.cross_entropy(logits, labels),
        F.cross_entropy(logits / cfg.logit_scale, labels, label_smoothing=0.1),
    ):
        assert slip.item() != pytest.approx(expected, rel=1e-2)


def test_tta_accuracy_is_that_of_the_mean_of_the_image_and_mirror_image_logits():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(256, 3, 32, 32, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (256,), generator=g)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, NUM_CLASSES))  # asymmetric: a flip changes its logits
    lit = LitClassifier(net, NUM_CLASSES)
    passes = []
    net.register_forward_hook(lambda module, args, output: passes.append(len(output)))
    (metrics,) = cpu_trainer().test(lit, DataLoader(TensorDataset(images, labels), batch_size=64), verbose=False)
    assert passes == [64] * 8, "two forward passes per batch: the image and its mirror image"

    def accuracy(logits: torch.Tensor) -> float:
        return (logits.argmax(1) == labels).float().mean().item()

    with torch.no_grad():
        plain, mirror, upside_down = net(images), net(images.flip(3)), net(images.flip(2))
    expected = accuracy((plain + mirror) / 2)
    assert metrics["test/acc_tta"] == pytest.approx(expected, abs=1e-6)
    assert metrics["test/acc"] == pytest.approx(accuracy(plain), abs=1e-6)
    # Wrong TTAs score differently on these images, so the check above can tell them apart.
    assert expected not in {accuracy(plain), accuracy(mirror), accuracy((plain + upside_down) / 2)}


def test_validation_and_training_accuracy_are_each_of_their_own_images():
    """val/acc counts the validation images only (and train/acc the training ones): a metric object shared between
    the stages would report a mix of both. With a learning rate too small to move the weights, the training labels
    are the network's own answers (100%) and the validation labels never are (0%)."""
    g = torch.Generator().manual_seed(0)
    train_images, val_images = torch.randn(64, 3, 32, 32, generator=g), torch.randn(64, 3, 32, 32, generator=g)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, NUM_CLASSES))
    with torch.no_grad():
        train_labels, val_labels = net(train_images).argmax(1), (net(val_images).argmax(1) + 1) % NUM_CLASSES
    lit = LitClassifier(net, NUM_CLASSES, max_lr=1e-12)
    trainer = cpu_trainer(max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(
        lit,
        DataLoader(TensorDataset(train_images, train_labels), batch_size=16),
        DataLoader(TensorDataset(val_images, val_labels), batch_size=16),
    )
    assert trainer.callback_metrics["train/acc"].item() == 1.0
    assert trainer.callback_metrics["val/acc"].item() == 0.0
