"""benchmarks/notebook_run.py without executing the notebook: --set, refusals, a failed run's line, the line of
the committed run, the papermill command it records, and the README's table of runs. (The smoke run that
executes the notebook through the runner, records it and ships it is in test_notebook.py.)"""

import json
import re
import shlex
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from app_helpers import load_file_module
from click.testing import CliRunner
from papermill.cli import papermill as papermill_cli
from papermill.exceptions import PapermillExecutionError

REPO = Path(__file__).resolve().parents[1]


runner = load_file_module(REPO / "benchmarks", "notebook_run")
tables = load_file_module(REPO / "scripts", "readme_tables")


def test_set_parses_each_value_as_its_fields_type():
    overrides = runner.parse_overrides(
        ["weight_decay=0.2", "devices=1", "seed=7", "resume=true", "precision=none", "accelerator=cpu"]
    )
    assert overrides == {
        "weight_decay": 0.2,
        "devices": "1",  # a str field: "1" stays a string, as the notebook's OVERRIDES had it
        "seed": 7,
        "resume": True,
        "precision": None,
        "accelerator": "cpu",
    }
    assert [type(overrides[k]) for k in ("weight_decay", "seed")] == [float, int]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("wieght_decay=0.2", "NAME one of .*weight_decay"),  # a typo: the valid names are listed
        ("weight_decay", "expected NAME=VALUE"),
        ("epochs=3", "the notebook's own parameters set it"),
        ("max_lr=0.02", "the notebook's own parameters set it"),
        ("seed=abc", "expected int"),
        ("resume=maybe", "expected bool"),
        ("label_smoothing=1.5", r"label_smoothing must be in \[0, 1\)"),
    ],
)
def test_set_rejects_what_the_notebook_could_not_take(item, message):
    with pytest.raises(SystemExit, match=message):
        runner.parse_overrides([item])


def run_args(tmp_path: Path, *extra: str) -> list[str]:
    runs, results = tmp_path / "runs", tmp_path / "results.jsonl"
    return ["run", "x", "--data-dir", str(tmp_path), "--runs-root", str(runs), "--results", str(results), *extra]


def test_run_rejects_a_bad_set_before_anything_starts(tmp_path):
    with pytest.raises(SystemExit, match="NAME one of"):
        runner.main(run_args(tmp_path, "--set", "weight_decay=0.2", "bogus=1"))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results.jsonl").exists()


def test_run_refuses_an_existing_run_directory(tmp_path):
    (tmp_path / "runs" / "x").mkdir(parents=True)
    with pytest.raises(SystemExit, match="exists"):
        runner.main(run_args(tmp_path))
    assert not (tmp_path / "results.jsonl").exists()


