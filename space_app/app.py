"""The Gradio Space: top-k predictions, heatmaps (six CAM methods, any class, each with a faithfulness
score), the model's most confident mistakes explained from both sides, and its test metrics.

python app.py   # http://127.0.0.1:7860; GRADIO_SERVER_PORT / GRADIO_SERVER_NAME work as usual
python app.py --model-dir ../runs/full   # the model a training run exported, instead of the committed one

Every handler checks its inputs itself (events run with preprocess=False), so the API refuses what
the sliders would never send: a bad value gets a gr.Error naming the limits, and the server goes on.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr
import numpy as np
from explain import DEFAULT_METHOD, HIDDEN_SHARE, METHODS
from gradio.utils import get_upload_folder, is_in_or_equal
from inference import (
    APP_DIR,
    EXAMPLES_DIR,
    FORMATS_TEXT,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    STORE_NAME,
    Classifier,
    InputError,
    MisclassifiedStore,
    ModelFilesError,
    enlarge,
    layer_label,
    open_image,
    overlay,
    parse_bool,
    parse_choice,
    parse_float,
    parse_int,
)

log = logging.getLogger("space_app")
T = TypeVar("T")

GAP = 8  # white pixels between a mistake and its heatmaps
TOP = "top"  # the "class to explain" value meaning: the top predicted classes
# Tiny uploads (a 32x32 example) fill the upload box, with visible pixels instead of a blur.
CSS = """
#upload img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
#model-input img { image-rendering: pixelated; }
/* Gallery captions go under the image, whole (Gradio lays them over its bottom, cut at 80% of the width). */
.captioned .thumbnail-item { aspect-ratio: auto; height: auto; display: flex; flex-direction: column; }
.captioned .thumbnail-item > img { height: auto; }
.captioned .caption-label { position: static; max-width: 100%; white-space: normal; border: none; }
.captioned .grid-wrap.fixed-height { min-height: 0; max-height: none; overflow-y: visible; }
.captioned .grid-container { padding-top: var(--size-6); }  /* clear of the gallery's label */
/* Counts and percentages right-aligned (Gradio 6 lays each cell out as a flex box); class names stay left. */
:is(#confusion, #per-class) th:not(:first-child) .cell-wrap { justify-content: flex-end; }
:is(#confusion, #per-class) .body-cell:not(:first-child) .text { text-align: right; }
/* Phones: the gallery's label wraps to two lines, and a mistake with its two heatmaps needs the whole width. */
@media (max-width: 640px) {
  .captioned .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; padding-top: 4.5rem; }
  .captioned .grid-container { grid-auto-rows: auto !important; grid-template-rows: none !important; }
  #misclassified-gallery .grid-container { grid-template-columns: minmax(0, 1fr) !important; }
}
"""


def _image_path(value: Any) -> str:
    """The uploaded file's path, from the API's FileData dict (preprocess=False) or a plain path."""
    if value is None or value == "":
        raise InputError("No image: upload one or click an example first.")
    if isinstance(value, dict):
        if value.get("path"):
            return str(value["path"])
        if str(value.get("url") or "").startswith("data:"):
            raise InputError("Send the image as an uploaded file (e.g. gradio_client.handle_file), not a data URL.")
        raise InputError("The image payload has no file path: upload the image as a file.")
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    raise InputError(f"The image must be an uploaded file, got {type(value).__name__}.")


def _check_received(path: str, examples_dir: Path) -> None:
    """A request's image must be a file Gradio received (its upload folder) or one of the app's examples.

    Events run with preprocess=False, so Gradio does not check a payload without its FileData "meta": an API
    caller could name any file on the server, to have it classified, read back as the model input, or probed."""
    if not any(is_in_or_equal(path, root) for root in (get_upload_folder(), examples_dir)):
        raise InputError("The image must be a file uploaded to this app (gradio_client.handle_file), not a path.")


def _clear_if_removed(image: Any) -> tuple[Any, ...]:
    """The image's outputs (classes, model input, heatmaps) emptied once it is gone; left alone for a new image,
    whose own events fill them."""
    return (None, None, []) if image is None else (gr.skip(),) * 3


def _captioned_gallery(label: str, columns: int, elem_id: str) -> gr.Gallery:
    """A hidden gallery of PNGs shown whole, their captions styled by the CSS's `captioned` class."""
    return gr.Gallery(
        label=label,
        visible=False,
        columns=columns,
        rows=1,  # more rows are added as needed; the default reserves an empty second one
        format="png",
        object_fit="contain",
        elem_id=elem_id,
        elem_classes="captioned",
    )


def _side_by_side(panels: list[np.ndarray]) -> np.ndarray:
    """Equal-height uint8 images in a row, GAP white pixels apart."""
    gap = np.full((panels[0].shape[0], GAP, 3), 255, np.uint8)
    row = [panels[0]]
    for panel in panels[1:]:
        row += [gap, panel]
    return np.concatenate(row, axis=1)


def _share(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


# The test-time augmentations model.json's metrics may report, as (key suffix, what its views are).
TTA_VIEWS = (
    ("_tta", "flip test-time augmentation"),
    ("_tta_translate", "flip and one-pixel-shift views"),
)
PER_CLASS_HEADERS = ["class", "test accuracy", "with flip TTA", "with flip + shifts TTA"]


def per_class_rows(metrics: dict[str, Any], classes: list[str]) -> list[list[str]]:
    """[class, test accuracy, with each TTA of PER_CLASS_HEADERS] for each class the metrics cover; [] if none."""
    plain = metrics.get("per_class")
    if not isinstance(plain, dict):
        return []
    columns = [metrics.get(f"per_class{suffix}") for suffix, _ in TTA_VIEWS]
    columns = [column if isinstance(column, dict) else {} for column in columns]
    return [[c, _share(plain.get(c)), *(_share(column.get(c)) for column in columns)] for c in classes if c in plain]


def tta_text(metrics: dict[str, Any]) -> str:
    """E.g. " (91.2% with flip test-time augmentation, 91.5% with flip and ...)"; "" if metrics have no TTA."""
    parts = [f"{_share(metrics[f'accuracy{s}'])} with {views}" for s, views in TTA_VIEWS if f"accuracy{s}" in metrics]
    return f" ({', '.join(parts)})" if parts else ""


def stored_as_text(metrics: dict[str, Any]) -> str:
    """E.g. " stored as JPEG" when the test images were read from an image folder of JPEG files (such a copy scores
    a few points below CIFAR-10's original lossless arrays); "" for the original arrays or an older model.json."""
    file_format = metrics.get("test_files")
    return f" stored as {file_format}" if isinstance(file_format, str) and file_format else ""


def confusion_rows(metrics: dict[str, Any], classes: list[str]) -> list[list[Any]]:
    """The confusion matrix (rows: true class, columns: predicted) with the class in front; [] if absent."""
    matrix = metrics.get("confusion")
    n = len(classes)
    if not (isinstance(matrix, list) and len(matrix) == n and all(isinstance(r, list) and len(r) == n for r in matrix)):
        return []
    return [[c, *(int(v) for v in row)] for c, row in zip(classes, matrix, strict=True)]


def _worst_confusions(confusion: list[list[Any]], classes: list[str], k: int = 3) -> str:
    """E.g. "dog taken for cat (92×), cat taken for dog (79×)": the k largest off-diagonal counts."""
    pairs = [(row[j + 1], row[0], pred) for row in confusion for j, pred in enumerate(classes) if pred != row[0]]
    return ", ".join(f"{true} taken for {pred} ({count}×)" for count, true, pred in sorted(pairs, reverse=True)[:k])


def about_text(metrics: dict[str, Any], classes: list[str]) -> str:
    """The accuracy in words, the most frequent confusions, and a note on what model.json lacks."""
    lines = []
    if "accuracy" in metrics:
        n = f" of the {metrics['n']:,} CIFAR-10 test images" if metrics.get("n") else " of the test images"
        n += stored_as_text(metrics)
        lines.append(f"Test accuracy: **{_share(metrics['accuracy'])}**{n} classified right{tta_text(metrics)}.")
    confusion = confusion_rows(metrics, classes)
    if confusion:
        lines.append(f"The most frequent mistakes: {_worst_confusions(confusion, classes)}.")
    missing = [
        name
        for name, rows in (("per-class accuracy", per_class_rows(metrics, classes)), ("confusion matrix", confusion))
        if not rows
    ]
    if missing:
        lines.append(f"This model's `model.json` has no {' and no '.join(missing)} yet.")
    return "\n\n".join(lines)


FAITHFULNESS_LEGEND = (
    f"**Can you trust a heatmap?** Under each one: the class's probability, then what it becomes when the "
    f"{HIDDEN_SHARE:.0%} of pixels the heatmap highlights most are hidden, and when the {HIDDEN_SHARE:.0%} it "
    "highlights least are hidden (hidden pixels are filled in from their neighbours: ROAD). A heatmap that is "
    "right about the model shows a much larger drop for the first than for the second; similar numbers mean "
    "the map does not show what the model relies on."
)


def _visible(on: bool, n: int) -> tuple[dict[str, Any], ...]:
    return (gr.update(visible=on),) * n


def percent(p: float) -> str:
    """A probability for a visitor: "92%", "3.4%", "<0.1%" (small ones keep a digit, so changes show)."""
    if p >= 0.1:
        return f"{p:.0%}"
    return f"{p:.1%}" if p >= 0.001 else "<0.1%"


def method_line(method: str) -> str:
    """The method's one-line description, for the UI."""
    return f"**{method}**: {METHODS[method].about}" if method in METHODS else ""


# ---------------------------------------------------------------------- the UI's components, for wiring events


@dataclass(frozen=True)
class _Inputs:
    image: gr.Image
    top_k: gr.Slider
    submit: gr.Button
    examples: gr.Examples | None  # None when the Space has no example images


@dataclass(frozen=True)
class _Outputs:
    label: gr.Label
    seen: gr.Image  # what the model saw


@dataclass(frozen=True)
class _CamControls:
    show: gr.Checkbox
    group: gr.Group  # the controls below, hidden until `show` is ticked
    method: gr.Dropdown
    method_about: gr.Markdown
    target: gr.Dropdown
    count: gr.Slider
    layer: gr.Dropdown
    opacity: gr.Slider


@dataclass(frozen=True)
class _MistakeControls:
    show: gr.Checkbox
    count: gr.Slider


@dataclass(frozen=True)
class _Galleries:
    cams: gr.Gallery
    legend: gr.Markdown
    mistakes: gr.Gallery


@dataclass(frozen=True)
class _Ui:
    inputs: _Inputs
    outputs: _Outputs
    cams: _CamControls
    mistakes: _MistakeControls
    galleries: _Galleries

    @property
    def cam_inputs(self) -> list[Any]:
        """The inputs of `SpaceApp.explain`, in its parameters' order."""
        cams = self.cams
        return [self.inputs.image, cams.show, cams.count, cams.layer, cams.opacity, cams.method, cams.target]

    @property
    def cam_outputs(self) -> list[Any]:
        return [self.outputs.seen, self.galleries.cams]

    @property
    def image_outputs(self) -> list[Any]:
        """Everything shown about the current image."""
        return [self.outputs.label, *self.cam_outputs]


class SpaceApp:
    """The loaded model and mistakes, the handlers (callable without a server) and the UI."""

    def __init__(self, app_dir: Path = APP_DIR) -> None:
        self.app_dir = Path(app_dir)
        self.clf = Classifier(self.app_dir)
        size = self.clf.image_size
        store_path = self.app_dir / STORE_NAME
        self.store = (
            MisclassifiedStore.load(store_path, self.clf.classes, size)
            if store_path.is_file()
            else MisclassifiedStore.empty(size)
        )
        examples = self.app_dir / EXAMPLES_DIR
        self.examples = [examples / f"{c}.png" for c in self.clf.classes if (examples / f"{c}.png").is_file()]
        self.max_cams = self.clf.max_k
        self._inputs: OrderedDict[tuple, tuple[np.ndarray, list[str]]] = OrderedDict()
        self._store_masks: dict[tuple[str, str], np.ndarray] = {}
        self._cache_lock = threading.Lock()

    # ------------------------------------------------------------------ shared steps

    def _model_input(self, image: Any) -> tuple[np.ndarray, list[str]]:
        """The 32x32 uint8 input for an upload and the notes about it; the last few are cached because
        predict and explain both need it and big PNGs take a while to decode."""
        path = _image_path(image)
        try:
            stat = os.stat(path)
        except OSError as err:
            raise InputError("The uploaded file could not be read; please upload it again.") from err
        key = (path, stat.st_size, stat.st_mtime_ns)
        with self._cache_lock:
            if key in self._inputs:
                self._inputs.move_to_end(key)
                return self._inputs[key]
        loaded = open_image(path, self.clf.image_size)
        entry = (self.clf.model_input(loaded.image), loaded.notes)
        with self._cache_lock:
            self._inputs[key] = entry
            while len(self._inputs) > 32:
                self._inputs.popitem(last=False)
        return entry

    def _cam_options(
        self, show_cam: Any, count: Any, count_max: int, layer: Any, opacity: Any, method: Any
    ) -> tuple[bool, int, str, float, str]:
        show = parse_bool(show_cam, "Show heatmaps")
        n = parse_int(count, "The number of images", 1, count_max) if count_max else 0
        name = parse_choice(layer, "Grad-CAM layer", list(self.clf.layers))
        alpha = parse_float(opacity, "Heatmap opacity", 0.0, 1.0)
        return show, n, name, alpha, parse_choice(method, "explanation method", list(METHODS))

    # ------------------------------------------------------------------ handlers (also the API)

    def predict(self, image: Any, top_k: Any) -> dict[str, float]:
        """The top-k classes and their probabilities; k is a whole number from 1 to 10."""
        top, notes = self._top_k(image, top_k)
        for note in notes:
            gr.Warning(note)
        return top

    def rerank(self, image: Any, top_k: Any) -> dict[str, float]:
        """`predict` without the notes about the image: for a new k on an image already warned about."""
        return self._top_k(image, top_k)[0]

    def _top_k(self, image: Any, top_k: Any) -> tuple[dict[str, float], list[str]]:
        k = parse_int(top_k, "k (the number of classes shown)", 1, self.clf.max_k)
        x, notes = self._model_input(image)
        probs = self.clf.probabilities(x[None])[0]
        top = np.argsort(-probs, kind="stable")[:k]
        return {self.clf.classes[i]: float(probs[i]) for i in top}, notes

    def explain(
        self,
        image: Any,
        show_cam: Any,
        count: Any,
        layer: Any,
        opacity: Any,
        method: Any = DEFAULT_METHOD,
        class_name: Any = TOP,
    ) -> tuple[np.ndarray, list[tuple[np.ndarray, str]]]:
        """The enlarged 32x32 model input, and heatmaps captioned with their faithfulness: for the
        top-`count` predicted classes, or (`class_name`) for that class beside the top prediction."""
        show, n, name, alpha, method = self._cam_options(show_cam, count, self.max_cams, layer, opacity, method)
        target = parse_choice(class_name, "class to explain", [TOP, *self.clf.classes])
        x, _ = self._model_input(image)  # predict already showed the notes
        if not show:
            return enlarge(x), []
        probs = self.clf.probabilities(x[None])[0]
        order = list(np.argsort(-probs, kind="stable"))
        chosen = order[:n] if target == TOP else list(dict.fromkeys([self.clf.classes.index(target), order[0]]))
        batch = np.repeat(x[None], len(chosen), axis=0)
        masks = self.clf.cam_masks(batch, chosen, name, method=method)
        most, least = self.clf.faithfulness(batch, masks, chosen)
        cams = [
            (overlay(x, masks[i], alpha), self._cam_caption(order.index(c) + 1, c, probs[c], most[i], least[i]))
            for i, c in enumerate(chosen)
        ]
        return enlarge(x), cams

    def _cam_caption(self, rank: int, c: int, prob: float, most: float, least: float) -> str:
        """E.g. "#1 horse 92% · hiding the 20% most highlighted pixels: 31%; the 20% least: 90%"."""
        share = f"{HIDDEN_SHARE:.0%}"
        return (
            f"#{rank} {self.clf.classes[c]} {percent(prob)} · hiding the {share} most highlighted pixels: "
            f"{percent(most)}; the {share} least: {percent(least)}"
        )

    def misclassified(
        self, show: Any, count: Any, show_cam: Any, layer: Any, opacity: Any, method: Any = DEFAULT_METHOD
    ) -> list[tuple[np.ndarray, str]]:
        """The `count` most confident test-set mistakes, captioned "true → predicted (confidence)";
        with heatmaps on, each is followed by the heatmap of the (wrongly) predicted class, then the true one's."""
        visible = parse_bool(show, "Show misclassified images")
        cam, n, name, alpha, method = self._cam_options(show_cam, count, len(self.store), layer, opacity, method)
        if not visible or n == 0:
            return []
        masks = self._masks_for_store(name, method, n) if cam else None
        items = []
        for i in range(n):
            photo = self.store.images[i]
            label, pred = self.clf.classes[self.store.labels[i]], self.clf.classes[self.store.preds[i]]
            caption = f"{label} → {pred} ({self.store.confidences[i]:.0%})"
            panels = [enlarge(photo)]
            if masks is not None:
                panels += [overlay(photo, masks[i, side], alpha) for side in (0, 1)]
                caption += f" · heatmaps: {pred} (predicted), {label} (true)"
            items.append((_side_by_side(panels), caption))
        return items

    def _masks_for_store(self, layer: str, method: str, n: int) -> np.ndarray:
        """Heatmaps (n, 2, S, S) of the first `n` stored mistakes for their predicted, then true, class;
        cached per layer and method, grown on demand."""
        key = (layer, method)
        with self._cache_lock:
            cached = self._store_masks.get(key)
        have = 0 if cached is None else len(cached)
        if have < n:
            images = self.store.images[have:n]
            targets = np.concatenate([self.store.preds[have:n], self.store.labels[have:n]])
            both = self.clf.cam_masks(np.concatenate([images, images]), targets, layer, method=method)
            more = np.stack([both[: n - have], both[n - have :]], axis=1)
            cached = more if cached is None else np.concatenate([cached, more])
            with self._cache_lock:  # a concurrent request may have stored a longer prefix meanwhile
                if len(cached) > len(self._store_masks.get(key, ())):
                    self._store_masks[key] = cached
        return cached[:n]

    # ------------------------------------------------------------------ UI wrappers

    @staticmethod
    def _for_visitor(fn: Callable[..., T]) -> Callable[..., T]:
        """InputError -> gr.Error with its message; anything unexpected is logged and reported briefly.

        Gradio would print each gr.Error's traceback to the server log: a refused input is logged as one line
        instead, and an unexpected error's traceback once, by `log.exception`."""

        @functools.wraps(fn)  # keeps the parameter names, which the API page shows
        def handler(*args: Any) -> T:
            name = getattr(fn, "__name__", fn)
            try:
                return fn(*args)
            except gr.Error:
                raise
            except InputError as err:
                log.info("%s refused: %s", name, err)
                raise gr.Error(str(err), print_exception=False) from err
            except Exception as err:
                log.exception("handler %s failed", name)
                message = "Something went wrong on the server while processing this request."
                raise gr.Error(message, print_exception=False) from err

        return handler

    def _for_request(self, fn: Callable[..., T]) -> Callable[..., T]:
        """`_for_visitor` for a handler of an image (its first argument) sent over the web: see `_check_received`."""

        @functools.wraps(fn)
        def handler(image: Any, *args: Any) -> T:
            _check_received(_image_path(image), self.app_dir / EXAMPLES_DIR)
            return fn(image, *args)

        return self._for_visitor(handler)

    def _skip_without_image(self, fn: Callable[..., T], empty: Any) -> Callable[..., Any]:
        """For events fired by editing controls: with no image yet, clear the outputs quietly."""
        wrapped = self._for_request(fn)

        def handler(image: Any, *args: Any) -> Any:
            return empty if image is None else wrapped(image, *args)

        return handler

    def header(self) -> str:
        cfg = self.clf.config
        metrics = cfg.get("metrics") or {}
        accuracy = ""
        if "accuracy" in metrics:
            accuracy = f" Test accuracy **{metrics['accuracy']:.1%}**"
            if metrics.get("n"):
                accuracy += f" on {metrics['n']:,} CIFAR-10 test images{stored_as_text(metrics)}"
            accuracy += f"{tta_text(metrics)}."
        size = self.clf.image_size
        return (
            f"# CIFAR-10 classifier: custom ResNet-9 with Grad-CAM\n"
            f"A {cfg.get('parameters', 0) / 1e6:.1f} M-parameter ResNet-9 trained on {size}×{size} CIFAR-10 "
            f"photos.{accuracy} It knows {len(self.clf.classes)} classes: {', '.join(self.clf.classes)}.\n\n"
            f"Upload any {FORMATS_TEXT} image (up to {MAX_FILE_BYTES // 2**20} MB and {MAX_PIXELS / 1e6:.0f} "
            f"megapixels) or click an example. The centre square of your image is shrunk to {size}×{size} "
            f"pixels, which is all the model sees."
        )

    def _explain_controls(self) -> tuple[gr.Dropdown, gr.Markdown, gr.Dropdown, gr.Slider]:
        """The method (with its one-line description), the class to explain and the number of top classes."""
        method = gr.Dropdown(choices=list(METHODS), value=DEFAULT_METHOD, label="Method", elem_id="cam-method")
        about = gr.Markdown(method_line(DEFAULT_METHOD), elem_id="cam-method-about", padding=True)
        target = gr.Dropdown(
            choices=[("the top predicted classes", TOP), *((c, c) for c in self.clf.classes)],
            value=TOP,
            label="Explain",
            info="The top classes, or any class you pick (why not a dog?), beside the top prediction.",
            elem_id="cam-class",
        )
        count = gr.Slider(
            1,
            self.max_cams,
            value=min(3, self.max_cams),
            step=1,
            label="How many heatmaps: one per top predicted class",
            elem_id="cam-count",
        )
        return method, about, target, count

    def _about_model(self) -> None:
        """A collapsed section: test accuracy, per-class accuracy and the confusion matrix from model.json."""
        metrics = self.clf.config.get("metrics") or {}
        classes = self.clf.classes
        with gr.Accordion("About the model: test accuracy per class, confusion matrix", open=False, elem_id="about"):
            gr.Markdown(about_text(metrics, classes), elem_id="about-text")
            per_class = per_class_rows(metrics, classes)
            if per_class:
                gr.Dataframe(
                    per_class,
                    headers=PER_CLASS_HEADERS,
                    interactive=False,
                    label="Accuracy per class",
                    elem_id="per-class",
                )
            confusion = confusion_rows(metrics, classes)
            if confusion:
                gr.Dataframe(
                    confusion,
                    headers=["true ↓ predicted →", *classes],
                    interactive=False,
                    label="Confusion matrix: test images of each true class (row) by predicted class (column)",
                    elem_id="confusion",
                )

    def build(self) -> gr.Blocks:
        """The Blocks app. Theme and CSS go to launch() in Gradio 6; see `launch_options`."""
        with gr.Blocks(title="CIFAR-10 ResNet-9: predictions and heatmaps", delete_cache=(3600, 3600)) as demo:
            gr.Markdown(self.header())
            with gr.Row():
                inputs, outputs = self._input_column(), self._output_column()
            with gr.Row():
                cams, mistakes = self._cam_column(), self._mistake_column()
            ui = _Ui(inputs, outputs, cams, mistakes, self._galleries())
            self._about_model()
            self._wire_events(ui)
        # Bounded queue: a flood of requests gets "queue full" instead of growing memory.
        demo.queue(max_size=64, default_concurrency_limit=2)
        return demo

    # ------------------------------------------------------------------ UI layout

    def _input_column(self) -> _Inputs:
        with gr.Column(scale=1):
            image = gr.Image(
                type="filepath",
                image_mode=None,  # the handlers decode (and refuse) uploads themselves
                sources=["upload", "clipboard"],
                label="Your image",
                height=300,
                elem_id="upload",
            )
            top_k = gr.Slider(
                1,
                self.clf.max_k,
                value=min(3, self.clf.max_k),
                step=1,
                label="k: how many classes to show",
                elem_id="top-k",
            )
            submit = gr.Button("Classify", variant="primary", elem_id="classify")
            examples = None
            if self.examples:
                examples = gr.Examples(
                    examples=[[str(p)] for p in self.examples],
                    inputs=[image],
                    label="Examples: one test image per class (click one)",
                    examples_per_page=len(self.examples),
                )
        return _Inputs(image, top_k, submit, examples)

    def _output_column(self) -> _Outputs:
        with gr.Column(scale=1):
            label = gr.Label(label="Top-k classes", elem_id="prediction")
            seen = gr.Image(
                label=f"What the model saw: {self.clf.image_size}×{self.clf.image_size}, enlarged",
                format="png",
                interactive=False,
                height=256,
                elem_id="model-input",
            )
        return _Outputs(label, seen)

    def _cam_column(self) -> _CamControls:
        """A checkbox, and the heatmap controls it shows."""
        with gr.Column(scale=1):
            show = gr.Checkbox(label="Show heatmaps: where the model looked", value=False, elem_id="show-cam")
            with gr.Group(visible=False) as group:
                method, method_about, target, count = self._explain_controls()
                layer = self._layer_dropdown()
                opacity = gr.Slider(
                    0.0,
                    1.0,
                    value=0.5,
                    step=0.05,
                    label="Heatmap opacity: 0 = photo only, 1 = heatmap only",
                    elem_id="cam-opacity",
                )
        return _CamControls(
            show=show,
            group=group,
            method=method,
            method_about=method_about,
            target=target,
            count=count,
            layer=layer,
            opacity=opacity,
        )

    def _layer_dropdown(self) -> gr.Dropdown:
        layers = self.clf.layers
        layer_choices = [(layer_label(name, side), name) for name, side in layers.items()]
        # Default: the deepest layer still at least 8x8, detailed enough to point at parts of the object.
        default_layer = [name for name, side in layers.items() if side >= 8][-1:] or list(layers)[-1:]
        return gr.Dropdown(
            choices=layer_choices,
            value=default_layer[0],
            label="Layer (its feature-map resolution)",
            info="Early layers: fine detail, edges. Deep layers: coarse, about the object.",
            elem_id="cam-layer",
        )

    def _mistake_column(self) -> _MistakeControls:
        """A checkbox (disabled without stored mistakes), and how many mistakes to show (fixed at one if one is
        stored: a Gradio slider needs a maximum above its minimum)."""
        n_store = len(self.store)
        with gr.Column(scale=1):
            show = gr.Checkbox(
                label="Show misclassified test images",
                value=False,
                interactive=n_store > 0,
                elem_id="show-mistakes",
            )
            count = gr.Slider(
                1,
                max(n_store, 2),
                value=min(10, max(n_store, 1)),
                step=1,
                label="How many (the most confident mistakes first)",
                visible=False,
                interactive=n_store > 1,
                elem_id="mistake-count",
            )
        return _MistakeControls(show, count)

    def _galleries(self) -> _Galleries:
        """The heatmaps with the legend of their faithfulness check, and the mistakes; all hidden at first."""
        cams = _captioned_gallery("Heatmaps, each with its faithfulness check", 5, "gradcam-gallery")
        legend = gr.Markdown(FAITHFULNESS_LEGEND, visible=False, elem_id="faithfulness-legend")
        # With heatmaps each mistake is three times as wide as high: "contain" keeps it whole.
        mistakes = _captioned_gallery(
            "Misclassified test images: true → predicted (confidence)", 4, "misclassified-gallery"
        )
        return _Galleries(cams, legend, mistakes)

    # ------------------------------------------------------------------ UI events

    def _wire_events(self, ui: _Ui) -> None:
        """Every event, in a fixed order: the order of registration sets Gradio's fn ids.

        `explain` and `clear_all` are each one handler shared by several events (so, one concurrency group)."""
        self._wire_visibility(ui)
        explain = dict(
            fn=self._skip_without_image(self.explain, (None, [])),
            inputs=ui.cam_inputs,
            outputs=ui.cam_outputs,
            preprocess=False,
            api_visibility="private",
            trigger_mode="always_last",
        )
        # A refused image must not leave the last image's classes, input and heatmaps beside it.
        clear_all = dict(fn=lambda: (None, None, []), outputs=ui.image_outputs, api_visibility="private")
        self._wire_classify(ui, clear_all)
        self._wire_new_image_and_k(ui, explain, clear_all)
        self._wire_removed_image(ui)
        self._wire_control_changes(ui, explain)

    def _wire_visibility(self, ui: _Ui) -> None:
        cams, mistakes, galleries = ui.cams, ui.mistakes, ui.galleries
        # Controls that only matter when a box is ticked appear when it is ticked.
        for box, dependents in (
            (cams.show, [cams.group, galleries.cams, galleries.legend]),
            (mistakes.show, [mistakes.count, galleries.mistakes]),
        ):
            box.change(
                functools.partial(_visible, n=len(dependents)),
                box,
                dependents,
                queue=False,
                api_visibility="private",
            )
        cams.method.change(
            lambda m: method_line(m), cams.method, cams.method_about, queue=False, api_visibility="private"
        )
        # With a class picked, the count of top classes does not apply.
        cams.target.change(
            lambda t: gr.update(visible=t == TOP), cams.target, cams.count, queue=False, api_visibility="private"
        )

    def _wire_classify(self, ui: _Ui, clear_all: dict[str, Any]) -> None:
        # The public API: /predict (image, top_k) -> label, then /explain and /misclassified.
        # As with `clear_all`: a refused image must not leave the last image's input and heatmaps beside it.
        clear_explanation = dict(fn=lambda: (None, []), outputs=ui.cam_outputs, api_visibility="private")
        classified = ui.inputs.submit.click(
            self._for_request(self.predict),
            [ui.inputs.image, ui.inputs.top_k],
            ui.outputs.label,
            api_name="predict",
            preprocess=False,
        )
        classified.success(
            self._for_request(self.explain), ui.cam_inputs, ui.cam_outputs, api_name="explain", preprocess=False
        ).failure(**clear_explanation)
        classified.failure(**clear_all)

    def _wire_new_image_and_k(self, ui: _Ui, explain: dict[str, Any], clear_all: dict[str, Any]) -> None:
        image, top_k, examples = ui.inputs.image, ui.inputs.top_k, ui.inputs.examples
        # Uploading or clicking an example re-runs without a click; so does moving k, without
        # repeating the notes about the image (and without heatmaps, which do not depend on k).
        rank_event = dict(
            inputs=[image, top_k],
            outputs=ui.outputs.label,
            preprocess=False,
            api_visibility="private",
            trigger_mode="always_last",
        )
        # Not image.change, which fires twice when an upload replaces another: two runs, each note twice.
        # An example's click loads it into `image` through the Examples' `load_input_event` (an attribute
        # gr.Examples sets, not in Gradio's docs; the browser test clicks an example), and `.then` runs after it.
        new_image_events = [image.input, *([examples.load_input_event.then] if examples else [])]
        for when_new_image in new_image_events:
            ranked = when_new_image(self._skip_without_image(self.predict, None), **rank_event)
            ranked.success(**explain)
            ranked.failure(**clear_all)
        top_k.change(self._skip_without_image(self.rerank, None), **rank_event)

    def _wire_removed_image(self, ui: _Ui) -> None:
        # A file over max_file_size is refused in the browser, which empties the image firing only `change`.
        ui.inputs.image.change(
            _clear_if_removed,
            ui.inputs.image,
            ui.image_outputs,
            queue=False,
            preprocess=False,
            api_visibility="private",
        )

    def _wire_control_changes(self, ui: _Ui, explain: dict[str, Any]) -> None:
        """Each heatmap control redraws the heatmaps; each input of /misclassified redraws the mistakes."""
        cams, mistakes = ui.cams, ui.mistakes
        heatmap_controls = [cams.show, cams.count, cams.layer, cams.opacity, cams.method, cams.target]
        gr.on([control.change for control in heatmap_controls], **explain)
        mistake_inputs = [mistakes.show, mistakes.count, cams.show, cams.layer, cams.opacity, cams.method]
        gr.on(
            [control.change for control in mistake_inputs],
            self._for_visitor(self.misclassified),
            mistake_inputs,
            ui.galleries.mistakes,
            api_name="misclassified",
            preprocess=False,
            trigger_mode="always_last",
        )


def launch_options(app_dir: Path = APP_DIR) -> dict[str, Any]:
    """launch() arguments; host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT.

    Uploads above max_file_size are refused by Gradio before any handler runs. The examples
    folder is allowed explicitly, so they load whatever the working directory is.
    """
    return {
        "max_file_size": MAX_FILE_BYTES,
        "show_error": True,  # a request Gradio itself refuses (say, text where a file belongs) says why
        "theme": gr.themes.Soft(),
        "css": CSS,
        "allowed_paths": [str(Path(app_dir) / EXAMPLES_DIR)],
    }


MODEL_DIR_HELP = (
    "the folder a training run exported to (era_utils.train: its --app-dir, by default its --out; the notebook: "
    "OUT/space_app)"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="The Space's app, served on http://127.0.0.1:7860.")
    p.add_argument(
        "--model-dir",
        type=Path,
        default=APP_DIR,
        help=f"{MODEL_DIR_HELP}: model.safetensors and model.json, with misclassified.npz and examples/ if it has "
        "them. Default: this app's own folder, the committed model",
    )
    return p.parse_args(argv)


def load_space(model_dir: Path) -> SpaceApp:
    """The app for `model_dir`; files that are missing or do not load end the program with one error line (exit 2)."""
    try:
        return SpaceApp(model_dir)
    except (ModelFilesError, OSError) as err:
        print(
            f"error: cannot serve the model in {model_dir}: {err}. --model-dir takes {MODEL_DIR_HELP}",
            file=sys.stderr,
        )
        raise SystemExit(2) from err


def main(argv: list[str] | None = None) -> None:
    model_dir = parse_args(argv).model_dir.resolve()  # absolute, as Gradio's allowed paths and the examples' check
    logging.basicConfig(level=logging.INFO)
    load_space(model_dir).build().launch(**launch_options(model_dir))


if __name__ == "__main__":
    main()
