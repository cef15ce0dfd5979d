"""Training configuration: data, validated before anything runs.

A config is a YAML or JSON file. Unknown keys are errors that name the key, so a typo never
silently falls back to a default. Task-specific settings live under ``task_args`` and are
validated by the task's own ``Args`` model.

Example (``deepultrasound/configs/translation.yaml``)::

    task: translation
    task_args: {image_size: 32, max_shift: 3.0}
    seed: 0
    batch_size: 32          # global batch, split evenly across torchrun processes
    stages: [{epochs: 12}]
    optimizers: {main: {name: adam, lr: 0.002}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from deepultrasound.errors import ConfigError, FileFormatError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimizerConfig(_Strict):
    """One optimiser. The task decides which networks it updates."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0, description="Adam/AdamW denominator term")
    momentum: float = Field(0.0, ge=0, description="SGD only")


class StageConfig(_Strict):
    """One stage of staged (e.g. multi-scale) training; each stage starts from the last one's weights."""

    name: str = "main"
    epochs: PositiveInt
    task_args: dict[str, Any] = Field(default_factory=dict, description="overrides of the top-level task_args")
    lr_scale: float = Field(1.0, gt=0, description="multiplies every optimiser's lr during this stage")


class BundleConfig(_Strict):
    """Names the model bundle exported at the end of training."""

    name: str | None = Field(None, description="default: the task name")
    version: str = "0.1.0"
    description: str = ""


class TrainConfig(_Strict):
    """Everything a training run needs; see the module docstring for an example."""

    task: str
    task_args: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    batch_size: PositiveInt = Field(16, description="global batch size, divided evenly across DDP processes")
    stages: list[StageConfig] = Field(min_length=1)
    optimizers: dict[str, OptimizerConfig] = Field(default_factory=lambda: {"main": OptimizerConfig()})
    grad_clip_norm: float | None = Field(None, gt=0)
    ema_decay: float = Field(0.999, gt=0, lt=1, description="for networks the task keeps an EMA copy of")
    model_update_freq: PositiveInt = Field(1, description="save a checkpoint every this many epochs")
    validation_freq: PositiveInt = Field(1, description="validate every this many epochs")
    best_metric: str | None = Field(
        None,
        description="validation figure to minimise (e.g. val/strain_nrmse): the epoch with its lowest value is kept "
        "in checkpoints/checkpoint_best.pt and exported instead of the last",
    )
    num_workers: int = Field(0, ge=0)
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps; DEEPULTRASOUND_DEVICE overrides auto")
    output_dir: str = "runs/{task}"
    find_unused_parameters: bool = Field(False, description="DDP option for tasks that skip a network in some steps")
    precision: Literal["float32", "float64"] = Field(
        "float32",
        description="arithmetic of networks and batches; float64 makes runs on 1 or N processes agree to rounding "
        "(in float32, training amplifies the rounding differences of gradient sums to ~1e-3 over ~1000 steps)",
    )
    bundle: BundleConfig = Field(default_factory=BundleConfig)

    @model_validator(mode="after")
    def _check_stage_names(self) -> "TrainConfig":
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        return self

    @property
    def total_epochs(self) -> int:
        return sum(stage.epochs for stage in self.stages)

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir.format(task=self.task))


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key '{where}'")
        else:
            lines.append(f"'{where}': {item['msg']}")
    return f"invalid config {source}: " + "; ".join(lines)


def parse_config(data: dict[str, Any], source: str = "<dict>") -> TrainConfig:
    """Validate a config mapping; raises :class:`ConfigError` naming every bad or unknown key."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a ``.yaml``/``.yml``/``.json`` config, apply top-level ``overrides``, validate."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"config file not found: {path}")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot parse config {path}: {error}") from None
    if data is None:
        raise ConfigError(f"config file is empty: {path}")
    if overrides:
        data = {**data, **overrides}
    return parse_config(data, str(path))
