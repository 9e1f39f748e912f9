"""The benchmarks run, on tiny inputs, and `--results` appends one JSON line that says what was measured, with the
command that measured it and the machine it ran on (the figures themselves are for benchmarks/results/)."""

import datetime
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
import types
from argparse import Namespace
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from app_helpers import APP_DIR, load_file_module

GHOST_VARIANTS = ["plain BN", "split (b)", "fold (a)", "var_mean (c)"]


@pytest.fixture
def bench(repo):
    return lambda name: load_file_module(repo / "benchmarks", name)


@pytest.fixture
def torch_threads():
    """Sets torch's threads for the test, so that a benchmark's own setting shows; restored after the test."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


class Clock:
    """A stand-in for a module's `time`: perf_counter() reads `now`, and moves on by `tick` after each read."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now - self.tick


def only_line(path) -> dict:
    lines = path.read_text().splitlines()
    assert len(lines) == 1, lines
    return json.loads(lines[0])


def assert_provenance(line: dict, repo, script: str, argv: list[str]) -> None:
    """The line says which command made it, at which commit, on what machine."""
    assert line["command"] == shlex.join(["python", f"benchmarks/{script}", *argv])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert line["git_commit"] == (head or None)
    assert isinstance(line["git_dirty"], bool)
    assert line["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert line["machine"]["cpu_count"] == os.cpu_count() and line["machine"]["cpu_model"]
    assert line["machine"]["torch"] == torch.__version__
    assert_utc_now(line["date"])


def assert_utc_now(date: str) -> None:
    utc = datetime.datetime.strptime(date, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    assert abs(datetime.datetime.now(datetime.timezone.utc) - utc) < datetime.timedelta(minutes=10)


def test_a_result_is_appended_to_the_lines_already_there(bench, tmp_path, capsys):
    """Each measurement adds its line to the results file; the committed lines (the README's sources) stay."""
    results = tmp_path / "results" / "runs.jsonl"
    for n in (1, 2):
        bench("results_log").append(results, {"n": n})
    assert [json.loads(line) for line in results.read_text().splitlines()] == [{"n": 1}, {"n": 2}]
    assert capsys.readouterr().out.splitlines() == results.read_text().splitlines()


def test_the_command_is_recorded_as_it_can_be_typed_again(bench):
    """An argument with a space in it is quoted, so that the recorded command reruns the measurement."""
    command = bench("results_log").provenance("x.py", ["--data-dir", "my data"])["command"]
    assert shlex.split(command) == ["python", "benchmarks/x.py", "--data-dir", "my data"]


def test_the_date_is_in_utc_whatever_the_machines_time_zone(bench, monkeypatch):
    """The date's `Z` says UTC: a machine set to another time zone records UTC too."""
    monkeypatch.setenv("TZ", "JST-9")
    time.tzset()
    try:
        assert_utc_now(bench("results_log").provenance("x.py", [])["date"])
    finally:
        monkeypatch.undo()
        time.tzset()


def test_git_dirty_means_a_tracked_file_differs_from_the_commit(bench, tmp_path, monkeypatch):
    """An untracked file (a new results file, not yet added) leaves a measurement clean; an edited one does not."""
    results_log = bench("results_log")
    monkeypatch.setattr(results_log, "REPO", tmp_path)
    (tmp_path / "code.py").touch()
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        results_log.git(*command)
    (tmp_path / "new.jsonl").touch()
    assert results_log.provenance("x.py", [])["git_dirty"] is False
    (tmp_path / "code.py").write_text("edited\n")
    assert results_log.provenance("x.py", [])["git_dirty"] is True


@pytest.mark.parametrize("bf16", [False, True])
def test_ghost_bn_speed_records_every_variant(bench, repo, tmp_path, torch_threads, bf16):
    torch_threads(2)
    results = tmp_path / "ghost.jsonl"
    argv = ["--batch-size", "8", "--ghost-batch-size", "4", "--repeats", "2", "--threads", "1"]
    argv += ["--results", str(results)] + ["--bf16"] * bf16
    bench("ghost_bn_speed").main(argv)
    line = only_line(results)
    assert_provenance(line, repo, "ghost_bn_speed.py", argv)
    assert (line["batch_size"], line["ghost_batch_size"], line["repeats"], line["threads"]) == (8, 4, 2, 1)
    assert line["bf16"] is bf16
    assert torch.get_num_threads() == 1
    assert list(line["variants"]) == GHOST_VARIANTS
    for name, figures in line["variants"].items():
        assert len(figures["step_s"]) == 2 and figures["step_s"] == sorted(figures["step_s"])
        assert figures["step_s"][0] <= figures["median_s"] <= figures["step_s"][1]
        assert figures["max_error"] is None if name == "plain BN" else figures["max_error"] < 1e-4
    assert line["variants"]["plain BN"]["over_plain"] == 1.0


def test_ghost_bn_speed_reports_the_median_step_and_its_ratio_to_plain(bench, tmp_path, monkeypatch, torch_threads):
    """The figures come from the timed steps: the median (not the mean, not the fastest), over plain's median."""
    ghost = bench("ghost_bn_speed")
    net = {"plain BN": [3.0, 1.0, 8.0], "split (b)": [4.0, 6.0, 30.0], "fold (a)": [9, 9, 9], "var_mean (c)": [2, 1, 3]}
    bn = {name: [t / 10 for t in times] for name, times in net.items()}
    monkeypatch.setattr(ghost, "measure", lambda args: (net, bn))
    errors = {ghost.GhostBatchNorm2d: 1e-7, ghost.FoldedGhostBatchNorm2d: 2e-7, ghost.VarMeanGhostBatchNorm2d: 3e-7}
    monkeypatch.setattr(ghost, "max_error", lambda variant, k: errors[variant])
    results = tmp_path / "ghost.jsonl"
    ghost.main(["--batch-size", "8", "--ghost-batch-size", "4", "--threads", "1", "--results", str(results)])
    figures = only_line(results)["variants"]
    split = figures["split (b)"]
    assert (split["step_s"], split["median_s"], split["bn_layers_s"]) == ([4.0, 6.0, 30.0], 6.0, 0.6)
    assert [f["over_plain"] for f in figures.values()] == [1.0, 2.0, 3.0, 0.667]
    assert [f["max_error"] for f in figures.values()] == [None, *errors.values()]


def test_ghost_bn_speed_times_each_variant_after_a_warm_up_round(bench, monkeypatch):
    """`measure` keeps `repeats` steps of the whole network and of the batch-norm layers each, the first round
    dropped, and each variant's timed network and timed layers are that variant's, not plain batch norm's."""
    ghost = bench("ghost_bn_speed")
    clock = iter(range(1, 1000))
    monkeypatch.setattr(ghost, "seconds", lambda step: next(clock) * (1 if "bn_step" in step.__qualname__ else 100))
    timed_networks, timed_layers = [], []
    net_step, bn_step = ghost.net_step, ghost.bn_step
    monkeypatch.setattr(
        ghost, "net_step", lambda net, *a: timed_networks.append((bn_types(net), a[2])) or net_step(net, *a)
    )
    monkeypatch.setattr(ghost, "bn_step", lambda variant, *a: timed_layers.append(variant) or bn_step(variant, *a))
    times, bn_times = ghost.measure(Namespace(batch_size=4, ghost_batch_size=2, repeats=2, bf16=True))
    assert times["plain BN"] == [900, 1700] and bn_times["plain BN"] == [10, 18]
    assert times["var_mean (c)"] == [1500, 2300] and bn_times["var_mean (c)"] == [16, 24]
    variants = list(ghost.VARIANTS.values())
    assert timed_networks == [({v or torch.nn.BatchNorm2d}, True) for v in variants] and timed_layers == variants
    for variant in (v for v in variants if v is not None):
        assert bn_types(ghost.network(variant, 2)) == {variant}
    assert {x.shape[0] for x in ghost.bn_inputs(6)} == {6}


def test_ghost_bn_speed_bf16_times_the_network_under_bf16_autocast(bench):
    ghost = bench("ghost_bn_speed")
    net, dtypes = ghost.network(None, 2), []
    net.fc.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    ghost.net_step(net, images, labels, bf16=True)()
    ghost.net_step(net, images, labels)()
    assert dtypes == [torch.bfloat16, torch.float32]
    assert net.fc.weight.grad.dtype == torch.float32


def bn_types(net: torch.nn.Module) -> set[type]:
    return {type(m) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}


def test_ghost_bn_variants_keep_the_running_statistics_of_split(bench):
    """The variants are other ways to compute the same layer: their running mean and variance match split's."""
    ghost = bench("ghost_bn_speed")
    x = torch.randn(11, 5, 4, 4) * 2 + 1
    split = ghost.GhostBatchNorm2d(5, 4)
    split(x)
    for variant in (ghost.FoldedGhostBatchNorm2d, ghost.VarMeanGhostBatchNorm2d):
        layer = variant(5, 4)
        layer(x)
        torch.testing.assert_close(layer.running_mean, split.running_mean)
        torch.testing.assert_close(layer.running_var, split.running_var)


@pytest.fixture
def logit_dtypes(monkeypatch):
    """Makes train_throughput build a network that notes the dtype of every batch of logits it returns."""

    def patch(throughput) -> list[torch.dtype]:
        dtypes = []

        class Net(throughput.CustomResNet):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                logits = super().forward(x)
                dtypes.append(logits.dtype)
                return logits

        monkeypatch.setattr(throughput, "CustomResNet", Net)
        return dtypes

    return patch


def test_train_throughput_records_both_precisions(
    bench, repo, image_folder, tmp_path, logit_dtypes, torch_threads, monkeypatch
):
    torch_threads(1)
    results = tmp_path / "throughput.jsonl"
    argv = ["--data-dir", str(image_folder), "--batch-size", "4", "--steps", "2", "--warmup", "1"]
    argv += ["--num-workers", "0", "--results", str(results)]
    throughput = bench("train_throughput")
    dtypes = logit_dtypes(throughput)
    monkeypatch.setattr(throughput, "default_precision", lambda cfg: "bf16-mixed")  # as on a CPU with fast bf16
    throughput.main(argv)
    line = only_line(results)
    assert_provenance(line, repo, "train_throughput.py", argv)
    assert (line["batch_size"], line["timed_steps"], line["threads"]) == (4, 2, 1)
    assert (line["default_precision"], line["fast_bf16"]) == ("bf16-mixed", True)
    default = line["bare_bf16_images_per_s"]
    assert line["bare_images_per_s"] == default > 0 and line["lightning_images_per_s"] > 0
    assert line["bf16_over_fp32"] == pytest.approx(
        line["bare_bf16_images_per_s"] / line["bare_fp32_images_per_s"], 0.05
    )
    assert line["lightning_over_bare"] == pytest.approx(line["lightning_images_per_s"] / default, 0.05)
    # 3 steps each: the bare loop and Lightning at the default precision, the bare loop at the other one
    assert Counter(dtypes) == {torch.bfloat16: 6, torch.float32: 3}


def test_train_throughput_puts_each_runs_figure_in_its_field(bench, image_folder, tmp_path, monkeypatch):
    """At fp32 by default: bare is the fp32 bare loop, the ratios are Lightning over bare and bf16 over fp32."""
    throughput = bench("train_throughput")
    monkeypatch.setattr(throughput, "default_precision", lambda cfg: "32-true")
    monkeypatch.setattr(throughput, "bare_loop", lambda dm, steps, warmup, bf16: 25.0 if bf16 else 100.0)
    monkeypatch.setattr(throughput, "lightning_pipeline", lambda dm, steps, warmup, precision: 80.0)
    results = tmp_path / "throughput.jsonl"
    throughput.main(["--data-dir", str(image_folder), "--num-workers", "0", "--results", str(results)])
    line = only_line(results)
    assert (line["bare_images_per_s"], line["lightning_images_per_s"], line["lightning_over_bare"]) == (100, 80, 0.8)
    assert (line["bare_bf16_images_per_s"], line["bare_fp32_images_per_s"], line["bf16_over_fp32"]) == (25, 100, 0.25)


def test_train_throughput_counts_the_images_of_the_timed_steps_only(bench, image_folder, monkeypatch):
    """Images (not batches) per second, over the steps after the warm-up: the bare loop reads the clock at the first
    timed step and after the last; Lightning's timer from the first timed batch's start to the last one's end."""
    throughput = bench("train_throughput")
    monkeypatch.setattr(throughput, "time", Clock(tick=1.0))
    dm = throughput.CIFAR10DataModule(str(image_folder), batch_size=8, num_workers=0)
    dm.setup()
    assert throughput.bare_loop(dm, steps=2, warmup=1, bf16=False) == 16.0
    clock = Clock()
    monkeypatch.setattr(throughput, "time", clock)
    timer, batch = throughput.StepTimer(warmup=1), (torch.zeros(8, 3, 32, 32), torch.zeros(8))
    for i in range(3):
        clock.now = 10.0 * i
        timer.on_train_batch_start(None, None, batch, i)
        clock.now += 4.0
        timer.on_train_batch_end(None, None, None, batch, i)
    assert (timer.seen, timer.start, timer.stop) == (16, 10.0, 24.0)


def test_train_throughput_runs_each_loop_at_its_precision(bench, image_folder, logit_dtypes, monkeypatch):
    """bf16 means bf16 autocast, in the bare loop and in the Lightning pipeline alike; Lightning's time ends with
    the last timed batch, not with `fit`'s teardown."""
    throughput = bench("train_throughput")
    dtypes = logit_dtypes(throughput)
    dm = throughput.CIFAR10DataModule(str(image_folder), batch_size=4, num_workers=0)
    dm.setup()
    throughput.bare_loop(dm, steps=1, warmup=0, bf16=True)
    monkeypatch.setattr(throughput, "time", Clock(tick=1.0))
    assert throughput.lightning_pipeline(dm, steps=1, warmup=0, precision="bf16-mixed") == 4.0
    assert dtypes == [torch.bfloat16, torch.bfloat16]


def test_app_latency_records_the_handlers_and_the_goals(bench, repo, tmp_path, torch_threads, monkeypatch):
    torch_threads(2)
    monkeypatch.syspath_prepend(str(APP_DIR))
    import app

    calls = []  # (handler, its first two arguments after the image): what was called, and so timed

    def note_calls(name: str) -> None:
        handler = getattr(app.SpaceApp, name)

        def noted(sp, image, *args):
            calls.append((name, *args[:2]))
            return handler(sp, image, *args)

        monkeypatch.setattr(app.SpaceApp, name, noted)

    note_calls("predict")
    note_calls("explain")
    results = tmp_path / "latency.jsonl"
    argv = ["--quick", "--server-only", "--threads", "1", "--methods", "Grad-CAM", "--results", str(results)]
    assert bench("app_latency").main(argv) == 0
    # --quick: 5 timed predictions, 5 single and 3 ten-heatmap explanations, each after 3 warm-up calls
    assert Counter(calls) == {("predict", 5): 8, ("explain", True, 1): 8, ("explain", True, 10): 6}
    line = only_line(results)
    assert_provenance(line, repo, "app_latency.py", argv)
    assert line["machine"]["torch_threads"] == torch.get_num_threads() == 1
    server = line["server_side"]
    assert 0 < server["predict"]["p50_ms"] <= server["predict"]["p95_ms"] and server["predict"]["n"] == 5
    assert set(line["goals"]) == {"predict_p95_le_50ms", "one_heatmap_p95_le_300ms", "ten_heatmaps_p95_le_1500ms"}
    assert list(server["methods"]) == ["Grad-CAM"]
    one, ten = server["methods"]["Grad-CAM"]["one_heatmap"], server["methods"]["Grad-CAM"]["ten_heatmaps"]
    # medians, not p95s: one stall of the machine during a single heatmap must not fail the run
    assert 0 < one["p50_ms"] <= one["p95_ms"] and one["p50_ms"] < ten["p50_ms"]
    assert "load" not in line and "client_side" not in line


def test_app_latency_percentiles_are_in_milliseconds_of_the_timed_calls(bench, monkeypatch):
    """p50 is the median, p95 the 95th of the sorted times, in ms; the warm-up calls are not among the times."""
    app_latency = bench("app_latency")
    seconds = [i / 1000 for i in range(20, 0, -1)] + [1.0]
    assert app_latency.percentiles(seconds) == {"n": 21, "p50_ms": 11.0, "p95_ms": 20.0, "max_ms": 1000.0}
    clock = Clock()
    durations = iter([5.0, 5.0, 5.0, 1.0, 2.0])

    def call() -> None:
        clock.now += next(durations)

    monkeypatch.setattr(app_latency, "time", clock)
    assert app_latency.timed(call, 2, warmup=3) == [1.0, 2.0]


def test_app_latency_goals_are_on_p95_and_errors_fail_the_run(bench, capsys):
    app_latency = bench("app_latency")
    faithfulness = {"probability": 0.9, "most_hidden": 0.2, "least_hidden": 0.8, "share_most_lower": 1.0}
    cam = {"one_heatmap": {"p50_ms": 100, "p95_ms": 200}, "ten_heatmaps": {"p50_ms": 1000, "p95_ms": 1600}}
    server = {"predict": {"p50_ms": 10, "p95_ms": 60}, "methods": {"Grad-CAM": cam | {"faithfulness": faithfulness}}}
    result = {"server_side": server, "load": {"errors": 2}}
    assert app_latency.report(result, Namespace(results=None, layer="layer2")) == 1
    assert result["goals"] == {
        "predict_p95_le_50ms": False,
        "one_heatmap_p95_le_300ms": True,
        "ten_heatmaps_p95_le_1500ms": False,
        "load_without_errors": False,
    }


def test_app_latency_faithfulness_keeps_most_and_least_apart(bench):
    """Hiding the most highlighted pixels is `most_hidden`, and `share_most_lower` counts where that hurt more."""
    app_latency = bench("app_latency")
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    most, least = np.array([0.1, 0.2, 0.6]), np.array([0.5, 0.4, 0.3])
    clf = types.SimpleNamespace(
        probabilities=lambda images: probs, cam_masks=lambda *a, **k: None, faithfulness=lambda *a: (most, least)
    )
    sp = types.SimpleNamespace(examples=["a", "b", "c"], _model_input=lambda path: (np.zeros(3),), clf=clf)
    assert app_latency.faithfulness_on_examples(sp, "layer2", "Grad-CAM") == {
        "images": 3,
        "probability": 0.7,
        "most_hidden": 0.3,
        "least_hidden": 0.4,
        "share_most_lower": 0.67,
    }


def test_app_latency_load_test_counts_every_request_and_the_rate_of_a_round(bench, monkeypatch):
    """Two rounds of `requests`: every request's latency is kept once, a failed one counted as an error; throughput
    is one round over its wall time."""
    app_latency = bench("app_latency")

    class Client:
        def __init__(self, url, verbose):
            pass

        def predict(self, file, k, api_name):
            time.sleep(0.05)
            if next(calls) == 2:
                raise ConnectionError("dropped")
            return {"confidences": [{}] * k}

    calls = itertools.count()

    monkeypatch.setitem(sys.modules, "gradio_client", types.SimpleNamespace(Client=Client, handle_file=str))
    load = app_latency.load_test("http://x", "cat.png", requests=4, concurrency=2, pid=None)
    assert (load["requests"], load["errors"], load["latency"]["n"]) == (8, 1, 8)
    assert load["first_errors"][0].endswith("ConnectionError: dropped")
    assert 0 < load["throughput_rps"] <= 40  # 4 requests, 2 at a time, 50 ms each: at least 0.1 s


def test_hparam_sweep_records_each_variant_with_its_overrides(bench, repo, image_folder, tmp_path):
    results = tmp_path / "sweep.jsonl"
    argv = ["--data-dir", str(image_folder), "--epochs", "1", "--out-root", str(tmp_path / "sweep")]
    argv += ["--results", str(results), "batch_size=8,num_workers=0,n_misclassified=2"]
    bench("hparam_sweep").main(argv)
    line = only_line(results)
    assert_provenance(line, repo, "hparam_sweep.py", argv)
    assert line["variant"] == argv[-1] and (line["epochs"], line["batch_size"], line["n_misclassified"]) == (1, 8, 2)
    assert 0 <= line["test_acc"] <= 1 and 0 <= line["test_acc_tta"] <= 1 and line["minutes"] >= 0
    assert len(list((tmp_path / "sweep" / argv[-1].replace(",", "_").replace("=", "-")).rglob("*.png"))) > 2


def test_hparam_sweep_variant_overrides_win_and_its_figures_are_recorded(bench, tmp_path, monkeypatch):
    """A variant's knobs beat the sweep's flags and settings; the line has test accuracy plain and with TTA, the
    last epoch's train accuracy and the minutes; every spec is checked before the first run."""
    sweep = bench("hparam_sweep")
    configs = []

    def run(cfg):
        configs.append(cfg)
        history = pd.DataFrame({"train_acc": [0.25, 0.75, 0.5]})
        return types.SimpleNamespace(report={"accuracy": 0.5, "accuracy_tta": 0.6}, history=history)

    monkeypatch.setattr(sweep, "run", run)
    monkeypatch.setattr(sweep, "time", Clock(tick=90.0))
    args = Namespace(max_lr=0.01, epochs=2, out_root=str(tmp_path), data_dir="data")
    line = sweep.run_variant("max_lr=0.02,n_misclassified=3", args)
    assert (configs[0].max_lr, configs[0].n_misclassified, configs[0].epochs) == (0.02, 3, 2)
    assert line == {
        "variant": "max_lr=0.02,n_misclassified=3",
        "max_lr": 0.02,
        "epochs": 2,
        "n_misclassified": 3,
        "test_acc": 0.5,
        "test_acc_tta": 0.6,
        "final_train_acc": 0.5,
        "minutes": 1.5,
    }
    with pytest.raises(SystemExit, match="nope"):
        sweep.main(["--data-dir", "data", "--results", str(tmp_path / "r.jsonl"), "baseline", "nope=1"])
    assert len(configs) == 1


def test_ema_gain_evaluates_the_averaged_and_the_raw_weights(bench, image_folder, tmp_path, monkeypatch, capsys):
    """`state_dict` holds the EMA and `current_model_state` the raw weights; both are evaluated on the test split
    at the run's logit scale, and each one's figures go under its own name."""
    ema_gain = bench("ema_gain")
    states = {}
    for seed, name in enumerate(("ema", "raw")):
        torch.manual_seed(seed)
        states[name] = {f"net.{k}": v for k, v in ema_gain.CustomResNet(10).state_dict().items()}
    evaluated = []

    def predict(net, dataset):
        name = "ema" if torch.equal(net.fc.weight, states["ema"]["net.fc.weight"]) else "raw"
        evaluated.append((name, net.logit_scale, len(dataset)))
        accuracy, tta = {"ema": (0.9, 0.95), "raw": (0.8, 0.85)}[name]
        return types.SimpleNamespace(report=lambda: {"accuracy": accuracy, "accuracy_tta": tta})

    monkeypatch.setattr(ema_gain, "predict", predict)
    checkpoint = {"state_dict": states["ema"], "current_model_state": states["raw"], "epoch": 3, "global_step": 7}
    torch.save(checkpoint | {"callbacks": {"RecipeCheck": {"logit_scale": 0.5}}}, tmp_path / "last.ckpt")
    argv = ["ema_gain.py", "--checkpoint", str(tmp_path / "last.ckpt"), "--data-dir", str(image_folder)]
    monkeypatch.setattr(sys, "argv", argv)
    ema_gain.main()
    assert json.loads(capsys.readouterr().out) == {
        "epoch": 3,
        "global_step": 7,
        "ema": {"accuracy": 0.9, "accuracy_tta": 0.95},
        "raw": {"accuracy": 0.8, "accuracy_tta": 0.85},
    }
    assert evaluated == [("ema", 0.5, 30), ("raw", 0.5, 30)]


FIGURES = {"accuracy": 0.7, "accuracy_tta": 0.75}
REPORT = FIGURES | {"n": 30, "per_class": {}}


def test_ema_gain_appends_its_line_with_the_command_and_the_machine(bench, image_folder, tmp_path, monkeypatch):
    ema_gain = bench("ema_gain")
    torch.manual_seed(0)
    state = {f"net.{k}": v for k, v in ema_gain.CustomResNet(10).state_dict().items()}
    torch.save({"state_dict": state, "current_model_state": state, "epoch": 0, "global_step": 1}, tmp_path / "c.ckpt")
    monkeypatch.setattr(ema_gain, "predict", lambda net, data: types.SimpleNamespace(report=lambda: REPORT))
    results = tmp_path / "results" / "ema_gain.jsonl"
    argv = ["--checkpoint", str(tmp_path / "c.ckpt"), "--data-dir", str(image_folder), "--results", str(results)]
    ema_gain.main(argv)
    ema_gain.main(argv)
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(lines) == 2
    assert lines[0]["command"] == shlex.join(["python", "benchmarks/ema_gain.py", *argv])
    assert lines[0]["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert (lines[0]["ema"], lines[0]["raw"], lines[0]["global_step"]) == (FIGURES, FIGURES, 1)
