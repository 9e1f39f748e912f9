"""The explanation methods the Space offers (CAM variants of the grad-cam library, one line each on
what they do differently) and how faithful a heatmap is to the model (the library's ROAD metric).

No Gradio and no model loading here: `inference.Classifier` calls these with its network and lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.metrics.perturbation_confidence import PerturbationConfidenceMetric
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget
from torch import nn


@dataclass(frozen=True)
class Method:
    """A CAM method: the library class and what it does differently from Grad-CAM, in one line."""

    cam: type[BaseCAM]
    about: str


# ScoreCAM and AblationCAM are left out: they run the network once per feature map (256 at layer2),
# seconds per heatmap on a 2-core CPU (see the Space README).
METHODS: dict[str, Method] = {
    "Grad-CAM": Method(GradCAM, "Weights each feature map by its gradient averaged over the map: the classic."),
    "Grad-CAM++": Method(
        GradCAMPlusPlus,
        "Weights each feature map from its positive gradients, position by position: better when the "
        "object appears more than once or is large.",
    ),
    "XGradCAM": Method(
        XGradCAM, "Like Grad-CAM, but each gradient is weighted by its activation, so strong features count more."
    ),
    "HiResCAM": Method(
        HiResCAM,
        "Multiplies gradients and activations cell by cell instead of averaging the gradients: "
        "what exactly raised the class's score, at the layer's resolution.",
    ),
    "LayerCAM": Method(
        LayerCAM, "Keeps only the positive gradients, cell by cell: finer maps, most useful at early layers."
    ),
    "EigenCAM": Method(
        EigenCAM,
        "No gradients: the main pattern of the feature maps, so the same map for every class "
        "(what stands out, not why it is this class).",
    ),
}
DEFAULT_METHOD = "Grad-CAM"
HIDDEN_SHARE = 0.2  # the faithfulness check hides this share of the pixels


def cam_masks(
    net: nn.Module, layer: nn.Module, x: torch.Tensor, targets: Sequence[int], method: str = DEFAULT_METHOD
) -> np.ndarray:
    """Heatmaps (N, H, W) in [0, 1] of `method` at `layer` for each input and its target class."""
    cam_targets = [ClassifierOutputTarget(int(t)) for t in targets]
    with METHODS[method].cam(model=net, target_layers=[layer]) as cam:
        return cam(input_tensor=x, targets=cam_targets)


def pixel_order(masks: np.ndarray) -> np.ndarray:
    """Each mask's pixels replaced by their rank in [0, 1], ties broken at random (the same way for
    every mask, wherever it is in the batch).

    ROAD hides the pixels above a percentile of the mask; with ties (a CAM is often 0 over large
    areas) it would hide more than the share asked for. Ranks keep the order and make the share exact.
    """
    flat = masks.reshape(len(masks), -1)
    tie_breaker = np.random.default_rng(0).random(flat.shape[1])
    ranks = np.empty(flat.shape, np.float32)
    for i, row in enumerate(flat):
        order = np.lexsort((tie_breaker, row))
        ranks[i, order] = np.arange(row.size) / max(row.size - 1, 1)
    return ranks.reshape(masks.shape)


def faithfulness(
    net: nn.Module, x: torch.Tensor, masks: np.ndarray, targets: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Each target class's probability after hiding the HIDDEN_SHARE most, then least, highlighted pixels.

    Hiding is ROAD's (remove and debias): the pixels are filled in from their neighbours (noisy
    linear imputation), so the gap left carries no shape the network could react to. A heatmap
    faithful to the model drops the class's probability much more with its most highlighted pixels
    hidden than with its least highlighted ones.
    """
    ranks = pixel_order(masks)
    keep = round(100 * (1 - HIDDEN_SHARE))  # the percentile below which pixels stay
    soft = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    most = _seeded(ROADMostRelevantFirst(percentile=keep), net, x, ranks, soft)
    least = _seeded(ROADLeastRelevantFirst(percentile=keep), net, x, ranks, soft)
    return most, least


def _seeded(
    metric: PerturbationConfidenceMetric, net: nn.Module, x: torch.Tensor, ranks: np.ndarray, targets: list
) -> np.ndarray:
    """The metric's scores, with the imputation's noise seeded for each image on its own: a heatmap gets the same
    numbers in every request, whatever else the batch holds and wherever it sits in it."""
    scores = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for i, target in enumerate(targets):
            torch.manual_seed(0)
            scores.append(metric(x[i : i + 1], ranks[i : i + 1], [target], net, return_diff=False)[0])
    return np.asarray(scores, np.float32)
