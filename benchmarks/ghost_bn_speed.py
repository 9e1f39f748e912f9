"""Training-step cost of ghost batch norm: plain batch norm against three ways to normalise slices.

    python benchmarks/ghost_bn_speed.py --batch-size 512 --ghost-batch-size 32 --repeats 5 \
        --results benchmarks/results/ghost_bn_speed.jsonl

Times forward + backward of the whole CustomResNet (10 classes, logit scale 0.125), channels_last fp32 (with
`--bf16`, under bf16 autocast, as training runs where the CPU runs bf16 fast) in training mode, on random images,
for each variant; the variants take turns so that drift in the machine's speed hits them alike, and the median is
reported. Also times the network's batch-norm layers alone (the
same input shapes, forward + backward) and checks each variant against F.batch_norm applied to each slice.

- split: `era_utils.ghost_bn` as committed, one F.batch_norm call per slice of `x.split(k)`, then torch.cat;
- fold: Page's trick, the slices side by side as the channels of one (k, slices * C, H, W) batch with the
  weight and bias repeated, one F.batch_norm call (copies in and out, for channels_last too);
- var_mean: torch.var_mean over each slice's images and pixels, then x * scale + shift.

On the idle 2-core AVX2-only CPU (AMD EPYC), seconds per step of 512 (median of 5; benchmarks/results/
ghost_bn_speed.jsonl): plain 13.31 (12.09-20.01), split 14.39 (1.08; 12.65-15.24, inside plain's spread), fold 15.65
(1.18), var_mean 16.12 (1.21); an earlier run, without a result file, had split at 1.016. When another
process keeps a core busy, each F.batch_norm call can wait for a descheduled OpenMP thread, and split, with 16
calls per layer instead of one, fell to 1.20x plain (fold 1.19x); `--threads 1` avoids that. On the idle 2-core
AVX-512 CPU with `--bf16`: plain 1.84, split 1.86 (1.01), fold 2.69 (1.46), var_mean 5.74 (3.12).
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from results_log import append, provenance
from torch import nn

from era_utils.config import NUM_CLASSES
from era_utils.ghost_bn import GhostBatchNorm2d, use_ghost_batch_norm
from era_utils.model import CustomResNet
from era_utils.train_config import TrainConfig


class FoldedGhostBatchNorm2d(GhostBatchNorm2d):
    """(a) The whole slices folded into channels for one F.batch_norm call; the remainder as one more slice."""

    def normalize_slices(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n_full = len(x) - len(x) % self.ghost_batch_size
        outputs, means, variances = [], [], []
        for part, fold in ((x[:n_full], self.folded), (x[n_full:], self.one_slice)):
            if len(part):
                y, mean, var = fold(part)
                outputs.append(y)
                means.append(mean)
                variances.append(var)
        return torch.cat(outputs), torch.cat(means), torch.cat(variances)

    def folded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, c, h, w = x.shape
        s, k = n // self.ghost_batch_size, self.ghost_batch_size
        # Permute in (N, H, W, C) order: for channels_last input each copy is then one pass in memory order.
        nhwc = x.permute(0, 2, 3, 1).unflatten(0, (s, k))
        folded = nhwc.permute(1, 2, 3, 0, 4).reshape(k, h, w, s * c).permute(0, 3, 1, 2)
        mean, var = self.weight.new_zeros(s * c), self.weight.new_zeros(s * c)  # fp32 under bf16 autocast too
        y = F.batch_norm(folded, mean, var, self.weight.repeat(s), self.bias.repeat(s), True, 1.0, self.eps)
        y = y.permute(0, 2, 3, 1).unflatten(3, (s, c)).permute(3, 0, 1, 2, 4).reshape(n, h, w, c).permute(0, 3, 1, 2)
        return y, mean.view(s, c), var.view(s, c)

    def one_slice(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, var = self.slice_buffers()
        y = F.batch_norm(x, mean, var, self.weight, self.bias, True, 1.0, self.eps)
        return y, mean[None], var[None]


class VarMeanGhostBatchNorm2d(GhostBatchNorm2d):
    """(c) torch.var_mean over (images, H, W) of each slice, then an explicit affine."""

    def normalize_slices(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = self.ghost_batch_size
        n_full = len(x) - len(x) % k
        groups = [x[:n_full].unflatten(0, (n_full // k, k)), x[n_full:][None]]
        outputs, means, variances = [], [], []
        for group in (g for g in groups if g.shape[1]):
            y, mean, var = self.normalize_group(group)
            outputs.append(y)
            means.append(mean)
            variances.append(var)
        return torch.cat(outputs), torch.cat(means), torch.cat(variances)

    def normalize_group(self, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c, count = group.shape[2], group[0, :, 0].numel()
        var, mean = torch.var_mean(group.float(), dim=(1, 3, 4), correction=0, keepdim=True)
        scale = torch.rsqrt(var + self.eps) * self.weight.view(1, 1, c, 1, 1)
        y = torch.addcmul(self.bias.view(1, 1, c, 1, 1) - mean * scale, group, scale).flatten(0, 1)
        return y, mean.detach().view(-1, c), (var.detach() * count / (count - 1)).view(-1, c)


VARIANTS: dict[str, type[nn.BatchNorm2d] | None] = {
    "plain BN": None,
    "split (b)": GhostBatchNorm2d,
    "fold (a)": FoldedGhostBatchNorm2d,
    "var_mean (c)": VarMeanGhostBatchNorm2d,
}


def network(variant: type[nn.BatchNorm2d] | None, ghost_batch_size: int) -> CustomResNet:
    """The same initial weights for every variant, channels_last, in training mode."""
    torch.manual_seed(0)
    net = CustomResNet(NUM_CLASSES, logit_scale=TrainConfig.logit_scale)
    if variant is not None:
        use_ghost_batch_norm(net, ghost_batch_size)
        for module in net.modules():
            if isinstance(module, GhostBatchNorm2d):
                module.__class__ = variant  # the variants differ only in a method
    return net.to(memory_format=torch.channels_last).train()


def seconds(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def net_step(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, bf16: bool = False) -> Callable[[], None]:
    def step() -> None:
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(images), labels)
        loss.backward()

    return step


def bn_inputs(batch_size: int) -> list[torch.Tensor]:
    """Random channels_last inputs of the shapes the network's batch-norm layers see."""
    shapes = []
    net = CustomResNet(NUM_CLASSES).eval()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_hook(lambda m, i, o: shapes.append((batch_size, *i[0].shape[1:])))
    with torch.no_grad():
        net(torch.zeros(1, 3, 32, 32))
    return [torch.randn(s).to(memory_format=torch.channels_last).requires_grad_() for s in shapes]


