"""Deployment on the edge runtimes: latency against the MobileNets in every runtime, TFLite Micro's arena and
file sizes, and top-1 of every exported Imagenette model in its runtime, with agreement with float.

Stages (``--stages``, default all), each step's JSON kept in ``runs/deploy/`` so a killed run continues where
it stopped (delete a step's JSON to redo it; a model's accuracy steps are redone when its checkpoint changes):

- ``latency``: ``attendnets bench`` of our four presets (attendnet_b, attendnet_a and the two designs the
  searches found) against MobileNet-V1/V2, 224 px, 50 classes, batch 1, random weights, interleaved, with 1 and
  with 2 threads (one export of each model, timed at both), in PyTorch, ONNX Runtime, LiteRT and ExecuTorch
  (float and int8), and TFLite Micro (1 thread, fewer rounds: reference kernels are slow);
- ``micro``: each model's all-integer TFLite Micro file at 224 px / 50 classes and at 128 px / 10 classes: its
  size, the arena TFLite Micro really used, and the profiler's peak-activation estimate;
- ``accuracy``: the six models of ``benchmarks/imagenette.py`` (``runs/imagenette/<model>/best``, trained at
  128 px) exported to ONNX, TFLite (with the micro file) and ExecuTorch, float and int8 calibrated on 64
  train/ images, each evaluated on val/ in its runtime with the int8 file's agreement with its float file;
  the micro file is evaluated in LiteRT, and TFLite Micro's top-1 is compared with LiteRT's on ``--tflm-images``
  evenly spaced val images (TFLite Micro's reference kernels take ~0.1 s an image);
- ``report``: docs/results/deploy.{md,json}.

A report made without the latency or micro stage, whose steps are not under ``runs/deploy/`` either (another
machine, or a refresh of the accuracy after retraining), keeps those stages' results from the last
docs/results/deploy.json, with the commit, date and machine they were measured at (``measured``): latency
belongs to the CPU that measured it, not to the one that writes the report.

    python benchmarks/deploy.py --data ../shared/datasets/imagenette2-224   # or set ATTENDNETS_DATA
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, provenance, run_context, run_main, step  # noqa: E402
from imagenette import comparison_run, run_options  # noqa: E402

from attendnets.bench import _synthetic_images, load_bench_model  # noqa: E402
from attendnets.checkpoint import checkpoint_paths  # noqa: E402
from attendnets.data import default_preprocessing, resolve_data_dir  # noqa: E402
from attendnets.export import (  # noqa: E402
    CalibrationImages,
    LiteRTRunner,
    MicroRunner,
    export_tflite,
    profile_for_micro,
    read_onnx_meta,
)
from attendnets.files import atomic_write_json, atomic_write_text  # noqa: E402
from attendnets.registry import BASELINES, create_model  # noqa: E402
from attendnets.runtime import tune_malloc  # noqa: E402

OURS = ("attendnet_b", "attendnet_a", "attendnet_found_macs", "attendnet_found_latency")
MODELS = ("attendnet_b", "mobilenet_v1", "attendnet_a", "mobilenet_v2", *OURS[2:])
XNNPACK_RUNTIMES = "eager,ort,ort-int8,litert,litert-int8,executorch,executorch-int8"
FORMATS = {"onnx": ".onnx", "tflite": ".tflite", "executorch": ".pte"}
STAGES = ("latency", "micro", "accuracy", "report")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="Imagenette root with train/ and val/ (default: $ATTENDNETS_DATA)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated (default {','.join(STAGES)})")
    parser.add_argument("--models", default=",".join(MODELS), help="models of the accuracy stage")
    parser.add_argument("--trained", type=Path, default=ROOT / "runs" / "imagenette", help="runs of imagenette.py")
    parser.add_argument("--run", action="append", metavar="MODEL=FOLDER",
                        help="take MODEL's checkpoint from this recorded run of the comparison recipe at another "
                             "seed, not --trained's (as ship.py's --run: the shipped weights' run)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "deploy", help="where the steps keep their files")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved latency rounds (default 10)")
    parser.add_argument("--tflm-rounds", type=int, default=3, help="TFLite Micro latency rounds (default 3)")
    parser.add_argument("--tflm-images", type=int, default=200, help="val images TFLite Micro is checked on")
    parser.add_argument("--workers", type=int, default=2, help="data loader processes (default 2)")
    args = parser.parse_args()
    args.run = run_options(args.run, list(MODELS))  # {model: folder}, checked before any stage's long work
    return args


def latency(args: argparse.Namespace) -> dict[str, Any]:
    """``attendnets bench`` reports by thread count (``1t``, ``2t``: one export of each model timed at both)
    and of TFLite Micro (``tflm``)."""
    common = ["bench", *OURS, "--baselines", ",".join(BASELINES), "--img-size", "224", "--num-classes", "50",
              "--batch", "0"]
    by_threads = step("bench 1 and 2 threads", args.runs / "bench-threads.json",
                      [*common, "--runtimes", XNNPACK_RUNTIMES, "--threads", "1,2", "--rounds", str(args.rounds)])
    runs = {f"{report['settings']['threads']}t": report for report in by_threads}
    runs["tflm"] = step("bench tflm", args.runs / "bench-tflm.json",
                        [*common, "--runtimes", "tflm", "--threads", "1", "--rounds", str(args.tflm_rounds)])
    return runs


def micro(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Arena and file size of each model's TFLite Micro file (random weights as ``attendnets bench`` makes them,
    no branch zeroed; ranges calibrated on generated images), measured once, and the profiler's estimate of the
    arena, always anew."""
    record = args.runs / "micro.json"
    rows = json.loads(record.read_text()) if record.is_file() else _measure_micro(record)
    for row in rows:
        name, size = row["model"], row["img_size"]
        model = create_model(name, num_classes=row["num_classes"]).eval()
        estimate = profile_for_micro(model, size)
        row.update(profiler_arena_bytes=estimate.micro_arena_bytes,
                   profiler_arena_planned_bytes=estimate.micro_arena_planned_bytes,
                   profiler_arena_persistent_bytes=estimate.micro_arena_persistent_bytes)
    return rows


