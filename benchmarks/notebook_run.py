"""Training candidates as notebook runs: run S12.ipynb in a copy of the repository, record it, ship a winner.

A candidate runs in runs/notebooks/NAME/ (git-ignored): a copy of the repository's files (tracked, or untracked
and not ignored) without the notebook's outputs, run with OUT="." as the committed run was. Its notebook and
artifacts have the committed ones' paths, so a winner can be committed as it is. Every run, failed ones too,
appends one JSON line to benchmarks/results/notebook_runs.jsonl; `python scripts/readme_tables.py runs FILE`
shows them as a table.

    # a 24-epoch candidate (max LR 0.01 unless --max-lr; follow it with tail -f runs/notebooks/alt-flip/papermill.log)
    python benchmarks/notebook_run.py run alt-flip --data-dir ../shared/data/cifar10-jpeg --set flip=alternating
    # a smoke run (20 images per class, one epoch): checks the tooling in about 3 minutes on a 2-core AVX2 CPU
    python benchmarks/notebook_run.py run smoke --data-dir ../shared/data/cifar10-jpeg --smoke
    # the line of a notebook directory executed before (here the first run; what it cannot tell is null)
    python benchmarks/notebook_run.py record committed-baseline --from .
    # copy the run's notebook and artifacts into the repository, if it beats the committed single view
    python benchmarks/notebook_run.py ship alt-flip
    # after `scripts/readme_tables.py readme`: the prose that still quotes the replaced run (git HEAD's), file:line
    python benchmarks/notebook_run.py stale
    # after editing S12.py's markdown: the same text into S12.ipynb, its outputs and timings kept
    python benchmarks/notebook_run.py markdown
"""

import argparse
import dataclasses
import io
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import papermill
import torch
from papermill.exceptions import PapermillExecutionError
from results_log import append

from era_utils.history import epoch_table
from era_utils.misclassified import FILE_NAME, caption, parse_file_name
from era_utils.train import max_lr_arg
from era_utils.train_config import ConfigError, TrainConfig

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "S12.ipynb"
RUNS_ROOT = REPO / "runs" / "notebooks"
RESULTS = REPO / "benchmarks" / "results" / "notebook_runs.jsonl"

# What the notebook writes with OUT="." and the repository tracks: these files, and every PNG of these folders
# (their names change from run to run). Not checkpoints/ (git-ignored), nor images/space_app.png (the app's
# screenshot, from scripts/screenshot_app.py).
PLOTS = ("augmented_samples", "lr_finder", "training_curves", "confusion_matrix", "per_class_accuracy")
ARTIFACT_FILES = (
    NOTEBOOK,
    *(f"images/{name}.png" for name in (*PLOTS, "misclassified", "gradcam")),
    "logs/metrics.csv",
    "logs/hparams.yaml",
    "space_app/model.safetensors",
    "space_app/model.json",
    "space_app/misclassified.npz",
)
ARTIFACT_DIRS = ("misclassified_images", "space_app/examples")

# TrainConfig fields that the notebook's own parameters set: OVERRIDES repeating one would be a TypeError.
NOTEBOOK_SETS = {"data_dir", "out", "epochs", "max_lr", "per_class", "lr_find_iters", "app_dir"}
SETTABLE = {f.name: f.type for f in dataclasses.fields(TrainConfig) if f.name not in NOTEBOOK_SETS}
# Where a run's files are, not how it trained; seed, epochs and max_lr have columns of their own.
NOT_OVERRIDES = {"data_dir", "download_root", "out", "app_dir", "seed", "epochs", "max_lr"}


def parse_value(name: str, text: str) -> object:
    """`text` as the type of TrainConfig's field `name`: "1" stays a string for `devices`, "none" is None."""
    kinds = typing.get_args(SETTABLE[name]) or (SETTABLE[name],)
    if type(None) in kinds and text.lower() in ("none", "null"):
        return None
    if bool in kinds and text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float, str):
        if kind in kinds:
            try:
                return kind(text)
            except ValueError:
                pass
    raise SystemExit(f"--set {name}={text}: expected {' or '.join(k.__name__ for k in kinds)}")


