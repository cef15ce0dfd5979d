"""Lateral super-resolution: the output grid and MRML plumbing.

Images are ``(K, H, W)``: H axial samples (J), W beam lines (I), K frames. Only the lateral
axis is upsampled: a factor ``F`` gives ``(K, H, F * W)`` with lateral spacing divided by
``F``, and the output pixels tile exactly the lateral extent of the input pixels.
"""

from __future__ import annotations

import numpy as np
import slicer
from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume, volumeToArray


def superResolvedGeometry(geometry: VolumeGeometry, factor: int) -> VolumeGeometry:
    """Geometry of the image upsampled ``factor`` times along I (lateral).

    The lateral spacing becomes ``s / factor`` and the first pixel centre moves by
    ``-s (factor - 1) / (2 factor)`` along I, so that the outer pixel edges stay where they were.

    Raises:
        ValueError: ``factor < 1``.
    """
    if factor < 1:
        raise ValueError(f"Upsampling factor must be >= 1, got {factor}")
    matrix = geometry.ijkToRas.copy()
    lateralStep = matrix[:3, 0].copy()
    matrix[:3, 0] = lateralStep / factor
    matrix[:3, 3] -= lateralStep * (factor - 1) / (2 * factor)
    return VolumeGeometry(matrix)


def superResolutionInput(inputVolume: slicer.vtkMRMLScalarVolumeNode) -> tuple[np.ndarray, VolumeGeometry]:
    """Frames ``(K, H, W)`` float32 and their geometry.

    Raises:
        ValueError: a vector volume, fewer than 2 beam lines, or non-finite pixels.
    """
    if inputVolume is not None and inputVolume.IsA("vtkMRMLVectorVolumeNode"):
        raise ValueError(f"'{inputVolume.GetName()}' is a vector volume: choose a scalar (B-mode or RF) volume")
    frames, geometry = volumeToArray(inputVolume)
    if frames.shape[2] < 2:
        raise ValueError(f"'{inputVolume.GetName()}' has {frames.shape[2]} beam line(s): lateral upsampling needs >= 2")
    frames = frames.astype(np.float32, copy=False)
    if not np.all(np.isfinite(frames)):
        raise ValueError(f"'{inputVolume.GetName()}' contains NaN or infinite pixels")
    return frames, geometry


def writeSuperResolved(
    frames: np.ndarray, outputVolume: slicer.vtkMRMLScalarVolumeNode, inputGeometry: VolumeGeometry, factor: int
) -> None:
    """Store upsampled frames ``(K, H, factor * W)`` on the grid :func:`superResolvedGeometry` gives."""
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"Super-resolved frames must be (K, H, W), got shape {frames.shape}")
    arrayToVolume(frames.astype(np.float32, copy=False), outputVolume, superResolvedGeometry(inputGeometry, factor))
