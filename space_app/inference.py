"""Everything the Space does besides the UI: load and verify the model, read uploads safely,
preprocess them exactly as in training, predict, and compute and draw heatmaps (the methods and
the faithfulness check are in `explain.py`).

No Gradio here, so tests can call it without a server; `app.py` turns `InputError` into
`gr.Error` and the notes of `LoadedImage` into `gr.Warning`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from explain import DEFAULT_METHOD, METHODS, faithfulness
from explain import cam_masks as compute_cam_masks
from model import ARCHITECTURE, GRADCAM_LAYERS, CustomResNet, gradcam_layer
from PIL import Image, ImageOps
from safetensors.torch import load_file

APP_DIR = Path(__file__).resolve().parent
CONFIG_NAME = "model.json"
# the keys of an exported model.json the app reads (metrics is optional: "About the model" then says so)
CONFIG_KEYS = (
    "weights_file",
    "sha256",
    "architecture",
    "gradcam_layers",
    "classes",
    "num_classes",
    "image_size",
    "mean",
    "std",
    "logit_scale",
)
STORE_NAME = "misclassified.npz"
EXAMPLES_DIR = "examples"

MAX_FILE_BYTES = 20 * 1024 * 1024  # also passed to launch(max_file_size=...)
MAX_PIXELS = 40_000_000  # 40 MP: a phone photo is ~12 MP; a 20000x20000 bomb is 400 MP
MAX_K = 10  # the most classes a prediction lists, whatever the number of classes


def most_shown(n_classes: int) -> int:
    """The most classes (and heatmaps) one request shows: MAX_K, or every class if there are fewer."""
    return min(MAX_K, n_classes)


# Pillow decodes a few dozen formats, some through external programs (EPS via Ghostscript);
# only these common, self-contained ones are accepted.
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")  # JPEG includes MPO (camera JPEGs)
FORMATS_TEXT = "PNG, JPEG, GIF, BMP, WebP or TIFF"
DISPLAY_SCALE = 8  # 32x32 images are shown at 256x256, nearest neighbour, so each model pixel is visible

# Pillow's own bomb guard raises above twice this; between once and twice it only warns, and
# open_image refuses those itself with a clearer message, so the warning is noise.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class InputError(ValueError):
    """A problem with what the visitor sent; its message is shown to them as is."""


class ModelFilesError(RuntimeError):
    """The Space's own files are missing or inconsistent; raised at start-up."""


# ---------------------------------------------------------------------------- model files


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_config(app_dir: Path = APP_DIR) -> dict[str, Any]:
    """`model.json`, after checking the weights file it names against its sha256."""
    config_path = app_dir / CONFIG_NAME
    if not config_path.is_file():
        raise ModelFilesError(f"missing {config_path}")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFilesError(f"{config_path} is not a JSON file ({err})") from err
    missing = [key for key in CONFIG_KEYS if key not in config] if isinstance(config, dict) else list(CONFIG_KEYS)
    if missing:
        raise ModelFilesError(f"{config_path} lacks {', '.join(missing)}: it is not an exported model's model.json")
    weights = app_dir / config["weights_file"]
    if not weights.is_file():
        raise ModelFilesError(f"missing {weights}")
    if sha256_of(weights) != config["sha256"]:
        raise ModelFilesError(f"{weights} does not match the sha256 in {config_path}; refusing to load it")
    if config["architecture"] != ARCHITECTURE:
        raise ModelFilesError(f"unknown architecture {config['architecture']!r}, expected {ARCHITECTURE!r}")
    unknown = set(config["gradcam_layers"]) - set(GRADCAM_LAYERS)
    if unknown:
        raise ModelFilesError(f"model.json names Grad-CAM layers the network lacks: {sorted(unknown)}")
    if len(config["classes"]) != config["num_classes"]:
        raise ModelFilesError("model.json: len(classes) != num_classes")
    return config


def layer_label(name: str, side: int) -> str:
    """How a layer is named in the UI, e.g. "layer1 residual (16×16)"."""
    return f"{name.replace('.', ' ')} ({side}×{side})"


# ---------------------------------------------------------------------------- reading uploads


@dataclass
class LoadedImage:
    """An upload as an RGB image, plus notes for the visitor about what was done to it."""

    image: Image.Image
    notes: list[str] = field(default_factory=list)


