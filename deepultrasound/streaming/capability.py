"""Live streaming over OpenIGTLink: its commands and bench suites (see :mod:`deepultrasound.capabilities`)."""

COMMANDS = {
    "scanner": (
        "deepultrasound.streaming.scanner",
        "stream RF frames over OpenIGTLink like a PLUS server (file loop or simulated phantom)",
    ),
    "stream": (
        "deepultrasound.streaming.command",
        "live strain: RF over OpenIGTLink in, Strain and BMode images served out",
    ),
}
BENCH_SUITES = {
    "stream": "deepultrasound.streaming.bench",
    "soak": "deepultrasound.streaming.soak",
    "throughput": "deepultrasound.streaming.throughput",
}
