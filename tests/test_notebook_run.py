"""benchmarks/notebook_run.py without executing the notebook: --set, refusals, a failed run's line, the line of
the committed run, the papermill command it records, and the README's table of runs. (The smoke run that
executes the notebook through the runner, records it and ships it is in test_notebook.py.)"""

import hashlib
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import pytest
import torch
from app_helpers import load_file_module
from click.testing import CliRunner
from papermill.cli import papermill as papermill_cli
from papermill.exceptions import PapermillExecutionError

REPO = Path(__file__).resolve().parents[1]


runner = load_file_module(REPO / "benchmarks", "notebook_run")
tables = load_file_module(REPO / "scripts", "readme_tables")


def test_set_parses_each_value_as_its_fields_type():
    items = "weight_decay=0.2 devices=1 seed=7 overwrite=true fast_dev_run=True precision=none flip=alternating"
    overrides = runner.parse_overrides([*items.split(), "download_root=data/a=b"])
    assert overrides == {
        "weight_decay": 0.2,
        "devices": "1",  # a str field: "1" stays a string, as the notebook's OVERRIDES had it
        "seed": 7,
        "overwrite": True,
        "fast_dev_run": True,  # as Python writes it, too
        "precision": None,
        "flip": "alternating",
        "download_root": "data/a=b",  # the first "=" ends the name
    }
    assert [type(overrides[k]) for k in ("weight_decay", "seed")] == [float, int]


def test_set_reads_none_in_any_spelling_only_where_the_field_takes_none():
    assert [runner.parse_value("precision", text) for text in ("None", "NULL", "null")] == [None] * 3
    assert runner.parse_value("devices", "none") == "none"  # a str field that takes no None: "none" is its text


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


def test_run_refuses_a_data_folder_that_is_not_there(tmp_path):
    args = run_args(tmp_path)
    args[args.index("--data-dir") + 1] = str(tmp_path / "missing")
    with pytest.raises(SystemExit, match="no such folder"):
        runner.main(args)
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
    args = run_args(tmp_path, "--set", "weight_decay=0.2", "--set", "flip=alternating")  # as the README writes it
    assert runner.main(args) == 1
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    line = json.loads(lines[0])
    assert len(lines) == 1 and json.loads(capsys.readouterr().out.splitlines()[-1]) == line
    assert line["status"] == "failed" and line["error"] == "DataError: no class folders"
    # The copy holds none of the committed run's outputs, so nothing of that run leaks into this line.
    assert [line[k] for k in ("accuracy", "minutes", "last_train_acc", "precision", "overrides")] == [None] * 5
    assert line["torch"] == torch.__version__  # the kernel's, though the notebook printed nothing
    assert line["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and line["cpu_count"] == os.cpu_count()
    assert re.fullmatch(r"[0-9a-f]{40}", line["git_commit"])
    assert line["git_dirty"] == bool(runner.git("status", "--porcelain").strip())
    assert line["parameters"] == {
        "DATA_DIR": str(tmp_path.resolve()),
        "MAX_LR": 0.01,
        "OVERRIDES": {"weight_decay": 0.2, "flip": "alternating"},
    }
    assert line["runner_command"] == shlex.join(["python", "benchmarks/notebook_run.py", *args])
    command = shlex.split(line["papermill_command"])
    assert command[:3] == ["papermill", "S12.ipynb", "S12.ipynb"] and "MAX_LR" in command and "-y" in command


def test_an_untracked_file_makes_the_run_dirty_whatever_the_checkout(monkeypatch):
    """The failed-run test compares git_dirty with this checkout's state, which a clean clone makes False."""
    monkeypatch.setattr(runner, "git", lambda *args, **kwargs: "?? new.py\n" if args[0] == "status" else "abc\n")
    facts = runner.runner_facts({}, [])
    assert facts["git_dirty"] is True and facts["git_commit"] == "abc"


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
    cells = json.dumps(json.loads((repo / "S12.ipynb").read_text())["cells"])
    assert f"precision: {line['precision']}" in cells and f"torch {line['torch']}," in cells
    assert [line[k] for k in ("start_time", "end_time")] == [meta["start_time"], meta["end_time"]]
    assert line["python"] == json.loads((repo / "S12.ipynb").read_text())["metadata"]["language_info"]["version"]
    assert line["papermill_command"] == runner.papermill_command(meta) and line["directory"] == "."
    # What the directory cannot tell stays unknown.
    assert [line[k] for k in ("cpu_capability", "git_commit", "git_dirty", "runner_command")] == [None] * 4


def test_printed_is_the_first_match_in_the_notebooks_printed_text():
    cells = [{"outputs": [{"text": ["precision: bf16-mixed\n"]}]}, {"outputs": [{"text": "precision: 32-true\n"}]}]
    assert runner.printed({"cells": cells}, r"precision: (\S+)") == "bf16-mixed"
    assert runner.printed({"cells": cells}, r"torch (\S+),") is None


def test_record_of_a_notebook_papermill_never_ran_leaves_its_run_unknown(tmp_path):
    """A notebook run by hand has no papermill metadata and, before its export, no model.json: neither a status
    of "unfinished" nor an empty set of overrides (the runs table reads None as "see the parameters")."""
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("fit()")]), tmp_path / runner.NOTEBOOK)
    line = runner.build_record("by-hand", tmp_path)
    assert line["status"] == "not run" and line["directory"] == str(tmp_path.resolve())
    assert [line[k] for k in ("overrides", "papermill_command", "parameters", "minutes")] == [None] * 4


