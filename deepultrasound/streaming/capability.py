"""OpenIGTLink streaming: the scanner stand-in (see :mod:`deepultrasound.capabilities`)."""

COMMANDS = {
    "scanner": (
        "deepultrasound.streaming.scanner",
        "stream RF frames over OpenIGTLink like a PLUS server (file loop or simulated phantom)",
    ),
}
