"""``attendnets explore``'s options: numbers are checked while parsing, a given value is never swapped for a
default, and the verb's module loads without torch, timm or optuna (the command line imports it for --help)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from attendnets.cli import build_parser, main
from attendnets.cli.explore import config_from_args, pilot_config_from_args
from attendnets.errors import AttendNetsError
from attendnets.search import settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--trials", "0"], "argument --trials: must be an integer >= 1, got 0"),
        (["run", "--rungs", "0"], "argument --rungs: must be an integer >= 1, got 0"),
        (["run", "--eta", "1"], "argument --eta: must be an integer >= 2, got 1"),
        (["run", "--epochs", "-1"], "argument --epochs: must be an integer >= 1, got -1"),
        (["run", "--give-up-after", "0"], "argument --give-up-after: must be an integer >= 1"),
        (["run", "--min-top1", "101"], "argument --min-top1: must be a number in (0, 100], got '101'"),
        (["run", "--train-threads", "0"], "argument --train-threads: must be an integer >= 1"),
        (["run", "--seed", "-1"], "argument --seed: must be an integer in [0, 4294967295], got -1"),
        (["run", "--max-macs", "0"], "argument --max-macs: must be a count > 0 such as 150M, 200k or 1500000, got '0'"),
        (["run", "--max-params", "lots"], "argument --max-params: must be a count > 0"),
        (["run", "--max-weight-kb", "0"], "argument --max-weight-kb: must be a number > 0, got '0'"),
        (["run", "--max-latency-ratio", "nan"], "argument --max-latency-ratio: must be a number > 0, got 'nan'"),
        (["run", "--img-size", "0"], "argument --img-size: must be an integer >= 1, got 0"),
        (["run", "--threads", "0"], "argument --threads: must be an integer >= 1, got 0"),
        (["run", "--img-size-search", "4"], "argument --img-size-search: must be an integer >= 8, got 4"),
        (["run", "--images-per-class", "0"], "argument --images-per-class: must be an integer >= 1, got 0"),
        (["run", "--holdout-per-class", "0"], "argument --holdout-per-class: must be an integer >= 1, got 0"),
        (["run", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got 0"),
        (["run", "--lr", "0"], "argument --lr: must be a number > 0, got '0'"),
        (["pilot", "--designs", "2"], "argument --designs: must be an integer >= 3, got 2"),
        (["pilot", "--low-epochs", "0"], "argument --low-epochs: must be an integer >= 1, got 0"),
        (["pilot", "--high-epochs", "1"], "argument --high-epochs: must be an integer >= 2, got 1"),
        (["pilot", "--top-k", "0"], "argument --top-k: must be an integer >= 1, got 0"),
        (["pilot", "--batch-size", "x"], "argument --batch-size: must be an integer >= 1, got 'x'"),
    ],
)
def test_numeric_options_are_checked_while_parsing(argv: list[str], message: str, tmp_path, capsys) -> None:
    action, *options = argv
    name = ["--name", "x"] if action == "run" else []
    with pytest.raises(SystemExit) as done:
        main(["explore", action, *name, "--output", str(tmp_path / "out"), *options])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def _args(*argv: str):
    return build_parser().parse_args(["explore", *argv])


def test_a_given_zero_is_not_replaced_by_the_default() -> None:
    """The command line refuses 0 while parsing; behind it, a 0 reaches the checks instead of becoming 12 trials."""
    args = _args("run", "--name", "x", "--synthetic")
    assert config_from_args(args).trials == 12 and config_from_args(args).fidelity.epochs == 3
    for option, value, message in (("trials", 0, "--trials must be at least 1"), ("lr", 0.0, "--lr must be positive"),
                                   ("epochs", 0, "--epochs must be positive")):
        with pytest.raises(AttendNetsError, match=message):
            config_from_args(argparse.Namespace(**{**vars(args), option: value}))
    pilot = _args("pilot", "--synthetic")
    pilot.high_epochs = 0
    with pytest.raises(AttendNetsError, match=r"--low-epochs \(3\) must be at least 1 and below --high-epochs \(0\)"):
        pilot_config_from_args(pilot)


def test_explore_loads_without_torch_timm_or_optuna() -> None:
    code = ("import sys, attendnets.cli.explore; "
            "print(sorted(m for m in ('torch', 'timm', 'optuna', 'rich') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_help_names_the_real_defaults(capsys) -> None:
    from attendnets.search.requirements import COST_LABELS

    assert tuple(COST_LABELS) == settings.COSTS
    with pytest.raises(SystemExit):
        main(["explore", "run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    fidelity = settings.Fidelity()
    for phrase in (f"(default {fidelity.img_size}; synthetic 32)", f"(default {fidelity.images_per_class}; synthetic",
                   f"(default {fidelity.holdout_per_class}; synthetic", f"default {fidelity.batch_size}",
                   f"epochs at rung 0 (default {fidelity.epochs})", f"(default {fidelity.lr}; synthetic 0.01)"):
        assert phrase in text, phrase
