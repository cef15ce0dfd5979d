"""USSuperRes lateral super-resolution: its training task (see :mod:`deepultrasound.capabilities`)."""

TASKS = {"superres": "deepultrasound.superres.training_task"}
