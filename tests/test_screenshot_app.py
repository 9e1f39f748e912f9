"""scripts/screenshot_app.py without a browser: an option the Space does not offer refused before anything starts,
the app started (or --url's used) and the options passed on to the browser, a missing Chromium told; the helpers it
starts the Space with (tests/app_helpers.py), on a stand-in app; and one browser run of the whole script."""

import contextlib
import json
import os
import subprocess
import sys
import urllib.request

import pytest
from app_helpers import APP_DIR, CHROMIUM, copy_app, free_port, running_app, wait_until_up, write_png
from PIL import Image


@pytest.fixture(scope="module")
def shot(repo):
    from app_helpers import load_file_module

    return load_file_module(repo / "scripts", "screenshot_app")


@pytest.fixture
def calls(shot, monkeypatch, tmp_path) -> dict:
    """What main asked for, recorded instead of done: the app's copy, its start, the browser's run."""
    calls = {}
    (tmp_path / "chromium").write_text("")
    monkeypatch.setattr(shot, "CHROMIUM", tmp_path / "chromium")

    @contextlib.contextmanager
    def started(app_dir, log_path):
        calls["started"] = app_dir
        yield "http://127.0.0.1:1/", 1

    monkeypatch.setattr(shot, "running_app", started)
    monkeypatch.setattr(shot, "copy_app", lambda dest: calls.setdefault("copied", dest))
    monkeypatch.setattr(shot, "shoot", lambda *args: calls.setdefault("shoot", args))
    return calls


def test_by_default_it_starts_a_copy_of_the_space_and_shoots_a_bird_into_images(shot, calls, repo, capsys):
    assert shot.main([]) == 0
    out = repo / "images" / "space_app.png"
    assert calls["shoot"] == ("http://127.0.0.1:1/", out, "bird", 5, 5, 8, "Grad-CAM", "top")
    assert calls["started"] == calls["copied"] and calls["copied"].name == "space_app"
    assert capsys.readouterr().out == f"wrote {out}\n"


def test_a_url_is_used_as_it_is_and_each_option_reaches_the_browser(shot, calls, tmp_path):
    out = tmp_path / "shots" / "app.png"
    options = ["--example", "cat", "--method", "LayerCAM", "--explain", "dog", "-k", "10", "--cams", "1"]
    assert shot.main(["--url", "http://example:7860/", "--out", str(out), *options, "--mistakes", "4"]) == 0
    assert calls == {"shoot": ("http://example:7860/", out, "cat", 10, 1, 4, "LayerCAM", "dog")}


def test_help_lists_the_spaces_examples_methods_and_classes_to_explain(shot, capsys):
    with pytest.raises(SystemExit) as exited:
        shot.main(["--help"])
    classes = json.loads((APP_DIR / "model.json").read_text())["classes"]
    examples = sorted(p.stem for p in (APP_DIR / "examples").glob("*.png"))
    methods = ["Grad-CAM", "Grad-CAM++", "XGradCAM", "HiResCAM", "LayerCAM", "EigenCAM"]
    choices = [f"{{{','.join(names)}}}" for names in (examples, methods, ["top", *classes])]
    out = capsys.readouterr().out
    assert exited.value.code == 0 and all(choice in out for choice in choices), out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--example", "cow"], ["--example", "invalid choice", "'cow'"]),
        (["--explain", "Dog"], ["--explain", "invalid choice", "'Dog'"]),
        (["--method", "GradCAM"], ["--method", "invalid choice", "'GradCAM'"]),
        (["-k", "0"], ["-k must be from 1 to 10"]),
        (["-k", "11"], ["-k must be from 1 to 10"]),
        (["--cams", "0"], ["--cams must be from 1 to 10"]),
        (["--cams", "11"], ["--cams must be from 1 to 10"]),
        (["--mistakes", "0"], ["--mistakes must be at least 1"]),
    ],
)
def test_an_option_the_space_does_not_offer_is_a_usage_error_before_anything_starts(shot, calls, capsys, args, words):
    with pytest.raises(SystemExit) as exited:
        shot.main(args)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert exited.value.code == 2 and len(errors) == 1 and all(word in errors[0] for word in words), err
    assert not calls


