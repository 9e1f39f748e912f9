import albumentations as A
import numpy as np
import torch

from era_utils.config import CIFAR_MEAN, CIFAR_STD, IMAGE_SIZE
from era_utils.transforms import CUTOUT_SIZE, MEAN_PIXEL, denormalize, eval_transforms, train_transforms


def _find(pipeline: A.Compose, kind: type) -> list:
    found = []
    for t in pipeline.transforms:
        found += _find(t, kind) if isinstance(t, A.Compose) else [t] if isinstance(t, kind) else []
    return found


def test_both_pipelines_normalize_with_the_cifar_statistics():
    for pipeline in (train_transforms(), eval_transforms()):
        (norm,) = _find(pipeline, A.Normalize)
        assert tuple(norm.mean) == CIFAR_MEAN
        assert tuple(norm.std) == CIFAR_STD


def test_mean_coloured_image_normalizes_to_about_zero():
    image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), MEAN_PIXEL, dtype=np.uint8)
    out = eval_transforms()(image=image)["image"]
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


def test_test_pipeline_is_the_normalization_alone_every_time():
    """README: test images are only normalized. No flip, crop or cutout may slip in, even at random: the output is
    (image / 255 - mean) / std in CHW, on every call."""
    image = np.random.default_rng(5).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    expected = ((image / 255.0 - np.asarray(CIFAR_MEAN)) / np.asarray(CIFAR_STD)).transpose(2, 0, 1)
    for _ in range(8):
        np.testing.assert_allclose(eval_transforms()(image=image)["image"].numpy(), expected, atol=1e-5)


def test_train_pipeline_is_random_and_test_pipeline_is_not():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    train = [train_transforms()(image=image)["image"] for _ in range(4)]
    assert any(not torch.equal(train[0], t) for t in train[1:])
    assert torch.equal(eval_transforms()(image=image)["image"], eval_transforms()(image=image)["image"])


def test_denormalize_inverts_normalize():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    back = denormalize(eval_transforms()(image=image)["image"].numpy())
    assert np.abs(back * 255 - image).max() < 0.5


def test_denormalize_turns_a_batch_back_into_its_nhwc_images() -> None:
    """The sample grid denormalizes a whole NCHW batch: the channel axis is the third from the end, whatever comes
    before it (with three images, moving the batch axis instead would keep the shape and scramble the pixels)."""
    images = np.random.default_rng(8).integers(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    batch = np.stack([eval_transforms()(image=image)["image"].numpy() for image in images])
    assert np.abs(denormalize(batch) * 255 - images).max() < 0.5


def _matching_offsets(out: np.ndarray, padded: np.ndarray) -> list[tuple[int, int]]:
    """Offsets (dy, dx) at which `out` (HWC, 0-255) is `padded` cropped there, but for one cutout hole.

    Pixels that differ from the crop must hold the cutout's mean colour and fit in one CUTOUT_SIZE square.
    """
    offsets = []
    span = padded.shape[0] - IMAGE_SIZE
    for dy in range(span + 1):
        for dx in range(span + 1):
            crop = padded[dy : dy + IMAGE_SIZE, dx : dx + IMAGE_SIZE].astype(np.float32)
            differs = (np.abs(out - crop) > 0.5).any(-1)
            if not differs.any():
                offsets.append((dy, dx))
                continue
            rows, cols = differs.nonzero()
            in_one_square = rows.max() - rows.min() < CUTOUT_SIZE and cols.max() - cols.min() < CUTOUT_SIZE
            if in_one_square and (np.abs(out[differs] - np.asarray(MEAN_PIXEL)) <= 0.5).all():
                offsets.append((dy, dx))
    return offsets


def test_train_pipeline_reflect_pads_by_4_and_crops_at_every_offset():
    """Each output is the image reflect-padded by 4 (REFLECT_101: edge pixel not repeated) and cropped at an offset
    in 0..8 on each axis, outside the cutout. No padding would leave every crop at (4, 4); a constant (black) pad
    would make the off-centre crops match no offset."""
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode="reflect")  # numpy's reflect is OpenCV's REFLECT_101
    pipeline = train_transforms(random_flip=False)  # with a flip, a mirrored output would match no crop
    pipeline.set_random_seed(0)
    seen_y, seen_x = set(), set()
    for draw in range(100):
        out = denormalize(pipeline(image=image)["image"].numpy()) * 255
        offsets = _matching_offsets(out, padded)
        assert offsets, f"draw {draw} is no crop of the reflect-padded image"
        seen_y.update(dy for dy, _ in offsets)
        seen_x.update(dx for _, dx in offsets)
    assert {0, 8} <= seen_y and {0, 8} <= seen_x, f"crop offsets seen: rows {sorted(seen_y)}, cols {sorted(seen_x)}"


def test_cutout_holes_are_filled_8x8_squares():
    """README: one 8x8 cutout. A hole of another size in either direction (say 8x4) fails here, not only a bigger
    one; holes that touch the border could be cut by it, so only those that do not are held to the full size."""
    assert CUTOUT_SIZE == 8
    image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, dtype=np.uint8)
    pipeline = train_transforms()
    pipeline.set_random_seed(0)
    inside = 0
    for _ in range(20):
        hole = pipeline(image=image)["image"].abs().sum(0) < 0.05
        rows, cols = hole.nonzero(as_tuple=True)
        top, bottom, left, right = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
        height, width = bottom - top + 1, right - left + 1
        assert int(hole.sum()) == height * width, "the hole is not one filled rectangle"
        if top > 0 and left > 0 and bottom < IMAGE_SIZE - 1 and right < IMAGE_SIZE - 1:
            inside += 1
            assert (height, width) == (CUTOUT_SIZE, CUTOUT_SIZE)
    assert inside >= 5, "too few holes away from the border to check their size"