def parse_overrides(items: list[str]) -> dict:
    """`["weight_decay=0.2", "devices=1"]` -> OVERRIDES, each key a TrainConfig field and each value in range."""
    overrides = {}
    for item in items:
        name, sep, text = item.partition("=")
        if name in NOTEBOOK_SETS:
            raise SystemExit(f"--set {name}: the notebook's own parameters set it (see --data-dir, --max-lr, --smoke)")
        if not sep or name not in SETTABLE:
            raise SystemExit(f"--set {item}: expected NAME=VALUE, NAME one of {', '.join(SETTABLE)}")
        overrides[name] = parse_value(name, text)
    try:
        TrainConfig(**overrides)
    except ConfigError as err:
        raise SystemExit(f"--set: {err}") from None
    return overrides


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def printed(notebook: dict, pattern: str) -> str | None:
    """The first match of `pattern` in the notebook's printed output (the setup cell prints torch and precision)."""
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            found = re.search(pattern, "".join(output.get("text", "")))
            if found:
                return found.group(1)
    return None


def last_epoch(metrics_csv: Path) -> dict:
    """The last epoch's train and val accuracy from Lightning's CSV log; None without a log."""
    table = epoch_table(metrics_csv) if metrics_csv.is_file() else None
    if table is None or table.empty:
        return {"last_train_acc": None, "last_val_acc": None}
    last = table.iloc[-1]
    return {f"last_{k}": None if pd.isna(last.get(k)) else round(float(last[k]), 4) for k in ("train_acc", "val_acc")}


def overrides_of(training: dict) -> dict:
    """The fields of a run's training config that differ from TrainConfig's defaults (what the run changed)."""
    defaults = dataclasses.asdict(TrainConfig())
    return {k: v for k, v in training.items() if k in defaults and k not in NOT_OVERRIDES and v != defaults[k]}


