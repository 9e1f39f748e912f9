"""The LightningModule: owns the loss, metrics, optimizer and OneCycle schedule, not the network; and the check
that a resumed run keeps its checkpoint's recipe."""

from collections.abc import Mapping

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from era_utils.train_config import TrainConfig


class CheckpointMismatchError(ValueError):
    """A checkpoint to resume was trained with other settings (loss, optimizer, schedule, data, EMA) than this run's."""


MISMATCH = "cannot resume with other settings than the checkpoint's; "


def differences(saved: Mapping, now: Mapping) -> list[str]:
    """Each setting of `now` that `saved` holds with another value, as "name: X in the checkpoint, Y now"."""
    return [f"{k}: {saved[k]} in the checkpoint, {v} now" for k, v in now.items() if k in saved and saved[k] != v]


class RecipeCheck(L.Callback):
    """Keeps the training settings that live outside the LightningModule (epochs, batch size, data order and
    augmentation, ghost batch norm, the EMA, the logit scale) in the checkpoint, and refuses to resume from one
    saved with others: the run would go on with another recipe than the one it started with, silently."""

    def __init__(self, **settings: object) -> None:
        self.settings = settings

    def state_dict(self) -> dict:
        return dict(self.settings)

    def load_state_dict(self, state_dict: dict) -> None:
        changed = differences(state_dict, self.settings)
        if changed:
            raise CheckpointMismatchError(MISMATCH + "; ".join(changed))


def flip_tta_logits(net: nn.Module, images: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the logits for the images and their horizontal mirror images (`logits`: the images' own, if known)."""
    logits = net(images) if logits is None else logits
    return (logits + net(torch.flip(images, dims=[3]))) / 2


def param_groups(net: nn.Module, weight_decay: float) -> list[dict]:
    """Decay conv and linear weights only; batch-norm parameters and biases are left alone."""
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class LitClassifier(L.LightningModule):
    """Cross-entropy (with label smoothing) + AdamW + OneCycleLR stepped every batch."""

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        max_lr: float = 0.01,
        weight_decay: float = TrainConfig.weight_decay,
        label_smoothing: float = TrainConfig.label_smoothing,
        pct_start: float = TrainConfig.pct_start,
        div_factor: float = 100.0,
        final_div_factor: float = 100.0,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc_tta = MulticlassAccuracy(num_classes, average="micro")
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def _step(
        self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, acc: MulticlassAccuracy
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and logits of a batch; logs the stage's loss and accuracy."""
        images, labels = batch
        logits = self(images)
        loss = self.criterion(logits, labels)
        acc(logits, labels)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss, logits

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_acc)[0]

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        _, logits = self._step(batch, "test", self.test_acc)
        images, labels = batch
        self.test_acc_tta(flip_tta_logits(self, images, logits), labels)
        self.log("test/acc_tta", self.test_acc_tta, on_step=False, on_epoch=True)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """On resume, refuse a checkpoint whose loss, optimizer or OneCycle length differ from this run's:
        Lightning would restore its optimizer and schedule, and the run would follow neither recipe."""
        saved = checkpoint.get("hyper_parameters", {})
        changed = differences(saved, self.hparams)
        schedulers = checkpoint.get("lr_schedulers") or [{}]
        saved_steps = schedulers[0].get("total_steps")
        if self._trainer is not None and saved_steps is not None:
            steps = int(self.trainer.estimated_stepping_batches)
            if saved_steps != steps:
                changed.append(
                    f"OneCycle steps (epochs x batches per epoch): {saved_steps} in the checkpoint, {steps} now"
                )
        if changed:
            raise CheckpointMismatchError(MISMATCH + "; ".join(changed))

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        optimizer = torch.optim.AdamW(param_groups(self.net, hp.weight_decay), lr=hp.max_lr / hp.div_factor)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=hp.max_lr,
            total_steps=int(self.trainer.estimated_stepping_batches),
            pct_start=hp.pct_start,
            div_factor=hp.div_factor,
            final_div_factor=hp.final_div_factor,
            anneal_strategy="linear",
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
