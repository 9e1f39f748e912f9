"""Ghost batch norm: in training, batch-norm statistics over slices of the batch.

Each slice of `ghost_batch_size` consecutive images is normalised with its own mean and variance, which adds
noise that regularises, as in Hoffer et al. 2017 ("Train longer, generalize better") and David Page's "How to
train your ResNet 8: Bag of tricks" (slices of 32). In eval mode the layer is an ordinary batch norm with
running statistics of shape (C,), so the exported weights load into the plain `CustomResNet` and the Space.
"""

import torch
import torch.nn.functional as F
from torch import nn


def check_ghost_batch_size(ghost_batch_size: int) -> int:
    """The size itself, or a ValueError: a slice of one image has no batch statistics worth the name."""
    if ghost_batch_size < 2:
        raise ValueError(f"ghost_batch_size must be at least 2 images, got {ghost_batch_size!r}")
    return ghost_batch_size


class GhostBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training statistics come from each slice of `ghost_batch_size` consecutive images.

    The last slice is smaller when the batch does not divide. In eval mode, or for a batch of at most one
    slice, this is nn.BatchNorm2d. The running statistics move, once per forward, towards the mean over slices
    of the slices' means and unbiased variances: what Page's per-slice running statistics average to.
    """

    def __init__(self, num_features: int, ghost_batch_size: int = 32, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.ghost_batch_size = check_ghost_batch_size(ghost_batch_size)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or len(x) <= self.ghost_batch_size:
            return super().forward(x)
        self._check_input_dim(x)
        y, means, variances = self.normalize_slices(x)
        if self.track_running_stats:
            self.update_running_stats(means.mean(0), variances.mean(0))
        return y

    def normalize_slices(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The output, and each slice's mean and unbiased variance as (slices, C) (None without running stats).

        F.batch_norm with momentum 1 writes a slice's statistics into fresh buffers, in the dtype and kernel
        plain batch norm would use (fp32 statistics under autocast too), and its output and gradients are
        those of batch norm applied to each slice. One call per slice was the fastest exact way on the CPU
        (benchmarks/ghost_bn_speed.py): a training step as fast as with plain batch norm, within noise, where
        Page's folding of the slices into channels took 11% longer (it copies for channels_last) and
        torch.var_mean with autograd 21%.
        """
        outputs, stats = [], []
        for part in x.split(self.ghost_batch_size):
            buffers = self.slice_buffers()
            outputs.append(F.batch_norm(part, *buffers, self.weight, self.bias, True, 1.0, self.eps))
            stats.append(buffers)
        if not self.track_running_stats:
            return torch.cat(outputs), None, None
        means, variances = (torch.stack(s) for s in zip(*stats, strict=True))
        return torch.cat(outputs), means, variances

    def slice_buffers(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Zeroed buffers like the running statistics, for F.batch_norm to write one slice's statistics into."""
        if not self.track_running_stats:
            return None, None
        return torch.zeros_like(self.running_mean), torch.zeros_like(self.running_var)

    @torch.no_grad()
    def update_running_stats(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """nn.BatchNorm2d's update: exponential with `momentum`, or a cumulative average when it is None."""
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(var, factor)


def ghost_copy(bn: nn.BatchNorm2d, ghost_batch_size: int) -> GhostBatchNorm2d:
    """A GhostBatchNorm2d holding `bn`'s own parameter and buffer tensors (so optimizers still see them)."""
    ghost = GhostBatchNorm2d(
        bn.num_features,
        ghost_batch_size,
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
        device="meta",
    )
    for name, tensor in (*bn.named_parameters(recurse=False), *bn.named_buffers(recurse=False)):
        setattr(ghost, name, tensor)
    return ghost.train(bn.training)


def use_ghost_batch_norm(net: nn.Module, ghost_batch_size: int) -> nn.Module:
    """Every nn.BatchNorm2d in `net` replaced by a GhostBatchNorm2d with the same tensors; returns `net`.

    The state_dict is unchanged. Layers that are already ghost batch norms get the new size. Hooks registered
    on a replaced layer are not carried over.
    """
    check_ghost_batch_size(ghost_batch_size)
    if isinstance(net, GhostBatchNorm2d):
        net.ghost_batch_size = ghost_batch_size
        return net
    if isinstance(net, nn.BatchNorm2d):
        return ghost_copy(net, ghost_batch_size)
    for name, child in net.named_children():
        setattr(net, name, use_ghost_batch_norm(child, ghost_batch_size))
    return net
