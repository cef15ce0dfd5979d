"""What is tracked: the frames of the input, and the CAMUS labels of the labelled frame.

Two kinds of input give the frames ``(T, H, W)`` (T >= 2; colour ``(T, H, W, C)``, made grey by the engine):

- the proxy volume of a sequence browser: the items of its sequence, single-slice volumes of one size,
  each on its own grid, with the sequence's index values (a time in s or ms gives the frame interval);
- a multi-frame volume: its slices along K; frame t lies on the volume's grid shifted by t slices.

The labels of one frame come from a segmentation (segments mapped to CAMUS labels by name or by
order, see :func:`.logic.segmentLabels`) or a label map volume holding CAMUS values; either is
resampled (nearest neighbour) onto the grid it is drawn on. The labelled frame is the one given,
or else, for a sequence, the item the browser shows, and, for a multi-frame volume, the only slice
that holds labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from DeepUltrasoundCommonLib import (
    VolumeGeometry,
    arrayToVolume,
    framesOfSequence,
    sequenceOfProxy,
    shownItemNumber,
    volumeToArray,
)

from .logic import CAMUS_LABELS, segmentLabels

#: relative difference of pixel sizes between frames that still counts as one pixel size
SPACING_TOLERANCE = 1e-4
#: index units of a sequence whose index values are times, and their value in seconds
TIME_UNITS_S = {"s": 1.0, "ms": 1e-3}


@dataclass(frozen=True)
class TrackingFrames:
    """The frames of one input, where each lies, and how they are indexed.

    Attributes:
        node: the input volume (a sequence's proxy, or the multi-frame volume).
        frames: ``(T, H, W)`` grey or ``(T, H, W, C)`` colour, in the input's dtype.
        geometries: IJK-to-RAS of each frame (a single-slice grid).
        indexValues: the index value of each frame (the sequence's; ``"0"``, ``"1"``, ... for a volume).
        indexName, indexUnit: the index's name and unit (``"frame"``, ``""`` for a volume).
        browser, sequence: the input's browser and sequence; None for a multi-frame volume.
    """

    node: slicer.vtkMRMLScalarVolumeNode
    frames: np.ndarray
    geometries: tuple[VolumeGeometry, ...]
    indexValues: tuple[str, ...]
    indexName: str
    indexUnit: str
    browser: slicer.vtkMRMLSequenceBrowserNode | None = None
    sequence: slicer.vtkMRMLSequenceNode | None = None

    @property
    def count(self) -> int:
        return len(self.frames)

    @property
    def colour(self) -> bool:
        return self.frames.ndim == 4

    def frameIntervalS(self) -> float | None:
        """Seconds between frames when the index is a time (s or ms) that grows evenly enough to average, else None."""
        scale = TIME_UNITS_S.get(self.indexUnit.strip())
        if scale is None:
            return None
        try:
            times = np.array([float(value) for value in self.indexValues]) * scale
        except ValueError:
            return None
        steps = np.diff(times)
        return float(steps.mean()) if np.all(steps > 0) else None

    def engineGeometry(self) -> VolumeGeometry:
        """The grid the frames are handed to the engine on: the frames' pixel size, the frame interval (1 when
        unknown) along K, axis-aligned at the origin. The engine measures in pixels and mm; placing the
        results in space is the module's."""
        lateral, axial = self.geometries[0].spacing[:2]
        return VolumeGeometry.fromSpacingOrigin((lateral, axial, self.frameIntervalS() or 1.0))


def framesOfInput(volumeNode: slicer.vtkMRMLScalarVolumeNode) -> TrackingFrames:
    """The frames of a sequence's proxy volume or of a multi-frame volume (see the module docstring).

    Raises:
        ValueError: no volume, fewer than 2 frames, items that are not single-slice volumes of one size,
            or frames of different pixel sizes.
    """
    if volumeNode is None:
        raise ValueError("Select the input sequence or multi-frame volume")
    found = sequenceOfProxy(volumeNode)
    if found is not None:
        browser, sequence = found
        frames, geometries, values = framesOfSequence(sequence, "tracking", colour=True)
        tracking = TrackingFrames(
            volumeNode,
            frames,
            tuple(geometries),
            tuple(values),
            sequence.GetIndexName(),
            sequence.GetIndexUnit(),
            browser,
            sequence,
        )
    else:
        frames, geometry = volumeToArray(volumeNode)
        if len(frames) < 2:
            raise ValueError(
                f"'{volumeNode.GetName()}' holds {len(frames)} frame: tracking needs a sequence (the proxy volume "
                "of a sequence browser) or a volume with one frame per slice, at least 2"
            )
        shift = np.zeros((4, 4))
        shift[:3, 3] = geometry.ijkToRas[:3, 2]  # one slice along K
        geometries = tuple(VolumeGeometry(geometry.ijkToRas + t * shift) for t in range(len(frames)))
        values = tuple(str(t) for t in range(len(frames)))
        tracking = TrackingFrames(volumeNode, frames, geometries, values, "frame", "")
    spacings = np.array([geometry.spacing[:2] for geometry in tracking.geometries])
    if not np.allclose(spacings, spacings[0], rtol=SPACING_TOLERANCE, atol=0.0):
        raise ValueError(
            f"The frames of '{volumeNode.GetName()}' differ in pixel size ({spacings.min(axis=0)} to "
            f"{spacings.max(axis=0)} mm): strain needs one pixel size"
        )
    return tracking


def labelledFrameOf(
    tracking: TrackingFrames, labelsNode: slicer.vtkMRMLNode, labelledFrame: int | None = None
) -> tuple[int, np.ndarray]:
    """``(r, labels)``: the labelled frame and its ``(H, W)`` uint8 CAMUS labels (see the module docstring).

    Args:
        labelledFrame: the labelled frame, from 0; None: the shown item of a sequence, the only labelled slice
            of a multi-frame volume.

    Raises:
        ValueError: no or an unusable labels node (see :func:`labelsOnGrid`), a frame outside the input, no
            labels on that frame, or several labelled slices of a volume and no frame given.
    """
    count, shape = tracking.count, tracking.frames.shape[1:3]
    if labelsNode is None:
        raise ValueError("Select the segmentation or label map of one frame")
    if labelledFrame is not None and not 0 <= labelledFrame < count:
        raise ValueError(f"Labelled frame {labelledFrame} is outside the frames 0..{count - 1} of the input")
    if tracking.sequence is not None:
        frame = labelledFrame
        if frame is None:
            frame = shownItemNumber(tracking.browser, tracking.sequence)
            if frame < 0:
                raise ValueError("The sequence browser shows no frame of the input: choose the labelled frame")
        labels = labelsOnGrid(labelsNode, tracking.geometries[frame], (1, *shape))[0]
    else:
        stack = labelsOnGrid(labelsNode, tracking.geometries[0], (count, *shape))
        labelled = [t for t in range(count) if stack[t].any()]
        frame = labelledFrame
        if frame is None:
            if len(labelled) != 1:
                where = f"on frames {', '.join(map(str, labelled))}" if labelled else "on none of its frames"
                raise ValueError(f"'{labelsNode.GetName()}' has labels {where}: choose the labelled frame")
            frame = labelled[0]
        labels = stack[frame]
    if not labels.any():
        raise ValueError(f"'{labelsNode.GetName()}' has no labels on frame {frame}: draw them or choose their frame")
    return frame, labels


def labelsOnGrid(labelsNode: slicer.vtkMRMLNode, geometry: VolumeGeometry, shape: tuple[int, int, int]) -> np.ndarray:
    """``(K, J, I)`` uint8 CAMUS labels of a segmentation or label map volume, on the grid ``geometry``/``shape``.

    Raises:
        ValueError: neither a segmentation nor a label map volume; a label map with values other than
            the CAMUS labels; see :func:`.logic.segmentLabels`.
    """
    scene = labelsNode.GetScene()
    if labelsNode.IsA("vtkMRMLLabelMapVolumeNode"):
        values = np.unique(volumeToArray(labelsNode)[0])
        outside = [int(value) for value in values if value != 0 and value not in CAMUS_LABELS]
        if outside:
            raise ValueError(
                f"'{labelsNode.GetName()}' holds labels {', '.join(map(str, outside[:8]))}: expected CAMUS labels "
                "(0 background, 1 LV cavity, 2 myocardium, 3 left atrium)"
            )
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"reading {labelsNode.GetName()}")
        try:
            if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelsNode, segmentation):
                raise ValueError(f"Could not read the labels of '{labelsNode.GetName()}'")
            segments = segmentation.GetSegmentation()
            ids = [segments.GetNthSegmentID(n) for n in range(segments.GetNumberOfSegments())]
            pairs = [(segments.GetSegment(segmentId).GetLabelValue(), segmentId) for segmentId in ids]
            return _rasterise(segmentation, pairs, geometry, shape)
        finally:
            _removeWithDisplay(scene, segmentation)
    if not labelsNode.IsA("vtkMRMLSegmentationNode"):
        raise ValueError(f"'{labelsNode.GetName()}' is neither a segmentation nor a label map volume")
    segments = labelsNode.GetSegmentation()
    ids = [segments.GetNthSegmentID(n) for n in range(segments.GetNumberOfSegments())]
    labels = segmentLabels([segments.GetSegment(segmentId).GetName() for segmentId in ids])
    return _rasterise(labelsNode, list(zip(labels, ids)), geometry, shape)


