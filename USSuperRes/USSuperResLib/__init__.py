"""MRML-facing logic of the USSuperRes module (lateral super-resolution).

- :mod:`.logic`    the output grid (the engine's convention) and the ``deepultrasound superres`` command line
- :mod:`.job`      super-resolution of a volume in a background process (progress, Cancel)
- :mod:`.display`  input and output side by side, linked

All import with ``slicer-core`` alone; the engine runs in its own process.
"""

from .display import COMPARE_LAYOUT, COMPARE_VIEWS, imagePlane, showSideBySide
from .job import SuperResolution, SuperResolutionJob
from .logic import METHODS, SuperResolutionMethod, superResolutionArguments, superResolvedGeometry

__all__ = [
    "COMPARE_LAYOUT",
    "COMPARE_VIEWS",
    "METHODS",
    "SuperResolution",
    "SuperResolutionJob",
    "SuperResolutionMethod",
    "imagePlane",
    "showSideBySide",
    "superResolutionArguments",
    "superResolvedGeometry",
]
