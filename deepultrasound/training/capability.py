"""The trainer: its commands and demonstration task (see :mod:`deepultrasound.capabilities`)."""

COMMANDS = {
    "train": ("deepultrasound.training.command", "train a model from a YAML/JSON config and export its bundle"),
    "export": ("deepultrasound.training.export", "export a training checkpoint to a model bundle"),
}
TASKS = {
    "translation": "deepultrasound.training.tasks.translation",
    "toy-denoising": "deepultrasound.training.tasks.denoising",
}
