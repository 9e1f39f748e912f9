"""Both READMEs show the committed run: every table scripts/readme_tables.py makes from the committed artifacts
is in README.md as its `readme` subcommand would write it, and the accuracies the two READMEs quote in prose are
model.json's. A run shipped without its README update fails here."""

import json

import pytest
from app_helpers import load_file_module


@pytest.fixture(scope="module")
def tables(repo):
    return load_file_module(repo / "scripts", "readme_tables")


@pytest.fixture(scope="module")
def metrics(repo) -> dict:
    return json.loads((repo / "space_app" / "model.json").read_text())["metrics"]


@pytest.mark.parametrize("name", ["model", "epochs", "classes", "misclassified", "runs", "sweep"])
def test_readme_holds_the_table_made_from_the_committed_artifacts(repo, monkeypatch, tables, name):
    """The table as `python scripts/readme_tables.py readme` would write it: rows neither missing nor left over."""
    monkeypatch.chdir(repo)
    make, files = tables.README_TABLES[name]
    table = make(*files)
    assert table.count("\n") >= 2, table
    readme = (repo / "README.md").read_text()
    assert tables.replace_table(readme, table) == readme, (
        f"README.md's {name} table is not the committed files': run `python scripts/readme_tables.py readme`"
    )


def assert_quotes(text: str, expected: str, readme: str) -> None:
    """`expected` in `text`, else a message that says what to write and how to find the old figures."""
    assert expected in text, (
        f"{readme} lacks {expected!r} (space_app/model.json's figures); "
        "`python benchmarks/notebook_run.py stale` lists the lines that quote the replaced run's"
    )


def test_readme_quotes_the_committed_accuracies(repo, metrics):
    readme = (repo / "README.md").read_text()
    for key in ("accuracy", "accuracy_tta", "accuracy_tta_translate"):
        assert_quotes(readme, f"`{json.dumps({key: metrics[key]})[1:-1]}`", "README.md")
    headline = f"{metrics['accuracy']:.2%} single view, {metrics['accuracy_tta']:.2%} with flip TTA, "
    headline += f"{metrics['accuracy_tta_translate']:.2%} with flip + translation"
    assert_quotes(readme, f"- **Test accuracy:** {headline}", "README.md")
    anchor = next(line for line in readme.splitlines() if line.startswith("| **this repository, committed run** |"))
    assert_quotes(
        anchor,
        f"| **{metrics['accuracy']:.2%}** | **{metrics['accuracy_tta']:.2%}** (flip), "
        f"**{metrics['accuracy_tta_translate']:.2%}** (flip + translation) |",
        "README.md's anchor table",
    )


def test_space_readme_quotes_the_committed_accuracies(repo, metrics):
    readme = " ".join((repo / "space_app" / "README.md").read_text().split())
    n = f"{metrics['n']:,}".replace(",", " ")
    for expected in (
        f"**Test accuracy: {metrics['accuracy']:.1%}** on the {n} CIFAR-10 test images",
        f"({metrics['accuracy_tta']:.1%} with horizontal-flip test-time augmentation",
        f"; {metrics['accuracy_tta_translate']:.1%} with six views",
    ):
        assert_quotes(readme, expected, "space_app/README.md")
