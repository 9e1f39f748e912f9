"""Screenshot of the Space in use, for the README: images/space_app.png.

    scripts/install_browser.sh        # Debian's chromium, once
    python scripts/screenshot_app.py  # starts space_app/app.py on a free port, or --url to use a running one

Drives the page with Playwright like a visitor: uploads an example, sets k, ticks the heatmaps
(with a method and, optionally, one class to explain) and the misclassified gallery, opens "About the
model", waits for every output, then saves a full-page screenshot.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from app_helpers import (  # noqa: E402
    APP_DIR,
    CHROMIUM,
    CHROMIUM_ARGS,
    choose_option,
    copy_app,
    load_file_module,
    running_app,
)


def set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def heatmaps_shown(cams: int, explain: str, example: str) -> int:
    """How many heatmaps the page ends up showing: `cams` for the top classes; for a class picked by hand, its
    heatmap and the top class's, or one if it is the top class (the example is taken to be classified right)."""
    if explain == "top":
        return cams
    return 1 if explain == example else 2


def shoot(url: str, out: Path, example: str, k: int, cams: int, mistakes: int, method: str, explain: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
            page.goto(url, wait_until="domcontentloaded", timeout=120_000)
            # Settings first: the upload itself triggers a prediction, which should already use them.
            set_slider(page, "top-k", k)
            page.locator("#show-cam input[type=checkbox]").check()
            set_slider(page, "cam-count", cams)
            choose_option(page, "cam-method", method)
            if explain != "top":
                choose_option(page, "cam-class", explain)
            cams = heatmaps_shown(cams, explain, example)
            page.locator("#show-mistakes input[type=checkbox]").check()
            set_slider(page, "mistake-count", mistakes)
            page.locator("#upload input[type=file]").set_input_files(str(APP_DIR / "examples" / f"{example}.png"))
            page.locator("#classify").click()
            page.wait_for_function(
                f"""() => document.querySelectorAll("#prediction [data-testid$='-confidence-set']").length === {k}
                && document.querySelectorAll("#gradcam-gallery img").length >= {cams}
                && document.querySelectorAll("#misclassified-gallery img").length >= {mistakes}""",
                timeout=180_000,
            )
            page.locator("#about").get_by_text("About the model").click()
            page.locator("#about-text").wait_for(timeout=30_000)
            page.wait_for_load_state("networkidle")
            page.mouse.move(0, 0)  # no item left in its hover state
            page.wait_for_timeout(1000)  # let images finish painting
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    """Options the Space does not offer are usage errors here, not a Playwright timeout minutes later."""
    inference = load_file_module(APP_DIR, "inference")
    classes = inference.load_config(APP_DIR)["classes"]
    examples = sorted(path.stem for path in (APP_DIR / "examples").glob("*.png"))
    methods = list(load_file_module(APP_DIR, "explain").METHODS)
    most = inference.most_shown(len(classes))  # the k and heatmap sliders' maximum
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="use an app already running here")
    p.add_argument("--out", type=Path, default=REPO / "images" / "space_app.png")
    p.add_argument("--example", default="bird", choices=examples, help="which examples/<class>.png to upload")
    p.add_argument("--method", default="Grad-CAM", choices=methods, help="the heatmap method, as named in the app")
    p.add_argument("--explain", default="top", choices=["top", *classes], help='"top" (the top classes) or a class')
    p.add_argument("-k", type=int, default=5, help="how many classes to show")
    p.add_argument("--cams", type=int, default=5, help="how many heatmaps of the top classes")
    p.add_argument("--mistakes", type=int, default=8, help="how many misclassified test images")
    args = p.parse_args(argv)
    for name in ("k", "cams"):
        if not 1 <= getattr(args, name) <= most:
            p.error(f"{'-k' if name == 'k' else '--' + name} must be from 1 to {most}")
    if args.mistakes < 1:
        p.error("--mistakes must be at least 1")
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} missing: run scripts/install_browser.sh", file=sys.stderr)
        return 1
    with contextlib.ExitStack() as stack:
        url = args.url
        if not url:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            url, _ = stack.enter_context(running_app(copy_app(root / "space_app"), root / "app.log"))
        shoot(url, args.out, args.example, args.k, args.cams, args.mistakes, args.method, args.explain)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
