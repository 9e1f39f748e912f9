"""scripts/readme_tables.py's command line: help, one-line usage errors for a missing or broken file, a table; and
what the classes, epochs and misclassified tables show, from made-up inputs. The script runs as a subprocess where
its exit matters (each run imports torch, a few seconds); the other cases call it in this process."""

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from app_helpers import load_file_module
from torch import nn

from era_utils.config import CLASS_NAMES

SUBCOMMANDS = ["model", "epochs", "classes", "misclassified", "sweep", "runs"]


def readme_tables(repo, *args: str) -> subprocess.CompletedProcess:
    """The script run from the repository's root, importing era_utils from it rather than any installed copy."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(repo / "scripts" / "readme_tables.py"), *args]
    return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=120)


def assert_usage_error(returncode: int, stderr: str, *words: str) -> None:
    """Exit code 2 and one `error:` line on stderr that has all of `words`, without a traceback."""
    assert returncode == 2, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and all(word in errors[0] for word in words), stderr


def test_help_lists_every_subcommand(repo):
    proc = readme_tables(repo, "--help")
    assert proc.returncode == 0, proc.stderr
    assert all(name in proc.stdout for name in SUBCOMMANDS)


def test_a_missing_file_argument_is_a_usage_error(repo):
    proc = readme_tables(repo, "classes")
    assert_usage_error(proc.returncode, proc.stderr, "required", "EVAL.json")


def test_a_file_that_does_not_exist_is_named(repo, tmp_path):
    missing = str(tmp_path / "missing.json")
    proc = readme_tables(repo, "classes", missing)
    assert_usage_error(proc.returncode, proc.stderr, f"{missing}: No such file or directory")


def test_a_file_that_is_not_json_is_named(repo, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"per_class": ')
    proc = readme_tables(repo, "classes", str(broken))
    assert_usage_error(proc.returncode, proc.stderr, str(broken), "not valid JSON")


def test_classes_prints_a_row_for_each_class(repo):
    proc = readme_tables(repo, "classes", "space_app/model.json")
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.splitlines()
    assert rows[0].startswith("| class |") and rows[1].startswith("|---|")
    assert [row.split(" | ")[0] for row in rows[2:-1]] == [f"| {name}" for name in CLASS_NAMES]
    assert rows[-1].startswith("| **all ")


@pytest.fixture(scope="module")
def main(repo):
    return load_file_module(repo / "scripts", "readme_tables").main


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], ["required", "TABLE"]),
        (["bogus"], ["invalid choice", "bogus"]),
        (["sweep"], ["required", "RESULTS.jsonl"]),
        (["runs"], ["required", "RESULTS.jsonl"]),
        (["runs", "benchmarks/results/hparam_sweep_6ep.jsonl"], ["hparam_sweep_6ep.jsonl", "no 'name' field"]),
    ],
    ids=["no subcommand", "unknown subcommand", "sweep without file", "runs without file", "runs of a sweep"],
)
def test_a_bad_command_line_is_a_usage_error(main, repo, monkeypatch, capsys, args, words):
    monkeypatch.chdir(repo)
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert_usage_error(exited.value.code, capsys.readouterr().err, *words)


@pytest.mark.parametrize(
    ("subcommand", "words"),
    [("epochs", ["logs/metrics.csv", "No such file"]), ("misclassified", ["misclassified_images", "no exported"])],
)
def test_tables_of_default_paths_run_from_another_folder_say_what_is_missing(
    main, tmp_path, monkeypatch, capsys, subcommand, words
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main([subcommand])
    assert_usage_error(exited.value.code, capsys.readouterr().err, *words)


def test_a_default_file_missing_a_column_is_raised_not_blamed_on_a_file_argument(main, tmp_path, monkeypatch, capsys):
    """`epochs` is given no file: its log lacking a column is a bug to show with its traceback, not `None: no ...`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.csv").write_text("step,train/loss\n9,1.5\n")
    with pytest.raises(KeyError, match="epoch"):
        main(["epochs"])
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("subcommand", ["sweep", "runs"])
def test_a_jsonl_file_error_names_its_line(main, tmp_path, capsys, subcommand):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"variant": "a"}\n  \nnot json\n')  # a line of spaces is blank too
    with pytest.raises(SystemExit) as exited:
        main([subcommand, str(broken)])
    err = capsys.readouterr().err
    assert_usage_error(exited.value.code, err, str(broken), "not valid JSON", "line 3")
    assert f" {subcommand} [-h] RESULTS.jsonl" in err  # the subcommand's usage, not the script's
    assert err.endswith(": line 3: Expecting value\n")  # the file's line, not json's "line 1 column 1" within it


@pytest.mark.parametrize("subcommand", SUBCOMMANDS)
def test_each_subcommand_has_its_help(main, capsys, subcommand):
    with pytest.raises(SystemExit) as exited:
        main([subcommand, "--help"])
    assert exited.value.code == 0
    assert f" {subcommand} [-h]" in capsys.readouterr().out.splitlines()[0]  # its own usage line


