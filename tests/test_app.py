"""The Gradio Space (space_app/): predictions, Grad-CAM, the misclassified gallery, bad input,
the standalone copy served over HTTP, and a real browser driving the page.

Works with whichever weights are in space_app/ (a smoke run's or the real ones): only the
`trained` test looks at accuracy. Nothing here writes into the repository.
"""

from __future__ import annotations

import ast
import io
import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from app_helpers import APP_DIR, CHROMIUM, CHROMIUM_ARGS, REPO, copy_app, running_app, write_png
from PIL import Image

sys.path.insert(0, str(APP_DIR))
import app as space  # noqa: E402  (space_app/ is a folder of scripts, not a package)
import inference  # noqa: E402

LAYERS = inference.GRADCAM_LAYERS  # what the network offers; model.json must list exactly these
CAPTION = re.compile(r"^(\w+) → (\w+) \((\d+)%\)$")


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
    allowed_third_party |= {"safetensors": "safetensors", "pytorch_grad_cam": "grad-cam"}
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


def test_model_loads_in_eval_mode_with_settings_from_json(sp: space.SpaceApp) -> None:
    cfg = json.loads((APP_DIR / "model.json").read_text())
    assert not sp.clf.net.training
    assert sp.clf.classes == cfg["classes"] and sp.clf.image_size == cfg["image_size"]
    assert np.allclose(sp.clf.mean, cfg["mean"]) and np.allclose(sp.clf.std, cfg["std"])
    assert sp.clf.net.logit_scale == cfg["logit_scale"]
    assert f"{cfg['metrics']['accuracy']:.1%}" in sp.header()


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


def test_predict_is_thread_safe_alongside_gradcam(sp: space.SpaceApp, examples) -> None:
    paths = [str(p) for p in examples.values()]
    expected = {p: sp.predict(p, 10) for p in paths}

    def work(i: int) -> bool:
        path = paths[i % len(paths)]
        if i % 3 == 0:
            sp.explain(path, True, 2, "layer2", 0.5)
            return True
        out = sp.predict(path, 10)
        return all(abs(out[c] - expected[path][c]) < 1e-5 for c in out)

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(24)))


# ---------------------------------------------------------------------------- bad input


@pytest.fixture
def warnings_shown(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(gr, "Warning", lambda message, *a, **k: shown.append(message))
    return shown


@pytest.mark.parametrize("value", [None, "", {}, {"path": None}, {"url": "data:image/png;base64,AAAA"}, 42])
def test_no_image(sp: space.SpaceApp, value) -> None:
    with pytest.raises(gr.Error, match="(?i)image"):
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
    "png signature then garbage": (lambda p: _write(p, b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), "image"),
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


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [20000, 7000])  # 400 MP (Pillow itself refuses) and 49 MP (our cap)
def test_decompression_bomb_is_refused_from_its_header(sp: space.SpaceApp, tmp_path: Path, side: int) -> None:
    path = write_png(tmp_path / "bomb.png", side, side, bit_depth=1)
    start = time.perf_counter()
    with pytest.raises(gr.Error, match="megapixels"):
        ui(sp.predict)(str(path), 3)
    assert time.perf_counter() - start < 2.0


def _rgba_transparent(p: Path) -> Path:
    return save(Image.new("RGBA", (40, 40), (0, 0, 0, 0)), p.with_suffix(".png"))


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
    "LA": (lambda p: save(Image.new("LA", (40, 40), (0, 0)), p.with_suffix(".png")), "Grayscale", (255, 255, 255)),
    "P": (lambda p: save(Image.new("RGB", (40, 40), (0, 255, 0)).convert("P"), p.with_suffix(".png")), "Palette", None),
    "P+transparency": (_palette_transparent, "alpha channel", (255, 255, 255)),
    "CMYK": (_cmyk_jpeg, "CMYK", None),
    "I;16": (_gray16, "High-bit-depth", (255, 255, 255)),
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


def test_a_new_k_reranks_without_repeating_the_notes(sp, tmp_path: Path, warnings_shown: list[str]) -> None:
    path = save(Image.new("L", (40, 40), 128), tmp_path / "gray.png")
    first = ui(sp.predict)(str(path), 3)
    assert len(warnings_shown) == 1 and "Grayscale" in warnings_shown[0]
    again = ui(sp.rerank)(str(path), 5)
    assert len(warnings_shown) == 1 and list(again)[:3] == list(first)
    with pytest.raises(gr.Error, match="from 1 to 10"):
        ui(sp.rerank)(str(path), 11)