def test_record_appends_a_notebook_directorys_line_and_refuses_one_without_a_notebook(repo, tmp_path):
    results = tmp_path / "runs.jsonl"
    assert runner.main(["record", "committed", "--from", str(repo), "--results", str(results)]) == 0
    assert [json.loads(line) for line in results.read_text().splitlines()] == [runner.build_record("committed", repo)]
    with pytest.raises(SystemExit, match="no S12.ipynb there"):
        runner.main(["record", "none", "--from", str(tmp_path), "--results", str(results)])
    assert len(results.read_text().splitlines()) == 1


def test_runs_go_to_runs_notebooks_and_are_recorded_where_the_table_of_runs_is_read(repo, monkeypatch):
    """The defaults the README's commands rely on: the git-ignored runs/notebooks/NAME/, the committed JSON lines
    file, and a directory shown relative to the repository whatever folder the command ran from."""
    parse = runner.parser().parse_args
    assert Path(parse(["record", "x", "--from", "."]).results) == repo / "benchmarks/results/notebook_runs.jsonl"
    assert Path(parse(["ship", "x"]).runs_root) == repo / "runs" / "notebooks"
    assert Path(parse(["run", "x", "--data-dir", "d"]).runs_root) == repo / "runs" / "notebooks"
    monkeypatch.chdir(repo / "benchmarks")
    assert runner.build_record("committed", Path(".."))["directory"] == "."


@pytest.mark.parametrize(
    ("log", "last"),
    [
        ("", {"last_train_acc": None, "last_val_acc": None}),  # the run stopped before its first epoch ended
        ("0,9,0.5,1.5,0.4,1.2\n1,19,,,0.6,0.9\n", {"last_train_acc": None, "last_val_acc": 0.6}),
    ],
    ids=["no-epoch", "no-train-acc"],
)
def test_last_epoch_leaves_what_the_log_lacks_unknown(tmp_path, log, last):
    (tmp_path / "metrics.csv").write_text("epoch,step,train/acc,train/loss,val/acc,val/loss\n" + log)
    assert runner.last_epoch(tmp_path / "metrics.csv") == last


def other_than_the_default(name: str) -> float:
    """A value of a float field of TrainConfig that is not its default, whatever the defaults become: a test that
    wrote weight_decay=0.2 as "an override" would fail the day a winner makes 0.2 the default."""
    return round(getattr(runner.TrainConfig(), name) + 0.1, 4)


def test_overrides_are_the_differences_from_the_defaults():
    wd = other_than_the_default("weight_decay")
    training = runner.dataclasses.asdict(runner.TrainConfig(weight_decay=wd, devices="1", out="x", seed=1))
    changed = training | {"max_lr": 0.02, "epochs": 3, "removed_since": 1}  # a field an older model.json has
    assert runner.overrides_of(changed) == {"weight_decay": wd, "devices": "1"}


def test_the_recorded_papermill_command_sets_the_same_parameters(repo, tmp_path):
    # A string that papermill's -p would read as a number or a constant ("2024", "inf", "True") stays a string.
    parameters = {"DATA_DIR": "2024", "OUT": "inf", "LOG": "True", "NOTE": "None", "SMOKE": True, "MAX_LR": 0.01}
    parameters |= {"NAME": "wd 02", "TAGS": ["a", 1]}  # a plain string (a space in it) and a list
    parameters["OVERRIDES"] = {"devices": "1", "x": None}
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


def test_runs_table_sorts_the_overrides_and_names_the_finder_only_when_it_ran():
    """Two runs with the same changes read the same whatever the order of their --set; "(LR finder)" only for a run
    given no max LR, not for one recorded from a notebook executed by hand (no papermill parameters)."""
    by_hand = line_of(name="by-hand", status="ok", max_lr=0.01, overrides={"weight_decay": 0.2, "label_smoothing": 0.2})
    assert tables.run_changes(by_hand) == "label_smoothing=0.2, weight_decay=0.2, max LR 0.01"


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


def test_a_run_executes_the_notebook_in_its_directory_and_keeps_no_injected_cell(tmp_path, monkeypatch):
    """papermill runs "S12.ipynb" from the run's directory (so the line's paths are the committed run's), and the
    cell it injects, which would pin this machine's DATA_DIR on a Colab user, is gone from the shipped notebook."""
    seen = []

    def execute(notebook, output, parameters, **kwargs):
        seen.append((notebook, Path.cwd()))
        executed = nbformat.read(output, as_version=4)
        injected = nbformat.v4.new_code_cell("DATA_DIR = '/here'", metadata={"tags": ["injected-parameters"]})
        executed.cells.insert(1, injected)
        nbformat.write(executed, output)

    monkeypatch.setattr(runner.papermill, "execute_notebook", execute)
    assert runner.main(run_args(tmp_path)) == 0
    run_dir = tmp_path / "runs" / "x"
    assert seen == [(runner.NOTEBOOK, run_dir.resolve())]
    cells = nbformat.read(run_dir / runner.NOTEBOOK, as_version=4).cells
    assert cells and not [c for c in cells if "injected-parameters" in c.metadata.get("tags", [])]


