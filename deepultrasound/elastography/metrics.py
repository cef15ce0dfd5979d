"""Strain image quality metrics, image similarity after warping, and the quality figure of a strain frame.

Regions are boolean masks of the same shape as the map they select from. Every metric reduces
over all elements the mask selects (pass one frame for per-frame values) and returns a float.
MONAI has no elastographic SNR/CNR, normalised RMSE or global NCC metric, so these are plain
functions. Warping is :func:`deepultrasound.spatial.warp_image`.

References:
    Varghese T, Ophir J. A theoretical framework for performance characterization of
    elastography: the strain filter. IEEE TUFFC 44(1):164-172, 1997 (SNRe).
    Varghese T, Ophir J. An analysis of elastographic contrast-to-noise ratio. Ultrasound Med
    Biol 24(6):915-924, 1998 (CNRe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from deepultrasound.errors import InputError
from deepultrasound.spatial import warp_image

ArrayLike = torch.Tensor | np.ndarray

UNIFORM_TOLERANCE = 1e-4
"""Strain contrast below this fraction of the strain's RMS is rounding noise: a uniform strain."""


def _as_float_tensor(values: ArrayLike, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(values)
    if tensor.is_complex():
        raise InputError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    tensor = tensor if tensor.is_floating_point() else tensor.double()
    if not torch.isfinite(tensor).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return tensor


def _region(values: torch.Tensor, mask: ArrayLike | None, name: str, minimum: int = 2) -> torch.Tensor:
    """Elements of ``values`` selected by the boolean ``mask`` (all when None), flattened."""
    if mask is None:
        selected = values.reshape(-1)
    else:
        region = torch.as_tensor(mask, device=values.device)
        if region.dtype != torch.bool:
            raise InputError(f"{name} must be a boolean mask, got dtype {region.dtype}")
        if region.shape != values.shape:
            raise InputError(f"{name} has shape {tuple(region.shape)}, expected {tuple(values.shape)}")
        selected = values[region]
    if selected.numel() < minimum:
        raise InputError(f"{name} selects {selected.numel()} element(s); at least {minimum} are needed")
    return selected


def snr_e(strain: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Elastographic signal-to-noise ratio ``|mean| / std`` of the strain in a region.

    Varghese & Ophir 1997. The absolute mean makes compression (negative strain) score
    positive; the standard deviation is the population one (``ddof = 0``).

    Args:
        strain: strain map in % (any shape, e.g. ``(H, W)``).
        mask: boolean region of the same shape (default: everything); should be a region of
            nominally uniform strain.
    """
    values = _region(_as_float_tensor(strain, "strain"), mask, "mask")
    std = values.std(correction=0)
    if std == 0:
        raise InputError("strain is constant in the region: SNRe is infinite")
    return float(values.mean().abs() / std)


def cnr_e(strain: ArrayLike, target: ArrayLike, background: ArrayLike) -> float:
    """Elastographic contrast-to-noise ratio in Ophir's linear (power) form.

    ``CNRe = 2 (mean_b - mean_t)^2 / (var_b + var_t)`` (Varghese & Ophir 1998), with population
    variances (``ddof = 0``). It is a ratio of powers: :func:`cnr_e_db` gives ``10 log10``.

    Args:
        strain: strain map in % (any shape).
        target: boolean mask of the target (e.g. inclusion) region, same shape.
        background: boolean mask of the background region, same shape.
    """
    values = _as_float_tensor(strain, "strain")
    inside = _region(values, target, "target")
    outside = _region(values, background, "background")
    noise = outside.var(correction=0) + inside.var(correction=0)
    if noise == 0:
        raise InputError("strain is constant in both target and background: CNRe is infinite")
    return float(2.0 * (outside.mean() - inside.mean()) ** 2 / noise)


def cnr_e_db(strain: ArrayLike, target: ArrayLike, background: ArrayLike) -> float:
    """:func:`cnr_e` in decibels, ``10 log10(CNRe)`` (CNRe is already a power ratio); -inf for zero contrast."""
    value = cnr_e(strain, target, background)
    return 10.0 * math.log10(value) if value > 0 else -math.inf


def _estimate_and_truth(
    estimate: ArrayLike, truth: ArrayLike, mask: ArrayLike | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The elements of ``estimate`` and ``truth`` selected by ``mask``, flattened, in one dtype."""
    est = _as_float_tensor(estimate, "estimate")
    ref = _as_float_tensor(truth, "truth")
    if est.shape != ref.shape:
        raise InputError(f"estimate has shape {tuple(est.shape)} but truth has {tuple(ref.shape)}")
    return _region(est, mask, "mask", minimum=1), _region(ref.to(est), mask, "mask", minimum=1)


def _rms(values: torch.Tensor) -> torch.Tensor:
    return values.square().mean().sqrt()


def strain_nrmse(estimate: ArrayLike, truth: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Strain error normalised by the RMS of the truth: ``rms(estimate - truth) / rms(truth)``.

    The RMS of the truth (not its range) is the normaliser, so a uniform true strain still
    gives a finite value; 0 is perfect, 1 is as large an error as the strain itself. Under a
    mostly uniform compression the mean strain dominates ``rms(truth)``, so a uniform estimate
    of the right mean already scores low: see :func:`strain_nrmse_contrast` for the contrast.

    Args:
        estimate: estimated strain in % (any shape).
        truth: true strain in %, same shape.
        mask: boolean region of the same shape (default: everything).
    """
    est, ref = _estimate_and_truth(estimate, truth, mask)
    scale = _rms(ref)
    if scale == 0:
        raise InputError("true strain is zero everywhere in the region: NRMSE is undefined")
    return float(_rms(est - ref) / scale)


def strain_nrmse_contrast(estimate: ArrayLike, truth: ArrayLike, mask: ArrayLike | None = None) -> float:
    """NRMSE of the strain contrast: :func:`strain_nrmse` of both maps less their own mean.

    ``rms((e - mean e) - (t - mean t)) / rms(t - mean t)``, means and RMS over the region. The
    mean strain (the applied compression) no longer counts: a uniform estimate scores 1 whatever
    its level, an estimate off by a constant scores 0; 0 is perfect.

    Args:
        estimate: estimated strain in % (any shape).
        truth: true strain in %, same shape.
        mask: boolean region of the same shape (default: everything).

    Raises:
        InputError: the true strain is uniform in the region (no contrast to compare): its
            contrast RMS is at most :data:`UNIFORM_TOLERANCE` times its RMS (rounding noise).
    """
    est, ref = _estimate_and_truth(estimate, truth, mask)
    contrast = ref - ref.mean()
    scale = _rms(contrast)
    if scale <= UNIFORM_TOLERANCE * _rms(ref):
        raise InputError("true strain is uniform in the region: the contrast NRMSE is undefined")
    return float(_rms(est - est.mean() - contrast) / scale)


def ncc(fixed: ArrayLike, moving: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Zero-normalised cross-correlation of two images over a region, in [-1, 1].

    Args:
        fixed: image (any shape).
        moving: image of the same shape.
        mask: boolean region of the same shape (default: everything).
    """
    a = _as_float_tensor(fixed, "fixed")
    b = _as_float_tensor(moving, "moving")
    if a.shape != b.shape:
        raise InputError(f"fixed has shape {tuple(a.shape)} but moving has {tuple(b.shape)}")
    a = _region(a, mask, "mask")
    b = _region(b.to(a), mask, "mask")
    a = a - a.mean()
    b = b - b.mean()
    norm = (a.square().sum() * b.square().sum()).sqrt()
    if norm == 0:
        raise InputError("an image is constant in the region: NCC is undefined")
    return float((a * b).sum() / norm)


def warped_ncc(
    fixed: torch.Tensor, moving: torch.Tensor, displacement: torch.Tensor, mask: ArrayLike | None = None
) -> float:
    """NCC between ``fixed`` and ``moving`` warped by ``displacement`` (:func:`~deepultrasound.spatial.warp_image`).

    Args:
        fixed: ``(B, C, H, W)`` image, e.g. the pre-compression frame.
        moving: ``(B, C, H, W)`` image, e.g. the post-compression frame.
        displacement: ``(B, 2, H, W)`` displacement in pixels (lateral, axial).
        mask: boolean ``(B, C, H, W)`` region (default: everything).
    """
    return ncc(fixed, warp_image(moving, displacement), mask)


MIN_WARPED_NCC = 0.4
"""NCC between the reference and the frame warped by the estimate below which a strain frame is
flagged: the estimate does not explain the frames (decorrelated frames, a lateral shift beyond
the estimate, a wrong global strain: 1 % off misaligns the deep rows by several carrier
periods). The shipped ReUSENet and USENet keep it at 0.44-0.95 on the in vivo pairs (0, 1) to
(0, 5) (up to 1.2 % compression), where the speckle itself decorrelates as the tissue deforms.
A dense field fitted to noise can raise it on unrelated frames (block matching reached 0.47 on
independent speckle): a smooth estimate's figure is the meaningful one."""
MAX_NCC_LOSS = 0.1
"""Drop in NCC through warping (before minus after) above which a strain frame is flagged: an
estimate that aligns the frames worse than no motion at all is wrong, however similar they are."""


@dataclass(frozen=True)
class StrainQuality:
    """Quality figure of one strain frame: how well its displacement explains the frame pair.

    Attributes:
        ncc_before: NCC of the raw reference and moving frames, in [-1, 1] (NaN: a constant frame).
        ncc_after: NCC of the reference and the moving frame warped by the estimated displacement.
    """

    ncc_before: float
    ncc_after: float

    @property
    def flagged(self) -> bool:
        """True when the strain should not be trusted: ``ncc_after`` below :data:`MIN_WARPED_NCC`,
        more than :data:`MAX_NCC_LOSS` below ``ncc_before``, or undefined."""
        return not (self.ncc_after >= MIN_WARPED_NCC and self.ncc_after >= self.ncc_before - MAX_NCC_LOSS)

    def as_metadata(self) -> dict[str, str]:
        """Text fields for image metadata and status messages: :data:`QUALITY_KEYS` -> values."""
        return {
            NCC_BEFORE_KEY: f"{self.ncc_before:.4f}",
            NCC_AFTER_KEY: f"{self.ncc_after:.4f}",
            FLAGGED_KEY: str(int(self.flagged)),
        }


NCC_BEFORE_KEY, NCC_AFTER_KEY, FLAGGED_KEY = "NccBefore", "NccAfter", "QualityFlagged"
QUALITY_KEYS = (NCC_BEFORE_KEY, NCC_AFTER_KEY, FLAGGED_KEY)
"""Metadata keys of :meth:`StrainQuality.as_metadata` (strain image files, OpenIGTLink image metadata)."""


def strain_quality(
    fixed: torch.Tensor, moving: torch.Tensor, displacement: torch.Tensor, ncc_before: float | None = None
) -> StrainQuality:
    """:class:`StrainQuality` of one frame pair and its estimated displacement.

    Args:
        fixed: ``(H, W)`` reference RF frame (any scale: NCC ignores gain and offset).
        moving: ``(H, W)`` moving RF frame.
        displacement: ``(2, H, W)`` estimate in pixels, channel 0 lateral, 1 axial, ``moving(p + u(p)) ~ fixed(p)``.
        ncc_before: ``ncc(fixed, moving)`` when the caller has it already (the live reference policy).

    Returns:
        NaN figures (flagged) when a frame is constant.
    """
    fixed, moving = torch.as_tensor(fixed), torch.as_tensor(moving)
    displacement = torch.as_tensor(displacement).to(moving)
    if float(fixed.max()) == float(fixed.min()) or float(moving.max()) == float(moving.min()):
        return StrainQuality(math.nan, math.nan)
    before = ncc(fixed, moving) if ncc_before is None else ncc_before
    return StrainQuality(before, warped_ncc(fixed[None, None], moving[None, None], displacement[None]))
