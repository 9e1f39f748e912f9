"""The Gradio Space (space_app/): predictions, heatmaps (every method, any class, their faithfulness),
the two-sided misclassified gallery, the model's metrics, bad input, the standalone copy served over
HTTP, and a real browser driving the page.

Works with whichever weights are in space_app/ (a smoke run's or the real ones): only the
`trained` test looks at accuracy. Nothing here writes into the repository.
"""

from __future__ import annotations

import ast
import io
import json
import math
import re
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from app_helpers import (
    APP_DIR,
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO,
    blocks_by_id,
    choose_option,
    copy_app,
    running_app,
    write_png,
)
from PIL import Image

sys.path.insert(0, str(APP_DIR))
import app as space  # noqa: E402  (space_app/ is a folder of scripts, not a package)
import explain  # noqa: E402
import inference  # noqa: E402
import pytorch_grad_cam as pgc  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

LAYERS = inference.GRADCAM_LAYERS  # what the network offers; model.json must list exactly these
CAPTION = re.compile(r"^(\w+) → (\w+) \((\d+)%\)( · heatmaps: (\w+) \(predicted\), (\w+) \(true\))?$")
# "#1 horse 92% · hiding the 20% most highlighted pixels: 31%; the 20% least: 90%"
PCT = r"(\d+(?:\.\d)?%|<0\.1%)"
CAM_CAPTION = re.compile(rf"^#(\d+) (\w+) {PCT} · hiding the 20% most highlighted pixels: {PCT}; the 20% least: {PCT}$")
# The grad-cam library's classes, named here independently of explain.METHODS.
LIBRARY_CLASSES = {
    "Grad-CAM": pgc.GradCAM,
    "Grad-CAM++": pgc.GradCAMPlusPlus,
    "XGradCAM": pgc.XGradCAM,
    "HiResCAM": pgc.HiResCAM,
    "LayerCAM": pgc.LayerCAM,
    "EigenCAM": pgc.EigenCAM,
}


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sp() -> space.SpaceApp:
    missing = [n for n in ("model.json", "model.safetensors", "misclassified.npz") if not (APP_DIR / n).is_file()]
    if missing:
        pytest.fail(f"space_app/ lacks {missing}: run the training (S12.ipynb or era_utils.train) first")
    return space.SpaceApp(APP_DIR)


@pytest.fixture(scope="module")
def examples(sp: space.SpaceApp) -> dict[str, Path]:
    paths = {p.stem: p for p in sp.examples}
    assert sorted(paths) == sorted(sp.clf.classes), "need examples/<class>.png for every class"
    return paths


_server_failed: list[str] = []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """The Space copied alone to a temporary folder and served by `python app.py` over HTTP."""
    if _server_failed:  # pytest would otherwise retry the slow start for every test using it
        pytest.fail(_server_failed[0])
    root = tmp_path_factory.mktemp("standalone")
    app_copy = copy_app(root / "space_app")
    log = root / "server.log"
    try:
        context = running_app(app_copy, log)
        url, pid = context.__enter__()
    except Exception as err:
        _server_failed.append(f"the standalone app did not start: {err}; log:\n{log.read_text()[-3000:]}")
        raise
    try:
        yield url, pid, log
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[0], verbose=False)


def ui(fn):
    """A handler as the UI calls it: visitor mistakes become gr.Error."""
    return space.SpaceApp._for_visitor(fn)


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


# ---------------------------------------------------------------------------- standalone folder


def test_model_code_is_a_byte_identical_copy() -> None:
    assert (APP_DIR / "model.py").read_bytes() == (REPO / "era_utils" / "model.py").read_bytes()


def test_space_imports_only_its_own_files_and_its_requirements() -> None:
    reqs = (APP_DIR / "requirements.txt").read_text().lower()
    allowed_third_party = {"gradio": "gradio", "numpy": "numpy", "torch": "torch", "PIL": "pillow"}
    allowed_third_party |= {
        "safetensors": "safetensors",
        "pytorch_grad_cam": "grad-cam",
        "cv2": "opencv-python-headless",
    }
    local = {p.stem for p in APP_DIR.glob("*.py")}
    for path in APP_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                if top in local or top in sys.stdlib_module_names or top == "__future__":
                    continue
                assert top in allowed_third_party, f"{path.name} imports {name}"
                assert allowed_third_party[top] in reqs, f"{allowed_third_party[top]} missing from requirements.txt"


def test_readme_front_matter_matches_requirements() -> None:
    text = (APP_DIR / "README.md").read_text()
    front = text.split("---")[1]
    meta = dict(line.split(":", 1) for line in front.strip().splitlines())
    meta = {k.strip(): v.strip().strip('"') for k, v in meta.items()}
    for key in ("title", "emoji", "colorFrom", "colorTo", "sdk", "sdk_version", "app_file", "pinned", "license"):
        assert meta.get(key), f"front matter lacks {key}"
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert 0 < len(meta["short_description"]) <= 60  # Hugging Face's limit
    pin = re.search(r"^gradio==(\S+)$", (APP_DIR / "requirements.txt").read_text(), re.MULTILINE)
    assert pin and pin.group(1) == meta["sdk_version"], "sdk_version must equal the gradio pin in requirements.txt"
    assert "predict(handle_file(" in text and 'api_name="/predict"' in text


def test_weights_are_checked_against_their_sha256(tmp_path: Path) -> None:
    app_copy = copy_app(tmp_path / "space_app")
    weights = app_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(inference.ModelFilesError, match="sha256"):
        inference.load_config(app_copy)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": "resnet18"}, "unknown architecture 'resnet18'"),
        ({"gradcam_layers": {**LAYERS, "fc": 1}}, r"Grad-CAM layers the network lacks: \['fc'\]"),
        ({"num_classes": 11}, r"len\(classes\) != num_classes"),
    ],
)
def test_a_model_json_that_does_not_fit_the_network_is_refused(tmp_path: Path, change, message: str) -> None:
    """Weights that match their sha256 but a model.json naming another network, a layer it lacks or a class count
    its list of classes does not have: refused at start-up, not served with wrong labels or a failing layer."""
    app_copy = copy_app(tmp_path / "space_app")
    config = json.loads((app_copy / "model.json").read_text())
    (app_copy / "model.json").write_text(json.dumps(config | change))
    with pytest.raises(inference.ModelFilesError, match=message):
        inference.load_config(app_copy)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "model.json is not a JSON file"),
        ('{"classes": ["cat"]}', "model.json lacks weights_file, sha256, architecture, gradcam_layers, num_classes,"),
        ("[1, 2]", "model.json lacks weights_file"),
    ],
)
def test_a_model_json_that_is_not_an_exported_models_is_refused_by_name(
    tmp_path: Path, text: str, message: str
) -> None:
    """Not JSON, or JSON without the keys an export writes: a ModelFilesError naming the file and what it lacks (the
    app's start-up turns it into one error line), not a JSONDecodeError or KeyError."""
    app_copy = copy_app(tmp_path / "space_app")
    (app_copy / "model.json").write_text(text)
    with pytest.raises(inference.ModelFilesError, match=message):
        inference.load_config(app_copy)


def test_model_loads_in_eval_mode_with_settings_from_json(sp: space.SpaceApp) -> None:
    cfg = json.loads((APP_DIR / "model.json").read_text())
    assert not sp.clf.net.training
    assert sp.clf.classes == cfg["classes"] and sp.clf.image_size == cfg["image_size"]
    assert np.allclose(sp.clf.mean, cfg["mean"]) and np.allclose(sp.clf.std, cfg["std"])
    assert sp.clf.net.logit_scale == cfg["logit_scale"]
    metrics = cfg["metrics"]
    assert f"**{metrics['accuracy']:.1%}** on {metrics['n']:,} CIFAR-10 test images stored as JPEG" in sp.header()
    assert f"({metrics['accuracy_tta']:.1%} with flip test-time" in sp.header()
    assert f"{metrics['accuracy_tta_translate']:.1%} with flip and one-pixel-shift views)." in sp.header()


# ---------------------------------------------------------------------------- predictions


def test_predict_every_example(sp: space.SpaceApp, examples: dict[str, Path]) -> None:
    for path in examples.values():
        out = sp.predict(str(path), 10)
        assert list(out) == sorted(out, key=out.get, reverse=True)
        assert set(out) == set(sp.clf.classes)
        assert sum(out.values()) == pytest.approx(1.0, abs=1e-4)
        for k in (1, 5):
            assert list(sp.predict(str(path), k)) == list(out)[:k]


def test_examples_are_recognized_once_trained(sp: space.SpaceApp, examples: dict[str, Path]) -> None:
    if sp.clf.config["metrics"].get("accuracy", 0) < 0.5:
        pytest.skip("the weights in space_app/ come from a smoke run (accuracy < 50%)")
    hits = [max(out := sp.predict(str(path), 1), key=out.get) == name for name, path in examples.items()]
    assert sum(hits) >= 7, f"only {sum(hits)}/10 examples predicted as their own class"


def test_preprocessing_matches_training(sp: space.SpaceApp, examples: dict[str, Path]) -> None:
    """A 32x32 test PNG reaches the network unchanged, and the stored mistakes' predictions and
    confidences (computed by the training code) come out again."""
    path = examples["cat"]
    assert np.array_equal(sp.clf.model_input(inference.open_image(path, 32).image), np.asarray(Image.open(path)))
    store = sp.store
    probs = sp.clf.probabilities(store.images)
    assert np.array_equal(probs.argmax(1), store.preds)
    assert np.allclose(probs.max(1), store.confidences, atol=1e-4)


@pytest.mark.parametrize("k", [0, 11, 100, -1, 3.5, "abc", "3", None, True, float("nan"), [3]])
def test_top_k_out_of_range_or_wrong_type_is_refused(sp: space.SpaceApp, examples, k) -> None:
    with pytest.raises(gr.Error, match="k .*1 to 10"):
        ui(sp.predict)(str(examples["cat"]), k)


