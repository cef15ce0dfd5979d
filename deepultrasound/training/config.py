"""Training configuration: data, validated before anything runs.

A config is a YAML or JSON file. Unknown keys are errors that name the key, so a typo never
silently falls back to a default. Task-specific settings live under ``task_args`` and are
validated by the task's own ``Args`` model.

Example (``deepultrasound/configs/translation.yaml``), a run counted in epochs::

    task: translation
    task_args: {image_size: 32, max_shift: 3.0}
    seed: 0
    batch_size: 32          # global batch, split evenly across torchrun processes
    stages: [{epochs: 12}]
    optimizers: {main: {name: adam, lr: 0.002}}

A run counted in steps (one step = one global batch = one update of each optimiser), the usual
shape for diffusion models::

    stages: [{steps: 20000}]
    optimizers:
      main: {name: adamw, lr: 0.0002, scheduler: {name: cosine, warmup_steps: 500}}
    accumulate_steps: 2       # each batch in 2 micro-batches; the optimisers step once per batch
    amp: bf16                 # autocast; fp16 (with gradient scaling) needs CUDA
    ema_decay: 0.9999         # for the networks the task keeps an EMA copy of
    ema_warmup: true          # decay min(ema_decay, (1 + n) / (10 + n)) at the n-th update
    export_ema: true          # validate and export the EMA copies (default) or the online weights
    validation_every_steps: 1000   # validation metrics and sample images (OUTPUT/images/<step>/)
    checkpoint_every_steps: 500    # resumable at that step exactly
    keep_checkpoint_every_steps: 5000   # also keep checkpoints/checkpoint_step005000.pt, ... (export any of them)
    log_every_steps: 100           # metrics.csv / TensorBoard rows of the mean losses since the last row

Cadences: each of validation, checkpoints and log rows runs every N epochs (``validation_freq``,
``model_update_freq``, one log row per epoch) unless its ``*_every_steps`` counterpart is given;
giving both for one cadence is an error. Whatever the cadences, the run validates, logs and
saves a checkpoint after its last step. A stage given in ``steps`` may end part-way through an
epoch of its data; the next stage starts a new epoch. Kept checkpoints let two runs be compared at
an equal budget (``deepultrasound export`` of each at the same step). A run resumes only with the
config it was started with, except for the log and checkpoint cadences (:data:`RESUME_INDEPENDENT`)
and a task's ``inference_args`` (the bundle's sampling defaults, say), which do not change what is trained.

A config may build on another: ``base: other.yaml`` (a path relative to the config's folder) reads
that config first and applies this one over it, mappings merged key by key at every depth, other
values (lists such as ``stages`` included) replaced, and a key set to null removed (its default then
applies). An ablation is then its base and the one thing it changes::

    base: ussynth_echo_64.yaml
    task_args: {bmap_eps: 1.0}
    output_dir: runs/ussynth_echo_64_no_bmap
    bundle: {name: ussynth-echo-64-no-bmap}

Initial weights: ``init_from`` starts networks from an earlier run, e.g. an adversarial stage
from a trained generator: ``init_from: {generator: runs/superres_x4/bundle}``.

Learning rates: ``scheduler`` (top level) applies to every optimiser that has none of its own.
Schedules count steps: ``constant``; ``cosine`` from the rate down to ``min_lr_scale`` times it;
``linear`` from the rate to ``min_lr_scale`` times it; ``step`` multiplies it by ``gamma`` every
``step_size`` steps. ``warmup_steps`` first ramps the rate linearly from ``warmup_start_scale``
times it, then the schedule runs its ``decay_steps`` (default: the rest of the run). A stage's
``lr_scale`` multiplies the scheduled rate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from deepultrasound.errors import ConfigError, FileFormatError

RESUME_INDEPENDENT = frozenset(
    {"output_dir", "log_every_steps", "checkpoint_every_steps", "model_update_freq", "keep_checkpoint_every_steps"}
)
"""Config fields a run may resume with changed: where it writes and how often it logs and saves, not what it trains."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SchedulerConfig(_Strict):
    """A learning-rate schedule in steps (see the module docstring); built on ``torch.optim.lr_scheduler``."""

    name: Literal["constant", "cosine", "linear", "step"] = "constant"
    warmup_steps: int = Field(0, ge=0, description="linear warm-up before the schedule")
    warmup_start_scale: float = Field(0.01, gt=0, le=1, description="rate at the first warm-up step, times lr")
    decay_steps: PositiveInt | None = Field(
        None, description="cosine/linear: length of the decay after the warm-up (default: the rest of the run)"
    )
    min_lr_scale: float = Field(0.0, ge=0, le=1, description="cosine/linear: final rate, times lr")
    step_size: PositiveInt = Field(1000, description="step: steps between reductions")
    gamma: float = Field(0.1, gt=0, le=1, description="step: factor of each reduction")


