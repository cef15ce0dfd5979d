"""The model runtime: its command (see :mod:`deepultrasound.capabilities`)."""

COMMANDS = {
    "bundle": ("deepultrasound.runtime.inspect_command", "verify a model bundle and check parity between its backends"),
}
