"""The Slicer and Python versions the extension runs on, and the message an older Slicer shows.

Slicer 5.10 is the first with Python >= 3.10 (it ships 3.12; Slicer 5.6-5.8 ship 3.9), which the
engine needs. So that an older Slicer shows :func:`unsupportedPythonMessage` in the module panel
instead of a syntax error in its log, the module files parse and load on Python 3.9 up to this
check (``Testing/test_python_versions.py`` checks them); the engine itself is written for 3.10+.
"""

from __future__ import annotations

import sys

MINIMUM_SLICER_VERSION = "5.10"
#: the oldest Python the engine and the module logic run on
MINIMUM_PYTHON = (3, 10)


def unsupportedPythonMessage(versionInfo: tuple[int, ...] = tuple(sys.version_info)) -> str:
    """Why this Slicer cannot run the extension (its Python is older than :data:`MINIMUM_PYTHON`), or ``""``."""
    if tuple(versionInfo[:2]) >= MINIMUM_PYTHON:
        return ""
    running = ".".join(str(part) for part in versionInfo[:3])
    return (
        f"DeepUltrasound needs 3D Slicer {MINIMUM_SLICER_VERSION} or later (Python "
        f"{'.'.join(map(str, MINIMUM_PYTHON))} or later); this Slicer runs Python {running}. "
        f"Install Slicer {MINIMUM_SLICER_VERSION} or later from https://download.slicer.org and the extension there."
    )
