"""2D tissue phantoms: homogeneous background, optional horizontal layers and elliptical inclusions.

Coordinates are in mm: ``x`` lateral (0 at the first line's left edge), ``z`` axial depth (0 at the
probe surface, increasing downwards). Stiffness is Young's modulus relative to the background (1.0);
echogenicity scales the scatterer amplitudes (1.0 = background) and may differ from stiffness.
Regions are painted in order: background, then layers, then inclusions (a later one wins).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from deepultrasound.errors import InputError

STIFFNESS_RANGE = (0.2, 5.0)
"""Allowed relative Young's modulus of a layer or inclusion (background = 1)."""


def _check_positive(name: str, value: float) -> None:
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a positive finite number, got {value!r}")


def _check_stiffness(value: float) -> None:
    lo, hi = STIFFNESS_RANGE
    if not lo <= value <= hi:
        raise InputError(f"relative stiffness must lie in [{lo}, {hi}], got {value!r}")


@dataclass(frozen=True)
class Inclusion:
    """An ellipse: centre ``(x, z)`` mm, semi-axes ``(a, b)`` mm along x and z before a rotation of
    ``angle_deg`` (counter-clockwise in the x-z plane), relative ``stiffness`` and ``echogenicity``."""

    center_mm: tuple[float, float]
    semi_axes_mm: tuple[float, float]
    stiffness: float
    echogenicity: float = 1.0
    angle_deg: float = 0.0

    def __post_init__(self) -> None:
        _check_positive("inclusion semi-axis", self.semi_axes_mm[0])
        _check_positive("inclusion semi-axis", self.semi_axes_mm[1])
        _check_stiffness(self.stiffness)
        _check_positive("inclusion echogenicity", self.echogenicity)

    def contains(self, x_mm: np.ndarray, z_mm: np.ndarray) -> np.ndarray:
        """Boolean mask of the points inside the ellipse (any matching shapes)."""
        t = np.deg2rad(self.angle_deg)
        dx, dz = x_mm - self.center_mm[0], z_mm - self.center_mm[1]
        u = np.cos(t) * dx + np.sin(t) * dz
        v = -np.sin(t) * dx + np.cos(t) * dz
        return (u / self.semi_axes_mm[0]) ** 2 + (v / self.semi_axes_mm[1]) ** 2 <= 1.0


@dataclass(frozen=True)
class Layer:
    """A horizontal band ``top_mm <= z < bottom_mm`` spanning the whole width."""

    top_mm: float
    bottom_mm: float
    stiffness: float
    echogenicity: float = 1.0

    def __post_init__(self) -> None:
        if not self.bottom_mm > self.top_mm:
            raise InputError(f"layer bottom ({self.bottom_mm} mm) must be below its top ({self.top_mm} mm)")
        _check_stiffness(self.stiffness)
        _check_positive("layer echogenicity", self.echogenicity)

    def contains(self, x_mm: np.ndarray, z_mm: np.ndarray) -> np.ndarray:
        """Boolean mask of the points inside the band."""
        return np.broadcast_to((z_mm >= self.top_mm) & (z_mm < self.bottom_mm), np.broadcast(x_mm, z_mm).shape)


