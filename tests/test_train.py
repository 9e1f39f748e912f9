import json
import subprocess
import sys
import warnings
from dataclasses import asdict
from importlib.util import find_spec

import lightning as L
import numpy as np
import pytest
import torch
from learning_helpers import CPU, CPU_FLAGS
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch.optim.swa_utils import AveragedModel

from era_utils import hardware
from era_utils.artifacts import save_samples
from era_utils.data import load_split
from era_utils.export import load_model
from era_utils.ghost_bn import GhostBatchNorm2d
from era_utils.lit_module import LitClassifier
from era_utils.misclassified import parse_file_name
from era_utils.model import CustomResNet
from era_utils.train import build_datamodule, build_net, build_trainer, fit, main, parse_args
from era_utils.train_config import ConfigError, TrainConfig
from era_utils.transforms import eval_transforms


def _cfg(image_folder, out, **overrides) -> TrainConfig:
    base = dict(data_dir=str(image_folder), out=str(out), batch_size=8, num_workers=0, max_lr=0.01, **CPU)
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
            *CPU_FLAGS,
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    net, config = load_model(out / "model.safetensors")
    assert config["training"]["fast_dev_run"] is True
    for name in ("augmented_samples", "lr_finder", "confusion_matrix", "per_class_accuracy", "misclassified"):
        assert (out / "images" / f"{name}.png").stat().st_size > 0
    assert len(list((out / "examples").glob("*.png"))) == 10

    # The reports' one batch is spread over the class-sorted test split (3 per class), not its first 8 images;
    # their figures are those of the exported weights on those images, computed here again.
    picks = [0, 4, 8, 12, 17, 21, 25, 29]
    split = load_split("test", image_folder)
    images = torch.stack([eval_transforms()(image=split.images[i])["image"] for i in picks])
    with torch.no_grad():
        probs = net(images).softmax(1).numpy()
    labels, preds = split.labels[picks], probs.argmax(1)
    assert summary["n"] == 8 and summary["accuracy"] == config["metrics"]["accuracy"]
    assert summary["accuracy"] == round(float((preds == labels).mean()), 4)
    wrong = np.flatnonzero(preds != labels)
    assert len(wrong) >= 2  # one step on noise: mistakes to export, so the checks below can fail
    wrong = wrong[np.argsort(-probs[wrong].max(1), kind="stable")]  # most confident first
    files = sorted(p.name for p in (out / "misclassified_images").glob("*.png"))
    assert [parse_file_name(f)[:2] for f in files] == [(labels[i], preds[i]) for i in wrong[:3]]
    store = np.load(out / "misclassified.npz")
    assert list(store["test_indices"]) == [picks[i] for i in wrong]
    assert list(store["labels"]) == list(labels[wrong]) and list(store["preds"]) == list(preds[wrong])


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
            "--pct-start",
            "0.3",
            "--flip",
            "random",
            "--ghost-batch-size",
            "16",
        ]
    )
    assert (cfg.devices, cfg.strategy, cfg.num_nodes, cfg.precision, cfg.resume) == ("2", "ddp", 3, "32", True)
    assert (cfg.max_lr, cfg.seed, cfg.epochs, cfg.batch_size, cfg.pct_start) == (0.02, 7, 5, 64, 0.3)
    assert (cfg.flip, cfg.ghost_batch_size) == ("random", 16)  # neither is the default
    assert parse_args(["--max-lr", "finder"]).max_lr is None


def test_the_command_line_trains_the_shipped_models_max_lr_not_the_finders_suggestion(repo):
    """The Quick start's command, without --max-lr, must train the recipe the README and the shipped model state."""
    training = json.loads((repo / "space_app" / "model.json").read_text())["training"]
    assert parse_args([]).max_lr == TrainConfig().max_lr == training["max_lr"]


