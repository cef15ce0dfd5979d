"""Classical strain baseline: normalised cross-correlation block matching of RF frames.

For every pixel of the pre-compression frame, the block of ``axial_kernel x lateral_kernel``
samples centred on it is compared, by zero-normalised cross-correlation (NCC), with the blocks of
the post-compression frame at every integer offset within the search range. The best offset is
refined to sub-sample precision by a 3-point fit around the NCC peak: a cosine fit axially (the
RF correlation oscillates at the carrier; a parabola is biased there) and a parabola laterally.
The result is a dense displacement in pixels, ``post(x + d(x)) ~ pre(x)``, in the networks'
convention (channel 0 lateral, channel 1 axial), so ``spatial.warp_image(post, d) ~ pre``.

The search is vectorised: the local sums that NCC needs are box filters computed with cumulative
sums (cost independent of the block size), and only the offsets are looped over, many at once.
Samples outside the frame count as zero. A guided search (``initial_displacement``) first moves
the post frame by a rounded prior displacement (e.g. a first pass, the previous frame pair or a
network) and then searches a small residual range, which reaches large displacements cheaply.

Implemented in torch rather than with itk-ultrasound's BlockMatching filters: it runs on the
input's device and in batches like the networks it is compared with, returns a dense field
without resampling a block grid, and adds no second ITK package beside itk-elastix (the pair has
crashed in one environment).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from monai.networks.layers import median_filter

from deepultrasound.elastography.strain import DEFAULT_AXIAL_SPACING_MM, DEFAULT_WINDOW_MM, axial_strain
from deepultrasound.errors import InputError
from deepultrasound.spatial import warp_image

_CHUNK_ELEMENTS = 1 << 21
"""Products (offsets x pixels) formed at once in the correlation loop, bounding its buffer."""


@dataclass(frozen=True)
class BlockMatchingParams:
    """Settings of :func:`block_match`.

    Attributes:
        axial_kernel: block height in axial samples, odd (default 51, about 1 mm at 0.02 mm).
        lateral_kernel: block width in lines, odd (default 3).
        axial_search: search range in samples, offsets ``-axial_search .. +axial_search``.
        lateral_search: search range in lines, offsets ``-lateral_search .. +lateral_search``.
        subsample: axial sub-sample peak fit, ``"cosine"`` (default) or ``"parabolic"``; the
            lateral fit is always parabolic.
        median_size: side of the square median filter applied to both displacement components
            to remove outliers (odd; 0 or 1 = off, the default).
    """

    axial_kernel: int = 51
    lateral_kernel: int = 3
    axial_search: int = 20
    lateral_search: int = 1
    subsample: Literal["cosine", "parabolic"] = "cosine"
    median_size: int = 0

    def __post_init__(self) -> None:
        for name in ("axial_kernel", "lateral_kernel"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1 or value % 2 == 0:
                raise InputError(f"{name} must be a positive odd number of samples, got {value!r}")
        for name in ("axial_search", "lateral_search"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise InputError(f"{name} must be a non-negative number of samples, got {value!r}")
        if self.subsample not in ("cosine", "parabolic"):
            raise InputError(f"subsample must be 'cosine' or 'parabolic', got {self.subsample!r}")
        size = self.median_size
        if not isinstance(size, int) or size < 0 or (size > 0 and size % 2 == 0):
            raise InputError(f"median_size must be 0 (off) or a positive odd number, got {self.median_size!r}")


def _box_sum(x: torch.Tensor, axial: int, lateral: int) -> torch.Tensor:
    """Sum over the centred ``lateral x axial`` window of each element of ``(..., W, H)``, zeros outside."""
    return _box_sum_padded(F.pad(x, _box_padding(axial, lateral)), axial, lateral)


def _box_padding(axial: int, lateral: int) -> tuple[int, int, int, int]:
    """Zero padding (F.pad order) that :func:`_box_sum_padded` expects around an image."""
    return (axial // 2 + 1, axial // 2, lateral // 2 + 1, lateral // 2)


def _box_sum_padded(padded: torch.Tensor, axial: int, lateral: int) -> torch.Tensor:
    """:func:`_box_sum` of an image already zero-padded by :func:`_box_padding`."""
    # Cumulative sums make the cost independent of the block size (avg_pool2d is O(block) per pixel).
    along = padded.cumsum(-1)
    along = along[..., axial:] - along[..., :-axial]
    across = along.cumsum_(-2)
    return across[..., lateral:, :] - across[..., :-lateral, :]


def _as_frames(frame: torch.Tensor, name: str) -> torch.Tensor:
    """(H, W) or (B, 1, H, W) real frame -> finite floating (B, 1, H, W)."""
    if not isinstance(frame, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(frame).__name__}")
    if frame.ndim == 2:
        frame = frame[None, None]
    if frame.ndim != 4 or frame.shape[1] != 1:
        raise InputError(f"{name} must be (H, W) or (B, 1, H, W), got shape {tuple(frame.shape)}")
    if frame.is_complex():
        raise InputError(f"{name} must be real RF data, got dtype {frame.dtype}")
    frame = frame if frame.is_floating_point() else frame.float()
    if not torch.isfinite(frame).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return frame


def _correlation_volume(pre: torch.Tensor, post: torch.Tensor, params: BlockMatchingParams) -> torch.Tensor:
    """Correlation of every pre block with the post blocks at every offset.

    Frames are held as lines x samples, ``(B, W, H)``, so that the axial sums run along
    contiguous memory.

    Args:
        pre, post: ``(B, W, H)`` frames.

    Returns:
        ``(L, A, B, W, H)`` for lateral offsets ``-lateral_search .. lateral_search`` (L) and
        axial offsets ``-axial_search .. axial_search`` (A): the NCC times the pre block's
        standard deviation, a positive factor per pixel that neither the peak nor its
        sub-sample fits depend on.
    """
    kh, kw = params.axial_kernel, params.lateral_kernel
    ra, rl = params.axial_search, params.lateral_search
    batch, width, height = pre.shape
    n = kh * kw
    sum_f = _box_sum(pre, kh, kw)
    post_pad = F.pad(post, (ra, ra, rl, rl))
    sum_g = _box_sum(post_pad, kh, kw)
    # Flat post blocks (zero variance, e.g. beyond the frame) get correlation 0 instead of 0 / 0.
    inv_std_g = (
        (_box_sum(post_pad * post_pad, kh, kw) - sum_g * sum_g / n)
        .clamp_min(0)
        .add_(torch.finfo(pre.dtype).tiny)
        .rsqrt_()
    )
    mean_g_scaled = sum_g * inv_std_g / n

    def shifted(image: torch.Tensor, dx: int, first: int, count: int) -> torch.Tensor:
        """View ``(count, B, W, H)`` of a padded image at lateral offset dx and axial offsets
        ``first - ra .. first - ra + count - 1``."""
        lines = image[:, rl + dx : rl + dx + width, first : first + count + height - 1]
        return lines.unfold(-1, height, 1).permute(2, 0, 1, 3)

    n_axial = 2 * ra + 1
    chunk = max(1, _CHUNK_ELEMENTS // pre.numel())
    volume = pre.new_empty((2 * rl + 1, n_axial, batch, width, height))
    pad = _box_padding(kh, kw)
    products = pre.new_zeros((chunk, batch, width + pad[2] + pad[3], height + pad[0] + pad[1]))
    for i, dx in enumerate(range(-rl, rl + 1)):
        for first in range(0, n_axial, chunk):
            count = min(chunk, n_axial - first)
            padded = products[:count]
            inner = padded[..., pad[2] : pad[2] + width, pad[0] : pad[0] + height]
            torch.mul(pre, shifted(post_pad, dx, first, count), out=inner)
            # NCC x std_f = (sum f g - sum f sum g / n) / std_g
            out = volume[i, first : first + count]
            torch.mul(_box_sum_padded(padded, kh, kw), shifted(inv_std_g, dx, first, count), out=out)
            out.addcmul_(sum_f, shifted(mean_g_scaled, dx, first, count), value=-1)
    return volume


def _parabolic_peak(minus: torch.Tensor, centre: torch.Tensor, plus: torch.Tensor) -> torch.Tensor:
    """Vertex offset in [-0.5, 0.5] of the parabola through (-1, minus), (0, centre), (1, plus); 0 if not a maximum."""
    curvature = minus - 2 * centre + plus
    safe = torch.where(curvature < 0, curvature, -torch.ones_like(curvature))
    return torch.where(curvature < 0, 0.5 * (minus - plus) / safe, 0.0).clamp(-0.5, 0.5)


def _cosine_peak(minus: torch.Tensor, centre: torch.Tensor, plus: torch.Tensor) -> torch.Tensor:
    """Peak offset of ``A cos(w (k - d))`` through the 3 samples; parabolic where no cosine fits."""
    tiny = torch.finfo(centre.dtype).tiny
    ratio = (minus + plus) / (2 * centre.clamp_min(tiny))
    fits = (centre > 0) & (ratio.abs() < 1)
    omega = torch.acos(torch.where(fits, ratio, 0.0))
    phase = torch.atan((plus - minus) / (2 * centre * torch.sin(omega)).clamp_min(tiny))
    return torch.where(fits, (phase / omega).clamp(-0.5, 0.5), _parabolic_peak(minus, centre, plus))


def _refine(volume: torch.Tensor, params: BlockMatchingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer peak plus sub-sample fits of a ``(L, A, ...)`` correlation.

    Returns:
        ``(2, ...)`` displacement (lateral, axial) and the ``(...)`` peak value; pixels whose
        best correlation is not positive (nothing matches, e.g. a flat block) get displacement 0.
    """
    n_lat, n_ax = volume.shape[:2]
    flat = volume.flatten(0, 1)
    centre, index = flat.max(dim=0)
    lateral, axial = index // n_ax, index % n_ax

    def neighbour(step: int, valid: torch.Tensor) -> torch.Tensor:
        shifted = (index + step).clamp(0, flat.shape[0] - 1)
        return torch.where(valid, flat.gather(0, shifted[None])[0], centre)

    # A peak on the edge of the search range has no outer neighbour: no sub-sample shift there.
    fit = _cosine_peak if params.subsample == "cosine" else _parabolic_peak
    up, down = axial > 0, axial < n_ax - 1
    axial_fraction = torch.where(up & down, fit(neighbour(-1, up), centre, neighbour(1, down)), 0.0)
    left, right = lateral > 0, lateral < n_lat - 1
    lateral_fraction = torch.where(
        left & right, _parabolic_peak(neighbour(-n_ax, left), centre, neighbour(n_ax, right)), 0.0
    )
    displacement = torch.stack(
        [lateral - params.lateral_search + lateral_fraction, axial - params.axial_search + axial_fraction]
    )
    return torch.where(centre > 0, displacement, 0.0).to(volume.dtype), centre


