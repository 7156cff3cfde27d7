"""``attendnets profile``: Table 1's complexity columns for our models and the baselines, side by side."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from attendnets.cli.options import POSITIVE, integer
from attendnets.errors import AttendNetsError
from attendnets.registry import BASELINES, PAPER_PRESETS, REPORTED_ONLY, TABLE1, create_model, is_attendnet, is_spec_path

if TYPE_CHECKING:
    from attendnets.complexity import Complexity

HELP = "parameters, multiply-adds, weight and activation memory of models (Table 1 of the paper)"
DESCRIPTION = """\
Count what a model costs at batch 1: parameters, multiply-adds of conv and fully-connected layers
(the paper's Table 1 convention), the other operations (pooling, resampling, normalisation,
element-wise, data movement), weight memory at 32 and 8 bits, peak activation memory (the
largest total of tensors alive at once), and the tensor arena TFLite Micro needs for the int8 model
(what must fit a microcontroller's SRAM: its tensors as its memory planner lays them out, plus its
bookkeeping; `attendnets export --int8 --micro` measures it). KB = 1024 bytes.

With no MODEL, profiles attendnet_a, attendnet_b, MobileNet-V1 and MobileNet-V2 and shows AttoNet-A/B
with the paper's reported figures. At 224 px and 50 classes (the paper's setting) the Table 1 figures
and our deviation from them are shown too. Ratios are against MobileNet-V1; the weight-memory ratio
compares MobileNet-V1 at 32 bits with each model at 8 bits, as the paper does.

examples:
  attendnets profile
  attendnets profile attendnet_b --img-size 128 --num-classes 10
  attendnets profile --spec my_design.json mobilenet_v2 --json
  attendnets profile attendnet_b --per-block
  attendnets profile resnet18          # any timm model
