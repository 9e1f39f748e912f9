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


def test_readme_quotes_the_committed_accuracies(repo, metrics):
    readme = (repo / "README.md").read_text()
    for key in ("accuracy", "accuracy_tta", "accuracy_tta_translate"):
        assert f"`{json.dumps({key: metrics[key]})[1:-1]}`" in readme, key
    headline = f"{metrics['accuracy']:.2%} single view, {metrics['accuracy_tta']:.2%} with flip TTA, "
    assert f"- **Test accuracy:** {headline}{metrics['accuracy_tta_translate']:.2%} with flip + translation" in readme
    anchor = next(line for line in readme.splitlines() if line.startswith("| **this repository, committed run** |"))
    assert anchor.split(" | ")[1:3] == [
        f"**{metrics['accuracy']:.2%}**",
        f"**{metrics['accuracy_tta']:.2%}** (flip), **{metrics['accuracy_tta_translate']:.2%}** (flip + translation)",
    ]


def test_space_readme_quotes_the_committed_accuracies(repo, metrics):
    readme = " ".join((repo / "space_app" / "README.md").read_text().split())
    assert (
        f"**Test accuracy: {metrics['accuracy']:.1%}** on the {metrics['n']:,} CIFAR-10 test images".replace(",", " ")
        in readme
    )
    assert f"({metrics['accuracy_tta']:.1%} with horizontal-flip test-time augmentation" in readme
    assert f"; {metrics['accuracy_tta_translate']:.1%} with six views" in readme