def _measure_micro(record: Path) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="attendnets-micro-") as tmp:
        for size, classes in ((224, 50), (128, 10)):
            folder = _synthetic_images(Path(tmp) / f"calib{size}", size)
            for name in (*OURS, *BASELINES):
                model = load_bench_model(name, size, classes).module
                meta = {"class_names": [f"c{i}" for i in range(classes)], **default_preprocessing(size)}
                images = torch.from_numpy(np.concatenate(CalibrationImages(folder, meta, 16).batches))
                path = export_tflite(model, Path(tmp) / "m.tflite", meta, int8=True, calibration=images, micro=True)
                runner = MicroRunner(path)
                rows.append({"model": name, "img_size": size, "num_classes": classes,
                             "file_kb": path.stat().st_size / 1024, "arena_bytes": runner.arena_bytes,
                             "arena_planned_bytes": runner.arena_planned_bytes,
                             "arena_persistent_bytes": runner.arena_persistent_bytes})
                print(f"micro {name} {size} px: {rows[-1]}", flush=True)
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, rows)
    return rows


def steps_of(run: Path, trained: Path) -> Path:
    """``run``, the folder of a model's accuracy steps, made from the checkpoint ``trained``: steps cached from
    another checkpoint (a retrained model, another ``--run``), or from one not recorded, are deleted, not
    reported as this one's."""
    weights, _ = checkpoint_paths(trained)
    made_from = {"checkpoint": os.path.relpath(trained, ROOT),
                 "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    stamp = run / "checkpoint.json"
    if run.is_dir() and (not stamp.is_file() or json.loads(stamp.read_text()) != made_from):
        print(f"{run}: its steps were not made from {made_from['checkpoint']} as it is now: redoing them", flush=True)
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stamp, made_from)
    return run


