"""Ghost batch norm (era_utils.ghost_bn): each slice of the batch normalised on its own in training, an
ordinary batch norm in eval, and a converted network whose weights still load into the plain model and the Space's."""

import copy

import pytest
import torch
import torch.nn.functional as F
from app_helpers import APP_DIR, load_file_module
from torch import nn

from era_utils.config import NUM_CLASSES
from era_utils.ghost_bn import GhostBatchNorm2d, use_ghost_batch_norm
from era_utils.model import CustomResNet

K = 8  # images per slice in the layer tests
C = 6  # channels


def images(n: int, channels_last: bool = False, seed: int = 0) -> torch.Tensor:
    """Random feature maps with a mean and scale per channel, so that normalising them changes something."""
    x = torch.randn(n, C, 5, 5, generator=torch.Generator().manual_seed(seed))
    x = x * torch.linspace(0.5, 3, C).view(1, C, 1, 1) + torch.arange(C).view(1, C, 1, 1)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def ghost_layer(momentum: float | None = 0.1) -> GhostBatchNorm2d:
    """A layer with a weight and bias far from 1 and 0, so that forgetting the affine shows."""
    layer = GhostBatchNorm2d(C, K, momentum=momentum)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(-2, 2, C))
        layer.bias.copy_(torch.linspace(1, -1, C))
    return layer


def plain_copy(layer: GhostBatchNorm2d) -> nn.BatchNorm2d:
    """nn.BatchNorm2d with the layer's settings, parameters and buffers."""
    plain = nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum).train(layer.training)
    plain.load_state_dict(layer.state_dict())
    return plain


