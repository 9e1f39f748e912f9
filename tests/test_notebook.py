"""The notebook stays paired with its script and runs end to end in smoke mode (as CI runs it), executed once,
through benchmarks/notebook_run.py: the run leaves the repository alone, its JSON line says what its files
say, and `ship` refuses it, or with --force ships exactly its artifacts into a copy of the repository."""

import importlib.util
import json
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jupytext
import pandas as pd
import pytest
import torch
from test_notebook_run import digests, runner

from era_utils.hardware import default_precision
from era_utils.train_config import TrainConfig

# What a training run writes: figures, weights, stores, checkpoints, CSV logs, downloads.
ARTIFACT_SUFFIXES = {".png", ".safetensors", ".npz", ".ckpt", ".csv", ".gz", ".ipynb"}
# One CPU process, as in the other training tests: "auto" would mean GPU or DDP on some runners.
# Label smoothing other than the default, whatever the default becomes: the override must show in the config.
SMOOTHING = round(TrainConfig().label_smoothing + 0.1, 4)
OVERRIDES = {"accelerator": "cpu", "devices": "1", "label_smoothing": SMOOTHING}


def _code_cells(notebook) -> list[str]:
    """Code cells (the committed notebook has no papermill-injected cell: test_notebook_run checks it)."""
    return [c.source.strip() for c in notebook.cells if c.cell_type == "code"]


def artifacts(repo: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime in ns) of every artifact-like file in the repository, outside .git.

    Only artifacts, not the whole tree: other people may be editing source files while the notebook runs.
    """
    return {
        str(p.relative_to(repo)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in repo.rglob("*")
        if p.suffix in ARTIFACT_SUFFIXES and ".git" not in p.parts and p.is_file()
    }


def test_notebook_and_its_script_hold_the_same_code(repo):
    assert _code_cells(jupytext.read(repo / "S12.ipynb")) == _code_cells(jupytext.read(repo / "S12.py"))


def test_run_all_trains_the_max_lr_the_command_line_does(repo):
    """The notebook's MAX_LR parameter and TrainConfig's default are one recipe: Run all in Colab and the Quick
    start's command train at the same peak."""
    parameters = next(c for c in jupytext.read(repo / "S12.py").cells if "parameters" in c.metadata.get("tags", []))
    namespace: dict = {}
    exec(parameters.source, namespace)
    assert namespace["MAX_LR"] == TrainConfig().max_lr


def test_colab_setup_clones_once_installs_and_works_in_the_clone(repo, tmp_path, monkeypatch):
    """In Colab (google.colab loaded, era_utils not installed) the setup cell clones REPO_URL, installs its
    requirements and changes into the clone, so OUT = "." writes there; after a runtime restart it does not clone
    again; a failing step shows its own output; with the placeholder REPO_URL it stops with a message; without a
    GPU it stops Run all and says how to get one, unless it is a smoke run."""
    setup = next(cell for cell in _code_cells(jupytext.read(repo / "S12.py")) if "google.colab" in cell)
    clone = tmp_path / "content" / "S12"
    setup = setup.replace("/content/S12", str(clone))
    commands, failing = [], []

    def run(command, capture_output, text):
        commands.append(command)
        if command[:2] == ["git", "clone"]:
            clone.mkdir(parents=True)
        code = 1 if command[0] in failing else 0
        return subprocess.CompletedProcess(command, code, "", "ERROR: no matching distribution" if code else "")

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "era_utils" else find_spec(name))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    parameters = {"REPO_URL": "https://github.com/someone/cifar.git", "SMOKE": False}
    for _ in range(2):  # the second time as after a runtime restart
        exec(setup, dict(parameters))
        assert Path.cwd() == clone and sys.path[0] == str(clone)
    assert commands[0] == ["git", "clone", "--depth", "1", "https://github.com/someone/cifar.git", str(clone)]
    install = [sys.executable, "-m", "pip", "install", "-q", "-r", f"{clone}/requirements.txt"]
    assert commands[1:] == [install, install]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="No GPU: .* Runtime > Change runtime type > GPU"):
        exec(setup, dict(parameters))
    exec(setup, parameters | {"SMOKE": True})  # a smoke run checks the cells on Colab's CPU
    failing.append(sys.executable)
    with pytest.raises(SystemExit, match="pip install -q failed:\nERROR: no matching distribution"):
        exec(setup, dict(parameters))
    with pytest.raises(SystemExit, match="Set REPO_URL"):
        exec(setup, parameters | {"REPO_URL": "https://github.com/OWNER/REPO.git"})