def test_an_interrupted_run_is_recorded_and_leaves_papermills_logger_as_it_was(tmp_path, monkeypatch):
    """Ctrl-C (or any error outside the notebook's cells) still records the run's line, and the log file that
    papermill's logger wrote into is detached: a later run would otherwise log into the first one's file."""

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt("stopped")

    monkeypatch.setattr(runner.papermill, "execute_notebook", interrupt)
    logger = runner.logging.getLogger("papermill")
    monkeypatch.setattr(logger, "level", runner.logging.WARNING)  # as a caller may have set it
    before = (list(logger.handlers), logger.level)
    assert runner.main(run_args(tmp_path)) == 1
    line = json.loads((tmp_path / "results.jsonl").read_text())
    assert line["status"] == "failed" and line["error"] == "KeyboardInterrupt: stopped"
    assert (list(logger.handlers), logger.level) == before


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\rEpoch 0:  10%\rEpoch 0: 100%|done\n", "Epoch 0: 100%|done\n"),  # a bar's updates: its last state
        ("long line\rshort\n", "shortline\n"),  # a carriage return writes over, it does not erase
        # tqdm's nested bar: a line below, then ESC[A back up to the main bar
        ("\rTrain 50%\n\rVal 0%\x1b[A\n\rVal 100%\x1b[A\rTrain 100%", "Train 100%\nVal 100%"),
        ("\x1b[1mbold\x1b[0m plain\n", "bold plain\n"),
        ("\x1b[?25lhidden cursor\x1b[?25h\n", "hidden cursor\n"),  # tqdm hides the cursor while it draws
        ("ab\nxxxxx\x1b[Ayz", "ab   yz\nxxxxx"),  # up a line the column stays where it was
        ("a\n\x1b[A\x1b[Ab", "b\n"),  # not above the first line
        ("Epoch 0: 100%   \n", "Epoch 0: 100%\n"),  # the blanks that padded a shorter update
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
        output("stream", name="stdout", text="saved\n"),
    ]
    path = tmp_path / "n.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[injected, cell], metadata={"papermill": {"parameters": {}}}), path)
    runner.tidy(path)
    tidied = nbformat.read(path, as_version=4)
    assert [c.source for c in tidied.cells] == ["fit()"] and "papermill" in tidied.metadata
    kinds = [(o.output_type, o.get("text")) for o in tidied.cells[0].outputs]
    assert kinds == [("stream", "Epoch 0: 100%\n"), ("display_data", None), ("stream", "done\nsaved\n")]


def test_tidy_drops_printed_text_that_a_terminal_shows_as_blank(tmp_path):
    output = nbformat.v4.new_output
    cell = nbformat.v4.new_code_cell("fit()")
    cell.outputs = [output("stream", name="stderr", text="\r    \r\n"), output("display_data", data={})]
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), tmp_path / "n.ipynb")
    runner.tidy(tmp_path / "n.ipynb")
    outputs = nbformat.read(tmp_path / "n.ipynb", as_version=4).cells[0].outputs
    assert [o.output_type for o in outputs] == ["display_data"]


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


@pytest.mark.parametrize("defect", ["failed", "unfinished", "an artifact missing"])
def test_ship_refuses_a_run_that_failed_did_not_finish_or_lacks_an_artifact(tmp_path, defect):
    """Not even --force ships a notebook that stopped (its figures would be missing, or the last run's) or a run
    without one of the artifacts (the committed run's file would stay beside the new run's)."""
    committed = finished_run(tmp_path / "repo", {"accuracy": 0.91})
    run_dir = finished_run(tmp_path / "runs" / "candidate", {"accuracy": 0.99})
    notebook = json.loads((run_dir / runner.NOTEBOOK).read_text())
    meta = notebook["metadata"]["papermill"]
    if defect == "failed":
        meta["exception"] = True
    elif defect == "unfinished":
        del meta["end_time"]
    else:
        (run_dir / "logs" / "hparams.yaml").unlink()
    (run_dir / runner.NOTEBOOK).write_text(json.dumps(notebook))
    with pytest.raises(SystemExit, match="nothing copied"):
        runner.check_shippable(run_dir, committed, force=True)


