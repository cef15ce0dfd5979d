"""RF frame volumes <-> arrays for strain elastography.

An RF recording is a scalar volume with one frame per K slice: array ``(T, H, W)`` with H
axial samples (J) and W beam lines (I). Strain is estimated between frame pairs and
stored as a volume of the same geometry, one strain frame (in %) per pair.
"""

from __future__ import annotations

import numpy as np
import slicer
from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume, volumeToArray


def rfFramesFromVolume(rfVolume: slicer.vtkMRMLScalarVolumeNode) -> tuple[np.ndarray, VolumeGeometry]:
    """RF frames ``(T, H, W)`` float32 and their geometry.

    Raises:
        ValueError: not a scalar volume, fewer than 2 frames, or non-finite samples.
    """
    if rfVolume is not None and rfVolume.IsA("vtkMRMLVectorVolumeNode"):
        raise ValueError(
            f"'{rfVolume.GetName()}' is a vector volume: RF data must be a scalar volume, one frame per slice"
        )
    frames, geometry = volumeToArray(rfVolume)
    if frames.shape[0] < 2:
        raise ValueError(
            f"'{rfVolume.GetName()}' holds {frames.shape[0]} frame(s) of "
            f"{frames.shape[1]} x {frames.shape[2]} samples: "
            "strain needs at least 2 frames (stacked as slices)"
        )
    frames = frames.astype(np.float32, copy=False)
    if not np.all(np.isfinite(frames)):
        raise ValueError(f"'{rfVolume.GetName()}' contains NaN or infinite samples")
    return frames, geometry


def framePairs(frameCount: int, step: int) -> list[tuple[int, int]]:
    """Pairs ``(t, t + step)`` of frame indices whose strain is estimated, in time order.

    Raises:
        ValueError: ``step < 1`` or ``step >= frameCount``.
    """
    if step < 1 or step >= frameCount:
        raise ValueError(f"Frame step {step} needs 1 <= step < number of frames ({frameCount})")
    return [(t, t + step) for t in range(frameCount - step)]


def writeStrainFrames(
    strainPercent: np.ndarray, strainVolume: slicer.vtkMRMLScalarVolumeNode, rfGeometry: VolumeGeometry
) -> None:
    """Store axial strain ``(P, H, W)`` in % (one frame per pair) in ``strainVolume``, on the RF frames' grid."""
    strainPercent = np.asarray(strainPercent)
    if strainPercent.ndim != 3:
        raise ValueError(f"Strain must be (pairs, H, W), got shape {strainPercent.shape}")
    arrayToVolume(strainPercent.astype(np.float32, copy=False), strainVolume, rfGeometry)
