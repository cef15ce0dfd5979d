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
    "stream": (
        "deepultrasound.elastography.live.command",
        "live strain: RF over OpenIGTLink in, Strain and BMode images served out",
    ),
}
BENCH_SUITES = {
    "strain": "deepultrasound.elastography.bench",
    "stream": "deepultrasound.elastography.live.bench",
    "soak": "deepultrasound.elastography.live.soak",
    "throughput": "deepultrasound.elastography.live.throughput",
}
TASKS = {"deepuse": "deepultrasound.elastography.training_task"}
