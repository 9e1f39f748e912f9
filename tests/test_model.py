import subprocess
import sys

import pytest
import torch
from torch import nn

from era_utils.config import NUM_CLASSES
from era_utils.model import GRADCAM_LAYERS, CustomResNet, ResidualLayer, conv_bn, gradcam_layer


def test_parameter_count_is_pinned():
    net = CustomResNet(NUM_CLASSES)
    assert sum(p.numel() for p in net.parameters()) == 6_573_130


def test_returns_logits_of_shape_batch_by_classes():
    net = CustomResNet(NUM_CLASSES).eval()
    out = net(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, NUM_CLASSES)
    # Logits, not probabilities: rows do not sum to one and can be negative.
    assert not torch.allclose(out.sum(1), torch.ones(4))
    assert (out < 0).any()


def test_logit_scale_multiplies_the_output():
    torch.manual_seed(0)
    net = CustomResNet(NUM_CLASSES).eval()
    x = torch.randn(2, 3, 32, 32)
    plain = net(x)
    net.logit_scale = 0.125
    assert torch.allclose(net(x), plain * 0.125, atol=1e-6)


def test_gradcam_layers_exist_and_have_the_stated_resolution():
    net = CustomResNet(NUM_CLASSES).eval()
    sizes = {}
    hooks = [
        gradcam_layer(net, name).register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, o.shape[-1]))
        for name in GRADCAM_LAYERS
    ]
    net(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert sizes == GRADCAM_LAYERS


def test_gradcam_layer_is_the_module_of_that_name():
    """ "layer1.residual" is the residual block, not layer1 around it (both 16x16, so the resolution check above
    cannot tell them apart)."""
    net = CustomResNet(NUM_CLASSES)
    for name in GRADCAM_LAYERS:
        assert gradcam_layer(net, name) is net.get_submodule(name), name


def test_unknown_gradcam_layer_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="layer3.residual"):
        gradcam_layer(CustomResNet(NUM_CLASSES), "layer9")


def test_config_and_model_import_without_lightning_or_torch():
    code = (
        "import sys; import era_utils.config; assert 'torch' not in sys.modules; "
        "import era_utils.model; assert 'lightning' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_conv_bn_pools_between_the_conv_and_the_batch_norm():
    """Page's order, conv -> max pool 2 -> batch norm -> ReLU. Pooling after the ReLU, or a ReLU left out, keeps every
    shape and the parameter count, so the checks above cannot see it."""
    assert [type(m) for m in conv_bn(3, 8, pool=True)] == [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU]
    assert [type(m) for m in conv_bn(3, 8)] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]


def test_residual_layers_add_their_block_and_the_head_max_pools_the_4x4_map():
    """layer1 and layer3 return conv(x) + residual(conv(x)), and the head takes each channel's maximum over the 4x4
    map: a residual sum left out or an average pool keeps every shape and the parameter count."""
    torch.manual_seed(0)
    net = CustomResNet(NUM_CLASSES, logit_scale=0.125).eval()
    x = torch.randn(2, 3, 32, 32)

    def residual_layer(layer: ResidualLayer, h: torch.Tensor) -> torch.Tensor:
        h = layer.conv(h)
        return h + layer.residual(h)

    with torch.no_grad():
        h = residual_layer(net.layer3, net.layer2(residual_layer(net.layer1, net.prep(x))))
        assert h.shape[-2:] == (4, 4)
        torch.testing.assert_close(net(x), net.fc(h.amax(dim=(2, 3))) * 0.125)
