"""EchoRegistration: its commands, bench suite and training tasks (see :mod:`deepultrasound.capabilities`)."""

TASKS = {
    "shape-vae": "deepultrasound.registration.shape_task",
    "echo-registration": "deepultrasound.registration.training_task",
}
COMMANDS = {
    "register": (
        "deepultrasound.registration.register_command",
        "two 2D images -> displacement in mm on the fixed grid (network, elastix or optical flow); warped labels",
    ),
    "track": (
        "deepultrasound.registration.track_command",
        "echo sequence + labels of one frame -> labels on every frame, displacements, strain CSV and plot",
    ),
}
BENCH_SUITES = {"register": "deepultrasound.registration.bench"}
