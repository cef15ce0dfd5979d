"""The task interface: what a capability implements so the trainer can train and export it.

The trainer owns the loop, devices, DDP, checkpoints, logs and the final bundle. A task owns the
science: networks, data, losses and what gets exported. The interface covers every kind of
training the capabilities need:

- one network, one optimiser (the default :meth:`Task.optimizer_networks`);
- recurrent sequence training with truncated back-propagation: :meth:`Task.training_step` calls
  :meth:`StepContext.optimize` once per chunk and detaches its state between chunks;
- adversarial training (two networks, two optimisers): :meth:`Task.optimizer_networks` maps
  ``{"generator": [...], "discriminator": [...]}`` and the step optimises each in turn;
- frozen auxiliary networks (e.g. a pre-trained shape VAE): :meth:`Task.build_frozen_networks`;
  they are moved to the device, put in eval mode, never optimised, never DDP-wrapped;
- diffusion training with an EMA copy of the weights: :meth:`Task.ema_networks`; the trainer
  updates the copies after every step, validates and exports them;
- staged (multi-scale) training: :class:`~deepultrasound.training.config.StageConfig` entries; at
  each stage the trainer calls :meth:`Task.build_datasets` with the stage's merged task arguments,
  and the networks carry their weights over.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn
from torch.utils.data import Dataset

from deepultrasound.errors import ConfigError


class TaskArgs(BaseModel):
    """Base for a task's validated arguments (``task_args`` in the config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class ExportSpec:
    """How to export one trained network as a model bundle (see :func:`deepultrasound.runtime.save_bundle`).

    ``network`` names an entry of :meth:`Task.build_networks`; ``architecture`` and
    ``architecture_args`` must rebuild it through the runtime's architecture registry.
    ``dynamic_spatial=False`` for networks that accept only the example's spatial size.
    ``task`` is what the bundle does, as model selectors filter it (e.g. ``"elastography"``);
    default: the training task's name.
    """

    network: str
    architecture: str
    architecture_module: str
    architecture_args: dict[str, Any]
    example_inputs: tuple[torch.Tensor, ...]
    input_names: Sequence[str]
    output_names: Sequence[str]
    states: Sequence[Any] = ()
    normalisation: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    dynamic_spatial: bool = True
    task: str | None = None


class StepContext:
    """What :meth:`Task.training_step` may use. Built by the trainer, one per run.

    Attributes:
        networks: trainable networks by name, DDP-wrapped under torchrun (call them for forward passes).
        frozen: frozen auxiliary networks by name (eval mode, no gradients).
        device: the training device.
        epoch: global epoch (0-based); ``stage`` is the current stage's name.
    """

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        frozen: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        device: torch.device,
        optimize_hook: Callable[[torch.Tensor, str], None],
    ) -> None:
        self.networks = networks
        self.frozen = frozen
        self.optimizers = optimizers
        self.device = device
        self._optimize_hook = optimize_hook
        self.epoch = 0
        self.stage = ""

    def optimize(self, loss: torch.Tensor, optimizer: str = "main") -> None:
        """Zero the optimiser's gradients, back-propagate ``loss`` (a scalar), clip, step."""
        if loss.ndim != 0:
            raise ValueError(f"loss must be a scalar tensor, got shape {tuple(loss.shape)}")
        self._optimize_hook(loss, optimizer)


class Task(abc.ABC):
    """A trainable capability. Subclasses set ``name`` and ``Args`` and register with :func:`register_task`.

    ``args`` holds the top-level ``task_args`` when the networks are built and the bundle is
    exported; during each stage the trainer replaces it with that stage's merged arguments, so
    overrides of loss weights reach :meth:`training_step` as overrides of data reach
    :meth:`build_datasets`.
    """

    name: ClassVar[str]
    Args: ClassVar[type[TaskArgs]] = TaskArgs

    def __init__(self, args: TaskArgs, seed: int) -> None:
        self.args = args
        self.seed = seed

    @classmethod
    def parse_args(cls, data: Mapping[str, Any]) -> TaskArgs:
        """Validate ``task_args``; raises :class:`ConfigError` naming unknown or bad keys."""
        try:
            return cls.Args.model_validate(dict(data))
        except ValidationError as error:
            problems = []
            for item in error.errors():
                where = ".".join(str(part) for part in item["loc"])
                kind = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
                problems.append(f"task_args.{where}: {kind}")
            raise ConfigError(f"invalid task_args for task '{cls.name}': " + "; ".join(problems)) from None

    # -- what to train ---------------------------------------------------------------------------
    @abc.abstractmethod
    def build_networks(self) -> dict[str, nn.Module]:
        """Trainable networks by name, freshly initialised (the trainer seeds the RNG first)."""

    def build_frozen_networks(self) -> dict[str, nn.Module]:
        """Frozen auxiliary networks by name (e.g. loaded from a bundle). Default: none."""
        return {}

    def optimizer_networks(self, network_names: Sequence[str]) -> dict[str, list[str]]:
        """Optimiser name -> names of the networks it updates. Default: one ``main`` optimiser for all."""
        return {"main": list(network_names)}

    def ema_networks(self) -> list[str]:
        """Networks that get an exponential-moving-average copy (validated and exported). Default: none."""
        return []

    # -- data ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def build_datasets(self, args: TaskArgs) -> tuple[Dataset, Dataset | None]:
        """(training, validation) datasets for a stage whose merged task arguments are ``args``.

        Samples must be a deterministic function of their index (and the task seed), so that a
        run gives the same data on one process or several, and after a resume.
        """

    # -- steps -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def training_step(self, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Run one training step, calling ``ctx.optimize`` for each loss; return scalar losses to log."""

    @abc.abstractmethod
    def validation_step(self, batch: Any, networks: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
        """Metrics for one batch as per-sample values ``(B,)``; the trainer averages them over the set.

        A sample where a metric is undefined gives NaN there: the mean is over the defined ones
        (NaN when none is).

        ``networks`` are the evaluation copies (EMA where the task keeps one), unwrapped, in eval mode.
        """

    # -- export ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def export_spec(self) -> ExportSpec:
        """Which network to export as the run's model bundle, and how."""


_TASKS: dict[str, type[Task]] = {}

#: modules that register the built-in tasks, imported on first lookup
_BUILTIN_TASK_MODULES = ("deepultrasound.training.tasks.translation", "deepultrasound.elastography.training_task")


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available to ``deepultrasound train`` under ``cls.name``."""
    if cls.name in _TASKS and _TASKS[cls.name] is not cls:
        raise ValueError(f"a different task is already registered as '{cls.name}'")
    _TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> type[Task]:
    """The task class registered as ``name``; raises :class:`ConfigError` listing the known tasks."""
    import importlib

    for module in _BUILTIN_TASK_MODULES:
        importlib.import_module(module)
    if name not in _TASKS:
        raise ConfigError(f"unknown task '{name}'; known tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]
