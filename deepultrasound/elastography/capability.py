"""DeepUSE strain elastography: its commands, bench suite and training task (see :mod:`deepultrasound.capabilities`)."""

COMMANDS = {
    "strain": (
        "deepultrasound.elastography.strain_command",
        "RF sequence file -> axial strain sequence in percent (DeepUSE or block matching)",
    ),
    "import-deepuse": (
        "deepultrasound.elastography.import_command",
        "convert an original DeepUSE checkpoint to a bundle",
    ),
}
BENCH_SUITES = {"strain": "deepultrasound.elastography.bench"}
TASKS = {"deepuse": "deepultrasound.elastography.training_task"}