def accuracy_of(model: str, args: argparse.Namespace, data: Path) -> dict[str, Any]:
    trained = comparison_run(model, args.run, args.trained) / "best"
    if not trained.with_suffix(".json").is_file():
        raise SystemExit(f"{model}: no trained checkpoint {trained}: run benchmarks/imagenette.py first")
    run = steps_of(args.runs / model, trained)
    common = ["--data", str(data), "--workers", str(args.workers)]
    out: dict[str, Any] = {"model": model, "checkpoint": os.path.relpath(trained, ROOT),
                           "another_seed": model in args.run}
    for fmt, suffix in FORMATS.items():
        path = run / fmt / f"{model}{suffix}"
        command = ["export", "--checkpoint", str(trained), "--format", fmt, "--output", str(path), "--int8",
                   "--calib-data", str(data / "train"), "--calib-images", "64"]
        out[f"{fmt}_export"] = step(f"{model} export {fmt}", run / f"export-{fmt}.json",
                                    command + (["--micro"] if fmt == "tflite" else []))
        files = out[f"{fmt}_export"]["files"]
        out[f"{fmt}_float"] = step(f"{model} eval {fmt}", run / f"eval-{fmt}.json", ["eval", "--file", str(path), *common])
        for label in ("int8", "micro"):
            if label in files:
                out[f"{fmt}_{label}"] = step(
                    f"{model} eval {fmt} {label}", run / f"eval-{fmt}-{label}.json",
                    ["eval", "--file", files[label]["path"], "--agreement-with", str(path), *common])
    out["onnx_int8_weight_bits"] = read_onnx_meta(out["onnx_export"]["files"]["int8"]["path"]).get("weight_bits", 8)
    out["tflm_vs_litert"] = tflm_check(out["tflite_export"]["files"]["micro"]["path"], data, run, args.tflm_images)
    return out


def tflm_check(path: str, data: Path, run: Path, count: int) -> dict[str, Any]:
    """Top-1 agreement of TFLite Micro with LiteRT running the same micro file on ``count`` val images."""
    record = run / "tflm-vs-litert.json"
    if record.is_file():
        return json.loads(record.read_text())
    micro, litert = MicroRunner(path), LiteRTRunner(path, threads=2)
    images = torch.from_numpy(np.concatenate(CalibrationImages(data / "val", micro.meta, count).batches))
    a, b = micro(images).argmax(1), litert(images).argmax(1)
    result = {"images": len(images), "top1_agreement": 100.0 * float((a == b).mean()), "arena_bytes": micro.arena_bytes}
    atomic_write_json(record, result)
    return result


def _ratio_table(bench: dict[str, Any]) -> list[str]:
    """Batch-1 median ms per model (rows) and runtime (columns), with the speed ratio to MobileNet-V1."""
    runtimes = list(dict.fromkeys(r["runtime"] for r in bench["results"]))
    models = list(dict.fromkeys(r["model"] for r in bench["results"]))
    cell = {(r["model"], r["runtime"]): r for r in bench["results"]}
    lines = ["| model | " + " | ".join(runtimes) + " |", "|---" * (len(runtimes) + 1) + "|"]
    for model in models:
        cells = []
        for runtime in runtimes:
            r = cell[(model, runtime)]
            ratio = r.get("batch1_speedup_vs_mobilenet_v1")
            cells.append(f"{r['batch1_median_ms']:.2f} ms" + ("" if ratio is None else f" ({ratio:.2f}x)"))
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def _accuracy_table(accuracy: dict[str, dict]) -> list[str]:
    lines = ["| model | float (ORT) | ORT int8 | LiteRT float | LiteRT int8 | TFLite Micro file in LiteRT | "
             "ExecuTorch float | ExecuTorch int8 | TFLite Micro vs LiteRT, same file | files int8 KB (onnx / tflite / "
             "micro / pte) |", "|---" * 10 + "|"]
    for m in accuracy.values():
        def top(key: str) -> str:
            r = m[key]
            agree = r.get("agreement", {}).get("top1_agreement")
            return f"{r['top1']:.2f}%" + ("" if agree is None else f" ({agree:.1f}%)")

        sizes = [m[f"{f}_export"]["files"][k]["kb"] for f, k in
                 (("onnx", "int8"), ("tflite", "int8"), ("tflite", "micro"), ("executorch", "int8"))]
        check = m["tflm_vs_litert"]
        bits = m.get("onnx_int8_weight_bits", 8)  # reports before the choice existed: 8-bit weights everywhere
        ort_int8 = top("onnx_int8") + ("" if bits == 8 else f", {bits}-bit weights")
        lines.append(f"| {m['model']} | {top('onnx_float')} | {ort_int8} | {top('tflite_float')} | "
                     f"{top('tflite_int8')} | {top('tflite_micro')} | {top('executorch_float')} | "
                     f"{top('executorch_int8')} | {check['top1_agreement']:.1f}% of {check['images']} | "
                     + " / ".join(f"{s:,.0f}" for s in sizes) + " |")
    return lines


