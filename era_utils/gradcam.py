"""Grad-CAM overlays with the grad-cam library; hooks are released when each call returns."""

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from matplotlib.figure import Figure
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from era_utils.model import GRADCAM_LAYERS, CustomResNet, gradcam_layer
from era_utils.plots import image_grid
from era_utils.transforms import denormalize


def gradcam_masks(
    net: CustomResNet, images: torch.Tensor, layer: str, target_classes: Sequence[int] | None = None
) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] of normalized NCHW `images` at `layer`, for `target_classes`
    (default: the prediction), upsampled to the images' size."""
    net.eval()
    targets = None if target_classes is None else [ClassifierOutputTarget(int(c)) for c in target_classes]
    with GradCAM(model=net, target_layers=[gradcam_layer(net, layer)]) as cam:
        return cam(input_tensor=images.float(), targets=targets)


def blend(photo: np.ndarray, mask: np.ndarray, opacity: float) -> np.ndarray:
    """uint8 RGB: the JET heatmap of `mask` in [0, 1] (grad-cam's colours) mixed linearly into `photo` (RGB, [0, 1]).

    Not grad-cam's show_cam_on_image: it divides the mix by its maximum, which brightens a dark photo, so that its
    opacity 0 would not be the photo.
    """
    heatmap = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * mask), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB) / 255.0
    return np.uint8(np.round(255 * ((1.0 - opacity) * photo + opacity * heatmap)))


def gradcam_overlays(
    net: CustomResNet,
    images: torch.Tensor,
    layer: str,
    target_classes: Sequence[int] | None = None,
    opacity: float = 0.5,
) -> np.ndarray:
    """uint8 NHWC overlays of normalized NCHW `images`, explaining `target_classes` (default: the prediction).

    `opacity` is the heatmap's weight: 0 shows the photo only, 1 the heatmap only.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    masks = gradcam_masks(net, images, layer, target_classes)
    photos = denormalize(images.detach().cpu().numpy())
    return np.stack([blend(photo, mask, opacity) for photo, mask in zip(photos, masks, strict=True)])


def explained_classes(net: CustomResNet, images: torch.Tensor, target_classes: Sequence[int] | None) -> str:
    """What the heatmaps explain, for a figure's title: the prediction, unless `target_classes` differ from it."""
    if target_classes is None:
        return "the predicted class"
    net.eval()
    with torch.no_grad():
        predicted = net(images.float().to(next(net.parameters()).device)).argmax(1).tolist()
    return "the predicted class" if predicted == [int(c) for c in target_classes] else "the given classes"


def gradcam_grid(
    net: CustomResNet,
    images: torch.Tensor,
    captions: Sequence[str],
    layers: Sequence[str],
    target_classes: Sequence[int] | None = None,
    opacity: float = 0.5,
    path: str | Path | None = None,
) -> Figure:
    """A figure with the photos in the first row and one row of overlays per layer."""
    photos = denormalize(images.detach().cpu().numpy())
    overlays = [gradcam_overlays(net, images, layer, target_classes, opacity) / 255.0 for layer in layers]
    layer_captions = [f"{layer} ({GRADCAM_LAYERS[layer]}×{GRADCAM_LAYERS[layer]})" for layer in layers]
    cells = np.concatenate([photos, *overlays])
    cell_captions = list(captions) + [name for name in layer_captions for _ in range(len(images))]
    title = f"Grad-CAM of {explained_classes(net, images, target_classes)}, heatmap opacity {opacity:g}: photo, then "
    title += "one row per layer"
    return image_grid(cells, cell_captions, path, ncols=len(images), title=title)