def digests(root: Path) -> dict[str, str]:
    """Every file below `root`, by its path there, with the SHA-1 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def test_ship_leaves_exactly_the_runs_artifacts_and_the_apps_screenshot(tmp_path):
    """After `ship` the artifacts are the run's, byte for byte: a mistake or an example image of the replaced run
    that the new run did not write again is removed (the README's table of mistakes would show it), and what is not
    an artifact (the app's screenshot) stays."""
    committed = finished_run(tmp_path / "repo", {"accuracy": 0.91})
    run_dir = finished_run(tmp_path / "runs" / "winner", {"accuracy": 0.92})
    mistakes = {committed: ["01_bird_as_frog_98pct", "02_dog_as_cat_97pct"], run_dir: ["01_cat_as_dog_99pct"]}
    for root, names in mistakes.items():
        for name in [*(f"misclassified_images/{m}.png" for m in names), "space_app/examples/cat.png"]:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).touch()
        for path in root.rglob("*"):
            if path.suffix in (".png", ".yaml", ".safetensors", ".npz"):
                path.write_text(f"{root.name}'s")
    (committed / "images" / "space_app.png").write_text("the app's screenshot")
    assert runner.main(["ship", "winner", "--runs-root", str(tmp_path / "runs"), "--repo", str(committed)]) == 0
    screenshot = hashlib.sha1(b"the app's screenshot").hexdigest()
    assert digests(committed) == digests(run_dir) | {"images/space_app.png": screenshot}


def test_the_artifacts_are_the_present_files_and_the_pngs_of_the_artifact_folders(tmp_path):
    for name in ("logs/metrics.csv", "misclassified_images/01_cat_as_dog_99pct.png", "misclassified_images/.DS_Store"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    assert runner.artifacts(tmp_path) == ["logs/metrics.csv", "misclassified_images/01_cat_as_dog_99pct.png"]


def test_the_artifacts_are_every_file_the_committed_run_wrote(repo):
    """`ship` copies and removes `artifacts`: each plot, mistake and log, and the app's weights, JSON, store and
    example images. One left out would ship the replaced run's file beside the new run's. Not the app's code, nor its
    screenshot (scripts/screenshot_app.py makes it)."""
    tracked = runner.git("ls-files", runner.NOTEBOOK, "images", "logs", "misclassified_images", "space_app", repo=repo)
    outputs = {
        name
        for name in tracked.split()
        if name != "images/space_app.png"
        and (not name.startswith("space_app/") or Path(name).suffix in (".safetensors", ".json", ".npz", ".png"))
    }
    assert set(runner.artifacts(repo)) == outputs


@pytest.mark.parametrize("changed", [("weight_decay", "label_smoothing"), (), "smoke"])
def test_ship_says_to_make_a_winners_overrides_the_defaults(tmp_path, capsys, changed):
    """A winner trained with OVERRIDES leaves TrainConfig's defaults another recipe than the shipped model's:
    Run all in Colab and the command line would train that other recipe. `ship` says so, with the overrides, and
    prints the steps that follow in the order that works (the tables, `stale`, the screenshot, git add, the tests)."""
    if changed == "smoke":  # the notebook's own SMOKE settings are not a recipe
        training, advice = {"per_class": 20, "lr_find_iters": 20, "epochs": 1}, None
    else:
        training = {name: other_than_the_default(name) for name in changed}
        advice = str(training) if training else None
    committed = finished_run(tmp_path / "repo", {"accuracy": 0.91})
    run_dir = finished_run(tmp_path / "runs" / "winner", {"accuracy": 0.92})
    model_json = run_dir / "space_app" / "model.json"
    model_json.write_text(json.dumps(json.loads(model_json.read_text()) | {"training": training}))
    args = ["ship", "winner", "--runs-root", str(tmp_path / "runs"), "--repo", str(committed)]
    assert runner.main(args) == 0
    out = capsys.readouterr().out
    if advice:
        assert f"OVERRIDES {advice}: make them TrainConfig's defaults" in out
    else:
        assert "OVERRIDES" not in out
    steps = ["scripts/readme_tables.py readme", "notebook_run.py stale", "scripts/screenshot_app.py", "git add -A"]
    at = [out.find(step) for step in [*steps, "python -m pytest", ".ci/run"]]
    assert -1 not in at and at == sorted(at), out


def git_repo(root: Path) -> Path:
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        runner.git(*command, repo=root)
    return root


def test_a_run_starts_from_the_code_without_the_committed_runs_outputs(tmp_path):
    """The run's copy holds the repository's files, a module not yet added too, but none of the committed run's
    artifacts (a mistake left in it would ship as the run's) nor ignored files; its notebook keeps its code, not its
    outputs or papermill's metadata (a failed run would show the committed run's figures)."""
    repo = finished_run(tmp_path / "repo", {"accuracy": 0.91})
    cell = nbformat.v4.new_code_cell("fit()", execution_count=3, outputs=[nbformat.v4.new_output("stream", text="90%")])
    silent = nbformat.v4.new_code_cell("x = 1", execution_count=4)  # no output, a count all the same
    nbformat.write(nbformat.v4.new_notebook(cells=[cell, silent], metadata={"papermill": {}}), repo / runner.NOTEBOOK)
    for name in ("misclassified_images/01_cat_as_dog_99pct.png", "space_app/examples/cat.png", "era_utils/model.py"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).touch()
    (repo / "images" / "space_app.png").touch()
    (repo / ".gitignore").write_text("checkpoints/\n")
    (repo / "era_utils" / "deleted.py").touch()
    git_repo(repo)
    (repo / "era_utils" / "deleted.py").unlink()  # tracked, gone from the working tree
    (repo / "era_utils" / "new.py").touch()
    (repo / "checkpoints").mkdir()
    (repo / "checkpoints" / "last.ckpt").touch()
    runner.copy_repository(repo, tmp_path / "run")
    copied = {".gitignore", runner.NOTEBOOK, "images/space_app.png", "era_utils/model.py", "era_utils/new.py"}
    assert set(digests(tmp_path / "run")) == copied
    notebook = nbformat.read(tmp_path / "run" / runner.NOTEBOOK, as_version=4)
    assert [(c.source, c.outputs, c.execution_count) for c in notebook.cells] == [
        ("fit()", [], None),
        ("x = 1", [], None),
    ]
    assert "papermill" not in notebook.metadata


def test_ship_names_the_files_that_changed_while_the_run_ran(tmp_path, capsys):
    """The run trained the code it copied at its start; a file changed since (someone else's commit, an edit of
    S12.py's code) is not what made the shipped outputs, and an S12.py changed that way fails the pairing test."""
    committed = finished_run(tmp_path / "repo", {"accuracy": 0.91})
    run_dir = finished_run(tmp_path / "runs" / "winner", {"accuracy": 0.92})
    for root in (committed, run_dir):
        for name in ("S12.py", "era_utils/lit_module.py", "era_utils/model.py"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text("as the run copied it\n")
    git_repo(committed)
    (committed / "era_utils" / "lit_module.py").write_text("changed while the run ran\n")
    for root, lines in ((run_dir, "{}\n"), (committed, "{}\n{}\n")):  # the run's own line, appended as it ended
        (root / "benchmarks" / "results").mkdir(parents=True)
        (root / "benchmarks" / "results" / "notebook_runs.jsonl").write_text(lines)
    args = ["ship", "winner", "--runs-root", str(tmp_path / "runs"), "--repo", str(committed)]
    assert runner.main(args) == 0
    out = capsys.readouterr().out
    assert "(its outputs are the old ones'): era_utils/lit_module.py\n" in out and "S12.py changed" not in out
    (committed / "S12.py").write_text("# %%\nprint('new code')\n")
    assert runner.main([*args, "--force"]) == 0  # the run is the committed model now
    out = capsys.readouterr().out
    assert "(its outputs are the old ones'): S12.py, era_utils/lit_module.py\n" in out
    assert "S12.py changed: its code cells must be the shipped S12.ipynb's" in out


def write_run_files(root: Path, metrics: dict, training: dict, duration: float, suggested: str, mistake: str) -> None:
    """The files a run's figures are read from: model.json, the log, the notebook (with its duration and the LR
    finder's printed suggestion) and one mistake."""
    (root / "space_app").mkdir(parents=True, exist_ok=True)
    (root / "space_app" / "model.json").write_text(json.dumps({"metrics": metrics, "training": training}))
    (root / "logs").mkdir(exist_ok=True)
    first, last = metrics["first_val"], metrics["accuracy"]
    (root / "logs" / "metrics.csv").write_text(
        f"epoch,step,train/acc,train/loss,val/acc,val/loss\n0,9,0.5,1.5,{first},1.2\n1,19,{metrics['train']},0.6,{last},0.7\n"
    )
    cell = nbformat.v4.new_code_cell("find()", outputs=[nbformat.v4.new_output("stream", text=suggested)])
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# S12\nThe committed run's outputs."), cell],
        metadata={"papermill": {"duration": duration}},
    )
    nbformat.write(notebook, root / "S12.ipynb")
    jupytext.write(notebook, root / "S12.py", fmt="py:percent")
    for old in (root / "misclassified_images").glob("*.png"):
        old.unlink()
    (root / "misclassified_images").mkdir(exist_ok=True)
    (root / "misclassified_images" / mistake).write_bytes(b"")


OLD_PROSE = """- **Test accuracy:** 90.60% single view
Lightning's table shows 0.9060; cats are the hardest class (82.3%).
| cat | 82.3% | 81.9% |
| committed-baseline | 90.60% | ok |
Training accuracy reaches 98.2% while validation stays at 90.6%, from 65.5% after the first epoch.
The run took 2 h 30 min; the finder suggests 6.0e-4. A mistake: bird → frog (98%).
Cross-entropy with label
smoothing {old_ls}. Accuracy 90.65% elsewhere, and 190.6 images/s.
Another model scores 82.3% on its data.
"""
OLD_LS = other_than_the_default("label_smoothing")  # the replaced run's; the new one's is TrainConfig's default


@pytest.fixture
def shipped(tmp_path) -> Path:
    """A repository whose commit holds the old run and whose working tree the new one, the prose not yet updated."""
    repo = tmp_path / "repo"
    defaults = runner.dataclasses.asdict(runner.TrainConfig())
    old_training = defaults | {"label_smoothing": OLD_LS, "out": "."}
    metrics = {"accuracy": 0.906, "per_class": {"cat": 0.823}, "first_val": 0.655, "train": 0.982}
    write_run_files(repo, metrics, old_training, 9022.0, "suggested: 6.010e-04;", "01_bird_as_frog_98pct.png")
    (repo / "README.md").write_text(OLD_PROSE.format(old_ls=OLD_LS))
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "benchmarks" / "results" / "notebook_runs.jsonl").write_text(json.dumps({"name": "committed-baseline"}))
    git_repo(repo)
    new_training = defaults | {"out": "."}
    metrics = {"accuracy": 0.912, "per_class": {"cat": 0.85}, "first_val": 0.6, "train": 0.97}
    write_run_files(repo, metrics, new_training, 5700.0, "suggested: 7.000e-04;", "01_dog_as_cat_96pct.png")
    return repo


def test_run_figures_of_a_run_under_an_hour_and_its_three_top_mistakes(tmp_path):
    """On a fast machine a run takes under an hour, which prose writes "42 min"; each of the three most confident
    mistakes is a figure prose may quote (the first with its confidence alone too)."""
    nbformat.write(nbformat.v4.new_notebook(metadata={"papermill": {"duration": 2520.0}}), tmp_path / runner.NOTEBOOK)
    ranks = ["01_bird_as_frog_98pct", "02_dog_as_cat_97pct", "03_ship_as_airplane_96pct", "04_cat_as_dog_95pct"]
    figures = runner.run_figures(runner.folder_reader(tmp_path), [f"{name}.png" for name in ranks])
    assert figures["the notebook's duration"] == ({"42 min"}, "")
    assert [figures.get(f"mistake #{rank}", (None,))[0] for rank in range(1, 5)] == [
        {"bird → frog (98%)", "98%"},
        {"dog → cat (97%)"},
        {"ship → airplane (96%)"},
        None,
    ]


def test_run_figures_of_the_log_and_the_duration_are_rounded_as_prose_writes_them(tmp_path):
    """The last validation accuracy (the test's may differ), the last training accuracy to a whole percent too, the
    duration to the nearest minute (99.8 min is "1 h 40 min"); a file that is not a ranked mistake is no mistake."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.csv").write_text(
        "epoch,step,train/acc,train/loss,val/acc,val/loss\n0,9,0.5,1.5,0.4,1.2\n1,19,0.9749,0.6,0.912,0.7\n"
    )
    nbformat.write(nbformat.v4.new_notebook(metadata={"papermill": {"duration": 5990.0}}), tmp_path / runner.NOTEBOOK)
    figures = runner.run_figures(runner.folder_reader(tmp_path), ["notes.png", "01_bird_as_frog_98pct.png"])
    assert figures["last val acc"] == ({"91.20", "91.2"}, "")
    assert figures["last train acc"] == ({"97.49", "97.5", "97%"}, "")
    assert figures["first val acc"] == ({"40.00", "40.0"}, "")
    assert figures["the notebook's duration"] == ({"1 h 40 min"}, "")
    assert figures["mistake #1"] == ({"bird → frog (98%)", "98%"}, "")


def test_run_figures_read_each_views_accuracy_and_class_accuracies(tmp_path):
    """The README quotes the flip TTA and flip + translation TTA accuracies too, overall and per class."""
    views = {"": 0.906, "_tta": 0.9119, "_tta_translate": 0.9151}
    metrics = {f"accuracy{v}": x for v, x in views.items()} | {f"per_class{v}": {"cat": x} for v, x in views.items()}
    (tmp_path / "space_app").mkdir()
    (tmp_path / "space_app" / "model.json").write_text(json.dumps({"metrics": metrics}))
    figures = runner.run_figures(runner.folder_reader(tmp_path), [])
    assert figures["accuracy, flip TTA"] == ({"91.19", "91.2", "0.9119"}, "")
    assert figures["accuracy, flip + translation TTA"] == ({"91.51", "91.5", "0.9151"}, "")
    assert [figures[f"cat, {view}"] for view in ("single view", "flip TTA", "flip + translation TTA")] == [
        ({"90.6%"}, "cat"),
        ({"91.2%"}, "cat"),
        ({"91.5%"}, "cat"),
    ]


@pytest.mark.parametrize(
    "log",
    [
        "epoch,step,train/acc,train/loss,val/acc,val/loss\nx,9,0.5,1.5,0.4,1.2\n",
        'epoch,step,val/loss\n0,9,"1.2\n',  # cut off inside a quoted field
        "no log\n",
    ],
    ids=["epoch-not-a-number", "cut-off", "no-epoch"],
)
def test_run_figures_pass_over_a_log_they_cannot_read(tmp_path, log):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.csv").write_text(log)
    assert runner.run_figures(runner.folder_reader(tmp_path), []) == {}


def test_stale_reads_the_replaced_run_at_the_commit_given_and_refuses_one_without_a_model(tmp_path):
    (tmp_path / "README.md").write_text("before the first run\n")
    git_repo(tmp_path)
    (tmp_path / "space_app").mkdir()
    (tmp_path / "space_app" / "model.json").write_text("{}")
    for command in (["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "y"]):
        runner.git(*command, repo=tmp_path)
    assert runner.git_reader(tmp_path, "HEAD")("space_app/model.json") == b"{}"
    assert runner.git_reader(tmp_path, "HEAD~1")("space_app/model.json") is None
    with pytest.raises(SystemExit, match="HEAD~1: no space_app/model.json at that commit"):
        runner.main(["stale", "--repo", str(tmp_path), "--since", "HEAD~1"])


@pytest.mark.parametrize(
    ("form", "text", "found"),
    [
        ("90.6", "90.6%", True),
        ("90.6", "90.6–90.7", True),
        ("bird → frog (98%)", "bird → frog (98%) first", True),
        ("90.6", "90.65", False),
        ("90.6", "190.6", False),
        ("98%", "90.98%", False),  # the decimals of another figure
    ],
)
def test_a_figure_is_quoted_only_as_a_figure_of_its_own(form, text, found):
    assert runner.quoted(form, text) is found


def test_stale_reads_both_readmes_and_the_notebooks_markdown(tmp_path):
    for name in ("README.md", "space_app/README.md", "S12.py"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("Single view: 90.60%.\n")
    found = runner.stale_figures(tmp_path, {"accuracy, single view": ({"90.60"}, "")}, {})
    assert set(found) == {"README.md:1", "space_app/README.md:1", "S12.py:1"}


def test_stale_finds_a_class_accuracy_where_a_sentence_begins_with_the_class(tmp_path):
    (tmp_path / "README.md").write_text("Cats are the hardest class (82.3%).\n")
    old = {"cat, single view": ({"82.3%"}, "cat")}
    assert runner.stale_figures(tmp_path, old, {}) == {"README.md:1": ["82.3% (cat, single view)"]}


def test_recipe_lines_name_a_changed_knobs_old_value_once_where_prose_wraps_it(tmp_path):
    """A phrase wrapped over two lines (comment lines too) counts once, at its first line, whatever its case; a knob
    whose value did not change is no stale line, nor are the last line of one file and the first of the next."""
    files = {
        "README.md": "weight decay 0.05, as before.\nThe loss uses\nlabel smoothing 0.1 now.\nand label smoothing\n",
        "space_app/README.md": "0.1 s per image. Label smoothing 0.1\n",
        "era_utils/train_config.py": "# the label\n# smoothing 0.1\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    old, new = {"weight_decay": 0.05, "label_smoothing": 0.1}, {"weight_decay": 0.05, "label_smoothing": 0.2}
    assert [line.split(": ")[0] for line in runner.recipe_lines(tmp_path, old, new)] == [
        "README.md:3",
        "space_app/README.md:1",
        "era_utils/train_config.py:1",
    ]


def test_stale_lists_each_line_that_quotes_the_replaced_run(shipped, capsys):
    """`stale` reads the replaced run's figures from git HEAD and names, file:line, the prose that still quotes
    them: accuracies in every spelling, a class's accuracy where the prose names the class, the log's first and last
    epochs, the run's duration, the LR finder's suggestion, the top mistake, and the old recipe's values (a phrase
    wrapped over two lines too); not the table of runs (each row stays true of its run), not the classes table
    (readme_tables rewrites it), not a figure that merely contains an old one, nor another model's figure."""
    assert runner.main(["stale", "--repo", str(shipped)]) == 1
    out = capsys.readouterr().out
    quoted = {line.split(": ")[0].strip() for line in out.splitlines() if line.startswith("  README.md:")}
    assert quoted == {f"README.md:{n}" for n in (1, 2, 5, 6, 7)}, out
    for figure in ("90.60 (accuracy, single view)", "0.9060 (accuracy, single view)", "82.3% (cat, single view)",
                   "98.2 (last train acc)", "65.5 (first val acc)", "2 h 30 min (the notebook's duration)",
                   "6.0e-4 (the LR finder's suggestion)", "bird → frog (98%) (mistake #1)",
                   f"README.md:7: label_smoothing {OLD_LS} -> {runner.TrainConfig().label_smoothing}"):  # fmt: skip
        assert figure in out
    assert "README.md:8" not in out and "README.md:9" not in out, "other figures, or another model's"
    assert "S12.py:" in out and "re-read" in out  # "The committed run's outputs." in the notebook's markdown


