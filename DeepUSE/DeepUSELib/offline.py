"""Offline strain of a loaded RF recording: a volume with one frame per slice, or a sequence of frames.

The engine's offline estimators (``StrainEstimator``, ``BlockMatchingEstimator``; see
:mod:`.engine`) estimate every frame pair at once; this module moves the frames out of the
nodes and the strain back in, on the RF grid:

- a volume ``(N, H, W)`` (K frames, J axial, I lateral) -> a strain volume ``(N-1, H, W)`` with the
  same IJK-to-RAS; slice ``k`` is the pair (reference, frame ``k+1``);
- a sequence of N single-slice volumes -> a sequence of N-1 strain volumes, item ``k`` at the index
  value of frame ``k+1``, on the grid of its pair's fixed frame (where the displacement lives).

The reference frame of each pair is the first frame (``pairWithPrevious=False``, how ReUSENet is
used) or the previous one.

Every strain frame has the engine's quality figure (the NCC of its frames after warping by the
estimate; flagged when the estimate does not explain them). :class:`OfflineStrain` holds it per
frame, its summary names the flagged frames, and :func:`setQualityAttributes` stores it on the
strain node (attributes :data:`NCC_AFTER_ATTRIBUTE`, :data:`FLAGGED_ATTRIBUTE`: one value per
frame, comma-separated) for views and scripts.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np
import slicer
from DeepUltrasoundCommonLib import VolumeGeometry, arrayToVolume, framesOfSequence, shownItemNumber

from .logic import rfFramesFromVolume, writeStrainFrames

NCC_AFTER_ATTRIBUTE = "DeepUSE.NccAfter"
FLAGGED_ATTRIBUTE = "DeepUSE.QualityFlagged"


@dataclass(frozen=True)
class OfflineStrain:
    """What an offline run produced (for the status line).

    Attributes:
        strain: ``(N-1, H, W)`` float32 axial strain in %.
        method: the estimator's name ("block matching" or the model name).
        reference: ``"first"`` or ``"previous"``.
        nccAfter: ``(N-1,)`` NCC of each pair after warping by its estimate (the quality figure).
        flagged: ``(N-1,)`` bool: strain frames not to trust.
    """

    strain: np.ndarray
    method: str
    reference: str
    nccAfter: np.ndarray
    flagged: np.ndarray

    def summary(self) -> str:
        pairs, height, width = self.strain.shape
        text = (
            f"{pairs} strain frame(s) of {height} x {width} ({self.method}, reference: {self.reference} frame), "
            f"strain {self.strain.min():.3g} .. {self.strain.max():.3g} %"
        )
        flagged = np.flatnonzero(self.flagged)
        if flagged.size:
            frames = ", ".join(str(k) for k in flagged)
            text += f"; FLAGGED frame(s) {frames}: the estimate does not explain the RF pair, do not trust them"
        return text


def setQualityAttributes(strainNode: slicer.vtkMRMLNode, nccAfter: np.ndarray, flagged: np.ndarray) -> None:
    """Store the per-frame quality figure on ``strainNode`` (see the module docstring)."""
    strainNode.SetAttribute(NCC_AFTER_ATTRIBUTE, ",".join(f"{value:.4f}" for value in nccAfter))
    strainNode.SetAttribute(FLAGGED_ATTRIBUTE, ",".join(str(int(value)) for value in flagged))


def flaggedFrames(strainNode: slicer.vtkMRMLNode) -> list[int]:
    """Indices of the strain frames of ``strainNode`` flagged by :func:`setQualityAttributes` (none if unset)."""
    values = strainNode.GetAttribute(FLAGGED_ATTRIBUTE) or ""
    return [k for k, value in enumerate(values.split(",")) if value == "1"]


def strainPairs(frameCount: int, pairWithPrevious: bool) -> np.ndarray:
    """``(N-1, 2)`` int (fixed, moving) frame indices of the pairs whose strain is estimated, in time order:
    ``(0, k)`` or, with ``pairWithPrevious``, ``(k-1, k)``, for k = 1 .. N-1."""
    moving = np.arange(1, frameCount)
    return np.stack([moving - 1 if pairWithPrevious else np.zeros_like(moving), moving], axis=1)


def writeStrainSequence(
    strainPercent: np.ndarray,
    pairs: np.ndarray,
    rfSequence: slicer.vtkMRMLSequenceNode,
    geometries: list[VolumeGeometry],
    values: list[str],
    strainSequence: slicer.vtkMRMLSequenceNode,
) -> None:
    """Replace the items of ``strainSequence`` by strain ``(P, H, W)`` in %, one item per pair.

    Item ``k`` is pair ``pairs[k]`` = (fixed, moving), stored at the moving frame's index value
    (``values``) on the fixed frame's grid (``geometries``); the index name, unit and type are
    ``rfSequence``'s.
    """
    strainSequence.RemoveAllDataNodes()
    strainSequence.SetIndexName(rfSequence.GetIndexName())
    strainSequence.SetIndexUnit(rfSequence.GetIndexUnit())
    strainSequence.SetIndexType(rfSequence.GetIndexType())
    item = slicer.vtkMRMLScalarVolumeNode()  # staging node outside the scene; the sequence keeps copies
    for strain, (fixed, moving) in zip(strainPercent, pairs, strict=True):
        arrayToVolume(strain, item, geometries[fixed])
        strainSequence.SetDataNodeAtValue(item, values[moving])


def shownItemFlagged(browser: slicer.vtkMRMLSequenceBrowserNode, strainSequence: slicer.vtkMRMLSequenceNode) -> bool:
    """Whether the strain item that ``browser`` shows now (the one at its selected index value) is flagged
    (:func:`flaggedFrames`); False where that value has no strain item (the first frame)."""
    item = shownItemNumber(browser, strainSequence)
    return item >= 0 and item in flaggedFrames(strainSequence)


def _offlineStrain(result, method: str, reference: str) -> OfflineStrain:
    """:class:`OfflineStrain` of an engine ``StrainResult``."""
    nccAfter = np.array([quality.ncc_after for quality in result.quality], dtype=float)
    return OfflineStrain(result.strain, method, reference, nccAfter, result.flagged)


def _estimate(estimator, frames: np.ndarray, axialSpacingMm: float, pairWithPrevious: bool, windowMm: float):
    reference = "previous" if pairWithPrevious else "first"
    return estimator.estimate(frames, axialSpacingMm, reference=reference, window_mm=windowMm), reference


def strainOfVolume(
    rfVolume: slicer.vtkMRMLScalarVolumeNode,
    strainVolume: slicer.vtkMRMLScalarVolumeNode,
    estimator,
    windowMm: float,
    pairWithPrevious: bool = False,
    bmodeVolume: slicer.vtkMRMLScalarVolumeNode | None = None,
) -> OfflineStrain:
    """Strain of every frame pair of ``rfVolume`` (frames along K) into ``strainVolume``, same geometry.

    Args:
        rfVolume: RF frames ``(N, H, W)``, N >= 2.
        strainVolume: output, ``(N-1, H, W)`` float32 in %.
        estimator: an engine estimator with ``estimate(rf, axial_spacing_mm, reference, window_mm)``
            and ``name`` (see :func:`.engine.createEstimator`).
        windowMm: axial least-squares strain window in mm.
        pairWithPrevious: pair each frame with the previous one instead of the first.
        bmodeVolume: optional output, ``(N-1, H, W)`` float32 B-mode in dB of each pair's fixed
            frame (the grid the strain lives on), to show under the strain.

    Raises:
        ValueError: invalid frames (see :func:`.logic.rfFramesFromVolume`), no output, or a
            window longer than the frames.
    """
    if strainVolume is None:
        raise ValueError("Select or create a strain output volume")
    frames, geometry = rfFramesFromVolume(rfVolume)
    result, reference = _estimate(estimator, frames, float(geometry.spacing[1]), pairWithPrevious, windowMm)
    writeStrainFrames(result.strain, strainVolume, geometry)
    if bmodeVolume is not None:
        bmode = importlib.import_module("deepultrasound.spatial.bmode")
        arrayToVolume(bmode.bmode_db(frames[result.pairs[:, 0]]), bmodeVolume, geometry)
    offline = _offlineStrain(result, estimator.name, reference)
    setQualityAttributes(strainVolume, offline.nccAfter, offline.flagged)
    return offline


def rfFramesFromSequence(rfSequence: slicer.vtkMRMLSequenceNode) -> tuple[np.ndarray, list[VolumeGeometry], list[str]]:
    """Frames ``(N, H, W)`` float32, the geometry of each and their index values.

    Raises:
        ValueError: fewer than 2 items, an item that is not a single-slice scalar volume, frames
            of different sizes, or non-finite samples.
    """
    if rfSequence is None:
        raise ValueError("No RF sequence selected")
    stacked, geometries, values = framesOfSequence(rfSequence, "strain")
    stacked = stacked.astype(np.float32, copy=False)
    if not np.all(np.isfinite(stacked)):
        raise ValueError(f"Sequence '{rfSequence.GetName()}' contains NaN or infinite samples")
    return stacked, geometries, values


def strainOfSequence(
    rfSequence: slicer.vtkMRMLSequenceNode,
    strainSequence: slicer.vtkMRMLSequenceNode,
    estimator,
    windowMm: float,
    pairWithPrevious: bool = False,
) -> OfflineStrain:
    """Strain of every frame pair of ``rfSequence`` into ``strainSequence`` (its items are replaced).

    Item ``k`` of the output is the pair (reference, frame ``k+1``), stored at frame ``k+1``'s
    index value on the grid of the pair's fixed frame; the index name, unit and type are the RF
    sequence's. Arguments as :func:`strainOfVolume`.

    Raises:
        ValueError: see :func:`rfFramesFromSequence`; no output; a window longer than the frames.
    """
    if strainSequence is None:
        raise ValueError("Select or create a strain output sequence")
    frames, geometries, values = rfFramesFromSequence(rfSequence)
    result, reference = _estimate(estimator, frames, float(geometries[0].spacing[1]), pairWithPrevious, windowMm)
    writeStrainSequence(result.strain, result.pairs, rfSequence, geometries, values, strainSequence)
    offline = _offlineStrain(result, estimator.name, reference)
    setQualityAttributes(strainSequence, offline.nccAfter, offline.flagged)
    return offline
