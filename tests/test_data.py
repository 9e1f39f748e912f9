import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from era_utils import data
from era_utils.config import CLASS_NAMES
from era_utils.data import ArrayDataset, CIFAR10DataModule, DataError, EpochShuffle, Split, load_split
from era_utils.train import build_datamodule
from era_utils.train_config import TrainConfig
from era_utils.transforms import train_transforms


def test_image_folder_is_decoded_once_into_uint8_arrays(image_folder):
    dm = CIFAR10DataModule(image_folder, batch_size=8, num_workers=0)
    dm.setup()
    assert dm.train_split.images.shape == (40, 32, 32, 3) and dm.train_split.images.dtype == np.uint8
    assert dm.test_split.images.shape == (30, 32, 32, 3)
    # Labels follow the class-folder order.
    assert list(np.bincount(dm.train_split.labels)) == [4] * len(CLASS_NAMES)
    assert dm.train_split.labels[0] == 0 and dm.train_split.labels[-1] == len(CLASS_NAMES) - 1


def test_loaders_yield_normalized_batches(image_folder):
    dm = CIFAR10DataModule(image_folder, batch_size=8, num_workers=0)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert sum(len(y) for _, y in dm.test_dataloader()) == 30


def test_per_class_subset_is_the_first_images_of_each_class_in_their_order():
    """README: the first `per_class` images of every class, kept in the split's order (torchvision's splits mix the
    classes). The images are numbered by their value, so each one kept is named."""
    labels = np.array([3, 0, 3, 1, 0, 3, 1, 0, 3, 0], dtype=np.int64)
    images = np.arange(len(labels), dtype=np.uint8)[:, None, None, None] * np.ones((1, 32, 32, 3), dtype=np.uint8)
    kept = Split(images, labels).take_per_class(2)
    assert kept.images[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 6]
    assert kept.labels.tolist() == [3, 0, 3, 1, 0, 1]


def test_per_class_subset_keeps_every_class_in_both_splits(image_folder: Path) -> None:
    """A smoke run's `per_class` keeps that many images of each class in the test split too: left whole, its
    validation and reports would take as long as a full run's."""
    dm = CIFAR10DataModule(image_folder, per_class=2, num_workers=0)
    dm.setup()
    assert list(np.bincount(dm.train_split.labels)) == [2] * len(CLASS_NAMES)
    assert list(np.bincount(dm.test_split.labels)) == [2] * len(CLASS_NAMES)


def test_missing_dir_names_the_offline_option(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        load_split("train", tmp_path / "nope")


def test_wrong_layout_lists_the_missing_class_folders(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="airplane"):
        load_split("train", tmp_path)


def test_image_files_are_read_whatever_the_case_of_their_suffix(image_folder, tmp_path):
    """Cameras and Windows tools write IMG_0001.JPG: an image left out for its upper-case suffix would shrink the split
    silently."""
    root = shutil.copytree(image_folder, tmp_path / "data")
    cat = root / "test" / "cat"
    (cat / "0000.png").rename(cat / "0000.PNG")
    Image.open(cat / "0001.png").save(cat / "0001.JPEG", quality=100)
    (cat / "0001.png").unlink()
    split = load_split("test", root)
    assert len(split.labels) == 30 and (split.labels == 3).sum() == 3
    assert split.file_format == "JPEG and PNG"  # both formats, named once each, whatever their suffixes' case
    dog = root / "test" / "dog"
    for suffix in (".webp", ".bmp"):  # four formats: named in one order, not in a set's (hash-seeded) order
        Image.open(dog / "0000.png").save(dog / f"0000{suffix}", lossless=True)
    (dog / "0000.png").unlink()
    (dog / "0001.png").unlink()
    assert load_split("test", root).file_format == "BMP, JPEG, PNG and WebP"


def test_the_file_format_survives_the_per_class_subset(image_folder: Path) -> None:
    """The app tells its visitors which copy the accuracy was measured on (a JPEG copy scores points lower): a
    smoke run's subset must keep the folder's format, and torchvision's original arrays have none."""
    dm = CIFAR10DataModule(image_folder, per_class=2, num_workers=0)
    dm.setup()
    assert (dm.train_split.file_format, dm.test_split.file_format) == ("PNG", "PNG")
    assert Split(np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1, np.int64)).file_format is None


def test_an_unreadable_file_in_the_folder_is_named(image_folder, tmp_path):
    root = shutil.copytree(image_folder, tmp_path / "data")
    broken = root / "test" / "dog" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg is not a readable image"):
        load_split("test", root)


