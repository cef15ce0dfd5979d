"""Command-line options of how a DeepUSE network runs, shared by the commands that run one.

``add_inference_options(parser)`` adds ``--backend --device --threads --half --no-cuda-graphs
--refine/--no-refine``; ``inference_options(args)`` gives them back as the keyword arguments of
:class:`~deepultrasound.elastography.estimators.StrainEstimator` (and of
:class:`~deepultrasound.elastography.live.LiveStrainProcessor`), and ``live_inference_options(args)``
as live processing runs them: refinement off unless ``--refine`` (one network pass per frame).
"""

from __future__ import annotations

import argparse
from typing import Any

from deepultrasound.runtime.options import add_backend_options


def add_inference_options(parser: argparse.ArgumentParser, default_device: str = "auto") -> None:
    """Add ``--backend --device --threads --half --no-cuda-graphs --refine/--no-refine`` to ``parser``."""
    add_backend_options(parser, default_device)
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default: library default)")
    parser.add_argument("--half", action="store_true", help="run the network in float16 (torch backend, for GPUs)")
    parser.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        default=None,
        help="launch every kernel of a pair from Python instead of replaying CUDA graphs (default: graphs on CUDA)",
    )
    parser.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refine each frame's displacement once against the reference frame, a second network pass "
        "(default: on offline for frame-to-frame models, off live)",
    )


def inference_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`add_inference_options` values as ``StrainEstimator`` keyword arguments."""
    return {
        "backend": args.backend,
        "device": args.device,
        "threads": args.threads,
        "half": args.half,
        "cuda_graphs": args.cuda_graphs,
        "refine": args.refine,
    }


def live_inference_options(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`inference_options` for live processing: refinement only with ``--refine``."""
    return {**inference_options(args), "refine": bool(args.refine)}
