"""model.json's metrics: per-class accuracy and confusion counts, written by the training export and
refreshed from existing weights by `python -m era_utils.evaluate --write-metrics`."""

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from era_utils.artifacts import export_artifacts, save_examples
from era_utils.config import CLASS_NAMES, NUM_CLASSES
from era_utils.data import CIFAR10DataModule
from era_utils.evaluate import Predictions, confusion_counts
from era_utils.evaluate import main as evaluate_main
from era_utils.export import CONFIG_NAME, WEIGHTS_NAME, export_model, load_model, sha256_of, write_metrics
from era_utils.model import CustomResNet
from era_utils.train import build_datamodule
from era_utils.train_config import TrainConfig

VIEWS = ("", "_tta", "_tta_translate")
METRIC_KEYS = {"n", "confusion"} | {f"{kind}{view}" for kind in ("accuracy", "per_class") for view in VIEWS}


def random_predictions(labels: np.ndarray, seed: int = 0) -> Predictions:
    """Three unrelated random views (plain, flip TTA, flip + translation TTA), each right on about half."""
    rng = np.random.default_rng(seed)
    views = []
    for _ in VIEWS:
        probs = rng.dirichlet(np.ones(NUM_CLASSES), len(labels))
        right = rng.random(len(labels)) < 0.5
        probs[right, labels[right]] += 1.0
        views.append(probs / probs.sum(1, keepdims=True))
    return Predictions(labels, *views)


def counted_by_hand(labels: np.ndarray, predicted: np.ndarray) -> list[list[int]]:
    matrix = [[0] * NUM_CLASSES for _ in range(NUM_CLASSES)]
    for true, pred in zip(labels.tolist(), predicted.tolist(), strict=True):
        matrix[true][pred] += 1
    return matrix


def per_class_by_hand(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    return {name: round(float(np.mean(predicted[labels == c] == c)), 4) for c, name in enumerate(CLASS_NAMES)}


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised network exported with stale metrics; tests work on copies."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("exported")
    export_model(CustomResNet(NUM_CLASSES).eval(), out, {"n": 1, "accuracy": 0.5, "accuracy_tta": 0.5})
    return out


@pytest.fixture
def app_dir(exported: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported, tmp_path / "app"))


def test_confusion_counts_rows_are_true_classes_and_columns_predictions() -> None:
    labels, predicted = np.array([0, 0, 1, 9]), np.array([1, 1, 2, 9])
    matrix = confusion_counts(labels, predicted)
    assert matrix.shape == (NUM_CLASSES, NUM_CLASSES) and matrix.sum() == 4
    assert matrix[0, 1] == 2 and matrix[1, 2] == 1 and matrix[9, 9] == 1


def test_report_holds_single_view_confusion_and_every_views_accuracies() -> None:
    labels = np.random.default_rng(1).integers(0, NUM_CLASSES, 300)  # 300: accuracies need their four decimals
    preds = random_predictions(labels)
    report = json.loads(json.dumps(preds.report()))  # as model.json stores it
    assert set(report) == METRIC_KEYS and report["n"] == 300
    assert report["confusion"] == counted_by_hand(labels, preds.probs.argmax(1))
    assert report["confusion"] != counted_by_hand(labels, preds.probs_tta.argmax(1))  # the views differ
    assert report["per_class"] == per_class_by_hand(labels, preds.probs.argmax(1))
    assert report["per_class_tta"] == per_class_by_hand(labels, preds.probs_tta.argmax(1))
    assert report["per_class_tta_translate"] == per_class_by_hand(labels, preds.probs_tta_translate.argmax(1))
    assert list(report["per_class"]) == list(CLASS_NAMES)
    views = (preds.probs, preds.probs_tta, preds.probs_tta_translate)
    accuracies = [round(float(np.mean(probs.argmax(1) == labels)), 4) for probs in views]
    assert [report[f"accuracy{view}"] for view in VIEWS] == accuracies and len(set(accuracies)) == 3


