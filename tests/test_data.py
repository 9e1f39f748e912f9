import shutil
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from era_utils import data
from era_utils.config import CLASS_NAMES
from era_utils.data import ArrayDataset, CIFAR10DataModule, DataError, Split, load_split
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


def test_per_class_subset_keeps_every_class(image_folder):
    dm = CIFAR10DataModule(image_folder, per_class=2, num_workers=0)
    dm.setup()
    assert list(np.bincount(dm.train_split.labels)) == [2] * len(CLASS_NAMES)


def test_missing_dir_names_the_offline_option(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        load_split("train", tmp_path / "nope")


def test_wrong_layout_lists_the_missing_class_folders(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="airplane"):
        load_split("train", tmp_path)


def test_an_unreadable_file_in_the_folder_is_named(image_folder, tmp_path):
    root = shutil.copytree(image_folder, tmp_path / "data")
    broken = root / "test" / "dog" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg is not a readable image"):
        load_split("test", root)


def test_an_image_of_another_size_in_the_folder_is_named(image_folder, tmp_path):
    root = shutil.copytree(image_folder, tmp_path / "data")
    Image.new("RGB", (32, 33)).save(root / "test" / "cat" / "tall.png")
    with pytest.raises(DataError, match="tall.png is 32x33, expected 32x32"):
        load_split("test", root)


def test_class_folders_without_images_are_a_clear_error(tmp_path):
    for name in CLASS_NAMES:
        (tmp_path / "test" / name).mkdir(parents=True)
    (tmp_path / "test" / "cat" / "README.txt").write_text("not an image")
    with pytest.raises(DataError, match="holds no images"):
        load_split("test", tmp_path)


def test_failed_download_names_the_offline_option(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr("torchvision.datasets.CIFAR10.__init__", no_network)
    with pytest.raises(DataError, match="pass --data-dir"):
        data.load_split("train", None, download_root=tmp_path)


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
