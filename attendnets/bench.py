"""CPU latency and throughput of models in PyTorch eager and in the deployment runtimes (ONNX Runtime, LiteRT
with XNNPACK, ExecuTorch with XNNPACK, each float and int8, and TFLite Micro's reference kernels), measured
side by side in one process so that their ratios mean something on a noisy machine.

How it measures (see ``shared/notes/performance.md`` for why):

- every (model, runtime) pair is visited once per round, in a shuffled order, so drift hits all alike;
- before each visit the process sleeps 60 ms (thread pools keep spinning ~10-30 ms after a call and would
  steal cores from the next model) and makes untimed calls (the first calls after idling are slow);
- PyTorch runs in channels_last (its fastest CPU layout); ``torch`` threads and each runtime's threads are
  set to the requested count (TFLite Micro has one); glibc malloc should be tuned
  (:func:`attendnets.runtime.tune_malloc`, as the command line and the benchmarks do);
- every file is what ``attendnets export`` writes for that runtime (:mod:`attendnets.export`: each block in
  its runtime form; int8 all-integer), run by the runner ``eval`` and ``predict`` use, except ONNX Runtime,
  whose session is built here so its operator profile can be taken.

Models named by preset, baseline or spec get random weights and their int8 ranges are calibrated on
generated images: latency does not depend on the weights' values (same graph, same kernels), so this is
fair; accuracy is not measured here. A checkpoint gives its own weights.

The module is light to import (its names, such as :data:`RUNTIMES`, serve the command line's parser): numpy,
torch and the exporters are imported by the functions that use them.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attendnets.errors import AttendNetsError
from attendnets.files import atomic_write_text
from attendnets.registry import BASELINES
from attendnets.runtime import cpu_flags, torch_threads

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

RUNTIMES = ("eager", "ort", "ort-int8", "litert", "litert-int8", "executorch", "executorch-int8", "tflm")
DEFAULT_RUNTIMES = ("eager", "ort", "ort-int8")
REFERENCE = "mobilenet_v1"
SETTLE_S = 0.06  # longer than the thread pools keep spinning after a call
WARMUP_CALLS = 3
TIMED_CALLS = 5  # timed batch-1 calls per visit (batch N: one)
PROFILE_CALLS = 30


@dataclass
class BenchModel:
    """A model to measure: its label in the report, the module (eval mode) and the metadata export needs."""

    label: str
    module: nn.Module
    meta: dict[str, Any]


def load_bench_model(name: str, img_size: int, num_classes: int) -> BenchModel:
    """A checkpoint (its weights and classes) when ``name`` is one, else a model by name or spec file with
    random weights and ``num_classes`` classes. Either way measured at ``img_size``."""
    import torch

    from attendnets.checkpoint import checkpoint_paths, load_checkpoint
    from attendnets.registry import create_model

    if checkpoint_paths(name)[0].is_file():
        module, meta = load_checkpoint(name)
        label = meta.get("model") or (meta.get("spec") or {}).get("name") or Path(name).name
        return BenchModel(f"{label} ({Path(name).name})", module, {**meta, **_preprocessing(img_size)})
    torch.manual_seed(0)
    return random_weights_model(name, create_model(name, num_classes=num_classes), img_size)


def random_weights_model(label: str, module: nn.Module, img_size: int) -> BenchModel:
    """``module`` to measure at ``img_size``, with generic class names and ImageNet preprocessing.

    A batch norm whose scale is all zero (``zero_init_last``: a residual branch starting as the identity) gets
    its scale back to 1. Left at zero, its branch outputs zeros, the converters fold it away, and the file is
    timed without the work a trained network does."""
    import torch

    for norm in module.modules():
        if isinstance(norm, torch.nn.BatchNorm2d) and norm.weight is not None and not norm.weight.any():
            torch.nn.init.ones_(norm.weight)
    classes = [f"class{i}" for i in range(getattr(module, "num_classes", 1))]
    return BenchModel(label, module.eval(), {"class_names": classes, **_preprocessing(img_size)})


def _preprocessing(img_size: int) -> dict[str, Any]:
    """ImageNet preprocessing at ``img_size``: what every measured model is exported with."""
    from attendnets.data import default_preprocessing

    return default_preprocessing(img_size)


def _synthetic_images(folder: Path, size: int) -> Path:
    from attendnets.data import make_synthetic_dataset

    return make_synthetic_dataset(folder, classes=4, per_class=4, size=size) / "train"


def _ort_call(session: Any) -> Callable[[np.ndarray], Any]:
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def op_type_profile(path: Path, threads: int, img_size: int, work: Path) -> dict[str, Any]:
    """Where an ONNX Runtime graph spends a batch-1 call, by operator type: each node's median kernel time over
    :data:`PROFILE_CALLS` calls (after :data:`WARMUP_CALLS`), summed by type. ``total_ms`` is the sum of node
    times (less than wall time: it leaves out scheduling between nodes)."""
    import numpy as np

    from attendnets.export import ort_session

    session = ort_session(path, threads, work / f"{path.stem}-trace")
    run = _ort_call(session)
    x = np.random.default_rng(0).random((1, 3, img_size, img_size), dtype=np.float32)
    for _ in range(WARMUP_CALLS + PROFILE_CALLS):
        run(x)
    trace = Path(session.end_profiling())
    per_node: dict[str, list[float]] = defaultdict(list)
    op_of: dict[str, str] = {}
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node[event["name"]].append(event["dur"] / 1e3)
            op_of[event["name"]] = event["args"]["op_name"]
    trace.unlink()
    by_op: dict[str, dict[str, float]] = defaultdict(lambda: {"ms": 0.0, "nodes": 0})
    for node, times in per_node.items():
        by_op[op_of[node]]["ms"] += statistics.median(times[WARMUP_CALLS:] or times)
        by_op[op_of[node]]["nodes"] += 1
    total = sum(v["ms"] for v in by_op.values())
    ops = {op: {**v, "share": v["ms"] / total} for op, v in sorted(by_op.items(), key=lambda kv: -kv[1]["ms"])}
    return {"total_ms": total, "ops": ops}


def _export(model: BenchModel, runtime: str, index: int, work: Path, calibration: dict[str, Any]) -> Path:
    """The model file that ``runtime`` runs (exporting it, or reusing the float file an int8 one derives from)."""
    from attendnets.export import export_executorch, export_onnx, export_tflite, quantize_onnx

    base, int8 = runtime.removesuffix("-int8"), runtime.endswith("-int8") or runtime == "tflm"
    if base == "ort":
        float_path = work / f"m{index}.onnx"
        if not float_path.is_file():
            export_onnx(model.module, float_path, model.meta)
        source = calibration["folder"] if "folder" in calibration else calibration["images"]
        return quantize_onnx(float_path, work / f"m{index}-int8.onnx", source, 16) if int8 else float_path
    path = work / f"m{index}-{runtime}.{'pte' if base == 'executorch' else 'tflite'}"
    images = calibration["images"] if int8 else None
    if base == "executorch":
        return export_executorch(model.module, path, model.meta, int8=int8, calibration=images)
    return export_tflite(model.module, path, model.meta, int8=int8, calibration=images, micro=runtime == "tflm")


def _calibration(runtimes: list[str], img_size: int, meta: dict[str, Any], work: Path) -> dict[str, Any]:
    """Generated calibration images (a folder, and the preprocessed tensor) when a runtime in ``runtimes`` is int8."""
    import numpy as np
    import torch

    from attendnets.export import CalibrationImages

    if not any(r.endswith("-int8") or r == "tflm" for r in runtimes):
        return {}
    folder = _synthetic_images(work / "calibration", img_size)
    reader = CalibrationImages(folder, meta, max_images=16)
    return {"folder": folder, "images": torch.from_numpy(np.concatenate(reader.batches))}


def _runtime_call(
    model: BenchModel, runtime: str, index: int, work: Path, calibration: dict[str, Any], threads: int
) -> tuple[Callable[[np.ndarray], Any], Path | None]:
    """A batch callable of ``model`` in ``runtime`` and the file it runs (None for eager). Eager runs last of a
    model's runtimes: channels_last converts its module in place."""
    import torch

    from attendnets.export import load_runner, ort_session

    if runtime == "eager":
        module = model.module.eval().to(memory_format=torch.channels_last)

        def eager(x: np.ndarray) -> Any:
            with torch.inference_mode():
                return module(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))

        return eager, None
    path = _export(model, runtime, index, work, calibration)
    if runtime.startswith("ort"):
        return _ort_call(ort_session(path, threads)), path
    return load_runner(path, "tflm" if runtime == "tflm" else None, threads), path


