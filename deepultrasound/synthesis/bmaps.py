"""The B-map forward process (Domínguez et al., "Diffusion as sound propagation", 2024) and its depth maps.

The signal of a diffusion step is attenuated more the deeper the pixel, as sound is. With ``T``
training steps and the 0-based step index ``t`` of the schedulers (``0 <= t < T``):

- per-step attenuation ``b_t = (1 - cos(((t + 0.008) / (1.008 T)) pi / 2))^2`` (from ~0 to ~0.975),
- lower bound ``lb_t = 1 - b_t (1 - eps)`` (``eps`` = 0.97 by default; ``eps = 1`` turns B-maps off),
- B-map ``B_t(x) = sqrt(1 - d(x) (1 - lb_t))`` with ``d(x)`` the normalised depth in [0, 1],
- cumulative B-map ``B_bar_t(x) = prod_{s <= t} B_s(x)``;

the forward process, the posterior and the x0/eps conversions then use ``alpha_bar_t B_bar_t(x)``
wherever the plain process uses ``alpha_bar_t`` (:mod:`deepultrasound.synthesis.schedulers`).

Depth maps are ``(B, 1, H, W)`` float32 in [0, 1], 0 at the probe:

- linear probe: the row, ``d = row / (H - 1)``;
- sector probe: the distance from the apex over the fan's radius inside the fan, and 0 outside it
  (so ``B = 1`` there: the region outside the fan diffuses as in the plain process). The fan is
  given (:class:`SectorGeometry`) or estimated from a label map whose outside-the-fan class is
  known (:func:`estimate_sector`).

Pixel coordinates are (row, column) of pixel centres: pixel ``(i, j)`` is at ``(i, j)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from deepultrasound.errors import InputError

DEFAULT_EPS = 0.97
"""The published B-map floor ``eps``; 1 turns B-maps off."""
PROBES = ("linear", "sector")
Probe = Literal["linear", "sector"]

_SERIES_TOLERANCE = 1e-13
"""Largest truncation error of ``log B_bar`` (see :class:`BMapProcess`): below float64 rounding of the product."""
_EDGE_ROWS = 0.5
"""Fraction of the fan's height, from its top, whose left and right ends are fitted as its straight edges."""


