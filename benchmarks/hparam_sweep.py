"""Short training runs that compare hyperparameter variants; one JSON line per variant.

Each variant is a comma-separated list of `TrainConfig` overrides; every run starts from the same seed
and the project's defaults. The figures are the exported (EMA) weights' fp32 test accuracy, plain and
with flip TTA, plus the last epoch's train accuracy (how far the run overfits).

    python benchmarks/hparam_sweep.py --data-dir ../shared/data/cifar10-jpeg --epochs 6 \
        baseline weight_decay=0.2 label_smoothing=0.2,weight_decay=0.1
"""

import argparse
import dataclasses
import sys
import time
import typing
from pathlib import Path

from results_log import append, provenance

from era_utils.train import run
from era_utils.train_config import TrainConfig

TUNABLE = {  # the numeric knobs, e.g. max_lr, weight_decay, label_smoothing, ema_decay, pct_start
    f.name: int if f.type is int else float
    for f in dataclasses.fields(TrainConfig)
    if f.type in (int, float) or float in typing.get_args(f.type)
}


def parse_variant(spec: str) -> dict[str, float | int]:
    """`"weight_decay=0.2,max_lr=0.02"` -> overrides; `"baseline"` -> none."""
    if spec == "baseline":
        return {}
    overrides = {}
    for item in spec.split(","):
        name, _, value = item.partition("=")
        if name not in TUNABLE:
            raise SystemExit(f"unknown knob {name!r}; tunable: {', '.join(sorted(TUNABLE))}")
        try:
            overrides[name] = TUNABLE[name](value)
        except ValueError:
            raise SystemExit(f"{item!r}: expected {name}=<{TUNABLE[name].__name__}>") from None
    return overrides


def run_variant(spec: str, args: argparse.Namespace) -> dict:
    overrides = {"max_lr": args.max_lr, "epochs": args.epochs} | parse_variant(spec)
    out = Path(args.out_root) / spec.replace(",", "_").replace("=", "-")
    # No range test: a sweep's minutes are its training's. A variant may set either knob too. A sweep run again
    # measures its variants again, in their folders.
    settings = dict(data_dir=args.data_dir, out=str(out), n_misclassified=10, lr_find_iters=0, overwrite=True)
    cfg = TrainConfig(**(settings | overrides))
    start = time.perf_counter()
    result = run(cfg)
    return {
        "variant": spec,
        **overrides,
        "test_acc": result.report["accuracy"],
        "test_acc_tta": result.report["accuracy_tta"],
        "final_train_acc": round(float(result.history["train_acc"].iloc[-1]), 4),
        "minutes": round((time.perf_counter() - start) / 60, 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+", help='"baseline" or overrides such as weight_decay=0.2,max_lr=0.02')
    p.add_argument("--data-dir", required=True)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--max-lr", type=float, default=TrainConfig.max_lr, help="unless a variant sets max_lr")
    p.add_argument("--out-root", default="runs/sweep")
    p.add_argument("--results", default="runs/sweep/results.jsonl", help="JSON lines are appended here too")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    for spec in args.variants:
        parse_variant(spec)  # every spec is checked before the first (long) run starts
    for spec in args.variants:
        source = provenance("hparam_sweep.py", argv)  # the code and machine as the variant starts
        append(Path(args.results), source | run_variant(spec, args))


if __name__ == "__main__":
    main()
