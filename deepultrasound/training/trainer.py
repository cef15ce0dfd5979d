"""The headless trainer: one loop for every task, single-process or under ``torchrun`` (DDP).

Data order is a function of the seed and the epoch only: every process draws the same permutation
(:class:`~torch.utils.data.DistributedSampler`) and takes an interleaved share of each global batch,
so N processes with ``batch_size / N`` each see exactly the batches one process sees with
``batch_size``, and DDP's gradient averaging gives the same update. Each epoch re-seeds the RNG
from (seed, rank, epoch), so a resumed run continues exactly where the killed one stopped.

Output folder layout::

    OUTPUT/config.yaml                 the validated config of the run
    OUTPUT/checkpoints/checkpoint_last.pt
    OUTPUT/checkpoints/checkpoint_best.pt   with ``best_metric``: the epoch with its lowest value
    OUTPUT/metrics.csv                 one row per epoch (losses, validation metrics, lr, seconds)
    OUTPUT/tensorboard/                TensorBoard event files
    OUTPUT/bundle/                     the exported model bundle (manifest, weights, TorchScript, ONNX)

The bundle holds the last epoch, or with ``best_metric`` the best validated one (its validation
figures and ``best_epoch`` in the manifest's metrics).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from deepultrasound.errors import ConfigError, DeepUltrasoundError
from deepultrasound.training import distributed
from deepultrasound.training.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, load_checkpoint, save_checkpoint
from deepultrasound.training.config import OptimizerConfig, StageConfig, TrainConfig
from deepultrasound.training.logs import TrainingLog
from deepultrasound.training.task import StepContext, Task, TaskArgs, get_task

logger = logging.getLogger(__name__)


class TrainingDivergedError(DeepUltrasoundError, RuntimeError):
    """A loss became NaN or infinite: the run stops before a checkpoint keeps the broken weights."""


@dataclass
class TrainResult:
    """What a run produced. Losses are means over the last epoch's steps, across all processes."""

    output_dir: Path
    epochs_done: int
    resumed_from_epoch: int
    train_losses: dict[str, float] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    bundle: Path | None = None


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

    def _stage_at(self, epoch: int) -> int:
        end = 0
        for index, stage in enumerate(self.config.stages):
            end += stage.epochs
            if epoch < end:
                return index
        raise IndexError(epoch)

    # -- set-up ----------------------------------------------------------------------------------
    def _build(self, device: torch.device, dist_info: distributed.DistributedInfo) -> None:
        torch.manual_seed(self.config.seed)  # identical initial weights in every process
        self.dtype = getattr(torch, self.config.precision)
        self.task: Task = self.task_cls(self.base_args, seed=self.config.seed)
        self.networks = {name: net.to(device, self.dtype) for name, net in self.task.build_networks().items()}
        self.frozen = {}
        for name, net in self.task.build_frozen_networks().items():
            net = net.to(device, self.dtype).eval()
            net.requires_grad_(False)
            self.frozen[name] = net

        groups = self.task.optimizer_networks(list(self.networks))
        missing = sorted(set(groups) - set(self.config.optimizers))
        unused = sorted(set(self.config.optimizers) - set(groups))
        if missing or unused:
            raise ConfigError(
                f"task '{self.config.task}' uses optimisers {sorted(groups)}; "
                + (f"config.optimizers lacks {missing}" if missing else f"config.optimizers has unknown {unused}")
            )
        self.optimizers = {}
        self.optimizer_params: dict[str, list[nn.Parameter]] = {}
        for opt_name, net_names in groups.items():
            params = [p for net_name in net_names for p in self.networks[net_name].parameters() if p.requires_grad]
            self.optimizer_params[opt_name] = params
            self.optimizers[opt_name] = build_optimizer(self.config.optimizers[opt_name], params)
        self.base_lrs = {name: [g["lr"] for g in opt.param_groups] for name, opt in self.optimizers.items()}

        ema_fn = get_ema_multi_avg_fn(self.config.ema_decay)
        self.ema = {name: AveragedModel(self.networks[name], multi_avg_fn=ema_fn) for name in self.task.ema_networks()}

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
        self.ctx = StepContext(self.wrapped, self.frozen, self.optimizers, device, self._optimize)

    def _optimize(self, loss: torch.Tensor, optimizer: str) -> None:
        if optimizer not in self.optimizers:
            raise KeyError(f"unknown optimiser '{optimizer}'; the task declared {sorted(self.optimizers)}")
        opt = self.optimizers[optimizer]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(self.optimizer_params[optimizer], self.config.grad_clip_norm)
        opt.step()

    def _set_lr_scale(self, scale: float) -> None:
        for name, opt in self.optimizers.items():
            for group, base in zip(opt.param_groups, self.base_lrs[name]):
                group["lr"] = base * scale

    def evaluation_networks(self) -> dict[str, nn.Module]:
        """The networks to validate and export: EMA copies where the task keeps one."""
        return {name: (self.ema[name].module if name in self.ema else net) for name, net in self.networks.items()}

    # -- checkpoints -----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / "checkpoints" / LAST_CHECKPOINT

    @property
    def best_checkpoint_path(self) -> Path:
        return self.output_dir / "checkpoints" / BEST_CHECKPOINT

    def _checkpoint_state(self, next_epoch: int) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(mode="json"),
            "next_epoch": next_epoch,
            "best": self.best,
            "networks": {name: net.state_dict() for name, net in self.networks.items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "ema": {name: avg.state_dict() for name, avg in self.ema.items()},
        }

    def _restore(self, state: dict[str, Any]) -> int:
        saved = TrainConfig.model_validate(state["config"])
        if saved.model_dump(exclude={"output_dir"}) != self.config.model_dump(exclude={"output_dir"}):
            raise ConfigError(
                f"{self.checkpoint_path} was written with a different config; "
                "use the same config to resume, or --no-resume to start again (this overwrites the checkpoint)"
            )
        restore_networks(self.networks, self.ema, state)
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.best = state.get("best")
        return int(state["next_epoch"])

    def _keep_if_best(self, epoch: int, validation: Mapping[str, float], is_main: bool) -> None:
        """Remember (and on the main process save) this epoch if it improved ``config.best_metric``."""
        if self.config.best_metric not in validation:
            raise ConfigError(
                f"best_metric {self.config.best_metric!r} is not a validation figure of this task; "
                f"validation reports {', '.join(sorted(validation))}"
            )
        value = validation[self.config.best_metric]
        if not math.isfinite(value) or (self.best is not None and value >= self.best["value"]):
            return
        self.best = {
            "metric": self.config.best_metric,
            "value": value,
            "epoch": epoch + 1,
            "validation": dict(validation),
        }
        if is_main:
            save_checkpoint(self.best_checkpoint_path, self._checkpoint_state(epoch + 1))

    def _restore_best(self) -> None:
        """Load the weights of the best epoch before export."""
        restore_networks(self.networks, self.ema, load_checkpoint(self.best_checkpoint_path))

    # -- the loop --------------------------------------------------------------------------------
    def _loaders(self, dist_info: distributed.DistributedInfo):
        """Loaders of the current stage's data (``self.task.args``)."""
        train_set, val_set = self.task.build_datasets(self.task.args)
        world = dist_info.world_size
        per_process = self.config.batch_size // world
        if len(train_set) < self.config.batch_size:
            raise ConfigError(
                f"batch_size {self.config.batch_size} is larger than the training set ({len(train_set)} samples)"
            )
        sampler = DistributedSampler(
            train_set, num_replicas=world, rank=dist_info.rank, shuffle=True, seed=self.config.seed, drop_last=True
        )
        train_loader = DataLoader(
            train_set, batch_size=per_process, sampler=sampler, drop_last=True, num_workers=self.config.num_workers
        )
        val_loader = None
        if val_set is not None:
            val_sampler = DistributedSampler(val_set, num_replicas=world, rank=dist_info.rank, shuffle=False)
            val_loader = DataLoader(
                val_set, batch_size=max(per_process, 1), sampler=val_sampler, num_workers=self.config.num_workers
            )
        return sampler, train_loader, val_loader

    def _train_epoch(self, epoch: int, loader: DataLoader, device: torch.device, bar) -> dict[str, float]:
        for net in self.networks.values():
            net.train()
        sums: dict[str, torch.Tensor] = {}
        steps = 0
        for batch in loader:
            losses = self.task.training_step(to_device(batch, device, self.dtype), self.ctx)
            for name, avg in self.ema.items():
                avg.update_parameters(self.networks[name])
            for key, value in losses.items():
                sums[key] = sums.get(key, torch.zeros((), device=device)) + value.detach().float()
            steps += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v.item():.4g}" for k, v in losses.items()}, refresh=False)
        keys = sorted(sums)
        totals = distributed.all_reduce_sum(
            torch.stack([sums[k] for k in keys] + [torch.tensor(float(steps), device=device)])
        )
        means = {f"train/{k}": (totals[i] / totals[-1]).item() for i, k in enumerate(keys)}
        diverged = sorted(k for k, v in means.items() if not math.isfinite(v))
        if diverged:
            raise TrainingDivergedError(
                f"{', '.join(diverged)} became non-finite in epoch {epoch + 1}; lower the learning rate or set "
                f"grad_clip_norm (the last checkpoint, {self.checkpoint_path}, holds the weights before this epoch)"
            )
        return means

    @torch.no_grad()
    def _validate(self, loader: DataLoader, device: torch.device) -> dict[str, float]:
        networks = self.evaluation_networks()
        for net in networks.values():
            net.eval()
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        for batch in loader:
            values = self.task.validation_step(to_device(batch, device, self.dtype), networks)
            for key, per_sample in values.items():
                per_sample = per_sample.detach().float()
                defined = per_sample.isfinite()
                sums[key] = sums.get(key, torch.zeros((), device=device)) + per_sample[defined].sum()
                counts[key] = counts.get(key, torch.zeros((), device=device)) + defined.sum()
        keys = sorted(sums)
        totals = distributed.all_reduce_sum(torch.stack([sums[k] for k in keys] + [counts[k] for k in keys]))
        means = totals[: len(keys)] / totals[len(keys) :]
        return {f"val/{k}": means[i].item() for i, k in enumerate(keys)}

    def run(self) -> TrainResult:
        """Train (or resume) to the last epoch, then export the bundle; returns the final figures."""
        from deepultrasound.runtime.device import choose_device

        device = choose_device(self.device_request)
        dist_info = distributed.setup(device)
        device = distributed.device_for_rank(device, dist_info)
        try:
            return self._run(device, dist_info)
        finally:
            distributed.teardown()

    def _run(self, device: torch.device, dist_info: distributed.DistributedInfo) -> TrainResult:
        config = self.config
        if config.batch_size % dist_info.world_size:
            raise ConfigError(
                f"batch_size {config.batch_size} must be divisible by the number of processes ({dist_info.world_size})"
            )
        self._build(device, dist_info)
        self.best: dict[str, Any] | None = None  # metric, value, epoch (1-based) of the best validation
        start_epoch = 0
        if self.resume and self.checkpoint_path.is_file():
            start_epoch = self._restore(load_checkpoint(self.checkpoint_path))
            if dist_info.is_main:
                logger.info("resuming %s at epoch %d of %d", self.output_dir, start_epoch, config.total_epochs)
        if dist_info.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(
                yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
            )
        log = TrainingLog(self.output_dir, resume_epoch=start_epoch) if dist_info.is_main else None
        result = TrainResult(self.output_dir, epochs_done=start_epoch, resumed_from_epoch=start_epoch)
        show = self.progress and dist_info.is_main
        loaders: tuple | None = None
        loaded_stage = -1
        try:
            for epoch in range(start_epoch, config.total_epochs):
                stage_index = self._stage_at(epoch)
                stage = config.stages[stage_index]
                if stage_index != loaded_stage:
                    self.task.args = self.stage_args[stage_index]  # the stage's losses as well as its data
                    loaders = self._loaders(dist_info)
                    self._set_lr_scale(stage.lr_scale)
                    loaded_stage = stage_index
                sampler, train_loader, val_loader = loaders
                sampler.set_epoch(epoch)
                torch.manual_seed(_epoch_seed(config.seed, dist_info.rank, epoch))
                self.ctx.epoch, self.ctx.stage = epoch, stage.name
                started = time.perf_counter()
                bar = (
                    tqdm(
                        total=len(train_loader),
                        desc=f"epoch {epoch + 1}/{config.total_epochs} [{stage.name}]",
                        leave=False,
                    )
                    if show
                    else None
                )
                result.train_losses = self._train_epoch(epoch, train_loader, device, bar)
                if bar is not None:
                    bar.close()
                last = epoch + 1 == config.total_epochs
                record: dict[str, Any] = {"epoch": epoch, "stage": stage.name, **result.train_losses}
                if val_loader is not None and ((epoch + 1) % config.validation_freq == 0 or last):
                    result.validation = self._validate(val_loader, device)
                    record.update(result.validation)
                    if config.best_metric is not None:
                        self._keep_if_best(epoch, result.validation, dist_info.is_main)
                record["lr"] = next(iter(self.optimizers.values())).param_groups[0]["lr"]
                record["seconds"] = round(time.perf_counter() - started, 3)
                result.epochs_done = epoch + 1
                if dist_info.is_main:
                    log.log(record)
                    logger.info(
                        "epoch %d/%d %s",
                        epoch + 1,
                        config.total_epochs,
                        " ".join(f"{k}={v:.5g}" for k, v in record.items() if isinstance(v, float)),
                    )
                    if (epoch + 1) % config.model_update_freq == 0 or last:
                        save_checkpoint(self.checkpoint_path, self._checkpoint_state(epoch + 1))
                distributed.barrier()
            if config.best_metric is not None and self.best is None:
                raise ConfigError(
                    f"best_metric {config.best_metric!r} had no finite value in any validation (is there a validation "
                    "set?): nothing to export"
                )
            if dist_info.is_main:
                from deepultrasound.training.export import export_bundle

                metrics = {**result.train_losses, **result.validation}
                if config.best_metric is not None:
                    self._restore_best()
                    metrics = {**self.best["validation"], "best_epoch": self.best["epoch"]}
                self.task.args = self.base_args  # the bundle is described as export_checkpoint describes it
                result.bundle = export_bundle(
                    self.task, self.evaluation_networks(), config, metrics, self.output_dir / "bundle"
                )
            distributed.barrier()
        finally:
            if log is not None:
                log.close()
        return result


def restore_networks(
    networks: Mapping[str, nn.Module], ema: Mapping[str, AveragedModel], state: Mapping[str, Any]
) -> None:
    """Load networks (and EMA copies) from a checkpoint ``state``, strictly."""
    for name, net in networks.items():
        net.load_state_dict(state["networks"][name], strict=True)
    for name, avg in ema.items():
        avg.load_state_dict(state["ema"][name], strict=True)
