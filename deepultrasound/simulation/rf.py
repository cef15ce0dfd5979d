"""Beamformed RF lines from point scatterers with a separable pulse-echo point-spread function.

Units: positions in mm (``x`` lateral, ``z`` depth), frequencies in MHz, sound speed in m/s
(= mm/ms; 1540 m/s = 1.54 mm/us), attenuation in dB/cm/MHz. Sample ``i`` of a line lies at depth
``(i + 0.5) * dz`` and line ``j`` at ``x = (j + 0.5) * pitch``, the pixel centres of
:meth:`deepultrasound.simulation.phantom.Phantom.grid`.

Each scatterer ``s`` at its exact position adds to line ``j``, sample depth ``z``::

    a_s * L(x_j - x_s; z_s) * exp(-(z - z_s)^2 / (2 sigma_z^2)) * cos(2 pi f0 * 2 (z - z_s) / c)

* axial envelope: Gaussian whose pulse-echo spectrum has the -6 dB fractional bandwidth ``B``:
  ``sigma_t = sqrt(2 ln 2) / (pi B f0)``, ``sigma_z = c sigma_t / 2``.
* lateral profile ``L``: Gaussian, product of transmit and receive one-way beams. Receive is
  dynamically focused (one-way FWHM ``w = 0.886 lambda F#`` at every depth, rectangular aperture);
  a focused transmit beam has FWHM ``sqrt(w^2 + (|z - z_f| / F#)^2)`` (the converging aperture cone,
  so the beam widens away from the focal depth ``z_f``); a plane-wave transmit is laterally flat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from deepultrasound.errors import InputError

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
_ENVELOPE_HALF_WIDTH_SIGMAS = 3.5


@dataclass(frozen=True)
class Transducer:
    """Linear-array imaging parameters (see the module docstring for the PSF they define)."""

    center_frequency_mhz: float = 4.4
    fractional_bandwidth: float = 0.5
    f_number: float = 2.0
    focal_depth_mm: float = 20.0
    transmit: Literal["focused", "plane_wave"] = "focused"
    sound_speed_m_s: float = 1540.0

    def __post_init__(self) -> None:
        for name in ("center_frequency_mhz", "fractional_bandwidth", "f_number", "focal_depth_mm", "sound_speed_m_s"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise InputError(f"Transducer.{name} must be a positive finite number, got {value!r}")
        if self.transmit not in ("focused", "plane_wave"):
            raise InputError(f"Transducer.transmit must be 'focused' or 'plane_wave', got {self.transmit!r}")

    @property
    def wavelength_mm(self) -> float:
        return self.sound_speed_m_s * 1e-3 / self.center_frequency_mhz

    @property
    def axial_sigma_mm(self) -> float:
        """Standard deviation (mm) of the Gaussian pulse-echo envelope in depth."""
        sigma_t_us = np.sqrt(2.0 * np.log(2.0)) / (np.pi * self.fractional_bandwidth * self.center_frequency_mhz)
        return 0.5 * self.sound_speed_m_s * 1e-3 * sigma_t_us

    def lateral_sigma_mm(self, z_mm: np.ndarray) -> np.ndarray:
        """Standard deviation (mm) of the two-way lateral amplitude profile at depth ``z_mm``."""
        receive = 0.886 * self.wavelength_mm * self.f_number / _FWHM_PER_SIGMA
        if self.transmit == "plane_wave":
            return np.full(np.shape(z_mm), receive)
        transmit = np.sqrt(receive**2 + (np.abs(z_mm - self.focal_depth_mm) / self.f_number / _FWHM_PER_SIGMA) ** 2)
        return receive * transmit / np.sqrt(receive**2 + transmit**2)

    def resolution_cell_mm2(self) -> float:
        """Area (mm^2) of the -6 dB resolution cell at the focus: axial x lateral envelope FWHM."""
        return float(_FWHM_PER_SIGMA**2 * self.axial_sigma_mm * self.lateral_sigma_mm(self.focal_depth_mm))

    def axial_pulse(self, dz_mm: np.ndarray) -> np.ndarray:
        """Pulse-echo RF waveform at depth offsets ``dz_mm`` (unit peak amplitude)."""
        phase = 2.0 * np.pi * self.center_frequency_mhz * 2.0 * dz_mm / (self.sound_speed_m_s * 1e-3)
        return np.exp(-0.5 * (dz_mm / self.axial_sigma_mm) ** 2) * np.cos(phase)


def _check_positions(x_mm: np.ndarray, z_mm: np.ndarray, amplitude: np.ndarray) -> None:
    if not (x_mm.shape == z_mm.shape == amplitude.shape and x_mm.ndim == 1):
        raise InputError(
            f"scatterer x, z and amplitude must be 1D arrays of one length, got {x_mm.shape}, {z_mm.shape}, "
            f"{amplitude.shape}"
        )


def beamformed_rf(
    x_mm: np.ndarray,
    z_mm: np.ndarray,
    amplitude: np.ndarray,
    transducer: Transducer,
    shape: tuple[int, int],
    spacing_mm: tuple[float, float],
    chunk: int = 200_000,
) -> np.ndarray:
    """Noise-free RF image of point scatterers.

    Args:
        x_mm, z_mm: ``(S,)`` exact scatterer positions (no rounding to the grid).
        amplitude: ``(S,)`` scatterer amplitudes (already including attenuation, if any).
        transducer: PSF parameters.
        shape: ``(H, W)`` samples x lines.
        spacing_mm: ``(lateral pitch, axial sample spacing)`` in mm.
        chunk: scatterers processed at once (bounds memory).

    Returns:
        ``(H, W)`` float64 RF.
    """
    _check_positions(x_mm, z_mm, amplitude)
    h, w = shape
    pitch, dz = spacing_mm
    half_axial = int(np.ceil(_ENVELOPE_HALF_WIDTH_SIGMAS * transducer.axial_sigma_mm / dz))
    half_lateral = int(np.ceil(3.0 * transducer.lateral_sigma_mm(np.array([0.0, h * dz])).max() / pitch))
    # Pad the image so that every footprint fits; clip far-away scatterers into the padding, cropped below.
    pad_r, pad_c = 2 * half_axial + 1, 2 * half_lateral + 1
    hp, wp = h + 2 * pad_r, w + 2 * pad_c
    axial_offsets = np.arange(-half_axial, half_axial + 1)
    out = np.zeros(hp * wp)
    for start in range(0, x_mm.size, chunk):
        xs, zs, amp = (v[start : start + chunk] for v in (x_mm, z_mm, amplitude))
        centre_row = np.clip(np.rint(zs / dz - 0.5).astype(np.int64), -half_axial - 1, h + half_axial)
        rows = centre_row[:, None] + axial_offsets  # (S, K)
        axial = transducer.axial_pulse((rows + 0.5) * dz - zs[:, None])
        centre_col = np.clip(np.rint(xs / pitch - 0.5).astype(np.int64), -half_lateral - 1, w + half_lateral)
        base = (rows + pad_r) * wp + (centre_col + pad_c)[:, None]
        sigma = transducer.lateral_sigma_mm(zs)
        for offset in range(-half_lateral, half_lateral + 1):
            lateral = amp * np.exp(-0.5 * (((centre_col + offset + 0.5) * pitch - xs) / sigma) ** 2)
            out += np.bincount((base + offset).ravel(), (axial * lateral[:, None]).ravel(), minlength=hp * wp)
    return out.reshape(hp, wp)[pad_r : pad_r + h, pad_c : pad_c + w]


def attenuation_gain(z_mm: np.ndarray, attenuation_db_cm_mhz: float, center_frequency_mhz: float) -> np.ndarray:
    """Two-way amplitude factor at depth ``z_mm`` for frequency-independent attenuation at ``f0``."""
    return 10.0 ** (-attenuation_db_cm_mhz * center_frequency_mhz * 2.0 * (z_mm / 10.0) / 20.0)


def band_limited_noise(
    rng: np.random.Generator, shape: tuple[int, int], transducer: Transducer, dz_mm: float
) -> np.ndarray:
    """``(H, W)`` electronic noise of unit standard deviation, filtered axially by the pulse (the
    transducer's passband), independent between lines."""
    half = int(np.ceil(_ENVELOPE_HALF_WIDTH_SIGMAS * transducer.axial_sigma_mm / dz_mm))
    kernel = transducer.axial_pulse(np.arange(-half, half + 1) * dz_mm)
    white = rng.standard_normal((shape[0] + 2 * half, shape[1]))
    filtered = np.stack([np.convolve(white[:, j], kernel, mode="valid") for j in range(shape[1])], axis=1)
    return filtered / np.linalg.norm(kernel)