def step_attenuation(num_train_timesteps: int, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``1 - lb_t = b_t (1 - eps)`` for ``t = 0 .. T - 1``: ``(T,)`` float64."""
    if num_train_timesteps < 1:
        raise InputError(f"num_train_timesteps must be at least 1, got {num_train_timesteps}")
    if not 0.0 < eps <= 1.0:
        raise InputError(f"the B-map eps must lie in (0, 1] (1 turns B-maps off), got {eps}")
    t = torch.arange(num_train_timesteps, dtype=torch.float64)
    b = (1.0 - torch.cos((t + 0.008) / (1.008 * num_train_timesteps) * math.pi / 2.0)) ** 2
    return b * (1.0 - eps)


def check_depth(depth: torch.Tensor) -> None:
    """Refuse a depth map that is not ``(B, 1, H, W)`` with finite values in [0, 1]."""
    if depth.ndim != 4 or depth.shape[1] != 1:
        raise InputError(f"a depth map must be (B, 1, H, W), got shape {tuple(depth.shape)}")
    if not depth.is_floating_point():
        raise InputError(f"a depth map must hold floats, got dtype {depth.dtype}")
    if depth.numel() and not (torch.isfinite(depth).all() and depth.min() >= 0 and depth.max() <= 1):
        raise InputError("a depth map must hold finite values in [0, 1] (normalised depth)")


class BMapProcess:
    """``B_t(x)`` and ``B_bar_t(x)`` of a schedule of ``num_train_timesteps`` steps and floor ``eps``.

    ``log B_bar_t(d) = 1/2 sum_{s<=t} log(1 - d c_s)`` with ``c_s = 1 - lb_s`` is evaluated as its
    power series in ``d``, ``-1/2 sum_k d^k S_k(t) / k`` with ``S_k(t) = sum_{s<=t} c_s^k`` tabulated
    once, truncated where the remainder is below 1e-13: a few multiply-adds per pixel (8 terms at
    eps = 0.97) instead of a sum over up to ``T`` steps per pixel and call.
    """

    def __init__(self, num_train_timesteps: int, eps: float = DEFAULT_EPS) -> None:
        self.num_train_timesteps = num_train_timesteps
        self.eps = eps
        self.attenuation = step_attenuation(num_train_timesteps, eps)
        largest = float(self.attenuation.max())
        terms = 1
        while largest > 0 and (
            num_train_timesteps * largest ** (terms + 1) / ((terms + 1) * (1.0 - largest)) > _SERIES_TOLERANCE
        ):
            terms += 1
        powers = torch.arange(1, terms + 1, dtype=torch.float64)[:, None]
        # (K, T): coefficient of d^k in log B_bar_t
        self._series = -0.5 * torch.cumsum(self.attenuation[None, :] ** powers, dim=1) / powers

    @property
    def enabled(self) -> bool:
        """Whether any pixel is attenuated (``eps < 1``)."""
        return self.eps < 1.0

    def step(self, depth: torch.Tensor, timestep: int) -> torch.Tensor:
        """``B_t(x)`` of one step for a depth map ``(B, 1, H, W)``: same shape, float64."""
        check_depth(depth)
        self._check_timesteps(torch.tensor(timestep))
        return torch.sqrt(1.0 - depth.double() * self.attenuation[timestep])

    def cumulative(self, depth: torch.Tensor, timesteps: int | torch.Tensor) -> torch.Tensor:
        """``B_bar_t(x)`` for a depth map ``(B, 1, H, W)`` and one step ``t`` or one per sample ``(B,)``:
        ``(B, 1, H, W)`` float64."""
        check_depth(depth)
        timesteps = torch.as_tensor(timesteps).to(torch.long).cpu()
        self._check_timesteps(timesteps)
        coefficients = self._series[:, timesteps].to(depth.device)  # (K,) or (K, B)
        if coefficients.ndim == 2:
            coefficients = coefficients[:, :, None, None, None]
        d = depth.double()
        log_bmap = torch.zeros_like(d)
        for coefficient in coefficients.flip(0):  # Horner: d (a_1 + d (a_2 + ... d a_K))
            log_bmap = (log_bmap + coefficient) * d
        return torch.exp(log_bmap)

    def _check_timesteps(self, timesteps: torch.Tensor) -> None:
        if timesteps.numel() and (timesteps.min() < 0 or timesteps.max() >= self.num_train_timesteps):
            raise InputError(
                f"timesteps must lie in [0, {self.num_train_timesteps}), got {timesteps.min()}..{timesteps.max()}"
            )


# -- depth maps ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SectorGeometry:
    """The fan of a sector scan in the pixel coordinates of its image.

    Attributes:
        apex: (row, column) of the fan's apex; it may lie outside the image (row < 0).
        radius: imaged depth from the apex, pixels.
        angle: full opening angle, radians.
        tilt: angle of the fan's axis from the image's downward vertical, radians, positive towards
            larger columns.
    """

    apex: tuple[float, float]
    radius: float
    angle: float
    tilt: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise InputError(f"the fan's radius must be a positive number of pixels, got {self.radius}")
        if not 0.0 < self.angle < math.pi:
            raise InputError(f"the fan's opening angle must lie in (0, pi) radians, got {self.angle}")

    def polar(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(distance from the apex in pixels, angle from the fan's axis in radians) of every pixel, each ``shape``."""
        rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        down, across = rows - self.apex[0], cols - self.apex[1]
        angle = np.arctan2(across, down) - self.tilt
        return np.hypot(down, across), np.angle(np.exp(1j * angle))

    def fan(self, shape: tuple[int, int]) -> np.ndarray:
        """``shape`` bool: pixels inside the fan."""
        distance, angle = self.polar(shape)
        return (distance <= self.radius) & (np.abs(angle) <= self.angle / 2.0)


def estimate_sector(inside: np.ndarray) -> SectorGeometry:
    """The fan of a sector scan from its ``(H, W)`` bool mask (True inside the fan).

    The left and right ends of the fan's rows in the upper half of its height (where they do not
    touch the image's sides) are fitted with a line each; the apex is where the lines meet, the
    opening angle is the angle between them, and the radius reaches the farthest pixel of the fan.

    Raises:
        InputError: the mask is empty or its edges do not open downwards (not a fan).
    """
    inside = np.asarray(inside, bool)
    if inside.ndim != 2:
        raise InputError(f"a fan mask must be 2D (H, W), got shape {inside.shape}")
    rows = np.flatnonzero(inside.any(axis=1))
    if rows.size == 0:
        raise InputError("the label map has no pixel inside the fan: every pixel holds the outside-the-fan class")
    width = inside.shape[1]
    upper = rows[rows <= rows[0] + _EDGE_ROWS * (rows[-1] - rows[0])]
    first = np.argmax(inside[upper], axis=1)
    last = width - 1 - np.argmax(inside[upper, ::-1], axis=1)
    edges = []
    # the edge lies half a pixel outside the first and the last pixel of a row inside the fan
    for side, ends, touching, boundary in (("left", first, first == 0, -0.5), ("right", last, last == width - 1, 0.5)):
        keep = ~touching
        if keep.sum() < 3:
            raise InputError(
                f"cannot estimate the fan: fewer than 3 rows of its upper half show its {side} edge inside the "
                "image; give the fan geometry instead"
            )
        slope, intercept = np.polyfit(upper[keep], ends[keep] + boundary, 1)  # column = intercept + slope * row
        edges.append((float(slope), float(intercept)))
    (left_slope, left_intercept), (right_slope, right_intercept) = edges
    if right_slope - left_slope <= 1e-6:
        raise InputError(
            "cannot estimate the fan: its edges do not open downwards (is the outside-the-fan class right?)"
        )
    apex_row = (left_intercept - right_intercept) / (right_slope - left_slope)
    apex_col = left_intercept + left_slope * apex_row
    left_angle, right_angle = math.atan(left_slope), math.atan(right_slope)  # from the downward vertical
    fan_rows, fan_cols = np.nonzero(inside)
    radius = float(np.hypot(fan_rows - apex_row, fan_cols - apex_col).max())
    return SectorGeometry(
        apex=(float(apex_row), float(apex_col)),
        radius=max(radius, 1.0),
        angle=right_angle - left_angle,
        tilt=(right_angle + left_angle) / 2.0,
    )


def linear_depth(shape: tuple[int, int]) -> torch.Tensor:
    """Depth map of a linear probe: ``(1, 1, H, W)`` float32, ``row / (H - 1)`` (0 for a single row)."""
    height, width = shape
    rows = torch.linspace(0.0, 1.0, height) if height > 1 else torch.zeros(1)
    return rows[None, None, :, None].expand(1, 1, height, width).contiguous()


def sector_depth(geometry: SectorGeometry, shape: tuple[int, int], inside: np.ndarray | None = None) -> torch.Tensor:
    """Depth map of a sector probe: ``(1, 1, H, W)`` float32, distance from the apex over the radius inside the
    fan (``inside``, default the geometry's fan), clipped to [0, 1]; 0 outside the fan."""
    distance, _ = geometry.polar(shape)
    fan = geometry.fan(shape) if inside is None else np.asarray(inside, bool)
    depth = np.where(fan, np.clip(distance / geometry.radius, 0.0, 1.0), 0.0)
    return torch.from_numpy(depth.astype(np.float32))[None, None]


def depth_from_labels(labels: torch.Tensor, probe: Probe, outside_label: int | None = None) -> torch.Tensor:
    """Depth maps ``(B, 1, H, W)`` float32 of label maps ``(B, H, W)``.

    ``probe="linear"``: the normalised row. ``probe="sector"``: each map's fan is estimated from its
    pixels that do not hold ``outside_label`` (:func:`estimate_sector`).
    """
    if labels.ndim != 3:
        raise InputError(f"label maps must be (B, H, W), got shape {tuple(labels.shape)}")
    batch, height, width = labels.shape
    if probe == "linear":
        return linear_depth((height, width)).expand(batch, 1, height, width).to(labels.device).contiguous()
    if probe != "sector":
        raise InputError(f"unknown probe {probe!r}; use one of {PROBES}")
    if outside_label is None:
        raise InputError("a sector probe's depth needs the label value outside the fan (outside_label)")
    maps = []
    for label_map in labels.cpu().numpy():
        inside = label_map != outside_label
        maps.append(sector_depth(estimate_sector(inside), (height, width), inside))
    return torch.cat(maps).to(labels.device)
