"""The benchmarks run, on tiny inputs, and `--results` appends one JSON line that says what was measured, with the
command that measured it and the machine it ran on (the figures themselves are for benchmarks/results/)."""

import json
import shlex
import subprocess

import pytest
import torch
from app_helpers import load_file_module

GHOST_VARIANTS = ["plain BN", "split (b)", "fold (a)", "var_mean (c)"]


@pytest.fixture
def bench(repo):
    return lambda name: load_file_module(repo / "benchmarks", name)


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
    assert line["machine"]["cpu_count"] >= 1 and line["machine"]["cpu_model"]
    assert line["date"].endswith("Z")


def test_a_result_is_appended_to_the_lines_already_there(bench, tmp_path, capsys):
    """Each measurement adds its line to the results file; the committed lines (the README's sources) stay."""
    results = tmp_path / "results" / "runs.jsonl"
    for n in (1, 2):
        bench("results_log").append(results, {"n": n})
    assert [json.loads(line) for line in results.read_text().splitlines()] == [{"n": 1}, {"n": 2}]


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


def test_ghost_bn_speed_records_every_variant(bench, repo, tmp_path):
    results = tmp_path / "ghost.jsonl"
    argv = ["--batch-size", "8", "--ghost-batch-size", "4", "--repeats", "2", "--threads", "1"]
    argv += ["--results", str(results)]
    bench("ghost_bn_speed").main(argv)
    line = only_line(results)
    assert_provenance(line, repo, "ghost_bn_speed.py", argv)
    assert (line["batch_size"], line["ghost_batch_size"], line["repeats"]) == (8, 4, 2)
    assert list(line["variants"]) == GHOST_VARIANTS
    for name, figures in line["variants"].items():
        assert len(figures["step_s"]) == 2 and figures["step_s"] == sorted(figures["step_s"])
        assert figures["step_s"][0] <= figures["median_s"] <= figures["step_s"][1]
        assert figures["max_error"] is None if name == "plain BN" else figures["max_error"] < 1e-4
    assert line["variants"]["plain BN"]["over_plain"] == 1.0


def test_train_throughput_records_both_precisions(bench, repo, image_folder, tmp_path):
    results = tmp_path / "throughput.jsonl"
    argv = ["--data-dir", str(image_folder), "--batch-size", "8", "--steps", "1", "--warmup", "1"]
    argv += ["--num-workers", "0", "--results", str(results)]
    bench("train_throughput").main(argv)
    line = only_line(results)
    assert_provenance(line, repo, "train_throughput.py", argv)
    fast_bf16 = line["fast_bf16"]
    assert line["default_precision"] == ("bf16-mixed" if fast_bf16 else "32-true")
    default = line["bare_bf16_images_per_s"] if fast_bf16 else line["bare_fp32_images_per_s"]
    assert line["bare_images_per_s"] == default > 0 and line["lightning_images_per_s"] > 0
    assert line["bf16_over_fp32"] == pytest.approx(
        line["bare_bf16_images_per_s"] / line["bare_fp32_images_per_s"], 0.05
    )


def test_app_latency_records_the_handlers_and_the_goals(bench, repo, tmp_path):
    results = tmp_path / "latency.jsonl"
    argv = ["--quick", "--server-only", "--threads", "1", "--methods", "Grad-CAM", "--results", str(results)]
    assert bench("app_latency").main(argv) == 0
    line = only_line(results)
    assert_provenance(line, repo, "app_latency.py", argv)
    assert line["machine"]["torch_threads"] == 1
    server = line["server_side"]
    assert 0 < server["predict"]["p50_ms"] <= server["predict"]["p95_ms"]
    assert set(line["goals"]) == {"predict_p95_le_50ms", "one_heatmap_p95_le_300ms", "ten_heatmaps_p95_le_1500ms"}
    assert list(server["methods"]) == ["Grad-CAM"]
    one = server["methods"]["Grad-CAM"]["one_heatmap"]
    assert 0 < one["p50_ms"] <= one["p95_ms"] <= server["methods"]["Grad-CAM"]["ten_heatmaps"]["p95_ms"]
    assert "load" not in line and "client_side" not in line


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
