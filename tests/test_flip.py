"""Alternating flip (airbench's): each training image is seen both ways every two epochs, not by chance."""

import albumentations as A
import numpy as np
import pytest
import torch

from era_utils.config import IMAGE_SIZE
from era_utils.data import ArrayDataset, CIFAR10DataModule, Split
from era_utils.train_config import TrainConfig
from era_utils.transforms import train_transforms

N_IMAGES = 64
EPOCHS = 4


def half_bright_split() -> Split:
    """Images bright on the left half and dark on the right, so a mirrored one is told apart after any crop."""
    images = np.zeros((N_IMAGES, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    images[:, :, : IMAGE_SIZE // 2] = 255
    return Split(images, np.arange(N_IMAGES, dtype=np.int64) % 10)


def bright_on_the_right(image: torch.Tensor) -> bool:
    """Whether a (padded, cropped, cut out) half-bright image shows its bright side on the right."""
    return bool(image[..., -12:].mean() > image[..., :12].mean())


def mirrored_by_epoch(flip: str, seed: int = 0) -> np.ndarray:
    """[epoch, image] -> whether the training dataset showed the image mirrored."""
    dm = CIFAR10DataModule(seed=seed, flip=flip)
    dm.train_split = dm.test_split = half_bright_split()  # setup() keeps splits already there
    dataset = dm.train_dataset()
    return np.array([[bright_on_the_right(dataset[(i, e)][0]) for i in range(N_IMAGES)] for e in range(EPOCHS)])


def test_alternating_flip_mirrors_each_image_the_other_way_every_epoch():
    mirrored = mirrored_by_epoch("alternating")
    assert (mirrored[1:] != mirrored[:-1]).all(), "an image was shown the same way in two epochs in a row"
    assert 0.3 < mirrored[0].mean() < 0.7, "the first epoch's flips are not a fair draw"
    assert not (mirrored[0] == mirrored_by_epoch("alternating", seed=1)[0]).all(), "the draw ignores the seed"
    assert (mirrored == mirrored_by_epoch("alternating")).all(), "the draw does not repeat with the seed"


def test_random_flip_repeats_a_side_by_chance():
    mirrored = mirrored_by_epoch("random")
    assert 0.3 < mirrored.mean() < 0.7
    assert (mirrored[1:] == mirrored[:-1]).any()


def test_alternating_flip_leaves_the_flip_out_of_the_pipeline():
    dm = CIFAR10DataModule(flip="alternating")
    dm.train_split = dm.test_split = half_bright_split()
    assert not [t for t in dm.train_dataset().transform.transforms if isinstance(t, A.HorizontalFlip)]
    assert [t for t in train_transforms().transforms if isinstance(t, A.HorizontalFlip)]


def test_the_data_module_flips_as_the_recipe_does_by_default():
    """Code that builds the data module itself trains the flip the committed model was trained with."""
    assert CIFAR10DataModule().flip == TrainConfig().flip


def test_unknown_flip_and_unseeded_alternating_flip_are_refused():
    with pytest.raises(ValueError, match="flip must be one of random, alternating, got 'sideways'"):
        CIFAR10DataModule(flip="sideways")
    with pytest.raises(ValueError, match="needs a seed"):
        ArrayDataset(half_bright_split(), train_transforms(random_flip=False), alternating_flip=True)


def test_training_loader_alternates_each_image_across_epochs_set_on_its_sampler():
    """Through the real loader: Lightning calls `set_epoch` on the loader's sampler at every epoch start, and the
    sampler must hand that epoch to the dataset in its (index, epoch) keys. Keys stuck at epoch 0 would show
    every image the same way in every epoch."""
    split = half_bright_split()
    split.labels = np.arange(N_IMAGES, dtype=np.int64)  # the label names the image, whatever the shuffle
    dm = CIFAR10DataModule(batch_size=16, num_workers=0, seed=0, flip="alternating")
    dm.train_split = dm.test_split = split
    loader = dm.train_dataloader()
    mirrored = np.zeros((EPOCHS, N_IMAGES), dtype=bool)
    for epoch in range(EPOCHS):
        loader.sampler.set_epoch(epoch)
        assert {e for _, e in loader.sampler} == {epoch}, "the sampler's keys do not carry the epoch set on it"
        seen = []
        for images, labels in loader:
            for image, label in zip(images, labels.tolist(), strict=True):
                mirrored[epoch, label] = bright_on_the_right(image)
                seen.append(label)
        assert sorted(seen) == list(range(N_IMAGES)), f"epoch {epoch} did not show every image once"
    assert (mirrored[1:] != mirrored[:-1]).all(), "an image was shown the same way in two epochs in a row"
    assert 0.3 < mirrored[0].mean() < 0.7
