"""``deepultrasound import-deepuse CHECKPOINT -o BUNDLE``: an original DeepUSE checkpoint -> a model bundle.

The checkpoint (``<epoch>_net_ReUSENet.pth`` or ``<epoch>_net_USENet.pth`` of the original code)
is read as a plain tensor state dict (nothing is unpickled), loaded into :class:`USENet` /
:class:`ReUSENet` and saved with :func:`save_deepuse_bundle`: weights, TorchScript and ONNX
graphs, ReUSENet's ten recurrent states declared explicitly, the original input
normalisation (:data:`~deepultrasound.elastography.frames.DEEPUSE_NORMALISATION`) and an
``inference`` section of (reference, k) pairs without pre-alignment, as the original code ran them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from deepultrasound.elastography.bundles import EXAMPLE_SIZE, save_deepuse_bundle
from deepultrasound.elastography.import_deepuse import import_deepuse_checkpoint
from deepultrasound.elastography.layers import NORM_KINDS, NormKind
from deepultrasound.elastography.networks import NETWORK_STRIDE
from deepultrasound.runtime.bundle import EXPORT_FORMATS


def import_deepuse_bundle(
    checkpoint: str | os.PathLike[str],
    directory: str | os.PathLike[str],
    *,
    name: str | None = None,
    version: str = "1",
    norm: NormKind = "instance",
    example_size: tuple[int, int] = EXAMPLE_SIZE,
    formats: Sequence[str] = EXPORT_FORMATS,
) -> Path:
    """Convert an original DeepUSE checkpoint into a bundle at ``directory``; returns the folder.

    Args:
        checkpoint: ``<epoch>_net_ReUSENet.pth`` / ``<epoch>_net_USENet.pth`` (plain state dict).
        directory: bundle folder to write.
        name: manifest name (default: the architecture, e.g. "reusenet").
        version: manifest version.
        norm: "instance" (default; identical output for one frame pair at a time) or "batch"
            (the original layer), see :class:`USENet`.
        example_size: (H, W) of the export example.
        formats: exported graphs besides the weights.

    Raises:
        FileFormatError: the checkpoint is missing or not a DeepUSE state dict.
        BundleError: the export failed.
    """
    model, config = import_deepuse_checkpoint(checkpoint, norm=norm)
    architecture = str(config["architecture"])
    return save_deepuse_bundle(
        model,
        directory,
        name=name or architecture,
        version=version,
        description=f"{type(model).__name__} (initial channels {model.initial_channels}, {norm} norm) "
        f"imported from the original DeepUSE checkpoint {Path(checkpoint).name}",
        example_size=example_size,
        formats=formats,
        pairs="first",  # the original networks take (reference, k) pairs directly, without pre-alignment
        training_config={"source": "original DeepUSE checkpoint", "checkpoint": Path(checkpoint).name},
    )


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``deepultrasound import-deepuse``."""
    parser.add_argument("checkpoint", type=Path, help="original checkpoint, e.g. 300_net_ReUSENet.pth")
    parser.add_argument("-o", "--output", type=Path, required=True, help="bundle folder to write")
    parser.add_argument("--name", default=None, help="model name in the manifest (default: reusenet or usenet)")
    parser.add_argument("--version", default="1", help="model version in the manifest (default: 1)")
    parser.add_argument(
        "--norm",
        choices=NORM_KINDS,
        default="instance",
        help="normalisation layers: instance (identical output per frame pair, exports to ONNX) or batch "
        "(the original layer) (default: instance)",
    )
    parser.add_argument(
        "--example-size",
        type=int,
        nargs=2,
        default=EXAMPLE_SIZE,
        metavar=("H", "W"),
        help=f"frame size of the export example, multiples of {NETWORK_STRIDE} (default: 1600 128)",
    )
    parser.add_argument(
        "--formats",
        nargs="*",
        choices=EXPORT_FORMATS,
        default=list(EXPORT_FORMATS),
        help="graphs exported besides the weights; ONNX export takes 10 to 20 seconds (default: torchscript onnx)",
    )


def run(args: argparse.Namespace) -> int:
    """Import the checkpoint and report the written bundle."""
    path = import_deepuse_bundle(
        args.checkpoint,
        args.output,
        name=args.name,
        version=args.version,
        norm=args.norm,
        example_size=tuple(args.example_size),
        formats=args.formats,
    )
    print(f"bundle written to {path}; use it with: deepultrasound strain RF.mha -o STRAIN.mha --model {path}")
    return 0
