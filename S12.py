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
#
# **About the outputs below.** They are the committed run's: 24 epochs on a 2-core CPU with fast bf16 (AVX-512,
# no GPU), 1 h 23 min, reading a JPEG copy of CIFAR-10 (`papermill S12.ipynb … -p DATA_DIR ../shared/data/cifar10-jpeg
# -p MAX_LR 0.01`, with ghost batch norm over 32-image slices, then given as `OVERRIDES`, and the alternating flip,
# weight decay and label smoothing 0.2; all four are now the defaults), which
# scores about 3.5 points below the original images; a Colab run downloads the original images and trains on a GPU
# in fp16, so its numbers will differ. The run is seeded (`seed=42`), so a re-run on the same CPU repeats it (on a
# GPU, cuDNN may pick non-deterministic convolution kernels, so two GPU runs can differ slightly).

# %% [markdown]
# ## Parameters
# Change these, then run all; headless, papermill sets them (`-p NAME VALUE`).
#
# | name | what it does |
# |---|---|
# | `SMOKE` | `True`: one epoch on 20 images per class, a few minutes on a CPU, to check that every cell runs (its accuracies mean nothing); CI runs the notebook so |
# | `EPOCHS` | training epochs (OneCycle fits its warm-up and decay into them) |
# | `DATA_DIR` | `None` downloads CIFAR-10 into `data/` (Colab); or an image folder with `train/<class>/` and `test/<class>/`, such as `../shared/data/cifar10-jpeg` |
# | `OUT` | where figures, logs, checkpoints and mistakes go, and the Space's files (`OUT/space_app`). `"."` is the repository: a local run **replaces its committed results and the Space's model** (`"runs/mine"` keeps them); in Colab it writes into the clone |
# | `MAX_LR` | OneCycle's peak LR: 0.01, the committed run's, read off the LR finder's plot; `None` takes the finder's own suggestion |
# | `OVERRIDES` | any other `TrainConfig` field, e.g. `{"ema_decay": 0.99, "flip": "random"}` (headless: `-y '{OVERRIDES: {ema_decay: 0.99}}'`); also `weight_decay`, `label_smoothing`, `ema_decay`, `pct_start`, `batch_size`, `seed`; all: `python -m era_utils.train --help` |
# | `REPO_URL` | Colab only: this repository's GitHub URL, to clone |

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
# In Colab (choose *Runtime → Change runtime type → GPU* first) this clones the repository, installs its
# requirements (a minute or two) and works in the clone, so the run's figures, weights and app files land in the
# repository as they do locally; elsewhere the package is already importable from the repository root.
# `requirements.txt` accepts any torch 2.x from 2.4 and torchvision from 0.19, so pip keeps Colab's own CUDA builds
# and adds what Colab lacks (Lightning, torchmetrics, grad-cam, torch-lr-finder). Should Colab ever ask to restart
# the session after the install, restart and run all again: the clone is reused. Without a GPU the cell stops Run
# all (24 epochs on Colab's CPU would take many hours), unless `SMOKE = True`.

# %%
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

if importlib.util.find_spec("era_utils") is None and "google.colab" in sys.modules:
    if "OWNER/REPO" in REPO_URL:
        raise SystemExit("Set REPO_URL in the parameters cell to this repository's GitHub URL, then run all again.")
    for command in (
        ["git", "clone", "--depth", "1", REPO_URL, "/content/S12"],
        [sys.executable, "-m", "pip", "install", "-q", "-r", "/content/S12/requirements.txt"],
    ):
        if command[0] == "git" and Path("/content/S12").is_dir():  # cloned already, before a runtime restart
            continue
        done = subprocess.run(command, capture_output=True, text=True)  # a child's output never reaches the cell
        if done.returncode:
            raise SystemExit(f"{' '.join(command[:5])} failed:\n{done.stdout}{done.stderr}")
    sys.path.insert(0, "/content/S12")
    os.chdir("/content/S12")  # so OUT = "." is the repository, as on a local run
    import torch

    if not torch.cuda.is_available() and not SMOKE:
        raise SystemExit(
            "No GPU: 24 epochs on Colab's CPU would take many hours. Runtime > Change runtime type > GPU, then run "
            "all again (or set SMOKE = True to check every cell on the CPU in a few minutes)."
        )

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
# a horizontal flip and one 8×8 cutout, then CIFAR mean/std normalization; test images are only normalized. The flip
# alternates (airbench's): each image is mirrored at random in the first epoch and the other way round in every next.
# In the figure, the grey squares are the cutouts (filled with the mean colour) and mirrored strips at an edge come
# from the reflect padding.

