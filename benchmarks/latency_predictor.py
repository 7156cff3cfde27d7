"""How well the per-layer lookup table predicts measured int8 latency: 50 random designs of a search space.

For each runtime and thread count: 50 designs drawn at random from the space (seeds from 0 on; one that
cannot run at the input size is skipped, as the search skips it), each measured as the search measures it
(:class:`attendnets.bench.LatencyMeter`: exported, quantized, timed interleaved with MobileNet-V1) and
predicted by :class:`attendnets.search.predictor.LatencyTable` (the sum of its
layers' probes). Reported: Spearman rank correlation of predicted and measured ms, and the relative error of
the predicted ratio to MobileNet-V1 against the measured one. The machine should be otherwise idle.

    python benchmarks/latency_predictor.py                        # ort-int8 and litert-int8, 1 and 2 threads
    python benchmarks/latency_predictor.py --runtimes ort-int8 --threads 1 --designs 10   # a quick look

Measured designs and the tables are kept in ``runs/latency_predictor/`` (a killed run continues where it
stopped); the report goes to docs/results/latency_predictor.{md,json} (only with the default 50 designs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, provenance, run_context, run_main  # noqa: E402

from attendnets.bench import LatencyMeter  # noqa: E402
from attendnets.files import atomic_write_text  # noqa: E402
from attendnets.model import build_model  # noqa: E402
from attendnets.runtime import tune_malloc  # noqa: E402
from attendnets.search.pilot import RandomChoices  # noqa: E402
from attendnets.search.predictor import LatencyTable  # noqa: E402
from attendnets.search.space import load_space  # noqa: E402

DESIGNS = 50


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="attendnet_b_fast", help="search space (default attendnet_b_fast)")
    parser.add_argument("--runtimes", default="ort-int8,litert-int8", help="comma-separated (default ort-int8,litert-int8)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--designs", type=int, default=DESIGNS, help=f"random designs (default {DESIGNS})")
    parser.add_argument("--img-size", type=int, default=128, help="input size (default 128, as trained on Imagenette)")
    parser.add_argument("--num-classes", type=int, default=10, help="default 10")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "latency_predictor")
    return parser.parse_args()


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (no ties expected among measured milliseconds)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def check(runtime: str, threads: int, args: argparse.Namespace) -> dict:
    """Measure and predict every design of one runtime and thread count (resuming from ``args.runs``)."""
    record = args.runs / f"{runtime}-{threads}t-{args.img_size}px.json"
    rows = json.loads(record.read_text()) if record.is_file() else []
    table = LatencyTable(args.runs / f"table-{runtime}-{threads}t.json", runtime, threads)
    space = load_space(args.space)
    meter = None
    for seed in itertools.count(rows[-1]["seed"] + 1 if rows else 0):
        if len(rows) >= args.designs:
            break
        spec = space.sample(RandomChoices(random.Random(seed)))
        model = build_model(spec, num_classes=args.num_classes).eval()
        try:  # a design whose late condensers pool a 2x2 map to nothing cannot run at this size: the search skips it too
            with torch.no_grad():
                model(torch.zeros(1, 3, args.img_size, args.img_size))
        except RuntimeError:
            print(f"design {seed} cannot run at {args.img_size} px: skipped", flush=True)
            continue
        meter = meter or LatencyMeter(runtime, args.img_size, args.num_classes, threads)
        measured = meter.measure(model, f"design{seed}")
        predicted_ratio = table.predict_ratio(model, args.img_size, args.num_classes)
        rows.append({"seed": seed, "measured_ms": measured["latency_ms"], "reference_ms": measured["reference_ms"],
                     "measured_ratio": measured["latency_ratio"], "predicted_ms": table.predict(model, args.img_size),
                     "predicted_ratio": predicted_ratio, "load_average_1min": os.getloadavg()[0], "spec": spec.to_dict()})
        atomic_write_text(record, json.dumps(rows, indent=1) + "\n")
        print(f"{runtime} {threads}t design {seed}: measured {measured['latency_ratio']:.2f}x, "
              f"predicted {predicted_ratio:.2f}x MobileNet-V1", flush=True)
    if meter is not None:
        meter.close()
    rows = rows[: args.designs]
    ratio_error = [abs(r["predicted_ratio"] / r["measured_ratio"] - 1) for r in rows]
    ms_error = [abs(r["predicted_ms"] / r["measured_ms"] - 1) for r in rows]
    return {"runtime": runtime, "threads": threads, "designs": len(rows), "table_layers": len(table.entries),
            "spearman_ms": spearman([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows]),
            "spearman_ratio": spearman([r["predicted_ratio"] for r in rows], [r["measured_ratio"] for r in rows]),
            "ratio_rel_error_median": float(np.median(ratio_error)), "ratio_rel_error_max": float(max(ratio_error)),
            "ms_rel_error_median": float(np.median(ms_error)),
            "load_average_median": float(np.median([r.get("load_average_1min", np.nan) for r in rows])), "rows": rows}


def write_report(results: list[dict], context: dict, args: argparse.Namespace) -> None:
    lines = ["# Latency predictor: per-layer lookup table against measured int8 latency", "",
             f"{args.designs} random designs of the `{args.space}` space at {args.img_size} px, {args.num_classes} classes, "
             "batch 1, random weights. *Measured*: the design exported and quantized as `attendnets export` does, timed "
             "interleaved with MobileNet-V1 (`LatencyMeter`, the search's latency cost). *Predicted*: the sum of its "
             "layers' probe latencies (`LatencyTable`), and its ratio to MobileNet-V1 predicted with the same table.", "",
             "| runtime | threads | rank correlation (ms) | rank correlation (ratio) | ratio error median / max "
             "| ms error median | layers in table | load average (1 min, median) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['runtime']} | {r['threads']} | {r['spearman_ms']:.3f} | {r['spearman_ratio']:.3f} | "
                     f"{100 * r['ratio_rel_error_median']:.0f}% / {100 * r['ratio_rel_error_max']:.0f}% | "
                     f"{100 * r['ms_rel_error_median']:.0f}% | {r['table_layers']} | {r['load_average_median']:.2f} |")
    lines += ["", "## How it was run", "", *provenance(context), ""]
    atomic_write_text(RESULTS / "latency_predictor.md", "\n".join(lines))
    atomic_write_text(RESULTS / "latency_predictor.json", json.dumps({**context, "results": results}, indent=1) + "\n")


def main() -> None:
    tune_malloc()
    args = parse_args()
    context = run_context()
    results = [check(runtime, int(threads), args) for runtime in args.runtimes.split(",")
               for threads in args.threads.split(",")]
    for r in results:
        print(f"{r['runtime']} {r['threads']}t: rank correlation {r['spearman_ms']:.3f} (ms), {r['spearman_ratio']:.3f} "
              f"(ratio); ratio error median {100 * r['ratio_rel_error_median']:.0f}%", flush=True)
    if args.designs == DESIGNS:
        write_report(results, context, args)


if __name__ == "__main__":
    sys.exit(run_main(main))
