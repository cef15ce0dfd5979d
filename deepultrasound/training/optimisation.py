"""How a training step updates the networks: optimisers, learning-rate schedules, gradient
accumulation and clipping, and the gradient scaler of fp16 mixed precision.

:class:`Optimisation` serves :meth:`StepContext.optimize <deepultrasound.training.task.StepContext.optimize>`.
With ``k = accumulate_steps``:

- ``k == 1``: every call is one update of the named optimiser: zero its gradients, back-propagate,
  clip, step. A task may call it several times per batch (truncated back-propagation: one update
  per chunk) and once per optimiser (adversarial pairs).
- ``k > 1``: the trainer splits each batch into ``k`` micro-batches and runs ``training_step`` on
  each. A call back-propagates ``loss / k`` into the named optimiser's parameters only, so a
  generator loss that passes through the critic leaves the critic's gradients alone; after the
  last micro-batch every optimiser that was called clips and steps once. One update per optimiser
  per batch is then the only meaning a call can have, so a second call of one optimiser within a
  micro-batch is an error.

Schedules advance once per step (global batch). A stage's ``lr_scale`` multiplies the scheduled
rate: the schedulers keep the unscaled rates (``get_last_lr``) and the optimisers run at
``scale`` times them.

EMA copies (``torch.optim.swa_utils.AveragedModel``) update after each step by :func:`ema_update`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    SequentialLR,
    StepLR,
)
from torch.optim.swa_utils import get_ema_multi_avg_fn

from deepultrasound.errors import ConfigError
from deepultrasound.training.config import OptimizerConfig, SchedulerConfig

EMA_WARMUP_OFFSET = 10
"""The warm-up's decay at the n-th update is (1 + n) / (EMA_WARMUP_OFFSET + n), capped by the configured one."""


def ema_decay_at(update: int, decay: float, warmup: bool) -> float:
    """The EMA decay of the ``update``-th averaging (1 = the first after the copy of the initial weights)."""
    return min(decay, (1 + update) / (EMA_WARMUP_OFFSET + update)) if warmup else decay


def ema_update(decay: float, warmup: bool) -> Callable[[list[torch.Tensor], list[torch.Tensor], Any], None]:
    """The ``multi_avg_fn`` of an ``AveragedModel``: EMA with ``decay``, warmed up by :func:`ema_decay_at`.

    ``AveragedModel`` hands it one device and dtype at a time. Integer tensors (step counters, label
    tables) are copied: averaged, they would be rounded down (``0.9 * 3 + 0.1 * 3`` is stored as 2).
    """

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: Any) -> None:
        if not (averaged[0].is_floating_point() or averaged[0].is_complex()):
            for average, value in zip(averaged, current, strict=True):
                average.copy_(value)
            return
        get_ema_multi_avg_fn(ema_decay_at(int(num_averaged), decay, warmup))(averaged, current, num_averaged)

    return update


#: schedules whose length is the rest of the run after the warm-up
DECAYING_SCHEDULES = ("cosine", "linear")


