"""The notebook stays paired with its script and runs end to end in smoke mode (as CI runs it)."""

import json
from pathlib import Path

import jupytext
import papermill

# What a training run writes: figures, weights, stores, checkpoints, CSV logs, downloads.
ARTIFACT_SUFFIXES = {".png", ".safetensors", ".npz", ".ckpt", ".csv", ".gz", ".ipynb"}


def _code_cells(notebook) -> list[str]:
    """Code cells, without the cell papermill injects to record the parameters of the committed run."""
    return [
        c.source.strip()
        for c in notebook.cells
        if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])
    ]


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


def test_notebook_runs_in_smoke_mode_without_touching_the_repository(repo, image_folder, tmp_path):
    out = tmp_path / "out"
    before = artifacts(repo)
    papermill.execute_notebook(
        str(repo / "S12.ipynb"),
        str(tmp_path / "executed.ipynb"),
        parameters={
            "SMOKE": True,
            "OUT": str(out),
            "DATA_DIR": str(image_folder),
            # One CPU process, as in the other training tests: "auto" would mean GPU or DDP on some runners.
            "OVERRIDES": {"label_smoothing": 0.2, "accelerator": "cpu", "devices": "1"},
        },
        cwd=str(repo),
        progress_bar=False,
    )
    executed = json.loads((tmp_path / "executed.ipynb").read_text())
    outputs = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    shown = "".join("".join(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "label_smoothing=0.2" in shown, "OVERRIDES did not reach the TrainConfig the notebook shows"
    for name in ("augmented_samples", "lr_finder", "training_curves", "confusion_matrix", "gradcam"):
        assert (out / "images" / f"{name}.png").is_file()
    assert (out / "space_app" / "model.safetensors").is_file() and (out / "space_app" / "model.json").is_file()
    after = artifacts(repo)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the notebook wrote into the repository: {changed}"
