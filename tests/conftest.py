"""Shared fixtures: a tiny CIFAR-like image-folder tree made of random images, a tiny learnable one (coloured
squares) with one short fit on it that the tests of the learning and of Grad-CAM share, and a forbidden LR finder."""

from pathlib import Path

import numpy as np
import pytest
from learning_helpers import Squares, SquaresFit, fit_squares, make_squares_folder
from PIL import Image

from era_utils.config import CLASS_NAMES, IMAGE_SIZE

REPO = Path(__file__).resolve().parents[1]


def make_image_folder(root: Path, train_per_class: int = 4, test_per_class: int = 3, seed: int = 0) -> Path:
    """train/<class>/NNNN.png and test/<class>/NNNN.png with random 32x32 RGB images."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for name in CLASS_NAMES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("cifar_tiny"))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
def no_lr_finder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The LR finder, if a test's code path runs it, fails the test (it should stop, or skip it, before)."""
    from era_utils import train

    monkeypatch.setattr(train, "run_lr_finder", lambda *args: pytest.fail("the LR finder ran"))


@pytest.fixture(scope="session")
def squares(tmp_path_factory: pytest.TempPathFactory) -> Squares:
    """16 training and 6 held-out test images per class: a class-coloured square at a class's place on noise."""
    return make_squares_folder(tmp_path_factory.mktemp("squares"), train_per_class=16, test_per_class=6)


@pytest.fixture(scope="session")
def squares_fit(squares: Squares, tmp_path_factory: pytest.TempPathFactory) -> SquaresFit:
    """One short fit (3 epochs of 8 steps of 20 images) through `era_utils.train.fit`, then its test."""
    return fit_squares(squares, tmp_path_factory.mktemp("squares_fit"))