def _micro_table(rows: list[dict]) -> list[str]:
    lines = ["| model | input | file KB | TFLite Micro arena KB (planned + persistent) | profiler's arena estimate KB "
             "| arena / estimate |", "|---|---|---|---|---|---|"]
    for r in rows:
        arena, estimate = r["arena_bytes"] / 1024, r["profiler_arena_bytes"] / 1024
        parts = f" ({r['arena_planned_bytes'] / 1024:,.0f} + {r['arena_persistent_bytes'] / 1024:,.0f})"
        lines.append(f"| {r['model']} | {r['img_size']} px, {r['num_classes']} classes | {r['file_kb']:,.0f} | "
                     f"{arena:,.0f}{parts} | {estimate:,.0f} | {arena / estimate:.2f} |")
    return lines


def verdicts(latency: dict[str, Any], accuracy: dict[str, dict]) -> list[str]:
    lines = []
    for key, bench in latency.items():
        ms = {(r["model"], r["runtime"]): r["batch1_median_ms"] for r in bench["results"]}
        threads = bench["settings"]["threads"]
        for runtime in sorted({r for _, r in ms if r.endswith("-int8") or r == "tflm"}):
            if ("attendnet_b", runtime) in ms and ("mobilenet_v1", runtime) in ms:
                ratio = ms[("mobilenet_v1", runtime)] / ms[("attendnet_b", runtime)]
                lines.append(f"{runtime}, {threads} thread(s): attendnet_b runs at {ratio:.2f}x MobileNet-V1's speed "
                             f"({ms[('attendnet_b', runtime)]:.2f} vs {ms[('mobilenet_v1', runtime)]:.2f} ms).")
        if ("attendnet_b", "ort") in ms and ("attendnet_b", "ort-int8") in ms:
            a, b = ms[("attendnet_b", "ort-int8")], ms[("attendnet_b", "ort")]
            lines.append(f"ORT, {threads} thread(s): attendnet_b int8 {a:.2f} ms vs float {b:.2f} ms: int8 is "
                         f"{'faster' if a < b else 'NOT faster'}.")
    for m in accuracy.values():
        for fmt, label in (("onnx", "int8"), ("tflite", "int8"), ("tflite", "micro"), ("executorch", "int8")):
            drop = m[f"{fmt}_float"]["top1"] - m[f"{fmt}_{label}"]["top1"]
            where = f"{drop:.2f} points below" if drop >= 0 else f"{-drop:.2f} points above"
            lines.append(f"{m['model']} {fmt} {label}: top-1 {where} float "
                         f"({'within' if abs(drop) <= 0.5 else 'NOT within'} 0.5).")
    return lines


def measured_here(context: dict) -> dict[str, Any]:
    """The commit, date and machine of a run context (a report's), as ``measured`` keeps them."""
    return {k: context[k] for k in ("commit", "date", "machine")}


def _measured_lines(measured: dict[str, dict], context: dict) -> list[str]:
    """Where the latency and micro results come from an earlier report than this one: one line saying so."""
    earlier = {stage: at for stage, at in measured.items() if at != measured_here(context)}
    return [f"The {stage} results are an earlier run's: commit `{at['commit'][:10]}`, {at['date'][:10]}, on "
            f"{at['machine']['cpu']} ({', '.join(at['machine']['cpu_flags'])}); kept because this report did not "
            "measure them again." for stage, at in earlier.items()] + ([""] if earlier else [])