def test_mistakes_are_listed_in_rank_order_at_a_commit_and_in_the_working_tree(tmp_path):
    """`stale` takes the replaced run's mistakes from the commit and the new run's from the working tree, each most
    confident first: mistake #1 of one is compared with mistake #1 of the other."""
    (tmp_path / "misclassified_images").mkdir()
    for name in ("02_dog_as_cat_97pct.png", "01_bird_as_frog_98pct.png", "03_cat_as_dog_96pct.png"):
        (tmp_path / "misclassified_images" / name).touch()
    git_repo(tmp_path)
    (tmp_path / "misclassified_images" / "01_bird_as_frog_98pct.png").unlink()
    (tmp_path / "misclassified_images" / "Thumbs.db").touch()
    assert runner.mistakes_in(tmp_path, "HEAD") == [
        "01_bird_as_frog_98pct.png",
        "02_dog_as_cat_97pct.png",
        "03_cat_as_dog_96pct.png",
    ]
    assert runner.mistakes_in(tmp_path) == ["02_dog_as_cat_97pct.png", "03_cat_as_dog_96pct.png"]


def test_stale_passes_over_a_figure_the_new_run_has_too(tmp_path):
    """A figure both runs share (the same first epoch's accuracy) is still true of the shipped run: not stale."""
    (tmp_path / "README.md").write_text("Single view 90.60%.\nFrom 65.5% after the first epoch.\n")
    old = {"accuracy, single view": ({"90.60"}, ""), "first val acc": ({"65.5"}, "")}
    new = {"accuracy, single view": ({"91.20"}, ""), "first val acc": ({"65.5"}, "")}
    assert runner.stale_figures(tmp_path, old, new) == {"README.md:1": ["90.60 (accuracy, single view)"]}


