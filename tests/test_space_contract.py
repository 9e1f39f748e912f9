"""What the training package hands the Space and what the Space must do with it: the normalization statistics
(the same in era_utils.config, the README and the committed model.json), an exported model giving the Space the
probabilities the training preprocessing gives, a training run's export served with `--model-dir`, and heatmaps
drawn where the mask is, not transposed or flipped.

Runs without the committed weights: the model is a small seeded export into a temporary copy of the Space.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
import torch
from app_helpers import APP_DIR, REPO, blocks_by_id, copy_app
from PIL import Image

from era_utils import transforms
from era_utils.config import CIFAR_MEAN, CIFAR_STD, NUM_CLASSES
from era_utils.export import export_model
from era_utils.model import CustomResNet

sys.path.insert(0, str(APP_DIR))
import app as space  # noqa: E402  (space_app/ is a folder of scripts, not a package)
import inference  # noqa: E402


def readme_statistics() -> tuple[list[float], list[float]]:
    """The mean and std the README states, e.g. "the CIFAR-10 mean (0.4914, 0.4822, 0.4465) and std (...)"."""
    text = (REPO / "README.md").read_text()
    found = re.search(r"CIFAR-10 mean \(([^)]*)\)\s+and std \(([^)]*)\)", text)
    assert found, "README.md no longer states the normalization's mean and std"
    mean, std = ([float(v) for v in group.split(",")] for group in found.groups())
    assert len(mean) == len(std) == 3
    return mean, std


def test_normalization_statistics_agree_in_config_readme_and_committed_model_json() -> None:
    """A typo'd or borrowed statistic (ImageNet's std 0.229, 0.224, 0.225) in config.py would train and export with
    values the README and the Space's committed model.json do not state."""
    mean, std = readme_statistics()
    assert list(CIFAR_MEAN) == mean
    assert list(CIFAR_STD) == std
    committed = json.loads((APP_DIR / "model.json").read_text())
    assert committed["mean"] == mean
    assert committed["std"] == std


def spread_out(net: CustomResNet, batch: torch.Tensor) -> CustomResNet:
    """`net` with its last layer set so that the images of `batch` get clearly different answers: a freshly
    initialised network gives nearly the same probabilities to every image, so a change of their normalization
    would move them by less than any tolerance."""
    with torch.no_grad():
        features = torch.flatten(net.pool(net.layer3(net.layer2(net.layer1(net.prep(batch))))), 1)
        weight = torch.randn(NUM_CLASSES, features.shape[1]) / (features.std(0) + 1e-6) * 3 / features.shape[1] ** 0.5
        net.fc.weight.copy_(weight)
        net.fc.bias.copy_(-weight @ features.mean(0))
    return net


def test_exported_model_gives_the_space_the_probabilities_of_the_training_preprocessing(tmp_path: Path) -> None:
    """A model.json with mean and std swapped (or any statistic other than training's) would make the Space feed the
    network differently normalized images: its probabilities would differ from softmax(net(eval_transforms(x)))."""
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    images[0] = (255, 0, 0)  # saturated colours, where the per-channel statistics matter most
    images[1] = (0, 0, 255)
    transform = transforms.eval_transforms()
    batch = torch.stack([transform(image=image)["image"] for image in images])
    torch.manual_seed(0)
    net = spread_out(CustomResNet(NUM_CLASSES, logit_scale=1.0).eval(), batch)
    with torch.no_grad():
        expected = net(batch).softmax(1).numpy()
    assert np.abs(expected - expected.mean(0)).max() > 0.1  # the images get different answers: the check has teeth

    app = copy_app(tmp_path / "space_app")
    export_model(net, app)
    clf = inference.Classifier(app)
    assert clf.config["mean"] == list(CIFAR_MEAN)
    assert clf.config["std"] == list(CIFAR_STD)
    for image in images:  # a 32x32 image reaches the network unchanged
        assert np.array_equal(clf.model_input(Image.fromarray(image)), image)
    np.testing.assert_allclose(clf.probabilities(images), expected, atol=1e-5)


