"""Evaluation metrics on 2D label maps and images, per sample (MONAI's, called with stated units).

Label metrics take integer label maps ``(B, 1, H, W)`` (e.g. :func:`~deepultrasound.spatial.warp_labels`)
and give one value per sample and foreground class, ``(B, K - 1)`` for ``num_classes = K`` (the
background, label 0, left out). Image metrics take ``(B, C, H, W)`` images and a ``data_range``
that must be stated: the span of values the images can take (1 for images scaled to [0, 1], the
dynamic range in dB for B-mode in dB), on which PSNR and the SSIM constants depend.
"""

from __future__ import annotations

import torch
from monai.metrics import PSNRMetric, SSIMMetric, compute_dice, compute_hausdorff_distance

from deepultrasound.errors import InputError
from deepultrasound.spatial import labels_to_one_hot


def _one_hot_pair(prediction: torch.Tensor, truth: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    if prediction.shape != truth.shape:
        raise InputError(f"prediction {tuple(prediction.shape)} and truth {tuple(truth.shape)} differ in shape")
    return labels_to_one_hot(prediction, num_classes), labels_to_one_hot(truth, num_classes)


def dice_score(prediction: torch.Tensor, truth: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice overlap ``2 |P n T| / (|P| + |T|)`` per sample and foreground class, ``(B, K - 1)`` in [0, 1].

    A class absent from both maps scores 1, absent from the truth only 0 (MONAI's ``compute_dice``
    with ``ignore_empty=False``).

    Args:
        prediction, truth: ``(B, 1, H, W)`` integer labels in ``[0, num_classes)``.
        num_classes: K, background included.
    """
    pred, true = _one_hot_pair(prediction, truth, num_classes)
    return compute_dice(pred, true, include_background=False, ignore_empty=False)


def hausdorff_distance_95(
    prediction: torch.Tensor,
    truth: torch.Tensor,
    num_classes: int,
    spacing: tuple[float, float] | None = None,
) -> torch.Tensor:
    """95th-percentile symmetric Hausdorff distance between class boundaries, ``(B, K - 1)``.

    MONAI's ``compute_hausdorff_distance`` (Euclidean, ``percentile=95``). A class missing from
    either map has no boundary: its distance is NaN or infinite (with MONAI's warning).

    Args:
        prediction, truth: ``(B, 1, H, W)`` integer labels in ``[0, num_classes)``.
        num_classes: K, background included.
        spacing: ``(lateral, axial)`` pixel size in the unit wanted (e.g. mm), as
            :class:`~deepultrasound.io.image.Image` spacing; None: distances in pixels.
    """
    pred, true = _one_hot_pair(prediction, truth, num_classes)
    if spacing is not None and (len(spacing) != 2 or min(spacing) <= 0):
        raise InputError(f"spacing must be two positive sizes (lateral, axial), got {spacing}")
    monai_spacing = None if spacing is None else (spacing[1], spacing[0])  # MONAI's: along H, then W
    return compute_hausdorff_distance(pred, true, include_background=False, percentile=95, spacing=monai_spacing)


def _check_images(prediction: torch.Tensor, target: torch.Tensor, data_range: float) -> None:
    if prediction.ndim != 4 or prediction.shape != target.shape:
        raise InputError(
            f"expected two (B, C, H, W) images of one shape, got {tuple(prediction.shape)} and {tuple(target.shape)}"
        )
    if not data_range > 0:
        raise InputError(f"data_range must be the positive span of the image values, got {data_range}")


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    """Peak signal-to-noise ratio ``20 log10(data_range) - 10 log10(MSE)`` in dB per sample, ``(B,)``.

    Args:
        prediction, target: ``(B, C, H, W)`` images.
        data_range: span of the image values (peak signal), e.g. 1 for [0, 1].
    """
    _check_images(prediction, target, data_range)
    return PSNRMetric(max_val=data_range, reduction="none")(prediction, target).reshape(-1)


def ssim(prediction: torch.Tensor, target: torch.Tensor, data_range: float, window: int = 11) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004, Gaussian window of sigma 1.5) per sample, ``(B,)``, at most 1.

    Args:
        prediction, target: ``(B, C, H, W)`` images, H, W >= ``window``.
        data_range: span of the image values, e.g. 1 for [0, 1]; sets the SSIM constants.
        window: side of the Gaussian window in pixels, odd.
    """
    _check_images(prediction, target, data_range)
    if min(prediction.shape[-2:]) < window:
        raise InputError(f"images of size {tuple(prediction.shape[-2:])} are smaller than the {window}-pixel window")
    metric = SSIMMetric(spatial_dims=2, data_range=data_range, win_size=window, reduction="none")
    return metric(prediction, target).reshape(-1)