def test_a_failed_notebook_is_recorded_and_exits_non_zero(tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise PapermillExecutionError(3, 3, "dm = build_datamodule(cfg)", "DataError", "no class folders", [])

    monkeypatch.setattr(runner.papermill, "execute_notebook", fail)
    args = run_args(tmp_path, "--set", "weight_decay=0.2")
    assert runner.main(args) == 1
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    line = json.loads(lines[0])
    assert len(lines) == 1 and json.loads(capsys.readouterr().out.splitlines()[-1]) == line
    assert line["status"] == "failed" and line["error"] == "DataError: no class folders"
    # The copy holds none of the committed run's outputs, so nothing of that run leaks into this line.
    assert [line[k] for k in ("accuracy", "minutes", "last_train_acc", "precision")] == [None] * 4
    assert line["cpu_capability"] and re.fullmatch(r"[0-9a-f]{40}", line["git_commit"])
    assert line["parameters"] == {
        "DATA_DIR": str(tmp_path.resolve()),
        "MAX_LR": 0.01,
        "OVERRIDES": {"weight_decay": 0.2},
    }
    assert line["runner_command"] == shlex.join(["python", "benchmarks/notebook_run.py", *args])


def test_record_of_the_committed_run_reads_its_notebook_model_json_and_log(repo):
    line = runner.build_record("committed", repo)
    model = json.loads((repo / "space_app" / "model.json").read_text())
    meta = json.loads((repo / "S12.ipynb").read_text())["metadata"]["papermill"]
    log = pd.read_csv(repo / "logs" / "metrics.csv")
    assert [line[k] for k in ("accuracy", "accuracy_tta", "accuracy_tta_translate", "n_test")] == [
        model["metrics"][k] for k in ("accuracy", "accuracy_tta", "accuracy_tta_translate", "n")
    ]
    assert [line[k] for k in ("epochs", "seed", "max_lr")] == [
        model["training"][k] for k in ("epochs", "seed", "max_lr")
    ]
    assert line["last_train_acc"] == round(log["train/acc"].dropna().iloc[-1], 4)
    assert line["last_val_acc"] == round(log["val/acc"].dropna().iloc[-1], 4)
    assert line["minutes"] == round(meta["duration"] / 60, 2)
    assert line["parameters"] == meta["parameters"] and line["status"] == "ok"
    assert f"precision: {line['precision']}" in json.dumps(json.loads((repo / "S12.ipynb").read_text())["cells"])
    # What the directory cannot tell stays unknown.
    assert [line[k] for k in ("cpu_capability", "git_commit", "git_dirty", "runner_command")] == [None] * 4


def test_overrides_are_the_differences_from_the_defaults():
    training = runner.dataclasses.asdict(runner.TrainConfig(weight_decay=0.2, devices="1", out="x", seed=1))
    assert runner.overrides_of(training | {"max_lr": 0.02, "epochs": 3}) == {"weight_decay": 0.2, "devices": "1"}


def test_the_recorded_papermill_command_sets_the_same_parameters(repo, tmp_path):
    parameters = {"DATA_DIR": "/data/2024", "SMOKE": True, "MAX_LR": 0.01, "OVERRIDES": {"devices": "1", "x": None}}
    meta = {"input_path": str(repo / "S12.ipynb"), "output_path": str(tmp_path / "p.ipynb"), "parameters": parameters}
    command = runner.papermill_command(meta)
    result = CliRunner().invoke(papermill_cli, [*shlex.split(command)[1:], "--prepare-only"])
    assert result.exit_code == 0, result.output
    prepared = json.loads((tmp_path / "p.ipynb").read_text())["metadata"]["papermill"]["parameters"]
    assert prepared == parameters


def line_of(**fields) -> dict:
    keys = ("seed", "epochs", "cpu_capability", "minutes", "accuracy", "accuracy_tta", "accuracy_tta_translate")
    return {k: None for k in (*keys, "last_train_acc", "overrides", "max_lr", "parameters")} | fields


def test_runs_table_shows_every_run_with_a_dash_for_the_unknown(tmp_path):
    done = line_of(name="wd02", status="ok", seed=42, epochs=24, cpu_capability="AVX512", minutes=91.04,
                   accuracy=0.9123, accuracy_tta=0.918, accuracy_tta_translate=0.92, last_train_acc=0.97,
                   overrides={"weight_decay": 0.2}, max_lr=0.01, parameters={"MAX_LR": 0.01})  # fmt: skip
    failed = line_of(name="ls02", status="failed", parameters={"DATA_DIR": "d", "OVERRIDES": {"label_smoothing": 0.2}})
    (tmp_path / "runs.jsonl").write_text(json.dumps(done) + "\n" + json.dumps(failed) + "\n")
    assert tables.runs_table(str(tmp_path / "runs.jsonl")).splitlines()[2:] == [
        "| wd02 | weight_decay=0.2, max LR 0.01 | 42 | 24 | AVX512 | 91.0 | 91.23% | 91.80% | 92.00% | 97.00% | ok |",
        "| ls02 | label_smoothing=0.2, max LR — (LR finder) | — | — | — | — | — | — | — | — | failed |",
    ]


def test_runs_table_renders_the_committed_results(repo):
    results = repo / "benchmarks" / "results" / "notebook_runs.jsonl"
    rows = tables.runs_table(str(results)).splitlines()[2:]
    assert len(rows) == len(results.read_text().splitlines()) and rows[0].startswith("| committed-baseline |")


def test_max_lr_finder_reaches_the_notebook_as_none_not_as_its_default(tmp_path, monkeypatch):
    passed = {}

    def execute(notebook, output, parameters, **kwargs):
        passed.update(parameters)

    monkeypatch.setattr(runner.papermill, "execute_notebook", execute)
    runner.main(run_args(tmp_path, "--max-lr", "finder"))
    assert "MAX_LR" in passed and passed["MAX_LR"] is None


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\rEpoch 0:  10%\rEpoch 0: 100%|done\n", "Epoch 0: 100%|done\n"),  # a bar's updates: its last state
        ("long line\rshort\n", "shortline\n"),  # a carriage return writes over, it does not erase
        # tqdm's nested bar: a line below, then ESC[A back up to the main bar
        ("\rTrain 50%\n\rVal 0%\x1b[A\n\rVal 100%\x1b[A\rTrain 100%", "Train 100%\nVal 100%"),
        ("\x1b[1mbold\x1b[0m plain\n", "bold plain\n"),
    ],
)
def test_printed_text_is_kept_as_a_terminal_shows_it(text, shown):
    assert runner.as_a_terminal_shows(text) == shown


def test_tidy_drops_the_injected_cell_and_joins_each_run_of_printed_text(tmp_path):
    output = nbformat.v4.new_output
    injected = nbformat.v4.new_code_cell('DATA_DIR = "/my/laptop/data"', metadata={"tags": ["injected-parameters"]})
    cell = nbformat.v4.new_code_cell("fit()")
    cell.outputs = [
        output("stream", name="stderr", text="\rEpoch 0:  50%"),
        output("stream", name="stderr", text="\rEpoch 0: 100%\n"),
        output("display_data", data={"text/plain": "<figure>"}),
        output("stream", name="stdout", text="\r   \r"),
        output("stream", name="stdout", text="done\n"),
    ]
    path = tmp_path / "n.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[injected, cell], metadata={"papermill": {"parameters": {}}}), path)
    runner.tidy(path)
    tidied = nbformat.read(path, as_version=4)
    assert [c.source for c in tidied.cells] == ["fit()"] and "papermill" in tidied.metadata
    kinds = [(o.output_type, o.get("text")) for o in tidied.cells[0].outputs]
    assert kinds == [("stream", "Epoch 0: 100%\n"), ("display_data", None), ("stream", "done\n")]