def test_cli_defaults_are_the_configs_and_every_other_flag_reaches_its_own_field():
    """The command line trains the recipe TrainConfig (and the README) states: a flag's default copied from another
    knob (weight decay 0.1, say) would change every CLI run, silently, while the notebook keeps the right one."""
    assert asdict(parse_args([])) == asdict(TrainConfig())
    flags = {
        "data_dir": "d",
        "download_root": "dl",
        "out": "o",
        "weight_decay": 0.011,
        "label_smoothing": 0.022,
        "ema_decay": 0.033,
        "lr_find_iters": 44,
        "accelerator": "cpu",
        "per_class": 55,
        "num_workers": 6,
        "n_misclassified": 77,
        "app_dir": "a",
    }
    argv = [word for name, value in flags.items() for word in (f"--{name.replace('_', '-')}", str(value))]
    cfg = parse_args([*argv, "--fast-dev-run"])
    assert {name: getattr(cfg, name) for name in flags} == flags and cfg.fast_dev_run is True


def test_the_flip_choice_reaches_the_training_data(image_folder):
    dm = build_datamodule(TrainConfig(data_dir=str(image_folder), flip="alternating", seed=5, num_workers=0))
    dataset = dm.train_dataset()
    assert (dm.flip, dataset.seed) == ("alternating", 5)
    assert dataset.mirrored(0, 0) != dataset.mirrored(0, 1)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--epochs", "0"),
        ("--batch-size", "0"),
        ("--max-lr", "-0.01"),
        ("--max-lr", "fastest"),
        ("--weight-decay", "-1"),
        ("--label-smoothing", "1.5"),
        ("--ema-decay", "1.5"),
        ("--lr-find-iters", "5"),
        ("--per-class", "0"),
        ("--num-workers", "-1"),
        ("--ghost-batch-size", "1"),
        ("--weight-decay", "inf"),  # trained, and exported, weights all NaN with accuracy 0.1
        ("--seed", "-1"),  # a traceback from seed_everything after the data was loaded
        ("--seed", str(2**32)),
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


