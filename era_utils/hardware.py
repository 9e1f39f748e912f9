"""Where and how a run computes: the GPU or the CPU, the precision each runs fastest at, and Lightning's own check
of the hardware flags before any minutes are spent."""

import logging

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from era_utils.train_config import ConfigError, TrainConfig


def uses_gpu(cfg: TrainConfig) -> bool:
    """Whether the run trains on a CUDA GPU."""
    return cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())


def device_for(cfg: TrainConfig) -> torch.device:
    """The GPU when the run trains on one, else the CPU: where the LR finder and the test report run."""
    return torch.device("cuda" if uses_gpu(cfg) else "cpu")


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bf16 on this CPU (on x86: AVX-512; PyTorch's own check).

    Where it does, bf16 autocast trained 1.85x faster than fp32; on an AVX2-only CPU about 13x slower, 2.8 against
    36.0 images/s (benchmarks/results/train_throughput.jsonl, README "Performance").
    """
    try:  # a private op of PyTorch's (its tests use it); without it, fp32 is the safe answer
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def gpu_has_native_bf16() -> bool:
    """Whether the GPU has bf16 units (NVIDIA's from compute capability 8.0, Ampere, on); older ones, such as
    Colab's T4 (7.5), run bf16 emulated."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def computes_in_bf16_on_cpu(precision: str) -> bool:
    """Whether a precision computes in bf16 on the CPU: Lightning switches fp16 mixed precision there to bf16-mixed."""
    return precision.startswith("bf16") or precision in ("16-mixed", "16")


def default_precision(cfg: TrainConfig) -> str:
    """fp16 mixed precision on GPU; bf16 autocast on a CPU that runs it fast, else fp32."""
    if cfg.precision:
        if cfg.precision.startswith("bf16") and uses_gpu(cfg) and not gpu_has_native_bf16():
            rank_zero_warn(
                f"--precision {cfg.precision}: this GPU has no native bf16 (NVIDIA's from compute capability 8.0, "
                "Ampere; Colab's T4 is 7.5) and runs it emulated: 16-mixed is its fast precision"
            )
        if computes_in_bf16_on_cpu(cfg.precision) and not uses_gpu(cfg) and not cpu_has_fast_bf16():
            rank_zero_warn(f"--precision {cfg.precision}: this CPU runs bf16 about 13x slower than fp32 (32-true)")
        return cfg.precision
    if uses_gpu(cfg):
        return "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


def hardware_settings(cfg: TrainConfig) -> dict:
    """The Trainer's accelerator, devices, strategy, nodes and precision."""
    devices = int(cfg.devices) if str(cfg.devices).isdigit() else cfg.devices
    return {
        "accelerator": cfg.accelerator,
        "devices": devices,
        "strategy": cfg.strategy,
        "num_nodes": cfg.num_nodes,
        "precision": default_precision(cfg),
    }


def check_hardware_settings(cfg: TrainConfig) -> int:
    """Lightning's own checks of the hardware settings, run now rather than after the LR finder's minutes; and
    with several processes, a max LR given rather than found by each. Returns how many processes will train."""
    settings = hardware_settings(cfg)
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # the probe Trainer would print "GPU available: ..." a second time
    try:
        probe = L.Trainer(
            **settings, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
        )
    except (MisconfigurationException, ImportError, TypeError, ValueError) as err:  # ImportError: tpu, no torch_xla
        flags = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in settings.items())
        raise ConfigError(f"Lightning refuses {flags}: {err}") from None
    finally:
        lightning_log.setLevel(level)
    if probe.world_size > 1 and cfg.max_lr is None and not cfg.resume:
        raise ConfigError(
            f"--max-lr finder cannot train {probe.world_size} processes: each would run its own LR finder and "
            f"could train with another max LR; give a number (the recipe's: {TrainConfig.max_lr:g})"
        )
    return probe.world_size
