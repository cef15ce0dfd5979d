"""``deepultrasound train CONFIG``: train a task from a YAML/JSON config and export its bundle.

Runs unchanged under ``torchrun --nproc_per_node N`` (DDP). The last stdout line is a JSON
object with the final figures (main process only).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="training config (.yaml, .yml or .json)")
    parser.add_argument(
        "-o", "--output", type=Path, default=None, help="output folder (default: the config's output_dir)"
    )
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (default: the config's device)")
    parser.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start from scratch even if the output folder holds a checkpoint (default: resume)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="override: train a single stage of this many epochs")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from deepultrasound.training.config import load_config
    from deepultrasound.training.distributed import launched_by_torchrun
    from deepultrasound.training.trainer import Trainer

    overrides = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.epochs is not None:
        overrides["stages"] = [{"epochs": args.epochs}]
    config = load_config(args.config, overrides)
    result = Trainer(
        config, output_dir=args.output, resume=args.resume, progress=args.progress, device=args.device
    ).run()
    if not launched_by_torchrun() or os.environ.get("RANK") == "0":
        summary = {
            "output_dir": str(result.output_dir),
            "epochs": result.epochs_done,
            "resumed_from_epoch": result.resumed_from_epoch,
            **result.train_losses,
            **result.validation,
            "bundle": str(result.bundle) if result.bundle else None,
        }
        print(json.dumps(summary))
    return 0