def bn_step(
    variant: type[nn.BatchNorm2d] | None, ghost_batch_size: int, inputs: list[torch.Tensor]
) -> Callable[[], None]:
    layers = [nn.BatchNorm2d(x.shape[1]) if variant is None else variant(x.shape[1], ghost_batch_size) for x in inputs]
    grads = [torch.randn_like(x) for x in inputs]

    def step() -> None:
        for layer, x, grad in zip(layers, inputs, grads, strict=True):
            layer(x).backward(grad)

    return step


def max_error(variant: type[nn.BatchNorm2d], ghost_batch_size: int) -> float:
    """Largest difference from F.batch_norm on each slice, for a batch that does not divide, forward and dx."""
    torch.manual_seed(1)
    x = (torch.randn(3 * ghost_batch_size + 5, 16, 8, 8) * 3 + 1).to(memory_format=torch.channels_last)
    layer = variant(16, ghost_batch_size)
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    grad = torch.randn_like(x)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = layer(x1)
    y.backward(grad)
    ref = torch.cat(
        [F.batch_norm(p, None, None, layer.weight, layer.bias, True, 0.0, 1e-5) for p in x2.split(ghost_batch_size)]
    )
    ref.backward(grad)
    return max((y - ref).abs().max().item(), (x1.grad - x2.grad).abs().max().item())


def measure(args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per step of the whole network and of its batch-norm layers alone, per variant, taking turns."""
    k = args.ghost_batch_size
    images = torch.randn(args.batch_size, 3, 32, 32).to(memory_format=torch.channels_last)
    labels = torch.randint(0, NUM_CLASSES, (args.batch_size,))
    inputs = bn_inputs(args.batch_size)
    steps = {name: net_step(network(v, k), images, labels, args.bf16) for name, v in VARIANTS.items()}
    bn_steps = {name: bn_step(v, k, inputs) for name, v in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    bn_times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats + 1):
        for name in VARIANTS:
            net_time, bn_time = seconds(steps[name]), seconds(bn_steps[name])
            if repeat:  # the first round is the warm-up
                times[name].append(net_time)
                bn_times[name].append(bn_time)
    return times, bn_times


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--ghost-batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant, after one warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="the whole network's step under bf16 autocast")
    parser.add_argument("--results", type=Path, help="also append the figures as one JSON line (with the machine)")
    args = parser.parse_args(argv)
    source = provenance("ghost_bn_speed.py", argv)  # the code and machine as the run starts
    torch.set_num_threads(args.threads)
    times, bn_times = measure(args)
    base = statistics.median(times["plain BN"])
    precision = "bf16 autocast" if args.bf16 else "fp32"
    shape = f"batch {args.batch_size}, slices of {args.ghost_batch_size}"
    print(f"{shape}, {args.threads} threads, {args.repeats} steps, {precision}")
    print(
        f"{'variant':<14}{'net s median':>14}{'(min-max)':>14}{'images/s':>10}{'vs plain':>10}"
        f"{'BN layers s':>13}{'max err':>10}"
    )
    figures = {}
    for name, variant in VARIANTS.items():
        t, bn = statistics.median(times[name]), statistics.median(bn_times[name])
        err = None if variant is None else max_error(variant, args.ghost_batch_size)
        spread = f"{min(times[name]):.2f}-{max(times[name]):.2f}"
        shown = "-" if err is None else f"{err:.1e}"
        print(f"{name:<14}{t:>14.2f}{spread:>14}{args.batch_size / t:>10.1f}{t / base:>10.3f}{bn:>13.3f}{shown:>10}")
        figures[name] = {"step_s": [round(x, 3) for x in sorted(times[name])], "median_s": round(t, 3)}
        figures[name] |= {"over_plain": round(t / base, 3), "bn_layers_s": round(bn, 3), "max_error": err}
    if args.results:
        settings = {k: getattr(args, k) for k in ("batch_size", "ghost_batch_size", "repeats", "threads", "bf16")}
        append(args.results, source | settings | {"variants": figures})


if __name__ == "__main__":
    main()
