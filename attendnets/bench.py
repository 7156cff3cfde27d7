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
from collections.abc import Callable, Sequence
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
        return BenchModel(f"{label} ({Path(name).name})", module.eval(), {**meta, **_preprocessing(img_size)})
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
) -> Callable[[np.ndarray], Any]:
    """A batch callable of ``model`` in ``runtime``, exporting the file it runs (none for eager)."""
    path = None if runtime == "eager" else _export(model, runtime, index, work, calibration)
    return _runner(model, runtime, path, threads)


def _runner(model: BenchModel, runtime: str, path: Path | None, threads: int) -> Callable[[np.ndarray], Any]:
    """A batch callable of ``model`` (eager) or of its exported ``path`` in ``runtime``, with ``threads``. Eager
    converts the module to channels_last in place: make it after the model's exports."""
    import torch

    from attendnets.export import load_runner, ort_session

    if runtime == "eager":
        module = model.module.eval().to(memory_format=torch.channels_last)

        def eager(x: np.ndarray) -> Any:
            with torch.inference_mode():
                return module(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))

        return eager
    if runtime.startswith("ort"):
        return _ort_call(ort_session(path, threads))
    return load_runner(path, "tflm" if runtime == "tflm" else None, threads)


def _export_all(models: list[BenchModel], runtimes: list[str], img_size: int, work: Path
                ) -> dict[tuple[str, str], Path | None]:
    """``{(label, runtime): file}`` (None for eager), exporting and quantizing each model once for every runtime."""
    calibration = _calibration(runtimes, img_size, models[0].meta, work)
    return {(model.label, runtime): None if runtime == "eager" else _export(model, runtime, index, work, calibration)
            for index, model in enumerate(models) for runtime in runtimes}


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
            self.reference_call = _runtime_call(self.reference, runtime, 0, self.work, self.calibration, threads)
        self.measured = 0

    def measure(self, module: nn.Module, label: str = "model") -> dict[str, float]:
        """``latency_ms`` and ``reference_ms`` (medians of the interleaved batch-1 calls) and ``latency_ratio``."""
        self.measured += 1
        model = random_weights_model(label, module, self.img_size)
        with torch_threads(self.threads):
            call = _runtime_call(model, self.runtime, self.measured, self.work, self.calibration, self.threads)
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
    threads: int | Sequence[int] = 2,
    batch: int = 32,
    rounds: int = 10,
    profile_dir: str | os.PathLike | None = None,
    progress: Callable[[int], Callable[[], None]] | None = None,
) -> dict[str, Any] | list[dict[str, Any]]:
    """Measure ``names`` (and ``baselines``, default :data:`BASELINES`) in every runtime of ``runtimes``.

    Returns the JSON-able report: per (model, runtime) batch-1 median and p90 ms, batch-``batch`` images/s
    (``batch`` of 0 or 1 skips throughput), speed relative to :data:`REFERENCE` in the same runtime and to
    eager for the same model, and raw times. ``progress(total)`` returns a function called once per visit.
    ``profile_dir`` gets each ORT model's time by operator type (``<label>-<runtime>.json``).

    ``threads`` as a sequence of counts returns one report per count, in that order, from one export of each
    model: exporting and calibrating int8 files takes longer than timing them.
    """
    counts = [threads] if isinstance(threads, int) else list(threads)
    runtimes = list(DEFAULT_RUNTIMES if runtimes is None else runtimes)
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown or not runtimes:
        raise AttendNetsError(f"unknown runtime {', '.join(unknown) or '(none)'}; choose from {', '.join(RUNTIMES)}")
    if not counts or min(counts) < 1 or rounds < 1 or batch < 0 or img_size < 8 or num_classes < 1:
        raise AttendNetsError("--threads, --rounds, --num-classes must be >= 1, --img-size >= 8, --batch >= 0")
    if profile_dir is not None and len(counts) > 1:
        raise AttendNetsError("--profile takes one thread count (profiles would overwrite each other)")
    baselines = list(BASELINES if baselines is None else baselines)
    labels = list(dict.fromkeys([*names, *baselines]))
    if not labels:
        raise AttendNetsError("nothing to measure: name a model or checkpoint, or keep the baselines")
    batches = [1] + ([batch] if batch > 1 else [])
    reports = []
    with tempfile.TemporaryDirectory(prefix="attendnets-bench-") as tmp:
        work = Path(tmp)
        models = [load_bench_model(name, img_size, num_classes) for name in labels]
        if len({m.label for m in models}) < len(models):
            raise AttendNetsError("the same model is named twice")
        by_label = {m.label: m for m in models}
        files = _export_all(models, runtimes, img_size, work)
        advance = progress(len(counts) * rounds * len(files) * len(batches)) if progress else (lambda: None)
        for count in counts:
            machine = machine_info()  # its load average, at the start of this count's timing
            with torch_threads(count):
                calls = {key: _runner(by_label[key[0]], key[1], path, count) for key, path in files.items()}
                times = {b: _measure(calls, b, img_size, rounds, advance) for b in batches}
                profiles = {}
                if profile_dir is not None:
                    profiles = _write_profiles(files, Path(profile_dir), count, img_size, work)
            del calls  # the runtimes' sessions and their thread pools, before the next count's
            reports.append({
                "machine": machine,
                "settings": dict(threads=count, img_size=img_size, num_classes=num_classes, batch=batch,
                                 rounds=rounds, batch1_calls_per_visit=TIMED_CALLS, settle_ms=1e3 * SETTLE_S),
                "note": "random weights for named models (latency does not depend on the weights' values); int8 "
                "ranges calibrated on generated images; ratios are measured interleaved in this run",
                "results": speed_table(list(by_label), runtimes, times, batch),
                "profiles": profiles,
                "raw_ms": {f"{label}|{rt}|{b}": v for b, per in times.items() for (label, rt), v in per.items()},
            })
    return reports[0] if isinstance(threads, int) else reports


def _write_profiles(files: dict[tuple[str, str], Path | None], out: Path, threads: int, img_size: int,
                    work: Path) -> dict[str, Any]:
    """Each ORT file's :func:`op_type_profile`, written to ``out/<label>-<runtime>.json`` and returned by
    ``"label|runtime"``."""
    out.mkdir(parents=True, exist_ok=True)
    profiles = {}
    for (label, runtime), path in files.items():
        if runtime.startswith("ort"):
            summary = op_type_profile(path, threads, img_size, work)
            profiles[f"{label}|{runtime}"] = summary
            file = out / f"{label.replace('/', '_').replace(' ', '_')}-{runtime}.json"
            atomic_write_text(file, json.dumps({"model": label, "runtime": runtime, **summary}, indent=1) + "\n")
    return profiles


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
