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
  they are moved to the device, put in eval mode, never optimised, never DDP-wrapped, and reach
  both the training and the validation step (``ctx.frozen``);
- diffusion training with an EMA copy of the weights: :meth:`Task.ema_networks`; the trainer
  updates the copies (parameters and buffers, e.g. BatchNorm statistics) after every step,
  validates and exports them (``export_ema``);
- sample images during training: :meth:`Task.validation_step` may return named images
  (:class:`ValidationOutput`), written to TensorBoard and ``OUTPUT/images/<step>/``;
- staged (multi-scale) training: :class:`~deepultrasound.training.config.StageConfig` entries; at
  each stage the trainer calls :meth:`Task.build_datasets` with the stage's merged task arguments,
  and the networks carry their weights over.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn
from torch.utils.data import Dataset

from deepultrasound.errors import ConfigError
from deepultrasound.runtime.bundle import NetworkExport
from deepultrasound.runtime.inference_specs import InferenceSpec


class TaskArgs(BaseModel):
    """Base for a task's validated arguments (``task_args`` in the config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, kw_only=True)
class ComponentExport(NetworkExport):
    """A network exported into a bundle (:class:`~deepultrasound.runtime.bundle.NetworkExport`
    fields); ``network`` names its entry of :meth:`Task.build_networks`."""

    network: str


@dataclass(frozen=True, kw_only=True)
class ExportSpec(ComponentExport):
    """How to export trained networks as a model bundle (see :func:`deepultrasound.runtime.save_bundle`).

    The fields of :class:`ComponentExport` describe the main network: ``network`` names an entry
    of :meth:`Task.build_networks`; ``architecture`` and ``architecture_args`` must rebuild it
    through the runtime's architecture registry; ``dynamic_spatial=False`` for networks that
    accept only the example's spatial size; ``input_ranges``/``input_values`` state what integer
    inputs (label maps, timesteps) hold; ``weights_dtype="float16"`` stores weights half the size.
    ``components`` adds the further networks inference needs, by the name they get in the bundle
    (e.g. ``{"vae": ComponentExport(network="vae", ...)}``). ``task`` is what the bundle does, as
    model selectors filter it (e.g. ``"elastography"``); default: the training task's name.
    ``inference`` is the manifest's inference section (:mod:`deepultrasound.runtime.inference_specs`).
    """

    normalisation: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    task: str | None = None
    inference: InferenceSpec | None = None
    components: Mapping[str, ComponentExport] = field(default_factory=dict)


class StepContext:
    """What :meth:`Task.training_step` may use. Built by the trainer, one per run.

    Attributes:
        networks: trainable networks by name, DDP-wrapped under torchrun (call them for forward passes).
        frozen: frozen auxiliary networks by name (eval mode, no gradients).
        device: the training device.
        step: global steps done before this one (0-based index of the step); ``epoch`` is the
            global epoch (0-based) and ``stage`` the current stage's name.
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
        self.step = 0
        self.epoch = 0
        self.stage = ""

    def optimize(self, loss: torch.Tensor, optimizer: str = "main") -> None:
        """Update the networks of ``optimizer`` from ``loss`` (a scalar).

        With ``accumulate_steps: 1`` (the default) each call is one update: zero the optimiser's
        gradients, back-propagate, clip, step; call it once per chunk for truncated
        back-propagation, once per optimiser for adversarial pairs. With ``accumulate_steps: k``
        the trainer runs the training step on ``k`` micro-batches of each batch; each call then
        adds the gradient of ``loss / k`` to the optimiser's own parameters, and the optimiser
        steps once after the last micro-batch; at most one call per optimiser per micro-batch.
        See :mod:`deepultrasound.training.optimisation`.
        """
        if loss.ndim != 0:
            raise ValueError(f"loss must be a scalar tensor, got shape {tuple(loss.shape)}")
        self._optimize_hook(loss, optimizer)