def per_slice_reference(layer: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """F.batch_norm in training mode on each slice of K images, separately."""
    return torch.cat([F.batch_norm(p, None, None, layer.weight, layer.bias, True, 0.0, layer.eps) for p in x.split(K)])


# 32 divides into slices of 8; 29 ends with a slice of 5 and 17 with a slice of one image.
BATCHES = [(32, False), (29, False), (29, True), (17, True)]


@pytest.mark.parametrize(("n", "channels_last"), BATCHES)
def test_training_output_is_batch_norm_of_each_slice(n: int, channels_last: bool) -> None:
    layer, x = ghost_layer(), images(n, channels_last)
    y = layer(x)
    torch.testing.assert_close(y, per_slice_reference(layer, x))
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize(("n", "channels_last"), BATCHES)
def test_gradients_are_those_of_batch_norm_on_each_slice(n: int, channels_last: bool) -> None:
    layer, reference = ghost_layer(), ghost_layer()
    x = images(n, channels_last).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    layer(x).backward(upstream)
    per_slice_reference(reference, x_ref).backward(upstream)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_follow_the_mean_of_the_slices_statistics(momentum: float | None) -> None:
    layer = ghost_layer(momentum)
    mean, var = torch.zeros(C), torch.ones(C)
    for step, n in enumerate((29, 32, 17), start=1):
        x = images(n, seed=step)
        layer(x)
        slices = x.split(K)
        slice_means = torch.stack([p.mean(dim=(0, 2, 3)) for p in slices])
        slice_vars = torch.stack([p.var(dim=(0, 2, 3), correction=1) for p in slices])
        factor = 1 / step if momentum is None else momentum
        mean = (1 - factor) * mean + factor * slice_means.mean(0)
        var = (1 - factor) * var + factor * slice_vars.mean(0)
    torch.testing.assert_close(layer.running_mean, mean)
    torch.testing.assert_close(layer.running_var, var)
    assert layer.num_batches_tracked.item() == 3


def test_eval_mode_is_batch_norm_with_the_same_state() -> None:
    layer = ghost_layer()
    for seed in range(3):
        layer(images(29, seed=seed))
    plain = plain_copy(layer).eval()
    layer.eval()
    x = images(29, channels_last=True, seed=9)
    assert torch.equal(layer(x), plain(x))
    assert not torch.equal(layer.running_mean, torch.zeros(C))


def test_differs_from_batch_norm_on_several_slices_and_equals_it_on_one() -> None:
    layer = ghost_layer()
    several = images(29)
    assert (layer(several) - plain_copy(layer)(several)).abs().max() > 0.1
    layer = ghost_layer()
    plain, one = plain_copy(layer), images(K, seed=1)
    assert torch.equal(layer(one), plain(one))
    assert torch.equal(layer.running_mean, plain.running_mean) and torch.equal(layer.running_var, plain.running_var)


def test_without_running_statistics_it_normalises_each_slice_in_training_and_the_batch_in_eval() -> None:
    layer, x = GhostBatchNorm2d(C, K, track_running_stats=False), images(29)
    torch.testing.assert_close(layer(x), per_slice_reference(layer, x))
    torch.testing.assert_close(layer.eval()(x), F.batch_norm(x, None, None, training=True))


def test_bf16_autocast_normalises_each_slice_and_keeps_fp32_statistics() -> None:
    layer, x = ghost_layer(), images(29, channels_last=True).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, reference = layer(x), per_slice_reference(layer, x)
    assert y.dtype == reference.dtype
    torch.testing.assert_close(y, reference)
    assert layer.running_mean.dtype == layer.running_var.dtype == torch.float32


@pytest.mark.parametrize("size", [1, 0, -32])
def test_slices_of_fewer_than_two_images_are_refused(size: int) -> None:
    with pytest.raises(ValueError, match=f"got {size}"):
        use_ghost_batch_norm(CustomResNet(NUM_CLASSES), size)
    with pytest.raises(ValueError, match=f"got {size}"):
        GhostBatchNorm2d(C, size)


def test_conversion_keeps_each_layers_own_settings() -> None:
    """A converted layer normalises as the layer it replaces: with its eps, and with its momentum (None: a cumulative
    average), not GhostBatchNorm2d's defaults, which the network's own batch norms happen to share."""
    net = nn.Sequential(nn.BatchNorm2d(C, eps=0.5, momentum=0.3), nn.BatchNorm2d(C, momentum=None))
    plain = copy.deepcopy(net)
    use_ghost_batch_norm(net, K)
    assert [(m.eps, m.momentum) for m in net] == [(0.5, 0.3), (1e-5, None)]
    for step in range(2):  # one slice per batch: exactly batch norm, statistics included
        x = images(K, seed=step)
        assert torch.equal(net(x), plain(x))
    for ghost, layer in zip(net, plain, strict=True):
        assert torch.equal(ghost.running_mean, layer.running_mean) and torch.equal(ghost.running_var, layer.running_var)


# ---------------------------------------------------------------------------- a converted network


@pytest.fixture(scope="module")
def nets() -> tuple[CustomResNet, CustomResNet]:
    """A plain network with non-trivial batch-norm state, and a converted deep copy of it."""
    torch.manual_seed(0)
    plain = CustomResNet(NUM_CLASSES, logit_scale=0.125)
    with torch.no_grad():
        plain(torch.randn(16, 3, 32, 32))
    plain.prep[1].weight.requires_grad_(False)
    return plain, use_ghost_batch_norm(copy.deepcopy(plain), K)


def test_every_batch_norm_is_replaced_and_the_state_dict_is_unchanged(nets) -> None:
    plain, ghost = nets
    batch_norms = [m for m in ghost.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(batch_norms) == 8 and all(type(m) is GhostBatchNorm2d for m in batch_norms)
    assert {m.ghost_batch_size for m in batch_norms} == {K}
    before, after = plain.state_dict(), ghost.state_dict()
    assert list(before) == list(after)
    for name, value in before.items():
        assert after[name].shape == value.shape and after[name].dtype == value.dtype and torch.equal(after[name], value)
    assert [p.requires_grad for p in plain.parameters()] == [p.requires_grad for p in ghost.parameters()]


def test_converted_weights_load_strictly_into_the_plain_and_the_space_model(nets) -> None:
    _, ghost = nets
    for model_class in (CustomResNet, load_file_module(APP_DIR, "model").CustomResNet):
        fresh = model_class(NUM_CLASSES, logit_scale=0.125)
        fresh.load_state_dict(ghost.state_dict(), strict=True)
        assert all(type(m) is nn.BatchNorm2d for m in fresh.modules() if isinstance(m, nn.BatchNorm2d))


def test_converted_network_in_eval_mode_predicts_as_before(nets) -> None:
    plain, ghost = (copy.deepcopy(n).eval() for n in nets)
    x = torch.randn(10, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(ghost(x), plain(x))


def test_converted_network_in_training_is_the_plain_one_on_each_slice(nets) -> None:
    """Everything but batch norm works image by image, so the ghost network equals the plain one slice by slice."""
    plain, ghost = (copy.deepcopy(n).to(memory_format=torch.channels_last).train() for n in nets)
    x = torch.randn(2 * K + 4, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad():
        logits = ghost(x)
        torch.testing.assert_close(logits, torch.cat([plain(p) for p in x.split(K)]))
        assert (logits - plain(x)).abs().max() > 1e-3


def test_conversion_keeps_tensors_and_converting_again_only_sets_the_size() -> None:
    net = CustomResNet(NUM_CLASSES).double().eval()
    params, buffers = list(net.parameters()), list(net.buffers())
    use_ghost_batch_norm(net, 32)
    layers = [m for m in net.modules() if isinstance(m, GhostBatchNorm2d)]
    assert not any(m.training for m in layers)
    assert use_ghost_batch_norm(net, 4) is net
    assert [m for m in net.modules() if isinstance(m, GhostBatchNorm2d)] == layers
    assert {m.ghost_batch_size for m in layers} == {4}
    assert all(a is b for a, b in zip(params, net.parameters(), strict=True))
    assert all(a is b for a, b in zip(buffers, net.buffers(), strict=True))
    assert isinstance(use_ghost_batch_norm(nn.BatchNorm2d(3), 2), GhostBatchNorm2d)
