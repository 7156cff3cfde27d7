"""``attendnets quantize``: 8-bit weights for a trained checkpoint, post-training or by a short QAT fine-tune."""

from __future__ import annotations

import argparse
import json
import logging

from attendnets.cli.options import NON_NEGATIVE, POSITIVE, number
from attendnets.env import DATA_ENV

HELP = "8-bit weights for a checkpoint: post-training quantization or a short quantization-aware fine-tune"
DESCRIPTION = f"""\
Quantize every conv/linear weight of a trained checkpoint to int8, symmetric per output channel
(scale = max|w| / 127), and report accuracy and weight memory before and after.

Without --qat-epochs: post-training quantization, in seconds. With --qat-epochs N: fine-tune from the
checkpoint for N epochs with fake-quantized weights (straight-through gradients; --qat-activations also
fake-quantizes conv/linear inputs to 8 bits), a cosine schedule without warm-up at --lr (default a tenth
of the training recipe's), the checkpoint's preprocessing; OUTPUT then also holds the run's files
(metrics.jsonl, train_state.pt for --resume, ...).

OUTPUT gets best.safetensors + best.json (a checkpoint with int8-representable weights that eval and
export read like any other), int8.safetensors (the weights as stored at 8 bits: int8 values, fp32
per-channel scales, biases and other parameters in fp32; its tensor bytes are the 8-bit weight memory
reported) and quantize.json. With DATA (--data, else ${DATA_ENV}) the float and 8-bit checkpoints are
evaluated on DATA/val. KB = 1024 bytes.

OUTPUT must be a new or empty folder; quantize refuses one holding anything else (a training run,
another model) before any work. Two exceptions: a post-training run may redo an earlier post-training
quantize of the same checkpoint into its own OUTPUT (replacing only those files), and --resume continues
an interrupted QAT fine-tune in its OUTPUT. A post-training run that fails leaves OUTPUT as it was (its
files are written beside it and moved in at the end); a QAT fine-tune checks the data's classes first.

examples:
  attendnets quantize --checkpoint runs/b --output runs/b-int8 --data ~/imagenette2-224
  attendnets quantize --checkpoint runs/b --output runs/b-qat --data DATA --qat-epochs 2
  attendnets quantize --checkpoint runs/b/best.safetensors --output runs/b-int8 --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", metavar="CKPT", required=True, help="checkpoint or run folder")
    parser.add_argument("--output", metavar="DIR", required=True, help="folder for the 8-bit checkpoint and report")
    parser.add_argument("--data", metavar="DIR", help=f"dataset root with val/ (and train/ for QAT; default: ${DATA_ENV})")
    parser.add_argument("--qat-epochs", type=POSITIVE, metavar="N", help="fine-tune N epochs with quantization-aware training")
    parser.add_argument("--qat-activations", action="store_true", help="QAT: also fake-quantize conv/linear inputs")
    parser.add_argument("--lr", type=number(0, low_open=True),
                        help="QAT peak learning rate (default: a tenth of attendnets train's)")
    parser.add_argument("--batch-size", type=POSITIVE, help="default: attendnets train's")
    parser.add_argument("--workers", type=NON_NEGATIVE, help="data loader processes (default: attendnets train's)")
    parser.add_argument("--resume", action="store_true", help="QAT: continue the fine-tune in OUTPUT")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from attendnets.quantize_workflow import quantize_checkpoint

    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, format="%(message)s")
    result = quantize_checkpoint(
        args.checkpoint, args.output, args.data, args.qat_epochs, args.lr, args.batch_size, args.workers,
        args.qat_activations, args.resume,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    memory = result["weight_memory"]
    how = "post-training" if result["method"] == "post-training" else f"QAT, {result['qat_epochs']} epoch(s)"
    console = Console(width=120)
    console.print(f"{result['model']}: 8-bit weights ({how}) -> {result['output']}")
    table = Table()
    table.add_column("")
    table.add_column("float (fp32)", justify="right")
    table.add_column("8-bit weights", justify="right")
    if "int8_top1" in result:
        table.add_row(f"val top-1 ({result['images']} images)", f"{result['float_top1']:.2f}%", f"{result['int8_top1']:.2f}%")
    table.add_row("weight memory", _kb(memory["float_bytes"]), _kb(memory["quantized_bytes"]))
    table.add_row("  int8 values", "", _kb(memory["int8_values"]))
    table.add_row("  per-channel scales (fp32)", "", _kb(memory["scales"]))
    table.add_row("  biases (fp32)", "", _kb(memory["biases"]))
    table.add_row("  other parameters (fp32)", "", _kb(memory["other"]))
    console.print(table)
    tail = "" if "int8_top1" in result else f"; no val/ to evaluate on (pass --data or set {DATA_ENV})"
    console.print(
        f"{memory['ratio']:.2f}x smaller weights; wrote {result['checkpoint_8bit']}.safetensors (+ .json) and "
        f"{result['int8_file']} ({result['int8_file_bytes']:,} bytes){tail}",
        soft_wrap=True,
    )
    return 0


def _kb(size: int) -> str:
    return f"{size / 1024:,.1f} KB"
