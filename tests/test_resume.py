"""Resume is exact: a run interrupted mid-epoch and resumed with `resume=True` ends bit for bit where an
uninterrupted run ends, because the training batches are a function of (seed, epoch, index)."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pandas as pd
import pytest
import torch
from learning_helpers import CPU_FLAGS, cpu_config
from torch.utils.data import DataLoader

from era_utils.data import CIFAR10DataModule
from era_utils.history import KeepLogOnResume, epoch_table
from era_utils.lit_module import CheckpointMismatchError, RecipeCheck
from era_utils.train import build_datamodule, build_net, build_trainer, choose_max_lr, fit, main
from era_utils.train_config import TrainConfig
from era_utils.transforms import FLIPS

EPOCHS, STEPS_PER_EPOCH = 2, 5  # 40 training images in batches of 8


class Interrupt(L.Callback):
    """Fails in the middle of epoch `epoch`, after its training steps and before its validation and checkpoint, as
    a killed job would; keeps the log as it was on disk at that moment."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            self.log_on_disk = pd.read_csv(Path(trainer.logger.log_dir) / "metrics.csv")
            raise RuntimeError("simulated interruption")


class RecordStart(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.epoch, self.step = trainer.current_epoch, trainer.global_step


def _fit(
    image_folder: Path, out: Path, resume: bool = False, callbacks: tuple[L.Callback, ...] = (), **changes: object
) -> L.Trainer:
    cfg = cpu_config(image_folder, out, **(dict(epochs=EPOCHS, batch_size=8, ema_decay=0.9, resume=resume) | changes))
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
        interrupt = Interrupt(epoch=1)
        with pytest.raises(RuntimeError, match="simulated"):
            _fit(image_folder, tmp_path / "resumed", callbacks=(interrupt,))
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

    # The log too. The killed run's rows were on disk as logged, its first epoch's and its second's steps; the
    # resumed run keeps the rows before its checkpoint (the CSVLogger deletes them), logs the later steps anew.
    logs = {run: pd.read_csv(tmp_path / run / "logs" / "metrics.csv") for run in ("straight", "resumed")}
    straight_log, resumed_log = logs["straight"], logs["resumed"]
    killed_log = interrupt.log_on_disk
    assert killed_log["val/acc"].notna().sum() == 1 and (killed_log["step"] >= STEPS_PER_EPOCH).any()
    pd.testing.assert_frame_equal(resumed_log[straight_log.columns], straight_log)
    assert len(epoch_table(tmp_path / "resumed" / "logs" / "metrics.csv")) == EPOCHS


class RecordingLogger:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.logged.append((step, metrics))


def test_a_resumed_run_puts_back_the_rows_before_its_checkpoints_step_and_only_those(tmp_path):
    """Rows logged at the checkpoint's step or later (here step 5, say the LR at the next epoch's first batch) are
    logged again by the resumed run: put back too, they would be in the log twice."""
    metrics_csv = tmp_path / "metrics.csv"
    metrics_csv.write_text("epoch,step,train/loss,val/acc,lr\n0,3,,,0.1\n0,4,1.5,0.4,\n,5,,,0.2\n1,9,1.2,0.6,\n")
    keep = KeepLogOnResume(metrics_csv)
    metrics_csv.unlink()  # as the logger does when the resumed run starts
    trainer = SimpleNamespace(logger=RecordingLogger())
    keep.on_load_checkpoint(trainer, None, {"global_step": 5})
    keep.on_fit_start(trainer, None)
    assert trainer.logger.logged == [
        (3, {"lr": 0.1, "epoch": 0.0}),
        (4, {"epoch": 0.0, "train/loss": 1.5, "val/acc": 0.4}),
    ]


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


FIRST_MAX_LR = 0.0123  # not the default, so that a resumed run can only have it from the checkpoint


@pytest.fixture(scope="module")
def finished_run(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    _fit(image_folder, out, max_lr=FIRST_MAX_LR)
    return out


@pytest.mark.usefixtures("no_lr_finder")
def test_resume_takes_the_checkpoints_max_lr_and_does_not_run_the_lr_finder(image_folder, finished_run):
    cfg = cpu_config(image_folder, finished_run, max_lr=None, resume=True)
    assert choose_max_lr(cfg, build_net(cfg), build_datamodule(cfg)) == FIRST_MAX_LR
    # A max LR given is kept, not replaced by the checkpoint's: `fit` refuses it if it differs (tested below).
    given = cpu_config(image_folder, finished_run, max_lr=0.02, resume=True)
    assert choose_max_lr(given, build_net(given), build_datamodule(given)) == 0.02


@pytest.mark.parametrize(
    "change, named",
    [
        ({"epochs": EPOCHS + 1}, "OneCycle steps"),
        ({"batch_size": 4}, "OneCycle steps"),
        ({"batch_size": 9}, "batch_size: 8 in the checkpoint, 9 now"),  # 40 images: 5 batches of 8, or of 9
        ({"max_lr": 0.02}, f"max_lr: {FIRST_MAX_LR} in the checkpoint, 0.02 now"),
        ({"weight_decay": 0.1}, "weight_decay"),
        ({"label_smoothing": 0.0}, "label_smoothing"),
        ({"pct_start": 0.5}, "pct_start"),
        # Outside LitClassifier: the data order and augmentation, the network's batch norm, the EMA, the logits.
        ({"seed": 7}, "seed: 42 in the checkpoint, 7 now"),
        ({"flip": next(f for f in FLIPS if f != TrainConfig().flip)}, "flip"),  # whichever is not the default
        ({"ghost_batch_size": 2}, "ghost_batch_size"),
        ({"ema_decay": 0.0}, "ema_decay"),
        ({"logit_scale": 1.0}, "logit_scale"),
    ],
)
def test_resume_with_other_settings_is_refused_and_leaves_the_checkpoint_and_log_alone(
    image_folder, finished_run, change, named
):
    checkpoint, log = finished_run / "checkpoints" / "last.ckpt", finished_run / "logs" / "metrics.csv"
    before = checkpoint.read_bytes(), log.read_bytes()  # the logger deletes the log as the resumed fit sets up
    with pytest.raises(CheckpointMismatchError, match=named):
        _fit(image_folder, finished_run, resume=True, **({"max_lr": FIRST_MAX_LR} | change))
    assert (checkpoint.read_bytes(), log.read_bytes()) == before


def test_the_recipe_check_holds_every_setting_outside_the_module(image_folder, tmp_path):
    """The settings a resume must keep besides the module's hyperparameters, by name: one left out would resume
    silently with another recipe. per_class is the one the refusals above cannot show, as any other subset of this
    folder changes OneCycle's length too."""
    cfg = cpu_config(image_folder, tmp_path, per_class=3, flip="alternating", ghost_batch_size=4)
    (check,) = [cb for cb in build_trainer(cfg).callbacks if isinstance(cb, RecipeCheck)]
    names = ("epochs", "batch_size", "seed", "flip", "ghost_batch_size", "ema_decay", "logit_scale", "per_class")
    recipe = {name: getattr(cfg, name) for name in names}
    assert check.state_dict() == recipe
    with pytest.raises(CheckpointMismatchError, match="per_class: 4 in the checkpoint, 3 now"):
        check.load_state_dict(recipe | {"per_class": 4})


def test_resume_with_other_settings_is_one_clear_line_on_the_command_line(image_folder, finished_run, capsys):
    flags = ["--data-dir", str(image_folder), "--out", str(finished_run), "--resume", "--num-workers", "0"]
    code = main([*flags, "--batch-size", "8", "--epochs", str(EPOCHS + 1), *CPU_FLAGS])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: cannot resume") and "OneCycle steps" in error


@pytest.mark.usefixtures("no_lr_finder")
def test_a_new_run_into_an_out_holding_a_run_needs_overwrite(image_folder, finished_run, tmp_path, capsys):
    """The same command again without --resume, after an interruption, would replace the log at once and the
    checkpoint after one epoch: refused, every file left as it was; --overwrite starts the new run."""
    out = tmp_path / "earlier"
    shutil.copytree(finished_run, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    flags = ["--data-dir", str(image_folder), "--out", str(out), "--num-workers", "0", "--lr-find-iters", "0"]
    recipe = ["--batch-size", "8", "--epochs", "1", *CPU_FLAGS]
    assert main([*flags, *recipe]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: {out / 'checkpoints' / 'last.ckpt'} holds an earlier run: --resume continues it")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert main([*flags, *recipe, "--overwrite"]) == 0
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0  # the new one-epoch run


def test_resuming_a_run_that_ended_its_training_finishes_the_rest_and_keeps_its_log(
    image_folder, finished_run, tmp_path, capsys
):
    """A run killed while testing, reporting or exporting (minutes on a CPU) has its last epoch's checkpoint: the
    same command with --resume trains nothing, and tests, reports and exports with the whole log."""
    out = tmp_path / "finished"
    shutil.copytree(finished_run, out)
    before = epoch_table(out / "logs" / "metrics.csv")
    flags = ["--data-dir", str(image_folder), "--out", str(out), "--resume", "--num-workers", "0"]
    recipe = ["--batch-size", "8", "--epochs", str(EPOCHS), "--ema-decay", "0.9", "--max-lr", str(FIRST_MAX_LR)]
    assert main([*flags, *recipe, "--precision", "32-true", *CPU_FLAGS]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["max_lr"] == FIRST_MAX_LR
    pd.testing.assert_frame_equal(epoch_table(out / "logs" / "metrics.csv"), before)
    assert len(before) == EPOCHS and (out / "images" / "training_curves.png").is_file()


def _truncated_checkpoint(path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "hyper_parameters": {"max_lr": 0.01}}, path)
    path.write_bytes(path.read_bytes()[:2000])  # a run killed while saving it


@pytest.mark.parametrize(
    "write, named",
    [
        (lambda path: path.write_bytes(b""), "is not a readable checkpoint"),
        (_truncated_checkpoint, "is not a readable checkpoint"),
        (lambda path: path.write_bytes(bytes(range(256)) * 8), "is not a readable checkpoint"),
        (lambda path: torch.save({"weights": torch.zeros(2)}, path), "is not a checkpoint of era_utils.train"),
    ],
    ids=["empty", "truncated", "random-bytes", "another-programs"],
)
@pytest.mark.usefixtures("no_lr_finder")
@pytest.mark.parametrize("max_lr", ["0.01", "finder"])
def test_resume_from_a_damaged_checkpoint_is_one_clear_line_before_any_work(
    image_folder, tmp_path, capsys, write, named, max_lr
):
    """These were a traceback from torch.load (RuntimeError, EOFError, UnpicklingError) or Lightning."""
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    write(checkpoint)
    before = checkpoint.read_bytes()
    flags = ["--data-dir", str(image_folder), "--out", str(tmp_path / "run"), "--resume", "--max-lr", max_lr]
    assert main([*flags, "--num-workers", "0", *CPU_FLAGS]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: --resume: {checkpoint} ") and named in error
    assert error.endswith("; --overwrite instead of --resume starts a new run there")
    assert checkpoint.read_bytes() == before and sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints"]