class OptimizerConfig(_Strict):
    """One optimiser. The task decides which networks it updates."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0, description="Adam/AdamW denominator term")
    momentum: float = Field(0.0, ge=0, description="SGD only")
    scheduler: SchedulerConfig | None = Field(None, description="default: the top-level scheduler")


class StageConfig(_Strict):
    """One stage of staged (e.g. multi-scale) training; each stage starts from the last one's weights.

    Its length is given in ``epochs`` (passes over its training data) or in ``steps`` (global batches).
    """

    name: str = "main"
    epochs: PositiveInt | None = None
    steps: PositiveInt | None = None
    task_args: dict[str, Any] = Field(default_factory=dict, description="overrides of the top-level task_args")
    lr_scale: float = Field(1.0, gt=0, description="multiplies every optimiser's lr during this stage")

    @model_validator(mode="after")
    def _one_length(self) -> "StageConfig":
        if (self.epochs is None) == (self.steps is None):
            raise ValueError(f"stage '{self.name}' needs exactly one of 'epochs' or 'steps'")
        return self


class BundleConfig(_Strict):
    """Names the model bundle exported at the end of training."""

    name: str | None = Field(None, description="default: the task name")
    version: str = "0.1.0"
    description: str = ""
    formats: list[Literal["torchscript", "onnx"]] = Field(
        ["torchscript", "onnx"], description="exported graphs besides the weights; parity is checked for these"
    )


class TrainConfig(_Strict):
    """Everything a training run needs; see the module docstring for an example."""

    task: str
    task_args: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    batch_size: PositiveInt = Field(16, description="global batch size, divided evenly across DDP processes")
    stages: list[StageConfig] = Field(min_length=1)
    optimizers: dict[str, OptimizerConfig] = Field(default_factory=lambda: {"main": OptimizerConfig()})
    scheduler: SchedulerConfig = Field(
        default_factory=SchedulerConfig, description="learning-rate schedule of optimisers without their own"
    )
    grad_clip_norm: float | None = Field(None, gt=0, description="clip each optimiser's gradient norm to this")
    accumulate_steps: PositiveInt = Field(
        1,
        description="split each process's batch into this many micro-batches, one training_step each, and "
        "update once per batch from the accumulated gradients (see StepContext.optimize)",
    )
    amp: Literal["none", "bf16", "fp16"] = Field(
        "none", description="mixed precision (torch.autocast); fp16 scales gradients and needs CUDA"
    )
    ema_decay: float = Field(0.999, gt=0, lt=1, description="for networks the task keeps an EMA copy of")
    ema_warmup: bool = Field(
        False,
        description="decay min(ema_decay, (1 + n) / (10 + n)) at the n-th update, so that the early EMA follows "
        "the training instead of holding the initial weights (0.999 ** 2000 of them at step 2000 without)",
    )
    export_ema: bool = Field(
        True,
        description="validate and export the EMA copies (where the task keeps them) rather than the online weights",
    )
    model_update_freq: PositiveInt | None = Field(
        None, description="save a checkpoint every this many epochs (default 1, unless checkpoint_every_steps)"
    )
    validation_freq: PositiveInt | None = Field(
        None, description="validate every this many epochs (default 1, unless validation_every_steps)"
    )
    checkpoint_every_steps: PositiveInt | None = Field(None, description="save a checkpoint every this many steps")
    keep_checkpoint_every_steps: PositiveInt | None = Field(
        None,
        description="also keep the checkpoint of every this many steps as checkpoints/checkpoint_step<N>.pt "
        "(a multiple of checkpoint_every_steps)",
    )
    validation_every_steps: PositiveInt | None = Field(None, description="validate every this many steps")
    log_every_steps: PositiveInt | None = Field(
        None, description="one log row every this many steps (default: one per epoch)"
    )
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
    init_from: dict[str, str] = Field(
        default_factory=dict,
        description="network name -> a model bundle folder (its main network) or a training checkpoint (the network "
        "of that name as its run exports it) whose weights the network starts from; a resumed run ignores it",
    )

    @model_validator(mode="after")
    def _check_stage_names(self) -> "TrainConfig":
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        return self

    @model_validator(mode="after")
    def _one_cadence_each(self) -> "TrainConfig":
        for epochs, steps in (
            ("validation_freq", "validation_every_steps"),
            ("model_update_freq", "checkpoint_every_steps"),
        ):
            if getattr(self, epochs) is not None and getattr(self, steps) is not None:
                raise ValueError(f"give '{epochs}' (epochs) or '{steps}', not both")
        kept = self.keep_checkpoint_every_steps
        if kept is not None and (self.checkpoint_every_steps is None or kept % self.checkpoint_every_steps):
            raise ValueError(
                f"keep_checkpoint_every_steps ({kept}) must be a multiple of checkpoint_every_steps "
                f"({self.checkpoint_every_steps})"
            )
        if self.precision == "float64" and self.amp != "none":
            raise ValueError(f"amp '{self.amp}' needs precision float32")
        return self

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


BASE_KEY = "base"
"""The key of the config a config builds on (see the module docstring)."""


def merge_config(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied: mappings merged key by key at every depth, other values replaced,
    keys whose change is None removed."""
    merged = dict(base)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_config(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of the config file ``path`` with its ``base`` chain applied (``chain``: the files that
    build on it)."""
    if not path.is_file():
        raise FileFormatError(f"config file not found: {path}" + (f" (the base of {chain[-1]})" if chain else ""))
    if path.resolve() in chain:
        cycle = " -> ".join(str(file) for file in (*chain, path.resolve()))
        raise ConfigError(f"config bases form a cycle: {cycle}")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot parse config {path}: {error}") from None
    if data is None:
        raise ConfigError(f"config file is empty: {path}")
    if not isinstance(data, dict) or BASE_KEY not in data:
        return data
    base = data.pop(BASE_KEY)
    if not isinstance(base, str):
        raise ConfigError(f"invalid config {path}: {BASE_KEY} must be a path, got {base!r}")
    return merge_config(_read_config(path.parent / base, (*chain, path.resolve())), data)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a ``.yaml``/``.yml``/``.json`` config (over its ``base``, if it names one), apply top-level
    ``overrides``, validate."""
    path = Path(path)
    data = _read_config(path)
    if overrides:
        data = {**data, **overrides}
    return parse_config(data, str(path))
