"""Command-line options shared by the commands that run a bundle's network: ``--backend`` and ``--device``."""

from __future__ import annotations

import argparse

from deepultrasound.runtime.backends import AUTO_BACKEND, BACKEND_CHOICES


def add_backend_options(parser: argparse.ArgumentParser, default_device: str = "auto") -> None:
    """Add ``--backend`` (default auto: ONNX Runtime on the CPU when the bundle has a graph, else torch) and
    ``--device`` to ``parser``; their values go to :func:`~deepultrasound.runtime.create_predictor`."""
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=AUTO_BACKEND,
        help="inference backend (default: auto, ONNX Runtime on the CPU when the bundle has a graph, else torch)",
    )
    parser.add_argument(
        "--device", default=default_device, help=f"auto, cpu, cuda, cuda:N or mps (default: {default_device})"
    )
