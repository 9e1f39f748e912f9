"""Resume is exact: a run interrupted mid-epoch and resumed with `resume=True` ends bit for bit where an
uninterrupted run ends, because the training batches are a function of (seed, epoch, index)."""

from pathlib import Path

import lightning as L
import pytest
import torch
from learning_helpers import cpu_config
from torch.utils.data import DataLoader

from era_utils.data import CIFAR10DataModule
from era_utils.train import build_datamodule, build_net, fit

EPOCHS, STEPS_PER_EPOCH = 2, 5  # 40 training images in batches of 8


class Interrupt(L.Callback):
    """Fails in the middle of epoch `epoch`, as a killed job would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 2:
            raise RuntimeError("simulated interruption")


class RecordStart(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.epoch, self.step = trainer.current_epoch, trainer.global_step


def _fit(image_folder: Path, out: Path, resume: bool = False, callbacks: tuple[L.Callback, ...] = ()) -> L.Trainer:
    cfg = cpu_config(image_folder, out, epochs=EPOCHS, batch_size=8, ema_decay=0.9, resume=resume)
    L.seed_everything(cfg.seed)  # the initial weights; a resumed run replaces them with the checkpoint's
    trainer, _ = fit(cfg, build_net(cfg), build_datamodule(cfg), cfg.max_lr, extra_callbacks=callbacks)
    return trainer


def assert_identical(a, b, path: str = "checkpoint") -> None:
    """Nested dicts, lists and tensors equal bit for bit."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_identical(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


def test_an_interrupted_run_resumed_ends_exactly_where_an_uninterrupted_run_ends(image_folder, tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        _fit(image_folder, tmp_path / "straight")
        with pytest.raises(RuntimeError, match="simulated"):
            _fit(image_folder, tmp_path / "resumed", callbacks=(Interrupt(epoch=1),))
        start = RecordStart()
        trainer = _fit(image_folder, tmp_path / "resumed", resume=True, callbacks=(start,))
    finally:
        torch.use_deterministic_algorithms(False)
    assert (start.epoch, start.step) == (1, STEPS_PER_EPOCH)  # from the end of epoch 0, not from scratch
    assert trainer.global_step == EPOCHS * STEPS_PER_EPOCH

    straight, resumed = (
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=False) for run in ("straight", "resumed")
    )
    assert straight["global_step"] == resumed["global_step"] == EPOCHS * STEPS_PER_EPOCH
    # The EMA's weights and buffers, the raw weights, the EMA's update count, Adam's moments and step counts,
    # and the scheduler's step: all bit-identical (same CPU kernels, same thread count, same batches).
    for key in ("state_dict", "current_model_state", "averaging_state", "optimizer_states", "lr_schedulers"):
        assert_identical(straight[key], resumed[key], key)
    assert resumed["lr_schedulers"][0]["last_epoch"] == EPOCHS * STEPS_PER_EPOCH


def _batches(image_folder: Path, num_workers: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = CIFAR10DataModule(image_folder, batch_size=8, num_workers=num_workers, seed=3).train_dataloader()
    loader.sampler.set_epoch(epoch)
    return list(loader)


def _same(a: list, b: list) -> bool:
    return all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b, strict=True))


def test_training_batches_depend_on_seed_epoch_and_index_only_not_on_worker_processes(image_folder):
    epoch1 = _batches(image_folder, 0, epoch=1)
    assert _same(epoch1, _batches(image_folder, 0, epoch=1))  # order and augmentation repeat
    assert _same(epoch1, _batches(image_folder, 2, epoch=1))  # also when two worker processes share the work
    epoch0 = _batches(image_folder, 0, epoch=0)
    assert not torch.equal(epoch0[0][1], epoch1[0][1])  # a new order every epoch
    first = DataLoader(CIFAR10DataModule(image_folder, seed=3).train_dataset(), batch_size=40)
    again = DataLoader(CIFAR10DataModule(image_folder, seed=3).train_dataset(), batch_size=40)
    other = DataLoader(CIFAR10DataModule(image_folder, seed=4).train_dataset(), batch_size=40)
    images = next(iter(first))[0]
    assert torch.equal(images, next(iter(again))[0]) and not torch.equal(images, next(iter(other))[0])
