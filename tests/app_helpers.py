"""Helpers for the Space's tests, its benchmark and its screenshot script: start the app in a
subprocess, wait for it, craft PNG files (decompression bombs, 16-bit) without decoding them; and import
a script of the Space, scripts/ or benchmarks/ as a module."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "space_app"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Runs app.py as `python app.py` would, except that importing the training package fails:
# the Space must work with only its own files.
_LAUNCHER = """
import runpy, sys
sys.modules["era_utils"] = None
app = sys.argv[1]
sys.path.insert(0, app.rsplit("/", 1)[0])
sys.argv = [app]
runpy.run_path(app, run_name="__main__")
"""
APP_FILES = ("app.py", "inference.py", "explain.py", "model.py", "model.json", "model.safetensors", "misclassified.npz")


def load_file_module(folder: Path, name: str) -> ModuleType:
    """`folder/<name>.py` imported under a name of its own (space_app/, scripts/ and benchmarks/ are folders of
    scripts, not packages), its imports of its sibling files resolved from `folder`."""
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(f"{folder.name}_{name}_under_test", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


def blocks_by_id(demo: Any, kind: type) -> dict[str, Any]:
    """A built gr.Blocks page's components of `kind`, by elem_id."""
    return {b.elem_id: b for b in demo.blocks.values() if isinstance(b, kind)}


def choose_option(page: Any, elem_id: str, label: str) -> None:
    """Pick an option of a Gradio dropdown in a Playwright page as a visitor does: open the list, click it."""
    page.locator(f"#{elem_id} input[role=combobox]").click()
    page.get_by_role("option", name=label, exact=True).click()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_app(dest: Path) -> Path:
    """The Space's runtime files (no caches) copied to `dest`, which is returned."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in (*APP_FILES, "requirements.txt", "README.md"):
        if (APP_DIR / name).exists():
            shutil.copy2(APP_DIR / name, dest / name)
    if (APP_DIR / "examples").is_dir():
        shutil.copytree(APP_DIR / "examples", dest / "examples", dirs_exist_ok=True)
    return dest


def server_env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1", GRADIO_ANALYTICS_ENABLED="False")
    env["PYTHONUNBUFFERED"] = "1"  # the log shows progress as it happens
    return env


def wait_until_up(url: str, proc: subprocess.Popen | None = None, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


@contextlib.contextmanager
def running_app(app_dir: Path, log_path: Path, port: int | None = None, nice: bool = True) -> Iterator[tuple[str, int]]:
    """`python app_dir/app.py` on a free localhost port (via GRADIO_SERVER_PORT); yields (url, pid).

    Started from `log_path`'s folder, not from `app_dir`, so it must find its files by itself.
    """
    port = port or free_port()
    cmd = [sys.executable, "-c", _LAUNCHER, str(Path(app_dir).resolve() / "app.py")]
    if nice and hasattr(os, "nice"):
        cmd = ["nice", "-n", "19", *cmd]  # keep a shared machine responsive
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=log_path.parent, env=server_env(port), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, proc)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children, from /proc (Linux)."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(
    path: Path, width: int, height: int, bit_depth: int = 8, color_type: int = 0, row: bytes | None = None
) -> Path:
    """A valid PNG whose rows all equal `row` (zeros by default), compressed while streaming.

    A 20000x20000 1-bit image (400 megapixels, 400 MB once decoded by Pillow) is ~50 kB on disk
    and takes well under a second to write.
    """
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row_len = (width * channels * bit_depth + 7) // 8
    line = b"\x00" + (row if row is not None else bytes(row_len))
    if len(line) != row_len + 1:
        raise ValueError(f"row must be {row_len} bytes")
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(line) for _ in range(height)]
    idat = b"".join(parts) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path
