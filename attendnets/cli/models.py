"""``attendnets models``: what can be built, and from where."""

from __future__ import annotations

import argparse
import json

from attendnets.registry import BASELINES, PAPER_PRESETS, PRESETS, REPORTED_ONLY, TABLE1, load_preset

HELP = "list the models that can be built (presets, baselines, reported-only)"
DESCRIPTION = """\
List our presets (reconstructed AttendNets), the baselines of the paper's Table 1 (timm's
MobileNets) and the networks known only by their reported figures. Any timm model name and any
.json/.yaml spec file can also be given wherever a MODEL is asked for.

examples:
  attendnets models
  attendnets models --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def model_list() -> list[dict]:
    """One record per known model name."""
    records = []
    for name in PRESETS:
        spec = load_preset(name)
        kind = "preset" if name in PAPER_PRESETS else "found preset"
        records.append({"model": name, "kind": kind, "builds": True, "description": spec.description})
    for name, timm_name in BASELINES.items():
        records.append(
            {"model": name, "kind": "baseline", "builds": True, "description": f"timm's {timm_name}"}
        )
    for name in REPORTED_ONLY:
        records.append(
            {
                "model": name,
                "kind": "reported only",
                "builds": False,
                "description": "no public architecture; Table 1 figures only",
            }
        )
    for record in records:
        reported = TABLE1.get(record["model"])
        record["table1"] = vars(reported) if reported else None
    return records


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    records = model_list()
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    table = Table(title="Models (also: any timm model name, any .json/.yaml spec file)")
    for col in ("model", "kind", "Table 1: top-1 / params / MACs", "description"):
        table.add_column(col)
    for r in records:
        t1 = r["table1"]
        reported = f"{t1['top1']}% / {t1['params'] / 1e3:,.0f}K / {t1['macs'] / 1e6:.1f}M" if t1 else "-"
        table.add_row(r["model"], r["kind"], reported, r["description"])
    Console(width=200).print(table)
    return 0