@pytest.mark.parametrize("size", [(32, 33), (33, 32)], ids=["tall", "wide"])
def test_an_image_of_another_size_in_the_folder_is_named(
    size: tuple[int, int], image_folder: Path, tmp_path: Path
) -> None:
    """Too tall or too wide: a check of one side only would let the other through, to fail later in np.stack."""
    root = shutil.copytree(image_folder, tmp_path / "data")
    Image.new("RGB", size).save(root / "test" / "cat" / "odd.png")
    with pytest.raises(DataError, match=f"odd.png is {size[0]}x{size[1]}, expected 32x32"):
        load_split("test", root)


def test_grey_and_transparent_images_are_read_as_rgb(image_folder: Path, tmp_path: Path) -> None:
    """A greyscale or RGBA PNG in the folder is an image like the others: three channels, the grey repeated in each
    (read as is, it would have one or four channels and break the split's array)."""
    root = shutil.copytree(image_folder, tmp_path / "data")
    grey = np.random.default_rng(6).integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(root / "test" / "cat" / "0000.png")
    Image.open(root / "test" / "dog" / "0000.png").convert("RGBA").save(root / "test" / "dog" / "0000.png")
    split = load_split("test", root)
    assert split.images.shape == (30, 32, 32, 3)
    assert np.array_equal(split.images[split.labels == 3][0], np.repeat(grey[..., None], 3, axis=-1))


def test_images_of_a_class_keep_their_file_name_order(image_folder: Path, tmp_path: Path) -> None:
    """The shared copy's files keep the original split's order (test/cat/0000.jpg is its first cat), which the
    per-class subsets and the app's examples rely on: the folder's listing order is the file system's, not that.
    The files are written in a shuffled order and each image's value is its number."""
    root = shutil.copytree(image_folder, tmp_path / "data")
    cat = root / "test" / "cat"
    for old in cat.iterdir():
        old.unlink()
    for i in np.random.default_rng(7).permutation(12):
        Image.new("RGB", (32, 32), (int(i), 0, 0)).save(cat / f"{i:04d}.png")
    split = load_split("test", root)
    assert split.images[split.labels == 3][:, 0, 0, 0].tolist() == list(range(12))


def test_stray_folders_beside_the_class_folders_do_not_shift_the_labels(image_folder: Path, tmp_path: Path) -> None:
    """Labels are the classes' places in CLASS_NAMES: a Jupyter checkpoint folder or any other folder beside the
    classes must not take a label (which listing the folders in name order would give it)."""
    root = shutil.copytree(image_folder, tmp_path / "data")
    for stray in (".ipynb_checkpoints", "_unused"):
        (root / "test" / stray).mkdir()
        Image.new("RGB", (32, 32)).save(root / "test" / stray / "0000.png")
    split = load_split("test", root)
    assert np.bincount(split.labels).tolist() == [3] * len(CLASS_NAMES)
    cat = np.stack([np.asarray(Image.open(p)) for p in sorted((root / "test" / "cat").iterdir())])
    assert np.array_equal(split.images[split.labels == 3], cat)


def test_class_folders_without_images_are_a_clear_error(tmp_path):
    for name in CLASS_NAMES:
        (tmp_path / "test" / name).mkdir(parents=True)
    (tmp_path / "test" / "cat" / "README.txt").write_text("not an image")
    with pytest.raises(DataError, match="holds no images"):
        load_split("test", tmp_path)


def test_a_class_folder_without_images_is_named(image_folder: Path, tmp_path: Path) -> None:
    """An empty class folder among full ones trained (or scored) on nine classes, as if all ten were there."""
    root = shutil.copytree(image_folder, tmp_path / "data")
    for image in (root / "train" / "frog").iterdir():
        image.unlink()
    with pytest.raises(DataError, match=r"data/train holds no images in its class folders frog; every class"):
        load_split("train", root)


def test_failed_download_names_the_offline_option_and_leaves_no_folder_it_made(tmp_path, monkeypatch):
    def no_network(self, root, **kwargs):
        (Path(root) / "cifar-10-batches-py").mkdir(parents=True)  # torchvision makes its folders before it fetches
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr("torchvision.datasets.CIFAR10.__init__", no_network)
    with pytest.raises(DataError, match=r"pass --data-dir \(the notebook's DATA_DIR\)"):
        data.load_split("train", None, download_root=tmp_path / "data")
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / "mine"  # a folder the user had is theirs, whatever the download left in it
    kept.mkdir()
    with pytest.raises(DataError):
        data.load_split("train", None, download_root=kept)
    assert (kept / "cifar-10-batches-py").is_dir()


def test_torchvision_download_reads_the_split_asked_for(tmp_path, monkeypatch):
    """The "test" split comes from torchvision's test set (train=False): read with train=True, it would
    validate and test on the training images."""
    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            n, value = (5, 1) if train else (3, 2)
            self.data = np.full((n, 32, 32, 3), value, dtype=np.uint8)
            self.targets = [value] * n

    monkeypatch.setattr("torchvision.datasets.CIFAR10", FakeCIFAR10)
    test = load_split("test", None, download_root=tmp_path)
    assert calls == [(str(tmp_path), False, True)]
    assert test.images.shape == (3, 32, 32, 3) and (test.images == 2).all() and list(test.labels) == [2] * 3
    assert test.file_format is None  # the original arrays, not an image folder's copy
    train = load_split("train", None, download_root=tmp_path)
    assert calls[1] == (str(tmp_path), True, True)
    assert train.images.shape == (5, 32, 32, 3) and (train.images == 1).all() and list(train.labels) == [1] * 5