def test_colab_setup_does_nothing_outside_colab_or_where_era_utils_is_importable(repo, tmp_path, monkeypatch):
    """Locally (or under papermill) the package is importable from the repository root and the cell must not clone,
    install or change directory; nor in Colab once the package is importable (a notebook opened in the clone)."""
    setup = next(cell for cell in _code_cells(jupytext.read(repo / "S12.py")) if "google.colab" in cell)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"the setup cell ran {a}"))
    monkeypatch.chdir(tmp_path)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "era_utils" else find_spec(name))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(setup, {"REPO_URL": "https://github.com/someone/cifar.git", "SMOKE": False})  # era_utils not importable
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(setup, {"REPO_URL": "https://github.com/someone/cifar.git", "SMOKE": False})
    assert Path.cwd() == tmp_path


@pytest.mark.parametrize("smoke", [False, True])
def test_the_notebooks_parameters_reach_its_train_config(repo, smoke):
    """OUT holds every output, the Space's files too (OUT/space_app: a run into "runs/mine" leaves the committed
    model alone); SMOKE shrinks the run; otherwise EPOCHS, and TrainConfig's LR finder, train; OVERRIDES reach it."""
    cell = next(cell for cell in _code_cells(jupytext.read(repo / "S12.py")) if "cfg = TrainConfig(" in cell)
    parameters = {"SMOKE": smoke, "EPOCHS": 3, "DATA_DIR": "images", "OUT": "runs/mine", "MAX_LR": 0.02}
    namespace = parameters | {"OVERRIDES": {"accelerator": "cpu", "weight_decay": 0.3}, "Path": Path}  # the setup's
    exec(cell, namespace)
    cfg = namespace["cfg"]
    assert (cfg.data_dir, cfg.out, cfg.app_dir, cfg.max_lr) == ("images", "runs/mine", "runs/mine/space_app", 0.02)
    assert (cfg.accelerator, cfg.weight_decay) == ("cpu", 0.3)
    run = (1, 20, 20) if smoke else (3, None, TrainConfig().lr_find_iters)
    assert (cfg.epochs, cfg.per_class, cfg.lr_find_iters) == run


@dataclass
class SmokeRun:
    exit_code: int
    run_dir: Path
    runs_root: Path
    results: Path
    changed_in_repo: list[str]


@pytest.fixture(scope="module")
def smoke_run(repo, image_folder, tmp_path_factory) -> SmokeRun:
    """The notebook's one execution: `notebook_run.py run smoke --smoke`, its runs and results in a temporary folder."""
    root = tmp_path_factory.mktemp("notebook_runs")
    runs_root, results = root / "runs", root / "notebook_runs.jsonl"
    sets = [f"{k}={v}" for k, v in OVERRIDES.items()]
    argv = ["run", "smoke", "--smoke", "--data-dir", str(image_folder), "--set", *sets]
    before = artifacts(repo)
    code = runner.main([*argv, "--runs-root", str(runs_root), "--results", str(results)])
    after = artifacts(repo)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return SmokeRun(code, runs_root / "smoke", runs_root, results, changed)


