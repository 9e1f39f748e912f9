"""Shared fixtures: a tiny CIFAR-like image-folder tree made of random images."""

from pathlib import Path

import numpy as np
import pytest
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
