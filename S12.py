# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # S12: a ResNet-9 for CIFAR-10 with PyTorch Lightning
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/REPO/blob/main/S12.ipynb)
#
# This notebook drives the `era_utils` package end to end: data, LR finder, 24 epochs of Lightning
# training, curves, test accuracy, misclassified images, Grad-CAM, and the export the Gradio Space
# loads. Every cell calls one function of the package and shows its result.

# %% [markdown]
# ## Parameters
# papermill overrides these. `SMOKE = True` trains on 20 images per class for one epoch (CI runs the
# notebook that way). `DATA_DIR = None` downloads CIFAR-10 (Colab); offline, point it at an image
# folder such as `../shared/data/cifar10-jpeg`. `MAX_LR = 0.01` is the committed run's OneCycle peak, read off
# the LR finder's plot (see the README); `None` takes the finder's own suggestion instead.
# `OVERRIDES` sets any other `TrainConfig` field, e.g. `{"weight_decay": 0.2, "label_smoothing": 0.2}`
# (headless: `-y '{OVERRIDES: {weight_decay: 0.2}}'`); empty keeps the package defaults.

# %% tags=["parameters"]
SMOKE = False
EPOCHS = 24
DATA_DIR = None
OUT = "."
MAX_LR = 0.01
OVERRIDES = {}
REPO_URL = "https://github.com/OWNER/REPO.git"  # this repository on GitHub (used in Colab only)

# %% [markdown]
# ## Setup
# In Colab this clones the repository, installs its requirements and works in the clone, so the
# run's figures, weights and app files land in the repository as they do locally; elsewhere the
# package is already importable from the repository root.

# %%
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

if importlib.util.find_spec("era_utils") is None and "google.colab" in sys.modules:
    if "OWNER/REPO" in REPO_URL:
        raise SystemExit("Set REPO_URL in the parameters cell to this repository's GitHub URL, then run all again.")
    if not Path("/content/S12").is_dir():  # cloned already, before a runtime restart
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, "/content/S12"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "/content/S12/requirements.txt"], check=True)
    sys.path.insert(0, "/content/S12")
    os.chdir("/content/S12")  # so OUT = "." is the repository, as on a local run

# %%
import torch
from IPython.display import Image, display

from era_utils import plots
from era_utils.config import CLASS_NAMES
from era_utils.gradcam import gradcam_grid
from era_utils.history import epoch_table
from era_utils.misclassified import caption, confident_mistakes
from era_utils.train import (
    TrainConfig,
    build_datamodule,
    build_net,
    default_precision,
    export_artifacts,
    fit,
    report,
    run_lr_finder,
    save_samples,
)

cfg = TrainConfig(
    data_dir=DATA_DIR,
    out=OUT,
    epochs=1 if SMOKE else EPOCHS,
    max_lr=MAX_LR,
    per_class=20 if SMOKE else None,
    lr_find_iters=20 if SMOKE else 200,
    app_dir=str(Path(OUT) / "space_app"),
    **OVERRIDES,
)
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, precision: {default_precision(cfg)}")
cfg

# %% [markdown]
# ## Data
# Both splits are decoded once into uint8 arrays. Training images get reflect-pad 4 + random 32×32 crop,
# a horizontal flip and one 8×8 cutout, then CIFAR mean/std normalization; test images are only normalized.

# %%
dm = build_datamodule(cfg)
print(f"train: {dm.train_split.images.shape}, test: {dm.test_split.images.shape}, classes: {', '.join(CLASS_NAMES)}")
save_samples(dm, cfg.images_dir / "augmented_samples.png")
display(Image(filename=cfg.images_dir / "augmented_samples.png"))

# %% [markdown]
# ## The network
# Page's ResNet-9: prep 64 → layer1 128 (+ residual block) → layer2 256 → layer3 512 (+ residual block)
# → max pool 4 → linear 10. Its logits are scaled by 0.125 (no parameters).

# %%
net = build_net(cfg)
print(net)
print(f"parameters: {sum(p.numel() for p in net.parameters()):,}")

