"""The engine's own commands: the demo and the bench dispatcher (see :mod:`deepultrasound.capabilities`)."""

COMMANDS = {
    "demo": ("deepultrasound.demo", "run the main job on bundled defaults and write an output folder"),
    "bench": ("deepultrasound.bench", "run a benchmark suite; the last stdout line is one JSON object"),
}