@dataclass(frozen=True)
class BlockMatch:
    """Result of :func:`match_blocks`.

    Attributes:
        displacement: ``(B, 2, H, W)`` pixels, channel 0 lateral, channel 1 axial,
            ``post(x + d(x)) ~ pre(x)``.
        correlation: ``(B, 1, H, W)`` NCC in [-1, 1] of each pre block with the post block at the
            integer peak (0 for flat blocks): the confidence of the match.
    """

    displacement: torch.Tensor
    correlation: torch.Tensor


def match_blocks(
    pre: torch.Tensor,
    post: torch.Tensor,
    params: BlockMatchingParams | None = None,
    initial_displacement: torch.Tensor | None = None,
) -> BlockMatch:
    """Dense displacement and match correlation from a pre- to a post-compression RF frame.

    Args:
        pre: ``(H, W)`` or ``(B, 1, H, W)`` pre-compression RF frame(s), H axial samples, W lines.
        post: post-compression RF frame(s), same shape.
        params: block and search sizes, sub-sample fit and median filter (defaults:
            :class:`BlockMatchingParams`).
        initial_displacement: optional prior displacement in pixels, ``(2, H, W)`` or
            ``(B, 2, H, W)``; the search then covers ``params``' ranges around its rounded value.

    Returns:
        :class:`BlockMatch` with ``(B, 2, H, W)`` displacement and ``(B, 1, H, W)`` correlation
        (B = 1 for ``(H, W)`` frames). Holds ``(2 axial_search + 1) (2 lateral_search + 1) B H W``
        correlation values (about 125 MB with the defaults for one 2000 x 128 pair).

    Raises:
        InputError: mismatched or ill-shaped frames, NaN/inf, or a block larger than the frame.
    """
    params = params or BlockMatchingParams()
    fixed = _as_frames(pre, "pre")
    moving = _as_frames(post, "post")
    if fixed.shape != moving.shape:
        raise InputError(f"pre has shape {tuple(pre.shape)} but post has {tuple(post.shape)}")
    height, width = fixed.shape[-2:]
    if params.axial_kernel > height or params.lateral_kernel > width:
        raise InputError(
            f"block of {params.axial_kernel} x {params.lateral_kernel} (axial x lateral) does not fit "
            f"frames of {height} x {width}: use a smaller block"
        )
    moving = moving.to(fixed)

    prior = None
    if initial_displacement is not None:
        if not isinstance(initial_displacement, torch.Tensor):
            raise InputError(f"initial_displacement must be a torch.Tensor, got {type(initial_displacement).__name__}")
        prior = initial_displacement[None] if initial_displacement.ndim == 3 else initial_displacement
        expected = (fixed.shape[0], 2, height, width)
        if tuple(prior.shape) != expected:
            raise InputError(
                f"initial_displacement must be (B, 2, H, W) = {expected} (or (2, H, W) for single "
                f"frames), got {tuple(initial_displacement.shape)}"
            )
        if not torch.isfinite(prior).all():
            raise InputError("initial_displacement contains NaN or infinite values")
        prior = prior.to(fixed).round()
        moving = warp_image(moving, prior)

    kh, kw = params.axial_kernel, params.lateral_kernel
    pre_lines, post_lines = (frame[:, 0].transpose(1, 2).contiguous() for frame in (fixed, moving))
    displacement, peak = _refine(_correlation_volume(pre_lines, post_lines, params), params)
    displacement = displacement.permute(1, 0, 3, 2).contiguous()
    if prior is not None:
        # A block of the warped post frame is moved by the rounded prior of each of its rows, so
        # its residual is measured against the prior's mean over the block, not the centre value.
        prior_lines = prior.transpose(-1, -2)
        block_mean = _box_sum(prior_lines, kh, kw) / _box_sum(torch.ones_like(prior_lines[:, :1]), kh, kw)
        displacement = displacement + block_mean.transpose(-1, -2)
    if params.median_size > 1:
        displacement = median_filter(displacement, params.median_size, spatial_dims=2)
    # The volume holds NCC x std of the pre block: divide the peak by that std.
    variance = _box_sum(pre_lines * pre_lines, kh, kw) - _box_sum(pre_lines, kh, kw).square() / (kh * kw)
    correlation = torch.where(variance > 0, peak * variance.clamp_min(torch.finfo(peak.dtype).tiny).rsqrt(), 0.0)
    return BlockMatch(displacement, correlation.clamp(-1, 1).transpose(1, 2)[:, None].contiguous())


