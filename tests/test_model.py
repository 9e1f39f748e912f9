import subprocess
import sys

import pytest
import torch

from era_utils.config import NUM_CLASSES
from era_utils.model import GRADCAM_LAYERS, CustomResNet, gradcam_layer


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
