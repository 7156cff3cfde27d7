"""Ship trained AttendNets inside the package and write their model cards (issue 18).

For each model, its run of benchmarks/imagenette.py (``runs/imagenette/<model>``: the comparison recipe, on
the machine that trained it) is quantized to 8-bit weights (``attendnets quantize``, post-training, cached in
``<run>-int8``) and written as an 8-bit checkpoint ``attendnets/weights/<model>.imagenette.{safetensors,json}``
whose sidecar records the release: the run's train command and the commit of its record
(docs/results/runs/imagenette/<model>.json), val top-1 in float and at 8 bits, and the classes' names. The
shipped file is then loaded back the way users load it, ``timm.create_model(model, pretrained=True)``, and
evaluated on val: its top-1 must equal the 8-bit top-1.

The model cards ``docs/models/<model>.md`` are generated from docs/results/ship.json (this script's record),
docs/results/deploy.json (latency per runtime, TFLite Micro arena) and the model's complexity; nothing in
them is typed by hand. ``--cards`` rewrites only the cards.

A run's folder stays on the machine that trained it. Where a model's imagenette.py run was trained elsewhere,
``--run MODEL=FOLDER`` ships another recorded run of the same recipe at another seed (a study's, e.g.
``runs/presets/init-torch/attendnet_b-s1``); its card gives that run's train command.

    python benchmarks/ship.py --data ../shared/datasets/imagenette2-224
    python benchmarks/ship.py --models attendnet_b --run attendnet_b=runs/presets/init-torch/attendnet_b-s1
    python benchmarks/ship.py --cards
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, run_context, run_main  # noqa: E402
from imagenette import IMG_SIZE, NUM_CLASSES, comparison_run, run_options  # noqa: E402
from ledger import load, portable, quantize, record_path  # noqa: E402

from attendnets.checkpoint import checkpoint_paths, load_checkpoint, save_checkpoint  # noqa: E402
from attendnets.complexity import profile_model  # noqa: E402
from attendnets.data import resolve_data_dir  # noqa: E402
from attendnets.errors import AttendNetsError  # noqa: E402
from attendnets.evaluate import evaluate_with_meta  # noqa: E402
from attendnets.files import atomic_write_json, atomic_write_text  # noqa: E402
from attendnets.pretrained import TAG, WEIGHTS_DIR  # noqa: E402
from attendnets.runtime import tune_malloc  # noqa: E402

MODELS = ("attendnet_a", "attendnet_b", "attendnet_found_macs", "attendnet_found_latency")
CARDS = ROOT / "docs" / "models"
# Imagenette's classes by WordNet ID (the dataset's own table).
IMAGENETTE_LABELS = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player", "n03000684": "chain saw",
    "n03028079": "church", "n03394916": "French horn", "n03417042": "garbage truck", "n03425413": "gas pump",
    "n03445777": "golf ball", "n03888257": "parachute",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="Imagenette root with train/ and val/ (default: $ATTENDNETS_DATA)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default {','.join(MODELS)})")
    parser.add_argument("--workers", type=int, default=2, help="data loader processes (default 2)")
    parser.add_argument("--cards", action="store_true", help="only rewrite the model cards from the results")
    parser.add_argument("--run", action="append", metavar="MODEL=FOLDER",
                        help="ship MODEL from this recorded run of the comparison recipe at another seed (e.g. "
                             "runs/presets/init-torch/attendnet_b-s1) when its imagenette.py run was trained on "
                             "another machine; repeatable")
    return parser.parse_args()


def trained_run(model: str, chosen: dict[str, Path]) -> tuple[Path, dict[str, Any]]:
    """``(run folder, its record)`` of ``model``'s comparison run (or ``chosen``'s, see
    :func:`imagenette.comparison_run`); refuses a model without both."""
    run = comparison_run(model, chosen)
    recorded = load(run)
    if recorded is None:
        raise AttendNetsError(f"{model} has no recorded run ({record_path(run).relative_to(ROOT)}): "
                              f"run benchmarks/imagenette.py --models {model} first")
    if not (run / "config.json").is_file():
        raise AttendNetsError(f"{run} is not on this machine: ship {model} where its run was trained")
    return run, recorded


def ship(model: str, data: Path, workers: int, chosen: dict[str, Path]) -> dict[str, Any]:
    """Write the shipped checkpoint of ``model``, check it loads through timm, and return its record."""
    import timm

    run, recorded = trained_run(model, chosen)
    int8 = quantize(run, data, workers)
    net, meta = load_checkpoint(int8["checkpoint"])
    release = {"train_command": recorded["train_command"], "commit": recorded["recorded"]["commit"],
               "top1": int8["float_top1"], "int8_top1": int8["int8_top1"],
               "quantize_command": portable(int8["command"], data), "machine": recorded["recorded"]["machine"]}
    labels = {c: IMAGENETTE_LABELS[c] for c in meta["class_names"] if c in IMAGENETTE_LABELS}
    if "ptq" in meta:  # the quantized run, from the project root (as the ledger names it, not by another path to it)
        meta["ptq"] = {**meta["ptq"], "source": os.path.relpath(run, ROOT)}
    path = WEIGHTS_DIR / f"{model}.{TAG}"
    save_checkpoint(path, net, {**meta, "class_labels": labels, "release": release}, int8=True)
    weights, _ = checkpoint_paths(path)
    loaded = timm.create_model(model, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
    check = evaluate_with_meta(loaded, meta, data, workers=workers)
    if abs(check["top1"] - int8["int8_top1"]) > 1e-9:
        raise AttendNetsError(f"{path}: loaded through timm it scores {check['top1']:.2f}%, not {int8['int8_top1']:.2f}%")
    return {"model": model, "file": str(weights.relative_to(ROOT)), "file_kb": weights.stat().st_size / 1024,
            "timm_top1": check["top1"], **release}


def card(record: dict[str, Any], deploy: dict[str, Any]) -> str:
    """The model card of a shipped model, from its ship record, the deployment results and its complexity."""
    name = record["model"]
    model, meta = load_checkpoint(ROOT / record["file"])
    spec = model.spec
    c = profile_model(model, img_size=IMG_SIZE)
    lines = [f"# {name} (trained on Imagenette)", "", f"{spec.description}", "",
             "Generated by `python benchmarks/ship.py --cards` from docs/results/ship.json and docs/results/deploy.json.",
             "", "## Use", "", "```python", "import timm, attendnets",
             f"model = timm.create_model(\"{name}\", pretrained=True).eval()  # offline: the weights are in the package",
             "```", "", f"or `attendnets predict photo.jpg --model {name}`.", "",
             "## What it is not for", "",
             f"It knows only Imagenette's {model.num_classes} classes ({', '.join(meta['class_labels'].values())}) "
             "and names one of them for any image. It was trained on 9,469 images at 128 px: a starting point for "
             "fine-tuning on your own classes (`attendnets train --init` or timm), not a general-purpose "
             "classifier. Imagenette's images come from ImageNet, which permits non-commercial research use only.", "",
             "## Accuracy (Imagenette val, 3,925 images)", "",
             "| weights | top-1 |", "|---|---|",
             f"| float (the run's best checkpoint) | {record['top1']:.2f}% |",
             f"| 8-bit, the shipped file | {record['int8_top1']:.2f}% (loaded through timm: {record['timm_top1']:.2f}%) |",
             "",
             f"Trained with `{record['train_command']}` at commit {record['commit'][:10]}; quantized with "
             f"`{record['quantize_command']}`. File: {record['file']} ({record['file_kb']:.0f} KB).", "",
             f"## Cost at {IMG_SIZE} px, {NUM_CLASSES} classes", "",
             "| parameters | multiply-adds | 8-bit weights | peak int8 activations (batch 1) |", "|---|---|---|---|",
             f"| {c.params:,} | {c.macs / 1e6:.1f}M | {c.weight_bytes_int8 / 1024:.0f} KB | "
             f"{c.peak_activation_bytes_int8 / 1024:.0f} KB |", "", *latency_lines(name, deploy), "", "## Architecture", "",
             "| # | block | fields |", "|---|---|---|"]
    for i, block in enumerate(spec.to_dict()["blocks"]):
        kind = block.pop("type")
        lines.append(f"| {i} | {kind} | {', '.join(f'{k}={v}' for k, v in block.items())} |")
    lines.append(f"| head | fully-connected | hidden={spec.head.hidden}, classes={model.num_classes} |")
    return "\n".join(lines) + "\n"


def latency_lines(name: str, deploy: dict[str, Any]) -> list[str]:
    """The deployment results' batch-1 latency of ``name`` in each runtime (224 px, 50 classes, as measured)."""
    measured = deploy.get("measured", {}).get("latency", deploy)  # the report's own machine before it said
    machine = measured["machine"]
    lines = [f"## Latency (batch 1, {machine['cpu']}: {', '.join(machine['cpu_flags'])})", "",
             f"From docs/results/deploy.json (measured at commit {measured['commit'][:10]}), at the paper's 224 px "
             "and 50 classes; ratios to MobileNet-V1 measured interleaved in the same run.", "",
             "| runtime | 1 thread | 2 threads | speed-up vs MobileNet-V1 (1 thread) |", "|---|---|---|---|"]
    rows = {t: {r["runtime"]: r for r in deploy["latency"][t]["results"] if r["model"] == name} for t in ("1t", "2t")}
    for runtime, one in rows["1t"].items():
        two = rows["2t"].get(runtime)
        lines.append(f"| {runtime} | {one['batch1_median_ms']:.2f} ms | "
                     f"{'-' if two is None else format(two['batch1_median_ms'], '.2f') + ' ms'} | "
                     f"{one['batch1_speedup_vs_mobilenet_v1']:.2f}x |")
    micro = [m for m in deploy.get("micro", []) if m["model"] == name]
    if micro:
        lines += ["", f"TFLite Micro (int8, {micro[0]['img_size']} px): arena {micro[0]['arena_bytes'] / 1024:.0f} KB, "
                  f"model file {micro[0]['file_kb']:.0f} KB."]
    if not rows["1t"]:
        lines += ["Not measured in docs/results/deploy.json: run benchmarks/deploy.py with this model."]
    return lines


def main() -> int:
    tune_malloc()
    args = parse_args()
    models = args.models.split(",")
    record_path = RESULTS / "ship.json"
    if not args.cards:
        data = resolve_data_dir(args.data)
        earlier = json.loads(record_path.read_text())["models"] if record_path.is_file() else {}
        chosen = run_options(args.run, models)
        records = {**earlier, **{m: ship(m, data, args.workers, chosen) for m in models}}
        atomic_write_json(record_path, {**run_context(), "models": records})
    records = json.loads(record_path.read_text())["models"]
    deploy = json.loads((RESULTS / "deploy.json").read_text())
    CARDS.mkdir(parents=True, exist_ok=True)
    for record in records.values():
        atomic_write_text(CARDS / f"{record['model']}.md", card(record, deploy))
        print(f"wrote {CARDS / (record['model'] + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