def test_tidy_keeps_printed_and_error_text_apart(tmp_path):
    """Notebooks show stderr (warnings, progress bars) apart from stdout: a run of printed text is one stream's."""
    cell = nbformat.v4.new_code_cell("fit()")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="\rEpoch 0: 100%\n"),
        nbformat.v4.new_output("stream", name="stdout", text="max LR for OneCycle: 1.000e-02\n"),
        nbformat.v4.new_output("stream", name="stderr", text="warning\n"),
    ]
    path = tmp_path / "n.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)
    runner.tidy(path)
    outputs = nbformat.read(path, as_version=4).cells[0].outputs
    assert [(o.name, o.text) for o in outputs] == [
        ("stderr", "Epoch 0: 100%\n"),
        ("stdout", "max LR for OneCycle: 1.000e-02\n"),
        ("stderr", "warning\n"),
    ]


def test_the_committed_notebook_pins_no_local_data_folder_and_shows_no_raw_progress_bars(repo):
    notebook = json.loads((repo / "S12.ipynb").read_text())
    assert not [c for c in notebook["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    parameters = next(c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))
    assert "DATA_DIR = None\n" in parameters["source"], "in Colab the notebook must download CIFAR-10"
    streams = ["".join(o["text"]) for c in notebook["cells"] for o in c.get("outputs", []) if "text" in o]
    assert streams and not [s for s in streams if "\r" in s or "\x1b" in s]


def finished_run(root: Path, metrics: dict) -> Path:
    """A run directory as a finished notebook run leaves it: every artifact present, model.json with `metrics`."""
    for name in runner.ARTIFACT_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    (root / "logs" / "metrics.csv").write_text("epoch,step,train/acc,val/acc\n0,9,0.5,0.5\n")
    meta = {"input_path": "S12.ipynb", "output_path": "S12.ipynb", "end_time": "2025-01-01T00:00:00", "duration": 60}
    (root / runner.NOTEBOOK).write_text(json.dumps({"cells": [], "metadata": {"papermill": meta}}))
    (root / "space_app" / "model.json").write_text(json.dumps({"metrics": metrics}))
    return root


@pytest.mark.parametrize(
    ("run", "ships"),
    [
        ({"accuracy": 0.9101, "accuracy_tta": 0.9150}, True),  # better single view, flip TTA below the committed one
        ({"accuracy": 0.9100, "accuracy_tta": 0.9500}, False),  # a tie with the committed single view
        ({"accuracy": 0.8900, "accuracy_tta": 0.9500}, False),  # only its flip TTA beats the committed single view
    ],
    ids=["better", "tie", "worse-single-view"],
)
def test_ship_needs_a_single_view_above_the_committed_single_view(tmp_path, run, ships):
    """`ship` compares like with like: the run's single-view accuracy against the committed model's, strictly."""
    committed = finished_run(tmp_path / "repo", {"accuracy": 0.91, "accuracy_tta": 0.92})
    run_dir = finished_run(tmp_path / "runs" / "candidate", run)
    if ships:
        runner.check_shippable(run_dir, committed, force=False)
    else:
        with pytest.raises(SystemExit, match="does not beat the committed 91.00%"):
            runner.check_shippable(run_dir, committed, force=False)
    runner.check_shippable(run_dir, committed, force=True)


@pytest.mark.parametrize(
    ("training", "advice"),
    [
        ({"weight_decay": 0.2, "label_smoothing": 0.2}, "{'weight_decay': 0.2, 'label_smoothing': 0.2}"),
        ({"per_class": 20, "lr_find_iters": 20, "epochs": 1}, None),  # the notebook's own SMOKE settings
        ({}, None),
    ],
    ids=["recipe-changed", "smoke", "defaults"],
)
def test_ship_says_to_make_a_winners_overrides_the_defaults(tmp_path, capsys, training, advice):
    """A winner trained with OVERRIDES leaves TrainConfig's defaults another recipe than the shipped model's:
    Run all in Colab and the command line would train that other recipe. `ship` says so, with the overrides."""
    committed = finished_run(tmp_path / "repo", {"accuracy": 0.91})
    run_dir = finished_run(tmp_path / "runs" / "winner", {"accuracy": 0.92})
    model_json = run_dir / "space_app" / "model.json"
    model_json.write_text(json.dumps(json.loads(model_json.read_text()) | {"training": training}))
    args = ["ship", "winner", "--runs-root", str(tmp_path / "runs"), "--repo", str(committed)]
    assert runner.main(args) == 0
    out = capsys.readouterr().out
    assert "python scripts/readme_tables.py readme" in out
    if advice:
        assert f"OVERRIDES {advice}: make them TrainConfig's defaults" in out
    else:
        assert "OVERRIDES" not in out
