"""The test-time augmentation views of `era_utils.evaluate`, against an independent numpy computation."""

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from era_utils.config import IMAGE_SIZE, NUM_CLASSES
from era_utils.evaluate import predict, tta_logits


def position_sensitive_net(seed: int = 0) -> nn.Module:
    """A random linear map of every pixel: any wrong flip, shift, padding or weighting changes its logits."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * IMAGE_SIZE * IMAGE_SIZE, NUM_CLASSES)).double()


def test_tta_views_are_the_image_its_mirror_and_airbench_one_pixel_shifts() -> None:
    net = position_sensitive_net()
    images = np.random.default_rng(0).normal(size=(4, 3, IMAGE_SIZE, IMAGE_SIZE))

    def logits(x: np.ndarray) -> np.ndarray:
        return net(torch.from_numpy(np.ascontiguousarray(x))).detach().numpy()

    def mirrored_mean(x: np.ndarray) -> np.ndarray:
        return (logits(x) + logits(x[..., ::-1])) / 2

    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    up_left, down_right = padded[..., :-2, :-2], padded[..., 2:, 2:]  # content moved right/down, then left/up
    expected = (
        logits(images),
        mirrored_mean(images),
        0.5 * mirrored_mean(images) + 0.25 * (mirrored_mean(up_left) + mirrored_mean(down_right)),
    )
    with torch.no_grad():
        got = tta_logits(net, torch.from_numpy(images))
    for view, want in zip(got, expected, strict=True):
        np.testing.assert_allclose(view.numpy(), want, rtol=1e-10, atol=1e-10)
    assert not np.allclose(expected[1], expected[2])  # the shifts matter for this net


def test_predict_gives_each_views_softmax_in_eval_mode() -> None:
    """`predict` reports probabilities (the misclassified store's confidences and the PNG names' percentages are
    read from them), of the network in eval mode even when handed one in training mode: batch statistics would
    make each image's answer depend on the others in its batch."""
    net = nn.Sequential(nn.BatchNorm2d(3), position_sensitive_net()).double().train()
    net[0].running_mean.fill_(0.5)
    net[0].running_var.fill_(4.0)
    images = torch.from_numpy(np.random.default_rng(1).normal(size=(6, 3, IMAGE_SIZE, IMAGE_SIZE)))
    preds = predict(net, TensorDataset(images, torch.arange(6)), batch_size=4)
    assert not net.training and preds.labels.tolist() == [0, 1, 2, 3, 4, 5]
    with torch.no_grad():
        expected = [view.softmax(1).numpy() for view in tta_logits(net.eval(), images)]
    for got, want in zip((preds.probs, preds.probs_tta, preds.probs_tta_translate), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
