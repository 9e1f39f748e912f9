"""The notebook stays paired with its script and runs end to end in smoke mode (as CI runs it)."""

import json

import jupytext
import papermill


def _code_cells(notebook) -> list[str]:
    """Code cells, without the cell papermill injects to record the parameters of the committed run."""
    return [
        c.source.strip()
        for c in notebook.cells
        if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])
    ]


def test_notebook_and_its_script_hold_the_same_code(repo):
    assert _code_cells(jupytext.read(repo / "S12.ipynb")) == _code_cells(jupytext.read(repo / "S12.py"))


def test_notebook_runs_in_smoke_mode_without_touching_the_repository(repo, image_folder, tmp_path):
    out = tmp_path / "out"
    papermill.execute_notebook(
        str(repo / "S12.ipynb"),
        str(tmp_path / "executed.ipynb"),
        parameters={
            "SMOKE": True,
            "OUT": str(out),
            "DATA_DIR": str(image_folder),
            "OVERRIDES": {"label_smoothing": 0.2},
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