def _rasterise(
    segmentation: slicer.vtkMRMLSegmentationNode,
    pairs: list[tuple[int, str]],
    geometry: VolumeGeometry,
    shape: tuple[int, int, int],
) -> np.ndarray:
    """Labels ``shape`` uint8: each ``(label, segment ID)`` of ``pairs`` exported onto the grid, in label order
    (where segments overlap, the higher label wins)."""
    scene = segmentation.GetScene()
    reference = slicer.vtkMRMLScalarVolumeNode()  # outside the scene: it only carries the grid
    arrayToVolume(np.zeros(shape, np.uint8), reference, geometry)
    labels = np.zeros(shape, np.uint8)
    existing = {node.GetID() for node in scene.GetNodesByClass("vtkMRMLColorNode")}
    for label, segmentId in sorted(pairs):
        staging = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"reading segment {segmentId}")
        try:
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segmentId)
            exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation, ids, staging, reference, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
            )
            if not exported:
                raise ValueError(f"Could not read segment '{segmentId}' of '{segmentation.GetName()}'")
            labels[slicer.util.arrayFromVolume(staging) > 0] = label
        finally:
            display = staging.GetDisplayNode()
            colour = display.GetColorNode() if display is not None else None
            if colour is not None and colour.GetID() not in existing:  # made for the export
                scene.RemoveNode(colour)
            _removeWithDisplay(scene, staging)
    return labels


def _removeWithDisplay(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLDisplayableNode) -> None:
    """Remove ``node`` and its display nodes from ``scene``."""
    displays = [node.GetNthDisplayNode(index) for index in range(node.GetNumberOfDisplayNodes())]
    for display in displays:
        if display is not None:
            scene.RemoveNode(display)
    scene.RemoveNode(node)
