"""Myocardial strain and ejection fraction from tracked label maps and displacements (apical views).

Geometry: a label map is ``(H, W)`` in CAMUS values (1 LV cavity, 2 myocardium); points are
``(N, 2)`` float64 ``(x, y)`` = (column, row) in pixels; ``spacing`` is ``(lateral, axial)`` mm
per pixel (lengths in mm and volumes in ml; with spacing ``(1, 1)`` in pixels and pixel^3 / 1000).

**Contours.** The endocardial contour is the LV cavity's outline (OpenCV, pixel centres of the
cavity's boundary) opened at the mitral plane: the longest run of outline pixels with no
myocardium among their 8 neighbours is the opening (towards the atrium), dropped, so the contour
runs base -> apex -> base like the contour of speckle-tracking GLS. It is smoothed (Gaussian of
:data:`SMOOTHING_PX` along its length: a pixel staircase would add length that does not stretch
with the tissue) and resampled to :data:`CONTOUR_POINTS` points evenly spaced along it. Along the
outward normal of each point the wall is crossed, from where the myocardium starts to where it
ends (both distances smoothed along the contour like the contour itself): the mid-wall contour
runs half-way across, the epicardial one at the far side.

**Tracking (Lagrangian).** The reference frame's contour points are material points: with
``w_t`` the displacement on frame t's grid that maps frame t onto the reference frame (the field
that warps the reference labels onto frame t, ``reference(p + w_t(p)) ~ frame_t(p)``), a
reference point ``x`` lies at the ``y`` of frame t with ``y + w_t(y) = x``, found by fixed-point
iteration (:func:`track_points`). So strain follows the tissue, not re-segmented outlines. The
tracked points' displacements are smoothed along the contour (Gaussian of
:data:`TRACK_SMOOTHING_POINTS` points): noise from point to point of a measured field makes a zigzag,
which is always longer, and so biases GLS towards lengthening. On a simulated 4-chamber sequence
(160 px, ED -> ES) tracked by Farneback flow, GLS was +72 % unsmoothed and -8.9 % smoothed (truth
-15.9 %); through the true motion the smoothing moves GLS by 0.1 percentage point (the ends are
extended by point reflection, so a linear trend is kept up to them).

**Figures** (:func:`strain_curves`): per frame the endocardial and mid-wall contour lengths and
the mean wall thickness of the tracked points, the LV cavity area and the long axis of each
frame's label map. End-diastole is the frame of largest LV area, end-systole of smallest. GLS
(endocardial, mid-wall) is the contour length's change from end-diastole in %, radial strain the
wall thickness's; shortening and thinning are negative. Volumes by the single-plane area-length
method ``V = 8 A^2 / (3 pi L)`` (A the cavity area, L the long axis from the mid-point of the
mitral plane to the farthest point of the contour, the apex); EF = ``(EDV - ESV) / EDV``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d, map_coordinates

from deepultrasound.errors import InputError
from deepultrasound.io.camus import CamusLabel

logger = logging.getLogger(__name__)

CONTOUR_POINTS = 101
"""Points of a resampled contour."""
SMOOTHING_PX = 2.0
"""Standard deviation, in pixels of length along the outline, of the contour's smoothing."""
WALL_SEARCH_PX = 40.0
"""Farthest distance along a normal searched for the myocardium's outer border, pixels."""
TRACK_SMOOTHING_POINTS = 2.0
"""Standard deviation, in contour points (1 % of the contour each), of the smoothing of tracked displacements."""
_WALL_STEP_PX = 0.25
_TRACK_ITERATIONS = 30


def _lv_outline(labels: np.ndarray) -> np.ndarray:
    """Closed outline ``(M, 2)`` (x, y) of the largest LV cavity component; InputError when there is none."""
    mask = (labels == CamusLabel.LV_CAVITY).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        raise InputError("the label map has no LV cavity (label 1); strain needs the LV cavity and its myocardium")
    outline = max(contours, key=cv2.contourArea)[:, 0, :].astype(np.float64)
    if len(outline) < 8:
        raise InputError(f"the LV cavity is too small for a contour ({len(outline)} outline pixels)")
    return outline


