"""CIFAR-10 as uint8 arrays in memory, from torchvision's download or an offline image folder."""

import random
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from era_utils.config import CLASS_NAMES, IMAGE_SIZE
from era_utils.transforms import DEFAULT_FLIP, FLIPS, eval_transforms, train_transforms

# The image folder's file suffixes, with the format each names (an evaluation reports which its test images had).
FILE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WebP"}


class DataError(RuntimeError):
    """The dataset can be neither found nor downloaded; the message says what to do."""


@dataclass
class Split:
    """One split as uint8 NHWC images and int64 labels; `file_format` names an image folder's file format(s)
    ("JPEG", or "JPEG and PNG" when mixed), None for torchvision's original arrays."""

    images: np.ndarray
    labels: np.ndarray
    file_format: str | None = None

    def take_per_class(self, n: int) -> "Split":
        """The first `n` images of every class, keeping the original order."""
        keep = np.concatenate([np.flatnonzero(self.labels == c)[:n] for c in range(len(CLASS_NAMES))])
        keep.sort()
        return Split(self.images[keep], self.labels[keep], self.file_format)


def derived_seed(*keys: int) -> int:
    """A 32-bit seed mixed from `keys` (e.g. seed, epoch, index) by numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


class ArrayDataset(Dataset):
    """Applies an albumentations pipeline to uint8 images; yields (CHW float tensor, label).

    With a `seed`, image `index` of epoch `epoch` (the key `(index, epoch)` that `EpochShuffle` yields; a plain
    index means epoch 0) is augmented with random draws seeded by (seed, epoch, index): the same in every worker
    process and after a resume, which a pipeline's own random state is not (it is copied into each worker, and
    not saved in checkpoints).

    `alternating_flip` (airbench's flip, which needs a `seed`): each image is mirrored or not at random in epoch 0
    and the other way round in every next epoch, so every two epochs show it both ways, which a random flip
    does only by chance. Mirroring before the pipeline is the same as after it: reflect padding, the crop's
    offset and the cutout's place are all symmetric.
    """

    def __init__(
        self, split: Split, transform: A.Compose, seed: int | None = None, alternating_flip: bool = False
    ) -> None:
        if alternating_flip and seed is None:
            raise ValueError("alternating_flip needs a seed: the first epoch's flips are drawn from it")
        self.split = split
        self.transform = transform
        self.seed = seed
        self.first_flips = (
            np.random.default_rng(derived_seed(seed)).integers(0, 2, len(split.labels)) if alternating_flip else None
        )

    def __len__(self) -> int:
        return len(self.split.labels)

    def mirrored(self, index: int, epoch: int) -> bool:
        """Whether alternating flip mirrors image `index` in epoch `epoch`."""
        return self.first_flips is not None and bool((self.first_flips[index] + epoch) % 2)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        if self.seed is not None:
            seed = derived_seed(self.seed, epoch, index)
            # One stream shared by all the transforms (Compose(seed=...) would give each the same stream).
            self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        image = self.split.images[index]
        if self.mirrored(index, epoch):
            image = np.ascontiguousarray(image[:, ::-1])
        return self.transform(image=image)["image"], int(self.split.labels[index])


class EpochShuffle(Sampler[tuple[int, int]]):
    """A new order every epoch that depends only on (seed, epoch); yields (index, epoch) keys for ArrayDataset.

    Lightning calls `set_epoch` at every epoch start, also after a resume and through the DistributedSampler
    wrapper it puts around this sampler under DDP, so a resumed run sees the batches of an uninterrupted one.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch))
        return ((int(i), self.epoch) for i in torch.randperm(self.size, generator=generator))