@dataclass(frozen=True)
class Phantom:
    """A rectangular imaged region ``depth_mm x width_mm`` with layers and up to 3 inclusions.

    Properties are defined everywhere (also outside the region: the background and layers continue),
    so a mechanical model may extend beyond the imaged region.
    """

    depth_mm: float = 40.0
    width_mm: float = 25.6
    layers: tuple[Layer, ...] = ()
    inclusions: tuple[Inclusion, ...] = ()
    background_echogenicity: float = 1.0
    _regions: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_positive("phantom depth_mm", self.depth_mm)
        _check_positive("phantom width_mm", self.width_mm)
        _check_positive("background_echogenicity", self.background_echogenicity)
        if len(self.inclusions) > 3:
            raise InputError(f"a phantom holds at most 3 inclusions, got {len(self.inclusions)}")
        object.__setattr__(self, "_regions", tuple(self.layers) + tuple(self.inclusions))

    def _paint(self, x_mm: np.ndarray, z_mm: np.ndarray, background: float, attr: str) -> np.ndarray:
        x_mm, z_mm = np.broadcast_arrays(np.asarray(x_mm, float), np.asarray(z_mm, float))
        out = np.full(x_mm.shape, background)
        for region in self._regions:
            out[region.contains(x_mm, z_mm)] = getattr(region, attr)
        return out

    def stiffness_at(self, x_mm: np.ndarray, z_mm: np.ndarray) -> np.ndarray:
        """Relative Young's modulus at the points ``(x_mm, z_mm)`` (broadcast shapes)."""
        return self._paint(x_mm, z_mm, 1.0, "stiffness")

    def echogenicity_at(self, x_mm: np.ndarray, z_mm: np.ndarray) -> np.ndarray:
        """Scatterer amplitude scale at the points ``(x_mm, z_mm)`` (broadcast shapes)."""
        return self._paint(x_mm, z_mm, self.background_echogenicity, "echogenicity")

    def inclusion_masks(self, x_mm: np.ndarray, z_mm: np.ndarray) -> np.ndarray:
        """``(K, *shape)`` bool: pixels where inclusion k is the visible (topmost) region."""
        x_mm, z_mm = np.broadcast_arrays(np.asarray(x_mm, float), np.asarray(z_mm, float))
        label = np.full(x_mm.shape, -1)
        for k, region in enumerate(self._regions):
            label[region.contains(x_mm, z_mm)] = k
        first = len(self.layers)
        return (
            np.stack([label == first + k for k in range(len(self.inclusions))])
            if self.inclusions
            else (np.zeros((0, *x_mm.shape), bool))
        )

    def background_mask(self, x_mm: np.ndarray, z_mm: np.ndarray) -> np.ndarray:
        """``shape`` bool: pixels in no layer and no inclusion (the CNR reference region)."""
        x_mm, z_mm = np.broadcast_arrays(np.asarray(x_mm, float), np.asarray(z_mm, float))
        inside = np.zeros(x_mm.shape, bool)
        for region in self._regions:
            inside |= region.contains(x_mm, z_mm)
        return ~inside

    def grid(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates ``(x_mm, z_mm)``, each ``(H, W)``, of an ``(H, W)`` grid over the region."""
        h, w = shape
        z = (np.arange(h) + 0.5) * self.depth_mm / h
        x = (np.arange(w) + 0.5) * self.width_mm / w
        zz, xx = np.meshgrid(z, x, indexing="ij")
        return xx, zz

    def rasterise(self, shape: tuple[int, int]) -> np.ndarray:
        """Stiffness map ``(H, W)`` float32 (relative modulus) at the pixel centres of an ``(H, W)`` grid."""
        return self.stiffness_at(*self.grid(shape)).astype(np.float32)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def random_phantom(
    rng: np.random.Generator,
    depth_mm: float = 40.0,
    width_mm: float = 25.6,
    max_inclusions: int = 3,
    layer_probability: float = 0.3,
    stiffness_range: tuple[float, float] = STIFFNESS_RANGE,
    echogenicity_range: tuple[float, float] = (0.3, 3.0),
    isoechoic_probability: float = 0.5,
    radius_range_mm: tuple[float, float] = (1.5, 6.0),
) -> Phantom:
    """Draw a phantom.

    Ranges: number of inclusions uniform in ``0..max_inclusions`` (at most 3); each is an ellipse
    with semi-major axis uniform in ``radius_range_mm`` (capped at 0.45 of the region's size), axis
    ratio uniform in [0.5, 1], rotation uniform in [0, 180) deg, centre uniform inside the region
    at least one semi-major axis from its sides and bottom and 2 mm (at most 10 % of the depth)
    below the probe. Stiffness is log-uniform in ``stiffness_range`` (0.2x-5x by
    default); echogenicity equals the background's with ``isoechoic_probability`` (an inclusion
    invisible in B-mode, common in elastography), else log-uniform in ``echogenicity_range``. With
    ``layer_probability`` one horizontal layer is added, its top uniform in [0, depth/2) and
    thickness uniform in [2 mm, depth/3], with the same stiffness/echogenicity law.
    """
    if not 0 <= max_inclusions <= 3:
        raise InputError(f"max_inclusions must be in 0..3, got {max_inclusions}")
    lo, hi = stiffness_range
    if not STIFFNESS_RANGE[0] <= lo <= hi <= STIFFNESS_RANGE[1]:
        raise InputError(f"stiffness_range must lie within {STIFFNESS_RANGE}, got {stiffness_range}")

    def echo() -> float:
        return 1.0 if rng.random() < isoechoic_probability else _log_uniform(rng, *echogenicity_range)

    layers = []
    if rng.random() < layer_probability:
        top = rng.uniform(0.0, depth_mm / 2)
        thickness = rng.uniform(2.0, max(2.0, depth_mm / 3))
        layers.append(Layer(top, top + thickness, _log_uniform(rng, lo, hi), echo()))
    inclusions = []
    for _ in range(int(rng.integers(0, max_inclusions + 1))):
        top_gap = min(2.0, 0.1 * depth_mm)
        a = min(rng.uniform(*radius_range_mm), 0.45 * width_mm, 0.45 * (depth_mm - top_gap))
        b = a * rng.uniform(0.5, 1.0)
        cx = rng.uniform(a, width_mm - a)
        cz = rng.uniform(top_gap + a, depth_mm - a)
        inclusions.append(Inclusion((cx, cz), (a, b), _log_uniform(rng, lo, hi), echo(), rng.uniform(0.0, 180.0)))
    return Phantom(depth_mm, width_mm, tuple(layers), tuple(inclusions))