def write_report(latency: dict, micro_rows: list, accuracy: dict, context: dict, measured: dict[str, dict]) -> None:
    """docs/results/deploy.{md,json}; ``measured``: the commit, date and machine of the latency and micro results
    (``{stage: {"commit", "date", "machine"}}``), which may be an earlier report's."""
    statements = verdicts(latency, accuracy)
    report = {**context, "measured": measured, "latency": latency, "micro": micro_rows, "accuracy": accuracy,
              "verdicts": statements}
    atomic_write_json(RESULTS / "deploy.json", report)
    m = measured.get("latency", context)["machine"]
    lines = ["# Deployment: ONNX Runtime, LiteRT, ExecuTorch and TFLite Micro", "",
             "Each model exported by `attendnets export` for each runtime, every block in that runtime's form (the "
             "same math; see `attendnets/blocks.py`), int8 all-integer: weights int8 per output channel, "
             "activations 8-bit per tensor. Latency: batch 1, median of interleaved rounds, random weights, 224 px, "
             "50 classes; in brackets the speed relative to MobileNet-V1 in the same runtime and run (> 1 is "
             "faster). Machine: " + f"{m['cpu']} with {', '.join(m['cpu_flags'])}, {m['cores']} cores: int8 "
             "verdicts differ on CPUs without VNNI. KB = 1024 bytes.", "", *_measured_lines(measured, context)]
    for key, bench in latency.items():
        s = bench["settings"]
        lines += [f"## Latency, {s['threads']} thread(s), {s['rounds']} rounds" + (" (TFLite Micro)" if key == "tflm" else ""),
                  "", *_ratio_table(bench), ""]
    if micro_rows:
        lines += ["## TFLite Micro: arena and file", "", "The arena TFLite Micro's recording allocator reports after "
                  "a call (tensors planned by its memory planner plus its own bookkeeping) beside `attendnets "
                  "profile`'s estimate of it, made without TFLite Micro: the int8 tensors of the micro form's graph "
                  "(element-wise ops write new tensors, explicit PAD copies counted) laid out as TFLite Micro's "
                  "greedy planner lays them out, plus bookkeeping per tensor, op and output channel.", "",
                  *_micro_table(micro_rows), ""]
    if accuracy:
        chosen = [f"{a['model']}'s from {a['checkpoint']}" for a in accuracy.values() if a.get("another_seed")]
        lines += ["## Imagenette val top-1 in each runtime", "", "The checkpoints of `benchmarks/imagenette.py` "
                  "(128 px; each run's record: docs/results/runs/imagenette/<model>.json" +
                  (f"; {', '.join(chosen)}, a run of the same recipe at another seed" if chosen else "") +
                  "); in brackets the share of val images on which the 8-bit file's top-1 is its float file's. ONNX "
                  "Runtime's int8 weights are 7-bit where the table says so: the export's choice on x86 CPUs "
                  "without VNNI.", "",
                  *_accuracy_table(accuracy), "",
                  "ExecuTorch's int8 files take their activation ranges from the min and max seen on the 64 "
                  "calibration images, as ONNX Runtime's export does. The XNNPACK quantizer's default, a histogram "
                  "fit, was tried at commit 336c227 on the checkpoints of an earlier recipe (float top-1: "
                  "attendnet_b 73.12%, MobileNet-V1 62.47%, attendnet_a 70.57%, MobileNet-V2 64.15%): it gave "
                  "73.02%, 62.19%, 70.39% and 63.46%, MobileNet-V2 0.69 point below float, the one result outside "
                  "0.5; with 256 calibration images MobileNet-V2 fell to 63.31%. The ranges set the files' scales, "
                  "not their operators, so the latency tables do not depend on them.", ""]
    lines += ["## Verdicts", "", *[f"- {s}" for s in statements], "", "## How it was run", "",
              *provenance(context), "",
              "Each step's result is kept under runs/deploy/ and reused by later invocations, so a step may have run "
              "at an earlier commit than the report's. The micro stage runs inside the driver "
              "(`python benchmarks/deploy.py --stages micro`); every other step's exact command:", ""]
    lines += [f"- `{b['command']}`" for b in latency.values()]
    for model in accuracy.values():
        lines += [f"- `{v['command']}`" for v in model.values() if isinstance(v, dict) and "command" in v]
    atomic_write_text(RESULTS / "deploy.md", "\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'deploy.md'} and {RESULTS / 'deploy.json'}")
    for s in statements:
        print(s)


def main() -> int:
    tune_malloc()
    args = parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    context = run_context()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    # The report also takes the stages finished earlier: their steps are recorded under --runs, or else in the
    # last report, measured where it says.
    done = {"latency": (args.runs / "bench-tflm.json").is_file(), "micro": (args.runs / "micro.json").is_file()}
    last = json.loads((RESULTS / "deploy.json").read_text()) if (RESULTS / "deploy.json").is_file() else {}
    measured = {stage: last.get("measured", {}).get(stage, measured_here(last)) for stage in ("latency", "micro")
                if last.get(stage)}
    if "latency" in stages or done["latency"]:
        lat, measured["latency"] = latency(args), measured_here(context)
    else:
        lat = last.get("latency", {})
    if "micro" in stages or done["micro"]:
        micro_rows, measured["micro"] = micro(args), measured_here(context)
    else:
        micro_rows = last.get("micro", [])
    if "accuracy" not in stages:
        models = [m for m in models if (args.runs / m / "tflm-vs-litert.json").is_file()]
    data = resolve_data_dir(args.data).resolve() if models else None
    acc = {m: accuracy_of(m, args, data) for m in models}
    if "report" in stages:
        write_report(lat, micro_rows, acc, context, measured)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
