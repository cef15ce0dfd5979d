"""USSynth label-map-conditioned ultrasound synthesis: its commands and training task (see
:mod:`deepultrasound.capabilities`)."""

COMMANDS = {
    "synth": (
        "deepultrasound.synthesis.command",
        "label map (2D or 3D) -> N synthetic ultrasound images per slice on its grid (semantic diffusion)",
    ),
    "synth-dataset": (
        "deepultrasound.synthesis.dataset_command",
        "folder of label maps -> CAMUS-like folder of synthetic image and label pairs",
    ),
}
TASKS = {"us-diffusion": "deepultrasound.synthesis.training_task"}
BENCH_SUITES = {"synth": "deepultrasound.synthesis.bench"}