def test_exif_orientation_is_applied(sp: space.SpaceApp, tmp_path: Path, warnings_shown: list[str]) -> None:
    path = _exif_rotated(tmp_path / "photo")
    loaded = inference.open_image(path, 32)
    assert loaded.image.size == (32, 64)  # stored 64x32, viewed upright 32x64
    top, bottom = np.asarray(loaded.image)[:16].mean((0, 1)), np.asarray(loaded.image)[-16:].mean((0, 1))
    assert top[0] > 200 > bottom[0] and bottom[2] > 200 > top[2]  # red on top, blue below after 90° clockwise
    ui(sp.predict)(str(path), 3)
    assert any("EXIF" in w for w in warnings_shown)


def test_gradio_filedata_dict_is_accepted(sp: space.SpaceApp, examples) -> None:
    payload = {"path": str(examples["dog"]), "meta": {"_type": "gradio.FileData"}, "orig_name": "dog.png"}
    assert sp.predict(payload, 2) == sp.predict(str(examples["dog"]), 2)


# ---------------------------------------------------------------------------- Grad-CAM


@pytest.mark.parametrize("layer", list(LAYERS))
def test_gradcam_at_every_layer(sp: space.SpaceApp, examples, layer: str) -> None:
    seen, cams = ui(sp.explain)(str(examples["ship"]), True, 3, layer, 0.5)
    side = sp.clf.image_size * inference.DISPLAY_SCALE
    assert seen.shape == (side, side, 3)
    assert len(cams) == 3
    top = list(sp.predict(str(examples["ship"]), 3))
    for rank, ((image, caption), cls) in enumerate(zip(cams, top, strict=True), start=1):
        assert image.shape == (side, side, 3) and image.dtype == np.uint8
        assert re.fullmatch(rf"#{rank} {cls} \(\d+%\)", caption)
    masks = sp.clf.cam_masks(np.asarray(Image.open(examples["ship"]))[None], [0], layer)
    assert masks.shape == (1, 32, 32) and masks.min() >= 0.0 and masks.max() <= 1.0


def test_layer_labels_show_resolution() -> None:
    assert inference.layer_label("layer1.residual", 16) == "layer1 residual (16×16)"


def test_ten_gradcams_and_none_when_off(sp: space.SpaceApp, examples) -> None:
    seen, cams = sp.explain(str(examples["frog"]), True, 10, "layer3", 0.5)
    assert len(cams) == 10 and len({c for _, c in cams}) == 10
    seen_off, cams_off = sp.explain(str(examples["frog"]), False, 3, "layer3", 0.5)
    assert cams_off == [] and np.array_equal(seen, seen_off)


def test_opacity_reads_photo_to_heatmap() -> None:
    rng = np.random.default_rng(1)
    photos = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    mask = rng.random((32, 32)).astype(np.float32)
    only_photo = inference.overlay(photos[0], mask, 0.0)
    enlarged = inference.enlarge(photos[0]).astype(np.float32)
    assert np.allclose(only_photo, enlarged / enlarged.max() * 255, atol=1.01)
    assert np.array_equal(inference.overlay(photos[0], mask, 1.0), inference.overlay(photos[1], mask, 1.0))


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
    (("yes", 3, "layer2", 0.5), "true or false"),
]


@pytest.mark.parametrize(("args", "message"), BAD_CAM_ARGS)
def test_gradcam_parameters_are_checked(sp: space.SpaceApp, examples, args, message) -> None:
    with pytest.raises(gr.Error, match=message):
        ui(sp.explain)(str(examples["cat"]), *args)


# ---------------------------------------------------------------------------- misclassified gallery


def test_misclassified_gallery(sp: space.SpaceApp) -> None:
    n = min(8, len(sp.store))
    items = ui(sp.misclassified)(True, n, False, "layer2", 0.5)
    assert len(items) == n
    side = sp.clf.image_size * inference.DISPLAY_SCALE
    confidences = []
    for image, caption in items:
        true, pred, pct = CAPTION.match(caption).groups()
        assert true != pred and {true, pred} <= set(sp.clf.classes)
        assert image.shape == (side, side, 3)
        confidences.append(int(pct))
    assert confidences == sorted(confidences, reverse=True)  # most confident first
    with_cam = ui(sp.misclassified)(True, n, True, "layer1.residual", 0.7)
    assert [c for _, c in with_cam] == [c for _, c in items]
    assert all(image.shape == (side, 2 * side + space.GAP, 3) for image, _ in with_cam)
    assert ui(sp.misclassified)(False, n, True, "layer2", 0.5) == []


def test_misclassified_store_is_one_compact_file() -> None:
    with np.load(APP_DIR / "misclassified.npz", allow_pickle=False) as data:
        assert data["images"].dtype == np.uint8 and data["images"].ndim == 4
        assert {"labels", "preds", "confidences"} <= set(data.files)
    assert not list(APP_DIR.glob("*_as_*.png"))


