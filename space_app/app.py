"""The Gradio Space: top-k predictions, Grad-CAM and the model's most confident mistakes.

python app.py   # http://127.0.0.1:7860; GRADIO_SERVER_PORT / GRADIO_SERVER_NAME work as usual

Every handler checks its inputs itself (events run with preprocess=False), so the API refuses what
the sliders would never send: a bad value gets a gr.Error naming the limits, and the server goes on.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr
import numpy as np
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
    enlarge,
    layer_label,
    open_image,
    overlay,
    parse_bool,
    parse_float,
    parse_int,
    parse_layer,
)

log = logging.getLogger("space_app")
T = TypeVar("T")

GAP = 8  # white pixels between a mistake and its Grad-CAM overlay
# Tiny uploads (a 32x32 example) fill the upload box, with visible pixels instead of a blur.
CSS = """
#upload img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
#model-input img { image-rendering: pixelated; }
/* Gradio cuts gallery captions at 80% of the item's width; "automobile → truck (95%)" lost its confidence. */
#misclassified-gallery .caption-label, #gradcam-gallery .caption-label { max-width: 96%; white-space: normal; }
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
        self._store_masks: dict[str, np.ndarray] = {}
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

    def _cam_options(self, show_cam: Any, count: Any, count_max: int, layer: Any, opacity: Any) -> tuple:
        show = parse_bool(show_cam, "Show Grad-CAM")
        n = parse_int(count, "The number of images", 1, count_max) if count_max else 0
        name = parse_layer(layer, list(self.clf.layers))
        alpha = parse_float(opacity, "Heatmap opacity", 0.0, 1.0)
        return show, n, name, alpha

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
        self, image: Any, show_cam: Any, count: Any, layer: Any, opacity: Any
    ) -> tuple[np.ndarray, list[tuple[np.ndarray, str]]]:
        """The enlarged 32x32 model input, and Grad-CAM overlays for the top-`count` predicted classes."""
        show, n, name, alpha = self._cam_options(show_cam, count, self.max_cams, layer, opacity)
        x, _ = self._model_input(image)  # predict already showed the notes
        if not show:
            return enlarge(x), []
        probs = self.clf.probabilities(x[None])[0]
        top = np.argsort(-probs, kind="stable")[:n]
        masks = self.clf.cam_masks(np.repeat(x[None], n, axis=0), top, name)
        cams = [
            (overlay(x, mask, alpha), f"#{rank} {self.clf.classes[c]} ({probs[c]:.0%})")
            for rank, (c, mask) in enumerate(zip(top, masks, strict=True), start=1)
        ]
        return enlarge(x), cams

    def misclassified(
        self, show: Any, count: Any, show_cam: Any, layer: Any, opacity: Any
    ) -> list[tuple[np.ndarray, str]]:
        """The `count` most confident test-set mistakes, captioned "true → predicted (confidence)";
        with Grad-CAM on, each is followed by the heatmap of the (wrongly) predicted class."""
        visible = parse_bool(show, "Show misclassified images")
        cam, n, name, alpha = self._cam_options(show_cam, count, len(self.store), layer, opacity)
        if not visible or n == 0:
            return []
        masks = self._masks_for_store(name, n) if cam else None
        items = []
        for i in range(n):
            photo = self.store.images[i]
            shown = enlarge(photo)
            if masks is not None:
                gap = np.full((shown.shape[0], GAP, 3), 255, np.uint8)
                shown = np.concatenate([shown, gap, overlay(photo, masks[i], alpha)], axis=1)
            label, pred = self.clf.classes[self.store.labels[i]], self.clf.classes[self.store.preds[i]]
            items.append((shown, f"{label} → {pred} ({self.store.confidences[i]:.0%})"))
        return items

    def _masks_for_store(self, layer: str, n: int) -> np.ndarray:
        """Grad-CAM of the first `n` stored mistakes for their predicted class; cached per layer, grown on demand."""
        with self._cache_lock:
            cached = self._store_masks.get(layer)
        have = 0 if cached is None else len(cached)
        if have < n:
            more = self.clf.cam_masks(self.store.images[have:n], self.store.preds[have:n], layer)
            cached = more if cached is None else np.concatenate([cached, more])
            with self._cache_lock:  # a concurrent request may have stored a longer prefix meanwhile
                if len(cached) > len(self._store_masks.get(layer, ())):
                    self._store_masks[layer] = cached
        return cached[:n]

    # ------------------------------------------------------------------ UI wrappers

    @staticmethod
    def _for_visitor(fn: Callable[..., T]) -> Callable[..., T]:
        """InputError -> gr.Error with its message; anything unexpected is logged and reported briefly."""

        @functools.wraps(fn)  # keeps the parameter names, which the API page shows
        def handler(*args: Any) -> T:
            try:
                return fn(*args)
            except gr.Error:
                raise
            except InputError as err:
                raise gr.Error(str(err)) from err
            except Exception as err:
                log.exception("handler %s failed", getattr(fn, "__name__", fn))
                raise gr.Error("Something went wrong on the server while processing this request.") from err

        return handler

    def _skip_without_image(self, fn: Callable[..., T], empty: Any) -> Callable[..., Any]:
        """For events fired by editing controls: with no image yet, clear the outputs quietly."""
        wrapped = self._for_visitor(fn)

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
                accuracy += f" on {metrics['n']:,} CIFAR-10 test images"
            if "accuracy_tta" in metrics:
                accuracy += f" ({metrics['accuracy_tta']:.1%} with flip test-time augmentation)"
            accuracy += "."
        size = self.clf.image_size
        return (
            f"# CIFAR-10 classifier: custom ResNet-9 with Grad-CAM\n"
            f"A {cfg.get('parameters', 0) / 1e6:.1f} M-parameter ResNet-9 trained on {size}×{size} CIFAR-10 "
            f"photos.{accuracy} It knows {len(self.clf.classes)} classes: {', '.join(self.clf.classes)}.\n\n"
            f"Upload any {FORMATS_TEXT} image (up to {MAX_FILE_BYTES // 2**20} MB and {MAX_PIXELS / 1e6:.0f} "
            f"megapixels) or click an example. The centre square of your image is shrunk to {size}×{size} "
            f"pixels, which is all the model sees."
        )

    def build(self) -> gr.Blocks:
        """The Blocks app. Theme and CSS go to launch() in Gradio 6; see `launch_options`."""
        layers = self.clf.layers
        layer_choices = [(layer_label(name, side), name) for name, side in layers.items()]
        # Default: the deepest layer still at least 8x8, detailed enough to point at parts of the object.
        default_layer = [name for name, side in layers.items() if side >= 8][-1:] or list(layers)[-1:]
        n_store = len(self.store)

        with gr.Blocks(title="CIFAR-10 ResNet-9: predictions and Grad-CAM", delete_cache=(3600, 3600)) as demo:
            gr.Markdown(self.header())
            with gr.Row():
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
                    if self.examples:
                        gr.Examples(
                            examples=[[str(p)] for p in self.examples],
                            inputs=[image],
                            label="Examples: one test image per class (click one)",
                            examples_per_page=len(self.examples),
                        )
                with gr.Column(scale=1):
                    label = gr.Label(label="Top-k classes", elem_id="prediction")
                    seen = gr.Image(
                        label=f"What the model saw: {self.clf.image_size}×{self.clf.image_size}, enlarged",
                        format="png",
                        interactive=False,
                        height=256,
                        elem_id="model-input",
                    )
            with gr.Row():
                with gr.Column(scale=1):
                    show_cam = gr.Checkbox(
                        label="Show Grad-CAM: where the model looked", value=False, elem_id="show-cam"
                    )
                    with gr.Group(visible=False) as cam_controls:
                        n_cams = gr.Slider(
                            1,
                            self.max_cams,
                            value=min(3, self.max_cams),
                            step=1,
                            label="How many Grad-CAM images: one per top predicted class",
                            elem_id="cam-count",
                        )
                        layer = gr.Dropdown(
                            choices=layer_choices,
                            value=default_layer[0],
                            label="Layer (its feature-map resolution)",
                            info="Early layers: fine detail, edges. Deep layers: coarse, about the object.",
                            elem_id="cam-layer",
                        )
                        opacity = gr.Slider(
                            0.0,
                            1.0,
                            value=0.5,
                            step=0.05,
                            label="Heatmap opacity: 0 = photo only, 1 = heatmap only",
                            elem_id="cam-opacity",
                        )
                with gr.Column(scale=1):
                    show_mis = gr.Checkbox(
                        label="Show misclassified test images",
                        value=False,
                        interactive=n_store > 0,
                        elem_id="show-mistakes",
                    )
                    n_mis = gr.Slider(
                        1,
                        max(n_store, 1),
                        value=min(10, max(n_store, 1)),
                        step=1,
                        label="How many (the most confident mistakes first)",
                        visible=False,
                        elem_id="mistake-count",
                    )
            cam_gallery = gr.Gallery(
                label="Grad-CAM for the top predicted classes",
                visible=False,
                columns=5,
                rows=1,  # more rows are added as needed; the default reserves an empty second one
                format="png",
                object_fit="contain",
                elem_id="gradcam-gallery",
            )
            mis_gallery = gr.Gallery(
                label="Misclassified test images: true → predicted (confidence); with Grad-CAM, "
                "the heatmap of the predicted class on the right",
                visible=False,
                columns=5,
                rows=1,  # more rows are added as needed; the default reserves an empty second one
                format="png",
                object_fit="contain",  # with Grad-CAM each item is twice as wide as high
                elem_id="misclassified-gallery",
            )

            # Controls that only matter when a box is ticked appear when it is ticked.
            for box, dependents in ((show_cam, [cam_controls, cam_gallery]), (show_mis, [n_mis, mis_gallery])):
                box.change(
                    lambda on: (gr.update(visible=on), gr.update(visible=on)),
                    box,
                    dependents,
                    queue=False,
                    api_visibility="private",
                )

            cam_inputs = [image, show_cam, n_cams, layer, opacity]
            explain_event = dict(
                fn=self._skip_without_image(self.explain, (None, [])),
                inputs=cam_inputs,
                outputs=[seen, cam_gallery],
                preprocess=False,
                api_visibility="private",
                trigger_mode="always_last",
            )
            # The public API: /predict (image, top_k) -> label, then /explain and /misclassified.
            submit.click(
                self._for_visitor(self.predict), [image, top_k], label, api_name="predict", preprocess=False
            ).success(
                self._for_visitor(self.explain), cam_inputs, [seen, cam_gallery], api_name="explain", preprocess=False
            )
            # Uploading or clicking an example re-runs without a click; so does moving k, without
            # repeating the notes about the image (and without Grad-CAM, which does not depend on k).
            rank_event = dict(
                inputs=[image, top_k],
                outputs=label,
                preprocess=False,
                api_visibility="private",
                trigger_mode="always_last",
            )
            image.change(self._skip_without_image(self.predict, None), **rank_event).success(**explain_event)
            top_k.change(self._skip_without_image(self.rerank, None), **rank_event)
            gr.on([show_cam.change, n_cams.change, layer.change, opacity.change], **explain_event)
            gr.on(
                [show_mis.change, n_mis.change, show_cam.change, layer.change, opacity.change],
                self._for_visitor(self.misclassified),
                [show_mis, n_mis, show_cam, layer, opacity],
                mis_gallery,
                api_name="misclassified",
                preprocess=False,
                trigger_mode="always_last",
            )
        # Bounded queue: a flood of requests gets "queue full" instead of growing memory.
        demo.queue(max_size=64, default_concurrency_limit=2)
        return demo


def launch_options() -> dict[str, Any]:
    """launch() arguments; host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT.

    Uploads above max_file_size are refused by Gradio before any handler runs. The examples
    folder is allowed explicitly, so they load whatever the working directory is.
    """
    return {
        "max_file_size": MAX_FILE_BYTES,
        "show_error": True,  # a request Gradio itself refuses (say, text where a file belongs) says why
        "theme": gr.themes.Soft(),
        "css": CSS,
        "allowed_paths": [str(APP_DIR / EXAMPLES_DIR)],
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    SpaceApp().build().launch(**launch_options())


if __name__ == "__main__":
    main()
