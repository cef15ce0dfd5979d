"""Label maps in, synthetic B-mode images out, on the label map's grid.

A label map volume holds one 2-D label frame per K slice, ``(K, H, W)`` with H axial (J)
and W lateral (I) pixels; each frame conditions one synthetic image of the same size.
"""

from __future__ import annotations

import numpy as np
import slicer
from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume, labelMapToArray


def synthesisInput(labelVolume: slicer.vtkMRMLLabelMapVolumeNode) -> tuple[np.ndarray, VolumeGeometry]:
    """Label frames ``(K, H, W)`` int32 and their geometry.

    Raises:
        ValueError: not a label map, negative labels, or only background (nothing to condition on).
    """
    labels, geometry = labelMapToArray(labelVolume)
    if not np.any(labels):
        raise ValueError(f"'{labelVolume.GetName()}' contains only background (label 0): draw or load anatomy labels")
    return labels, geometry


def labelSummary(labels: np.ndarray) -> str:
    """One line naming the frames and labels present, e.g. ``"2 frame(s) of 64 x 48, labels 0, 1, 3"``."""
    values = ", ".join(str(value) for value in np.unique(labels))
    return f"{labels.shape[0]} frame(s) of {labels.shape[1]} x {labels.shape[2]}, labels {values}"


def writeSynthesizedImages(
    images: np.ndarray, outputVolume: slicer.vtkMRMLScalarVolumeNode, labelGeometry: VolumeGeometry
) -> None:
    """Store synthetic images ``(K, H, W)`` (B-mode intensity) on the label map's grid."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"Synthetic images must be (K, H, W), got shape {images.shape}")
    arrayToVolume(images.astype(np.float32, copy=False), outputVolume, labelGeometry)