def _touches_myocardium(labels: np.ndarray, outline: np.ndarray) -> np.ndarray:
    """``(M,)`` bool: the outline pixel has myocardium among its 8 neighbours."""
    myocardium = (labels == CamusLabel.MYOCARDIUM).astype(np.uint8)
    near = cv2.dilate(myocardium, np.ones((3, 3), np.uint8)).astype(bool)
    return near[outline[:, 1].astype(int), outline[:, 0].astype(int)]


def _open_at_base(outline: np.ndarray, touching: np.ndarray) -> np.ndarray:
    """The outline opened by dropping its longest circular run of points not touching the myocardium."""
    if touching.all():
        raise InputError("the LV cavity is closed by myocardium all around; the mitral plane cannot be found")
    if not touching.any():
        raise InputError("the LV cavity does not touch the myocardium (label 2); strain needs the myocardium")
    start = int(np.argmax(touching))  # rotate so that the outline starts on a touching point
    rolled_touch, rolled = np.roll(touching, -start), np.roll(outline, -start, axis=0)
    best_length, best_start, run_start = 0, 0, None
    for index, touch in enumerate([*rolled_touch, True]):
        if not touch and run_start is None:
            run_start = index
        elif touch and run_start is not None:
            if index - run_start > best_length:
                best_length, best_start = index - run_start, run_start
            run_start = None
    kept = np.r_[best_start + best_length : len(rolled), 0:best_start]
    return rolled[kept]


def resample_polyline(points: np.ndarray, count: int = CONTOUR_POINTS, smoothing: float = SMOOTHING_PX) -> np.ndarray:
    """An open polyline ``(M, 2)`` smoothed along its length (Gaussian, ``smoothing`` pixels) and resampled to
    ``count`` points evenly spaced along it."""
    step = np.hypot(*np.diff(points, axis=0).T)
    arc = np.r_[0.0, np.cumsum(step)]
    if arc[-1] <= 0:
        raise InputError("a contour of zero length cannot be resampled")
    even = np.linspace(0.0, arc[-1], max(len(points), 2 * count))
    dense = np.stack([np.interp(even, arc, points[:, axis]) for axis in range(2)], axis=1)
    sigma = smoothing * (len(even) - 1) / arc[-1]
    smooth = gaussian_filter1d(dense, sigma, axis=0, mode="nearest") if smoothing > 0 else dense
    arc = np.r_[0.0, np.cumsum(np.hypot(*np.diff(smooth, axis=0).T))]
    target = np.linspace(0.0, arc[-1], count)
    return np.stack([np.interp(target, arc, smooth[:, axis]) for axis in range(2)], axis=1)


def endocardial_contour(labels: np.ndarray, count: int = CONTOUR_POINTS) -> np.ndarray:
    """``(count, 2)`` endocardial contour points (x, y) in pixels, base -> apex -> base (see the module docstring).

    Raises:
        InputError: no LV cavity, no myocardium beside it, or no opening towards the atrium.
    """
    labels = _check_labels(labels)
    outline = _lv_outline(labels)
    return resample_polyline(_open_at_base(outline, _touches_myocardium(labels, outline)), count)


def _normals(points: np.ndarray) -> np.ndarray:
    """Unit normals ``(N, 2)`` of a polyline (its tangent turned by 90 degrees), one orientation for all."""
    tangent = np.gradient(points, axis=0)
    tangent /= np.maximum(np.hypot(*tangent.T), 1e-12)[:, None]
    return np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)