def _decode(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
    except OSError as err:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise DataError(f"{path} is not a readable image ({err}); remove or replace it") from err
    if image.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{path} is {image.shape[1]}x{image.shape[0]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    return image


def load_image_folder(root: Path, split: str) -> Split:
    """Decode `root/split/<class>/*` once; class folders must be the CIFAR-10 names."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"--data-dir {root} has no {split}/ folder; it must hold train/<class>/ and test/<class>/")
    missing = [c for c in CLASS_NAMES if not (split_dir / c).is_dir()]
    if missing:
        raise DataError(
            f"{split_dir} lacks class folders {', '.join(missing)}; --data-dir must hold "
            f"train/<class>/ and test/<class>/ with classes {', '.join(CLASS_NAMES)}"
        )
    paths, labels, empty = [], [], []
    for label, name in enumerate(CLASS_NAMES):
        files = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in FILE_FORMATS)
        paths += files
        labels += [label] * len(files)
        if not files:
            empty.append(name)
    if empty:  # a class without images would be trained or scored on the other nine as if all ten were there
        where = "" if len(empty) == len(CLASS_NAMES) else f" in its class folders {', '.join(empty)}"
        raise DataError(f"{split_dir} holds no images{where}; every class folder needs images")
    with ThreadPoolExecutor() as pool:
        images = np.stack(list(pool.map(_decode, paths, chunksize=256)))
    file_format = format_names({FILE_FORMATS[p.suffix.lower()] for p in paths})
    return Split(images, np.asarray(labels, dtype=np.int64), file_format)


def format_names(formats: set[str]) -> str:
    """The formats in alphabetical order as prose: "JPEG", "JPEG and PNG", "BMP, JPEG and PNG"."""
    names = sorted(formats)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def load_torchvision(root: Path, split: str) -> Split:
    """torchvision's CIFAR10, downloaded into `root` when it is not there yet; a failed download leaves no folder
    it made behind."""
    from torchvision.datasets import CIFAR10

    made_here = not root.exists()
    try:
        ds = CIFAR10(str(root), train=split == "train", download=True)
    except Exception as err:  # urllib, SSL and checksum errors all mean: no usable download
        if made_here:
            shutil.rmtree(root, ignore_errors=True)
        raise DataError(
            f"CIFAR-10 could not be downloaded into {root} ({type(err).__name__}: {err}); without a network, pass "
            "--data-dir (the notebook's DATA_DIR) pointing at an image folder with train/<class>/ and test/<class>/"
        ) from err
    return Split(np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64))


def load_split(split: str, data_dir: str | Path | None, download_root: str | Path = "data") -> Split:
    """The offline image folder when `data_dir` is given, else torchvision's download."""
    if data_dir is None:
        return load_torchvision(Path(download_root), split)
    root = Path(data_dir)
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"--data-dir {root} {problem}; point it at a folder with train/<class>/ and test/<class>/")
    return load_image_folder(root, split)


class CIFAR10DataModule(L.LightningDataModule):
    """Decodes both splits once into memory; the test split doubles as the validation set. `flip` is how training
    images are mirrored (one of `transforms.FLIPS`; the recipe's by default)."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        batch_size: int = 512,
        num_workers: int = 2,
        per_class: int | None = None,
        download_root: str | Path = "data",
        seed: int = 0,
        flip: str = DEFAULT_FLIP,
    ) -> None:
        super().__init__()
        if flip not in FLIPS:
            raise ValueError(f"flip must be one of {', '.join(FLIPS)}, got {flip!r}")
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.per_class = per_class
        self.download_root = download_root
        self.seed = seed  # training order and augmentation are a function of (seed, epoch, index)
        self.flip = flip
        self.train_split: Split | None = None
        self.test_split: Split | None = None

    def prepare_data(self) -> None:
        if self.data_dir is None:
            for split in ("train", "test"):
                load_torchvision(Path(self.download_root), split)

    def setup(self, stage: str | None = None) -> None:
        if self.train_split is not None:
            return
        self.train_split = load_split("train", self.data_dir, self.download_root)
        self.test_split = load_split("test", self.data_dir, self.download_root)
        if self.per_class is not None:
            self.train_split = self.train_split.take_per_class(self.per_class)
            self.test_split = self.test_split.take_per_class(self.per_class)

    def train_dataset(self, transform: A.Compose | None = None) -> ArrayDataset:
        """The training split with `transform` (default: the training augmentation) and the chosen flip."""
        self.setup()
        alternating = self.flip == "alternating"
        if transform is None:
            transform = train_transforms(random_flip=not alternating)
        return ArrayDataset(self.train_split, transform, seed=self.seed, alternating_flip=alternating)

    def test_dataset(self) -> ArrayDataset:
        self.setup()
        return ArrayDataset(self.test_split, eval_transforms())

    def _loader(self, dataset: Dataset, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset()
        return self._loader(dataset, EpochShuffle(len(dataset), self.seed))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset())

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset())
