"""B-mode image formation for a phased-array sector: moving scatterers -> beam-space envelope ->
log compression -> scan conversion.

Beam space ("polar"): sample ``i`` of beam ``j`` lies at range ``(i + 0.5) * dr`` mm and steering
angle ``-half_angle + (j + 0.5) * dtheta`` rad from the probe (the sector apex, image ``(0, 0)``;
angle positive towards +x). The Cartesian image has square-sided fields of view: row ``i`` at depth
``(i + 0.5) * depth / H``, column ``j`` at ``x = (j + 0.5 - W / 2) * width / W``.

Echo model (baseband, 2D convolution in beam space): each scatterer of complex amplitude ``a`` at
range ``rho`` adds ``a exp(-2 i k rho)`` (``k`` the wavenumber, exact phase) at its beam-space
position; the sum is convolved with a separable Gaussian point-spread function (axial pulse envelope
in range, constant angular beam width, as a phased array gives); the envelope is its modulus.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d, map_coordinates

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class Sector:
    """A sector scan and the Cartesian grid it is converted to.

    Args:
        depth_mm: largest imaged range.  angle_rad: full opening angle.
        samples, beams: beam-space grid size.  height, width: Cartesian image size in pixels.
        width_mm: lateral field of view of the Cartesian image (centred on the probe).
    """

    depth_mm: float
    angle_rad: float
    samples: int
    beams: int
    height: int
    width: int
    width_mm: float

    @property
    def dr_mm(self) -> float:
        return self.depth_mm / self.samples

    @property
    def dtheta_rad(self) -> float:
        return self.angle_rad / self.beams

    @property
    def pixel_mm(self) -> tuple[float, float]:
        """(lateral, axial) Cartesian pixel size in mm."""
        return self.width_mm / self.width, self.depth_mm / self.height

    def pixel_grid_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x, z)`` mm of every Cartesian pixel centre, each ``(H, W)``."""
        dx, dz = self.pixel_mm
        x = (np.arange(self.width) + 0.5 - self.width / 2.0) * dx
        z = (np.arange(self.height) + 0.5) * dz
        return np.meshgrid(x, z)

    def to_beam_index(self, x_mm: np.ndarray, z_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image ``(x, z)`` mm -> fractional beam-space ``(sample, beam)`` indices."""
        rho = np.hypot(x_mm, z_mm)
        theta = np.arctan2(x_mm, z_mm)
        return rho / self.dr_mm - 0.5, (theta + self.angle_rad / 2.0) / self.dtheta_rad - 0.5

    def fan_mask(self) -> np.ndarray:
        """``(H, W)`` bool: Cartesian pixels inside the imaged sector."""
        x, z = self.pixel_grid_mm()
        return (np.hypot(x, z) <= self.depth_mm) & (np.abs(np.arctan2(x, z)) <= self.angle_rad / 2.0) & (z > 0)

    def scan_convert(self, beam_image: np.ndarray) -> np.ndarray:
        """``(samples, beams)`` -> ``(H, W)`` float32 by bilinear interpolation; 0 outside the fan."""
        x, z = self.pixel_grid_mm()
        rows, cols = self.to_beam_index(x, z)
        out = map_coordinates(beam_image, [rows, cols], order=1, mode="nearest")
        return np.where(self.fan_mask(), out, 0.0).astype(np.float32)


def splat(sector: Sector, x_mm: np.ndarray, z_mm: np.ndarray, amplitude: np.ndarray, wavenumber: float) -> np.ndarray:
    """Scatterers at image ``(x, z)`` mm with complex ``amplitude`` -> ``(samples, beams)`` complex
    beam-space sum of ``amplitude * exp(-2 i k rho)``, each shared bilinearly among its four neighbours."""
    rows, cols = sector.to_beam_index(x_mm, z_mm)
    value = amplitude * np.exp(-2j * wavenumber * np.hypot(x_mm, z_mm))
    r0, c0 = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    fr, fc = rows - r0, cols - c0
    out = np.zeros(sector.samples * sector.beams, complex)
    for dr, dc, weight in ((0, 0, (1 - fr) * (1 - fc)), (1, 0, fr * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        keep = (rr >= 0) & (rr < sector.samples) & (cc >= 0) & (cc < sector.beams)
        index = rr[keep] * sector.beams + cc[keep]
        w = weight[keep] * value[keep]
        out += np.bincount(index, w.real, out.size) + 1j * np.bincount(index, w.imag, out.size)
    return out.reshape(sector.samples, sector.beams)


def point_spread(
    iq: np.ndarray, sigma_samples: float, sigma_beams: float, sidelobe: float = 0.0, sidelobe_beams: float = 1.0
) -> np.ndarray:
    """Separable Gaussian PSF in beam space (axial pulse envelope x lateral beam profile), complex in/out.

    ``sidelobe`` adds a wide lateral pedestal (amplitude relative to the main lobe's peak, Gaussian of
    ``sidelobe_beams`` standard deviation): the side-lobe haze that fills dark cavities in real echo."""

    def blur(part: np.ndarray) -> np.ndarray:
        axial = gaussian_filter1d(part, sigma_samples, axis=0, mode="constant")
        out = gaussian_filter1d(axial, sigma_beams, axis=1, mode="constant")
        if sidelobe > 0.0:
            wide = gaussian_filter1d(axial, sidelobe_beams, axis=1, mode="constant")
            out = out + sidelobe * (sidelobe_beams / sigma_beams) * wide  # peak-relative level
        return out

    return blur(iq.real) + 1j * blur(iq.imag)


def log_compress(envelope: np.ndarray, gain_db: float, dynamic_range_db: float) -> np.ndarray:
    """Envelope (1 = unit-echogenicity tissue) -> grey level in [0, 1]: ``20 log10(env) + gain`` mapped
    from ``[-dynamic_range, 0]`` dB."""
    db = 20.0 * np.log10(np.maximum(envelope, 1e-12)) + gain_db
    return np.clip(1.0 + db / dynamic_range_db, 0.0, 1.0)