def _sample_labels(labels: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Nearest labels at ``(..., 2)`` (x, y) points; 0 outside the map."""
    coordinates = [points[..., 1].ravel(), points[..., 0].ravel()]
    values = map_coordinates(labels, coordinates, order=0, mode="constant", cval=0)
    return values.reshape(points.shape[:-1])


@dataclass(frozen=True)
class WallContours:
    """Contours across the LV wall of one label map, ``(N, 2)`` (x, y) pixels each, point k on one normal.

    Attributes:
        endocardium: :func:`endocardial_contour`.
        midwall: half-way across the myocardium along each outward normal.
        epicardium: where the myocardium ends.
    """

    endocardium: np.ndarray
    midwall: np.ndarray
    epicardium: np.ndarray


def wall_contours(labels: np.ndarray, count: int = CONTOUR_POINTS) -> WallContours:
    """The wall crossed along the outward normals of :func:`endocardial_contour` (see the module docstring).

    A normal that meets no myocardium within :data:`WALL_SEARCH_PX` takes the wall of its neighbours
    (interpolated along the contour); the distances are smoothed over :data:`SMOOTHING_PX` along it.
    """
    labels = _check_labels(labels)
    contour = endocardial_contour(labels, count)
    normals = _normals(contour)
    steps = np.arange(0.0, WALL_SEARCH_PX, _WALL_STEP_PX)
    if np.mean(_sample_labels(labels, contour + 2.0 * normals) == CamusLabel.LV_CAVITY) > 0.5:
        normals = -normals  # the normals pointed into the cavity
    along = _sample_labels(labels, contour[:, None, :] + steps[None, :, None] * normals[:, None, :])
    muscle = along == CamusLabel.MYOCARDIUM
    found = muscle.any(axis=1)
    if not found.any():
        raise InputError("no myocardium lies along the normals of the endocardial contour")
    entry = np.argmax(muscle, axis=1)
    after = muscle & (np.arange(len(steps))[None, :] >= entry[:, None])
    # the wall ends at the first non-muscle sample after the entry (or at the end of the search)
    leaving = ~after & (np.arange(len(steps))[None, :] > entry[:, None])
    exit_index = np.where(leaving.any(axis=1), np.argmax(leaving, axis=1), len(steps) - 1)
    index = np.arange(count)
    sigma = SMOOTHING_PX / max(polyline_length(contour, (1.0, 1.0)) / (count - 1), 1e-12)
    inner, outer = (
        gaussian_filter1d(np.interp(index, index[found], steps[which[found]]), sigma, mode="nearest")
        for which in (entry, exit_index)
    )
    return WallContours(
        endocardium=contour,
        midwall=contour + 0.5 * (inner + outer)[:, None] * normals,
        epicardium=contour + outer[:, None] * normals,
    )


def track_points(points: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """Where reference points lie in a frame: ``y`` with ``y + w(y) = x`` for each ``x`` of ``points``.

    Args:
        points: ``(N, 2)`` (x, y) pixels in the reference frame.
        displacement: ``(2, H, W)`` pixels on the frame's grid mapping it onto the reference frame
            (channel 0 lateral), bilinear between pixels and held at the border.

    Fixed-point iteration ``y <- x - w(y)``, converging where the field's gradient is below 1 (it is
    for a map without folds whose strain is under 100 %).
    """
    if displacement.ndim != 3 or displacement.shape[0] != 2:
        raise InputError(f"displacement must be (2, H, W) pixels, got shape {displacement.shape}")
    positions = points.astype(np.float64).copy()
    for _ in range(_TRACK_ITERATIONS):
        coordinates = [positions[:, 1], positions[:, 0]]
        field = np.stack([map_coordinates(channel, coordinates, order=1, mode="nearest") for channel in displacement])
        positions = points - field.T
    return positions


def _tracked(points: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """:func:`track_points`, the displacements smoothed along the contour (:data:`TRACK_SMOOTHING_POINTS`)."""
    moved = track_points(points, displacement) - points
    # extended by point reflection about each end, so that the smoothing keeps a linear trend up to the ends
    pad = min(len(moved) - 1, int(np.ceil(4 * TRACK_SMOOTHING_POINTS)))
    extended = np.concatenate([2 * moved[:1] - moved[pad:0:-1], moved, 2 * moved[-1:] - moved[-2 : -pad - 2 : -1]])
    smooth = gaussian_filter1d(extended, TRACK_SMOOTHING_POINTS, axis=0, mode="nearest")
    return points + smooth[pad : pad + len(moved)]


def polyline_length(points: np.ndarray, spacing: tuple[float, float]) -> float:
    """Length of an open polyline ``(N, 2)`` (x, y) pixels, in the units of ``spacing`` (lateral, axial)."""
    return float(np.hypot(*(np.diff(points, axis=0) * np.asarray(spacing)).T).sum())


def long_axis(contour: np.ndarray, spacing: tuple[float, float]) -> float:
    """Distance from the mid-point of the contour's two ends (the mitral plane) to its farthest point (the apex)."""
    base = 0.5 * (contour[0] + contour[-1])
    return float(np.hypot(*((contour - base) * np.asarray(spacing)).T).max())


