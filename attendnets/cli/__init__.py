"""``attendnets <verb>``: one command line for every task.

Each verb lives in its own module of this package, which defines ``HELP`` (one line), ``DESCRIPTION``
(what it does, with examples), ``add_arguments(parser)`` and ``run(args) -> int``. Building the parser
imports every verb module, so a verb module imports torch, timm, numpy and the modules that use them inside
``run()`` only: ``attendnets --help`` then answers at once.

An :class:`~attendnets.errors.AttendNetsError` or a failed file operation (``OSError``) ends the command
with exit code 2 and one line on stderr, ``attendnets VERB: error: ...``, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from attendnets.errors import AttendNetsError
from attendnets.runtime import tune_malloc

VERBS = ("demo", "models", "profile", "train", "eval", "export", "predict", "attention", "quantize", "bench", "explore")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line, as every other error of the command line (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="attendnets",
        description="Tiny 8-bit image-recognition networks (AttendNets): build, profile, train, ship.",
        epilog="Run 'attendnets VERB --help' for the options and examples of each verb.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERBS:
        module = importlib.import_module(f"attendnets.cli.{name}")
        sub = verbs.add_parser(
            name,
            help=module.HELP,
            description=module.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def _version() -> str:
    from attendnets import __version__

    return __version__


def os_error(err: OSError) -> str:
    """``PATH: reason`` (``PATH -> OTHER: reason`` for a move) of a failed file operation, in one line."""
    if err.filename is None:
        return " ".join(str(err).split())
    paths = str(err.filename) + ("" if err.filename2 is None else f" -> {err.filename2}")
    return f"{paths}: {err.strerror or type(err).__name__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_malloc()  # the one process-wide setting: up to 2x faster PyTorch on CPU (attendnets.runtime)
    try:
        return args.run(args)
    except AttendNetsError as err:
        print(f"attendnets {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # reading or writing a file: the path and the system's reason, in one line
        print(f"attendnets {args.verb}: error: {os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"attendnets {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
