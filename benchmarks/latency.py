"""Forward latency on CPU in PyTorch eager: AttendNet-A/B against MobileNet-V1/V2 at 224x224, 50 classes.

Every model runs in one process with the same thread count. Timing is interleaved: each round visits
every (model, layout) in a shuffled order, and before each visit the process sleeps 60 ms (thread pools
keep spinning ~10 ms after a call) and makes untimed warm-up calls, so that no model inherits another's
spinning threads or cold caches. Medians and 90th percentiles over all rounds are reported, with ratios
against MobileNet-V1 measured in the same run. An operator profile (torch.profiler) of each model at
batch 1 shows where the time goes.

    python benchmarks/latency.py                       # writes docs/results/latency.{json,md}
    python benchmarks/latency.py --rounds 5 --out /tmp/quick
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, run_context, run_main  # noqa: E402

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from attendnets.files import atomic_write_json, atomic_write_text  # noqa: E402
from attendnets.registry import create_model  # noqa: E402
from attendnets.runtime import tune_malloc  # noqa: E402

MODELS = ("attendnet_a", "attendnet_b", "mobilenet_v1", "mobilenet_v2")
REFERENCE = "mobilenet_v1"
LAYOUT_KEY = "channels_last"  # the layout of the operator profiles: the faster one for every model here


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=50)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--layouts", nargs="+", default=["channels_last", "nchw"], choices=["channels_last", "nchw"])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (batch 1 makes 5 timed calls a visit)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latency", help="output path without suffix")
    return parser.parse_args()


def _prepare(name: str, layout: str, num_classes: int) -> torch.nn.Module:
    model = create_model(name, num_classes=num_classes).eval()
    return model.to(memory_format=torch.channels_last) if layout == "channels_last" else model


def _input(batch: int, size: int, layout: str) -> torch.Tensor:
    x = torch.randn(batch, 3, size, size)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    """Raw per-call times in ms, keyed ``model|layout|batch``."""
    variants = [(m, layout) for m in args.models for layout in args.layouts]
    models = {v: _prepare(v[0], v[1], args.num_classes) for v in variants}
    times: dict[str, list[float]] = defaultdict(list)
    rng = random.Random(0)
    with torch.inference_mode():
        for batch in args.batch_sizes:
            inputs = {layout: _input(batch, args.img_size, layout) for layout in args.layouts}
            calls = 5 if batch == 1 else 1
            for _ in range(args.rounds):
                rng.shuffle(variants)
                for name, layout in variants:
                    model, x = models[(name, layout)], inputs[layout]
                    time.sleep(0.06)
                    for _ in range(3 if batch == 1 else 1):
                        model(x)
                    for _ in range(calls):
                        start = time.perf_counter()
                        model(x)
                        times[f"{name}|{layout}|{batch}"].append(1e3 * (time.perf_counter() - start))
    return dict(times)


def _conv_kind(input_shape: list[int], weight_shape: list[int]) -> str:
    """Name a convolution by its shape: what a runtime's kernels care about."""
    in_chs, (out_chs, per_group, kh, kw) = input_shape[1], weight_shape
    groups = in_chs // per_group
    if kh * kw == 1:
        return "pointwise 1x1"
    if groups == 1:
        return "full spatial conv"
    if per_group == 1:
        return "depthwise" + (" (expansion, multiplier > 1)" if out_chs > in_chs else "")
    return f"grouped ({per_group} channels per group)"


def operator_profile(name: str, layout: str, args: argparse.Namespace, top: int = 12) -> dict:
    """Where one forward pass at batch 1 spends its time (torch.profiler, 20 calls).

    ``ops``: self CPU time per ATen op, as shares of the total. ``convs``: inclusive time of each
    convolution kind with its multiply-adds, so that slow kinds show as low GMAC/s.
    """
    model, x = _prepare(name, layout, args.num_classes), _input(1, args.img_size, layout)
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
            for _ in range(20):
                model(x)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    ops = [
        {"op": e.key, "calls_per_forward": e.count // 20, "ms_per_forward": e.self_cpu_time_total / 20 / 1e3,
         "share": e.self_cpu_time_total / total}
        for e in rows[:top]
    ]
    convs: dict[str, dict] = defaultdict(lambda: {"calls": 0, "ms": 0.0, "macs": 0})
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key != "aten::conv2d":
            continue
        kind = convs[_conv_kind(*e.input_shapes[:2])]
        kind["calls"] += e.count // 20
        kind["ms"] += e.cpu_time_total / 20 / 1e3
        kind["macs"] += e.flops // 2 // 20  # the profiler counts 2 flops per multiply-add
    for kind in convs.values():
        kind["gmacs_per_s"] = kind["macs"] / kind["ms"] / 1e6 if kind["ms"] else 0.0
    return {"ops": ops, "convs": dict(sorted(convs.items(), key=lambda kv: -kv[1]["ms"])), "total_ms": total / 20 / 1e3}


def summarise(times: dict[str, list[float]]) -> dict[str, dict]:
    summary = {}
    for key, values in times.items():
        ordered = sorted(values)
        summary[key] = {
            "median_ms": statistics.median(ordered),
            "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            "calls": len(ordered),
        }
    for key, stats in summary.items():
        name, layout, batch = key.split("|")
        ref = summary.get(f"{REFERENCE}|{layout}|{batch}")
        if ref:
            stats["speedup_vs_" + REFERENCE] = ref["median_ms"] / stats["median_ms"]
        stats["images_per_s"] = int(batch) / stats["median_ms"] * 1e3
    return summary


