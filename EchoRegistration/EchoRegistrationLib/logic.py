"""Echo frames, displacement fields and label maps <-> MRML volumes.

A frame is a ``(1, H, W)`` volume with H axial (J) and W lateral (I) pixels. The engine
gives displacement in pixels as ``(2, H, W)``, channel 0 lateral and channel 1 axial; the
module stores it in mm as a two-component vector volume ``(1, H, W, 2)`` on the fixed
frame's grid, so it can be measured and displayed in Slicer.
"""

from __future__ import annotations

import numpy as np
import slicer
from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume, volumeToArray


def checkSameGrid(
    fixedVolume: slicer.vtkMRMLScalarVolumeNode, movingVolume: slicer.vtkMRMLScalarVolumeNode, toleranceMm: float = 1e-3
) -> None:
    """Make sure both volumes have the same voxel grid (shape, spacing, origin, directions).

    Raises:
        ValueError: a volume is missing, or the grids differ; the message gives both.
    """
    fixed, fixedGeometry = volumeToArray(fixedVolume)
    moving, movingGeometry = volumeToArray(movingVolume)
    if fixed.shape != moving.shape:
        raise ValueError(
            f"Fixed '{fixedVolume.GetName()}' {fixed.shape} and moving '{movingVolume.GetName()}' {moving.shape} "
            "differ in size: resample the moving frame onto the fixed one first"
        )
    if not fixedGeometry.isClose(movingGeometry, toleranceMm):
        raise ValueError(
            f"Fixed '{fixedVolume.GetName()}' (spacing {fixedGeometry.spacing}, origin {fixedGeometry.origin}) and "
            f"moving '{movingVolume.GetName()}' (spacing {movingGeometry.spacing}, origin {movingGeometry.origin}) "
            "lie on different grids: resample the moving frame onto the fixed one first"
        )


def displacementToVolume(
    displacementPixels: np.ndarray, displacementVolume: slicer.vtkMRMLVectorVolumeNode, fixedGeometry: VolumeGeometry
) -> None:
    """Store a displacement ``(2, H, W)`` in pixels (channel 0 lateral, 1 axial) as mm in a vector volume.

    Lateral pixels are scaled by the I spacing, axial pixels by the J spacing of ``fixedGeometry``.
    """
    displacementPixels = np.asarray(displacementPixels)
    if displacementPixels.ndim != 3 or displacementPixels.shape[0] != 2:
        raise ValueError(f"Displacement must be (2, H, W) with channel 0 lateral, got shape {displacementPixels.shape}")
    if displacementVolume is None or not displacementVolume.IsA("vtkMRMLVectorVolumeNode"):
        raise ValueError("Choose a vector volume for the displacement output")
    lateralMm, axialMm = fixedGeometry.spacing[0], fixedGeometry.spacing[1]
    displacementMm = np.stack([displacementPixels[0] * lateralMm, displacementPixels[1] * axialMm], axis=-1).astype(
        np.float32
    )
    arrayToVolume(displacementMm[np.newaxis], displacementVolume, fixedGeometry)
