"""Export round trip, evaluate's JSON and data, misclassified export, Grad-CAM, the epoch table, the report figures."""

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from era_utils import artifacts, evaluate, gradcam, plots, train
from era_utils.config import CIFAR_MEAN, CIFAR_STD, CLASS_NAMES, NUM_CLASSES
from era_utils.data import CIFAR10DataModule, load_split
from era_utils.evaluate import main as evaluate_main
from era_utils.export import CONFIG_NAME, WEIGHTS_NAME, export_model, load_model, to_plain_state
from era_utils.gradcam import gradcam_grid, gradcam_masks, gradcam_overlays
from era_utils.history import epoch_table
from era_utils.misclassified import (
    caption,
    confident_mistakes,
    export_misclassified,
    file_name,
    parse_file_name,
    save_store,
)
from era_utils.model import GRADCAM_LAYERS, CustomResNet
from era_utils.plots import per_class_accuracy
from era_utils.train_config import TrainConfig
from era_utils.transforms import MEAN_PIXEL, denormalize, eval_transforms


@pytest.fixture
def trained_net() -> CustomResNet:
    """A network with non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(0)
    net = CustomResNet(NUM_CLASSES, logit_scale=0.125)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 3, 32, 32) * 2 + 0.5)
    return net.eval()


@pytest.fixture
def test_batch(image_folder) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(DataLoader(CIFAR10DataModule(image_folder).test_dataset(), batch_size=30)))


def test_export_round_trip_predicts_identically(trained_net, test_batch, tmp_path):
    weights = export_model(trained_net.to(memory_format=torch.channels_last), tmp_path, {"accuracy": 0.5})
    net, config = load_model(weights)
    images, _ = test_batch
    trained_net.to(memory_format=torch.contiguous_format)  # same kernels on both sides
    with torch.no_grad():
        assert torch.equal(net(images), trained_net(images))
    assert config["classes"] == list(CLASS_NAMES) and config["logit_scale"] == 0.125
    assert config["parameters"] == 6_573_130 and set(config["gradcam_layers"]) == set(GRADCAM_LAYERS)
    assert set(load_file(str(weights))) == set(trained_net.state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]  # no temporary file left over


def test_plain_state_of_a_lightning_modules_state_loads_strictly_into_the_network():
    """`to_plain_state` keeps the `net.` entries without their prefix, and only those."""
    torch.manual_seed(0)
    module = torch.nn.Module()
    module.net, module.other = CustomResNet(NUM_CLASSES), torch.nn.Linear(2, 2)
    state = to_plain_state(module.state_dict())
    net = CustomResNet(NUM_CLASSES)
    net.load_state_dict(state)  # strict: no key missing or left over
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_tampered_weights_are_refused(trained_net, tmp_path):
    weights = export_model(trained_net, tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config | {"sha256": "0" * 64}))
    with pytest.raises(ValueError, match="sha256"):
        load_model(weights)


def test_evaluate_prints_one_json_line_matching_a_direct_computation(
    trained_net, test_batch, image_folder, tmp_path, capsys
):
    weights = export_model(trained_net, tmp_path)
    assert evaluate_main(["--weights", str(weights), "--data-dir", str(image_folder)]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    report = json.loads(line)
    images, labels = test_batch
    with torch.no_grad():
        logits = trained_net(images)
        tta = (logits + trained_net(images.flip(3))) / 2
    assert report["n"] == 30
    assert report["accuracy"] == round((logits.argmax(1) == labels).float().mean().item(), 4)
    assert report["accuracy_tta"] == round((tta.argmax(1) == labels).float().mean().item(), 4)
    assert set(report["per_class"]) == set(CLASS_NAMES) and set(report["per_class_tta"]) == set(CLASS_NAMES)


def test_evaluate_predicts_the_test_split_only_normalized(trained_net, image_folder, tmp_path, monkeypatch):
    """evaluate's dataset is the test split through `eval_transforms`, in order: an augmenting pipeline (random crop,
    flip, cutout) or the training split would report another accuracy, which a random network's near-constant
    answers would not show."""
    weights = export_model(trained_net, tmp_path)

    class Predicting(Exception):
        pass

    def stop(net, dataset, *args, **kwargs):
        raise Predicting(dataset)

    monkeypatch.setattr(evaluate, "predict", stop)
    with pytest.raises(Predicting) as predicting:
        evaluate_main(["--weights", str(weights), "--data-dir", str(image_folder)])
    (dataset,) = predicting.value.args
    split = load_split("test", image_folder)
    assert len(dataset) == len(split.labels) == 30
    for i, (image, label) in enumerate(dataset):
        assert torch.equal(image, eval_transforms()(image=split.images[i])["image"]) and label == split.labels[i]


def test_evaluate_with_missing_weights_is_a_clear_error(image_folder, tmp_path, capsys):
    assert evaluate_main(["--weights", str(tmp_path / "none.safetensors"), "--data-dir", str(image_folder)]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_evaluate_with_a_batch_size_below_one_is_a_usage_error(image_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        evaluate_main(
            ["--weights", str(tmp_path / "w.safetensors"), "--data-dir", str(image_folder), "--batch-size", "0"]
        )
    assert stop.value.code == 2
    assert "--batch-size: must be at least 1, got 0" in capsys.readouterr().err


def _probs_and_labels() -> tuple[np.ndarray, np.ndarray]:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.05, 0.95]])
    probs = np.pad(probs, ((0, 0), (0, NUM_CLASSES - 2)))
    return probs, np.array([1, 1, 1, 0, 0])


def test_confident_mistakes_are_wrong_and_sorted_by_confidence():
    probs, labels = _probs_and_labels()
    assert list(confident_mistakes(labels, probs, 10)) == [4, 0, 3, 2]
    assert list(confident_mistakes(labels, probs, 2)) == [4, 0]


def test_export_writes_n_named_files_and_a_compact_store(tmp_path):
    probs, labels = _probs_and_labels()
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    paths = export_misclassified(images, labels, probs, tmp_path / "mis", n=3)
    assert [p.name for p in paths] == [
        "01_airplane_as_automobile_95pct.png",
        "02_automobile_as_airplane_90pct.png",
        "03_airplane_as_automobile_70pct.png",
    ]
    assert [parse_file_name(p.name) for p in paths] == [(0, 1, 0.95), (1, 0, 0.9), (0, 1, 0.7)]
    store = np.load(save_store(images, labels, probs, tmp_path / "store.npz", n=3))
    assert store["images"].dtype == np.uint8 and store["images"].shape == (3, 32, 32, 3)
    assert np.array_equal(store["images"][0], images[4])
    assert list(store["labels"]) == [0, 1, 0] and list(store["preds"]) == [1, 0, 1]
    assert np.allclose(store["confidences"], [0.95, 0.9, 0.7])
    assert (store["labels"].dtype, store["preds"].dtype, store["confidences"].dtype) == (np.int64, np.int64, np.float32)
    assert store["classes"].tolist() == list(CLASS_NAMES)  # the app refuses a store whose classes differ


def test_captions_and_file_names_say_true_then_predicted_and_the_rounded_percentage() -> None:
    """`dog → cat (97%)` for a dog taken for a cat with confidence 0.968, in the grid's caption and in the PNG's
    name alike (a truncated 96 would disagree with the caption)."""
    assert caption(5, 3, 0.968) == "dog → cat (97%)"
    assert file_name(7, 5, 3, 0.968) == "07_dog_as_cat_97pct.png"
    assert parse_file_name("07_dog_as_cat_97pct.png") == (5, 3, 0.97)


def test_image_grid_draws_every_image_under_its_own_caption() -> None:
    """Eleven images in four columns take three rows: none may be left out, or drawn under another's caption."""
    images = np.random.default_rng(9).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
    captions = [f"image {i}" for i in range(11)]
    drawn = [ax for ax in plots.image_grid(images, captions, ncols=4).axes if ax.images]
    assert [ax.get_title() for ax in drawn] == captions
    assert all(np.array_equal(ax.images[0].get_array(), image) for ax, image in zip(drawn, images, strict=True))