def write_markdown(result: dict, path: Path) -> None:
    ctx, summary = result["context"], result["summary"]
    lines = [
        "# Forward latency in PyTorch eager (CPU)",
        "",
        f"Command: `{ctx['command']}`  ",
        f"Commit: `{ctx['commit']}`{' (with uncommitted changes)' if ctx['dirty'] else ''}, {ctx['date']}  ",
        f"Machine: {ctx['machine']['cpu']}, {ctx['machine']['cores']} cores, torch {ctx['machine']['torch']}, "
        f"{result['threads']} threads, malloc thresholds {ctx['machine']['malloc_env']}, "
        f"load average at start {tuple(round(x, 2) for x in ctx['machine']['load_average_at_start'])}  ",
        f"Input {result['img_size']}x{result['img_size']}, {result['num_classes']} classes, random weights, "
        f"{result['rounds']} interleaved rounds. Raw per-call times are in `{path.with_suffix('.json').name}`.",
        "",
        f"| model | layout | batch | median ms | p90 ms | images/s | speed-up vs {REFERENCE} |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, s in sorted(summary.items(), key=lambda kv: (int(kv[0].split("|")[2]), kv[0])):
        name, layout, batch = key.split("|")
        lines.append(
            f"| {name} | {layout} | {batch} | {s['median_ms']:.2f} | {s['p90_ms']:.2f} | {s['images_per_s']:.0f} | "
            f"{s.get('speedup_vs_' + REFERENCE, float('nan')):.2f}x |"
        )
    lines += ["", "## Where the time goes (batch 1, torch.profiler, 20 calls)", ""]
    for key, prof in result["operator_profile"].items():
        lines += [f"**{key}** ({prof['total_ms']:.1f} ms of ATen self time per forward under the profiler)", "",
                  "| convolution kind | calls | ms / forward | MMACs | GMAC/s |", "|---|---|---|---|---|"]
        lines += [f"| {kind} | {c['calls']} | {c['ms']:.2f} | {c['macs'] / 1e6:.1f} | {c['gmacs_per_s']:.1f} |"
                  for kind, c in prof["convs"].items()]
        lines += ["", "| op (self time) | calls | ms / forward | share |", "|---|---|---|---|"]
        lines += [f"| {o['op']} | {o['calls_per_forward']} | {o['ms_per_forward']:.3f} | {100 * o['share']:.1f}% |"
                  for o in prof["ops"]]
        lines.append("")
    lines += ["## Findings", ""] + [f"- {f}" for f in result["findings"]]
    atomic_write_text(path.with_suffix(".md"), "\n".join(lines) + "\n")


def findings(summary: dict, profiles: dict) -> list[str]:
    """Plain statements derived from the measured numbers (no hand-written claims)."""
    out = []
    for key, s in sorted(summary.items()):
        name, layout, batch = key.split("|")
        if name == "attendnet_b" and "speedup_vs_" + REFERENCE in s:
            speed = s["speedup_vs_" + REFERENCE]
            out.append(
                f"attendnet_b, {layout}, batch {batch}: {s['median_ms']:.2f} ms, {speed:.2f}x the speed of "
                f"{REFERENCE} ({'faster' if speed > 1 else 'slower'})."
            )
    ours, ref = profiles.get(f"attendnet_b|{LAYOUT_KEY}"), profiles.get(f"{REFERENCE}|{LAYOUT_KEY}")
    if ours and ref:
        def conv_totals(prof: dict) -> tuple[float, int]:
            return sum(c["ms"] for c in prof["convs"].values()), sum(c["macs"] for c in prof["convs"].values())

        (our_ms, our_macs), (ref_ms, ref_macs) = conv_totals(ours), conv_totals(ref)
        out.append(
            f"Under the profiler, attendnet_b's convolutions do {ref_macs / our_macs:.1f}x fewer MACs than "
            f"{REFERENCE}'s but take only {ref_ms / our_ms:.1f}x less time ({our_ms:.1f} vs {ref_ms:.1f} ms): they run "
            f"at {our_macs / our_ms / 1e6:.1f} GMAC/s against {ref_macs / ref_ms / 1e6:.1f}. Everything else "
            f"(normalisation, activations, the attention condensers' pooling, unpooling, sigmoid and multiplies, "
            f"residual adds, allocation) takes {ours['total_ms'] - our_ms:.1f} ms against {ref['total_ms'] - ref_ms:.1f} ms."
        )
    for key, prof in profiles.items():
        ops = prof["ops"]
        conv = sum(o["share"] for o in ops if "conv" in o["op"] or o["op"] in ("aten::addmm", "aten::mm"))
        slowest = min(prof["convs"].items(), key=lambda kv: kv[1]["gmacs_per_s"])
        out.append(
            f"{key}: convolutions take {100 * conv:.0f}% of self CPU time; the rest goes to "
            + ", ".join(f"{o['op'].removeprefix('aten::')} {100 * o['share']:.0f}%" for o in ops if "conv" not in o["op"])
            + f". Slowest convolution kind: {slowest[0]} at {slowest[1]['gmacs_per_s']:.1f} GMAC/s "
            f"({slowest[1]['ms']:.2f} ms for {slowest[1]['macs'] / 1e6:.1f}M MACs)."
        )
    return out


def main() -> None:
    tune_malloc()
    args = parse_args()
    torch.set_num_threads(args.threads)
    context = run_context()
    times = measure(args)
    summary = summarise(times)
    profiles = {f"{m}|{LAYOUT_KEY}": operator_profile(m, LAYOUT_KEY, args) for m in args.models}
    result = {
        "context": context,
        "threads": args.threads,
        "img_size": args.img_size,
        "num_classes": args.num_classes,
        "rounds": args.rounds,
        "summary": summary,
        "operator_profile": profiles,
        "findings": findings(summary, profiles),
        "raw_ms": times,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out.with_suffix(".json"), result)
    write_markdown(result, args.out)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    sys.exit(run_main(main))