def retyped(text: str) -> bool:
    """Whether papermill's -p reads `text` as something else than a string: a constant, or any text float() takes
    ("2024", "1e-3", "inf", "1_000")."""
    if text in ("True", "False", "None"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def cli_parameter(name: str, value: object) -> list[str]:
    """papermill's command-line option for one parameter: -y for dicts, -r for strings -p would retype."""
    if isinstance(value, dict | list):
        return ["-y", json.dumps({name: value})]
    if isinstance(value, str) and retyped(value):
        return ["-r", name, value]
    return ["-p", name, str(value)]


def papermill_command(meta: dict) -> str:
    """The papermill command that executes the notebook as papermill's metadata says it was executed."""
    words = ["papermill", meta["input_path"], meta["output_path"]]
    for name, value in meta.get("parameters", {}).items():
        words += cli_parameter(name, value)
    return shlex.join(words)


def notebook_status(meta: dict) -> str:
    if not meta:
        return "not run"
    if meta.get("exception"):
        return "failed"
    return "ok" if meta.get("end_time") else "unfinished"


def build_record(name: str, run_dir: Path) -> dict:
    """One JSON line from an executed notebook directory: notebook metadata and output, model.json, metrics.csv.

    What the directory cannot tell (the machine, the git commit) is None; `run` fills it in.
    """
    notebook = read_json(run_dir / NOTEBOOK)
    meta = notebook.get("metadata", {}).get("papermill", {})
    model = read_json(run_dir / "space_app" / "model.json")
    metrics, training = model.get("metrics", {}), model.get("training", {})
    return {
        "name": name,
        "status": notebook_status(meta),
        "accuracy": metrics.get("accuracy"),
        "accuracy_tta": metrics.get("accuracy_tta"),
        "accuracy_tta_translate": metrics.get("accuracy_tta_translate"),
        "n_test": metrics.get("n"),
        **last_epoch(run_dir / "logs" / "metrics.csv"),
        "epochs": training.get("epochs"),
        "seed": training.get("seed"),
        "max_lr": training.get("max_lr"),
        "overrides": overrides_of(training) if training else None,
        "minutes": round(meta["duration"] / 60, 2) if meta.get("duration") is not None else None,
        "start_time": meta.get("start_time"),
        "end_time": meta.get("end_time"),
        "precision": printed(notebook, r"precision: (\S+)"),
        "torch": printed(notebook, r"torch (\S+),"),
        "python": notebook.get("metadata", {}).get("language_info", {}).get("version"),
        "cpu_capability": None,
        "cpu_count": None,
        "git_commit": None,
        "git_dirty": None,
        "parameters": meta.get("parameters"),
        "papermill_command": papermill_command(meta) if meta else None,
        "runner_command": None,
        "directory": shown_path(run_dir),
        "error": None,
    }


def shown_path(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def git(*args: str, repo: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def source_files(repo: Path) -> list[str]:
    """The working tree's files that git tracks or would (a new module not yet added: the code imports it), as
    paths relative to `repo`, without the notebook's outputs (the notebook itself is kept: it holds the code)."""
    outputs = {*ARTIFACT_FILES} - {NOTEBOOK}
    names = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", repo=repo).split("\0")
    return [
        name
        for name in filter(None, names)
        if name not in outputs and name.rpartition("/")[0] not in ARTIFACT_DIRS and (repo / name).is_file()
    ]


def copy_repository(repo: Path, dest: Path) -> None:
    """The working tree's files that git tracks or would (a new module not yet added: the code imports it),
    without the notebook's outputs, so that every artifact in `dest` comes from the run. The notebook keeps its
    code, not its old outputs."""
    for name in source_files(repo):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, dest / name)
    notebook = nbformat.read(dest / NOTEBOOK, as_version=4)
    notebook.metadata.pop("papermill", None)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(notebook, dest / NOTEBOOK)


@contextmanager
def working_dir(path: Path) -> Iterator[None]:
    """cwd = `path`, so that papermill records the notebook's paths as the committed run's ("S12.ipynb")."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def execute(run_dir: Path, parameters: dict) -> str | None:
    """Run the notebook in `run_dir` in place, its log in papermill.log; the error, or None."""
    log = logging.FileHandler(run_dir / "papermill.log")
    log.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger = logging.getLogger("papermill")
    level = logger.level
    logger.addHandler(log)
    logger.setLevel(logging.INFO)
    try:
        with working_dir(run_dir):
            papermill.execute_notebook(NOTEBOOK, NOTEBOOK, parameters, cwd=".", progress_bar=False, log_output=True)
    except (Exception, KeyboardInterrupt) as err:
        if isinstance(err, PapermillExecutionError):
            return f"{err.ename}: {err.evalue}"
        return f"{type(err).__name__}: {err}"
    finally:
        logger.removeHandler(log)
        logger.setLevel(level)
        log.close()
    return None


TERMINAL_CONTROL = re.compile(r"(\r|\n|\x1b\[[0-9;?]*[A-Za-z])")


def as_a_terminal_shows(text: str) -> str:
    """`text` as a terminal shows it: a carriage return goes back to the line's start to write over it, ESC[A
    goes up a line (tqdm's nested validation bar), other escape codes are dropped. Progress bars end as their
    last state, not as hundreds of updates, and no "[A" litters GitHub's rendering."""
    lines, row, col = [""], 0, 0
    for token in TERMINAL_CONTROL.split(text):
        if token == "\n":
            row, col = row + 1, 0
            lines += [""] * (row + 1 - len(lines))
        elif token == "\r":
            col = 0
        elif token == "\x1b[A":
            row = max(row - 1, 0)
        elif token and not token.startswith("\x1b"):
            lines[row] = lines[row][:col].ljust(col) + token + lines[row][col + len(token) :]
            col += len(token)
    return "\n".join(line.rstrip() for line in lines)


def tidy(path: Path) -> None:
    """The executed notebook as a reader should see it: without papermill's injected-parameters cell (the run's
    parameters stay in its papermill metadata; the cell would pin a local DATA_DIR on a Colab user), each run of
    printed text in one output, as a terminal shows it (blank ones dropped)."""
    notebook = nbformat.read(path, as_version=4)
    notebook.cells = [c for c in notebook.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for cell in (c for c in notebook.cells if c.cell_type == "code"):
        outputs = []
        for output in cell.outputs:
            last = outputs[-1] if outputs else None
            if output.output_type == "stream" and last and last.output_type == "stream" and last.name == output.name:
                last.text += output.text
            else:
                outputs.append(output)
        for output in outputs:
            if output.output_type == "stream":
                output.text = as_a_terminal_shows(output.text)
        cell.outputs = [o for o in outputs if o.output_type != "stream" or o.text.strip()]
    nbformat.write(notebook, path)


def runner_facts(parameters: dict, argv: list[str]) -> dict:
    """What the notebook's directory does not tell: the machine, the code's commit, the commands."""
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "git_commit": git("rev-parse", "HEAD").strip(),
        "git_dirty": bool(git("status", "--porcelain").strip()),  # untracked files count: they were copied
        "parameters": parameters,
        "papermill_command": papermill_command(
            {"input_path": NOTEBOOK, "output_path": NOTEBOOK, "parameters": parameters}
        ),
        "runner_command": shlex.join(["python", "benchmarks/notebook_run.py", *argv]),
    }


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Copy, execute, record; non-zero when the notebook failed (its line is recorded all the same)."""
    overrides = parse_overrides(args.set)
    data_dir = Path(args.data_dir).resolve()
    run_dir = Path(args.runs_root) / args.name
    if not data_dir.is_dir():
        raise SystemExit(f"--data-dir {args.data_dir}: no such folder")
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists: pick another NAME, or delete that run first")
    parameters = {"DATA_DIR": str(data_dir), "SMOKE": args.smoke, "OVERRIDES": overrides}
    parameters = {k: v for k, v in parameters.items() if v}  # the rest keeps the notebook's defaults
    parameters["MAX_LR"] = args.max_lr  # always: None (the finder's suggestion) is not the notebook's default
    copy_repository(REPO, run_dir)
    known = runner_facts(parameters, argv)
    print(f"running {run_dir / NOTEBOOK}; follow it with: tail -f {run_dir / 'papermill.log'}", flush=True)
    error = execute(run_dir, parameters)
    tidy(run_dir / NOTEBOOK)
    line = build_record(args.name, run_dir) | known
    line["torch"] = line["torch"] or torch.__version__  # the kernel is this interpreter (the python3 kernel)
    if error:
        line |= {"status": "failed", "error": error}
    append(Path(args.results), line)
    return 1 if error else 0


def record(args: argparse.Namespace, argv: list[str]) -> int:
    source = Path(args.source)
    if not (source / NOTEBOOK).is_file():
        raise SystemExit(f"--from {source}: no {NOTEBOOK} there")
    append(Path(args.results), build_record(args.name, source))
    return 0


def artifacts(root: Path) -> list[str]:
    """The notebook's artifacts present under `root`, as paths relative to it."""
    found = [name for name in ARTIFACT_FILES if (root / name).is_file()]
    for folder in ARTIFACT_DIRS:
        found += sorted(str(p.relative_to(root)) for p in (root / folder).glob("*.png"))
    return found


def check_shippable(run_dir: Path, repo: Path, force: bool) -> dict:
    """The run's record; refuses a failed or incomplete run, and, without `force`, one that does not beat the
    committed model."""
    line = build_record(run_dir.name, run_dir)
    if line["status"] != "ok":
        raise SystemExit(f"{run_dir}: the notebook's status is {line['status']!r}; nothing copied")
    missing = [name for name in ARTIFACT_FILES if not (run_dir / name).is_file()]
    if missing:
        raise SystemExit(f"{run_dir} lacks {', '.join(missing)}; nothing copied")
    committed = read_json(repo / "space_app" / "model.json").get("metrics", {}).get("accuracy", 0.0)
    if line["accuracy"] <= committed and not force:
        raise SystemExit(
            f"{run_dir.name}: single view {line['accuracy']:.2%} does not beat the committed {committed:.2%}; "
            "nothing copied (--force ships it anyway)"
        )
    return line


# The prose that quotes a run's figures: both READMEs and the notebook's markdown (S12.py holds the same text).
PAIR = "S12.py"  # the notebook's jupytext twin
DOCS = ("README.md", "space_app/README.md", PAIR)
# Words of sentences about one particular run (its caveats, what it predates): each such line is to be re-read.
ABOUT_A_RUN = ("committed run", "committed notebook", "committed model", "predates", "in effect", "show_cam_on_image")
# The recipe's knobs, for the lines that state an old value of one (see `recipe_lines`).
RECIPE = ("weight_decay", "label_smoothing", "logit_scale", "ema_decay", "pct_start", "flip", "ghost_batch_size")
STATES = ("README.md", "space_app/README.md", "S12.py", "era_utils/train_config.py", "era_utils/lit_module.py")


def percents(x: float) -> set[str]:
    """How prose writes the fraction `x`: 0.906 -> "90.60", "90.6"."""
    return {f"{100 * x:.2f}", f"{100 * x:.1f}"}


def run_figures(read: Callable[[str], bytes | None], mistakes: list[str]) -> dict[str, tuple[set[str], str]]:
    """Each figure prose may quote of the run whose files `read` returns, as (the texts it is written as, a word
    the line must hold too, if any: a class's accuracy counts in prose that names the class, outside tables)."""
    figures = {}
    metrics = json.loads(read("space_app/model.json") or b"{}").get("metrics", {})
    views = {"": "single view", "_tta": "flip TTA", "_tta_translate": "flip + translation TTA"}
    for suffix, view in views.items():
        if isinstance(metrics.get("accuracy" + suffix), int | float):
            x = metrics["accuracy" + suffix]
            figures[f"accuracy, {view}"] = (percents(x) | {json.dumps(x), f"{x:.4f}"}, "")
        for name, x in (metrics.get("per_class" + suffix) or {}).items():
            figures[f"{name}, {view}"] = ({f"{100 * x:.1f}%"}, name)
    log = read("logs/metrics.csv")
    try:
        table = epoch_table(io.BytesIO(log)) if log else None
    except (ValueError, KeyError, pd.errors.ParserError):
        table = None
    if table is not None and not table.empty:
        for label, column, row in (("last train acc", "train_acc", -1), ("first val acc", "val_acc", 0)):
            if column in table and pd.notna(table[column].iloc[row]):
                x = float(table[column].iloc[row])
                figures[label] = (percents(x) | ({f"{100 * x:.0f}%"} if row == -1 else set()), "")
        if "val_acc" in table and pd.notna(table["val_acc"].iloc[-1]):
            figures["last val acc"] = (percents(float(table["val_acc"].iloc[-1])), "")
    notebook = json.loads(read(NOTEBOOK) or b"{}")
    duration = notebook.get("metadata", {}).get("papermill", {}).get("duration")
    if duration:
        hours, minutes = divmod(round(duration / 60), 60)
        figures["the notebook's duration"] = ({f"{hours} h {minutes} min"} if hours else {f"{minutes} min"}, "")
    suggested = printed(notebook, r"suggested: ([-+.\deE]+);")
    if suggested:
        text = f"{float(suggested):.1e}"  # 6.0e-04, which prose writes 6.0e-4
        figures["the LR finder's suggestion"] = ({text, re.sub(r"e([-+])0(\d)", r"e\1\2", text)}, "")
    for rank, name in enumerate([m for m in mistakes if FILE_NAME.fullmatch(m)][:3], 1):
        label, pred, confidence = parse_file_name(name)
        forms = {caption(label, pred, confidence)} | ({f"{100 * confidence:.0f}%"} if rank == 1 else set())
        figures[f"mistake #{rank}"] = (forms, "")
    return figures


def folder_reader(root: Path) -> Callable[[str], bytes | None]:
    return lambda name: (root / name).read_bytes() if (root / name).is_file() else None


def git_reader(repo: Path, rev: str) -> Callable[[str], bytes | None]:
    def read(name: str) -> bytes | None:
        done = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=repo, capture_output=True)
        return done.stdout if done.returncode == 0 else None

    return read


def mistakes_in(repo: Path, rev: str | None = None) -> list[str]:
    """The names in misclassified_images/, in the working tree or at commit `rev`."""
    if rev is None:
        return sorted(p.name for p in (repo / "misclassified_images").glob("*.png"))
    listed = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{rev}:misclassified_images"], cwd=repo, capture_output=True, text=True
    )
    return sorted(listed.stdout.split()) if listed.returncode == 0 else []


def doc_lines(repo: Path, names: tuple[str, ...] = DOCS) -> Iterator[tuple[str, int, str]]:
    """(file, line number, text) of each file of `names` present in `repo`."""
    for name in names:
        if (repo / name).is_file():
            for number, text in enumerate((repo / name).read_text().splitlines(), 1):
                yield name, number, text


def quoted(form: str, text: str) -> bool:
    """`form` in `text` as a figure of its own: "90.6" is in "90.6%" and "90.6–90.7", not in "90.65" or "190.6"."""
    return re.search(rf"(?<![\w.]){re.escape(form)}(?!\d)", text) is not None


def stale_figures(repo: Path, old: dict, new: dict) -> dict[str, list[str]]:
    """{"file:line": ["figure (what it is)", ...]} for each doc line that quotes a figure of the old run the new run
    does not have. Skipped: the rows of the table of notebook runs (each stays true of its run)."""
    runs = [r.get("name") for r in map(json.loads, filter(None, read_text(repo / shown_path(RESULTS)).splitlines()))]
    found = {}
    for name, number, text in doc_lines(repo):
        if any(text.startswith(f"| {run} |") for run in runs):
            continue
        for label, (forms, word) in old.items():
            if word and (text.startswith("|") or word not in text.lower()):
                continue
            hits = [f for f in sorted(forms - new.get(label, (set(), ""))[0]) if quoted(f, text)]
            if hits:
                found.setdefault(f"{name}:{number}", []).append(f"{', '.join(hits)} ({label})")
    return found


def read_text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def states(text: str, names: set[str], value: object) -> bool:
    """Whether `text` names the knob (in any case: "Label smoothing 0.1" begins a sentence) with `value`."""
    return any(n in text.lower() for n in names) and quoted(str(value), text)


def recipe_lines(repo: Path, old: dict, new: dict) -> list[str]:
    """`file:line` of each line (or pair of lines: prose wraps) in STATES that names a knob of RECIPE whose value
    changed from `old` to `new` together with its old value, e.g. "label smoothing 0.1" once it is 0.2."""
    found = []
    lines = list(doc_lines(repo, STATES))
    for key in (k for k in RECIPE if k in old and k in new and old[k] != new[k]):
        names = {key, key.replace("_", " "), key.replace("_", "-")}
        for (name, number, text), after in zip(lines, [*lines[1:], ("", 0, "")], strict=True):
            pair = f"{text} {after[2].lstrip('# ')}" if after[0] == name else text
            if states(pair, names, old[key]) and not (after[0] == name and states(after[2], names, old[key])):
                found.append(f"{name}:{number}: {key} {old[key]} -> {new[key]}: {text.strip()[:90]}")
    return found


def markdown_mismatch(repo: Path) -> list[int]:
    """The markdown cells (numbered from 1) in which S12.ipynb and S12.py differ: the pairing test compares code."""
    if not (repo / NOTEBOOK).is_file() or not (repo / "S12.py").is_file():
        return []
    cells = [[c.source for c in jupytext.read(repo / n).cells if c.cell_type == "markdown"] for n in (NOTEBOOK, PAIR)]
    longest = max(len(cells[0]), len(cells[1]))
    padded = [c + [None] * (longest - len(c)) for c in cells]
    return [i for i, (a, b) in enumerate(zip(*padded, strict=True), 1) if a != b]


def copy_markdown(repo: Path) -> list[int]:
    """S12.py's markdown cells into S12.ipynb, by position; its code, outputs and metadata (papermill's per-cell
    timings too, which `jupytext --update` drops) stay. Returns the cells changed, numbered from 1."""
    notebook = nbformat.read(repo / NOTEBOOK, as_version=4)
    targets = [c for c in notebook.cells if c.cell_type == "markdown"]
    sources = [c.source for c in jupytext.read(repo / PAIR).cells if c.cell_type == "markdown"]
    if len(targets) != len(sources):
        raise SystemExit(f"{PAIR} has {len(sources)} markdown cells, {NOTEBOOK} {len(targets)}: nothing copied")
    changed = [i for i, (cell, source) in enumerate(zip(targets, sources, strict=True), 1) if cell.source != source]
    for i in changed:
        targets[i - 1].source = sources[i - 1]
    if changed:
        nbformat.write(notebook, repo / NOTEBOOK)
    return changed


def markdown(args: argparse.Namespace, argv: list[str]) -> int:
    changed = copy_markdown(Path(args.repo))
    print(f"{NOTEBOOK}: markdown cells {', '.join(map(str, changed))} copied from {PAIR}" if changed else "in step")
    return 0


def stale_report(repo: Path, old_figures: dict, old_training: dict) -> bool:
    """Print what the prose still says of the replaced run; True if something is to fix."""
    model = read_json(repo / "space_app" / "model.json")
    figures = stale_figures(repo, old_figures, run_figures(folder_reader(repo), mistakes_in(repo)))
    recipe = recipe_lines(repo, old_training, model.get("training", {}))
    defaults = dataclasses.asdict(TrainConfig())
    undone = {k: v for k, v in model.get("training", {}).items() if k in RECIPE and defaults.get(k) != v}
    mismatch = markdown_mismatch(repo)
    texts = {f"{n}:{i}": t.strip() for n, i, t in doc_lines(repo)}
    listed = {*figures, *(line.split(": ", 1)[0] for line in recipe)}
    about = [f"{k}: {t[:90]}" for k, t in texts.items() if k not in listed and any(w in t for w in ABOUT_A_RUN)]
    sections = [
        (
            "Figures of the replaced run still quoted",
            [f"{k}: {'; '.join(v)}: {texts[k][:90]}" for k, v in figures.items()],
        ),
        ("Lines stating the replaced run's recipe", recipe),
        (
            "TrainConfig's defaults are not the shipped recipe: set them in era_utils/train_config.py (and the tests "
            "pinning the recipe, tests/test_learning.py's README_RECIPE)",
            [f"{k}: {defaults.get(k)} -> {v}" for k, v in undone.items()],
        ),
        (
            "S12.ipynb's markdown differs from S12.py's in these cells (edit S12.py, then "
            "`python benchmarks/notebook_run.py markdown`)",
            [f"markdown cell {i}" for i in mismatch],
        ),
        ("Lines about a particular run, to re-read (not counted as stale)", about),
    ]
    for title, items in sections:
        if items:
            print(f"\n{title}:\n" + "\n".join(f"  {item}" for item in items))
    return bool(figures or recipe or undone or mismatch)


def stale(args: argparse.Namespace, argv: list[str]) -> int:
    """After a ship: the prose that still quotes the run at `--since` (git HEAD: the replaced one); 1 if any."""
    repo = Path(args.repo)
    read = git_reader(repo, args.since)
    old_model = read("space_app/model.json")
    if old_model is None:
        raise SystemExit(f"{args.since}: no space_app/model.json at that commit in {repo}")
    old_figures = run_figures(read, mistakes_in(repo, args.since))
    old_training = json.loads(old_model).get("training", {})
    found = stale_report(repo, old_figures, old_training)
    print("\n" + ("fix the lines above, then run this again" if found else "nothing quotes the replaced run"))
    return 1 if found else 0


def changed_since_run(run_dir: Path, repo: Path) -> list[str]:
    """The repository's files (not the notebook's outputs, not benchmarks/results/) that differ from the copy the
    run executed: what changed while it ran. Empty outside a git checkout."""
    try:
        names = source_files(repo)
    except (subprocess.CalledProcessError, FileNotFoundError):
        return []
    return [
        name
        for name in names
        if name != NOTEBOOK
        and not name.startswith("benchmarks/results/")
        and (run_dir / name).is_file()
        and (repo / name).read_bytes() != (run_dir / name).read_bytes()
    ]


CHECKLIST = """
Next, from the repository root (each step's command; `stale` compares with git HEAD, so commit after it):
  1. python scripts/readme_tables.py readme               # README.md's tables from the shipped files
  2. python benchmarks/notebook_run.py stale              # file:line of the prose that quotes the replaced run;
     fix each (S12.py's markdown, then `python benchmarks/notebook_run.py markdown`) and run it again until clean
  3. python scripts/screenshot_app.py                     # images/space_app.png shows the shipped model
  4. git add -A S12.ipynb S12.py README.md space_app images logs misclassified_images benchmarks/results
     (before the tests: tests/test_notebook.py ships into a copy of the tracked files)
  5. python -m pytest tests/test_readme_figures.py tests/test_readme_tables.py tests/test_notebook_run.py \\
         tests/test_notebook.py tests/test_learning.py tests/test_app.py -q
  6. git commit, then the full suite once: CI=true bash .ci/run in a fresh clone, in a virtual environment
     (its pip install -e . would otherwise point the machine's era_utils at the clone)"""


def ship(args: argparse.Namespace, argv: list[str]) -> int:
    """Replace the repository's notebook artifacts with the run's, all of them, stale ones removed."""
    run_dir, repo = Path(args.runs_root) / args.name, Path(args.repo)
    if not run_dir.is_dir():
        raise SystemExit(f"{run_dir}: no such run")
    line = check_shippable(run_dir, repo, args.force)
    recipe = {k: v for k, v in (line["overrides"] or {}).items() if k not in NOTEBOOK_SETS}  # not SMOKE's
    changed = changed_since_run(run_dir, repo)
    shipped = artifacts(run_dir)
    for name in sorted(set(artifacts(repo)) - set(shipped)):
        (repo / name).unlink()
        print(f"removed {name}")
    for name in shipped:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / name, repo / name)
        print(f"copied  {name}")
    if changed:
        print(f"\nChanged since the run copied the repository (its outputs are the old ones'): {', '.join(changed)}")
        if "S12.py" in changed:
            print("S12.py changed: its code cells must be the shipped S12.ipynb's (tests/test_notebook.py checks it).")
    if recipe:
        print(
            f"\nThe run trained with OVERRIDES {recipe}: make them TrainConfig's defaults (era_utils/train_config.py,\n"
            "and the tests that pin the recipe, tests/test_learning.py's README_RECIPE), so that the command line and\n"
            "the notebook's Run all train the shipped recipe; `stale` lists the lines that state the old values."
        )
    print(CHECKLIST)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True)
    run_p = commands.add_parser("run", help="execute the notebook in runs/notebooks/NAME/ and record it")
    run_p.add_argument("name")
    run_p.add_argument("--data-dir", required=True, help="image folder with train/ and test/")
    run_p.add_argument(
        "--max-lr",
        type=max_lr_arg,
        default=TrainConfig.max_lr,
        help="OneCycle max LR (default: %(default)s, the recipe's); 'finder' takes the LR finder's suggestion",
    )
    run_p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="OVERRIDES: any other TrainConfig field, e.g. flip=alternating ghost_batch_size=32",
    )
    run_p.add_argument("--smoke", action="store_true", help="SMOKE: 20 images per class, one epoch")
    record_p = commands.add_parser("record", help="record an executed notebook directory")
    record_p.add_argument("name")
    record_p.add_argument("--from", dest="source", required=True, help="the directory (S12.ipynb, space_app/, logs/)")
    ship_p = commands.add_parser("ship", help="copy a run's notebook and artifacts into the repository")
    ship_p.add_argument("name")
    ship_p.add_argument("--force", action="store_true", help="ship even if it does not beat the committed model")
    ship_p.add_argument("--repo", default=str(REPO), help="the repository to ship into (tests use a copy)")
    stale_p = commands.add_parser("stale", help="after a ship: the prose that still quotes the replaced run")
    stale_p.add_argument("--since", default="HEAD", help="the commit of the replaced run (default: HEAD)")
    stale_p.add_argument("--repo", default=str(REPO), help="the repository (tests use a copy)")
    markdown_p = commands.add_parser("markdown", help="copy S12.py's markdown cells into S12.ipynb, outputs kept")
    markdown_p.add_argument("--repo", default=str(REPO), help="the repository (tests use a copy)")
    for sub in (run_p, record_p):
        sub.add_argument("--results", default=str(RESULTS), help="the JSON lines file to append to")
    for sub in (run_p, ship_p):
        sub.add_argument("--runs-root", default=str(RUNS_ROOT), help="where the runs' directories are")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    commands = {"run": run, "record": record, "ship": ship, "stale": stale, "markdown": markdown}
    return commands[args.command](args, argv)


if __name__ == "__main__":
    sys.exit(main())