def area_length_volume(labels: np.ndarray, spacing: tuple[float, float]) -> float:
    """LV volume (ml for mm spacing) of one label map by the area-length method ``8 A^2 / (3 pi L)``."""
    labels = _check_labels(labels)
    area = float((labels == CamusLabel.LV_CAVITY).sum()) * spacing[0] * spacing[1]
    length = long_axis(endocardial_contour(labels), spacing)
    return 8.0 * area**2 / (3.0 * np.pi * length) / 1000.0


@dataclass(frozen=True)
class StrainCurves:
    """Strain and LV figures over a sequence (see the module docstring); arrays are ``(T,)`` per frame.

    Attributes:
        lv_area: LV cavity area (mm^2).   lv_volume: area-length volume (ml).
        gls_endo, gls_mid: endocardial / mid-wall longitudinal strain from end-diastole (%).
        radial: radial strain (wall thickness change) from end-diastole (%).
        ed, es: frame indices of end-diastole (largest LV area) and end-systole (smallest).
        ejection_fraction: ``100 (V[ed] - V[es]) / V[ed]`` (%).
        units: "mm" when the spacing is physical, "px" for pixel units (videos).
    """

    lv_area: np.ndarray
    lv_volume: np.ndarray
    gls_endo: np.ndarray
    gls_mid: np.ndarray
    radial: np.ndarray
    ed: int
    es: int
    ejection_fraction: float
    units: str

    @property
    def gls(self) -> float:
        """Endocardial GLS at end-systole (%)."""
        return float(self.gls_endo[self.es])


def strain_curves(
    reference_labels: np.ndarray,
    displacements: np.ndarray,
    frame_labels: np.ndarray,
    spacing: tuple[float, float],
    units: str = "mm",
) -> StrainCurves:
    """Strain over a sequence from the labelled frame's contours tracked through the displacements.

    Args:
        reference_labels: ``(H, W)`` CAMUS labels of the labelled (reference) frame.
        displacements: ``(T, 2, H, W)`` pixels: frame t's displacement onto the reference frame (zero at the
            reference itself), as :func:`track_points` takes it.
        frame_labels: ``(T, H, W)`` label maps of every frame (the reference's warped by each displacement);
            a frame whose map has no endocardial contour gets a NaN volume (logged), and the EF is then NaN
            if it is the ED or ES frame.
        spacing: ``(lateral, axial)`` size of a pixel.
        units: the unit of ``spacing``, recorded in the result.
    """
    if displacements.ndim != 4 or displacements.shape[1] != 2 or displacements.shape[0] != len(frame_labels):
        raise InputError(
            f"displacements must be (T, 2, H, W) for {len(frame_labels)} label maps, got {displacements.shape}"
        )
    wall = wall_contours(reference_labels)
    lengths, midwall, thickness = [], [], []
    for field in displacements:
        endo, mid, epi = (_tracked(points, field) for points in (wall.endocardium, wall.midwall, wall.epicardium))
        lengths.append(polyline_length(endo, spacing))
        midwall.append(polyline_length(mid, spacing))
        thickness.append(float(np.hypot(*((epi - endo) * np.asarray(spacing)).T).mean()))
    area = np.array([(labels == CamusLabel.LV_CAVITY).sum() * spacing[0] * spacing[1] for labels in frame_labels])
    volume = np.array([_volume_or_nan(labels, spacing, t) for t, labels in enumerate(frame_labels)])
    ed, es = int(np.argmax(area)), int(np.argmin(area))

    def change(values: list[float]) -> np.ndarray:
        series = np.asarray(values)
        return 100.0 * (series - series[ed]) / series[ed]

    return StrainCurves(
        lv_area=area.astype(np.float64),
        lv_volume=volume,
        gls_endo=change(lengths),
        gls_mid=change(midwall),
        radial=change(thickness),
        ed=ed,
        es=es,
        ejection_fraction=float(100.0 * (volume[ed] - volume[es]) / volume[ed]),
        units=units,
    )


def _volume_or_nan(labels: np.ndarray, spacing: tuple[float, float], frame: int) -> float:
    """:func:`area_length_volume` of one tracked frame, or NaN (with a logged warning) where it has no contour."""
    try:
        return area_length_volume(labels, spacing)
    except InputError as error:
        logger.warning("frame %d: no LV volume (%s)", frame, error)
        return math.nan


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"a label map must be a 2D integer array, got shape {labels.shape} and dtype {labels.dtype}")
    return labels
