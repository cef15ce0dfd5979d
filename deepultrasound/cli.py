"""The ``deepultrasound`` command line.

Subcommands come from the capability registry (:mod:`deepultrasound.capabilities`): each lives
in the engine module that does its work, which provides ``configure(parser)`` (adds its
arguments) and ``run(args) -> int``. Modules are imported only when their subcommand runs, so
``--help`` stays fast and a missing optional dependency of one command never breaks the others.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Mapping

from deepultrasound.capabilities import Provided, capabilities
from deepultrasound.errors import DeepUltrasoundError


def build_parser(commands: Mapping[str, Provided]) -> argparse.ArgumentParser:
    """Parser with every subcommand of ``commands`` listed; arguments are added lazily in :func:`main`."""
    from deepultrasound import __version__

    parser = argparse.ArgumentParser(
        prog="deepultrasound",
        description="Learning-based ultrasound: elastography, echo registration, synthesis, super-resolution.",
    )
    parser.add_argument("--version", action="version", version=f"deepultrasound {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in sorted(commands):
        sub.add_parser(name, help=commands[name].help, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        commands = capabilities().commands
    except DeepUltrasoundError as error:  # e.g. two installed capabilities claim one name
        print(f"deepultrasound: error: {error}", file=sys.stderr)
        return 2
    parser = build_parser(commands)
    known, rest = parser.parse_known_args(argv)
    if known.command is None:
        parser.print_help()
        return 0 if not argv else 2
    command = commands[known.command]
    module = importlib.import_module(command.module)
    sub = argparse.ArgumentParser(prog=f"deepultrasound {known.command}", description=command.help)
    module.configure(sub)
    args = sub.parse_args(rest)
    logging.basicConfig(
        level=logging.DEBUG if known.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not known.verbose:  # the ONNX exporter and scikit-fem log every step at INFO
        for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "skfem"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(module.run(args) or 0)
    except DeepUltrasoundError as error:
        print(f"deepultrasound {known.command}: error: {error}", file=sys.stderr)
        return 2
