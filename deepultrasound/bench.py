"""``deepultrasound bench <suite> [suite options]``: measured figures, the last stdout line one JSON object.

Suites come from the capability registry (``BENCH_SUITES``, see :mod:`deepultrasound.capabilities`).
A suite module provides ``HELP`` (one line), ``configure(parser)`` (its options) and
``run(args) -> dict`` (prints a readable report and returns its figures, JSON-serialisable, None
where a figure is not available; ``args.command`` holds the command line, for suites that record
it). This dispatcher prints the figures as one JSON line after everything else, so scripts read
the last line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex

from deepultrasound.capabilities import capabilities


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the suite name; the suite's own options follow it (``deepultrasound bench SUITE --help``)."""
    parser.add_argument("suite", choices=sorted(capabilities().bench_suites), help="benchmark suite")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="options of the suite")


def run(args: argparse.Namespace) -> int:
    """Run the suite and print its figures as the last stdout line."""
    module = importlib.import_module(capabilities().bench_suites[args.suite].module)
    parser = argparse.ArgumentParser(prog=f"deepultrasound bench {args.suite}", description=module.HELP)
    module.configure(parser)
    options = parser.parse_args(args.options)
    options.command = shlex.join(["deepultrasound", "bench", args.suite, *args.options])
    figures = module.run(options)
    print(json.dumps({"suite": args.suite, **figures}, allow_nan=False), flush=True)
    return 0
