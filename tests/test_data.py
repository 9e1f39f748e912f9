import shutil
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import torch

from era_utils import data
from era_utils.config import CLASS_NAMES
from era_utils.data import CIFAR10DataModule, DataError, load_split


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


def test_failed_download_names_the_offline_option(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr("torchvision.datasets.CIFAR10.__init__", no_network)
    with pytest.raises(DataError, match="pass --data-dir"):
        data.load_split("train", None, download_root=tmp_path)


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
