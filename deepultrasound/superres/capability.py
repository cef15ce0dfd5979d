"""USSuperRes: its command, bench suite and training tasks (see :mod:`deepultrasound.capabilities`)."""

COMMANDS = {
    "superres": (
        "deepultrasound.superres.command",
        "image or sequence -> F times more lines (lateral super-resolution: network or linear/cubic)",
    ),
}
BENCH_SUITES = {"superres": "deepultrasound.superres.bench"}
TASKS = {
    "superres": "deepultrasound.superres.training_task",
    "bmode-features": "deepultrasound.superres.feature_task",
}