def test_stale_is_clean_once_the_prose_is_the_new_runs(shipped, capsys):
    new = runner.TrainConfig().label_smoothing
    (shipped / "README.md").write_text(
        f"- **Test accuracy:** 91.20% single view\nCross-entropy, label smoothing {new}.\n"
    )
    assert runner.main(["stale", "--repo", str(shipped)]) == 0
    assert "nothing quotes the replaced run" in capsys.readouterr().out


def test_stale_says_when_the_defaults_or_the_notebooks_markdown_are_not_done(shipped, capsys):
    """TrainConfig's defaults left at the old recipe, and S12.py's markdown edited without the notebook's (the pairing
    test compares only code) are both to fix."""
    (shipped / "README.md").write_text("nothing\n")
    model = json.loads((shipped / "space_app" / "model.json").read_text())
    model["training"]["label_smoothing"] = OLD_LS  # a winner trained with OVERRIDES, the defaults not yet changed
    (shipped / "space_app" / "model.json").write_text(json.dumps(model))
    (shipped / "S12.py").write_text((shipped / "S12.py").read_text().replace("# The committed run", "# The new run"))
    assert runner.main(["stale", "--repo", str(shipped)]) == 1
    out = capsys.readouterr().out
    default = runner.TrainConfig().label_smoothing
    assert (
        "TrainConfig's defaults are not the shipped recipe" in out and f"label_smoothing: {default} -> {OLD_LS}" in out
    )
    assert "S12.ipynb's markdown differs from S12.py's in these cells" in out and "markdown cell 1" in out


