"""``deepultrasound bundle PATH``: verify a model bundle, summarise it, optionally check parity."""

from __future__ import annotations

import argparse

from deepultrasound.runtime.backends import BACKENDS, available_backends
from deepultrasound.runtime.bundle import Bundle, load_bundle
from deepultrasound.runtime.manifest import NetworkSpec, TensorSpec
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


def _describe_network(name: str, spec: NetworkSpec) -> list[str]:
    """Lines of one network: architecture, tensors (dtype, what they may hold), states, weights dtype."""

    def domain(tensor: TensorSpec) -> str:
        if tensor.values is not None:
            return f"  values {tensor.values}"
        return f"  range {list(tensor.range)}" if tensor.range is not None else ""

    return [
        f"network {name}: {spec.architecture} from {spec.architecture_module} {spec.architecture_args}"
        f"  (weights {spec.weights_dtype})",
        *[f"  input   {t.name:<14} {tuple(t.shape)} {t.dtype}{domain(t)}" for t in spec.inputs],
        *[f"  output  {t.name:<14} {tuple(t.shape)} {t.dtype}" for t in spec.outputs],
        *[f"  state   {s.input} -> {s.output}  {s.channels} channels at 1/{s.stride} resolution" for s in spec.states],
        f"  example shapes: {', '.join(str(tuple(shape)) for shape in spec.example_shapes)}",
    ]


def summary(bundle: Bundle) -> str:
    """Human-readable description of a verified bundle."""
    m = bundle.manifest
    lines = [
        f"{m.name} {m.version}  task: {m.task}  format {m.format_version}  ({bundle.path})",
        *([m.description] if m.description else []),
        *[line for name in m.network_names() for line in _describe_network(name, m.network(name))],
        *([f"inference: {m.inference.model_dump(mode='json')}"] if m.inference else []),
        *([f"normalisation: {m.normalisation}"] if m.normalisation else []),
        *([f"metrics: {m.metrics}"] if m.metrics else []),
        f"files (sha256 verified): {', '.join(m.files)}",
        f"created {m.created_at} with deepultrasound {m.created_with}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Verify and summarise the bundle; 1 when parity was asked for and fails for any network, else 0."""
    bundle = load_bundle(args.path)
    print(summary(bundle))
    if not args.parity:
        return 0
    ok = True
    for network in bundle.manifest.network_names():
        backends = args.backends or available_backends(bundle, network)
        if len(backends) < 2:
            print(f"parity of network {network}: only {', '.join(backends)} shipped, nothing to compare")
            continue
        report = check_parity(
            bundle, backends=backends, atol=args.atol, steps=args.steps, device=args.device, network=network
        )
        print(report)
        ok = ok and report.ok
    return 0 if ok else 1