def _high_bit_depth_to_8bit(im: Image.Image) -> Image.Image:
    """16-bit ("I;16*"), 32-bit integer ("I") and float ("F") grayscale to 8-bit "L".

    16-bit images map 0..65535 onto 0..255, also a dark one whose values all stay below 256; a 32-bit integer image
    is taken as 16-bit data if any value exceeds 255, else as 8-bit; a float one as [0, 1] if none exceeds 1.
    One float32 copy, changed in place: a 40-megapixel upload takes 160 MB here, not a gigabyte."""
    arr = np.array(im, dtype=np.float32)
    peak = np.nanmax(arr) if arr.size else 0.0
    if im.mode == "F" and peak <= 1.0:
        arr *= 255.0
    elif im.mode.startswith("I;16") or peak > 255:
        arr /= 257.0
    np.fmin(np.fmax(arr, 0.0, out=arr), 255.0, out=arr)  # into [0, 255], NaN to 0 (fmax ignores it)
    return Image.fromarray(np.rint(arr, out=arr).astype(np.uint8))


def _to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    """Any Pillow mode to RGB; transparency is composited on white (CIFAR photos have no alpha)."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        notes.append(f"High-bit-depth grayscale image ({mode}): reduced to 8 bits and converted to RGB.")
        im = _high_bit_depth_to_8bit(im)
        mode = im.mode
    if mode == "P":
        notes.append("Palette image: converted to RGB.")
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        notes.append("Palette image: converted to RGB.")
        im = im.convert("RGBA")
    elif mode == "LA":
        im = im.convert("RGBA")
        notes.append("Grayscale image: the model was trained on colour photos, so expect lower confidence.")
    elif mode in ("1", "L"):
        notes.append("Grayscale image: the model was trained on colour photos, so expect lower confidence.")
    elif mode == "CMYK":
        notes.append("CMYK image: converted to RGB; colours may be slightly off.")
    if im.mode in ("RGBA", "RGBa"):
        return _on_white(im.convert("RGBA"), notes)
    try:
        return im.convert("RGB")
    except ValueError as err:  # a mode Pillow cannot convert
        raise InputError(f"Unsupported colour mode {mode}: please upload an RGB or grayscale image.") from err


def _on_white(rgba: Image.Image, notes: list[str]) -> Image.Image:
    """An RGBA image composited on white, with a note if any pixel is (partly) transparent; an opaque alpha
    channel (screenshots, animated WebP) is dropped without one."""
    if rgba.getchannel("A").getextrema()[0] == 255:
        return rgba.convert("RGB")
    notes.append("Image has an alpha channel: transparent areas were filled with white.")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _is_16_bit_per_channel(im: Image.Image) -> bool:
    """Pillow reads 16-bit RGB(A) PNG/TIFF as 8-bit RGB(A); the raw mode in the tile still says 16."""
    for tile in getattr(im, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        raw = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else "")
        if isinstance(raw, str) and ";16" in raw and im.mode in ("RGB", "RGBA"):
            return True
    return False


def open_image(path: str | os.PathLike[str], image_size: int) -> LoadedImage:
    """Validate and decode an upload, refusing anything too big before its pixels are decoded.

    `image_size` (the model's input side) only decides when to tell the visitor the image is tiny.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise InputError("The uploaded file could not be read; please upload it again.") from err
    if size == 0:
        raise InputError("The file is empty (0 bytes): please upload an image.")
    if size > MAX_FILE_BYTES:
        raise InputError(f"The file is {size / 2**20:.1f} MB; the limit is {MAX_FILE_BYTES // 2**20} MB.")
    notes: list[str] = []
    try:
        # Lazy: this reads the header only, so width x height is known before any pixel is decoded.
        im = Image.open(path, formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as err:
        raise InputError(f"The image has too many pixels; the limit is {MAX_PIXELS / 1e6:.0f} megapixels.") from err
    except (OSError, SyntaxError, ValueError) as err:  # UnidentifiedImageError is an OSError
        raise InputError(f"This is not an image the app can read: please upload a {FORMATS_TEXT} file.") from err
    with im:
        width, height = im.size
        if width * height > MAX_PIXELS:
            raise InputError(
                f"The image is {width}×{height} = {width * height:,} pixels; "
                f"the limit is {MAX_PIXELS:,} ({MAX_PIXELS / 1e6:.0f} megapixels)."
            )
        if width < 1 or height < 1:
            raise InputError("The image has no pixels.")
        if getattr(im, "is_animated", False) and im.format != "MPO":  # MPO: a camera's JPEG + previews
            kind = ("Multi-page image", "page") if im.format == "TIFF" else ("Animated image", "frame")
            notes.append(f"{kind[0]}: only its first {kind[1]} is classified.")
            im.seek(0)
        if _is_16_bit_per_channel(im):
            notes.append("16-bit-per-channel image: reduced to 8 bits per channel.")
        if im.format in ("JPEG", "MPO"):
            # Decode big JPEGs at 1/2, 1/4 or 1/8 scale (still >= 128 px a side): much faster, same 32x32 result.
            im.draft(None, (128, 128))
        try:
            im.load()
        except Image.DecompressionBombError as err:
            raise InputError(f"The image has too many pixels; the limit is {MAX_PIXELS / 1e6:.0f} megapixels.") from err
        except Exception as err:  # decoders raise OSError, SyntaxError, ValueError, zlib.error, EOFError...
            raise InputError("The image is corrupted or truncated and could not be decoded.") from err
        oriented: Image.Image = im
        if _exif_orientation(im) not in (None, 1):
            try:
                oriented = ImageOps.exif_transpose(im)
                notes.append("Photo turned upright using its EXIF orientation tag.")
            except Exception:  # a malformed EXIF block: keep the pixels as stored
                notes.append("The EXIF orientation tag could not be applied; the photo is used as stored.")
        rgb = _to_rgb(oriented, notes)
    if min(width, height) < image_size:
        notes.append(f"Very small image ({width}×{height}): it was scaled up, so the prediction means little.")
    if max(width, height) > 2 * min(width, height):
        notes.append("Very elongated image: only its central square is classified.")
    return LoadedImage(rgb, notes)


def _exif_orientation(im: Image.Image) -> int | None:
    try:
        return im.getexif().get(0x0112)
    except Exception:  # a broken EXIF block only means no rotation
        return None


# ---------------------------------------------------------------------------- the classifier


class Classifier:
    """The network, loaded once in eval mode, with its preprocessing and Grad-CAM.

    Forward passes are serialized by a lock: Grad-CAM hooks the shared model, and a concurrent
    request's forward pass would otherwise land in another request's captured activations.
    """

    def __init__(self, app_dir: Path = APP_DIR) -> None:
        self.config = load_config(app_dir)
        self.classes: list[str] = list(self.config["classes"])
        self.image_size: int = int(self.config["image_size"])
        self.layers: dict[str, int] = {k: int(v) for k, v in self.config["gradcam_layers"].items()}
        self.mean = np.asarray(self.config["mean"], dtype=np.float32)
        self.std = np.asarray(self.config["std"], dtype=np.float32)
        net = CustomResNet(num_classes=self.config["num_classes"], logit_scale=self.config["logit_scale"])
        net.load_state_dict(load_file(str(app_dir / self.config["weights_file"])))  # safetensors: no pickle
        net.eval()
        # Grad-CAM needs gradients w.r.t. activations only, not weights: the input requires grad instead.
        net.requires_grad_(False)
        self.net = net
        self._lock = threading.Lock()

    @property
    def max_k(self) -> int:
        return most_shown(len(self.classes))

    def model_input(self, image: Image.Image) -> np.ndarray:
        """The uint8 HxWx3 image the network sees: the central square, resized to image_size.

        Downscaling uses Pillow's BOX filter (the average of the covered pixels, like OpenCV's
        INTER_AREA); images smaller than the input are upscaled with BICUBIC. A 32x32 test image
        passes through unchanged, so it is normalized exactly as in training.
        """
        w, h = image.size
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        resample = Image.Resampling.BOX if side >= self.image_size else Image.Resampling.BICUBIC
        square = image.resize((self.image_size, self.image_size), resample, box=box)
        return np.asarray(square.convert("RGB"), dtype=np.uint8)

    def to_tensor(self, images: np.ndarray) -> torch.Tensor:
        """uint8 NHWC (or HWC) to the normalized float NCHW batch, as Albumentations' Normalize did in training."""
        x = images.astype(np.float32) / 255.0
        if x.ndim == 3:
            x = x[None]
        x = (x - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax probabilities (N, num_classes) for uint8 NHWC images."""
        x = self.to_tensor(images)
        with self._lock, torch.inference_mode():
            return self.net(x).float().softmax(1).numpy()

    def cam_masks(
        self, images: np.ndarray, targets: Sequence[int], layer: str, *, method: str = DEFAULT_METHOD
    ) -> np.ndarray:
        """Heatmaps (N, S, S) in [0, 1] of `method` (Grad-CAM by default) for each image and its target class."""
        parse_choice(layer, "layer", list(self.layers))
        parse_choice(method, "explanation method", list(METHODS))
        # The weights are frozen, so the graph the CAM back-propagates through starts at the input.
        x = self.to_tensor(images).requires_grad_(True)
        with self._lock:
            return compute_cam_masks(self.net, gradcam_layer(self.net, layer), x, targets, method)

    def faithfulness(
        self, images: np.ndarray, masks: np.ndarray, targets: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each target's probability with the 20% most, then least, highlighted pixels hidden (explain.faithfulness)."""
        x = self.to_tensor(images)
        with self._lock:
            return faithfulness(self.net, x, masks, targets)


def enlarge(image: np.ndarray, scale: int = DISPLAY_SCALE) -> np.ndarray:
    """Nearest-neighbour upscale, so each of the 32x32 model pixels shows as a crisp square."""
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((w * scale, h * scale), Image.Resampling.NEAREST))


def overlay(image: np.ndarray, mask: np.ndarray, opacity: float, scale: int = DISPLAY_SCALE) -> np.ndarray:
    """The JET heatmap (grad-cam's colours) mixed linearly into the enlarged uint8 image: opacity 0 is the photo
    exactly, 1 the heatmap only. Not show_cam_on_image, which divides the mix by its maximum and so brightens a
    dark photo."""
    photo = enlarge(image, scale).astype(np.float32)
    h, w = photo.shape[:2]
    smooth = np.asarray(Image.fromarray(mask.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR))
    heatmap = cv2.applyColorMap(np.uint8(255 * np.clip(smooth, 0.0, 1.0)), cv2.COLORMAP_JET)
    return np.uint8(np.round((1.0 - opacity) * photo + opacity * cv2.cvtColor(heatmap, cv2.COLOR_BGR2RGB)))


# ---------------------------------------------------------------------------- misclassified store


@dataclass
class MisclassifiedStore:
    """The model's most confident mistakes on the test split, most confident first."""

    images: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) int64
    preds: np.ndarray  # (N,) int64
    confidences: np.ndarray  # (N,) float32

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def load(cls, path: Path, classes: Sequence[str], image_size: int) -> MisclassifiedStore:
        """The store in `path`, checked against the model's classes and image size (ModelFilesError if not)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                store = cls(data["images"], data["labels"], data["preds"], data["confidences"])
                stored_classes = [str(c) for c in data["classes"]] if "classes" in data else list(classes)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            raise ModelFilesError(f"{path} is not a readable store of mistakes ({err})") from err
        n = len(store.labels)
        if store.images.dtype != np.uint8 or store.images.shape[1:] != (image_size, image_size, 3):
            raise ModelFilesError(f"{path}: images must be uint8 (N, {image_size}, {image_size}, 3)")
        if not (len(store.images) == len(store.preds) == len(store.confidences) == n):
            raise ModelFilesError(f"{path}: images, labels, preds and confidences differ in length")
        if stored_classes != list(classes):
            raise ModelFilesError(f"{path}: its classes differ from model.json's")
        indices = np.concatenate([store.labels, store.preds])
        if n and (indices.min() < 0 or indices.max() >= len(classes)):
            raise ModelFilesError(f"{path}: class index out of range")
        return store

    @classmethod
    def empty(cls, image_size: int) -> MisclassifiedStore:
        return cls(
            np.zeros((0, image_size, image_size, 3), np.uint8),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
        )


# ---------------------------------------------------------------------------- parameter checks


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def parse_int(value: Any, what: str, low: int, high: int) -> int:
    """A whole number in [low, high]; 3.0 is accepted, 3.5, "3", True and None are not."""
    if not _is_number(value) or not math.isfinite(value) or float(value) != int(value):
        raise InputError(f"{what} must be a whole number from {low} to {high}, got {value!r}.")
    if not low <= int(value) <= high:
        raise InputError(f"{what} must be from {low} to {high}, got {int(value)}.")
    return int(value)


def parse_float(value: Any, what: str, low: float, high: float) -> float:
    """`value` as a finite float in [low, high]; else an InputError naming `what`."""
    if not _is_number(value) or not math.isfinite(value) or not low <= float(value) <= high:
        raise InputError(f"{what} must be a number from {low:g} to {high:g}, got {value!r}.")
    return float(value)


def parse_bool(value: Any, what: str) -> bool:
    """`value` if it is a boolean; else an InputError naming `what`."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{what} must be true or false, got {value!r}.")
    return bool(value)


def parse_choice(value: Any, what: str, choices: Sequence[str]) -> str:
    """One of `choices`, e.g. a method or class name, spelled exactly."""
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"Unknown {what} {value!r}; choose one of: {', '.join(choices)}.")
    return value
