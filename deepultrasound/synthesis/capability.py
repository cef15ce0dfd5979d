"""USSynth label-map-conditioned ultrasound synthesis: its training task (see :mod:`deepultrasound.capabilities`)."""

TASKS = {"us-diffusion": "deepultrasound.synthesis.training_task"}