"""

DEFAULT_MODELS = (*PAPER_PRESETS, *BASELINES, *REPORTED_ONLY)
REFERENCE = "mobilenet_v1"
IMG_SIZE = integer(8)  # the smallest input every model reduces to at least one pixel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models", nargs="*", metavar="MODEL", help="preset, baseline, timm model name or spec file (default: Table 1)"
    )
    parser.add_argument("--spec", action="append", default=[], metavar="FILE", help="a spec file (repeatable)")
    parser.add_argument("--img-size", type=IMG_SIZE, default=224, help="square input size in pixels, >= 8 (default 224)")
    parser.add_argument("--num-classes", type=POSITIVE, default=50, help="classifier outputs (default 50, ImageNet50)")
    parser.add_argument("--per-block", action="store_true", help="also print MACs and other ops of every block")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


@dataclass
class Row:
    """One model's line: measured complexity, or only the paper's figures for reported-only models."""

    name: str
    complexity: Complexity | None

    @property
    def params(self) -> int:
        return self.complexity.params if self.complexity else TABLE1[self.name].params

    @property
    def macs(self) -> int:
        return self.complexity.macs if self.complexity else TABLE1[self.name].macs


def profile_rows(names: list[str], img_size: int, num_classes: int) -> list[Row]:
    """Profile each named model (reported-only models keep the paper's figures)."""
    from attendnets.export.forms import profile_for_micro

    rows = []
    for name in names:
        if name in REPORTED_ONLY:
            rows.append(Row(name, None))
            continue
        model = create_model(name, num_classes=num_classes)
        rows.append(Row(name, profile_for_micro(model, img_size)))
    return rows


def _row_dict(row: Row, reference: Row | None, paper_setting: bool) -> dict:
    out: dict = {"model": row.name, "source": "measured" if row.complexity else "reported (Table 1)"}
    if row.complexity:
        out.update(row.complexity.to_dict())
    else:
        out.update(params=row.params, macs=row.macs, weight_bytes_fp32=4 * row.params)
    if paper_setting and row.name in TABLE1:
        reported = TABLE1[row.name]
        out["table1"] = {"top1": reported.top1, "params": reported.params, "macs": reported.macs}
        if row.complexity:
            out["table1"]["params_deviation"] = row.params / reported.params - 1
            out["table1"]["macs_deviation"] = row.macs / reported.macs - 1
    if reference is not None:
        # The paper's convention: AttendNets stored at 8 bits, every other network at 32 bits.
        bits = 8 if is_attendnet(row.name) else 32
        out["weight_bits"] = bits
        out["vs_" + REFERENCE] = {
            "fewer_params": reference.params / row.params,
            "fewer_macs": reference.macs / row.macs,
            "lower_weight_memory": 4 * reference.params / (row.params * bits // 8),
        }
    return out


def _kb(n: int) -> str:
    return f"{n / 1024:,.0f}"


def _print_table(records: list[dict], img_size: int, num_classes: int, paper_setting: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Complexity at {img_size}x{img_size}, {num_classes} classes, batch 1")
    columns = ["model", "params", "MACs", "other ops", "weights KB\n32-bit", "weights KB\n8-bit", "peak act. KB\n8-bit",
               "TFLite Micro\narena KB"]
    if paper_setting:
        columns += ["Table 1\nparams / MACs", "Δ vs\nTable 1", "Table 1\ntop-1"]
    columns += [f"vs {REFERENCE}:\nparams / MACs / w. mem"]
    for col in columns:
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=col == "model")
    for r in records:
        measured = r["source"] == "measured"
        cells = [
            r["model"] + ("" if measured else " (reported)"),
            f"{r['params'] / 1e3:,.0f}K",
            f"{r['macs'] / 1e6:,.1f}M",
            f"{r['other_ops_total'] / 1e6:,.1f}M" if measured else "-",
            _kb(r["weight_bytes_fp32"]),
            _kb(r["params"]),
            _kb(r["peak_activation_bytes_int8"]) if measured else "-",
            _kb(r["micro_arena_bytes"]) if measured else "-",
        ]
        if paper_setting:
            t1 = r.get("table1")
            cells.append(f"{t1['params'] / 1e3:,.0f}K / {t1['macs'] / 1e6:,.1f}M" if t1 else "-")
            cells.append(
                f"{100 * t1['params_deviation']:+.1f}% / {100 * t1['macs_deviation']:+.1f}%"
                if t1 and "params_deviation" in t1
                else "-"
            )
            cells.append(f"{t1['top1']:.1f}%" if t1 else "-")
        ratios = r.get("vs_" + REFERENCE)
        cells.append(
            f"{ratios['fewer_params']:.2f}x / {ratios['fewer_macs']:.2f}x / {ratios['lower_weight_memory']:.1f}x"
            if ratios
            else "-"
        )
        table.add_row(*cells)
    console = Console(width=200)
    console.print(table)
    console.print(
        "Weights at 8 bits count 1 byte per parameter (the paper's convention). Ratio columns: how many times "
        f"fewer than {REFERENCE}; weight memory compares {REFERENCE} at 32 bits with AttendNets at 8 bits "
        "(other networks at 32 bits), as in the paper. AttoNet figures are the paper's: no public architecture. "
        "Peak activation: the tensors alive at once with BN and activations fused and element-wise ops in place; "
        "TFLite Micro arena: the int8 model's tensors as that runtime holds them (element-wise ops write new tensors, "
        "explicit PAD copies count) placed by its greedy memory planner, plus its bookkeeping."
    )


def _print_blocks(row: Row) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{row.name}: per block")
    for col in ("block", "MACs", "other ops"):
        table.add_column(col, justify="left" if col == "block" else "right")
    for block, counts in row.complexity.per_block.items():
        table.add_row(block, f"{counts['macs'] / 1e6:,.2f}M", f"{counts['other_ops'] / 1e6:,.2f}M")
    Console(width=200).print(table)


def report(names: list[str], img_size: int, num_classes: int, as_json: bool = False, per_block: bool = False) -> None:
    """Profile ``names`` and print the comparison table (or JSON)."""
    paper_setting = img_size == 224 and num_classes == 50
    rows = profile_rows(names, img_size, num_classes)
    reference = next((r for r in rows if r.name == REFERENCE), None)
    if reference is None:
        reference = profile_rows([REFERENCE], img_size, num_classes)[0]
    records = [_row_dict(r, reference, paper_setting) for r in rows]
    if as_json:
        print(json.dumps({"img_size": img_size, "num_classes": num_classes, "models": records}, indent=2))
        return
    _print_table(records, img_size, num_classes, paper_setting)
    if per_block:
        for row in rows:
            if row.complexity:
                _print_blocks(row)


def run(args: argparse.Namespace) -> int:
    for name in args.spec:
        if not is_spec_path(name):
            raise AttendNetsError(f"--spec expects a .json/.yaml file, got {name!r}")
    names = list(args.models) + list(args.spec) or list(DEFAULT_MODELS)
    report(names, args.img_size, args.num_classes, args.json, args.per_block)
    return 0