def test_top_k_accepts_whole_floats(sp: space.SpaceApp, examples) -> None:
    assert len(ui(sp.predict)(str(examples["cat"]), 4.0)) == 4


def _same_explanation(got: tuple, want: tuple) -> bool:
    (seen, cams), (seen_want, cams_want) = got, want
    return (
        np.array_equal(seen, seen_want)
        and [c for _, c in cams] == [c for _, c in cams_want]
        and all(np.array_equal(a, b) for (a, _), (b, _) in zip(cams, cams_want, strict=True))
    )


def test_predict_and_heatmaps_are_thread_safe(sp: space.SpaceApp, examples) -> None:
    """Concurrent requests get exactly what the same requests get one at a time: the probabilities,
    the heatmaps and their faithfulness numbers (the CAM hooks sit on the one shared network)."""
    paths = [str(examples[c]) for c in ("cat", "ship", "truck")]
    methods = ["Grad-CAM", "LayerCAM"]
    predicted = {p: sp.predict(p, 10) for p in paths}
    explained = {(p, m): sp.explain(p, True, 2, "layer2", 0.5, m) for p in paths for m in methods}

    def work(i: int) -> bool:
        path = paths[i % len(paths)]
        if i % 3 == 0:
            method = methods[(i // 3) % len(methods)]
            return _same_explanation(sp.explain(path, True, 2, "layer2", 0.5, method), explained[path, method])
        out = sp.predict(path, 10)
        return all(abs(out[c] - predicted[path][c]) < 1e-5 for c in out)

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(24)))


# ---------------------------------------------------------------------------- bad input


