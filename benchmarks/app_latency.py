"""Latency and load benchmark of the Space, printed as JSON (a benchmark, not a test).

    python benchmarks/app_latency.py                      # starts space_app/app.py on a free port
    python benchmarks/app_latency.py --url http://127.0.0.1:7860/ --pid 1234   # an app already running
    python benchmarks/app_latency.py --quick              # a few requests, to check that it works
    python benchmarks/app_latency.py --server-only --threads 1   # handlers only, one torch thread

Measures, with gradio_client over HTTP (client side: upload, queue, handler, download):
  * /predict p50/p95, and /predict followed by /explain with 10 Grad-CAMs p50/p95;
  * 200 /predict requests from 8 concurrent clients: errors, throughput, the server's RSS before/after.
And server side, i.e. the time inside the handlers alone, timed in this process on the same files:
  * SpaceApp.predict p50/p95;
  * for every method the Space offers, SpaceApp.explain with one heatmap and with ten, each with its
    faithfulness score (what a visitor waits for after the prediction), p50/p95;
  * for every method, the mean faithfulness on the ten example images (top class, same layer).
Goals on a 2-core CPU, server side: predict p95 <= 50 ms; one heatmap with its faithfulness score
p95 <= 300 ms and ten <= 1.5 s, for every method. The JSON is followed by a per-method table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from app_helpers import APP_DIR, copy_app, rss_bytes, running_app  # noqa: E402
from results_log import append, provenance  # noqa: E402

GOAL_PREDICT_P95_MS = 50.0
GOAL_ONE_CAM_MS = 300.0
GOAL_TEN_CAMS_MS = 1500.0


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(1000 * s for s in seconds)
    if not ms:
        return {}
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    median = statistics.median(ms)
    return {"n": len(ms), "p50_ms": round(median, 2), "p95_ms": round(p95, 2), "max_ms": round(ms[-1], 2)}


def timed(fn: Callable[[], object], n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def server_side(image: Path, n: int, layer: str, only: list[str] | None = None) -> dict[str, object]:
    """The handlers themselves, in this process: what the server spends per request (every method, or `only`)."""
    sys.path.insert(0, str(APP_DIR))
    import app  # space_app/ is a folder of scripts, not a package

    unknown = [m for m in only or () if m not in app.METHODS]
    if unknown:
        raise SystemExit(f"--methods {' '.join(unknown)}: not the app's; it offers {', '.join(app.METHODS)}")
    sp = app.SpaceApp(APP_DIR)
    path = str(image)
    result: dict[str, object] = {"predict": percentiles(timed(lambda: sp.predict(path, 5), n))}
    methods = {}
    for method in only or app.METHODS:
        one = timed(lambda m=method: sp.explain(path, True, 1, layer, 0.5, m), max(5, n // 3))
        ten = timed(lambda m=method: sp.explain(path, True, 10, layer, 0.5, m), max(3, n // 10))
        methods[method] = {
            "one_heatmap": percentiles(one),
            "ten_heatmaps": percentiles(ten),
            "faithfulness": faithfulness_on_examples(sp, layer, method),
        }
    result["methods"] = methods
    return result


def faithfulness_on_examples(sp: object, layer: str, method: str) -> dict[str, float]:
    """Mean probability of the top class on the example images: as is, with the 20% most highlighted
    pixels hidden, and with the 20% least highlighted hidden; and how often hiding the most hurt more."""
    import numpy as np

    images = np.stack([sp._model_input(str(p))[0] for p in sp.examples])
    probs = sp.clf.probabilities(images)
    top = probs.argmax(1)
    masks = sp.clf.cam_masks(images, top, layer, method=method)
    most, least = sp.clf.faithfulness(images, masks, top)
    return {
        "images": len(images),
        "probability": round(float(probs[np.arange(len(top)), top].mean()), 3),
        "most_hidden": round(float(most.mean()), 3),
        "least_hidden": round(float(least.mean()), 3),
        "share_most_lower": round(float((most < least).mean()), 2),
    }


def method_table(methods: dict[str, dict[str, dict[str, float]]], layer: str) -> str:
    """The per-method figures as a Markdown table (server side, ms, p50 / p95)."""
    lines = [
        f"| method ({layer}) | 1 heatmap + faithfulness | 10 heatmaps + faithfulness | "
        "top class: as is → 20% most / least highlighted hidden (examples) |",
        "|---|---:|---:|---|",
    ]
    for name, m in methods.items():
        one, ten, f = m["one_heatmap"], m["ten_heatmaps"], m["faithfulness"]
        lines.append(
            f"| {name} | {one['p50_ms']:.0f} / {one['p95_ms']:.0f} ms | {ten['p50_ms']:.0f} / {ten['p95_ms']:.0f} ms "
            f"| {f['probability']:.0%} → {f['most_hidden']:.0%} / {f['least_hidden']:.0%} "
            f"(most hurt more on {f['share_most_lower']:.0%}) |"
        )
    return "\n".join(lines)


def client_side(url: str, image: Path, n: int, layer: str) -> dict[str, dict[str, float]]:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    file = handle_file(str(image))
    predict = timed(lambda: client.predict(file, 5, api_name="/predict"), n)

    def predict_and_explain() -> None:
        client.predict(file, 10, api_name="/predict")
        client.predict(file, True, 10, layer, 0.5, api_name="/explain")

    cams = timed(predict_and_explain, max(3, n // 5))
    return {"predict": percentiles(predict), "predict_plus_10_gradcams": percentiles(cams)}


def load_test(url: str, image: Path, requests: int, concurrency: int, pid: int | None) -> dict[str, object]:
    from gradio_client import Client, handle_file

    clients = [Client(url, verbose=False) for _ in range(concurrency)]
    file = handle_file(str(image))
    errors: list[str] = []
    latencies: list[float] = []

    def one(i: int) -> None:
        start = time.perf_counter()
        try:
            out = clients[i % concurrency].predict(file, 5, api_name="/predict")
            if len(out["confidences"]) != 5:
                errors.append(f"request {i}: {len(out['confidences'])} classes")
        except Exception as err:  # every failure is counted, not raised
            errors.append(f"request {i}: {type(err).__name__}: {err}")
        latencies.append(time.perf_counter() - start)

    rss_before = rss_bytes(pid) if pid else None
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    rss_after = rss_bytes(pid) if pid else None
    # A second round: memory should stay flat, not grow with every request.
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests, 2 * requests)))
    rss_after_2 = rss_bytes(pid) if pid else None
    mb = (lambda b: round(b / 2**20, 1)) if pid else (lambda b: None)
    return {
        "requests": 2 * requests,
        "concurrency": concurrency,
        "errors": len(errors),
        "first_errors": errors[:5],
        "throughput_rps": round(requests / wall, 1),
        "latency": percentiles(latencies),
        "server_rss_mb": {
            "before": mb(rss_before),
            "after_round_1": mb(rss_after),
            "after_round_2": mb(rss_after_2),
        },
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="benchmark an app already running here instead of starting one")
    p.add_argument("--pid", type=int, help="with --url: the server's process id, for its memory")
    p.add_argument("--image", type=Path, default=APP_DIR / "examples" / "cat.png")
    p.add_argument("--layer", default="layer2")
    p.add_argument("-n", type=int, default=100, help="sequential requests per latency figure")
    p.add_argument("--requests", type=int, default=200, help="requests per round of the load test")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="a handful of requests: check the benchmark runs")
    p.add_argument("--nice", action="store_true", help="start the app with nice -n 19 (shared machine)")
    p.add_argument("--server-only", action="store_true", help="time the handlers only: no HTTP, no load test")
    p.add_argument(
        "--threads", type=int, help="torch and BLAS threads for the server-side timing (default: one per core)"
    )
    p.add_argument("--methods", nargs="+", metavar="METHOD", help="time only these heatmap methods (default: all)")
    p.add_argument("--results", type=Path, help="also append the JSON (one line, with command and machine) here")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.requests = 5, 16

    result: dict[str, object] = provenance("app_latency.py", argv)  # the code and machine as the run starts
    result["image"] = str(args.image.relative_to(REPO) if args.image.is_relative_to(REPO) else args.image)
    if args.threads:  # torch's and the BLAS/OpenMP pools (numpy's SVD in EigenCAM) alike
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    result["server_side"] = server_side(args.image, args.n, args.layer, args.methods)
    result["machine"]["torch_threads"] = args.threads or "default"
    if args.server_only:
        return report(result, args)
    with contextlib.ExitStack() as stack:
        if args.url:
            url, pid = args.url, args.pid
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            url, pid = stack.enter_context(running_app(copy_app(root / "space_app"), root / "app.log", nice=args.nice))
        result["client_side"] = client_side(url, args.image, args.n, args.layer)
        result["load"] = load_test(url, args.image, args.requests, args.concurrency, pid)
    return report(result, args)


def report(result: dict[str, object], args: argparse.Namespace) -> int:
    """Print the JSON (with the goals met or not), then the per-method table; 1 if the load test had errors.
    With --results, the JSON is also appended there as one line, with the command and the machine."""
    server = result["server_side"]
    methods = server["methods"]
    goals = {
        "predict_p95_le_50ms": server["predict"]["p95_ms"] <= GOAL_PREDICT_P95_MS,
        "one_heatmap_p95_le_300ms": all(m["one_heatmap"]["p95_ms"] <= GOAL_ONE_CAM_MS for m in methods.values()),
        "ten_heatmaps_p95_le_1500ms": all(m["ten_heatmaps"]["p95_ms"] <= GOAL_TEN_CAMS_MS for m in methods.values()),
    }
    errors = result["load"]["errors"] if "load" in result else 0
    if "load" in result:
        goals["load_without_errors"] = errors == 0
    result["goals"] = goals
    print(json.dumps(result, indent=2))
    if args.results:
        append(args.results, result)
    predict = server["predict"]
    print(f"\nServer side, p50 / p95: predict {predict['p50_ms']:.1f} / {predict['p95_ms']:.1f} ms\n")
    print(method_table(methods, args.layer))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