def test_notebook_runs_in_smoke_mode_without_touching_the_repository(smoke_run):
    assert smoke_run.exit_code == 0
    executed = json.loads((smoke_run.run_dir / "S12.ipynb").read_text())
    outputs = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    shown = "".join("".join(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert f"label_smoothing={SMOOTHING}" in shown, "OVERRIDES did not reach the TrainConfig the notebook shows"
    assert "out='.'" in shown, "the run's notebook did not write its outputs where the committed one did"
    for name in ("augmented_samples", "lr_finder", "training_curves", "confusion_matrix", "gradcam"):
        assert (smoke_run.run_dir / "images" / f"{name}.png").is_file()
    assert (smoke_run.run_dir / "space_app" / "model.safetensors").is_file()
    assert "Ending Cell" in (smoke_run.run_dir / "papermill.log").read_text()
    assert not smoke_run.changed_in_repo, f"the notebook wrote into the repository: {smoke_run.changed_in_repo}"


def test_the_run_is_recorded_as_its_files_say(smoke_run, image_folder):
    lines = smoke_run.results.read_text().splitlines()
    line = json.loads(lines[0])
    assert len(lines) == 1
    model = json.loads((smoke_run.run_dir / "space_app" / "model.json").read_text())
    meta = json.loads((smoke_run.run_dir / "S12.ipynb").read_text())["metadata"]["papermill"]
    log = pd.read_csv(smoke_run.run_dir / "logs" / "metrics.csv")
    metrics = model["metrics"]
    assert [line[k] for k in ("accuracy", "accuracy_tta", "accuracy_tta_translate", "n_test")] == [
        metrics[k] for k in ("accuracy", "accuracy_tta", "accuracy_tta_translate", "n")
    ]
    assert line["last_train_acc"] == round(log["train/acc"].dropna().iloc[-1], 4)
    assert line["last_val_acc"] == round(log["val/acc"].dropna().iloc[-1], 4)
    assert line["minutes"] == round(meta["duration"] / 60, 2) and line["start_time"] == meta["start_time"]
    smoke = {"per_class": 20, "lr_find_iters": 20}  # what SMOKE changes, besides the epochs
    assert [line[k] for k in ("epochs", "seed", "max_lr", "overrides")] == [1, 42, 0.01, OVERRIDES | smoke]
    parameters = {"DATA_DIR": str(image_folder), "SMOKE": True, "MAX_LR": 0.01, "OVERRIDES": OVERRIDES}
    assert line["parameters"] == meta["parameters"] == parameters
    assert line["precision"] == default_precision(TrainConfig(accelerator="cpu"))
    assert line["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and line["torch"] == torch.__version__
    assert subprocess.run(["git", "cat-file", "-e", line["git_commit"]], cwd=runner.REPO).returncode == 0
    assert line["status"] == "ok" and line["error"] is None and isinstance(line["git_dirty"], bool)


def test_the_notebook_writes_what_ship_copies_and_checkpoints(smoke_run):
    meta = json.loads((smoke_run.run_dir / "S12.ipynb").read_text())["metadata"]["papermill"]
    start = datetime.fromisoformat(meta["start_time"])
    written = {
        str(p.relative_to(smoke_run.run_dir))
        for p in smoke_run.run_dir.rglob("*")
        if p.is_file() and p.stat().st_mtime >= start.timestamp() and "__pycache__" not in p.parts
    }
    # Every artifact comes from the run (none from the copied repository), and what is not shipped is known.
    assert written == set(runner.artifacts(smoke_run.run_dir)) | {"checkpoints/last.ckpt", "papermill.log"}
    assert set(runner.ARTIFACT_FILES) <= written


@pytest.fixture
def repo_copy(repo, tmp_path) -> Path:
    """The repository's files (tracked, or new and not ignored, as after a ship not yet added), artifacts included:
    `ship` goes there, never into the repository."""
    listed = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
    names = subprocess.run(listed, cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        if (repo / name).is_file():
            (tmp_path / "repo" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, tmp_path / "repo" / name)
    return tmp_path / "repo"


def ship(smoke_run: SmokeRun, repo: Path, *flags: str) -> int:
    return runner.main(["ship", "smoke", "--runs-root", str(smoke_run.runs_root), "--repo", str(repo), *flags])


def test_ship_refuses_a_run_that_does_not_beat_the_committed_model(smoke_run, repo_copy):
    before = digests(repo_copy)
    with pytest.raises(SystemExit, match="does not beat the committed"):
        ship(smoke_run, repo_copy)
    assert digests(repo_copy) == before


def test_ship_force_copies_exactly_the_runs_artifacts_and_removes_stale_ones(smoke_run, repo_copy):
    stale = ["misclassified_images/99_cat_as_dog_99pct.png", "space_app/examples/old.png"]
    for name in stale:
        (repo_copy / name).write_bytes(b"stale")
    before, run = digests(repo_copy), digests(smoke_run.run_dir)
    assert ship(smoke_run, repo_copy, "--force") == 0
    after = digests(repo_copy)
    shipped = set(runner.artifacts(smoke_run.run_dir))
    replaced = {p for p in before if p.rpartition("/")[0] in runner.ARTIFACT_DIRS}  # committed names and stale
    assert set(after) == (set(before) - replaced) | shipped
    new = {p.rpartition("/")[0] for p in set(after) - set(before)}
    assert new <= {"misclassified_images", "space_app/examples"}, f"ship added files elsewhere: {new}"
    assert {p: after[p] for p in shipped} == {p: run[p] for p in shipped}
    assert all(after[p] == before[p] for p in after if p not in shipped), "ship changed a file it does not own"
    assert "images/space_app.png" in after and not set(stale) & set(after)