@pytest.fixture
def warnings_shown(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(gr, "Warning", lambda message, *a, **k: shown.append(message))
    return shown


NO_IMAGE = [
    (None, "No image: upload one"),
    ("", "No image: upload one"),
    ({}, "payload has no file path"),
    ({"path": None}, "payload has no file path"),
    ({"url": "data:image/png;base64,AAAA"}, "not a data URL"),
    (42, "must be an uploaded file, got int"),
]


@pytest.mark.parametrize(("value", "message"), NO_IMAGE)
def test_no_image(sp: space.SpaceApp, value, message: str) -> None:
    with pytest.raises(gr.Error, match=message):
        ui(sp.predict)(value, 3)


def _truncated(path: Path, image: Image.Image, fmt: str) -> Path:
    buf = io.BytesIO()
    image.save(buf, fmt)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    return path


NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


BAD_FILES = {
    "empty": (lambda p: _write(p, b""), "empty"),
    "text": (lambda p: _write(p, "not an image"), "not an image"),
    "png signature then garbage": (lambda p: _write(p, b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), "not an image"),
    "truncated png": (lambda p: _truncated(p, NOISE, "PNG"), "corrupted or truncated"),
    "truncated jpeg": (lambda p: _truncated(p, NOISE, "JPEG"), "corrupted or truncated"),
    # Pillow would hand EPS to Ghostscript; only common self-contained formats are accepted.
    "eps": (lambda p: _write(p, b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"), "not an image"),
    "svg": (lambda p: _write(p, '<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'), "not an image"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_unreadable_files_are_refused(sp: space.SpaceApp, tmp_path: Path, case: str) -> None:
    make, message = BAD_FILES[case]
    path = make(tmp_path / "upload.png")
    with pytest.raises(gr.Error, match=message):
        ui(sp.predict)(str(path), 3)
    assert len(sp.predict(str(sp.examples[0]), 3)) == 3  # still serving


def test_oversized_file_is_refused_before_reading(sp: space.SpaceApp, tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    with path.open("wb") as f:
        f.truncate(inference.MAX_FILE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(gr.Error, match="limit is 20 MB"):
        ui(sp.predict)(str(path), 3)
    with path.open("wb") as f:
        f.truncate(inference.MAX_FILE_BYTES)  # "up to 20 MB": a file of exactly 20 MB is read (zeros: not an image)
    with pytest.raises(gr.Error, match="not an image"):
        ui(sp.predict)(str(path), 3)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [20000, 7000])  # 400 MP (Pillow itself refuses) and 49 MP (our cap)
def test_decompression_bomb_is_refused_from_its_header(sp: space.SpaceApp, tmp_path: Path, side: int) -> None:
    path = write_png(tmp_path / "bomb.png", side, side, bit_depth=1)
    start = time.perf_counter()
    with pytest.raises(gr.Error, match="megapixels"):
        ui(sp.predict)(str(path), 3)
    assert time.perf_counter() - start < 2.0


def test_an_image_just_over_the_pixel_limit_is_told_by_how_much(sp: space.SpaceApp, tmp_path: Path) -> None:
    side = math.isqrt(inference.MAX_PIXELS) + 1  # 6325: 40,005,625 pixels, "40 megapixels" when rounded
    with pytest.raises(
        gr.Error, match=f"{side}×{side} = {side * side:,} pixels; the limit is {inference.MAX_PIXELS:,}"
    ):
        ui(sp.predict)(str(write_png(tmp_path / "big.png", side, side, bit_depth=1)), 3)


def _rgba_transparent(p: Path) -> Path:
    return save(Image.new("RGBA", (40, 40), (0, 0, 0, 0)), p.with_suffix(".png"))


def _rgba_half_transparent(p: Path) -> Path:
    image = Image.new("RGBA", (40, 40), (255, 0, 0, 255))
    image.paste((0, 0, 0, 0), (20, 0, 40, 40))  # right half transparent (black underneath), left half opaque red
    return save(image, p.with_suffix(".png"))


def _palette_transparent(p: Path) -> Path:
    return save(Image.new("P", (40, 40), 0), p.with_suffix(".png"), transparency=0)


def _rgb16(p: Path) -> Path:
    return write_png(p.with_suffix(".png"), 40, 40, bit_depth=16, color_type=2, row=b"\xff\xff\x00\x00\x00\x00" * 40)


def _gray16(p: Path) -> Path:
    return save(Image.fromarray(np.full((40, 40), 65535, np.uint16)), p.with_suffix(".png"))


def _float_tiff(p: Path) -> Path:
    return save(Image.fromarray(np.ones((40, 40), np.float32)), p.with_suffix(".tif"))


def _cmyk_jpeg(p: Path) -> Path:
    return save(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), p.with_suffix(".jpg"))


def _animated_gif(p: Path) -> Path:
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    return save(frames[0], p.with_suffix(".gif"), save_all=True, append_images=frames[1:], duration=100, loop=0)


def _exif_rotated(p: Path) -> Path:
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (32, 0, 64, 32))  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to view
    return save(image, p.with_suffix(".jpg"), exif=exif, quality=95)


# name -> (writer, expected note, expected mean colour of the model input or None)
CONVERSIONS = {
    "RGBA": (_rgba_transparent, "alpha channel", (255, 255, 255)),
    "RGBA half transparent": (_rgba_half_transparent, "alpha channel", (255, 128, 128)),  # red | white
    "LA": (lambda p: save(Image.new("LA", (40, 40), (0, 0)), p.with_suffix(".png")), "Grayscale", (255, 255, 255)),
    "P": (lambda p: save(Image.new("RGB", (40, 40), (0, 255, 0)).convert("P"), p.with_suffix(".png")), "Palette", None),
    "P+transparency": (_palette_transparent, "alpha channel", (255, 255, 255)),
    "CMYK": (_cmyk_jpeg, "CMYK", None),
    "I;16": (_gray16, "High-bit-depth", (255, 255, 255)),
    # Values up to 255 in a 16-bit image are near black, not 8-bit values.
    "I;16 dark": (
        lambda p: save(Image.fromarray(np.full((40, 40), 250, np.uint16)), p.with_suffix(".png")),
        "High-bit-depth",
        (1, 1, 1),
    ),
    "RGB 16-bit": (_rgb16, "16-bit-per-channel", (255, 0, 0)),
    "F": (_float_tiff, "High-bit-depth", (255, 255, 255)),
    "L": (lambda p: save(Image.new("L", (40, 40), 128), p.with_suffix(".png")), "Grayscale", (128, 128, 128)),
    "1": (lambda p: save(Image.new("1", (40, 40), 1), p.with_suffix(".png")), "Grayscale", (255, 255, 255)),
    "animated GIF": (_animated_gif, "Animated image", (255, 0, 0)),
    "1x1": (lambda p: save(Image.new("RGB", (1, 1), (255, 0, 0)), p.with_suffix(".png")), "Very small", (255, 0, 0)),
}


@pytest.mark.parametrize("case", list(CONVERSIONS))
def test_unusual_images_are_converted_with_a_warning(sp, tmp_path: Path, warnings_shown: list[str], case) -> None:
    make, note, colour = CONVERSIONS[case]
    path = make(tmp_path / "upload")
    out = ui(sp.predict)(str(path), 3)
    assert len(out) == 3
    assert any(note in w for w in warnings_shown), warnings_shown
    x = sp.clf.model_input(inference.open_image(path, 32).image)
    assert x.shape == (32, 32, 3) and x.dtype == np.uint8
    if colour is not None:
        assert np.allclose(x.reshape(-1, 3).mean(0), colour, atol=3), x.reshape(-1, 3).mean(0)


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_is_reduced_within_a_few_bytes_per_pixel(mode: str) -> None:
    """A 40-megapixel 16-bit grayscale PNG is an ~80 kB upload: reduced to 8 bits in float64, a new array per step,
    it took ~1 GB and ~4 s. In float32, in place, the values are the same (a float one within a rounding)."""
    values = np.random.default_rng(0).integers(0, 65536, (1000, 1000))
    data = {"I;16": values.astype(np.uint16), "I": values.astype(np.int32), "F": (values / 65535).astype(np.float32)}
    image = Image.fromarray(data[mode])
    assert image.mode == mode
    tracemalloc.start()
    try:
        out = inference._high_bit_depth_to_8bit(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * values.size, f"{peak / values.size:.1f} bytes per pixel"  # float64 steps: 29
    expected = np.round(data[mode].astype(np.float64) * (255.0 if mode == "F" else 1 / 257))
    assert np.abs(np.asarray(out, np.float64) - expected).max() <= (mode == "F")


def _asymmetric(width: int, height: int) -> Image.Image:
    """Noise: every crop differs, so a crop off by a pixel or another filter changes the result."""
    return Image.fromarray(np.random.default_rng(width * 7 + height).integers(0, 256, (height, width, 3), np.uint8))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_an_opaque_alpha_channel_is_not_called_transparent(tmp_path: Path, mode: str) -> None:
    """Screenshots, animated WebPs and many exported PNGs carry an alpha channel with every pixel opaque: telling the
    visitor that "transparent areas were filled with white" would be false. The pixels are kept as they are."""
    photo = _asymmetric(48, 40).convert(mode[:-1])
    loaded = inference.open_image(save(photo.convert(mode), tmp_path / "opaque.png"), 32)
    assert not [note for note in loaded.notes if "alpha" in note], loaded.notes
    assert np.array_equal(np.asarray(loaded.image), np.asarray(photo.convert("RGB")))


@pytest.mark.parametrize("size", [(96, 64), (64, 96), (99, 40), (50, 37), (20, 12), (33, 32)])
def test_model_input_is_the_central_square_resized(sp: space.SpaceApp, tmp_path: Path, size) -> None:
    """Wide, tall, odd and tiny uploads: the central square (Pillow crop), shrunk with BOX or enlarged with
    BICUBIC, step by step here; for 96x64 also the plain 2x2 block average of the central 64x64."""
    image = _asymmetric(*size)
    x, _ = sp._model_input(str(save(image, tmp_path / f"{size[0]}x{size[1]}.png")))
    w, h = size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = image.crop((left, top, left + side, top + side))
    if side >= 32:
        assert np.array_equal(x, np.asarray(square.resize((32, 32), Image.Resampling.BOX)))
    else:  # bicubic reads 2 pixels around the square, the crop here has none: compare away from its edges
        inner = slice(6, -6)
        assert np.array_equal(
            x[inner, inner], np.asarray(square.resize((32, 32), Image.Resampling.BICUBIC))[inner, inner]
        )
    if size == (96, 64):
        blocks = np.asarray(image, np.float64)[:, 16:80].reshape(32, 2, 32, 2, 3).mean((1, 3))
        assert np.abs(x - blocks).max() <= 1.0  # Pillow's fixed-point arithmetic rounds within one level


@pytest.mark.parametrize("size", [(100, 100), (300, 200), (1024, 768)])
def test_a_jpeg_decoded_at_reduced_scale_gives_the_model_input_of_the_full_decode(sp, tmp_path: Path, size) -> None:
    """Big JPEGs are decoded at 1/2 to 1/8 scale, never below 128 px a side, so the 32x32 input stays that of the
    full decode; a smaller draft would decode a 100x100 photo at 25x25 and blow it up again with BICUBIC."""
    path = save(_asymmetric(*size), tmp_path / "photo.jpg", quality=95)
    with Image.open(path) as full:
        want = sp.clf.model_input(full.convert("RGB")).astype(int)  # no draft: every pixel decoded
    got = sp.clf.model_input(inference.open_image(path, 32).image).astype(int)
    assert np.abs(got - want).mean() <= 1 and np.abs(got - want).max() <= 4


def test_a_new_k_reranks_without_repeating_the_notes(sp, tmp_path: Path, warnings_shown: list[str]) -> None:
    path = save(Image.new("L", (40, 40), 128), tmp_path / "gray.png")
    first = ui(sp.predict)(str(path), 3)
    assert len(warnings_shown) == 1 and "Grayscale" in warnings_shown[0]
    again = ui(sp.rerank)(str(path), 5)
    assert len(warnings_shown) == 1 and list(again)[:3] == list(first)
    with pytest.raises(gr.Error, match="from 1 to 10"):
        ui(sp.rerank)(str(path), 11)


@pytest.mark.parametrize(
    "size, told",
    [
        ((32, 32), []),
        ((64, 32), []),  # 2:1 is not yet elongated
        ((32, 65), ["elongated"]),
        ((31, 62), ["Very small"]),  # a side under the model's 32 pixels
        ((20, 41), ["Very small", "elongated"]),
    ],
)
def test_small_and_elongated_uploads_are_told_so_from_their_size(tmp_path: Path, size, told) -> None:
    notes = inference.open_image(save(Image.new("RGB", size, (0, 128, 255)), tmp_path / "upload.png"), 32).notes
    assert len(notes) == len(told) and all(any(word in note for note in notes) for word in told), notes


def test_exif_orientation_is_applied(sp: space.SpaceApp, tmp_path: Path, warnings_shown: list[str]) -> None:
    path = _exif_rotated(tmp_path / "photo")
    loaded = inference.open_image(path, 32)
    assert loaded.image.size == (32, 64)  # stored 64x32, viewed upright 32x64
    top, bottom = np.asarray(loaded.image)[:16].mean((0, 1)), np.asarray(loaded.image)[-16:].mean((0, 1))
    assert top[0] > 200 > bottom[0] and bottom[2] > 200 > top[2]  # red on top, blue below after 90° clockwise
    ui(sp.predict)(str(path), 3)
    assert any("EXIF" in w for w in warnings_shown)
    exif = Image.Exif()
    exif[0x0112] = 1  # already upright: nothing to turn, nothing to tell
    upright = inference.open_image(save(Image.new("RGB", (64, 32), (255, 0, 0)), path, exif=exif), 32)
    assert upright.image.size == (64, 32) and not [note for note in upright.notes if "EXIF" in note], upright.notes


def test_gradio_filedata_dict_is_accepted(sp: space.SpaceApp, examples) -> None:
    payload = {"path": str(examples["dog"]), "meta": {"_type": "gradio.FileData"}, "orig_name": "dog.png"}
    assert sp.predict(payload, 2) == sp.predict(str(examples["dog"]), 2)


def test_a_new_image_at_the_same_path_is_read_again(sp: space.SpaceApp, tmp_path: Path) -> None:
    """The decoded inputs are cached by path, size and modification time: another image saved under the same name
    is classified itself, not the one cached before it."""
    path = tmp_path / "upload.png"
    first, second = _asymmetric(40, 40), _asymmetric(48, 48)
    x_first, _ = sp._model_input(str(save(first, path)))
    x_second, _ = sp._model_input(str(save(second, path)))
    assert np.array_equal(x_first, sp.clf.model_input(first))
    assert np.array_equal(x_second, sp.clf.model_input(second))


# ---------------------------------------------------------------------------- heatmaps


def library_masks(sp: space.SpaceApp, photos: np.ndarray, targets: list[int], layer: str, method: str) -> np.ndarray:
    """The grad-cam library's own heatmaps, computed here without the app's method table."""
    x = sp.clf.to_tensor(photos).requires_grad_(True)
    with LIBRARY_CLASSES[method](model=sp.clf.net, target_layers=[sp.clf.net.get_submodule(layer)]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])


def near(a: np.ndarray, b: np.ndarray) -> bool:
    """The same overlay, up to rounding: heatmaps computed in batches of different sizes differ by ~1e-7,
    which can move a pixel across a colour-map step, so under 1% of the values may differ by more than 1."""
    return a.shape == b.shape and np.mean(np.abs(a.astype(int) - b.astype(int)) > 1) < 0.01


@pytest.mark.parametrize("layer", list(LAYERS))
def test_gradcam_at_every_layer(sp: space.SpaceApp, examples, layer: str) -> None:
    seen, cams = ui(sp.explain)(str(examples["ship"]), True, 3, layer, 0.5)
    side = sp.clf.image_size * inference.DISPLAY_SCALE
    assert seen.shape == (side, side, 3)
    assert len(cams) == 3
    top = list(sp.predict(str(examples["ship"]), 3))
    for rank, ((image, caption), cls) in enumerate(zip(cams, top, strict=True), start=1):
        assert image.shape == (side, side, 3) and image.dtype == np.uint8
        assert CAM_CAPTION.match(caption).groups()[:2] == (str(rank), cls), caption
    masks = sp.clf.cam_masks(np.asarray(Image.open(examples["ship"]))[None], [0], layer)
    assert masks.shape == (1, 32, 32) and masks.min() >= 0.0 and masks.max() <= 1.0


def test_layer_labels_show_resolution() -> None:
    assert inference.layer_label("layer1.residual", 16) == "layer1 residual (16×16)"


def test_ten_gradcams_and_none_when_off(sp: space.SpaceApp, examples) -> None:
    seen, cams = sp.explain(str(examples["frog"]), True, 10, "layer3", 0.5)
    assert len(cams) == 10 and len({c for _, c in cams}) == 10
    x, _ = sp._model_input(str(examples["frog"]))
    scale = inference.DISPLAY_SCALE  # each model pixel a crisp square (nearest neighbour), not blurred
    assert np.array_equal(seen, x.repeat(scale, axis=0).repeat(scale, axis=1))
    seen_off, cams_off = sp.explain(str(examples["frog"]), False, 3, "layer3", 0.5)
    assert cams_off == [] and np.array_equal(seen, seen_off)


def test_opacity_mixes_photo_and_heatmap_linearly_without_brightening() -> None:
    rng = np.random.default_rng(1)
    photos = rng.integers(0, 100, (2, 32, 32, 3), dtype=np.uint8)  # dark: a rescaled mix would brighten them
    mask = rng.random((32, 32)).astype(np.float32)
    photo, heatmap = inference.enlarge(photos[0]), inference.overlay(photos[1], mask, 1.0)
    assert np.array_equal(inference.overlay(photos[0], mask, 0.0), photo)
    assert np.array_equal(inference.overlay(photos[0], mask, 1.0), heatmap)  # the heatmap only: no photo in it
    half = inference.overlay(photos[0], mask, 0.5).astype(float)
    assert np.abs(half - (photo.astype(float) + heatmap) / 2).max() <= 1


def test_a_coarse_heatmap_is_smoothed_onto_the_photo() -> None:
    """A 4x4 layer's map is resized to the image bilinearly: between its cold and hot cells the colours pass through
    JET's green, not straight from blue to red as a nearest-neighbour resize (blocks) would."""
    mask = np.zeros((4, 4), np.float32)
    mask[:, 2:] = 1.0
    row = inference.overlay(np.zeros((32, 32, 3), np.uint8), mask, 1.0)[128]
    assert row[0, 2] > 100 and row[-1, 0] > 100  # blue at the cold edge, red at the hot one
    assert row[:, 1].max() > 200 and len({tuple(p) for p in row}) > 20


@pytest.mark.parametrize("method", list(LIBRARY_CLASSES))
def test_every_method_is_the_librarys_own(sp: space.SpaceApp, examples, method: str) -> None:
    """cam_masks(method=...) and the gallery give the library's heatmaps for that method, not Grad-CAM's
    (EigenCAM's are the same for every class); three positional arguments still mean Grad-CAM."""
    path = str(examples["deer"])
    x, _ = sp._model_input(path)
    batch, targets = np.stack([x, x]), [4, 5]
    got = sp.clf.cam_masks(batch, targets, "layer2", method=method)
    assert np.allclose(got, library_masks(sp, batch, targets, "layer2", method), atol=1e-5)
    gradcam = library_masks(sp, batch, targets, "layer2", "Grad-CAM")
    assert np.allclose(sp.clf.cam_masks(batch, targets, "layer2"), gradcam, atol=1e-5)
    assert (method == "Grad-CAM") == np.allclose(got, gradcam, atol=1e-3)
    assert (method == "EigenCAM") == np.allclose(got[0], got[1], atol=1e-3)
    _, cams = ui(sp.explain)(path, True, 1, "layer2", 1.0, method, space.TOP)
    top = int(sp.clf.probabilities(x[None])[0].argmax())
    assert near(cams[0][0], inference.overlay(x, library_masks(sp, x[None], [top], "layer2", method)[0], 1.0))


def test_explain_any_class_beside_the_top_prediction(sp: space.SpaceApp, examples) -> None:
    """Why not X? The heatmap of the class picked (ranked and captioned as such), then the top class's."""
    path = str(examples["horse"])
    x, _ = sp._model_input(path)
    probs = sp.clf.probabilities(x[None])[0]
    order = [int(c) for c in np.argsort(-probs, kind="stable")]
    classes = sp.clf.classes
    for picked in (order[-1], order[0]):  # the least likely class, and the top one itself (shown once)
        _, cams = ui(sp.explain)(path, True, 3, "layer2", 1.0, "Grad-CAM", classes[picked])
        expected = [picked] if picked == order[0] else [picked, order[0]]
        assert len(cams) == len(expected)
        for (image, caption), c in zip(cams, expected, strict=True):
            rank, name, prob, *faithful = CAM_CAPTION.match(caption).groups()
            assert (int(rank), name, prob) == (order.index(c) + 1, classes[c], space.percent(probs[c]))
            mask = library_masks(sp, x[None], [c], "layer2", "Grad-CAM")
            assert near(image, inference.overlay(x, mask[0], 1.0))
            assert faithful == [space.percent(v[0]) for v in sp.clf.faithfulness(x[None], mask, [c])], caption


class _Recorder:
    """Stands in for ROAD's imputer: records which pixels it is asked to fill, fills none."""

    def __init__(self) -> None:
        self.hidden: list[np.ndarray] = []

    def __call__(self, img, mask):
        self.hidden.append(mask.numpy() == 0)
        return img


def test_faithfulness_hides_the_most_then_least_highlighted_fifth(sp: space.SpaceApp, examples, monkeypatch) -> None:
    """Exactly 20% of the pixels (205 of 1024), the most highlighted, then the least, even when the map
    ties over half the image; the numbers are the class's probability (equal to it when nothing is filled)."""
    from pytorch_grad_cam.metrics import road

    recorder = _Recorder()
    monkeypatch.setattr(road, "NoisyLinearImputer", lambda: recorder)
    mask = np.zeros((32, 32), np.float32)
    mask[:, 16:] = np.linspace(0.01, 1.0, 16 * 32).reshape(32, 16)  # the left half ties at 0
    x, _ = sp._model_input(str(examples["cat"]))
    probs = sp.clf.probabilities(x[None])[0]
    most, least = sp.clf.faithfulness(x[None], mask[None], [3])
    assert most[0] == pytest.approx(probs[3], abs=1e-5) and least[0] == pytest.approx(probs[3], abs=1e-5)
    hidden_most, hidden_least = recorder.hidden
    top_fifth = mask >= np.sort(mask.ravel())[-205]
    assert hidden_most.sum() == 205 and np.array_equal(hidden_most, top_fifth)
    assert hidden_least.sum() == 205 and np.all(mask[hidden_least] == 0)
    # The 205 of the 512 tied pixels are drawn across the tie, not the first ones in reading order (the top rows).
    assert hidden_least[:16].sum() > 60 and hidden_least[16:].sum() > 60


def test_faithfulness_numbers_are_the_probabilities_with_those_pixels_hidden(
    sp: space.SpaceApp, examples, monkeypatch
) -> None:
    """The first number is the class's probability with the most highlighted fifth hidden, the second with the least
    highlighted one: with an imputer that blanks the hidden pixels (to 0, the mean colour), both can be computed."""
    from pytorch_grad_cam.metrics import road

    monkeypatch.setattr(road, "NoisyLinearImputer", lambda: lambda img, keep: img * keep)
    mask = np.random.default_rng(4).random((32, 32)).astype(np.float32)  # no ties
    x, _ = sp._model_input(str(examples["bird"]))
    top = int(sp.clf.probabilities(x[None])[0].argmax())
    most, least = sp.clf.faithfulness(x[None], mask[None], [top])
    ordered = np.sort(mask.ravel())
    for got, hidden in ((most[0], mask >= ordered[-205]), (least[0], mask <= ordered[204])):
        with torch.no_grad():
            blanked = sp.clf.to_tensor(x) * torch.from_numpy((~hidden).astype(np.float32))
            want = float(sp.clf.net(blanked).softmax(1)[0, top])
        assert got == pytest.approx(want, abs=1e-5)
    assert abs(most[0] - least[0]) > 1e-3


def test_pixel_order_is_exact_and_the_same_anywhere_in_a_batch() -> None:
    """Ranks keep the mask's order, break ties (here over half the map) without favouring a position
    in the batch: a heatmap scores the same explained alone or as #5 of ten."""
    rng = np.random.default_rng(3)
    masks = np.where(rng.random((3, 32, 32)) < 0.5, 0.0, rng.random((3, 32, 32))).astype(np.float32)
    ranks = explain.pixel_order(masks)
    assert np.array_equal(ranks[2], explain.pixel_order(masks[2:])[0])
    assert np.array_equal(np.sort(ranks[0].ravel()), np.linspace(0, 1, 1024, dtype=np.float32))
    assert np.all(np.diff(masks[0].ravel()[np.argsort(ranks[0].ravel())]) >= 0)  # the mask's order kept


def test_faithfulness_numbers_are_symmetric_repeatable_and_captioned(sp: space.SpaceApp, examples) -> None:
    """An inverted map swaps the two numbers (same pixels hidden, sides swapped); the same heatmap gets the same
    numbers in any request, alone or in a batch (the imputation's noise is seeded per image); the caption shows
    them most-first."""
    path = str(examples["bird"])  # its two numbers differ (78%: about 37% and 77%), so a swap shows
    x, _ = sp._model_input(path)
    top = int(sp.clf.probabilities(x[None])[0].argmax())
    mask = np.random.default_rng(2).random((1, 32, 32)).astype(np.float32)  # no ties
    most, least = sp.clf.faithfulness(x[None], mask, [top])
    most_inv, least_inv = sp.clf.faithfulness(x[None], 1 - mask, [top])
    assert most[0] == least_inv[0] and least[0] == most_inv[0] and most[0] != least[0]
    cam = library_masks(sp, x[None], [top], "layer2", "Grad-CAM")
    expected = sp.clf.faithfulness(x[None], cam, [top])
    torch.rand(7)  # anything else drawing from torch's random generator must not change the numbers
    assert all(np.array_equal(a, b) for a, b in zip(expected, sp.clf.faithfulness(x[None], cam, [top]), strict=True))
    assert expected[0][0] != expected[1][0]
    _, cams = ui(sp.explain)(path, True, 3, "layer2", 0.5, "Grad-CAM", space.TOP)
    top3 = [int(c) for c in np.argsort(-sp.clf.probabilities(x[None])[0], kind="stable")[:3]]
    for (_, caption), c in zip(cams, top3, strict=True):  # a heatmap's numbers do not depend on its batch
        alone = sp.clf.faithfulness(x[None], library_masks(sp, x[None], [c], "layer2", "Grad-CAM"), [c])
        assert CAM_CAPTION.match(caption).groups()[3:] == tuple(space.percent(v[0]) for v in alone), caption
    batch = library_masks(sp, np.repeat(x[None], 3, 0), top3, "layer2", "Grad-CAM")
    together = sp.clf.faithfulness(np.repeat(x[None], 3, 0), batch, top3)
    for i, c in enumerate(top3):
        alone = sp.clf.faithfulness(x[None], batch[i : i + 1], [c])
        assert [v[i] for v in together] == [v[0] for v in alone], sp.clf.classes[c]


def test_percentages_keep_small_changes_visible() -> None:
    assert [space.percent(p) for p in (0.923, 0.1, 0.0345, 0.001, 0.0004)] == ["92%", "10%", "3.5%", "0.1%", "<0.1%"]


BAD_CAM_ARGS = [
    ((True, 0, "layer2", 0.5), "number of images"),
    ((True, 11, "layer2", 0.5), "number of images"),
    ((True, 2.5, "layer2", 0.5), "number of images"),
    ((True, "3", "layer2", 0.5), "number of images"),
    ((True, 3, "fc", 0.5), "Unknown Grad-CAM layer"),
    ((True, 3, None, 0.5), "Unknown Grad-CAM layer"),
    ((True, 3, 2, 0.5), "Unknown Grad-CAM layer"),
    ((True, 3, "layer2", -0.1), "opacity"),
    ((True, 3, "layer2", 1.5), "opacity"),
    ((True, 3, "layer2", "0.5"), "opacity"),
    ((True, 3, "layer2", None), "opacity"),
    (("yes", 3, "layer2", 0.5), "Show heatmaps must be true or false"),
    ((True, 3, "layer2", 0.5, "ScoreCAM"), "Unknown explanation method 'ScoreCAM'; choose one of: Grad-CAM,"),
    ((True, 3, "layer2", 0.5, "gradcam"), "Unknown explanation method 'gradcam'"),
    ((False, 3, "layer2", 0.5, "gradcam"), "Unknown explanation method 'gradcam'"),  # checked even when off
    ((False, 3, "layer2", 0.5, "Grad-CAM", "cow"), "Unknown class to explain 'cow'"),
    ((True, 3, "layer2", 0.5, None), "Unknown explanation method None"),
    ((True, 3, "layer2", 0.5, "Grad-CAM", "Dog"), "Unknown class to explain 'Dog'; choose one of: top, airplane"),
    ((True, 3, "layer2", 0.5, "Grad-CAM", "cow"), "Unknown class to explain 'cow'"),
    ((True, 3, "layer2", 0.5, "Grad-CAM", 5), "Unknown class to explain 5"),
]


@pytest.mark.parametrize(("args", "message"), BAD_CAM_ARGS)
def test_gradcam_parameters_are_checked(sp: space.SpaceApp, examples, args, message) -> None:
    with pytest.raises(gr.Error, match=message):
        ui(sp.explain)(str(examples["cat"]), *args)


def test_opacity_0_and_1_are_accepted_at_both_ends(sp: space.SpaceApp, examples) -> None:
    """The slider's ends: 0 shows the photo exactly, 1 the heatmap only, in the heatmaps and in the mistakes."""
    path = str(examples["cat"])
    x, _ = sp._model_input(path)
    [(photo_only, _)] = ui(sp.explain)(path, True, 1, "layer2", 0.0)[1]
    [(heatmap_only, _)] = ui(sp.explain)(path, True, 1, "layer2", 1.0)[1]
    assert np.array_equal(photo_only, inference.enlarge(x)) and not np.array_equal(heatmap_only, photo_only)
    [(mistake, _)] = ui(sp.misclassified)(True, 1, True, "layer2", 0.0)
    assert np.array_equal(mistake[:, -photo_only.shape[1] :], inference.enlarge(sp.store.images[0]))


# ---------------------------------------------------------------------------- misclassified gallery


def test_misclassified_gallery(sp: space.SpaceApp) -> None:
    n = min(8, len(sp.store))
    items = ui(sp.misclassified)(True, n, False, "layer2", 0.5)
    assert len(items) == n
    side = sp.clf.image_size * inference.DISPLAY_SCALE
    confidences = []
    for image, caption in items:
        true, pred, pct = CAPTION.match(caption).group(1, 2, 3)
        assert true != pred and {true, pred} <= set(sp.clf.classes)
        assert image.shape == (side, side, 3)
        confidences.append(int(pct))
    assert confidences == sorted(confidences, reverse=True)  # most confident first
    with_cam = ui(sp.misclassified)(True, n, True, "layer1.residual", 0.7)
    assert [CAPTION.match(c).group(1, 2, 3) for _, c in with_cam] == [CAPTION.match(c).group(1, 2, 3) for _, c in items]
    assert all(image.shape == (side, 3 * side + 2 * space.GAP, 3) for image, _ in with_cam)
    assert ui(sp.misclassified)(False, n, True, "layer2", 0.5) == []


def test_misclassified_heatmaps_of_the_predicted_then_the_true_class(sp: space.SpaceApp) -> None:
    """Photo | heatmap of the (wrong) prediction | heatmap of the true class, with the method chosen;
    asked for 1 then 3, so the cache grows by the right images."""
    side = sp.clf.image_size * inference.DISPLAY_SCALE
    ui(sp.misclassified)(True, 1, True, "layer2", 1.0, "Grad-CAM++")
    items = ui(sp.misclassified)(True, 3, True, "layer2", 1.0, "Grad-CAM++")
    for i, (image, caption) in enumerate(items):
        photo, true, pred = sp.store.images[i], int(sp.store.labels[i]), int(sp.store.preds[i])
        names = CAPTION.match(caption).group(1, 2, 5, 6)
        assert names == tuple(sp.clf.classes[c] for c in (true, pred, pred, true)), caption
        panels = [image[:, k * (side + space.GAP) : k * (side + space.GAP) + side] for k in range(3)]
        gaps = [image[:, k * (side + space.GAP) - space.GAP : k * (side + space.GAP)] for k in (1, 2)]
        assert all(np.all(gap == 255) for gap in gaps)  # white between the panels
        assert np.array_equal(panels[0], inference.enlarge(photo))
        for panel, c in zip(panels[1:], (pred, true), strict=True):
            want = inference.overlay(photo, library_masks(sp, photo[None], [c], "layer2", "Grad-CAM++")[0], 1.0)
            assert near(panel, want), (i, sp.clf.classes[c])


def test_misclassified_heatmaps_are_the_methods_asked_for_one_after_the_other(sp: space.SpaceApp) -> None:
    """The cached heatmaps belong to one layer and one method: a second method at the same layer gets its own,
    not the first one's."""
    side = sp.clf.image_size * inference.DISPLAY_SCALE
    photo, pred = sp.store.images[0], int(sp.store.preds[0])
    wanted = {
        m: inference.overlay(photo, library_masks(sp, photo[None], [pred], "layer1", m)[0], 1.0)
        for m in ("Grad-CAM", "EigenCAM")
    }
    assert not near(*wanted.values())  # the two methods draw different heatmaps
    for method, want in wanted.items():
        (image, _), *_ = ui(sp.misclassified)(True, 2, True, "layer1", 1.0, method)
        assert near(image[:, side + space.GAP : 2 * side + space.GAP], want), method


def test_misclassified_heatmaps_are_the_layers_asked_for_one_after_the_other(sp: space.SpaceApp) -> None:
    """Likewise for layers: the same method at a second layer gets that layer's heatmaps, not the first one's."""
    side = sp.clf.image_size * inference.DISPLAY_SCALE
    photo, pred = sp.store.images[0], int(sp.store.preds[0])
    wanted = {
        layer: inference.overlay(photo, library_masks(sp, photo[None], [pred], layer, "XGradCAM")[0], 1.0)
        for layer in ("layer3", "layer1.residual")
    }
    assert not near(*wanted.values())
    for layer, want in wanted.items():
        (image, _), *_ = ui(sp.misclassified)(True, 1, True, layer, 1.0, "XGradCAM")
        assert near(image[:, side + space.GAP : 2 * side + space.GAP], want), layer


def test_misclassified_store_is_one_compact_file() -> None:
    with np.load(APP_DIR / "misclassified.npz", allow_pickle=False) as data:
        assert data["images"].dtype == np.uint8 and data["images"].ndim == 4
        assert {"labels", "preds", "confidences"} <= set(data.files)
    assert not list(APP_DIR.glob("*_as_*.png"))


def _first_set_to(values: np.ndarray, value: int) -> np.ndarray:
    return np.concatenate([[value], values[1:]]).astype(values.dtype)


STORE_FAULTS = {
    "classes in another order": (lambda d: d | {"classes": d["classes"][::-1]}, "classes differ"),
    "a label past the last class": (lambda d: d | {"labels": _first_set_to(d["labels"], 10)}, "out of range"),
    "a negative prediction": (lambda d: d | {"preds": _first_set_to(d["preds"], -1)}, "out of range"),
    "float images": (lambda d: d | {"images": d["images"].astype(np.float32)}, "must be uint8"),
    "28x28 images": (lambda d: d | {"images": d["images"][:, :28, :28]}, "must be uint8"),
    "a confidence short": (lambda d: d | {"confidences": d["confidences"][:-1]}, "differ in length"),
    "no predictions": (lambda d: {name: a for name, a in d.items() if name != "preds"}, "not a readable store"),
}


@pytest.mark.parametrize("fault", list(STORE_FAULTS))
def test_a_misclassified_store_that_does_not_fit_the_model_is_refused(
    sp: space.SpaceApp, tmp_path: Path, fault: str
) -> None:
    """A store from another model (other classes, other image size) or a damaged one is refused at start-up, not shown
    with wrong names or failing on its first heatmap; the same arrays untouched load."""
    with np.load(APP_DIR / "misclassified.npz", allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    change, message = STORE_FAULTS[fault]
    path = tmp_path / "misclassified.npz"
    np.savez(path, **change(arrays))
    with pytest.raises(inference.ModelFilesError, match=message):
        inference.MisclassifiedStore.load(path, sp.clf.classes, sp.clf.image_size)
    np.savez(path, **arrays)
    assert len(inference.MisclassifiedStore.load(path, sp.clf.classes, sp.clf.image_size)) == len(sp.store)


def test_a_store_that_is_not_an_npz_file_is_refused_by_name(sp: space.SpaceApp, tmp_path: Path) -> None:
    path = tmp_path / "misclassified.npz"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(inference.ModelFilesError, match=f"{re.escape(str(path))} is not a readable store"):
        inference.MisclassifiedStore.load(path, sp.clf.classes, sp.clf.image_size)


BAD_GALLERY_ARGS = [
    ((True, 0, False, "layer2", 0.5), "number of images must be from 1 to"),
    ((True, 10_000, False, "layer2", 0.5), "number of images must be from 1 to"),
    ((True, 1.5, False, "layer2", 0.5), "number of images must be a whole number"),
    (("no", 3, False, "layer2", 0.5), "Show misclassified images must be true or false"),
    ((True, 3, 1, "layer2", 0.5), "Show heatmaps must be true or false"),
    ((True, 3, True, "fc", 0.5), "Unknown Grad-CAM layer 'fc'"),
    ((True, 3, True, "layer2", 2), "opacity must be a number from 0 to 1"),
    ((True, 3, True, "layer2", 0.5, "ScoreCAM"), "Unknown explanation method 'ScoreCAM'"),
    ((True, 3, False, "layer2", 0.5, "ScoreCAM"), "Unknown explanation method 'ScoreCAM'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_GALLERY_ARGS)
def test_misclassified_parameters_are_checked(sp: space.SpaceApp, args, message: str) -> None:
    with pytest.raises(gr.Error, match=message):
        ui(sp.misclassified)(*args)


def test_ui_has_the_named_endpoints_and_hidden_controls(sp: space.SpaceApp) -> None:
    demo = sp.build()
    endpoints = demo.get_api_info()["named_endpoints"]
    assert {"/predict", "/explain", "/misclassified"} <= set(endpoints)
    params = {name: [p["parameter_name"] for p in endpoints[name]["parameters"]] for name in endpoints}
    assert params["/predict"] == ["image", "top_k"]
    assert params["/explain"] == ["image", "show_cam", "count", "layer", "opacity", "method", "class_name"]
    assert params["/misclassified"] == ["show", "count", "show_cam", "layer", "opacity", "method"]
    dropdowns = blocks_by_id(demo, gr.Dropdown)
    assert sp.clf.layers == LAYERS
    assert [label for label, _ in dropdowns["cam-layer"].choices] == [
        inference.layer_label(k, v) for k, v in LAYERS.items()
    ]
    assert dropdowns["cam-layer"].value == "layer2"  # the README's default: the deepest layer still 8x8
    assert [v for _, v in dropdowns["cam-method"].choices] == list(LIBRARY_CLASSES)
    assert dropdowns["cam-method"].value == "Grad-CAM"
    assert [v for _, v in dropdowns["cam-class"].choices] == [space.TOP, *sp.clf.classes]
    galleries = [b for b in demo.blocks.values() if isinstance(b, gr.Gallery)]
    assert galleries and not any(g.visible for g in galleries)  # shown only when their box is ticked
    assert [a.open for a in blocks_by_id(demo, gr.Accordion).values()] == [False]


def _image_outputs(demo: gr.Blocks) -> tuple[gr.Label, gr.Image, gr.Gallery]:
    """What an image's results fill: its top-k classes, the model input and the heatmaps."""
    return (
        blocks_by_id(demo, gr.Label)["prediction"],
        blocks_by_id(demo, gr.Image)["model-input"],
        blocks_by_id(demo, gr.Gallery)["gradcam-gallery"],
    )


def test_a_refused_image_clears_the_last_images_prediction_input_and_heatmaps(sp: space.SpaceApp) -> None:
    """A corrupt upload, or Classify with none, must not leave the last image's top-k classes beside it (the
    prediction's failure cleared only the heatmaps, and Classify's failure was chained to /explain, which then never
    runs). Every event running predict on an image (upload, example, Classify; not a new k) is followed, on failure,
    by one emptying all three outputs."""
    demo = sp.build()
    label, seen, gallery = _image_outputs(demo)
    image, top_k = blocks_by_id(demo, gr.Image)["upload"], blocks_by_id(demo, gr.Slider)["top-k"]
    fns = list(demo.fns.values())
    predicts = [f for f in fns if f.outputs == [label] and image in f.inputs and top_k._id not in dict(f.targets)]
    assert len(predicts) == 3  # an upload, an example, Classify
    for predict in predicts:
        clears = [f for f in fns if f.trigger_after == predict._id and f.trigger_only_on_failure]
        assert [set(f.outputs) >= {label, seen, gallery} for f in clears] == [True], predict.targets
        assert all(value in (None, []) for value in clears[0].fn())


def test_an_upload_the_browser_refuses_clears_the_last_images_outputs(sp: space.SpaceApp) -> None:
    """Gradio refuses a file over max_file_size in the browser: it empties the image and fires only its `change`
    event, which must take the last image's classes, model input and heatmaps with it (they stayed beside the empty
    box), and leave them alone when an image arrives (its own events fill them)."""
    demo = sp.build()
    outputs = set(_image_outputs(demo))
    image = blocks_by_id(demo, gr.Image)["upload"]
    on_change = [f for f in demo.fns.values() if (image._id, "change") in f.targets and set(f.outputs) >= outputs]
    assert len(on_change) == 1
    assert all(value in (None, []) for value in on_change[0].fn(None))
    assert on_change[0].fn({"path": "photo.png"}) == (gr.skip(),) * 3


def test_heatmaps_refused_after_a_prediction_clear_the_last_ones(sp: space.SpaceApp) -> None:
    """Classify runs /explain after /predict: if /explain refuses (a bad layer or opacity over the API), the model
    input and heatmaps of the last request must not stay beside the new prediction."""
    demo = sp.build()
    _, seen, gallery = _image_outputs(demo)
    [explain] = [f for f in demo.fns.values() if f.api_name == "explain"]
    clears = [f for f in demo.fns.values() if f.trigger_after == explain._id and f.trigger_only_on_failure]
    assert [set(f.outputs) for f in clears] == [{seen, gallery}]
    assert all(value in (None, []) for value in clears[0].fn())


def test_a_new_image_draws_its_heatmaps_and_a_new_k_only_reranks(
    sp: space.SpaceApp, tmp_path: Path, warnings_shown: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload, an example or Classify redraws the model input and heatmaps once its prediction succeeds; moving k
    reranks without repeating the notes about the image; with no image yet, editing a control clears quietly."""
    demo = sp.build()
    label, seen, gallery = _image_outputs(demo)
    image, top_k = blocks_by_id(demo, gr.Image)["upload"], blocks_by_id(demo, gr.Slider)["top-k"]
    fns = list(demo.fns.values())
    predicts = [f for f in fns if f.outputs == [label] and image in f.inputs and top_k._id not in dict(f.targets)]
    assert len(predicts) == 3
    for predict in predicts:
        follow = [f for f in fns if f.trigger_after == predict._id and f.trigger_only_on_success]
        assert [set(f.outputs) for f in follow] == [{seen, gallery}], predict.targets
    monkeypatch.setattr(space, "_check_received", lambda *args: None)  # a test file, not an upload
    gray = str(save(Image.new("L", (40, 40), 128), tmp_path / "gray.png"))
    [on_k] = [f for f in fns if (top_k._id, "change") in f.targets]
    assert list(on_k.fn(gray, 5)) == list(sp.rerank(gray, 5)) and warnings_shown == []
    assert on_k.fn(None, 5) is None
    redraw = [f for f in fns if f.outputs == [seen, gallery] and f.trigger_after is None]
    assert redraw and all(f.fn(None, True, 3, "layer2", 0.5, "Grad-CAM", space.TOP) == (None, []) for f in redraw)


def test_controls_appear_with_the_choices_they_belong_to(sp: space.SpaceApp) -> None:
    """Ticking "Show heatmaps" shows their controls and gallery (unticking hides them); picking a class hides the
    count of top classes, which then does not apply; a method shows its one-line description."""
    demo = sp.build()
    blocks = blocks_by_id(demo, gr.blocks.Block)  # every kind: checkboxes, sliders, galleries, the legend

    def handler(source: str) -> Any:
        [found] = [f for f in demo.fns.values() if f.inputs == [blocks[source]]]
        return found

    show = handler("show-cam")
    assert blocks["gradcam-gallery"] in show.outputs and blocks["faithfulness-legend"] in show.outputs
    assert [u["visible"] for u in show.fn(True)] == [True] * 3 and [u["visible"] for u in show.fn(False)] == [False] * 3
    mistakes = handler("show-mistakes")
    assert set(mistakes.outputs) == {blocks["mistake-count"], blocks["misclassified-gallery"]}
    assert [u["visible"] for u in mistakes.fn(True)] == [True] * 2
    target = handler("cam-class")
    assert target.outputs == [blocks["cam-count"]]
    assert target.fn(space.TOP)["visible"] is True and target.fn("dog")["visible"] is False
    method = handler("cam-method")
    assert method.outputs == [blocks["cam-method-about"]] and method.fn("LayerCAM") == space.method_line("LayerCAM")


def test_each_method_has_its_one_line_description() -> None:
    lines = [space.method_line(m) for m in LIBRARY_CLASSES]
    assert all(
        line.startswith(f"**{m}**: ") and "\n" not in line for m, line in zip(LIBRARY_CLASSES, lines, strict=True)
    )
    assert len(set(lines)) == len(lines) and "same map for every class" in space.method_line("EigenCAM")


CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _metrics() -> dict[str, Any]:
    """Made-up metrics, asymmetric so a transposed matrix or swapped roles show."""
    confusion = (np.eye(10, dtype=int) * 90).tolist()
    confusion[3][5], confusion[5][3], confusion[2][0] = 40, 25, 7  # cat as dog, dog as cat, bird as airplane
    per_class = {c: 0.5 + i / 100 for i, c in enumerate(CLASSES)}
    return {"n": 1000, "accuracy": 0.873, "accuracy_tta": 0.881, "per_class": per_class, "confusion": confusion}


def test_about_the_model_reads_the_metrics() -> None:
    metrics = _metrics()
    rows = space.confusion_rows(metrics, CLASSES)
    assert rows[3][0] == "cat" and rows[3][1 + 5] == 40 and rows[5][1 + 3] == 25
    per_class = space.per_class_rows(metrics, CLASSES)
    assert per_class[3] == ["cat", "53.0%", "—", "—"] and len(per_class) == 10
    text = space.about_text(metrics, CLASSES)
    assert "**87.3%** of the 1,000 CIFAR-10 test images classified right (88.1% with flip test-time" in text
    assert "one-pixel-shift" not in text
    tta = {c: 0.6 + i / 100 for i, c in enumerate(CLASSES)}
    translate = {c: 0.7 + i / 100 for i, c in enumerate(CLASSES)}
    metrics |= {"per_class_tta": tta, "accuracy_tta_translate": 0.889, "per_class_tta_translate": translate}
    assert space.per_class_rows(metrics, CLASSES)[3] == ["cat", "53.0%", "63.0%", "73.0%"]
    assert "augmentation, 88.9% with flip and one-pixel-shift views)." in space.about_text(metrics, CLASSES)
    assert "cat taken for dog (40×), dog taken for cat (25×), bird taken for airplane (7×)" in text
    assert "has no" not in text and "stored as" not in text  # torchvision's original arrays: no format to name


def test_the_accuracy_names_a_copys_file_format(sp: space.SpaceApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """Measured on a JPEG copy, the accuracy runs points below what the original arrays give: the header and the
    about text say so. A malformed value (not a string, or empty) says nothing rather than something wrong."""
    metrics = _metrics() | {"test_files": "JPEG"}
    assert "of the 1,000 CIFAR-10 test images stored as JPEG classified right (88.1%" in space.about_text(
        metrics, CLASSES
    )
    monkeypatch.setitem(sp.clf.config, "metrics", metrics)
    assert "**87.3%** on 1,000 CIFAR-10 test images stored as JPEG (88.1% with flip" in sp.header()
    for malformed in (5, "", None, ["JPEG"]):
        metrics["test_files"] = malformed
        assert "stored as" not in space.about_text(metrics, CLASSES) and "stored as" not in sp.header()


def test_per_class_table_has_rows_only_for_the_classes_the_metrics_cover() -> None:
    """A report on part of the test split covers only the classes in it; a view that lacks a class shows a dash."""
    metrics = {"per_class": {"dog": 0.6, "cat": 0.5}, "per_class_tta": {"cat": 0.55}}
    assert space.per_class_rows(metrics, CLASSES) == [["cat", "50.0%", "55.0%", "—"], ["dog", "60.0%", "—", "—"]]


def test_about_the_model_without_the_new_metrics(sp: space.SpaceApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older model.json (accuracy only): the app still builds, shows what it has and says what it lacks."""
    old = {"n": 10000, "accuracy": 0.906, "accuracy_tta": 0.9119}
    monkeypatch.setitem(sp.clf.config, "metrics", old)
    demo = sp.build()
    assert not blocks_by_id(demo, gr.Dataframe)
    text = blocks_by_id(demo, gr.Markdown)["about-text"].value
    assert "**90.6%**" in text and "has no per-class accuracy and no confusion matrix yet" in text
    monkeypatch.setitem(sp.clf.config, "metrics", {**old, "confusion": [[1, 2], [3, 4]]})  # malformed: ignored
    assert "no confusion matrix" in space.about_text(sp.clf.config["metrics"], sp.clf.classes)


def test_about_the_model_shows_the_committed_metrics(sp: space.SpaceApp) -> None:
    metrics = sp.clf.config["metrics"]
    frames = blocks_by_id(sp.build(), gr.Dataframe)
    if "confusion" not in metrics:
        pytest.skip("space_app/model.json predates the per-class metrics")
    assert frames["confusion"].value["data"][3] == ["cat", *metrics["confusion"][3]]
    assert frames["confusion"].value["headers"][1:] == sp.clf.classes
    first = sp.clf.classes[0]
    assert frames["per-class"].value["headers"] == space.PER_CLASS_HEADERS
    assert frames["per-class"].value["data"][0] == [
        first,
        *(f"{metrics[key][first]:.1%}" for key in ("per_class", "per_class_tta", "per_class_tta_translate")),
    ]


# ---------------------------------------------------------------------------- over HTTP, standalone copy


def test_standalone_copy_serves_predict_over_http(client, sp: space.SpaceApp) -> None:
    from gradio_client import handle_file

    out = client.predict(handle_file(str(APP_DIR / "examples" / "cat.png")), 5, api_name="/predict")
    assert len(out["confidences"]) == 5
    assert out["label"] == out["confidences"][0]["label"] and out["label"] in sp.clf.classes
    expected = sp.predict(str(APP_DIR / "examples" / "cat.png"), 5)
    assert [c["label"] for c in out["confidences"]] == list(expected)


def test_http_bad_input_gets_a_message_and_the_server_keeps_serving(client, tmp_path: Path) -> None:
    from gradio_client import handle_file

    cat = handle_file(str(APP_DIR / "examples" / "cat.png"))
    bomb = write_png(tmp_path / "bomb.png", 20000, 20000, bit_depth=1)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    cases = [
        ((cat, 11), "1 to 10"),
        ((cat, "abc"), "whole number"),
        ((handle_file(str(bomb)), 3), "megapixels"),
        ((handle_file(str(text)), 3), "not an image"),
    ]
    for args, message in cases:
        start = time.perf_counter()
        with pytest.raises(Exception, match=message):
            client.predict(*args, api_name="/predict")
        assert time.perf_counter() - start < 30
    with pytest.raises(Exception, match="Heatmap opacity must be a number from 0 to 1, got 7"):
        client.predict(cat, True, 3, "layer2", 7, api_name="/explain")
    with pytest.raises(Exception, match="Unknown explanation method 'ScoreCAM'"):
        client.predict(cat, True, 3, "layer2", 0.5, "ScoreCAM", "top", api_name="/explain")
    with pytest.raises(Exception, match="Unknown class to explain 'cow'"):
        client.predict(cat, True, 3, "layer2", 0.5, "Grad-CAM", "cow", api_name="/explain")
    with pytest.raises(Exception, match="Unknown Grad-CAM layer 'fc'"):
        client.predict(True, 3, True, "fc", 0.5, api_name="/misclassified")
    assert len(client.predict(cat, 3, api_name="/predict")["confidences"]) == 3


def test_http_upload_size_is_capped(client, server, tmp_path: Path) -> None:
    from gradio_client import handle_file

    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.truncate(inference.MAX_FILE_BYTES + 1024)
    # gradio_client refuses it itself, from the server's max_file_size...
    with pytest.raises(Exception, match=f"exceeds the maximum file size of {inference.MAX_FILE_BYTES} bytes"):
        client.predict(handle_file(str(big)), 3, api_name="/predict")
    # ...and so does the server's upload route, for clients that do not check.
    with big.open("rb") as f:
        response = httpx.post(server[0] + "gradio_api/upload", files={"files": ("big.png", f)}, timeout=60)
    assert response.status_code == 413 and "exceeded maximum allowed size" in response.text
    out = client.predict(handle_file(str(APP_DIR / "examples" / "dog.png")), 2, api_name="/predict")
    assert len(out["confidences"]) == 2


def _raw_call(url: str, endpoint: str, data: list) -> str:
    """An API call as any HTTP client can send it, past gradio_client's checks: the event stream's text."""
    event = httpx.post(f"{url}gradio_api/call/{endpoint}", json={"data": data}, timeout=30).json()["event_id"]
    return httpx.get(f"{url}gradio_api/call/{endpoint}/{event}", timeout=60).text


def test_http_a_path_on_the_server_is_refused_not_read(server, tmp_path: Path) -> None:
    """A FileData payload without its "meta" is not checked by Gradio (preprocess=False): the app refuses any
    path outside Gradio's upload folder and its examples, before it looks at the file."""
    elsewhere = tmp_path / "not_uploaded.png"
    elsewhere.write_bytes((APP_DIR / "examples" / "horse.png").read_bytes())
    for path in (elsewhere, APP_DIR / "model.safetensors", Path("/nonexistent/x.png")):
        for endpoint, data in (
            ("predict", [{"path": str(path)}, 3]),
            ("explain", [{"path": str(path)}, True, 1, "layer3", 0.5, "Grad-CAM", "top"]),
        ):
            events = _raw_call(server[0], endpoint, data)
            assert "event: error" in events and "uploaded to this app" in events, (path, endpoint, events)
            assert "horse" not in events and "MB" not in events and "could not be read" not in events
    example = server[0], "predict", [{"path": str(Path(server[2]).parent / "space_app" / "examples" / "cat.png")}, 1]
    assert '"label": "cat"' in _raw_call(*example), "the app's own examples must still be served"


def test_a_request_gradio_refuses_before_the_app_says_why(client) -> None:
    from gradio_client import handle_file

    with pytest.raises(Exception, match="ImageData"):  # gradio_client's AppError
        client.predict("not a file", 3, api_name="/predict")
    assert client.predict(handle_file(str(APP_DIR / "examples" / "cat.png")), 1, api_name="/predict")["label"]


def test_a_refused_request_is_logged_as_one_line_without_a_traceback(client, server) -> None:
    from gradio_client import handle_file

    log = server[2]
    before = len(log.read_text())
    with pytest.raises(Exception, match="1 to 10"):
        client.predict(handle_file(str(APP_DIR / "examples" / "cat.png")), 11, api_name="/predict")
    deadline = time.monotonic() + 10
    while "refused" not in log.read_text()[before:] and time.monotonic() < deadline:
        time.sleep(0.1)
    logged = log.read_text()[before:]
    assert "predict refused: " in logged and "1 to 10" in logged
    assert "Traceback" not in logged


def test_gradcam_and_gallery_over_http(client) -> None:
    from gradio_client import handle_file

    seen, cams = client.predict(
        handle_file(str(APP_DIR / "examples" / "ship.png")), True, 2, "layer1.residual", 0.5, api_name="/explain"
    )
    assert Image.open(seen).size == (256, 256) and len(cams) == 2
    _, cams = client.predict(
        handle_file(str(APP_DIR / "examples" / "ship.png")),
        True,
        2,
        "layer2",
        0.5,
        "HiResCAM",
        "dog",
        api_name="/explain",
    )
    assert [CAM_CAPTION.match(c["caption"]).group(2) for c in cams][0] == "dog"
    gallery = client.predict(True, 3, True, "layer3", 0.5, "LayerCAM", api_name="/misclassified")
    assert len(gallery) == 3 and all(CAPTION.match(item["caption"]).group(5) for item in gallery)
    assert Image.open(gallery[0]["image"]).size == (3 * 256 + 2 * space.GAP, 256)


# ---------------------------------------------------------------------------- a real browser


def _captions(page, gallery: str) -> list[str]:
    return page.locator(f"#{gallery} .caption-label").all_inner_texts()


def _wait_for_captions(page, gallery: str, expected: list[str]) -> None:
    page.wait_for_function(
        """([id, want]) => JSON.stringify([...document.querySelectorAll(`#${id} .caption-label`)]
        .map(c => c.innerText)) === JSON.stringify(want)""",
        arg=[gallery, expected],
        timeout=60_000,
    )


@pytest.mark.browser
def test_browser_upload_set_k_and_read_labels(server, sp: space.SpaceApp, tmp_path: Path) -> None:
    """A visitor's session: k, upload, Classify, k by keyboard; heatmaps with another method, then for a
    class picked by hand, each captioned with its faithfulness; the two-sided mistakes; the model's metrics."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing: run scripts/install_browser.sh")
    from playwright.sync_api import sync_playwright

    url = server[0]
    horse = str(APP_DIR / "examples" / "horse.png")
    k = 4
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url, wait_until="domcontentloaded", timeout=60_000)
            # k first: the upload itself triggers a prediction, which should already use it.
            number = page.locator("#top-k input[type=number]")
            number.fill(str(k))
            number.press("Enter")
            page.locator("#upload input[type=file]").set_input_files(horse)
            page.locator("#classify").click()
            rows = page.locator("#prediction [data-testid$='-confidence-set'] dt")
            page.wait_for_function(
                f"document.querySelectorAll(\"#prediction [data-testid$='-confidence-set']\").length === {k}",
                timeout=60_000,
            )
            labels = rows.all_inner_texts()
            # The keyboard moves a slider too (no pointer release): k + 1 rows without a click.
            page.locator("#top-k input[type=range]").focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function(
                f"document.querySelectorAll(\"#prediction [data-testid$='-confidence-set']\").length === {k + 1}",
                timeout=60_000,
            )
            page.locator("#show-cam input[type=checkbox]").check()
            page.locator("#model-input img").wait_for(timeout=60_000)
            _wait_for_captions(page, "gradcam-gallery", [c for _, c in sp.explain(horse, True, 3, "layer2", 0.5)[1]])
            # Another method: its one-line description, and its heatmaps' numbers.
            choose_option(page, "cam-method", "LayerCAM")
            page.wait_for_function("document.querySelector('#cam-method-about').innerText.startsWith('LayerCAM:')")
            layercam = [c for _, c in sp.explain(horse, True, 3, "layer2", 0.5, "LayerCAM")[1]]
            _wait_for_captions(page, "gradcam-gallery", layercam)
            # Why not a dog? Its heatmap, then the top class's; the count of top classes is hidden.
            choose_option(page, "cam-class", "dog")
            dog = [c for _, c in sp.explain(horse, True, 3, "layer2", 0.5, "LayerCAM", "dog")[1]]
            _wait_for_captions(page, "gradcam-gallery", dog)
            count_hidden = not page.locator("#cam-count").is_visible()
            # The mistakes, each with the heatmap of the predicted class, then of the true class.
            page.locator("#show-mistakes input[type=checkbox]").check()
            page.wait_for_function(
                """() => { const imgs = [...document.querySelectorAll('#misclassified-gallery img')];
                return imgs.length >= 10 && imgs.every(i => i.complete && i.naturalWidth > 0); }""",
                timeout=60_000,
            )
            mistakes = _captions(page, "misclassified-gallery")
            sizes = page.evaluate(
                """() => [...document.querySelectorAll('#misclassified-gallery img')]
                .map(i => [i.naturalWidth, i.naturalHeight])"""
            )
            # Every caption is shown whole: Gradio's default cut "automobile → truck (95…".
            cut_captions = page.evaluate(
                """() => [...document.querySelectorAll('.captioned .caption-label')]
                .map(c => [c.textContent, c.scrollWidth > c.clientWidth || c.scrollHeight > c.clientHeight])"""
            )
            # A refused upload clears the last image's classes, model input and heatmaps, not to leave them beside it;
            # replacing the horse, it runs once (image.change would run it twice, and say everything twice).
            refused_before = server[2].read_text().count("predict refused")
            (tmp_path / "notes.png").write_text("hello")
            page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "notes.png"))
            page.get_by_text("not an image").first.wait_for(timeout=60_000)
            page.wait_for_function(
                """() => !document.querySelector('#model-input img') && !document.querySelector('#gradcam-gallery img')
                && !document.querySelector("#prediction [data-testid$='-confidence-set']")""",
                timeout=30_000,
            )
            page.wait_for_timeout(3000)
            refused = server[2].read_text().count("predict refused") - refused_before
            page.locator("#about").get_by_text("About the model").click()
            page.locator("#about-text").wait_for(timeout=10_000)
            about = page.locator("#about").inner_text()
            # The confusion matrix's first row as shown: the class name left, its counts right-aligned.
            aligned = page.evaluate(
                """() => [...document.querySelector('#confusion .virtual-row').querySelectorAll('.body-cell .text')]
                .map(t => getComputedStyle(t).textAlign)"""
            )
            page.screenshot(path=str(tmp_path / "space_app.png"), full_page=True)
        finally:
            browser.close()
    assert labels == list(sp.predict(horse, k))
    assert refused == 1, f"the replacing upload ran predict {refused} times"
    assert aligned[0] in ("left", "start") and set(aligned[1:]) == {"right"} and len(aligned) == 11, aligned
    assert dog[0].startswith("#") and CAM_CAPTION.match(dog[0]).group(2) == "dog" and count_hidden
    expected = [c for _, c in sp.misclassified(True, 10, True, "layer2", 0.5, "LayerCAM")]
    assert mistakes == expected and all(CAPTION.match(c).group(5) for c in mistakes)
    assert all(size == [3 * 256 + 2 * space.GAP, 256] for size in sizes)
    assert len(cut_captions) >= 12 and not [text for text, cut in cut_captions if cut]
    assert space.about_text(sp.clf.config["metrics"], sp.clf.classes).split("**")[0] in about
    if "confusion" in sp.clf.config["metrics"]:
        assert "true ↓ predicted →" in about and "Accuracy per class" in about
    assert (tmp_path / "space_app.png").stat().st_size > 10_000


def test_no_stray_files_in_the_space() -> None:
    allowed = {"app.py", "inference.py", "explain.py", "model.py", "requirements.txt", "README.md", "examples"}
    allowed |= {"__pycache__", "LICENSE", "pre-requirements.txt"}  # the last two: the publishing files
    allowed |= {"model.json", "model.safetensors", "misclassified.npz", ".gitattributes"}
    assert {p.name for p in APP_DIR.iterdir()} <= allowed


@pytest.mark.browser
def test_browser_on_a_phone_the_galleries_clear_their_labels_and_fit_the_width(server) -> None:
    """390 px wide: each gallery's first images start below its (wrapped) label, heatmaps two to a row, a
    mistake with its two heatmaps one to a row, and nothing wider than the screen."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing: run scripts/install_browser.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 900})
            page.goto(server[0], wait_until="domcontentloaded", timeout=60_000)
            page.locator("#upload input[type=file]").set_input_files(str(APP_DIR / "examples" / "ship.png"))
            page.locator("#show-cam input[type=checkbox]").check()
            page.locator("#show-mistakes input[type=checkbox]").check()
            layout = {}
            for gallery in ("gradcam-gallery", "misclassified-gallery"):
                page.locator(f"#{gallery} .thumbnail-item img").nth(2).wait_for(state="attached", timeout=60_000)
                layout[gallery] = page.evaluate(
                    """id => { const box = e => e.getBoundingClientRect();
                    const items = [...document.querySelectorAll(`#${id} .thumbnail-item`)].slice(0, 3).map(box);
                    return { labelBottom: box(document.querySelector(`#${id} [data-testid=block-label]`)).bottom,
                             tops: items.map(b => Math.round(b.top)), rights: items.map(b => b.right),
                             width: document.documentElement.clientWidth }; }""",
                    gallery,
                )
        finally:
            browser.close()
    for gallery, box in layout.items():
        assert min(box["tops"]) >= box["labelBottom"], f"{gallery}: images under the label {box}"
        assert max(box["rights"]) <= box["width"], f"{gallery}: wider than the screen {box}"
    cams, mistakes = layout["gradcam-gallery"]["tops"], layout["misclassified-gallery"]["tops"]
    assert cams[0] == cams[1] < cams[2], f"heatmaps are not two to a row: {cams}"
    assert mistakes[0] < mistakes[1] < mistakes[2], f"mistakes are not one to a row: {mistakes}"
