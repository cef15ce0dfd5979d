"""Lateral super-resolution: the output grid and the engine command line.

Images are ``(K, H, W)``: H axial samples (J), W beam lines (I), K frames. Only the lateral axis is
upsampled: a factor ``F`` gives ``(K, H, F * W)`` on the engine's fine grid (see
``deepultrasound.superres.degradation``): lateral spacing divided by ``F`` and the same origin, so
that input line ``k`` lies at output line ``k F`` (sub-sampling phase 0); the last ``F - 1`` output
lines lie right of the last input line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from DeepUltrasoundCommonLib import EngineMethod, VolumeGeometry

#: how the lines are made: a network (a model bundle) or a classical interpolation across lines
METHODS = ("network", "cubic", "linear")


def superResolvedGeometry(geometry: VolumeGeometry, factor: int) -> VolumeGeometry:
    """Geometry of the image upsampled ``factor`` times along I (lateral).

    The I column of IJK-to-RAS is divided by ``factor`` (spacing ``s / factor``, same direction);
    the origin, J and K are kept, so RAS(output voxel ``(k factor, j, n)``) = RAS(input voxel ``(k, j, n)``).

    Raises:
        ValueError: ``factor < 1``.
    """
    if factor < 1:
        raise ValueError(f"Upsampling factor must be >= 1, got {factor}")
    matrix = geometry.ijkToRas.copy()
    matrix[:3, 0] /= factor
    return VolumeGeometry(matrix)


@dataclass(frozen=True)
class SuperResolutionMethod(EngineMethod):
    """How the lines are made (see :class:`DeepUltrasoundCommonLib.EngineMethod`); with ``"network"`` and no model,
    the engine's model of the factor."""

    METHODS: ClassVar[tuple[str, ...]] = METHODS
    NOUN: ClassVar[str] = "super-resolution"
    CLASSICAL: ClassVar[str] = "{method} interpolation"


def superResolutionArguments(
    inputPath: Path, outputPath: Path, factor: int, method: SuperResolutionMethod
) -> list[str]:
    """The ``deepultrasound superres`` command line of ``method`` for these files."""
    arguments = ["superres", str(inputPath), "--factor", str(factor), "-o", str(outputPath)]
    if method.method != "network":
        return arguments + ["--method", method.method]
    return arguments + (["--model", method.model] if method.model else []) + ["--device", method.device]
