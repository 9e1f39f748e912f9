"""What publishing the Space relies on: matching licenses, and the CPU build of torch installed through
pre-requirements.txt, a file the Space reads and CI never does."""

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "space_app"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def pins(path: Path) -> dict[str, Requirement]:
    reqs = (Requirement(line) for line in requirement_lines(path) if not line.startswith("-"))
    return {req.name: req for req in reqs}


def files_pip_reads(path: Path) -> list[Path]:
    """`path` and every file it includes with -r, recursively."""
    found = [path]
    for line in requirement_lines(path):
        if line.startswith("-r "):
            found += files_pip_reads(path.parent / line[3:].strip())
    return found


def test_license_files_are_identical_and_match_the_front_matter() -> None:
    front = (APP_DIR / "README.md").read_text().split("---")[1]
    license_id = re.search(r"^license:\s*(\S+)\s*$", front, re.MULTILINE)
    assert license_id and license_id.group(1) == "mit"
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert (APP_DIR / "LICENSE").read_text() == text


def test_pre_requirements_pin_cpu_torch_and_torchvision_that_requirements_accept() -> None:
    pre = APP_DIR / "pre-requirements.txt"
    assert f"--extra-index-url {CPU_INDEX}" in requirement_lines(pre)
    pinned, wanted = pins(pre), pins(APP_DIR / "requirements.txt")
    # Both pinned: a torchvision resolved later from PyPI may ask for a newer torch, and pip would then
    # replace the CPU build with PyPI's CUDA one.
    assert set(pinned) == {"torch", "torchvision"}
    for name, req in pinned.items():
        (spec,) = req.specifier
        assert spec.operator == "==" and spec.version.endswith("+cpu"), f"{name} must be pinned to a +cpu build"
    assert wanted["torch"].specifier.contains(next(iter(pinned["torch"].specifier)).version)


def test_pre_requirements_pin_the_torchvision_release_made_for_the_pinned_torch() -> None:
    """torchvision 0.N is built against torch 2.(N - 15) (0.29 for 2.14): another pair makes pip replace the
    pinned torch, or fail."""
    versions = {name: next(iter(req.specifier)).version for name, req in pins(APP_DIR / "pre-requirements.txt").items()}
    torch_minor, vision_minor = (Version(versions[name]).minor for name in ("torch", "torchvision"))
    assert Version(versions["torch"]).major == 2 and vision_minor == torch_minor + 15, versions


def test_ci_never_reads_pre_requirements() -> None:
    read = files_pip_reads(REPO / "requirements-dev.txt")
    assert APP_DIR / "requirements.txt" in read
    for path in read:
        text = path.read_text()
        assert "pre-requirements" not in text and "download.pytorch.org" not in text, path