class ValidationContext(Mapping[str, nn.Module]):
    """What :meth:`Task.validation_step` may use. Indexing it gives the evaluation networks, so a
    step written as ``validation_step(self, batch, networks)`` reads ``networks["name"]``.

    Attributes:
        networks: evaluation copies by name (EMA where the task keeps one and ``export_ema``), unwrapped, eval mode.
        frozen: frozen auxiliary networks by name (eval mode).
        device: the validation device.
        step: global steps done; ``epoch`` the global epoch (0-based).
        batch_index: index of the batch in this process's share of the validation set (e.g.
            return images for batch 0 only).
    """

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        frozen: Mapping[str, nn.Module],
        device: torch.device,
        step: int,
        epoch: int,
    ) -> None:
        self.networks = networks
        self.frozen = frozen
        self.device = device
        self.step = step
        self.epoch = epoch
        self.batch_index = 0

    def __getitem__(self, name: str) -> nn.Module:
        return self.networks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.networks)

    def __len__(self) -> int:
        return len(self.networks)


@dataclass
class ValidationOutput:
    """What :meth:`Task.validation_step` returns when it has images as well as metrics.

    ``metrics``: per-sample values ``(B,)`` by name. ``images``: sample images by file name
    (letters, digits, ``_``, ``.``, ``-``), each ``(H, W)`` grey or ``(3, H, W)`` RGB, float in
    [0, 1], tensor or array. Images of the main process's batches are written; a name already
    given by an earlier batch of the same validation is ignored.
    """

    metrics: dict[str, torch.Tensor]
    images: dict[str, Any] = field(default_factory=dict)


class Task(abc.ABC):
    """A trainable capability. Subclasses set ``name`` and ``Args`` and register with :func:`register_task`.

    ``args`` holds the top-level ``task_args`` when the networks are built and the bundle is
    exported; during each stage the trainer replaces it with that stage's merged arguments, so
    overrides of loss weights reach :meth:`training_step` as overrides of data reach
    :meth:`build_datasets`.
    """

    name: ClassVar[str]
    Args: ClassVar[type[TaskArgs]] = TaskArgs
    inference_args: ClassVar[frozenset[str]] = frozenset()
    """Top-level ``task_args`` that set only the exported bundle's inference defaults or what validation shows,
    not what is trained: a run may resume with them changed."""

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
    def validation_step(self, batch: Any, ctx: ValidationContext) -> dict[str, torch.Tensor] | ValidationOutput:
        """Metrics for one batch as per-sample values ``(B,)``; the trainer averages them over the set.

        A sample where a metric is undefined gives NaN there: the mean is over the defined ones
        (NaN when none is). Return a :class:`ValidationOutput` to add sample images.

        ``ctx`` maps names to the evaluation networks (EMA copies where the task keeps one),
        unwrapped, in eval mode, and holds the frozen networks (``ctx.frozen``); it runs under
        ``torch.no_grad`` (and autocast with ``amp``).
        """

    # -- export ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def export_spec(self) -> ExportSpec:
        """Which network to export as the run's model bundle, and how."""


_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available to ``deepultrasound train`` under ``cls.name``.

    A capability lists the module holding the decorated class in its ``TASKS`` (see
    :mod:`deepultrasound.capabilities`), so the trainer imports it when a config names the task.
    """
    if cls.name in _TASKS and _TASKS[cls.name] is not cls:
        raise ValueError(f"a different task is already registered as '{cls.name}'")
    _TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> type[Task]:
    """The task class registered as ``name``; raises :class:`ConfigError` listing the known tasks.

    Tasks declared by a capability are imported on first lookup.
    """
    import importlib

    from deepultrasound.capabilities import capabilities

    declared = capabilities().tasks
    if name not in _TASKS and name in declared:
        importlib.import_module(declared[name].module)
        if name not in _TASKS:
            raise ConfigError(
                f"task '{name}' is declared by {declared[name].provider} but importing {declared[name].module} "
                "did not register it (decorate its class with @register_task)"
            )
    if name not in _TASKS:
        raise ConfigError(f"unknown task '{name}'; known tasks: {', '.join(sorted({*_TASKS, *declared}))}")
    return _TASKS[name]