def _prepare(models: list[BenchModel], runtimes: list[str], threads: int, img_size: int, work: Path) -> dict:
    """``{(label, runtime): callable(batch as numpy) }`` plus the ONNX paths, exporting and quantizing as needed."""
    calls: dict[tuple[str, str], Callable[[np.ndarray], Any]] = {}
    onnx_paths: dict[tuple[str, str], Path] = {}
    calibration = _calibration(runtimes, img_size, models[0].meta, work)
    for index, model in enumerate(models):
        model.module.eval()
        for runtime in sorted(runtimes, key=lambda r: r == "eager"):
            calls[(model.label, runtime)], path = _runtime_call(model, runtime, index, work, calibration, threads)
            if runtime.startswith("ort"):
                onnx_paths[(model.label, runtime)] = path
    return {"calls": calls, "onnx": onnx_paths}


def _measure(
    calls: dict[tuple[str, str], Callable[[np.ndarray], Any]],
    batch: int,
    img_size: int,
    rounds: int,
    advance: Callable[[], None],
) -> dict[tuple[str, str], list[float]]:
    """Per-call times in ms of every pair, interleaved round by round in a shuffled order."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal((batch, 3, img_size, img_size), dtype=np.float32)
    timed, warmup = (TIMED_CALLS, WARMUP_CALLS) if batch == 1 else (1, 1)
    order = list(calls)
    rng = random.Random(batch)
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            call = calls[key]
            time.sleep(SETTLE_S)
            for _ in range(warmup):
                call(x)
            for _ in range(timed):
                start = time.perf_counter()
                call(x)
                times[key].append(1e3 * (time.perf_counter() - start))
            advance()
    return times


class LatencyMeter:
    """Batch-1 latency of one model after another in one runtime, each timed interleaved with the same reference
    (:data:`REFERENCE`, exported once), so that a search can keep a ratio that survives the machine's drift.
    Each model takes an export (and for int8 a calibration on generated images) and ``rounds`` visits."""

    def __init__(self, runtime: str, img_size: int, num_classes: int, threads: int = 2, rounds: int = 5,
                 reference: str = REFERENCE) -> None:
        if runtime not in RUNTIMES:
            raise AttendNetsError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
        self.runtime, self.img_size, self.threads, self.rounds = runtime, img_size, threads, rounds
        self._tmp = tempfile.TemporaryDirectory(prefix="attendnets-latency-")
        self.work = Path(self._tmp.name)
        self.reference = load_bench_model(reference, img_size, num_classes)
        self.calibration = _calibration([runtime], img_size, self.reference.meta, self.work)
        with torch_threads(threads):
            self.reference_call, _ = _runtime_call(self.reference, runtime, 0, self.work, self.calibration, threads)
        self.measured = 0

    def measure(self, module: nn.Module, label: str = "model") -> dict[str, float]:
        """``latency_ms`` and ``reference_ms`` (medians of the interleaved batch-1 calls) and ``latency_ratio``."""
        self.measured += 1
        model = random_weights_model(label, module, self.img_size)
        with torch_threads(self.threads):
            call, _ = _runtime_call(model, self.runtime, self.measured, self.work, self.calibration, self.threads)
            calls = {("candidate", self.runtime): call, ("reference", self.runtime): self.reference_call}
            times = _measure(calls, 1, self.img_size, self.rounds, lambda: None)
        for file in self.work.glob(f"m{self.measured}[.-]*"):
            file.unlink()
        ms, reference = (statistics.median(times[key]) for key in calls)
        return {"latency_ms": ms, "reference_ms": reference, "latency_ratio": ms / reference}

    def close(self) -> None:
        self._tmp.cleanup()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# x86 instruction sets that decide float and int8 speed (int8 convs are fast with VNNI, slower on AVX2 alone).
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8")


def machine_info() -> dict[str, Any]:
    """The CPU (model name and its int8/float instruction sets), core count and library versions: what
    latency figures depend on. Results from machines with other ``cpu_flags`` are not comparable."""
    import onnxruntime
    import torch

    from attendnets import __version__

    cpu = platform.processor() or "unknown"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    present = cpu_flags()
    flags = [f for f in SIMD_FLAGS if f in present]
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "attendnets": __version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def run_bench(
    names: list[str],
    baselines: list[str] | None = None,
    runtimes: list[str] | None = None,
    img_size: int = 224,
    num_classes: int = 50,
    threads: int = 2,
    batch: int = 32,
    rounds: int = 10,
    profile_dir: str | os.PathLike | None = None,
    progress: Callable[[int], Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """Measure ``names`` (and ``baselines``, default :data:`BASELINES`) in every runtime of ``runtimes``.

    Returns the JSON-able report: per (model, runtime) batch-1 median and p90 ms, batch-``batch`` images/s
    (``batch`` of 0 or 1 skips throughput), speed relative to :data:`REFERENCE` in the same runtime and to
    eager for the same model, and raw times. ``progress(total)`` returns a function called once per visit.
    ``profile_dir`` gets each ORT model's time by operator type (``<label>-<runtime>.json``).
    """
    runtimes = list(DEFAULT_RUNTIMES if runtimes is None else runtimes)
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown or not runtimes:
        raise AttendNetsError(f"unknown runtime {', '.join(unknown) or '(none)'}; choose from {', '.join(RUNTIMES)}")
    if threads < 1 or rounds < 1 or batch < 0 or img_size < 8 or num_classes < 1:
        raise AttendNetsError("--threads, --rounds, --num-classes must be >= 1, --img-size >= 8, --batch >= 0")
    baselines = list(BASELINES if baselines is None else baselines)
    labels = list(dict.fromkeys([*names, *baselines]))
    if not labels:
        raise AttendNetsError("nothing to measure: name a model or checkpoint, or keep the baselines")
    machine = machine_info()
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="attendnets-bench-") as tmp:
        work = Path(tmp)
        models = [load_bench_model(name, img_size, num_classes) for name in labels]
        if len({m.label for m in models}) < len(models):
            raise AttendNetsError("the same model is named twice")
        prepared = _prepare(models, runtimes, threads, img_size, work)
        calls = prepared["calls"]
        batches = [1] + ([batch] if batch > 1 else [])
        advance = progress(rounds * len(calls) * len(batches)) if progress else (lambda: None)
        times = {b: _measure(calls, b, img_size, rounds, advance) for b in batches}
        profiles = {}
        if profile_dir is not None:
            out = Path(profile_dir)
            out.mkdir(parents=True, exist_ok=True)
            for (label, runtime), path in prepared["onnx"].items():
                summary = op_type_profile(path, threads, img_size, work)
                profiles[f"{label}|{runtime}"] = summary
                file = out / f"{label.replace('/', '_').replace(' ', '_')}-{runtime}.json"
                atomic_write_text(file, json.dumps({"model": label, "runtime": runtime, **summary}, indent=1) + "\n")
    return {
        "machine": machine,
        "settings": dict(threads=threads, img_size=img_size, num_classes=num_classes, batch=batch, rounds=rounds,
                         batch1_calls_per_visit=TIMED_CALLS, settle_ms=1e3 * SETTLE_S),
        "note": "random weights for named models (latency does not depend on the weights' values); int8 ranges "
        "calibrated on generated images; ratios are measured interleaved in this run",
        "results": speed_table([m.label for m in models], runtimes, times, batch),
        "profiles": profiles,
        "raw_ms": {f"{label}|{rt}|{b}": v for b, per in times.items() for (label, rt), v in per.items()},
    }


def speed_table(labels: list[str], runtimes: list[str], times: dict[int, dict[tuple[str, str], list[float]]],
                batch: int) -> list[dict[str, Any]]:
    """One row per (model, runtime) from the timings ``times[batch size][(label, runtime)]`` (ms per call):
    batch-1 median and p90 ms, batch-``batch`` median ms and images/s, and the speed relative to
    :data:`REFERENCE` in the same runtime and to eager for the same model, where those were measured."""
    one = times[1]
    rows = []
    for label in labels:
        for runtime in runtimes:
            key = (label, runtime)
            row: dict[str, Any] = {
                "model": label,
                "runtime": runtime,
                "batch1_median_ms": statistics.median(one[key]),
                "batch1_p90_ms": _percentile(one[key], 0.9),
            }
            if batch in times:
                median = statistics.median(times[batch][key])
                row.update(batchN_median_ms=median, batchN_images_per_s=batch / median * 1e3)
            ref = (REFERENCE, runtime)
            if ref in one:
                row["batch1_speedup_vs_" + REFERENCE] = statistics.median(one[ref]) / row["batch1_median_ms"]
                if batch in times:
                    row["batchN_speedup_vs_" + REFERENCE] = statistics.median(times[batch][ref]) / median
            if (label, "eager") in one:
                row["batch1_speedup_vs_eager"] = statistics.median(one[(label, "eager")]) / row["batch1_median_ms"]
            rows.append(row)
    return rows
