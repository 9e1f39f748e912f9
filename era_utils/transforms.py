"""Albumentations pipelines: pad-crop, flip and cutout for training; normalize only for test."""

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from era_utils.config import CIFAR_MEAN, CIFAR_STD, IMAGE_SIZE

PAD = 4
CUTOUT_SIZE = 8
# How training images are mirrored: "random", each with p = 0.5 by the pipeline; "alternating", airbench's,
# by the dataset: at random in the first epoch, then the other way round in every next one.
FLIPS: tuple[str, ...] = ("random", "alternating")
DEFAULT_FLIP = "alternating"  # the recipe's: TrainConfig's and the data module's default
# Cutout fills with the mean colour, which is zero after normalization.
MEAN_PIXEL = tuple(round(m * 255) for m in CIFAR_MEAN)


def eval_transforms() -> A.Compose:
    """What test images get, and training images last: normalization with the CIFAR-10 mean and std, to CHW."""
    return A.Compose([A.Normalize(mean=CIFAR_MEAN, std=CIFAR_STD, max_pixel_value=255.0), ToTensorV2()])


def train_transforms(random_flip: bool = True) -> A.Compose:
    """Page's augmentation: reflect-pad 4 + random 32x32 crop, horizontal flip, one 8x8 cutout.

    `random_flip=False` leaves the flip out, for a dataset that mirrors the images itself (alternating flip).
    """
    flip = [A.HorizontalFlip(p=0.5)] if random_flip else []
    return A.Compose(
        [
            A.PadIfNeeded(IMAGE_SIZE + 2 * PAD, IMAGE_SIZE + 2 * PAD, border_mode=cv2.BORDER_REFLECT_101),
            A.RandomCrop(IMAGE_SIZE, IMAGE_SIZE),
            *flip,
            A.CoarseDropout(
                num_holes_range=(1, 1),
                hole_height_range=(CUTOUT_SIZE, CUTOUT_SIZE),
                hole_width_range=(CUTOUT_SIZE, CUTOUT_SIZE),
                fill=MEAN_PIXEL,
                p=1.0,
            ),
            eval_transforms(),
        ]
    )


def denormalize(images: np.ndarray) -> np.ndarray:
    """Normalized CHW or NCHW float arrays back to HWC / NHWC floats in [0, 1]."""
    mean = np.asarray(CIFAR_MEAN, dtype=np.float32)
    std = np.asarray(CIFAR_STD, dtype=np.float32)
    hwc = np.moveaxis(np.asarray(images, dtype=np.float32), -3, -1)
    return np.clip(hwc * std + mean, 0.0, 1.0)