def test_sample_grid_shows_training_images_as_augmented(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sample figure shows what the network trains on: each image has its cutout of the mean colour, which the
    test images, only normalized, never have."""
    shown = {}
    monkeypatch.setattr(plots, "image_grid", lambda images, captions, *a, **k: shown.update(images=images))
    artifacts.save_samples(CIFAR10DataModule(image_folder, num_workers=0), tmp_path / "samples.png", n=8)
    assert len(shown["images"]) == 8
    for image in shown["images"]:
        assert (np.abs(image * 255 - np.asarray(MEAN_PIXEL)) <= 0.5).all(-1).any(), "an image without its cutout"


def test_sample_grid_draws_each_training_image_at_most_once(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked for as many samples as the split holds (4 per class), the grid shows each image once: a draw with
    replacement would repeat some and leave others out."""
    shown = {}
    monkeypatch.setattr(plots, "image_grid", lambda images, captions, *a, **k: shown.update(captions=captions))
    artifacts.save_samples(CIFAR10DataModule(image_folder, num_workers=0), tmp_path / "samples.png", n=40)
    assert sorted(shown["captions"]) == sorted(CLASS_NAMES * 4)


@pytest.mark.parametrize("layer", list(GRADCAM_LAYERS))
def test_gradcam_maps_and_heatmap_only_overlays_at_every_layer(trained_net, test_batch, layer):
    images = test_batch[0][:3]
    masks = gradcam_masks(trained_net, images, layer, target_classes=[0, 1, 2])
    assert masks.shape == (3, 32, 32) and masks.dtype == np.float32
    # Each map is scaled to [0, 1] on its own, or is all zero where nothing speaks for the class.
    assert all(m.min() == 0 and m.max() in (0, pytest.approx(1, abs=1e-4)) for m in masks) and masks.max() > 0
    assert not np.array_equal(masks, gradcam_masks(trained_net, images, layer, target_classes=[3, 4, 5]))
    # Opacity 1 is the heatmap only: the JET colours of the map, as grad-cam draws them.
    heat = gradcam_overlays(trained_net, images, layer, target_classes=[0, 1, 2], opacity=1.0)
    expected = np.stack([cv2.applyColorMap(np.uint8(255 * m), cv2.COLORMAP_JET)[..., ::-1] for m in masks])
    assert heat.shape == (3, 32, 32, 3) and np.array_equal(heat, expected)


def test_gradcam_opacity_zero_is_the_photo_and_hooks_are_released(trained_net, test_batch):
    # Darkened to at most 40% grey, where a mix rescaled to its maximum (show_cam_on_image) would brighten them.
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    images = ((test_batch[0][:2] * std + mean).clamp(0, 1) * 0.4 - mean) / std
    photo_only = gradcam_overlays(trained_net, images, "layer3", opacity=0.0)
    photo = images.numpy().transpose(0, 2, 3, 1) * np.array(CIFAR_STD) + np.array(CIFAR_MEAN)
    assert np.abs(photo_only - photo * 255).max() <= 0.5 + 1e-3  # rounded to the nearest grey level
    assert all(not m._forward_hooks and not m._backward_hooks for m in trained_net.modules())
    with pytest.raises(ValueError, match="opacity"):
        gradcam_overlays(trained_net, images, "layer3", opacity=1.5)


def test_gradcam_grid_saves_a_figure(trained_net, test_batch, tmp_path):
    images = test_batch[0][:4]
    gradcam_grid(trained_net, images, ["a", "b", "c", "d"], ["layer1.residual", "layer3"], path=tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 0


def test_gradcam_grid_has_the_photos_then_one_captioned_row_per_layer(trained_net, test_batch, monkeypatch):
    """Row 1: the photos under their captions; then each layer's overlays, each under that layer's name and map size,
    with one column per image."""
    images = test_batch[0][:3]
    shown = {}
    monkeypatch.setattr(gradcam, "image_grid", lambda *args, **kwargs: shown.update(kwargs, args=args))
    gradcam_grid(trained_net, images, ["a", "b", "c"], ["layer3", "prep"], opacity=0.25)
    cells, captions, _ = shown["args"]
    assert shown["title"].startswith("Grad-CAM of the predicted class, heatmap opacity 0.25: photo")
    assert len(cells) == 9 and np.array_equal(cells[:3], denormalize(images.numpy())) and shown["ncols"] == 3
    assert captions == ["a", "b", "c"] + ["layer3 (4×4)"] * 3 + ["prep (32×32)"] * 3


def test_epoch_table_collapses_lightning_csv_rows_per_epoch(tmp_path):
    rows = [
        {"step": 9, "lr-AdamW/pg1": 0.001},
        {"step": 19, "lr-AdamW/pg1": 0.002},
        {"epoch": 0, "step": 19, "val/loss": 1.5, "val/acc": 0.4},
        {"epoch": 0, "step": 19, "train/loss": 1.8, "train/acc": 0.3},
        {"step": 29, "lr-AdamW/pg1": 0.003},
        {"epoch": 1, "step": 39, "val/loss": 1.2, "val/acc": 0.6},
        {"epoch": 1, "step": 39, "train/loss": 1.4, "train/acc": 0.5},
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "metrics.csv", index=False)
    table = epoch_table(tmp_path / "metrics.csv")
    assert list(table.index) == [1, 2]
    assert list(table["val_acc"]) == [0.4, 0.6] and list(table["train_loss"]) == [1.8, 1.4]
    assert list(table["lr"]) == [0.002, 0.003]


def test_epoch_table_keeps_epochs_without_validation_and_leaves_out_the_test_row(tmp_path):
    """An epoch whose validation did not run is still an epoch of training; the row `trainer.test` logs after the last
    epoch is not one."""
    rows = [
        {"epoch": 0, "step": 9, "val/loss": 1.5, "val/acc": 0.4},
        {"epoch": 0, "step": 9, "train/loss": 1.8, "train/acc": 0.3},
        {"epoch": 1, "step": 19, "train/loss": 1.4, "train/acc": 0.5},
        {"epoch": 2, "step": 20, "test/loss": 1.3, "test/acc": 0.6},
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "metrics.csv", index=False)
    table = epoch_table(tmp_path / "metrics.csv")
    assert list(table.index) == [1, 2] and list(table["train_loss"]) == [1.8, 1.4]
    assert table["val_loss"][1] == 1.5 and np.isnan(table["val_loss"][2])


def test_epoch_table_of_a_log_cut_mid_epoch_gives_each_finished_epoch_its_own_last_rate(tmp_path):
    """An interrupted run's log ends with rates logged in its unfinished epoch: they belong to no row of the table."""
    rows = [
        {"step": 9, "lr-AdamW/pg1": 0.001},
        {"epoch": 0, "step": 9, "train/loss": 1.8, "val/loss": 1.5},
        {"step": 19, "lr-AdamW/pg1": 0.002},
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "metrics.csv", index=False)
    table = epoch_table(tmp_path / "metrics.csv")
    assert list(table.index) == [1] and list(table["lr"]) == [0.001]


def test_per_class_accuracy_plots_only_the_classes_present(tmp_path):
    labels = np.array([0, 0, 3, 3, 3])
    preds = np.array([0, 1, 3, 3, 5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = per_class_accuracy(labels, preds, tmp_path / "per_class.png")
    bars = fig.axes[0].containers[0]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [CLASS_NAMES[0], CLASS_NAMES[3]]
    assert [b.get_height() for b in bars] == pytest.approx([50.0, 100 * 2 / 3])
    assert (tmp_path / "per_class.png").stat().st_size > 0


def test_report_figures_read_true_by_row_and_caption_true_then_predicted(
    trained_net, image_folder, tmp_path, monkeypatch
):
    """The confusion figure has the true class by row (its cells are the counts in model.json's orientation), and
    the mistakes' grid captions say "true → predicted" for the mistakes the PNG file names list, in their order.
    Swapped arguments would only mislabel the README's figures, which no other test looks at. On a fast dev run's
    subset spread over the split, each PNG and grid image is a test image of the true class its name gives (the
    split's image at the subset's place, or another mistake's, would not be)."""
    drawn, draw_confusion, draw_per_class = {}, plots.confusion, plots.per_class_accuracy
    # Each figure by the name of the file it is saved to, which the README shows.
    monkeypatch.setattr(plots, "confusion", lambda *a: drawn.setdefault(a[2].name, draw_confusion(*a)))
    monkeypatch.setattr(plots, "per_class_accuracy", lambda *a: drawn.setdefault(a[2].name, draw_per_class(*a)))
    monkeypatch.setattr(
        plots, "image_grid", lambda images, captions, *a, **k: drawn.setdefault("grid", (images, captions))
    )
    cfg = TrainConfig(
        data_dir=str(image_folder),
        out=str(tmp_path),
        num_workers=0,
        n_misclassified=8,
        fast_dev_run=True,
        batch_size=10,
    )
    dm = train.build_datamodule(cfg)
    trained_net.logit_scale = 8.0  # confident enough that the true class's probability is not the prediction's
    preds, metrics = artifacts.report(cfg, trained_net, dm)
    cells = drawn["confusion_matrix.png"].axes[0].collections[0].get_array().reshape(NUM_CLASSES, NUM_CLASSES)
    assert np.array_equal(cells, np.asarray(metrics["confusion"]))
    assert np.array_equal(cells.sum(1), np.bincount(preds.labels, minlength=NUM_CLASSES))  # rows: true classes
    bars = drawn["per_class_accuracy.png"].axes[0].containers[0]  # each true class's recall, in %
    assert [bar.get_height() / 100 for bar in bars] == pytest.approx(list(metrics["per_class"].values()), abs=1e-4)
    files = sorted(p.name for p in (tmp_path / "misclassified_images").glob("*.png"))
    grid_images, captions = drawn["grid"]  # confidence: the prediction's probability, as in the file name
    assert len(files) >= 2 and captions == [caption(*parse_file_name(name)) for name in files]
    test = dm.test_split
    for name, image in zip(files, grid_images, strict=True):
        saved = np.asarray(Image.open(tmp_path / "misclassified_images" / name))
        assert np.array_equal(saved, image), name
        assert any(np.array_equal(saved, x) for x in test.images[test.labels == parse_file_name(name)[0]]), name


def test_reports_cover_the_whole_test_split_unless_a_fast_dev_run(image_folder, tmp_path):
    """A full run's figures, mistakes and model.json metrics are of every test image; a fast dev run's of one batch
    spread over the class-sorted split."""
    for fast_dev_run in (False, True):
        cfg = TrainConfig(data_dir=str(image_folder), out=str(tmp_path), batch_size=10, fast_dev_run=fast_dev_run)
        dm = train.build_datamodule(cfg)
        indices = artifacts.report_indices(cfg, dm)
        if fast_dev_run:
            assert len(indices) == 10 and set(dm.test_split.labels[indices]) == set(range(NUM_CLASSES))
        else:
            assert list(indices) == list(range(30))


def test_training_curves_plot_each_stage_its_own_loss_and_accuracy_in_percent(tmp_path):
    """The README's curves: the train and val lines of each panel are that stage's column, accuracy in % (its axis
    says so). A line drawn from the other stage's column, or accuracy left in [0, 1], would show a wrong run."""
    table = pd.DataFrame(
        {"train_loss": [2.0, 1.5], "val_loss": [1.8, 1.2], "train_acc": [0.3, 0.5], "val_acc": [0.4, 0.6]},
        index=pd.Index([1, 2], name="epoch"),
    )
    fig = plots.training_curves(table, tmp_path / "curves.png")
    loss_ax, acc_ax = fig.axes
    for ax, column, scale in ((loss_ax, "loss", 1), (acc_ax, "acc", 100)):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"train", "val"}
        for stage, line in lines.items():
            assert list(line.get_xdata()) == [1, 2]
            assert list(line.get_ydata()) == pytest.approx([scale * v for v in table[f"{stage}_{column}"]])
    assert acc_ax.get_ylabel() == "accuracy (%)"
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_confusion_figure_says_true_by_row_and_predicted_by_column():
    labels, preds = np.array([0, 0, 0, 1]), np.array([1, 1, 2, 1])  # two airplanes taken for automobiles
    ax = plots.confusion(labels, preds).axes[0]
    cells = ax.collections[0].get_array().reshape(NUM_CLASSES, NUM_CLASSES)
    assert cells[0, 1] == 2 and cells[1, 0] == 0  # row: true class, column: prediction
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("true", "predicted")
    assert [t.get_text() for t in ax.get_yticklabels()] == list(CLASS_NAMES)


def test_export_replaces_the_mistakes_of_a_previous_export(tmp_path):
    """A second run into the same folder must not leave the first run's mistakes beside its own: the README's table
    and the notebook list the folder's files, sorted by rank."""
    probs, labels = _probs_and_labels()
    images = np.zeros((5, 32, 32, 3), dtype=np.uint8)
    folder = tmp_path / "mis"
    folder.mkdir()
    (folder / "01_cat_as_dog_99pct.png").write_bytes(b"an older run's")
    (folder / "notes.txt").write_text("not an exported mistake")
    (folder / "grid.png").write_bytes(b"nor is this picture")
    paths = export_misclassified(images, labels, probs, folder, n=2)
    assert sorted(p.name for p in folder.iterdir()) == sorted([p.name for p in paths] + ["grid.png", "notes.txt"])
