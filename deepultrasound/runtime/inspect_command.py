"""``deepultrasound bundle PATH``: verify a model bundle, summarise it, optionally check parity."""

from __future__ import annotations

import argparse

from deepultrasound.runtime.backends import BACKENDS, available_backends
from deepultrasound.runtime.bundle import Bundle, load_bundle
from deepultrasound.runtime.parity import check_parity


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``deepultrasound bundle``."""
    parser.add_argument("path", help="bundle folder (or its manifest.json)")
    parser.add_argument("--parity", action="store_true", help="run every backend on random inputs and compare")
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=BACKENDS,
        default=None,
        help="backends compared by --parity; torch is the reference when given, else the first "
        "(default: every backend the bundle was exported for)",
    )
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed absolute difference (default: 1e-4)")
    parser.add_argument("--steps", type=int, default=3, help="consecutive steps for recurrent models (default: 3)")
    parser.add_argument(
        "--device", default="cpu", help="device of the parity run: auto, cpu, cuda, cuda:N, mps (default: cpu)"
    )


def summary(bundle: Bundle) -> str:
    """Human-readable description of a verified bundle."""
    m = bundle.manifest
    lines = [
        f"{m.name} {m.version}  task: {m.task}  ({bundle.path})",
        *([m.description] if m.description else []),
        f"architecture: {m.architecture} from {m.architecture_module} {m.architecture_args}",
        *[f"input   {spec.name:<14} {tuple(spec.shape)} {spec.dtype}" for spec in m.inputs],
        *[f"output  {spec.name:<14} {tuple(spec.shape)} {spec.dtype}" for spec in m.outputs],
        *[f"state   {s.input} -> {s.output}  {s.channels} channels at 1/{s.stride} resolution" for s in m.states],
        f"example shapes: {', '.join(str(tuple(shape)) for shape in m.example_shapes)}",
        *([f"normalisation: {m.normalisation}"] if m.normalisation else []),
        *([f"metrics: {m.metrics}"] if m.metrics else []),
        f"files (sha256 verified): {', '.join(m.files)}",
        f"created {m.created_at} with deepultrasound {m.created_with}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Verify and summarise the bundle; 1 when parity was asked for and fails, else 0."""
    bundle = load_bundle(args.path)
    print(summary(bundle))
    if not args.parity:
        return 0
    backends = args.backends or available_backends(bundle)
    report = check_parity(bundle, backends=backends, atol=args.atol, steps=args.steps, device=args.device)
    print(report)
    return 0 if report.ok else 1