# %% [markdown]
# ## LR finder
# An exponential range test from 1e-7 to 10 over the training batches with the training optimizer
# (AdamW); the suggestion is where the smoothed loss falls fastest. The network's weights are restored
# afterwards. The max LR used for OneCycle is `MAX_LR` when given, else this suggestion.

# %%
finder = run_lr_finder(cfg, net, dm)
display(Image(filename=finder.plot_path))
max_lr = MAX_LR if MAX_LR is not None else finder.suggested_lr
print(f"suggested: {finder.suggested_lr:.3e}; OneCycle max LR used: {max_lr:.3e}")

# %% [markdown]
# ## Training
# AdamW (weight decay on conv/linear weights only), OneCycleLR stepped every batch (linear warm-up over
# the first 5/24 of the steps, then linear decay), cross-entropy with label smoothing 0.1, an EMA of the
# weights, batch 512. The validation set is the 10,000-image test split; nothing is selected on it.

# %%
trainer, lit = fit(cfg, net, dm, max_lr)

# %% [markdown]
# ## Training log and curves
# One row per epoch from Lightning's CSV log (validation columns use the EMA weights), counted from 1; Lightning's
# progress bar above counts from 0, so its `Epoch 23` is epoch 24 here.

# %%
history = epoch_table(Path(trainer.logger.log_dir) / "metrics.csv")
plots.training_curves(history, cfg.images_dir / "training_curves.png")
display(Image(filename=cfg.images_dir / "training_curves.png"))
history.style.format(
    {"lr": "{:.2e}", "train_loss": "{:.4f}", "val_loss": "{:.4f}", "train_acc": "{:.2%}", "val_acc": "{:.2%}"}
)

# %% [markdown]
# ## Test accuracy
# Lightning's test loop (autocast precision), then an fp32 pass over the 10,000 test images, plain
# and with flip test-time augmentation (mean of the logits of the image and its mirror image).

# %%
trainer.test(lit, datamodule=dm)
preds, metrics = report(cfg, lit.net, dm)
print(f"test accuracy (fp32, single view): {metrics['accuracy']:.2%} of {metrics['n']:,}")
print(f"test accuracy (fp32, flip TTA):    {metrics['accuracy_tta']:.2%}")
display(Image(filename=cfg.images_dir / "confusion_matrix.png"))
display(Image(filename=cfg.images_dir / "per_class_accuracy.png"))

# %% [markdown]
# ## Misclassified images
# The most confident mistakes, captioned true → predicted (confidence); also written as PNG files
# to `misclassified_images/`.

# %%
display(Image(filename=cfg.images_dir / "misclassified.png"))
sorted(p.name for p in (cfg.out_path / "misclassified_images").glob("*.png"))[:10]

# %% [markdown]
# ## Grad-CAM
# Where the network looked for the class it predicted, on the first 10 mistakes, at layer1's residual
# block (16×16 feature map) and at layer3's (4×4, coarse but closest to the decision).

# %%
idx = confident_mistakes(preds.labels, preds.probs, 10)
images = torch.stack([dm.test_dataset()[i][0] for i in idx])
predicted = preds.probs[idx].argmax(1)
captions = [caption(preds.labels[i], p, preds.probs[i].max()) for i, p in zip(idx, predicted)]
gradcam_grid(
    lit.net, images, captions, ["layer1.residual", "layer3.residual"], predicted, 0.5, cfg.images_dir / "gradcam.png"
)
display(Image(filename=cfg.images_dir / "gradcam.png"))

# %% [markdown]
# ## Export for the Space
# safetensors weights and a JSON (classes, mean/std, image size, layers, test accuracy, training config,
# sha256), one example per class, and the misclassified store, into `space_app/`.

# %%
weights = export_artifacts(cfg, lit.net, dm, preds, max_lr)
print(weights, f"{weights.stat().st_size / 1e6:.1f} MB")
print((weights.parent / "model.json").read_text()[:600])