def test_without_chromium_it_says_how_to_install_it_and_starts_nothing(shot, calls, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(shot, "CHROMIUM", tmp_path / "no-chromium")
    assert shot.main([]) == 1
    assert capsys.readouterr().err == f"{tmp_path / 'no-chromium'} missing: run scripts/install_browser.sh\n"
    assert not calls


def test_install_browser_installs_nothing_when_chromium_is_there(repo, tmp_path):
    """Idempotent: with /usr/bin/chromium in place it says so and never reaches apt-get (nor sudo)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing: this checks the case where it is installed")
    for tool in ("apt-get", "sudo"):
        (tmp_path / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{tmp_path}/called"\n')
        (tmp_path / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    script = str(repo / "scripts" / "install_browser.sh")
    proc = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("chromium already installed: "), proc.stdout + proc.stderr
    assert not (tmp_path / "called").exists()


@pytest.mark.parametrize(("explain", "shown"), [("top", 4), ("bird", 1), ("dog", 2)])
def test_the_heatmaps_awaited_are_the_top_classes_or_the_class_picked_and_the_top_one(shot, explain, shown):
    """Picked by hand: its heatmap beside the top class's, one heatmap if the example's own class is picked."""
    assert shot.heatmaps_shown(4, explain, "bird") == shown


def test_copy_app_copies_the_spaces_runtime_files_and_examples_only(tmp_path):
    """Everything the Space runs on, not its publishing files (LICENSE, pre-requirements.txt) nor caches."""
    copy = copy_app(tmp_path / "space_app")
    publishing = {"LICENSE", "pre-requirements.txt", ".gitattributes", "__pycache__"}
    assert {p.name for p in copy.iterdir()} == {p.name for p in APP_DIR.iterdir()} - publishing
    examples = sorted(p.name for p in (APP_DIR / "examples").iterdir())
    assert sorted(p.name for p in (copy / "examples").iterdir()) == examples
    assert (copy / "model.json").read_bytes() == (APP_DIR / "model.json").read_bytes()


STAND_IN_APP = """
import http.server, os, sys
try:
    import era_utils
    blocked = False
except ImportError:
    blocked = True
print(os.getcwd(), blocked, sys.argv, os.environ.get("PYTHONPATH"), os.getpriority(os.PRIO_PROCESS, 0), flush=True)

class Info(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/gradio_api/info" else 404)
        self.end_headers()

address = (os.environ["GRADIO_SERVER_NAME"], int(os.environ["GRADIO_SERVER_PORT"]))
http.server.HTTPServer(address, Info).serve_forever()
"""


def test_running_app_serves_app_py_from_the_logs_folder_without_era_utils_and_stops_it(repo, tmp_path, monkeypatch):
    """Started as `python app.py` from the log's folder, niced, with neither PYTHONPATH nor era_utils (the Space
    must work with its own files); up when it answers; gone after."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "app.py").write_text(STAND_IN_APP)
    (tmp_path / "logs").mkdir()
    monkeypatch.setenv("PYTHONPATH", str(repo))
    port = free_port()
    with running_app(tmp_path / "app", tmp_path / "logs" / "app.log", port=port) as (url, pid):
        assert url == f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(url + "gradio_api/info", timeout=5) as response:
            assert response.status == 200
        assert os.path.exists(f"/proc/{pid}")
    assert not os.path.exists(f"/proc/{pid}")
    app = str((tmp_path / "app" / "app.py").resolve())
    niced = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 19)
    expected = f"{tmp_path / 'logs'} True {[app]} None {niced}"
    assert (tmp_path / "logs" / "app.log").read_text().splitlines()[0] == expected


def test_wait_until_up_gives_up_when_the_app_exits_or_time_runs_out():
    url = f"http://127.0.0.1:{free_port()}/"
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    exited.wait()
    with pytest.raises(RuntimeError, match="exited with code 3 before serving"):
        wait_until_up(url, exited, timeout=30)
    with pytest.raises(TimeoutError, match="did not answer within 1s"):
        wait_until_up(url, timeout=1)


@pytest.mark.parametrize(
    ("width", "bit_depth", "color_type", "row", "mode", "pixel"),
    [(3, 1, 0, None, "1", 0), (2, 16, 2, b"\xff\xff\x00\x00\x80\x00" * 2, "RGB", (255, 0, 128))],
)
def test_write_png_writes_a_png_pillow_decodes(tmp_path, width, bit_depth, color_type, row, mode, pixel):
    path = write_png(tmp_path / "a.png", width, 5, bit_depth=bit_depth, color_type=color_type, row=row)
    with Image.open(path) as image:
        image.load()
        assert (image.size, image.mode, image.getpixel((width - 1, 4))) == ((width, 5), mode, pixel)


@pytest.mark.browser
def test_the_script_saves_a_full_page_screenshot_of_the_space_in_use(shot, tmp_path, capsys):
    """The whole script, as the README's screenshot is made: the Space started, the options picked (Grad-CAM among
    methods whose names contain it), every output awaited, a full-page PNG saved."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing: run scripts/install_browser.sh")
    out = tmp_path / "shots" / "space_app.png"
    assert shot.main(["--out", str(out), "--explain", "dog", "-k", "3", "--mistakes", "2"]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width == 1400 and image.height > 1000
    assert capsys.readouterr().out.endswith(f"wrote {out}\n")