# %%
dm = build_datamodule(cfg)
print(f"train: {dm.train_split.images.shape}, test: {dm.test_split.images.shape}, classes: {', '.join(CLASS_NAMES)}")
save_samples(dm, cfg.images_dir / "augmented_samples.png")
display(Image(filename=cfg.images_dir / "augmented_samples.png"))

# %% [markdown]
# ## The network
# Page's ResNet-9: prep 64 → layer1 128 (+ residual block) → layer2 256 → layer3 512 (+ residual block) → max pool 4 →
# linear 10. Its logits are scaled by 0.125 (no parameters). With the default `ghost_batch_size` its batch norms are
# ghost batch norms (`GhostBatchNorm2d`): in training each normalises 32-image slices of the batch on their own; at
# inference they are ordinary batch norms, with the same parameters and buffers, so the exported weights load into a
# plain network.

# %%
net = build_net(cfg)
print(net)
print(f"parameters: {sum(p.numel() for p in net.parameters()):,}")

# %% [markdown]
# ## LR finder
# Leslie Smith's range test: from the untrained network, train on up to 200 batches while the learning rate grows
# exponentially from 1e-7 to 10, recording the smoothed loss, and stop once the loss diverges; the weights are
# restored afterwards. Reading the plot: the loss is flat while the LR is too small to matter, falls while it is
# useful, is lowest between 2e-2 and 5e-2 and explodes past 1. torch-lr-finder's suggestion (the title's) is the
# point of steepest descent, 1.05e-3 here: a cautious peak, not tried at 24 epochs. The run uses `MAX_LR` = 0.01
# instead, a half to a fifth of the loss minimum and still on the falling part of the curve, the usual kind of
# OneCycle peak; `MAX_LR = None` trains with the suggestion. The finder runs either way, for this plot (6½ minutes
# on the committed run's CPU). The library's line `See the graph with {finder_name}.plot()` can be ignored.

# %%
finder = run_lr_finder(cfg, net, dm)
display(Image(filename=finder.plot_path))
max_lr = MAX_LR if MAX_LR is not None else finder.suggested_lr
print(f"suggested: {finder.suggested_lr:.3e}; OneCycle max LR used: {max_lr:.3e}")

# %% [markdown]
# ## Training
# AdamW (weight decay on conv/linear weights only), OneCycleLR stepped every batch (linear warm-up over the first 5/24
# of the steps, then linear decay), cross-entropy with label smoothing 0.2, an EMA of the weights, batch 512, ghost
# batch norm over 32-image slices. The validation set is the 10,000-image test split; nothing is selected on it within a
# run (the last epoch is the model), but recipes are compared across runs by the same test accuracy, so read small
# differences between recipes as optimistic. The committed run took about 3 min 5 s per epoch on its CPU. Lightning's
# messages below are expected: the log and checkpoint folders' notices mean this run's files replace earlier ones
# (nothing is resumed without `resume=True`), and `Total FLOPs: 0` only means Lightning did not count them.

# %%
trainer, lit = fit(cfg, net, dm, max_lr)

# %% [markdown]
# ## Training log and curves
# One row per epoch from Lightning's CSV log (validation columns use the EMA weights), counted from 1; Lightning's
# progress bar above counts from 0, so its `Epoch 23` is epoch 24 here. `train_*` averages the epoch's batches, on
# augmented images, with the weights of each step; `val_*` is measured at the epoch's end on clean test images with
# the averaged weights, which is why validation is above training for the first 18 epochs. Later, training accuracy
# climbs to 96.7% while validation rises more slowly, to 91.3%: the stronger weight decay, label smoothing and
# ghost batch norm hold back the overfitting the first run showed (98.2% against a flat 90.6%). With label
# smoothing 0.2 the training loss cannot fall below about 0.87.

