"""The ``deepultrasound`` command line.

Each subcommand lives in the engine module that does its work; that module provides
``configure(parser)`` (adds its arguments) and ``run(args) -> int``; its one-line help is in
:data:`COMMANDS`.
Modules are imported only when their subcommand runs, so ``--help`` stays fast and a
missing optional dependency of one command never breaks the others.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from deepultrasound.errors import DeepUltrasoundError

#: subcommand -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("deepultrasound.demo", "run the main job on bundled defaults and write an output folder"),
    "train": ("deepultrasound.training.command", "train a model from a YAML/JSON config and export its bundle"),
    "export": ("deepultrasound.training.export", "export a training checkpoint to a model bundle"),
    "bundle": ("deepultrasound.runtime.inspect_command", "verify a model bundle and check parity between its backends"),
    "strain": (
        "deepultrasound.elastography.strain_command",
        "RF sequence file -> axial strain sequence in percent (DeepUSE or block matching)",
    ),
    "import-deepuse": (
        "deepultrasound.elastography.import_command",
        "convert an original DeepUSE checkpoint to a bundle",
    ),
    "scanner": (
        "deepultrasound.streaming.scanner",
        "stream RF frames over OpenIGTLink like a PLUS server (file loop or simulated phantom)",
    ),
    "stream": (
        "deepultrasound.streaming.command",
        "live strain: RF over OpenIGTLink in, Strain and BMode images served out",
    ),
    "bench": ("deepultrasound.bench", "run a benchmark suite; the last stdout line is one JSON object"),
}


def build_parser() -> argparse.ArgumentParser:
    """Parser with every subcommand registered; arguments are added lazily in :func:`main`."""
    from deepultrasound import __version__

    parser = argparse.ArgumentParser(
        prog="deepultrasound",
        description="Learning-based ultrasound: elastography, echo registration, synthesis, super-resolution.",
    )
    parser.add_argument("--version", action="version", version=f"deepultrasound {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known, rest = parser.parse_known_args(argv)
    if known.command is None:
        parser.print_help()
        return 0 if not argv else 2
    module_name, help_text = COMMANDS[known.command]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"deepultrasound {known.command}", description=help_text)
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