def build_optimizer(settings: OptimizerConfig, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimiser named by ``settings`` over ``parameters``."""
    if settings.name == "adam":
        return torch.optim.Adam(
            parameters, lr=settings.lr, betas=settings.betas, eps=settings.eps, weight_decay=settings.weight_decay
        )
    if settings.name == "adamw":
        return torch.optim.AdamW(
            parameters, lr=settings.lr, betas=settings.betas, eps=settings.eps, weight_decay=settings.weight_decay
        )
    return torch.optim.SGD(parameters, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)


def build_scheduler(settings: SchedulerConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> LRScheduler:
    """The schedule of ``settings`` over a run of ``total_steps`` steps, stepped once per step.

    The rate at step ``s`` (0-based) is ``lr * f(s)``: warm-up ``f`` rises linearly from
    ``warmup_start_scale`` to 1 over ``warmup_steps``; then constant 1, cosine or linear from 1
    to ``min_lr_scale`` over the remaining steps, or ``gamma ** (s // step_size)``.
    """
    decay_steps = total_steps - settings.warmup_steps
    if settings.name in DECAYING_SCHEDULES and decay_steps < 1:
        raise ConfigError(
            f"scheduler warmup_steps {settings.warmup_steps} leaves no step of the run ({total_steps} steps) "
            f"for the {settings.name} decay"
        )
    if settings.name == "cosine":
        base = optimizer.param_groups[0]["lr"]
        schedule: LRScheduler = CosineAnnealingLR(optimizer, T_max=decay_steps, eta_min=base * settings.min_lr_scale)
    elif settings.name == "linear":
        schedule = LinearLR(optimizer, start_factor=1.0, end_factor=settings.min_lr_scale, total_iters=decay_steps)
    elif settings.name == "step":
        schedule = StepLR(optimizer, step_size=settings.step_size, gamma=settings.gamma)
    else:
        schedule = ConstantLR(optimizer, factor=1.0, total_iters=0)
    if settings.warmup_steps == 0:
        return schedule
    warmup = LinearLR(
        optimizer, start_factor=settings.warmup_start_scale, end_factor=1.0, total_iters=settings.warmup_steps
    )
    return SequentialLR(optimizer, [warmup, schedule], milestones=[settings.warmup_steps])


class Optimisation:
    """Every optimiser of a run, its schedule, and the fp16 gradient scaler (see the module docstring).

    Args:
        optimizers: by name.
        parameters: the parameters each optimiser updates (those it clips and back-propagates into).
        schedulers: one per optimiser.
        grad_clip_norm: clip each optimiser's gradient norm to this before it steps (None: no clipping).
        accumulate_steps: micro-batches per step.
        scaler: the gradient scaler of fp16 mixed precision, None otherwise.
        device_type: where backward runs (autocast is turned off around it).
    """

    def __init__(
        self,
        optimizers: Mapping[str, torch.optim.Optimizer],
        parameters: Mapping[str, list[nn.Parameter]],
        schedulers: Mapping[str, LRScheduler],
        grad_clip_norm: float | None,
        accumulate_steps: int,
        scaler: torch.amp.GradScaler | None,
        device_type: str,
    ) -> None:
        self.optimizers = dict(optimizers)
        self.parameters = dict(parameters)
        self.schedulers = dict(schedulers)
        self.grad_clip_norm = grad_clip_norm
        self.accumulate_steps = accumulate_steps
        self.scaler = scaler
        self.device_type = device_type
        self.lr_scale = 1.0
        self._called: set[str] = set()  # optimisers called in this step (accumulation)
        self._called_in_micro_batch: set[str] = set()

    # -- one step ---------------------------------------------------------------------------------
    def begin_step(self) -> None:
        """Start a step: with accumulation, clear every optimiser's gradients."""
        self._called.clear()
        if self.accumulate_steps > 1:
            for optimizer in self.optimizers.values():
                optimizer.zero_grad(set_to_none=True)

    def begin_micro_batch(self) -> None:
        self._called_in_micro_batch.clear()

    def optimize(self, loss: torch.Tensor, name: str) -> None:
        """The ``StepContext.optimize`` hook: one update, or one accumulated share of it."""
        if name not in self.optimizers:
            raise KeyError(f"unknown optimiser '{name}'; the task declared {sorted(self.optimizers)}")
        if self.accumulate_steps == 1:
            self.optimizers[name].zero_grad(set_to_none=True)
            self._backward(loss, None)
            self._step(name)
            if self.scaler is not None:
                self.scaler.update()
            return
        if name in self._called_in_micro_batch:
            raise ConfigError(
                f"accumulate_steps {self.accumulate_steps} needs at most one optimize call per optimiser per "
                f"micro-batch; the task called '{name}' again (as truncated back-propagation does, one update per "
                "chunk); set accumulate_steps: 1"
            )
        self._called_in_micro_batch.add(name)
        self._called.add(name)
        self._backward(loss / self.accumulate_steps, self.parameters[name])

    def finish_step(self) -> None:
        """End a step: step the accumulated optimisers (with accumulation), then every schedule."""
        if self.accumulate_steps > 1 and self._called:
            for name in sorted(self._called):
                self._step(name)
            if self.scaler is not None:
                self.scaler.update()
        for name, scheduler in self.schedulers.items():
            groups = self.optimizers[name].param_groups
            for group, rate in zip(groups, scheduler.get_last_lr()):
                group["lr"] = rate  # the schedules are chainable: they read the unscaled rate
            scheduler.step()
        self.set_lr_scale(self.lr_scale)

    def _backward(self, loss: torch.Tensor, inputs: list[nn.Parameter] | None) -> None:
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        with torch.autocast(self.device_type, enabled=False):
            loss.backward(inputs=inputs)

    def _step(self, name: str) -> None:
        optimizer = self.optimizers[name]
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if self.grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(self.parameters[name], self.grad_clip_norm)
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()

    # -- rates ------------------------------------------------------------------------------------
    def set_lr_scale(self, scale: float) -> None:
        """Run every optimiser at ``scale`` times its scheduled rate (a stage's ``lr_scale``)."""
        self.lr_scale = scale
        for name, scheduler in self.schedulers.items():
            for group, rate in zip(self.optimizers[name].param_groups, scheduler.get_last_lr()):
                group["lr"] = rate * scale

    def learning_rates(self) -> dict[str, float]:
        """``lr/<optimiser>``: the rate each optimiser runs at now (its first parameter group)."""
        return {f"lr/{name}": optimizer.param_groups[0]["lr"] for name, optimizer in self.optimizers.items()}

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()},
            "schedulers": {name: scheduler.state_dict() for name, scheduler in self.schedulers.items()},
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["grad_scaler"])