@pytest.mark.parametrize("other", ["--overwrite", "--fast-dev-run"])
def test_resume_with_overwrite_or_a_smoke_run_stops_with_one_clear_line(tmp_path, capsys, other):
    """A smoke run writes no checkpoint, so "run once without --resume first" would send the user round in circles,
    and on a real run's OUT the refusal named a OneCycle length, not the smoke run."""
    with pytest.raises(SystemExit) as stop:
        main(["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), "--resume", other])
    assert stop.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert other.lstrip("-").replace("-", "_") in last_line and last_line.endswith("choose one")


def test_config_ranges_hold_outside_the_cli_too_and_accept_their_edges():
    # The open ends: smoothing 1 is a uniform target, an EMA at decay 1 never forgets the initial weights, and
    # OneCycle's warm-up over none or all of the steps leaves no ramp up or no annealing.
    for knob, edge in (("label_smoothing", 1.0), ("ema_decay", 1.0), ("pct_start", 0.0), ("pct_start", 1.0)):
        with pytest.raises(ConfigError, match=f"{knob} must be in"):
            TrainConfig(**{knob: edge})
    with pytest.raises(ConfigError, match="epochs must be a number, got '24'"):  # e.g. the notebook's OVERRIDES
        TrainConfig(epochs="24")
    with pytest.raises(ConfigError, match="flip must be one of random, alternating, got 'vertical'"):
        TrainConfig(flip="vertical")
    edge = TrainConfig(ema_decay=0.0, label_smoothing=0.0, weight_decay=0.0, num_workers=0, n_misclassified=0)
    assert (edge.ema_decay, edge.label_smoothing) == (0.0, 0.0)


@pytest.mark.parametrize(("fast_bf16", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_default_precision_on_cpu_is_bf16_only_where_the_cpu_runs_it_fast(
    image_folder, tmp_path, monkeypatch, fast_bf16, expected
):

    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: fast_bf16)
    assert hardware.default_precision(_cfg(image_folder, tmp_path, accelerator="cpu")) == expected
    assert hardware.default_precision(_cfg(image_folder, tmp_path, accelerator="gpu")) == "16-mixed"
    assert hardware.default_precision(_cfg(image_folder, tmp_path, accelerator="cpu", precision="64-true")) == "64-true"


def test_without_pytorchs_bf16_check_the_cpu_counts_as_fp32_only(monkeypatch):

    monkeypatch.setattr(torch.ops, "mkldnn", object())  # a PyTorch release without the private op
    assert hardware.cpu_has_fast_bf16() is False


@pytest.mark.parametrize("asked", ["bf16-mixed", "16-mixed", "16"])  # Lightning runs fp16 mixed as bf16 on a CPU
def test_asking_for_bf16_on_a_cpu_without_fast_bf16_warns(image_folder, tmp_path, monkeypatch, asked):
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: False)
    cfg = _cfg(image_folder, tmp_path, accelerator="cpu", precision=asked)
    with pytest.warns(UserWarning, match="13x slower"):
        precision = hardware.default_precision(cfg)
    assert precision == asked  # warned, but what was asked for


def test_fp32_and_true_fp16_on_a_cpu_are_not_warned_of_as_bf16(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for asked in ("32-true", "16-true"):
            assert hardware.default_precision(_cfg(image_folder, tmp_path, accelerator="cpu", precision=asked)) == asked


def test_the_report_and_lr_finder_run_on_the_gpu_exactly_when_the_run_trains_on_one(monkeypatch):
    """`gpu` and `cuda` name the GPU; `auto` means it only where CUDA is available (else the report and the LR finder
    would fail to reach a GPU that is not there, or run minutes on the CPU beside an idle one)."""
    for available in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda available=available: available)
        for accelerator, on_gpu in (("cpu", False), ("gpu", True), ("cuda", True), ("auto", available)):
            device = hardware.device_for(TrainConfig(accelerator=accelerator))
            assert device.type == ("cuda" if on_gpu else "cpu"), accelerator


@pytest.mark.parametrize(("native", "warned"), [(False, True), (True, False)], ids=["T4", "Ampere"])
def test_asking_for_bf16_on_a_gpu_without_native_bf16_warns(image_folder, tmp_path, monkeypatch, native, warned):
    """Colab's T4 (compute capability 7.5) has no bf16 units: its default is 16-mixed, but OVERRIDES can ask for
    bf16-mixed, which PyTorch then emulates, as silently as the slow CPU case would be without its warning."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or native)
    auto = dict(accelerator="auto", devices="auto")
    assert hardware.default_precision(_cfg(image_folder, tmp_path, **auto)) == "16-mixed"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert hardware.default_precision(_cfg(image_folder, tmp_path, **auto, precision="bf16-mixed")) == "bf16-mixed"
    assert [str(w.message) for w in caught if "bf16" in str(w.message)] == (
        [
            "--precision bf16-mixed: this GPU has no native bf16 (NVIDIA's from compute capability 8.0, Ampere; "
            "Colab's T4 is 7.5) and runs it emulated: 16-mixed is its fast precision"
        ]
        if warned
        else []
    )


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


@pytest.mark.usefixtures("no_lr_finder")
def test_resume_without_a_checkpoint_is_a_clear_error_before_any_work(image_folder, tmp_path, capsys):
    out = tmp_path / "empty"
    code = main(["--data-dir", str(image_folder), "--out", str(out), "--resume", "--num-workers", "0", *CPU_FLAGS])
    assert code == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--precision", "foo"),
        ("--strategy", "nope"),
        ("--devices", "abc"),
        pytest.param("--accelerator", "gpu", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU")),
        pytest.param(  # Lightning raises ModuleNotFoundError for it, which was a traceback
            "--accelerator", "tpu", marks=pytest.mark.skipif(bool(find_spec("torch_xla")), reason="torch_xla")
        ),
    ],
)
@pytest.mark.usefixtures("no_lr_finder")
def test_bad_hardware_settings_stop_with_one_clear_line_before_any_work(flag, value, image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["--data-dir", str(image_folder), "--out", str(out), "--num-workers", "0", flag, value])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and flag in error and value in error
    assert not out.exists()


@pytest.mark.parametrize("flags", [["--devices", "2"], ["--devices", "2", "--strategy", "ddp"], ["--num-nodes", "2"]])
@pytest.mark.usefixtures("no_lr_finder")
def test_several_processes_at_the_finders_max_lr_stop_before_any_work(flags, image_folder, tmp_path, capsys):
    """Each process would run its own LR finder and could pick another max LR: DDP would train them apart."""
    out = tmp_path / "run"
    args = ["--data-dir", str(image_folder), "--out", str(out), "--num-workers", "0", "--accelerator", "cpu", *flags]
    assert main([*args, "--max-lr", "finder"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: --max-lr finder cannot train 2 processes") and "give a number" in error
    assert not out.exists()


@pytest.mark.usefixtures("no_lr_finder")
def test_several_processes_resuming_at_the_finders_max_lr_take_the_checkpoints(image_folder, tmp_path, capsys):
    """A resumed run takes its checkpoint's max LR and runs no LR finder: 'finder' is not refused. (Without a
    checkpoint here, the next check stops the run.)"""
    out = tmp_path / "run"
    args = ["--data-dir", str(image_folder), "--out", str(out), "--num-workers", "0", "--accelerator", "cpu"]
    assert main([*args, "--devices", "2", "--max-lr", "finder", "--resume"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: --resume: no checkpoint at")
    assert not out.exists()


@pytest.mark.usefixtures("no_lr_finder")
def test_an_output_folder_that_cannot_be_made_is_a_clear_error(image_folder, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = main(["--data-dir", str(image_folder), "--out", str(blocker / "run"), "--num-workers", "0", *CPU_FLAGS])
    assert code == 2
    assert f"cannot create the output folder {blocker / 'run'}" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


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


def test_the_weight_average_lives_on_the_device_the_module_trains_on(image_folder, tmp_path, monkeypatch):
    """Lightning makes the EMA's AveragedModel in `setup`, before the strategy moves the module to its device: left
    there, a GPU run's average stayed in host memory, and every step copied the weights off the GPU and averaged them
    on the CPU. Shown here without a GPU: the order in a real fit, then the meta device standing in for the GPU."""
    events = []
    made, moved = AveragedModel.__init__, SingleDeviceStrategy.model_to_device
    monkeypatch.setattr(
        AveragedModel, "__init__", lambda self, *a, **k: events.append("average") or made(self, *a, **k)
    )
    monkeypatch.setattr(SingleDeviceStrategy, "model_to_device", lambda self: events.append("move") or moved(self))
    cfg = _cfg(image_folder, tmp_path, fast_dev_run=True)
    fit(cfg, build_net(cfg), build_datamodule(cfg), cfg.max_lr)
    assert events == ["average", "move"]
    (averaging,) = [cb for cb in build_trainer(cfg).callbacks if isinstance(cb, WeightAveraging)]
    lit = LitClassifier(build_net(cfg), num_classes=10)
    averaging.setup(None, lit, "fit")
    lit.to("meta")  # what the strategy's move does to a GPU run's module
    averaging.on_fit_start(None, lit)
    assert {t.device.type for t in averaging._average_model.state_dict().values()} == {"meta"}  # and n_averaged


def test_sample_grid_draws_from_every_part_of_a_class_sorted_folder(image_folder, tmp_path, monkeypatch):
    shown = {}
    monkeypatch.setattr("era_utils.plots.image_grid", lambda images, captions, path, **kw: shown.update(c=captions))
    save_samples(build_datamodule(_cfg(image_folder, tmp_path)), tmp_path / "samples.png", n=8)
    assert len(shown["c"]) == 8 and len(set(shown["c"])) >= 4


def test_the_initial_weights_follow_the_seed_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first, again, other = (_flat_weights(build_net(TrainConfig(seed=s))) for s in (1, 1, 2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(torch.rand(3), expected_draw)


def test_ghost_batch_norm_trains_on_slices_and_exports_the_plain_networks_weights(image_folder, tmp_path):
    cfg = _cfg(image_folder, tmp_path / "ghost", epochs=1, ghost_batch_size=4)
    net = build_net(cfg)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 8 and all(isinstance(m, GhostBatchNorm2d) and m.ghost_batch_size == 4 for m in norms)
    assert not [m for m in build_net(TrainConfig(ghost_batch_size=0)).modules() if isinstance(m, GhostBatchNorm2d)]
    _, lit = fit(cfg, net, build_datamodule(cfg), cfg.max_lr)
    plain = CustomResNet(10, cfg.logit_scale)
    plain.load_state_dict(lit.net.state_dict(), strict=True)
    images = torch.randn(6, 3, 32, 32)
    torch.testing.assert_close(plain.eval()(images), lit.net.eval()(images))