@pytest.mark.parametrize("undone", ["markdown", "defaults"])
def test_stale_counts_the_notebooks_markdown_or_the_defaults_alone_as_to_fix(shipped, undone):
    (shipped / "README.md").write_text("nothing\n")
    model = json.loads((shipped / "space_app" / "model.json").read_text())
    if undone == "markdown":
        (shipped / "S12.py").write_text((shipped / "S12.py").read_text().replace("# The committed", "# The new"))
    else:
        model["training"]["label_smoothing"] = OLD_LS
        (shipped / "space_app" / "model.json").write_text(json.dumps(model))
    assert runner.stale_report(shipped, {}, model["training"]) is True


def test_stale_does_not_ask_to_re_read_a_line_it_lists_as_stale(shipped, capsys):
    (shipped / "README.md").write_text("The committed run scores 90.60%.\n")
    assert runner.stale_report(shipped, {"accuracy, single view": ({"90.60"}, "")}, {}) is True
    assert capsys.readouterr().out.count("README.md:1") == 1


def test_changed_since_run_is_the_code_edited_after_the_copy_not_the_executed_notebook(tmp_path):
    repo, run_dir = tmp_path / "repo", tmp_path / "run"
    for root, notebook in ((repo, "{}"), (run_dir, '{"executed": true}')):
        (root / "era_utils").mkdir(parents=True)
        (root / "era_utils" / "model.py").write_text("net\n")
        (root / runner.NOTEBOOK).write_text(notebook)
    git_repo(repo)
    (repo / "era_utils" / "added.py").write_text("new\n")  # no copy of it in the run to compare with
    assert runner.changed_since_run(run_dir, repo) == []
    (repo / "era_utils" / "model.py").write_text("edited\n")
    assert runner.changed_since_run(run_dir, repo) == ["era_utils/model.py"]