@pytest.fixture(scope="module")
def tables(repo):
    return load_file_module(repo / "scripts", "readme_tables")


def test_classes_table_puts_each_view_under_its_own_header(tables, tmp_path):
    """Each view's per-class and overall accuracy in its column: single view, flip TTA, flip + translation TTA."""
    report = {"n": 10_000, "accuracy": 0.9012, "accuracy_tta": 0.9123, "accuracy_tta_translate": 0.9234}
    for view, base in (("", 0.50), ("_tta", 0.60), ("_tta_translate", 0.70)):
        report[f"per_class{view}"] = {name: base + c / 100 for c, name in enumerate(CLASS_NAMES)}
    (tmp_path / "eval.json").write_text(json.dumps(report))
    rows = tables.classes_table(str(tmp_path / "eval.json")).splitlines()
    assert rows[0] == "| class | single view | flip TTA | flip + translation TTA |"
    assert rows[2 + 3] == "| cat | 53.0% | 63.0% | 73.0% |"
    assert rows[-1] == "| **all 10,000** | **90.12%** | **91.23%** | **92.34%** |"


def test_epochs_table_shows_each_epochs_train_and_val_figures_and_lr(tables, tmp_path):
    rows = [
        {"step": 9, "lr-AdamW/pg1": 0.0004},
        {"epoch": 0, "step": 9, "val/loss": 1.5, "val/acc": 0.4567},
        {"epoch": 0, "step": 9, "train/loss": 1.8, "train/acc": 0.3456},
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "metrics.csv", index=False)
    lines = tables.epochs_table(str(tmp_path / "metrics.csv")).splitlines()
    assert lines[0] == "| epoch | train loss | train acc | val loss | val acc | LR |"
    assert lines[2:] == ["| 1 | 1.8000 | 34.56% | 1.5000 | 45.67% | 4.00e-04 |"]
    pd.DataFrame(rows[1:]).to_csv(tmp_path / "metrics.csv", index=False)  # a smoke run logs no LR
    assert tables.epochs_table(str(tmp_path / "metrics.csv")).splitlines()[2:] == [
        "| 1 | 1.8000 | 34.56% | 1.5000 | 45.67% | — |"
    ]


def test_misclassified_table_shows_the_ten_most_confident_mistakes_in_rank_order(tables, tmp_path):
    """The first ten of the exported files by rank (most confident first), each captioned true → predicted."""
    for rank in range(1, 13):
        (tmp_path / f"{rank:02d}_cat_as_dog_{100 - rank}pct.png").write_bytes(b"")
    lines = tables.misclassified_table(str(tmp_path)).splitlines()
    captions = lines[3].strip("| ").split(" | ")
    assert captions == [f"cat → dog ({100 - rank}%)" for rank in range(1, 11)]
    assert lines[2].startswith(f"| ![cat → dog (99%)]({tmp_path}/01_cat_as_dog_99pct.png) |")


def test_misclassified_table_shows_the_exported_mistakes_only(tables, tmp_path):
    """Fewer than ten mistakes beside another PNG (a grid, say): a column for each mistake, none for the other file."""
    for name in ("01_cat_as_dog_90pct.png", "02_ship_as_airplane_80pct.png", "grid.png"):
        (tmp_path / name).write_bytes(b"")
    lines = tables.misclassified_table(str(tmp_path)).splitlines()
    assert lines[0] == "| 1 | 2 |" and lines[3] == "| cat → dog (90%) | ship → airplane (80%) |"


@pytest.fixture
def repo_copy(repo, tmp_path):
    """The README and the committed files its tables are made from, in a folder of their own."""
    for path in (
        "README.md",
        "logs/metrics.csv",
        "space_app/model.json",
        "misclassified_images",
        "benchmarks/results/notebook_runs.jsonl",
        "benchmarks/results/hparam_sweep_6ep.jsonl",
    ):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (repo / path).is_dir() else shutil.copy
        copy(repo / path, tmp_path / path)
    return tmp_path


def test_readme_rewrites_stale_tables_and_nothing_else(main, tables, repo_copy, monkeypatch, capsys):
    """A row missing, a figure changed, a stale row left over: `--check` names the tables and changes nothing;
    without it the README comes back exactly as committed."""
    monkeypatch.chdir(repo_copy)
    committed = (repo_copy / "README.md").read_text()
    epoch_rows = tables.epochs_table("logs/metrics.csv").splitlines()[2:]  # as many as the committed run has
    stale = committed.replace(epoch_rows[0] + "\n", "").replace(epoch_rows[-1], epoch_rows[-1].replace("|", "| 1", 2))
    runs_row = next(line for line in committed.splitlines() if line.startswith("| committed-baseline |"))
    stale = stale.replace(runs_row, runs_row + "\n" + runs_row.replace("committed-baseline", "an-old-run"))
    (repo_copy / "README.md").write_text(stale)
    with pytest.raises(SystemExit) as exited:
        main(["readme", "--check"])
    assert exited.value.code == 1
    assert "epochs, runs differ" in capsys.readouterr().out
    assert (repo_copy / "README.md").read_text() == stale
    with pytest.raises(SystemExit) as exited:
        main(["readme"])
    assert exited.value.code == 0
    assert (repo_copy / "README.md").read_text() == committed


