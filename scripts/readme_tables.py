"""Markdown tables for the README, computed from the code and the committed artifacts.

python scripts/readme_tables.py model              # layers, output shapes, parameters, receptive field
python scripts/readme_tables.py epochs             # per-epoch log from logs/metrics.csv
python scripts/readme_tables.py classes EVAL.json  # per-class accuracy from era_utils.evaluate's output
                                                   # (or from space_app/model.json, which carries it)
python scripts/readme_tables.py misclassified      # the first ten of misclassified_images/, captioned
python scripts/readme_tables.py sweep RESULTS.jsonl  # short tuning runs from benchmarks/hparam_sweep.py
python scripts/readme_tables.py runs RESULTS.jsonl   # notebook runs from benchmarks/notebook_run.py
python scripts/readme_tables.py readme             # all of the above, from the committed files, written into
                                                   # README.md in place (--check: only say which differ)
"""

import argparse
import errno
import json
import sys
from pathlib import Path

import torch
from torch import nn

from era_utils.config import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES
from era_utils.history import epoch_table
from era_utils.misclassified import caption, parse_file_name
from era_utils.model import CustomResNet

ROWS = [
    "prep",
    "layer1.conv",
    "layer1.residual",
    "layer1",
    "layer2",
    "layer3.conv",
    "layer3.residual",
    "layer3",
    "pool",
    "fc",
]


def receptive_fields(net: nn.Module) -> dict[str, int]:
    """Receptive field (pixels) at each module's output, from kernel sizes and strides in forward order."""
    rf, jump, at_leaf = 1, 1, {}
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d | nn.MaxPool2d):
            k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
            s = module.stride if isinstance(module.stride, int) else module.stride[0]
            rf, jump = rf + (k - 1) * jump, jump * s
        at_leaf[name] = rf
    # A block's output sees what its last layer sees (for layer1/layer3: the residual branch, the wider one).
    return {
        name: [v for leaf, v in at_leaf.items() if leaf == name or leaf.startswith(name + ".")][-1] for name in at_leaf
    }


