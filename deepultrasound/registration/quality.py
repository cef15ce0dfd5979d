"""How far a tracked frame can be trusted: image agreement and folding, and a flag where either fails.

For frame t of a tracked sequence, with ``w_t`` its displacement onto the labelled frame r
(``frame_r(p + w_t(p)) ~ frame_t(p)``, :mod:`~deepultrasound.registration.tracking`):

- ``similarity``: the normalised cross-correlation of frame t and frame r warped by ``w_t``, over
  the heart of frame t (its tracked LV cavity and myocardium, dilated by :data:`HEART_MARGIN_PX`),
  1 at r itself. A registration that found the tissue's motion brings the same speckle and walls
  back; one that did not leaves two different images.
- ``folding_percent``: pixels of that heart region where ``w_t`` has a non-positive Jacobian
  determinant (folds), in %. Folds elsewhere (outside the fan, where there is nothing to follow)
  move neither the labels nor the strain.

A frame is **flagged** when its similarity is below :data:`MIN_SIMILARITY` or its folding above
:data:`MAX_FOLDING_PERCENT`. Calibration (the shipped registration model, 224 px frames): on the 40
ED/ES pairs of the 20 CAMUS validation patients the similarity after registration ranged 0.51-0.94
(median 0.80; 0.58 before registration), on 20 simulated pairs 0.76-0.86; registering a frame of
*another* patient instead - a wrong answer that can still look smooth - gave a median of 0.42
(0.45 simulated). The flag therefore catches most gross failures and passes every correct pair
seen; a frame that is not flagged is not proven right.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from deepultrasound.io.camus import CamusLabel
from deepultrasound.registration.images import warp_frame
from deepultrasound.spatial import jacobian_determinant

MIN_SIMILARITY = 0.5
"""Frames whose similarity to the warped labelled frame is below this are flagged."""
MAX_FOLDING_PERCENT = 0.5
"""Frames whose displacement folds more than this % of the pixels are flagged."""
HEART_MARGIN_PX = 4
"""Dilation, in pixels, of the LV cavity and myocardium over which the similarity is measured."""


@dataclass(frozen=True)
class FrameQuality:
    """Per-frame quality of a tracked sequence (see the module docstring); arrays ``(T,)``.

    Attributes:
        similarity: normalised cross-correlation in [-1, 1] (1 at the labelled frame); NaN where a frame's
            heart region is empty or constant.
        folding_percent: % of the heart region's pixels with a non-positive Jacobian determinant.
        flagged: True where the frame's labels and strain should not be trusted.
    """

    similarity: np.ndarray
    folding_percent: np.ndarray
    flagged: np.ndarray

    @property
    def flagged_frames(self) -> list[int]:
        """Indices of the flagged frames."""
        return [int(index) for index in np.flatnonzero(self.flagged)]


def heart_region(labels: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: LV cavity and myocardium of a CAMUS label map, dilated by :data:`HEART_MARGIN_PX`."""
    heart = np.isin(labels, (CamusLabel.LV_CAVITY, CamusLabel.MYOCARDIUM)).astype(np.uint8)
    size = 2 * HEART_MARGIN_PX + 1
    return cv2.dilate(heart, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))).astype(bool)


def normalised_cross_correlation(first: np.ndarray, second: np.ndarray, region: np.ndarray) -> float:
    """NCC of two ``(H, W)`` images over the pixels of ``region``; NaN where either is constant there."""
    a = first[region].astype(np.float64)
    b = second[region].astype(np.float64)
    a, b = a - a.mean() if a.size else a, b - b.mean() if b.size else b
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else float("nan")


def frame_quality(frames: np.ndarray, labels: np.ndarray, displacements: np.ndarray, reference: int) -> FrameQuality:
    """Quality of every frame of a tracked sequence.

    Args:
        frames: ``(T, H, W)`` grey frames.
        labels: ``(T, H, W)`` tracked CAMUS label maps.
        displacements: ``(T, 2, H, W)`` pixels, frame t onto frame ``reference``.
        reference: the labelled frame.
    """
    regions = [heart_region(frame_labels) for frame_labels in labels]
    similarity = np.array(
        [
            normalised_cross_correlation(frame, warp_frame(frames[reference], field), region)
            for frame, field, region in zip(frames, displacements, regions, strict=True)
        ]
    )
    folds = jacobian_determinant(torch.from_numpy(np.ascontiguousarray(displacements, np.float32)))[:, 0].numpy() <= 0
    folding = np.array([100.0 * fold[region].mean() if region.any() else 0.0 for fold, region in zip(folds, regions)])
    flagged = ~(similarity >= MIN_SIMILARITY) | (folding > MAX_FOLDING_PERCENT)
    return FrameQuality(similarity=similarity, folding_percent=folding, flagged=flagged)