def test_readme_without_a_table_is_a_usage_error_and_left_alone(main, repo_copy, monkeypatch, capsys):
    monkeypatch.chdir(repo_copy)
    readme = (repo_copy / "README.md").read_text().replace("| class | single view |", "| class | one view |")
    (repo_copy / "README.md").write_text(readme)
    with pytest.raises(SystemExit) as exited:
        main(["readme"])
    err = capsys.readouterr().err
    assert_usage_error(exited.value.code, err, "left as it was", "no table with the header '| class | single view |")
    assert (repo_copy / "README.md").read_text() == readme


def test_readme_check_of_an_up_to_date_readme_says_so_and_exits_0(main, repo_copy, monkeypatch, capsys):
    monkeypatch.chdir(repo_copy)
    with pytest.raises(SystemExit) as exited:
        main(["readme", "--check"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == "README.md: every table matches the committed files\n"


def test_readme_with_a_field_missing_from_model_json_is_a_usage_error_and_left_alone(
    main, repo_copy, monkeypatch, capsys
):
    monkeypatch.chdir(repo_copy)
    model = json.loads((repo_copy / "space_app" / "model.json").read_text())
    del model["metrics"]["per_class_tta"]
    (repo_copy / "space_app" / "model.json").write_text(json.dumps(model))
    readme = (repo_copy / "README.md").read_text().replace("| 1 |", "| one |", 1)  # a table to rewrite
    (repo_copy / "README.md").write_text(readme)
    with pytest.raises(SystemExit) as exited:
        main(["readme"])
    assert_usage_error(exited.value.code, capsys.readouterr().err, "left as it was", "'per_class_tta'")
    assert (repo_copy / "README.md").read_text() == readme


def test_replace_table_replaces_the_rows_up_to_the_first_line_that_is_not_one(tables):
    """A table ends at its last `|` line: the text after it stays, and a table that ends the text is replaced too."""
    table = "| a | b |\n|---|---|\n| 1 | 2 |"
    text = "# Title\n| a | b |\n|---|---|\n| 0 | 0 |\n| 9 | 9 |\nNext paragraph.\n\n| c |\n|---|\n| 3 |"
    assert tables.replace_table(text, table) == f"# Title\n{table}\nNext paragraph.\n\n| c |\n|---|\n| 3 |"
    assert tables.replace_table("# Title\n| a | b |\n|---|---|", table) == f"# Title\n{table}"


def test_receptive_fields_grow_by_each_kernel_times_the_strides_before_it(tables):
    """3×3 convolutions add 2 pixels, times 2 after a 2×2 max pool; a block sees what its last layer sees, and
    layer "1" is not layer "10"."""
    layers = [nn.Conv2d(1, 1, 3), nn.MaxPool2d(2), *(nn.Conv2d(1, 1, 3) for _ in range(10)), nn.ReLU()]
    net = nn.Sequential(nn.Sequential(*layers[:2]), *layers[2:])
    rf = tables.receptive_fields(net)
    assert (rf["0.0"], rf["0.1"], rf["0"], rf["1"], rf["2"], rf["10"], rf["11"]) == (3, 4, 4, 8, 12, 44, 44)


@pytest.mark.parametrize(("value", "fmt", "shown"), [(None, "{:.2%}", "—"), (0.0, "{:.2%}", "0.00%"), (0, "{}", "0")])
def test_a_cell_is_a_dash_only_for_an_unknown_value_not_for_a_zero(tables, value, fmt, shown):
    assert tables.cell(value, fmt) == shown


@pytest.mark.parametrize(
    ("run", "changes"),
    [
        # a failed smoke run: what it was asked, from its parameters; the finder's long LR in short
        (
            {"parameters": {"SMOKE": True, "OVERRIDES": {"b": 1, "a": 2}, "MAX_LR": 0.05}},
            "smoke, a=2, b=1, max LR 0.05",
        ),
        (
            {"max_lr": 0.0031622776601683794, "overrides": {}, "parameters": {"MAX_LR": None}},
            "max LR 0.00316228 (LR finder)",
        ),
        # --set epochs=2 has a column of its own: the recorded overrides leave it out, even when empty
        ({"max_lr": 0.01, "overrides": {}, "parameters": {"MAX_LR": 0.01, "OVERRIDES": {"epochs": 2}}}, "max LR 0.01"),
    ],
    ids=["failed smoke run", "LR finder", "recorded overrides"],
)
def test_run_changes_names_what_a_run_changed_from_the_recipe(tables, run, changes):
    assert tables.run_changes(run) == changes


def test_readme_run_from_another_folder_is_a_usage_error(main, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["readme"])
    assert_usage_error(exited.value.code, capsys.readouterr().err, "left as it was", "README.md")