def model_table() -> str:
    net = CustomResNet(NUM_CLASSES).eval()
    shapes = {}
    hooks = [
        net.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:])))
        for n in ROWS
    ]
    net(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    for h in hooks:
        h.remove()
    rf = receptive_fields(net)
    lines = ["| block | output shape | parameters | receptive field |", "|---|---|---:|---:|"]
    for name in ROWS:
        params = sum(p.numel() for p in net.get_submodule(name).parameters())
        if name in ("layer1", "layer3"):
            params = 0  # the add; the parameters are counted in .conv and .residual
        shape = "×".join(map(str, shapes[name]))
        lines.append(f"| {name} | {shape} | {params:,} | {rf[name]} |")
    lines.append(f"| **total** | | **{sum(p.numel() for p in net.parameters()):,}** | |")
    return "\n".join(lines)


def epochs_table(csv: str = "logs/metrics.csv") -> str:
    table = epoch_table(csv)
    lines = ["| epoch | train loss | train acc | val loss | val acc | LR |", "|---:|---:|---:|---:|---:|---:|"]
    for epoch, r in table.iterrows():
        lines.append(
            f"| {epoch} | {r.train_loss:.4f} | {r.train_acc:.2%} | {r.val_loss:.4f} | {r.val_acc:.2%} "
            f"| {cell(r.get('lr'), '{:.2e}')} |"  # a smoke run logs no LR
        )
    return "\n".join(lines)


def classes_table(evaluate_json: str) -> str:
    report = json.loads(Path(evaluate_json).read_text())
    report = report.get("metrics", report)  # space_app/model.json carries the same report under "metrics"
    views = ("", "_tta", "_tta_translate")
    lines = ["| class | single view | flip TTA | flip + translation TTA |", "|---|---:|---:|---:|"]
    for name in CLASS_NAMES:
        lines.append(f"| {name} | " + " | ".join(f"{report['per_class' + v][name]:.1%}" for v in views) + " |")
    overall = " | ".join(f"**{report['accuracy' + v]:.2%}**" for v in views)
    lines.append(f"| **all {report['n']:,}** | {overall} |")
    return "\n".join(lines)


def misclassified_table(folder: str = "misclassified_images", n: int = 10) -> str:
    paths = sorted(Path(folder).glob("*_as_*.png"))[:n]
    if not paths:  # run from another folder, or before any export: say so rather than print an empty table
        raise FileNotFoundError(errno.ENOENT, "no exported mistakes (*_as_*.png) in it", folder)
    cells = [(caption(*parse_file_name(path.name)), f"{folder}/{path.name}") for path in paths]
    lines = [
        "| " + " | ".join(str(i) for i in range(1, len(cells) + 1)) + " |",
        "|" + "---|" * len(cells),
        "| " + " | ".join(f"![{text}]({src})" for text, src in cells) + " |",
        "| " + " | ".join(text for text, _ in cells) + " |",
    ]
    return "\n".join(lines)


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSON Lines file, blank lines skipped; a line that is not JSON is a ValueError naming it."""
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"line {number}: {e.msg}") from None
    return records


def sweep_table(results_jsonl: str) -> str:
    runs = read_jsonl(results_jsonl)
    lines = [
        "| variant | epochs | test acc | flip TTA | last train acc | minutes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['variant']} | {r['epochs']} | {r['test_acc']:.2%} | {r['test_acc_tta']:.2%} "
            f"| {r['final_train_acc']:.2%} | {r['minutes']} |"
        )
    return "\n".join(lines)


def cell(value: object, fmt: str = "{}") -> str:
    """`value` formatted, or a dash where a run could not tell (a failed run's accuracy, an old run's CPU)."""
    return "—" if value is None else fmt.format(value)


def run_changes(r: dict) -> str:
    """What a notebook run changed from the recipe: its overrides (a smoke run's included), then its max LR."""
    parameters = r.get("parameters") or {}
    overrides = r["overrides"] if r.get("overrides") is not None else parameters.get("OVERRIDES", {})
    changes = ["smoke"] if parameters.get("SMOKE") else []
    changes += [f"{k}={v}" for k, v in sorted(overrides.items())]
    max_lr = r["max_lr"] if r.get("max_lr") is not None else parameters.get("MAX_LR")
    finder = " (LR finder)" if parameters and parameters.get("MAX_LR") is None else ""
    return ", ".join([*changes, f"max LR {cell(max_lr, '{:g}')}{finder}"])


def runs_table(results_jsonl: str) -> str:
    runs = read_jsonl(results_jsonl)
    lines = [
        "| run | what changed | seed | epochs | CPU | minutes | single view | flip TTA | flip + translation TTA "
        "| last train acc | status |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    accuracies = ("accuracy", "accuracy_tta", "accuracy_tta_translate", "last_train_acc")
    for r in runs:
        cells = [r["name"], run_changes(r), *(cell(r.get(k)) for k in ("seed", "epochs", "cpu_capability"))]
        cells += [cell(r.get("minutes"), "{:.1f}"), *(cell(r.get(k), "{:.2%}") for k in accuracies), r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SUBCOMMANDS = [  # name, table, help, and its file argument's name and help if it takes one
    ("model", model_table, "layers, output shapes, parameters, receptive field", None),
    ("epochs", epochs_table, "per-epoch log from logs/metrics.csv", None),
    ("classes", classes_table, "per-class accuracy", ("EVAL.json", "evaluate's JSON output, or space_app/model.json")),
    ("misclassified", misclassified_table, "the first ten of misclassified_images/, captioned", None),
    ("sweep", sweep_table, "short tuning runs", ("RESULTS.jsonl", "benchmarks/hparam_sweep.py's output")),
    ("runs", runs_table, "notebook runs", ("RESULTS.jsonl", "benchmarks/notebook_run.py's output")),
]


# The tables README.md shows, each with the committed file it is made from (if any).
README_TABLES = {
    "model": (model_table, ()),
    "epochs": (epochs_table, ("logs/metrics.csv",)),
    "classes": (classes_table, ("space_app/model.json",)),
    "misclassified": (misclassified_table, ()),
    "runs": (runs_table, ("benchmarks/results/notebook_runs.jsonl",)),
    "sweep": (sweep_table, ("benchmarks/results/hparam_sweep_6ep.jsonl",)),
}


def replace_table(text: str, table: str) -> str:
    """`text` with the Markdown table that has `table`'s header row replaced by `table`; ValueError if none has."""
    lines, header = text.split("\n"), table.split("\n", 1)[0]
    if header not in lines:
        raise ValueError(f"no table with the header {header!r}")
    start = end = lines.index(header)
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join([*lines[:start], table, *lines[end:]])


def update_readme(readme: str = "README.md", check: bool = False) -> int:
    """Rewrite README.md's tables from the committed files (run from the repository root); with `check`, leave
    the file alone. Prints each table that was or would be changed; returns how many."""
    text = Path(readme).read_text()
    changed = []
    for name, (make, files) in README_TABLES.items():
        updated = replace_table(text, make(*files))
        if updated != text:
            changed.append(name)
            text = updated
    if changed and not check:
        Path(readme).write_text(text)
    verb = "differ from the committed files" if check else "updated"
    print(f"{readme}: " + (f"{', '.join(changed)} {verb}" if changed else "every table matches the committed files"))
    return len(changed)


def main(argv: list[str] | None = None) -> None:
    """Print the table a subcommand asks for, or update the README's; a file that is missing or not JSON is a
    usage error, not a traceback."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="table", required=True, metavar="TABLE")
    for name, make, about, argument in SUBCOMMANDS:
        subcommand = subcommands.add_parser(name, help=about, description=about)
        subcommand.set_defaults(make=make, error=subcommand.error)
        if argument:
            subcommand.add_argument("file", metavar=argument[0], help=argument[1])
    about = "rewrite README.md's tables from the committed files, in place (run from the repository root)"
    readme = subcommands.add_parser("readme", help=about, description=about)
    readme.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs")
    args = parser.parse_args(argv)
    if args.table == "readme":
        try:
            changed = update_readme(check=args.check)
        except (OSError, ValueError, KeyError) as e:  # run from elsewhere, a broken file, a table renamed
            readme.error(f"README.md left as it was: {e}")
        sys.exit(1 if changed and args.check else 0)
    file = vars(args).get("file")
    try:
        table = args.make() if file is None else args.make(file)
    except OSError as e:  # a missing file, a folder, or a default path run from another folder
        args.error(f"{e.filename}: {e.strerror}")
    except (ValueError, KeyError) as e:  # json's or UTF-8's error, or a field the table needs
        if file is None:
            raise
        args.error(f"{file}: " + (f"no {e} field" if isinstance(e, KeyError) else f"not valid JSON: {e}"))
    print(table)


if __name__ == "__main__":
    main()
