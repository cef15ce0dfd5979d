"""Figures of one registered pair: label overlap, boundary distance, folding, endpoint error, time.

Structures (CAMUS labels, :class:`~deepultrasound.io.camus.CamusLabel`): ``lv`` the LV cavity (1),
``myo`` the myocardium (2), ``epi`` the epicardium, i.e. everything inside it (LV cavity +
myocardium, 1 or 2). Each is scored as a binary map with the project's MONAI-based metrics
(:func:`~deepultrasound.losses.metrics.dice_score`, :func:`~deepultrasound.losses.metrics.hausdorff_distance_95`).

Units: HD95 and endpoint error are in mm when a pixel ``spacing`` (lateral, axial) in mm is given,
else in pixels of the grid the pair is scored on (the benchmark says which). The endpoint error is
averaged over the heart of the fixed frame (labels > 0: LV cavity, myocardium, left atrium), where
motion matters and the image has tissue; ``folding_percent`` is the percentage of pixels of the
whole grid where the Jacobian determinant of ``p -> p + u(p)`` is <= 0.
"""

from __future__ import annotations

import math

import torch

from deepultrasound.errors import InputError
from deepultrasound.io.camus import CamusLabel
from deepultrasound.losses.metrics import dice_score, hausdorff_distance_95
from deepultrasound.spatial import check_displacement, folding_fraction, warp_labels

STRUCTURES = {
    "lv": (CamusLabel.LV_CAVITY,),
    "myo": (CamusLabel.MYOCARDIUM,),
    "epi": (CamusLabel.LV_CAVITY, CamusLabel.MYOCARDIUM),
}
"""Scored structures and the label values each covers."""
NUM_CLASSES = len(CamusLabel)


def structure_map(labels: torch.Tensor, values: tuple[int, ...]) -> torch.Tensor:
    """``(B, 1, H, W)`` labels -> ``(B, 1, H, W)`` int64, 1 where the label is one of ``values``."""
    return torch.isin(labels, torch.tensor(values, device=labels.device)).long()


def overlap_scores(
    prediction: torch.Tensor, truth: torch.Tensor, spacing: tuple[float, float] | None = None
) -> dict[str, torch.Tensor]:
    """Dice and HD95 of every structure of :data:`STRUCTURES`: ``dice_<s>``, ``hd95_<s>`` each ``(B,)``.

    Args:
        prediction, truth: ``(B, 1, H, W)`` integer CAMUS labels of one grid (e.g. warped moving and fixed labels).
        spacing: ``(lateral, axial)`` pixel size in mm; None: HD95 in pixels.

    A structure missing from either map has no boundary: its HD95 is NaN.
    """
    if prediction.shape != truth.shape or prediction.ndim != 4 or prediction.shape[1] != 1:
        raise InputError(
            f"prediction {tuple(prediction.shape)} and truth {tuple(truth.shape)} must be (B, 1, H, W) label maps"
        )
    scores: dict[str, torch.Tensor] = {}
    for name, values in STRUCTURES.items():
        predicted, true = structure_map(prediction, values), structure_map(truth, values)
        scores[f"dice_{name}"] = dice_score(predicted, true, 2)[:, 0]
        if predicted.flatten(1).any(1).all() and true.flatten(1).any(1).all():
            distance = hausdorff_distance_95(predicted, true, 2, spacing)[:, 0].float()
        else:  # MONAI warns and returns inf for an empty map; such a sample has no distance
            distance = torch.full((len(prediction),), math.nan)
        scores[f"hd95_{name}"] = torch.where(torch.isfinite(distance), distance, torch.nan)
    return scores


def endpoint_error(
    displacement: torch.Tensor,
    truth: torch.Tensor,
    mask: torch.Tensor | None = None,
    spacing: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Mean Euclidean distance between estimated and true displacement, ``(B,)``.

    Args:
        displacement, truth: ``(B, 2, H, W)`` in pixels, channel 0 lateral.
        mask: ``(B, 1, H, W)`` where to average (None: everywhere); a sample with an empty mask gives NaN.
        spacing: ``(lateral, axial)`` mm per pixel: the error in mm; None: in pixels.
    """
    check_displacement(displacement)
    if truth.shape != displacement.shape:
        raise InputError(f"displacement {tuple(displacement.shape)} and truth {tuple(truth.shape)} differ in shape")
    difference = displacement - truth.to(displacement)
    if spacing is not None:
        difference = difference * difference.new_tensor(spacing).view(1, 2, 1, 1)
    error = difference.norm(dim=1, keepdim=True)
    weight = torch.ones_like(error) if mask is None else mask.to(error)
    return (error * weight).flatten(1).sum(1) / weight.flatten(1).sum(1)


def score_pair(
    displacement: torch.Tensor,
    fixed_labels: torch.Tensor,
    moving_labels: torch.Tensor,
    truth: torch.Tensor | None = None,
    spacing: tuple[float, float] | None = None,
) -> dict[str, float]:
    """All figures of one pair: the moving labels warped onto the fixed frame (nearest label of the warped
    soft one-hot) against the fixed labels, folding, and the endpoint error where the truth is known.

    Args:
        displacement: ``(2, H, W)`` in pixels, ``moving(p + u(p)) ~ fixed(p)``.
        fixed_labels, moving_labels: ``(H, W)`` integer CAMUS labels.
        truth: ``(2, H, W)`` true displacement in pixels, or None.
        spacing: see the module docstring.

    Returns:
        ``dice_lv, dice_myo, dice_epi, hd95_lv, hd95_myo, hd95_epi, folding_percent`` and, with a truth,
        ``epe`` (NaN where undefined).
    """
    field = displacement[None].float()
    warped = warp_labels(moving_labels[None, None].long(), field, NUM_CLASSES)
    fixed = fixed_labels[None, None].long()
    scores = {name: float(value[0]) for name, value in overlap_scores(warped, fixed, spacing).items()}
    scores["folding_percent"] = 100.0 * float(folding_fraction(field)[0])
    if truth is not None:
        scores["epe"] = float(endpoint_error(field, truth[None], fixed > 0, spacing)[0])
    return scores
