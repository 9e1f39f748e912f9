"""The benchmarks' result files: one JSON line per measurement, in benchmarks/results/, with the command that made
it and the machine it ran on, so that every figure the README quotes can be traced to a committed line."""

import datetime
import json
import os
import platform
import shlex
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name as Linux reports it (platform.processor() is often empty there)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git(*args: str) -> str | None:
    """Output of a git command in the repository, or None outside a git checkout."""
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def machine() -> dict:
    """What decides the speed of a measurement: CPU (and its kernels' capability), cores, torch."""
    return {
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }


def provenance(script: str, argv: list[str]) -> dict:
    """The command (as typed from the repository root), the code's commit (and whether tracked files differed from
    it), the date and the machine."""
    return {
        "command": shlex.join(["python", f"benchmarks/{script}", *argv]),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
    }


def append(results: Path, line: dict) -> None:
    """Print `line` as one JSON line and append it to `results`."""
    text = json.dumps(line)
    print(text, flush=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as f:
        f.write(text + "\n")