def test_markdown_mismatch_counts_a_cell_one_side_lacks_and_markdown_copies_nothing_then(tmp_path):
    """A markdown cell added to S12.py only is a mismatch; `markdown` copies by position, so with unequal counts it
    copies nothing rather than shift every cell after the new one."""
    assert runner.markdown_mismatch(tmp_path) == []  # no pair to compare
    cells = [nbformat.v4.new_markdown_cell("# S12"), nbformat.v4.new_code_cell("fit()")]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), tmp_path / runner.NOTEBOOK)
    pair = nbformat.v4.new_notebook(cells=[*cells, nbformat.v4.new_markdown_cell("New.")])
    jupytext.write(pair, tmp_path / runner.PAIR, fmt="py:percent")
    before = (tmp_path / runner.NOTEBOOK).read_bytes()
    assert runner.markdown_mismatch(tmp_path) == [2]
    with pytest.raises(SystemExit, match="nothing copied"):
        runner.main(["markdown", "--repo", str(tmp_path)])
    assert (tmp_path / runner.NOTEBOOK).read_bytes() == before


def test_markdown_copies_each_cell_into_the_markdown_cell_of_its_rank(tmp_path, capsys):
    """S12.py's n-th markdown cell goes into S12.ipynb's n-th markdown cell, whatever code cells come before it."""
    cells = [nbformat.v4.new_markdown_cell("# S12"), nbformat.v4.new_code_cell("fit()")]
    notebook = nbformat.v4.new_notebook(cells=[*cells, nbformat.v4.new_markdown_cell("Old figures.")])
    nbformat.write(notebook, tmp_path / runner.NOTEBOOK)
    notebook.cells[2].source = "New figures."
    jupytext.write(notebook, tmp_path / runner.PAIR, fmt="py:percent")
    assert runner.main(["markdown", "--repo", str(tmp_path)]) == 0
    assert "markdown cells 2 copied" in capsys.readouterr().out
    copied = nbformat.read(tmp_path / runner.NOTEBOOK, as_version=4)
    assert [c.source for c in copied.cells] == ["# S12", "fit()", "New figures."]


def test_markdown_copies_s12_py_prose_into_the_notebook_and_keeps_its_outputs_and_timings(repo, tmp_path, capsys):
    """After a ship the notebook's prose is edited in S12.py; `markdown` carries it into S12.ipynb by position and
    touches nothing else (jupytext --update would drop papermill's per-cell timings, which the prose quotes)."""
    for name in (runner.NOTEBOOK, runner.PAIR):
        shutil.copy2(repo / name, tmp_path / name)
    committed = (tmp_path / runner.NOTEBOOK).read_bytes()
    assert runner.main(["markdown", "--repo", str(tmp_path)]) == 0
    assert (tmp_path / runner.NOTEBOOK).read_bytes() == committed, "the committed pair is in step: nothing to write"
    pair = (tmp_path / runner.PAIR).read_text()
    (tmp_path / runner.PAIR).write_text(pair.replace("# # ", "# # Edited: ", 1))
    assert runner.main(["markdown", "--repo", str(tmp_path)]) == 0
    assert "markdown cells 1 copied" in capsys.readouterr().out
    before = nbformat.reads(committed.decode(), as_version=4)
    after = nbformat.read(tmp_path / runner.NOTEBOOK, as_version=4)
    assert after.cells[0].source.startswith("# Edited: ") and before.cells[0].source.startswith("# ")
    assert after.cells[1:] == before.cells[1:]
    assert after.cells[0].metadata == before.cells[0].metadata and after.metadata == before.metadata
    assert runner.markdown_mismatch(tmp_path) == []
