"""The custom ResNet-9 (after David Page's DAWNBench network).

Imports torch only: `space_app/model.py` is a byte-identical copy, which a test keeps in step.
"""

import torch
from torch import nn

ARCHITECTURE = "custom_resnet9"
# Layers worth explaining with Grad-CAM, with the side of their feature map for a 32x32 input.
GRADCAM_LAYERS: dict[str, int] = {
    "prep": 32,
    "layer1": 16,
    "layer1.residual": 16,
    "layer2": 8,
    "layer3": 4,
    "layer3.residual": 4,
}


def conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    """3x3 conv -> (max pool 2) -> batch norm -> ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ResidualLayer(nn.Module):
    """conv_bn with pooling, plus a residual block of two conv_bn added to its output."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = conv_bn(c_in, c_out, pool=True)
        self.residual = nn.Sequential(conv_bn(c_out, c_out), conv_bn(c_out, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x + self.residual(x)


class CustomResNet(nn.Module):
    """prep 64 -> layer1 128 (+res) -> layer2 256 -> layer3 512 (+res) -> max pool 4 -> linear.

    Returns logits. `logit_scale` multiplies them (Page's 0.125), which slows the last layer's
    effective learning rate; it holds no parameters, so the weights' shapes do not depend on it.
    """

    def __init__(self, num_classes: int, logit_scale: float = 1.0) -> None:
        super().__init__()
        self.logit_scale = logit_scale
        self.prep = conv_bn(3, 64)
        self.layer1 = ResidualLayer(64, 128)
        self.layer2 = conv_bn(128, 256, pool=True)
        self.layer3 = ResidualLayer(256, 512)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(torch.flatten(self.pool(x), 1)) * self.logit_scale


def gradcam_layer(model: CustomResNet, name: str) -> nn.Module:
    """The module called `name` in GRADCAM_LAYERS (e.g. "layer3.residual")."""
    if name not in GRADCAM_LAYERS:
        raise ValueError(f"unknown layer {name!r}; choose one of {', '.join(GRADCAM_LAYERS)}")
    return model.get_submodule(name)
