"""Echo tracking: the label convention, the method and its command line, and displacements between grids.

Frames are ``(T, H, W)``: H axial samples (J), W lateral pixels (I), T frames. Labels follow CAMUS
(:data:`CAMUS_LABELS`). ``deepultrasound track`` gives, for every frame t, a displacement ``u_t`` in
pixels ``(2, H, W)`` (channel 0 lateral, 1 axial) onto the labelled frame r: pixel p of frame t
shows the tissue that lies at pixel ``p + u_t(p)`` of frame r. In Slicer this becomes, on frame
t's grid, the displacement in RAS mm

    ``d_t(x) = G_r(p + u_t(p)) - G_t(p)``  for the point ``x = G_t(p)``,

with ``G`` the IJK-to-RAS of a frame: the resampling ("from parent") transform that takes each point
of frame t to its point in the labelled frame. A node on the labelled frame placed under it shows
moved onto frame t. Frames of a sequence usually share one grid (``G_r = G_t``); the slices of a
multi-frame volume lie one K step apart, which ``d_t`` includes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from DeepUltrasoundCommonLib import EngineMethod, VolumeGeometry

#: CAMUS label values and what they mark (0 is background)
CAMUS_LABELS = {1: "LV cavity", 2: "myocardium", 3: "left atrium"}
#: segment names (lower case, words separated by spaces) taken for each CAMUS label
SEGMENT_NAMES = {
    1: ("lv cavity", "lv", "left ventricle", "lv blood pool", "lv endocardium", "endocardium"),
    2: ("myocardium", "myo", "lv myocardium", "lv wall"),
    3: ("left atrium", "la", "atrium"),
}
#: how the displacement is computed: the registration network, or a classical baseline of the engine
METHODS = ("network", "elastix", "farneback")
#: LPS <-> RAS: the first two axes flip (its own inverse)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def labelOfSegmentName(name: str) -> int | None:
    """The CAMUS label a segment named ``name`` stands for (any case; ``_`` or ``-`` between words), or None."""
    words = " ".join(name.lower().replace("_", " ").replace("-", " ").split())
    return next((label for label, names in SEGMENT_NAMES.items() if words in names), None)


def segmentLabels(names: list[str]) -> list[int]:
    """The CAMUS label of each segment of a segmentation, given the segment names in order.

    By name when every segment is named after a structure (see :data:`SEGMENT_NAMES`), else by
    order: the first segment is the LV cavity (1), the second the myocardium (2), the third the
    left atrium (3).

    Raises:
        ValueError: no segments, two segments named after one structure, or more than three segments
            that are not all named after a structure.
    """
    if not names:
        raise ValueError("The segmentation has no segments: draw the LV cavity, myocardium and left atrium")
    byName = [labelOfSegmentName(name) for name in names]
    if None not in byName:
        repeated = sorted({CAMUS_LABELS[label] for label in byName if byName.count(label) > 1})
        if repeated:
            raise ValueError(f"Several segments are named after the {', '.join(repeated)}: keep one of each")
        return byName
    if len(names) > len(CAMUS_LABELS):
        raise ValueError(
            f"The segmentation has {len(names)} segments ({', '.join(names)}): name them LV cavity, myocardium "
            "and left atrium, or keep only these three, in this order"
        )
    return list(range(1, len(names) + 1))


@dataclass(frozen=True)
class TrackingMethod(EngineMethod):
    """How the frame-to-frame displacements are computed (see :class:`DeepUltrasoundCommonLib.EngineMethod`)."""

    METHODS: ClassVar[tuple[str, ...]] = METHODS
    NOUN: ClassVar[str] = "tracking"
    CLASSICAL: ClassVar[str] = "{method}"


def trackingArguments(
    sequencePath: Path, labelsPath: Path, labelledFrame: int, outputFolder: Path, method: TrackingMethod
) -> list[str]:
    """The ``deepultrasound track`` command line of ``method`` for these files."""
    arguments = ["track", str(sequencePath), "--labels", str(labelsPath), "--frame", str(labelledFrame)]
    arguments += ["-o", str(outputFolder), "--method", method.method]
    if method.method != "network":
        return arguments
    return arguments + (["--model", method.model] if method.model else []) + ["--device", method.device]


def pixelsFromEngineDisplacement(displacementLps: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """Displacements ``(T, H, W, 2)`` as the engine writes them -> ``(T, 2, H, W)`` pixels (channel 0 lateral).

    The engine stores ``d = D diag(s) u`` per pixel: mm along the in-plane LPS axes of its grid,
    with D the in-plane block of the grid's LPS directions and s its pixel size; this inverts it.

    Args:
        displacementLps: ``(T, H, W, 2)`` mm, as read from the file (components not converted to RAS).
        geometry: the file's grid as Slicer reads it (RAS).

    Raises:
        ValueError: the grid's I and J axes have no invertible in-plane LPS block.
    """
    inPlane = (LPS_TO_RAS @ geometry.directions)[:2, :2]
    if abs(np.linalg.det(inPlane)) < 1e-6:
        raise ValueError(f"The engine's displacement grid lies outside its in-plane axes (directions {inPlane})")
    scaled = np.einsum("ij,thwj->tihw", np.linalg.inv(inPlane), displacementLps.astype(np.float64))
    return (scaled / geometry.spacing[:2, None, None]).astype(np.float32)


def displacementRas(pixels: np.ndarray, frameGeometry: VolumeGeometry, labelledGeometry: VolumeGeometry) -> np.ndarray:
    """``(H, W, 3)`` RAS mm displacement on frame t's grid onto the labelled frame (see the module docstring).

    Args:
        pixels: ``(2, H, W)`` displacement of frame t in pixels (channel 0 lateral).
        frameGeometry: IJK-to-RAS of frame t (``G_t``).
        labelledGeometry: IJK-to-RAS of the labelled frame (``G_r``).
    """
    _, height, width = pixels.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    frameIj = np.stack([cols, rows])
    labelledIj = frameIj + pixels
    target = np.einsum("ri,ihw->hwr", labelledGeometry.ijkToRas[:3, :2], labelledIj) + labelledGeometry.origin
    source = np.einsum("ri,ihw->hwr", frameGeometry.ijkToRas[:3, :2], frameIj) + frameGeometry.origin
    return target - source
