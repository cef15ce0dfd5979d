"""Export a trained network as a model bundle, at the end of training or from a checkpoint.

``deepultrasound export CHECKPOINT -o BUNDLE`` rebuilds the task from the config stored in the
checkpoint, loads the weights (EMA copies where the task keeps them) and writes the bundle; its
manifest's metrics are the losses and validation figures the run had logged by the checkpoint's step
(from ``metrics.csv`` beside the ``checkpoints`` folder, when it is there).
"""

from __future__ import annotations

import argparse
import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from deepultrasound.training.checkpoint import load_checkpoint
from deepultrasound.training.config import TrainConfig
from deepultrasound.training.logs import METRICS_CSV, logged_figures
from deepultrasound.training.task import ComponentExport, Task, get_task

PARITY_ATOL = 1e-3
"""Largest difference between a shipped graph's outputs and the eager network's that an export accepts."""


def export_bundle(
    task: Task, networks: Mapping[str, nn.Module], config: TrainConfig, metrics: Mapping[str, float], directory: Path
) -> Path:
    """Write the bundle of ``task.export_spec()`` (its main network and components) to ``directory``
    (atomically), with the graphs of ``config.bundle.formats`` checked for parity; returns its path."""
    from deepultrasound.runtime.bundle import save_bundle
    from deepultrasound.runtime.parity import verify_parity

    spec = task.export_spec()

    def exported(entry: ComponentExport) -> nn.Module:
        return copy.deepcopy(networks[entry.network]).cpu().float().eval()  # bundles hold float32 graphs

    return save_bundle(
        directory,
        exported(spec),
        name=config.bundle.name or config.task,
        version=config.bundle.version,
        task=spec.task or config.task,
        description=config.bundle.description or spec.description,
        architecture=spec.architecture,
        architecture_module=spec.architecture_module,
        architecture_args=spec.architecture_args,
        example_inputs=spec.example_inputs,
        input_names=list(spec.input_names),
        output_names=list(spec.output_names),
        states=list(spec.states),
        input_ranges=spec.input_ranges,
        input_values=spec.input_values,
        weights_dtype=spec.weights_dtype,
        components={name: (exported(component), component) for name, component in spec.components.items()},
        inference=spec.inference,
        normalisation=spec.normalisation,
        training_config=config.model_dump(mode="json"),
        metrics=dict(metrics),
        formats=config.bundle.formats,
        dynamic_spatial=spec.dynamic_spatial,
        verify=functools.partial(verify_parity, atol=PARITY_ATOL),
    )


def export_checkpoint(checkpoint: Path, directory: Path) -> Path:
    """Rebuild the task of a training checkpoint and export its bundle to ``directory``, with the figures logged
    by its step in ``OUTPUT/metrics.csv`` when the checkpoint is in ``OUTPUT/checkpoints``."""
    from deepultrasound.training.checkpoint import restore_networks

    state = load_checkpoint(checkpoint)
    config = TrainConfig.model_validate(state["config"])
    task_cls = get_task(config.task)
    task = task_cls(task_cls.parse_args(config.task_args), seed=config.seed)
    torch.manual_seed(config.seed)
    networks = task.build_networks()
    ema = {name: AveragedModel(networks[name], use_buffers=True) for name in task.ema_networks()}
    restore_networks(networks, ema, state)
    exported = ema if config.export_ema else {}
    evaluated = {name: (exported[name].module if name in exported else net) for name, net in networks.items()}
    metrics: dict[str, Any] = {"checkpoint_epoch": int(state["next_epoch"])}
    if "position" in state:
        metrics["checkpoint_step"] = int(state["position"]["step"])
        metrics.update(logged_figures(checkpoint.parent.parent / METRICS_CSV, metrics["checkpoint_step"]))
    return export_bundle(task, evaluated, config, metrics, directory)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a checkpoint written by 'deepultrasound train'")
    parser.add_argument("-o", "--output", type=Path, required=True, help="bundle folder to write")


def run(args: argparse.Namespace) -> int:
    path = export_checkpoint(args.checkpoint, args.output)
    print(f"bundle written to {path}")
    return 0