def serve(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> SimpleNamespace:
    """What `python app.py ARGV` would serve: the app it built and the launch options, without a server."""
    served = SimpleNamespace()

    def build(app: space.SpaceApp) -> SimpleNamespace:
        served.app = app
        return SimpleNamespace(launch=lambda **options: setattr(served, "options", options))

    monkeypatch.setattr(space.SpaceApp, "build", build)
    space.main(argv)
    return served


def test_model_dir_serves_the_model_a_training_run_exported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--model-dir OUT` serves OUT's weights (not the committed ones), its examples allowed; without it, the app's."""
    run = tmp_path / "run"
    torch.manual_seed(0)
    export_model(CustomResNet(NUM_CLASSES).eval(), run)
    exported_sha = json.loads((run / "model.json").read_text())["sha256"]
    monkeypatch.chdir(tmp_path)
    served = serve(monkeypatch, ["--model-dir", "run"])  # relative, as typed
    assert served.app.clf.config["sha256"] == exported_sha
    assert served.app.app_dir == run and served.options["allowed_paths"] == [str(run / "examples")]
    committed = serve(monkeypatch, [])
    assert committed.app.clf.config["sha256"] == json.loads((APP_DIR / "model.json").read_text())["sha256"]
    assert committed.app.clf.config["sha256"] != exported_sha
    assert committed.options["allowed_paths"] == [str(APP_DIR / "examples")]


@pytest.mark.parametrize("damage", ["no model.json", "bad model.json"])
def test_model_dir_without_a_loadable_model_ends_in_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, damage: str
) -> None:
    """A notebook run's OUT instead of OUT/space_app, or a damaged model.json: one line saying which folder is
    wanted and exit code 2, not a traceback."""
    run = tmp_path / "run"
    if damage == "bad model.json":
        export_model(CustomResNet(NUM_CLASSES).eval(), run)
        (run / "model.json").write_text("{not json")
    with pytest.raises(SystemExit) as exit_info:
        serve(monkeypatch, ["--model-dir", str(run)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith(f"error: cannot serve the model in {run}: ") and message.count("\n") == 1
    assert "model.json" in message and "OUT/space_app" in message


@pytest.mark.parametrize("stored", [0, 1, 3])
def test_an_export_with_few_or_no_stored_mistakes_builds_the_page(tmp_path: Path, stored: int) -> None:
    """An export without misclassified.npz (or with one or a few mistakes): the page builds, the mistakes' checkbox
    is enabled only with a mistake to show, and the count goes up to the number stored."""
    run = tmp_path / "run"
    export_model(CustomResNet(NUM_CLASSES).eval(), run)
    if stored:
        with np.load(APP_DIR / "misclassified.npz", allow_pickle=False) as data:
            np.savez(
                run / "misclassified.npz", **{name: data[name][:stored] for name in data.files if name != "classes"}
            )
    app = space.SpaceApp(run)
    page = app.build()
    show, count = blocks_by_id(page, gr.Checkbox)["show-mistakes"], blocks_by_id(page, gr.Slider)["mistake-count"]
    assert show.interactive == (stored > 0)
    assert count.interactive == (stored > 1) and count.value == max(stored, 1)
    if stored > 1:
        assert count.maximum == stored
    assert len(app.misclassified(True, max(stored, 1), False, next(iter(app.clf.layers)), 0.5)) == stored


def test_heatmap_overlay_is_hot_where_the_mask_is_and_cold_elsewhere() -> None:
    """A transposed (mask.T) or flipped (mask[::-1]) heatmap would light up the wrong corner: with the mask's top-right
    block at 1, that block must be JET's red and the rest (e.g. the bottom-left block) its blue."""
    photo = np.full((32, 32, 3), 128, dtype=np.uint8)
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[:8, 24:] = 1.0  # rows 0-7, columns 24-31: the top-right corner
    out = inference.overlay(photo, mask, 1.0).astype(float)
    s = inference.DISPLAY_SCALE
    assert out.shape == (32 * s, 32 * s, 3)
    # Inner parts of the blocks, away from the bilinear smoothing at the mask's edge.
    top_right = out[: 6 * s, 26 * s :]
    bottom_left = out[26 * s :, : 6 * s]
    top_left = out[: 6 * s, : 6 * s]
    bottom_right = out[26 * s :, 26 * s :]
    red, blue = 0, 2
    assert top_right[..., red].mean() > 100 and top_right[..., blue].mean() < 30, "the mask's block is not red-hot"
    for name, block in (("bottom-left", bottom_left), ("top-left", top_left), ("bottom-right", bottom_right)):
        assert block[..., blue].mean() > 100 and block[..., red].mean() < 30, f"the {name} block is not cold blue"
    assert top_right[..., red].mean() > bottom_left[..., red].mean() + 100