def test_training_export_writes_the_full_metrics(image_folder: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(data_dir=str(image_folder), out=str(tmp_path), app_dir=str(tmp_path / "app"), num_workers=0)
    dm = build_datamodule(cfg)
    preds = random_predictions(dm.test_split.labels)
    weights = export_artifacts(cfg, CustomResNet(NUM_CLASSES), dm, preds, max_lr=0.0123)
    config = json.loads(weights.with_name(CONFIG_NAME).read_text())
    assert config["metrics"] == json.loads(json.dumps(preds.report("PNG")))
    assert set(config["metrics"]) == METRIC_KEYS | {"test_files"}
    # The max LR the run used (here, as when the LR finder chose it, not the config's None), and every other knob.
    assert config["training"] == json.loads(json.dumps(asdict(cfg) | {"max_lr": 0.0123}))


def test_app_examples_are_test_images_one_per_class(image_folder: Path, tmp_path: Path) -> None:
    """Examples taken from the training split (or of another class) would show the Space's visitors images the
    model was trained on, whose confident answers prove nothing: each <class>.png must be a test image of it."""
    dm = CIFAR10DataModule(image_folder, num_workers=0)
    dm.setup()
    save_examples(dm, tmp_path / "examples")
    test, train = dm.test_split, dm.train_split  # decoded by setup(), straight from the folder
    assert sorted(p.name for p in (tmp_path / "examples").iterdir()) == sorted(f"{c}.png" for c in CLASS_NAMES)
    for c, name in enumerate(CLASS_NAMES):
        example = np.asarray(Image.open(tmp_path / "examples" / f"{name}.png").convert("RGB"))
        assert example.shape == test.images.shape[1:]
        assert any(np.array_equal(example, image) for image in test.images[test.labels == c]), name
        assert not any(np.array_equal(example, image) for image in train.images), name


def test_write_metrics_replaces_only_the_metrics(app_dir: Path, image_folder: Path, capsys) -> None:
    before = files_of(app_dir)
    weights = app_dir / WEIGHTS_NAME
    assert evaluate_main(["--weights", str(weights), "--data-dir", str(image_folder)]) == 0
    assert files_of(app_dir) == before  # without the flag, evaluate only prints
    assert "test images, 6 views each" in capsys.readouterr().err  # a progress bar: the full split takes minutes
    assert evaluate_main(["--weights", str(weights), "--data-dir", str(image_folder), "--write-metrics"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    after = files_of(app_dir)
    assert set(after) == set(before)  # no temporary file left behind
    assert after[WEIGHTS_NAME] == before[WEIGHTS_NAME]
    old, new = json.loads(before[CONFIG_NAME]), json.loads(after[CONFIG_NAME])
    assert list(new) == list(old)
    assert {k: v for k, v in new.items() if k != "metrics"} == {k: v for k, v in old.items() if k != "metrics"}
    metrics = new["metrics"]
    assert metrics == json.loads(line) and set(metrics) == METRIC_KEYS | {"test_files"} and metrics["n"] == 30
    assert metrics["test_files"] == "PNG"  # the tiny folder's files: the app says which copy it was tested on
    confusion = np.array(metrics["confusion"])
    assert confusion.sum(1).tolist() == [3] * NUM_CLASSES  # 3 test images per class in the tiny folder
    assert round(np.trace(confusion) / 30, 4) == metrics["accuracy"]
    load_model(weights)  # the sha256 still matches


def test_write_metrics_refuses_weights_that_do_not_match(app_dir: Path, tmp_path: Path) -> None:
    _swap_in_other_weights(app_dir, tmp_path)
    before = files_of(app_dir)
    with pytest.raises(ValueError, match="does not match the sha256"):
        write_metrics(app_dir / WEIGHTS_NAME, {"n": 0})
    assert files_of(app_dir) == before


def _swap_in_other_weights(app_dir: Path, tmp_path: Path) -> list[str]:
    torch.manual_seed(1)
    other = export_model(CustomResNet(NUM_CLASSES), tmp_path / "other")
    shutil.copy(other, app_dir / WEIGHTS_NAME)
    return ["--weights", str(app_dir / WEIGHTS_NAME)]


def _corrupt_json(app_dir: Path, tmp_path: Path) -> list[str]:
    (app_dir / CONFIG_NAME).write_text('{"classes": [')
    return ["--weights", str(app_dir / WEIGHTS_NAME)]


def _foreign_json(app_dir: Path, tmp_path: Path) -> list[str]:
    (app_dir / CONFIG_NAME).write_text('{"name": "some other model.json"}\n')
    return ["--weights", str(app_dir / WEIGHTS_NAME)]


def _with_json(app_dir: Path, edit: Callable[[dict], dict]) -> list[str]:
    """The JSON replaced by `edit` of it; the weights, and their sha256, are untouched."""
    config_path = app_dir / CONFIG_NAME
    config_path.write_text(json.dumps(edit(json.loads(config_path.read_text()))))
    return ["--weights", str(app_dir / WEIGHTS_NAME)]


def _other_classes(app_dir: Path, tmp_path: Path) -> list[str]:
    """The JSON names the classes in another order."""
    return _with_json(app_dir, lambda config: config | {"classes": config["classes"][::-1]})


def _json_without_classes(app_dir: Path, tmp_path: Path) -> list[str]:
    return _with_json(app_dir, lambda config: {k: v for k, v in config.items() if k != "classes"})


def _text_class_count(app_dir: Path, tmp_path: Path) -> list[str]:
    return _with_json(app_dir, lambda config: config | {"num_classes": "ten"})


def _zero_logit_scale(app_dir: Path, tmp_path: Path) -> list[str]:
    return _with_json(app_dir, lambda config: config | {"logit_scale": 0})


def _zero_classes(app_dir: Path, tmp_path: Path) -> list[str]:
    return _with_json(app_dir, lambda config: config | {"num_classes": 0})


def _with_its_sha256(app_dir: Path, write: Callable[[Path], object]) -> list[str]:
    """Weights replaced by what `write` puts there, and the JSON's sha256 updated to match them."""
    weights, config_path = app_dir / WEIGHTS_NAME, app_dir / CONFIG_NAME
    write(weights)
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | {"sha256": sha256_of(weights)}))
    return ["--weights", str(weights)]


def _text_as_weights(app_dir: Path, tmp_path: Path) -> list[str]:
    return _with_its_sha256(app_dir, lambda path: path.write_text("not weights"))


def _other_tensors(app_dir: Path, tmp_path: Path) -> list[str]:
    return _with_its_sha256(app_dir, lambda path: save_file({"fc.weight": torch.zeros(2, 2)}, str(path)))


def _more_classes_tensors(app_dir: Path, tmp_path: Path) -> list[str]:
    """Every tensor the JSON describes, the last layer's for 11 classes: loaded as is, a size-mismatch traceback."""
    state = CustomResNet(NUM_CLASSES + 1).state_dict()
    return _with_its_sha256(app_dir, lambda path: save_file(state, str(path)))


def _file_as_data_dir(app_dir: Path, tmp_path: Path) -> list[str]:
    return ["--weights", str(app_dir / WEIGHTS_NAME), "--data-dir", str(app_dir / CONFIG_NAME)]


def _no_class_folders(app_dir: Path, tmp_path: Path) -> list[str]:
    (tmp_path / "data" / "test" / "cat").mkdir(parents=True)
    return ["--weights", str(app_dir / WEIGHTS_NAME), "--data-dir", str(tmp_path / "data")]


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (_swap_in_other_weights, "does not match the sha256"),
        (lambda app, tmp: ["--weights", str(app / CONFIG_NAME)], "is JSON; pass the weights beside it"),
        (lambda app, tmp: ["--weights", str(app)], f"is a folder; pass the {WEIGHTS_NAME} in it"),
        (_text_as_weights, "is not a safetensors file"),
        (_other_tensors, "tensors missing, 0 unexpected, 1 of another shape"),
        (_more_classes_tensors, "0 tensors missing, 0 unexpected, 2 of another shape"),
        (_corrupt_json, "is not valid JSON"),
        (_foreign_json, "has no sha256"),
        (_other_classes, "was trained on classes ['truck'"),
        (_json_without_classes, "lacks 'classes'"),  # a KeyError traceback
        (_text_class_count, "has num_classes 'ten' and logit_scale"),  # a TypeError traceback
        (_zero_logit_scale, "has num_classes 10 and logit_scale 0:"),  # every logit 0: class 0 for every image
        (_zero_classes, "has num_classes 0 and logit_scale"),
        (lambda app, tmp: ["--weights", str(app / "missing.safetensors")], "side by side"),
        (lambda app, tmp: ["--weights", str(app / WEIGHTS_NAME), "--data-dir", str(tmp / "nowhere")], "does not exist"),
        (_file_as_data_dir, "is a file, not a folder"),
        (lambda app, tmp: ["--weights", str(app / WEIGHTS_NAME), "--data-dir", str(app)], "has no test/ folder"),
        (_no_class_folders, "lacks class folders airplane, automobile, bird, deer"),
    ],
    ids=[
        "other-weights",
        "json-as-weights",
        "folder-as-weights",
        "text-with-its-sha256",
        "other-tensors-with-their-sha256",
        "more-classes-tensors-with-their-sha256",
        "corrupt-json",
        "foreign-json",
        "other-classes",
        "json-without-classes",
        "text-class-count",
        "zero-logit-scale",
        "zero-classes",
        "no-weights",
        "no-data-dir",
        "file-as-data-dir",
        "no-test-split",
        "no-class-folders",
    ],
)
def test_bad_refresh_is_a_one_line_error_and_touches_nothing(
    make_args, message: str, app_dir: Path, image_folder: Path, tmp_path: Path, capsys
) -> None:
    args = make_args(app_dir, tmp_path)
    if "--data-dir" not in args:
        args += ["--data-dir", str(image_folder)]
    before = files_of(app_dir)
    assert evaluate_main([*args, "--write-metrics"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert files_of(app_dir) == before


def test_report_covers_only_the_classes_present_and_is_strict_json() -> None:
    """A subset of the test split (a fast dev run's one batch) lacks some classes: they are left out of the per-class
    accuracies, not reported as NaN, which model.json would carry as a bare NaN that strict JSON readers refuse."""
    labels = np.random.default_rng(2).integers(0, 5, 200)  # classes 0-4 only
    report = random_predictions(labels).report()
    for view in VIEWS:
        assert list(report[f"per_class{view}"]) == list(CLASS_NAMES[:5])
    json.dumps(report, allow_nan=False)