# %%
history = epoch_table(Path(trainer.logger.log_dir) / "metrics.csv")
plots.training_curves(history, cfg.images_dir / "training_curves.png")
display(Image(filename=cfg.images_dir / "training_curves.png"))
history.style.format(
    {"lr": "{:.2e}", "train_loss": "{:.4f}", "val_loss": "{:.4f}", "train_acc": "{:.2%}", "val_acc": "{:.2%}"}
)

# %% [markdown]
# ## Test accuracy
# Lightning's test loop (autocast precision), then an fp32 pass over the 10,000 test images: plain, with flip
# test-time augmentation (the mean of the logits of the image and its mirror image), and with airbench's flip +
# translation TTA (six views: half the flip TTA of the image, half that of the image shifted one pixel up-left and
# down-right). The fp32 figures are the ones the README, `model.json` and the Space quote; autocast rounding (bf16
# in the committed CPU run, fp16 on a GPU) explains the last digit Lightning's table differs by. The confusion
# matrix reads by rows (true class) and columns (prediction).

# %%
trainer.test(lit, datamodule=dm)
preds, metrics = report(cfg, lit.net, dm)
print(f"test accuracy (fp32, single view): {metrics['accuracy']:.2%} of {metrics['n']:,}")
print(f"test accuracy (fp32, flip TTA):    {metrics['accuracy_tta']:.2%}")
print(f"test accuracy (fp32, flip + translation TTA, 6 views): {metrics['accuracy_tta_translate']:.2%}")
display(Image(filename=cfg.images_dir / "confusion_matrix.png"))
display(Image(filename=cfg.images_dir / "per_class_accuracy.png"))

# %% [markdown]
# ## Misclassified images
# The most confident mistakes, captioned true → predicted (confidence); also written as PNG files
# to `misclassified_images/`. Most are look-alike pairs, the largest cells off the confusion matrix's diagonal
# (bird ↔ deer, dog ↔ cat, truck ↔ automobile, bird → airplane). A wrong answer at 89% is a reminder that the
# softmax's confidence is not a calibrated probability (label smoothing 0.2 keeps it from going much higher).

# %%
display(Image(filename=cfg.images_dir / "misclassified.png"))
sorted(p.name for p in (cfg.out_path / "misclassified_images").glob("*.png"))[:10]

# %% [markdown]
# ## Grad-CAM
# Where the network looked for the class it predicted (here the wrong one), on the first 10 mistakes, at layer1's
# residual block (16×16 feature map) and at layer3's (4×4, coarse but closest to the decision: each cell covers a
# quarter of the image's side, so its maps are smooth blobs). Red marks the regions that raised the class's score.
# Grad-CAM shows where the evidence was, not why; passing `preds.labels[idx]` instead of `predicted` shows the
# true class's map.

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
# sha256), one example per class, and the misclassified store, into `space_app/`. To try the app:
# `pip install -r space_app/requirements.txt && python space_app/app.py`, then open http://127.0.0.1:7860.
#
# **In Colab** all of this is in `/content/S12`, which is deleted with the runtime: keep it before you leave.
# Download it from a new cell: `!cd /content/S12 && zip -qr /content/s12_run.zip space_app images
# misclassified_images logs`, then `from google.colab import files; files.download("/content/s12_run.zip")`
# (the notebook itself: *File → Download*). Colab's browser cannot open the app's http://127.0.0.1:7860: install
# its requirements as above (`!pip install -q -r space_app/requirements.txt`; it may upgrade packages this session
# has loaded), then run `!GRADIO_SHARE=True python space_app/app.py` for a temporary public `gradio.live` link (stop
# the cell to end it). To publish this run's model to your Space, upload the
# folder itself (the README's *Publishing the Space* archives the committed `space_app/`, the old model):
# `from huggingface_hub import create_repo, notebook_login, upload_folder`, `notebook_login()` (a token with write
# access), `create_repo("USER/SPACE", repo_type="space", space_sdk="gradio", exist_ok=True)`, then
# `upload_folder(repo_id="USER/SPACE", repo_type="space", folder_path="space_app", ignore_patterns="**/__pycache__/**")`.

# %%
weights = export_artifacts(cfg, lit.net, dm, preds, max_lr)
print(weights, f"{weights.stat().st_size / 1e6:.1f} MB")
print((weights.parent / "model.json").read_text()[:600])
