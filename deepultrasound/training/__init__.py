"""The headless trainer: ``deepultrasound train CONFIG`` (single process or under ``torchrun``).

- :mod:`~deepultrasound.training.config`   validated run configuration (unknown keys are errors)
- :mod:`~deepultrasound.training.task`     the task interface and registry every capability implements
- :mod:`~deepultrasound.training.trainer`  the loop: DDP, checkpoints, resume, validation, logs, export
"""

from deepultrasound.training.config import TrainConfig, load_config, parse_config
from deepultrasound.training.task import ExportSpec, StepContext, Task, TaskArgs, get_task, register_task
from deepultrasound.training.trainer import Trainer, TrainResult

__all__ = [
    "ExportSpec",
    "StepContext",
    "Task",
    "TaskArgs",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "get_task",
    "load_config",
    "parse_config",
    "register_task",
]
