"""USSuperRes lateral super-resolution: its command and training tasks (see :mod:`deepultrasound.capabilities`)."""

COMMANDS = {
    "superres": (
        "deepultrasound.superres.command",
        "image or sequence -> F times more lines (lateral super-resolution: network or linear/cubic)",
    ),
}
TASKS = {
    "superres": "deepultrasound.superres.training_task",
    "bmode-features": "deepultrasound.superres.feature_task",
}
