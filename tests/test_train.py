import json
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch

from era_utils.export import load_model
from era_utils.train import (
    ConfigError,
    TrainConfig,
    build_datamodule,
    build_net,
    ema_with_warmup,
    fit,
    main,
    parse_args,
    save_samples,
)


def _cfg(image_folder, out, **overrides) -> TrainConfig:
    base = dict(data_dir=str(image_folder), out=str(out), batch_size=8, num_workers=0, max_lr=0.01)
    return TrainConfig(**(base | overrides))


def test_fast_dev_run_cli_writes_weights_json_and_plots(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "--data-dir",
            str(image_folder),
            "--out",
            str(out),
            "--fast-dev-run",
            "--batch-size",
            "8",
            "--num-workers",
            "0",
            "--n-misclassified",
            "3",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["n"] == 8
    net, config = load_model(out / "model.safetensors")
    assert config["metrics"]["accuracy"] == summary["accuracy"]
    assert config["training"]["fast_dev_run"] is True
    for name in ("augmented_samples", "lr_finder", "confusion_matrix", "per_class_accuracy", "misclassified"):
        assert (out / "images" / f"{name}.png").stat().st_size > 0
    assert len(list((out / "misclassified_images").glob("*.png"))) <= 3
    assert (out / "misclassified.npz").is_file() and len(list((out / "examples").glob("*.png"))) == 10
    # The reports' one batch is spread over the class-sorted test split (3 per class), not its first 8 images.
    store = np.load(out / "misclassified.npz")
    assert set(store["test_indices"]) <= {0, 4, 8, 12, 17, 21, 25, 29}
    assert np.array_equal(store["labels"], store["test_indices"] // 3)


def test_cli_flags_reach_the_config():
    cfg = parse_args(
        [
            "--devices",
            "2",
            "--strategy",
            "ddp",
            "--num-nodes",
            "3",
            "--precision",
            "32",
            "--resume",
            "--max-lr",
            "0.02",
            "--seed",
            "7",
            "--epochs",
            "5",
            "--batch-size",
            "64",
        ]
    )
    assert (cfg.devices, cfg.strategy, cfg.num_nodes, cfg.precision, cfg.resume) == ("2", "ddp", 3, "32", True)
    assert (cfg.max_lr, cfg.seed, cfg.epochs, cfg.batch_size) == (0.02, 7, 5, 64)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--epochs", "0"),
        ("--batch-size", "0"),
        ("--max-lr", "-0.01"),
        ("--weight-decay", "-1"),
        ("--label-smoothing", "1.5"),
        ("--ema-decay", "1.5"),
        ("--lr-find-iters", "5"),
        ("--per-class", "0"),
        ("--num-workers", "-1"),
    ],
)
def test_out_of_range_flags_stop_with_one_clear_line_before_any_work(flag, value, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(["--data-dir", str(tmp_path / "nowhere"), "--out", str(out), flag, value])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag[2:].replace("-", "_") in error and value in error
    assert not out.exists()


def test_config_ranges_hold_outside_the_cli_too_and_accept_their_edges():
    with pytest.raises(ConfigError, match="label_smoothing must be in"):
        TrainConfig(label_smoothing=1.0)
    with pytest.raises(ConfigError, match="epochs must be a number, got '24'"):  # e.g. the notebook's OVERRIDES
        TrainConfig(epochs="24")
    edge = TrainConfig(ema_decay=0.0, label_smoothing=0.0, weight_decay=0.0, num_workers=0, n_misclassified=0)
    assert (edge.ema_decay, edge.label_smoothing) == (0.0, 0.0)


@pytest.mark.parametrize(("fast_bf16", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_default_precision_on_cpu_is_bf16_only_where_the_cpu_runs_it_fast(
    image_folder, tmp_path, monkeypatch, fast_bf16, expected
):
    from era_utils import train

    monkeypatch.setattr(train, "cpu_has_fast_bf16", lambda: fast_bf16)
    assert train.default_precision(_cfg(image_folder, tmp_path, accelerator="cpu")) == expected
    assert train.default_precision(_cfg(image_folder, tmp_path, accelerator="gpu")) == "16-mixed"
    assert train.default_precision(_cfg(image_folder, tmp_path, accelerator="cpu", precision="64-true")) == "64-true"


def test_without_pytorchs_bf16_check_the_cpu_counts_as_fp32_only(monkeypatch):
    from era_utils import train

    monkeypatch.setattr(torch.ops, "mkldnn", object())  # a PyTorch release without the private op
    assert train.cpu_has_fast_bf16() is False


def test_asking_for_bf16_on_a_cpu_without_fast_bf16_warns(image_folder, tmp_path, monkeypatch):
    from era_utils import train

    monkeypatch.setattr(train, "cpu_has_fast_bf16", lambda: False)
    cfg = _cfg(image_folder, tmp_path, accelerator="cpu", precision="bf16-mixed")
    with pytest.warns(UserWarning, match="12x slower"):
        precision = train.default_precision(cfg)
    assert precision == "bf16-mixed"  # warned, but what was asked for


def test_two_process_ddp_fast_dev_run(image_folder, tmp_path, repo):
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "era_utils.train",
            "--data-dir",
            str(image_folder),
            "--out",
            str(out),
            "--fast-dev-run",
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "--strategy",
            "ddp",
            "--max-lr",
            "0.01",
            "--batch-size",
            "8",
            "--num-workers",
            "0",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size: 2" in proc.stderr + proc.stdout or "MEMBER: 2/2" in proc.stderr + proc.stdout
    assert (out / "model.safetensors").is_file()


class Interrupt(L.Callback):
    """Fails in the middle of epoch `epoch`, as a killed job would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 1:
            raise RuntimeError("simulated interruption")


class RecordStart(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.epoch, self.step = trainer.current_epoch, trainer.global_step


def test_interrupted_run_resumes_from_its_checkpoint(image_folder, tmp_path):
    cfg = _cfg(image_folder, tmp_path / "resume", epochs=3, ema_decay=0.9)
    dm = build_datamodule(cfg)
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="simulated"):
        fit(cfg, build_net(cfg), dm, cfg.max_lr, extra_callbacks=[Interrupt(epoch=1)])
    assert (cfg.checkpoint_dir / "last.ckpt").is_file()

    start = RecordStart()
    cfg.resume = True
    trainer, _ = fit(cfg, build_net(cfg), dm, cfg.max_lr, extra_callbacks=[start])
    steps_per_epoch = 5  # 40 training images in batches of 8
    assert (start.epoch, start.step) == (1, steps_per_epoch)  # from the end of epoch 0, not from scratch
    assert trainer.current_epoch == 3 and trainer.global_step == 3 * steps_per_epoch


def test_resume_without_a_checkpoint_is_a_clear_error(image_folder, tmp_path, capsys):
    code = main(
        [
            "--data-dir",
            str(image_folder),
            "--out",
            str(tmp_path / "empty"),
            "--resume",
            "--max-lr",
            "0.01",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--num-workers",
            "0",
        ]
    )
    assert code == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_ema_decay_ramps_up_from_the_first_updates_to_the_configured_decay():
    update = ema_with_warmup(0.995)
    ema, current = torch.zeros(1), torch.ones(1)
    assert update(ema, current, torch.tensor(1)).item() == pytest.approx(1 - 2 / 11)
    assert update(ema, current, torch.tensor(100_000)).item() == pytest.approx(0.005)
    for n in range(1, 99):  # one epoch of CIFAR-10 at batch 512
        ema = update(ema, current, torch.tensor(n))
    assert ema.item() > 0.99  # without the ramp: 1 - 0.995 ** 98 = 0.39


def _flat_weights(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).clone()


class RecordWeights(L.Callback):
    """Raw weights at the start and the end of training, before the EMA is swapped in."""

    def on_train_start(self, trainer, pl_module):
        self.initial = _flat_weights(pl_module)

    def on_train_end(self, trainer, pl_module):
        self.final = _flat_weights(pl_module)


def test_a_short_run_exports_an_average_of_recent_weights_not_the_initial_ones(image_folder, tmp_path):
    cfg = _cfg(image_folder, tmp_path / "ema", epochs=3, ema_decay=0.995)
    record = RecordWeights()
    torch.manual_seed(0)
    _, lit = fit(cfg, build_net(cfg), build_datamodule(cfg), cfg.max_lr, extra_callbacks=[record])
    averaged = _flat_weights(lit)
    assert not torch.equal(averaged, record.final)  # the average was swapped in
    assert (averaged - record.final).norm() < 0.5 * (record.initial - record.final).norm()


def test_sample_grid_draws_from_every_part_of_a_class_sorted_folder(image_folder, tmp_path, monkeypatch):
    shown = {}
    monkeypatch.setattr("era_utils.plots.image_grid", lambda images, captions, path, **kw: shown.update(c=captions))
    save_samples(build_datamodule(_cfg(image_folder, tmp_path)), tmp_path / "samples.png", n=8)
    assert len(shown["c"]) == 8 and len(set(shown["c"])) >= 4
