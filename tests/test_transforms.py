import albumentations as A
import numpy as np
import torch

from era_utils.config import CIFAR_MEAN, CIFAR_STD, IMAGE_SIZE
from era_utils.transforms import CUTOUT_SIZE, MEAN_PIXEL, denormalize, test_transforms, train_transforms


def _find(pipeline: A.Compose, kind: type) -> list:
    found = []
    for t in pipeline.transforms:
        found += _find(t, kind) if isinstance(t, A.Compose) else [t] if isinstance(t, kind) else []
    return found


def test_both_pipelines_normalize_with_the_cifar_statistics():
    for pipeline in (train_transforms(), test_transforms()):
        (norm,) = _find(pipeline, A.Normalize)
        assert tuple(norm.mean) == CIFAR_MEAN
        assert tuple(norm.std) == CIFAR_STD


def test_mean_coloured_image_normalizes_to_about_zero():
    image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), MEAN_PIXEL, dtype=np.uint8)
    out = test_transforms()(image=image)["image"]
    assert out.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and out.dtype == torch.float32
    assert out.abs().max() < 0.01


def test_train_pipeline_crops_back_to_32_and_cuts_out_one_8x8_hole():
    image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, dtype=np.uint8)
    out = train_transforms()(image=image)["image"]
    assert out.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    # White everywhere except the cutout, which holds the mean colour (zero after normalization).
    hole = out.abs().sum(0) < 0.05
    assert 0 < hole.sum() <= CUTOUT_SIZE * CUTOUT_SIZE
    rows, cols = hole.nonzero(as_tuple=True)
    assert rows.max() - rows.min() < CUTOUT_SIZE and cols.max() - cols.min() < CUTOUT_SIZE


def test_train_pipeline_is_random_and_test_pipeline_is_not():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    train = [train_transforms()(image=image)["image"] for _ in range(4)]
    assert any(not torch.equal(train[0], t) for t in train[1:])
    assert torch.equal(test_transforms()(image=image)["image"], test_transforms()(image=image)["image"])


def test_denormalize_inverts_normalize():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    back = denormalize(test_transforms()(image=image)["image"].numpy())
    assert np.abs(back * 255 - image).max() < 0.5
