"""The headless trainer: one loop for every task, single-process or under ``torchrun`` (DDP).

Data order is a function of the seed and the epoch only: every process draws the same permutation
(:class:`~torch.utils.data.DistributedSampler`) and takes an interleaved share of each global batch,
so N processes with ``batch_size / N`` each see exactly the batches one process sees with
``batch_size``, and DDP's gradient averaging gives the same update. Each epoch re-seeds the RNG
from (seed, rank, epoch); a checkpoint also keeps every process's RNG states and the batch of the
epoch to continue from, so a run killed at any step resumes exactly where it stopped.

A step is one global batch: one call of the task's training step per micro-batch
(``accumulate_steps``), one update of each optimiser it names, one advance of each schedule, one
update of the EMA copies. Stages last ``epochs`` or ``steps``; validation, checkpoints and log
rows come every N epochs or every N steps (see :mod:`~deepultrasound.training.config`).

Output folder layout::

    OUTPUT/config.yaml                 the validated config of the run
    OUTPUT/checkpoints/checkpoint_last.pt
    OUTPUT/checkpoints/checkpoint_best.pt   with ``best_metric``: the validation with its lowest value
    OUTPUT/checkpoints/checkpoint_step<N>.pt   with ``keep_checkpoint_every_steps``: step N's checkpoint
    OUTPUT/metrics.csv                 one row per log or validation (step, epoch, stage, losses,
                                       validation metrics, lr/<optimiser>, seconds)
    OUTPUT/tensorboard/                TensorBoard event files (scalars and images against the step)
    OUTPUT/images/<step>/<name>.png    sample images returned by the validation at that step
    OUTPUT/bundle/                     the exported model bundle (manifest, weights, TorchScript, ONNX)

The bundle holds the last step, or with ``best_metric`` the best validated one (its validation
figures, ``best_epoch`` and ``best_step`` in the manifest's metrics).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from deepultrasound.errors import ConfigError, DeepUltrasoundError
from deepultrasound.training import distributed
from deepultrasound.training.checkpoint import (
    BEST_CHECKPOINT,
    CHECKPOINT_FORMAT,
    LAST_CHECKPOINT,
    initial_weights,
    load_checkpoint,
    restore_networks,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from deepultrasound.training.config import RESUME_INDEPENDENT, StageConfig, TrainConfig
from deepultrasound.training.logs import TrainingLog, image_array
from deepultrasound.training.optimisation import (
    DECAYING_SCHEDULES,
    Optimisation,
    build_optimizer,
    build_scheduler,
    ema_update,
)
from deepultrasound.training.task import StepContext, Task, TaskArgs, ValidationContext, ValidationOutput, get_task

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingDivergedError(DeepUltrasoundError, RuntimeError):
    """A loss became NaN or infinite: the run stops before a checkpoint keeps the broken weights."""


@dataclass
class TrainResult:
    """What a run produced. Losses are means over the steps since the last log row, across all processes."""

    output_dir: Path
    epochs_done: int
    resumed_from_epoch: int
    steps_done: int = 0
    resumed_from_step: int = 0
    train_losses: dict[str, float] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    bundle: Path | None = None


@dataclass
class Position:
    """Where a run stands after ``step`` global steps: ``stage_step`` steps into stage ``stage``
    (index), ``batch`` batches into epoch ``epoch`` (global, 0-based)."""

    step: int = 0
    stage: int = 0
    stage_step: int = 0
    epoch: int = 0
    batch: int = 0


def to_device(batch: Any, device: torch.device, dtype: torch.dtype = torch.float32) -> Any:
    """Move every tensor in a (nested) batch to ``device``; floating-point tensors become ``dtype``."""
    if isinstance(batch, torch.Tensor):
        if batch.is_floating_point():
            return batch.to(device, dtype, non_blocking=True)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device, dtype) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device, dtype) for value in batch)
    return batch


def split_batch(batch: Any, parts: int) -> list[Any]:
    """A (nested) batch as ``parts`` micro-batches of equal size along the first axis of every tensor and list."""
    if isinstance(batch, torch.Tensor):
        return list(batch.chunk(parts))
    if isinstance(batch, Mapping):
        pieces = {key: split_batch(value, parts) for key, value in batch.items()}
        return [{key: value[i] for key, value in pieces.items()} for i in range(parts)]
    if isinstance(batch, tuple):
        return [type(batch)(items) for items in zip(*(split_batch(value, parts) for value in batch))]
    if isinstance(batch, list):
        size = len(batch) // parts
        return [batch[i * size : (i + 1) * size] for i in range(parts)]
    return [batch] * parts


def _epoch_seed(seed: int, rank: int, epoch: int) -> int:
    return (seed * 1_000_003 + rank * 10_007 + epoch) % (2**63)


class Trainer:
    """Trains ``config.task`` and exports its bundle.

    Args:
        config: the validated run configuration.
        output_dir: where checkpoints, logs and the bundle go (default: ``config.output_dir``).
        resume: continue from ``checkpoints/checkpoint_last.pt`` when it exists (its config must match).
        progress: show progress bars (main process only).
        device: overrides ``config.device`` (e.g. from the ``--device`` flag).
    """

    def __init__(
        self,
        config: TrainConfig,
        output_dir: str | Path | None = None,
        resume: bool = True,
        progress: bool = True,
        device: str | None = None,
    ) -> None:
        self.config = config
        self.output_dir = Path(output_dir) if output_dir is not None else config.resolved_output_dir()
        self.resume = resume
        self.progress = progress
        self.device_request = device or config.device
        self.task_cls = get_task(config.task)
        self.base_args = self.task_cls.parse_args(config.task_args)
        # validate every stage's merged arguments before any work is done
        self.stage_args = [self._merged_args(stage) for stage in config.stages]

    def _merged_args(self, stage: StageConfig) -> TaskArgs:
        return self.task_cls.parse_args({**self.config.task_args, **stage.task_args})

    # -- set-up ----------------------------------------------------------------------------------
    def _check_devices(self, device: torch.device, dist_info: distributed.DistributedInfo) -> None:
        config = self.config
        if config.batch_size % dist_info.world_size:
            raise ConfigError(
                f"batch_size {config.batch_size} must be divisible by the number of processes ({dist_info.world_size})"
            )
        per_process = config.batch_size // dist_info.world_size
        if per_process % config.accumulate_steps:
            raise ConfigError(
                f"each process's batch ({per_process} = batch_size {config.batch_size} / {dist_info.world_size} "
                f"processes) must split evenly into accumulate_steps {config.accumulate_steps} micro-batches"
            )
        if config.amp == "fp16" and device.type != "cuda":
            raise ConfigError(
                f"amp fp16 needs a CUDA device (gradient scaling), not {device}; use amp: bf16 or amp: none here"
            )

    def _build(self, device: torch.device, dist_info: distributed.DistributedInfo, initialise: bool) -> None:
        """Networks (from ``init_from`` where ``initialise``), EMA copies, DDP wrappers, optimisers, step context."""
        torch.manual_seed(self.config.seed)  # identical initial weights in every process
        self.dtype = getattr(torch, self.config.precision)
        self.task: Task = self.task_cls(self.base_args, seed=self.config.seed)
        self.networks = {name: net.to(device, self.dtype) for name, net in self.task.build_networks().items()}
        if initialise:
            self._initialise_networks()
        self.frozen = {}
        for name, net in self.task.build_frozen_networks().items():
            net = net.to(device, self.dtype).eval()
            net.requires_grad_(False)
            self.frozen[name] = net

        # EMA of parameters and buffers (BatchNorm statistics too); integer buffers such as
        # num_batches_tracked are averaged and truncated, which evaluation never reads
        ema_fn = ema_update(self.config.ema_decay, self.config.ema_warmup)
        self.ema = {
            name: AveragedModel(self.networks[name], multi_avg_fn=ema_fn, use_buffers=True)
            for name in self.task.ema_networks()
        }

        if dist_info.enabled:
            device_ids = [device.index] if device.type == "cuda" else None
            self.wrapped = {
                name: DistributedDataParallel(
                    net, device_ids=device_ids, find_unused_parameters=self.config.find_unused_parameters
                )
                if any(p.requires_grad for p in net.parameters())
                else net
                for name, net in self.networks.items()
            }
        else:
            self.wrapped = dict(self.networks)
        self.optimisation = self._build_optimisation(device, dist_info)
        self.ctx = StepContext(
            self.wrapped, self.frozen, self.optimisation.optimizers, device, self.optimisation.optimize
        )

    def _initialise_networks(self) -> None:
        """Load the ``init_from`` weights (before the EMA copies are made, so they start there too)."""
        unknown = sorted(set(self.config.init_from) - set(self.networks))
        if unknown:
            raise ConfigError(
                f"init_from names {unknown}, which task '{self.config.task}' does not build; "
                f"its networks: {sorted(self.networks)}"
            )
        for name, source in self.config.init_from.items():
            try:
                self.networks[name].load_state_dict(initial_weights(Path(source), name), strict=True)
            except RuntimeError as error:
                raise ConfigError(f"init_from: the weights of {source} do not fit network '{name}': {error}") from None

    def _build_optimisation(self, device: torch.device, dist_info: distributed.DistributedInfo) -> Optimisation:
        config = self.config
        groups = self.task.optimizer_networks(list(self.networks))
        missing = sorted(set(groups) - set(config.optimizers))
        unused = sorted(set(config.optimizers) - set(groups))
        if missing or unused:
            raise ConfigError(
                f"task '{config.task}' uses optimisers {sorted(groups)}; "
                + (f"config.optimizers lacks {missing}" if missing else f"config.optimizers has unknown {unused}")
            )
        schedules = {name: config.optimizers[name].scheduler or config.scheduler for name in groups}
        total_steps = (
            self._total_steps(dist_info)
            if any(schedule.name in DECAYING_SCHEDULES for schedule in schedules.values())
            else 0
        )
        optimizers, parameters, schedulers = {}, {}, {}
        for name, net_names in groups.items():
            parameters[name] = [p for n in net_names for p in self.networks[n].parameters() if p.requires_grad]
            optimizers[name] = build_optimizer(config.optimizers[name], parameters[name])
            schedulers[name] = build_scheduler(schedules[name], optimizers[name], total_steps)
        return Optimisation(
            optimizers,
            parameters,
            schedulers,
            grad_clip_norm=config.grad_clip_norm,
            accumulate_steps=config.accumulate_steps,
            scaler=torch.amp.GradScaler(device.type) if config.amp == "fp16" else None,
            device_type=device.type,
        )

    def _total_steps(self, dist_info: distributed.DistributedInfo) -> int:
        """Steps of the whole run; stages counted in epochs build their training data to count its batches."""
        total = 0
        for stage, args in zip(self.config.stages, self.stage_args):
            total += stage.steps or stage.epochs * len(self._loaders(args, dist_info)[1])
        return total

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.config.amp == "none":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=_AMP_DTYPES[self.config.amp])

    def evaluation_networks(self) -> dict[str, nn.Module]:
        """The networks to validate and export: EMA copies where the task keeps one (unless ``export_ema`` is off)."""
        if not self.config.export_ema:
            return dict(self.networks)
        return {name: (self.ema[name].module if name in self.ema else net) for name, net in self.networks.items()}

    # -- checkpoints -----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / "checkpoints" / LAST_CHECKPOINT

    @property
    def best_checkpoint_path(self) -> Path:
        return self.output_dir / "checkpoints" / BEST_CHECKPOINT

    def kept_checkpoint_path(self, step: int) -> Path:
        """Where the checkpoint of ``step`` is kept (``keep_checkpoint_every_steps``)."""
        return self.output_dir / "checkpoints" / f"checkpoint_step{step:06d}.pt"

    def _checkpoint_state(self, position: Position, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(mode="json"),
            "next_epoch": position.epoch,
            "position": asdict(position),
            "best": self.best,
            "networks": {name: net.state_dict() for name, net in self.networks.items()},
            "ema": {name: avg.state_dict() for name, avg in self.ema.items()},
            **self.optimisation.state_dict(),
            "rng": rng_states,
        }

    def _restore(self, state: dict[str, Any], dist_info: distributed.DistributedInfo) -> Position:
        saved = TrainConfig.model_validate(state["config"])
        independent = {**dict.fromkeys(RESUME_INDEPENDENT, True), "task_args": set(self.task.inference_args)}
        if saved.model_dump(exclude=independent) != self.config.model_dump(exclude=independent):
            changeable = sorted(RESUME_INDEPENDENT - {"output_dir"}) + [
                f"task_args.{name}" for name in sorted(self.task.inference_args)
            ]
            raise ConfigError(
                f"{self.checkpoint_path} was written with a different config (beyond {', '.join(changeable)}); "
                "use the same config to resume, or --no-resume to start again (this overwrites the checkpoint)"
            )
        if state["format"] != CHECKPOINT_FORMAT:
            raise ConfigError(
                f"{self.checkpoint_path} is a checkpoint of an earlier format ({state['format']}) that cannot resume; "
                "export it with 'deepultrasound export', or start again with --no-resume"
            )
        restore_networks(self.networks, self.ema, state)
        self.optimisation.load_state_dict(state)
        self.best = state["best"]
        position = Position(**state["position"])
        rng = state["rng"]
        if len(rng) == dist_info.world_size:
            self._pending_rng = rng[dist_info.rank]
        elif position.batch:
            logger.warning(
                "%s was written by %d processes, this run has %d: it resumes part-way through epoch %d with "
                "different random draws than an uninterrupted run",
                self.checkpoint_path,
                len(rng),
                dist_info.world_size,
                position.epoch + 1,
            )
        return position

    def _save_checkpoints(
        self, position: Position, last: bool, best: bool, dist_info: distributed.DistributedInfo
    ) -> None:
        """Save the last and/or best checkpoint (main process), with every process's RNG states."""
        rng_states = distributed.gather_objects(rng_state())  # a collective: every process calls it
        if dist_info.is_main:
            state = self._checkpoint_state(position, rng_states)
            if last:
                save_checkpoint(self.checkpoint_path, state)
                kept = self.config.keep_checkpoint_every_steps
                if kept is not None and position.step % kept == 0:
                    save_checkpoint(self.kept_checkpoint_path(position.step), state)
            if best:
                save_checkpoint(self.best_checkpoint_path, state)

    def _improves_best(self, position: Position, validation: Mapping[str, float]) -> bool:
        """Remember this validation if it improved ``config.best_metric``; True when it did."""
        if self.config.best_metric not in validation:
            raise ConfigError(
                f"best_metric {self.config.best_metric!r} is not a validation figure of this task; "
                f"validation reports {', '.join(sorted(validation))}"
            )
        value = validation[self.config.best_metric]
        if not math.isfinite(value) or (self.best is not None and value >= self.best["value"]):
            return False
        self.best = {
            "metric": self.config.best_metric,
            "value": value,
            "epoch": position.epoch + (position.batch > 0),  # epochs begun, as an epoch-based run counts them
            "step": position.step,
            "validation": dict(validation),
        }
        return True

    # -- data ------------------------------------------------------------------------------------
    def _loaders(self, args: TaskArgs, dist_info: distributed.DistributedInfo):
        """(sampler, training loader, validation loader or None) of a stage whose task arguments are ``args``."""
        train_set, val_set = self.task.build_datasets(args)
        world = dist_info.world_size
        per_process = self.config.batch_size // world
        if len(train_set) < self.config.batch_size:
            raise ConfigError(
                f"batch_size {self.config.batch_size} is larger than the training set ({len(train_set)} samples)"
            )
        sampler = distributed.ResumableSampler(
            train_set, num_replicas=world, rank=dist_info.rank, shuffle=True, seed=self.config.seed, drop_last=True
        )
        # its own generator, re-seeded each epoch: starting an epoch draws no number from the global RNG
        train_loader = DataLoader(
            train_set,
            batch_size=per_process,
            sampler=sampler,
            drop_last=True,
            num_workers=self.config.num_workers,
            generator=torch.Generator(),
        )
        val_loader = None
        if val_set is not None:
            val_sampler = DistributedSampler(val_set, num_replicas=world, rank=dist_info.rank, shuffle=False)
            val_loader = DataLoader(
                val_set, batch_size=max(per_process, 1), sampler=val_sampler, num_workers=self.config.num_workers
            )
        return sampler, train_loader, val_loader

    # -- steps -----------------------------------------------------------------------------------
    def _train_step(self, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
        """One step on one global batch (this process's share); returns the losses, means over micro-batches."""
        parts = self.config.accumulate_steps
        batch = to_device(batch, device, self.dtype)
        micro_batches = split_batch(batch, parts) if parts > 1 else [batch]
        self.optimisation.begin_step()
        totals: dict[str, torch.Tensor] = {}
        for index, micro_batch in enumerate(micro_batches):
            self.optimisation.begin_micro_batch()
            with self._no_sync(last=index == parts - 1), self._autocast(device):
                losses = self.task.training_step(micro_batch, self.ctx)
            for key, value in losses.items():
                totals[key] = totals.get(key, 0) + value.detach().float() / parts
        self.optimisation.finish_step()
        for name, avg in self.ema.items():
            avg.update_parameters(self.networks[name])
        return totals

    def _no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP: no gradient all-reduce in the micro-batches before the last of a step."""
        stack = contextlib.ExitStack()
        if not last:
            for net in self.wrapped.values():
                if isinstance(net, DistributedDataParallel):
                    stack.enter_context(net.no_sync())
        return stack

    @torch.no_grad()
    def _validate(
        self, loader: DataLoader, device: torch.device, position: Position, is_main: bool
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Means of the validation metrics over the set (all processes), and the main process's images."""
        networks = self.evaluation_networks()
        for net in networks.values():
            net.eval()
        ctx = ValidationContext(networks, self.frozen, device, position.step, position.epoch)
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        images: dict[str, np.ndarray] = {}
        for index, batch in enumerate(loader):
            ctx.batch_index = index
            with self._autocast(device):
                output = self.task.validation_step(to_device(batch, device, self.dtype), ctx)
            if isinstance(output, ValidationOutput):
                values = output.metrics
                if is_main:
                    for name, image in output.images.items():
                        if name not in images:
                            images[name] = image_array(name, image)
            else:
                values = output
            for key, per_sample in values.items():
                per_sample = per_sample.detach().float()
                defined = per_sample.isfinite()
                sums[key] = sums.get(key, torch.zeros((), device=device)) + per_sample[defined].sum()
                counts[key] = counts.get(key, torch.zeros((), device=device)) + defined.sum()
        for net in self.networks.values():
            net.train()
        keys = sorted(sums)
        totals = distributed.all_reduce_sum(torch.stack([sums[k] for k in keys] + [counts[k] for k in keys]))
        means = totals[: len(keys)] / totals[len(keys) :]
        return {f"val/{k}": means[i].item() for i, k in enumerate(keys)}, images

    def _window_means(self, sums: Mapping[str, torch.Tensor], steps: int, device: torch.device, position: Position):
        """Means of the losses summed over ``steps`` steps, across processes; stops a diverged run."""
        keys = sorted(sums)
        totals = distributed.all_reduce_sum(
            torch.stack([sums[k] for k in keys] + [torch.tensor(float(steps), device=device)])
        )
        means = {f"train/{k}": (totals[i] / totals[-1]).item() for i, k in enumerate(keys)}
        diverged = sorted(k for k, v in means.items() if not math.isfinite(v))
        if diverged:
            raise TrainingDivergedError(
                f"{', '.join(diverged)} became non-finite in epoch {position.epoch + 1} (by step {position.step}); "
                f"lower the learning rate or set grad_clip_norm (the last checkpoint, {self.checkpoint_path}, "
                "holds the weights before)"
            )
        return means

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train (or resume) to the last step, then export the bundle; returns the final figures."""
        from deepultrasound.runtime.device import choose_device

        device = choose_device(self.device_request)
        dist_info = distributed.setup(device)
        device = distributed.device_for_rank(device, dist_info)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # collectives of Python objects use the current device
        try:
            return self._run(device, dist_info)
        finally:
            distributed.teardown()

    def _due(self, every_steps: int | None, every_epochs: int, position: Position, epoch_end: bool) -> bool:
        if every_steps is not None:
            return position.step % every_steps == 0
        return epoch_end and (position.epoch + 1) % every_epochs == 0

    def _run(self, device: torch.device, dist_info: distributed.DistributedInfo) -> TrainResult:
        config = self.config
        self._check_devices(device, dist_info)
        resuming = self.resume and self.checkpoint_path.is_file()
        self._build(device, dist_info, initialise=not resuming)
        self.best: dict[str, Any] | None = None  # metric, value, epoch, step and figures of the best validation
        self._pending_rng: dict[str, Any] | None = None
        position = Position()
        if resuming:
            position = self._restore(load_checkpoint(self.checkpoint_path), dist_info)
            if dist_info.is_main:
                logger.info("resuming %s at step %d (epoch %d)", self.output_dir, position.step, position.epoch + 1)
        if dist_info.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(
                yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
            )
        log = TrainingLog(self.output_dir, resume_step=position.step) if dist_info.is_main else None
        result = TrainResult(
            self.output_dir,
            epochs_done=position.epoch,
            resumed_from_epoch=position.epoch,
            steps_done=position.step,
            resumed_from_step=position.step,
        )
        per_process = config.batch_size // dist_info.world_size
        show = self.progress and dist_info.is_main
        for net in self.networks.values():
            net.train()
        try:
            while position.stage < len(config.stages):
                stage_index = position.stage
                stage = config.stages[stage_index]
                self.task.args = self.stage_args[stage_index]  # the stage's losses as well as its data
                sampler, train_loader, val_loader = self._loaders(self.task.args, dist_info)
                self.optimisation.set_lr_scale(stage.lr_scale)
                per_epoch = len(train_loader)
                stage_steps = stage.steps or stage.epochs * per_epoch
                last_stage = stage_index + 1 == len(config.stages)
                sums: dict[str, torch.Tensor] = {}
                window = 0
                started = time.perf_counter()
                bar = (
                    tqdm(total=stage_steps, initial=position.stage_step, desc=stage.name, leave=False) if show else None
                )
                while position.stage == stage_index:
                    epoch = position.epoch
                    if position.batch == 0:
                        torch.manual_seed(_epoch_seed(config.seed, dist_info.rank, epoch))
                    elif self._pending_rng is not None:
                        set_rng_state(self._pending_rng)
                    self._pending_rng = None
                    sampler.set_epoch(epoch, start=position.batch * per_process)
                    train_loader.generator.manual_seed(_epoch_seed(config.seed, dist_info.rank, epoch))
                    for batch in train_loader:
                        self.ctx.step, self.ctx.epoch, self.ctx.stage = position.step, epoch, stage.name
                        losses = self._train_step(batch, device)
                        for key, value in losses.items():
                            sums[key] = sums.get(key, torch.zeros((), device=device)) + value
                        window += 1
                        position.step += 1
                        position.stage_step += 1
                        position.batch += 1
                        epoch_end = position.batch == per_epoch
                        stage_end = position.stage_step == stage_steps
                        run_end = stage_end and last_stage
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix({k: f"{v.item():.4g}" for k, v in losses.items()}, refresh=False)
                        at = Position(**asdict(position))  # the step just done, before the epoch/stage roll-over
                        if epoch_end or stage_end:
                            position.epoch, position.batch = epoch + 1, 0
                        if stage_end:
                            position.stage, position.stage_step = stage_index + 1, 0
                        log_due = run_end or self._due(config.log_every_steps, 1, at, epoch_end)
                        validate_due = val_loader is not None and (
                            run_end
                            or self._due(config.validation_every_steps, config.validation_freq or 1, at, epoch_end)
                        )
                        checkpoint_due = run_end or self._due(
                            config.checkpoint_every_steps, config.model_update_freq or 1, at, epoch_end
                        )
                        if not (log_due or validate_due or checkpoint_due):
                            continue
                        means = self._window_means(sums, window, device, at)
                        record: dict[str, Any] = {"step": at.step, "epoch": epoch, "stage": stage.name}
                        if log_due:
                            result.train_losses = means
                            record.update(means)
                            sums, window = {}, 0
                        best = False
                        if validate_due:
                            result.validation, images = self._validate(val_loader, device, at, dist_info.is_main)
                            record.update(result.validation)
                            best = config.best_metric is not None and self._improves_best(position, result.validation)
                            if log is not None and images:
                                log.images(at.step, images)
                        record.update(self.optimisation.learning_rates())
                        record["seconds"] = round(time.perf_counter() - started, 3)
                        started = time.perf_counter()
                        result.epochs_done, result.steps_done = position.epoch, position.step
                        if log is not None:
                            log.log(record)
                            logger.info(
                                "step %d epoch %d %s",
                                at.step,
                                epoch + 1,
                                " ".join(f"{k}={v:.5g}" for k, v in record.items() if isinstance(v, float)),
                            )
                        if checkpoint_due or best:
                            self._save_checkpoints(position, last=checkpoint_due, best=best, dist_info=dist_info)
                        distributed.barrier()
                        if stage_end:
                            break
                if bar is not None:
                    bar.close()
            if config.best_metric is not None and self.best is None:
                raise ConfigError(
                    f"best_metric {config.best_metric!r} had no finite value in any validation (is there a validation "
                    "set?): nothing to export"
                )
            if dist_info.is_main:
                result.bundle = self._export(result)
            distributed.barrier()
        finally:
            if log is not None:
                log.close()
        return result

    def _export(self, result: TrainResult) -> Path:
        """Export the bundle of the last step, or of the best validation with ``best_metric``."""
        from deepultrasound.training.export import export_bundle

        metrics: dict[str, Any] = {**result.train_losses, **result.validation}
        if self.config.best_metric is not None:
            restore_networks(self.networks, self.ema, load_checkpoint(self.best_checkpoint_path))
            metrics = {**self.best["validation"], "best_epoch": self.best["epoch"], "best_step": self.best["step"]}
        self.task.args = self.base_args  # the bundle is described as export_checkpoint describes it
        return export_bundle(self.task, self.evaluation_networks(), self.config, metrics, self.output_dir / "bundle")