@pytest.mark.parametrize(("count", "show"), [(0, True), (10_000, True), (1.5, True), (3, "no")])
def test_misclassified_parameters_are_checked(sp: space.SpaceApp, count, show) -> None:
    with pytest.raises(gr.Error):
        ui(sp.misclassified)(show, count, False, "layer2", 0.5)


def test_ui_has_the_named_endpoints_and_hidden_controls(sp: space.SpaceApp) -> None:
    demo = sp.build()
    endpoints = demo.get_api_info()["named_endpoints"]
    assert {"/predict", "/explain", "/misclassified"} <= set(endpoints)
    assert [p["parameter_name"] for p in endpoints["/predict"]["parameters"]] == ["image", "top_k"]
    dropdowns = [b for b in demo.blocks.values() if isinstance(b, gr.Dropdown)]
    assert sp.clf.layers == LAYERS
    assert [label for label, _ in dropdowns[0].choices] == [inference.layer_label(k, v) for k, v in LAYERS.items()]
    galleries = [b for b in demo.blocks.values() if isinstance(b, gr.Gallery)]
    assert galleries and not any(g.visible for g in galleries)  # shown only when their box is ticked


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
    with pytest.raises(Exception, match="opacity"):
        client.predict(cat, True, 3, "layer2", 7, api_name="/explain")
    with pytest.raises(Exception, match="layer"):
        client.predict(True, 3, True, "fc", 0.5, api_name="/misclassified")
    assert len(client.predict(cat, 3, api_name="/predict")["confidences"]) == 3


def test_http_upload_size_is_capped(client, server, tmp_path: Path) -> None:
    from gradio_client import handle_file

    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.truncate(inference.MAX_FILE_BYTES + 1024)
    with pytest.raises(Exception):  # noqa: B017  (refused by Gradio's upload route before any handler runs)
        client.predict(handle_file(str(big)), 3, api_name="/predict")
    out = client.predict(handle_file(str(APP_DIR / "examples" / "dog.png")), 2, api_name="/predict")
    assert len(out["confidences"]) == 2


def test_a_request_gradio_refuses_before_the_app_says_why(client) -> None:
    from gradio_client import handle_file

    with pytest.raises(Exception, match="ImageData"):  # noqa: B017  (gradio_client's AppError)
        client.predict("not a file", 3, api_name="/predict")
    assert client.predict(handle_file(str(APP_DIR / "examples" / "cat.png")), 1, api_name="/predict")["label"]


def test_gradcam_and_gallery_over_http(client) -> None:
    from gradio_client import handle_file

    seen, cams = client.predict(
        handle_file(str(APP_DIR / "examples" / "ship.png")), True, 2, "layer1.residual", 0.5, api_name="/explain"
    )
    assert Image.open(seen).size == (256, 256) and len(cams) == 2
    gallery = client.predict(True, 3, True, "layer3", 0.5, api_name="/misclassified")
    assert len(gallery) == 3 and all(CAPTION.match(item["caption"]) for item in gallery)


# ---------------------------------------------------------------------------- a real browser


@pytest.mark.browser
def test_browser_upload_set_k_and_read_labels(server, sp: space.SpaceApp, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing: run scripts/install_browser.sh")
    from playwright.sync_api import sync_playwright

    url = server[0]
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
            page.locator("#upload input[type=file]").set_input_files(str(APP_DIR / "examples" / "horse.png"))
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
            page.locator("#gradcam-gallery img").first.wait_for(timeout=60_000)
            page.locator("#model-input img").wait_for(timeout=60_000)
            page.locator("#show-mistakes input[type=checkbox]").check()
            page.wait_for_function("document.querySelectorAll('#misclassified-gallery img').length >= 10")
            # Every caption is shown whole: Gradio's default cut "automobile → truck (95…".
            cut_captions = page.evaluate(
                """() => [...document.querySelectorAll('#misclassified-gallery .caption-label')]
                .map(c => [c.textContent, c.scrollWidth > c.clientWidth])"""
            )
            page.screenshot(path=str(tmp_path / "space_app.png"), full_page=True)
        finally:
            browser.close()
    assert labels == list(sp.predict(str(APP_DIR / "examples" / "horse.png"), k))
    assert len(cut_captions) >= 10 and not [text for text, cut in cut_captions if cut]
    assert (tmp_path / "space_app.png").stat().st_size > 10_000


def test_no_stray_files_in_the_space() -> None:
    allowed = {"app.py", "inference.py", "model.py", "requirements.txt", "README.md", "examples", "__pycache__"}
    allowed |= {"model.json", "model.safetensors", "misclassified.npz", ".gitattributes"}
    assert {p.name for p in APP_DIR.iterdir()} <= allowed
