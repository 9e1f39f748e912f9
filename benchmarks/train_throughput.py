"""Training images/s: a bare PyTorch loop against the Lightning pipeline, and fp32 against bf16 autocast.

Both loops run at the precision `era_utils.train` picks for this CPU (bf16 autocast where oneDNN runs
it fast, else fp32), with the same network, batch size and data module (albumentations, worker
processes); the first `--warmup` steps of each run are not timed. The bare loop is then timed at the
other precision too. Prints one JSON object.

    python benchmarks/train_throughput.py --data-dir ../shared/data/cifar10-jpeg \
        --results benchmarks/results/train_throughput.jsonl

On a CPU without fast bf16 the bf16 loop is about 13x slower than fp32: `--steps 3 --warmup 1` keeps it short.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import lightning as L
import torch
from results_log import append, provenance
from torch import nn

from era_utils.config import NUM_CLASSES
from era_utils.data import CIFAR10DataModule
from era_utils.hardware import default_precision
from era_utils.lit_module import LitClassifier
from era_utils.model import CustomResNet
from era_utils.train_config import TrainConfig


def bare_loop(dm: CIFAR10DataModule, steps: int, warmup: int, bf16: bool) -> float:
    """Images/s of a hand-written loop: autocast, channels_last, AdamW + OneCycle, like the module."""
    torch.manual_seed(0)
    net = CustomResNet(NUM_CLASSES, logit_scale=TrainConfig.logit_scale).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=TrainConfig.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=TrainConfig.max_lr, total_steps=steps + warmup + 1
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=TrainConfig.label_smoothing)
    seen, start = 0, 0.0
    for i, (images, labels) in enumerate(dm.train_dataloader()):
        if i == warmup:
            seen, start = 0, time.perf_counter()
        if i == warmup + steps:
            break
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = criterion(net(images.contiguous(memory_format=torch.channels_last)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        seen += len(labels)
    return seen / (time.perf_counter() - start)


class StepTimer(L.Callback):
    """Times training batches after the warm-up, from batch start to batch end."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.seen, self.start, self.stop = warmup, 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.seen += len(batch[1])
            self.stop = time.perf_counter()


def lightning_pipeline(dm: CIFAR10DataModule, steps: int, warmup: int, precision: str) -> float:
    """Images/s of `Trainer.fit` with the project's LightningModule; data loading included."""
    torch.manual_seed(0)
    timer = StepTimer(warmup)
    lit = LitClassifier(
        CustomResNet(NUM_CLASSES, logit_scale=TrainConfig.logit_scale), NUM_CLASSES, max_lr=TrainConfig.max_lr
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=warmup + steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(lit, train_dataloaders=dm.train_dataloader())
    return timer.seen / (timer.stop - timer.start)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="offline image folder; default: torchvision download")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--results", type=Path, help="also append the JSON line (with command and machine) here")
    args = parser.parse_args(argv)
    source = provenance("train_throughput.py", argv)  # the code and machine as the run starts
    dm = CIFAR10DataModule(args.data_dir, batch_size=args.batch_size, num_workers=args.num_workers)
    dm.setup()
    run = dict(steps=args.steps, warmup=args.warmup)
    precision = default_precision(TrainConfig(accelerator="cpu"))
    fast_bf16 = precision.startswith("bf16")
    bare = bare_loop(dm, bf16=fast_bf16, **run)
    lightning = lightning_pipeline(dm, precision=precision, **run)
    bare_other = bare_loop(dm, bf16=not fast_bf16, **run)
    bf16, fp32 = (bare, bare_other) if fast_bf16 else (bare_other, bare)
    result = {
        "batch_size": args.batch_size,
        "timed_steps": args.steps,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fast_bf16": fast_bf16,
        "default_precision": precision,
        "bare_images_per_s": round(bare, 1),
        "lightning_images_per_s": round(lightning, 1),
        "lightning_over_bare": round(lightning / bare, 3),
        "bare_bf16_images_per_s": round(bf16, 1),
        "bare_fp32_images_per_s": round(fp32, 1),
        "bf16_over_fp32": round(bf16 / fp32, 3),
    }
    if args.results:
        append(args.results, source | result)
    else:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