def block_match(
    pre: torch.Tensor,
    post: torch.Tensor,
    params: BlockMatchingParams | None = None,
    initial_displacement: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense displacement from a pre- to a post-compression RF frame by NCC block matching.

    :func:`match_blocks` without the correlation; same arguments and errors.

    Returns:
        Displacement in pixels, ``(2, H, W)`` for ``(H, W)`` frames, else ``(B, 2, H, W)``;
        channel 0 lateral (lines), channel 1 axial (samples); ``post(x + d(x)) ~ pre(x)``.
    """
    displacement = match_blocks(pre, post, params, initial_displacement).displacement
    return displacement[0] if pre.ndim == 2 else displacement


def baseline_strain(
    pre: torch.Tensor,
    post: torch.Tensor,
    params: BlockMatchingParams | None = None,
    window_mm: float = DEFAULT_WINDOW_MM,
    axial_spacing_mm: float = DEFAULT_AXIAL_SPACING_MM,
) -> torch.Tensor:
    """Axial strain in % by block matching then least-squares strain (the classical baseline).

    Args:
        pre: ``(H, W)`` or ``(B, 1, H, W)`` pre-compression RF frame(s).
        post: post-compression RF frame(s), same shape.
        params: block matching settings (:class:`BlockMatchingParams`).
        window_mm: LSQ strain window in mm (default 5.74 mm = 287 samples at 0.02 mm).
        axial_spacing_mm: axial sample spacing in mm (default 0.02).

    Returns:
        Axial strain in %, ``(H, W)`` for ``(H, W)`` frames, else ``(B, 1, H, W)``; negative in
        compression.
    """
    displacement = block_match(pre, post, params)
    if displacement.ndim == 3:
        return axial_strain(displacement[None], window_mm, axial_spacing_mm)[0, 0]
    return axial_strain(displacement, window_mm, axial_spacing_mm)