def test_validation_loader_is_the_test_split(image_folder):
    """README: validation is the test split. A validation loader over the training split would yield its 40
    (augmented) images instead of the 30 test ones."""
    dm = CIFAR10DataModule(image_folder, batch_size=8, num_workers=0)
    val = list(dm.val_dataloader())
    test = list(dm.test_dataloader())
    val_images, val_labels = torch.cat([x for x, _ in val]), torch.cat([y for _, y in val])
    test_images, test_labels = torch.cat([x for x, _ in test]), torch.cat([y for _, y in test])
    assert len(val_labels) == 30 != len(dm.train_split.labels)
    assert torch.equal(val_images, test_images) and torch.equal(val_labels, test_labels)


def test_augmentation_is_drawn_anew_each_epoch_and_repeats_for_the_same_epoch():
    """Draws seeded by (seed, epoch, index): the same image gets another crop and cutout in the next epoch, and
    the same ones again for the same (index, epoch). Seeded by (seed, index) alone, every epoch would repeat
    the first one's augmentation."""
    rng = np.random.default_rng(3)
    split = Split(rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), np.arange(16, dtype=np.int64) % 10)
    dataset = ArrayDataset(split, train_transforms(), seed=0)
    changed = [not torch.equal(dataset[(i, 0)][0], dataset[(i, 1)][0]) for i in range(16)]
    assert sum(changed) >= 14, f"only {sum(changed)} of 16 images were augmented differently in epoch 1"
    for i in range(16):
        assert torch.equal(dataset[(i, 1)][0], dataset[(i, 1)][0]), f"image {i} of epoch 1 is not reproducible"
    assert torch.equal(dataset[3][0], dataset[(3, 0)][0]), "a plain index is not epoch 0"


def test_each_image_of_an_epoch_gets_its_own_augmentation():
    """Draws seeded by the image's index too: seeded by (seed, epoch) alone, every image of an epoch would get the same
    crop and the same cutout. Sixteen copies of one image here, so any difference is the augmentation's."""
    image = np.random.default_rng(4).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    split = Split(np.repeat(image, 16, axis=0), np.zeros(16, dtype=np.int64))
    dataset = ArrayDataset(split, train_transforms(), seed=0)
    outputs = [dataset[(i, 2)][0] for i in range(16)]
    distinct = {tuple(x.flatten()[::97].tolist()) for x in outputs}
    assert len(distinct) >= 14, f"16 copies of one image got only {len(distinct)} distinct augmentations"


def test_the_training_order_follows_the_seed_and_the_epoch():
    """README: the order is a function of (seed, epoch). A sampler seeded by the epoch alone would shuffle every
    run, whatever its seed, the same way."""
    orders = {(seed, epoch): [] for seed in (1, 2) for epoch in (0, 1)}
    for (seed, epoch), order in orders.items():
        sampler = EpochShuffle(50, seed)
        sampler.set_epoch(epoch)
        order += [index for index, key_epoch in sampler if key_epoch == epoch]
        assert sorted(order) == list(range(50))
    assert orders[1, 0] != orders[2, 0] and orders[1, 1] != orders[2, 1]
    assert orders[1, 0] != orders[1, 1]
    again = EpochShuffle(50, 1)
    again.set_epoch(1)
    assert [index for index, _ in again] == orders[1, 1]


def test_the_runs_seed_reaches_the_training_data(image_folder, tmp_path):
    """TrainConfig's seed sets the data module's order and augmentation: built without it, every run would draw the
    data module's default seed's batches."""

    def first_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = TrainConfig(data_dir=str(image_folder), out=str(tmp_path), batch_size=40, num_workers=0, seed=seed)
        return next(iter(build_datamodule(cfg).train_dataloader()))

    (images, labels), (same_images, same_labels) = first_batch(1), first_batch(1)
    assert torch.equal(images, same_images) and torch.equal(labels, same_labels)
    for other in (0, 2):
        other_images, other_labels = first_batch(other)
        assert not torch.equal(labels, other_labels), f"seeds 1 and {other} train in the same order"


@pytest.mark.parametrize("data_dir", ["does/not/exist", "era_utils"])
def test_cli_with_bad_data_dir_prints_one_line_and_fails(data_dir, repo):
    proc = subprocess.run(
        [sys.executable, "-m", "era_utils.train", "--data-dir", data_dir, "--out", "/tmp/never"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--data-dir" in errors[0]
