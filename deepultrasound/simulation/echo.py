"""Simulated apical echocardiography (2- and 4-chamber views) with known motion, labels, EF and strain.

Typical use::

    from deepultrasound.simulation.echo import EchoConfig, EchoSimulator
    sim = EchoSimulator(EchoConfig(view="4CH", ejection_fraction=55.0), seed=3)
    ed, es = sim.frame(0.0), sim.frame(sim.config.es_phase)
    ed.image                   # (H, W) float32 grey level in [0, 1], 0 outside the fan
    ed.labels                  # (H, W) uint8: 0 background, 1 LV cavity, 2 myocardium, 3 left atrium
    ed.fan_mask                # (H, W) bool
    u = sim.displacement(0.0, sim.config.es_phase)   # (2, H, W) float32 pixels, ED -> ES
    sim.ejection_fraction, sim.global_longitudinal_strain()

Displacement convention (the project's): channel 0 lateral x (along W), channel 1 axial y (along H),
positive right / down; ``u = displacement(fixed_phase, moving_phase)`` is given on the fixed frame's
grid and the tissue at pixel ``p`` of the fixed frame lies at ``p + u(p)`` of the moving frame, so the
moving frame resampled at ``p + u(p)`` reproduces the fixed one.

Anatomy and motion: :mod:`deepultrasound.simulation.echo_heart`; image formation and scan
conversion: :mod:`deepultrasound.simulation.echo_image`. The scatterers are attached to the tissue
(material points), so speckle moves with it, decorrelated only by the out-of-plane part of the twist.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_filter1d, map_coordinates

from deepultrasound.errors import InputError
from deepultrasound.simulation.echo_heart import (
    HeartMotion,
    HeartShape,
    contraction,
    motion_for_ejection_fraction,
)
from deepultrasound.simulation.echo_image import Sector, log_compress, point_spread, splat

VIEWS = ("2CH", "4CH")

# Scatterer amplitude (rms) per tissue class of HeartShape.tissue: background tissue, LV cavity,
# myocardium, left atrium, right-heart blood, pericardium.
_ECHOGENICITY = np.array([0.4, 0.17, 0.75, 0.17, 0.17, 2.0])
_TEXTURE_CELL_MM = 4.0  # correlation length of the slow echogenicity variation of background tissue
_TEXTURE_SPREAD = 0.8  # standard deviation of its log amplitude
_CLUTTER_DEPTH_MM = 30.0  # e-folding depth of the near-field clutter
_SPEED_MM_US = 1.54
_SIDELOBE_WIDTH = 3.0
_SAMPLES_PER_FWHM = 4  # beam-space sampling of the PSF, axially and laterally
_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))


def _check_range(name: str, value: tuple[float, float], low: float, high: float) -> None:
    if len(value) != 2 or not (low <= value[0] <= value[1] <= high):
        raise InputError(f"EchoConfig.{name} must be (min, max) with {low} <= min <= max <= {high}, got {value!r}")


def _check_number(name: str, value: float, low: float, high: float, *, open_interval: bool = False) -> None:
    inside = low < value < high if open_interval else low <= value <= high
    if not (np.isfinite(value) and inside):
        bounds = f"({low}, {high})" if open_interval else f"[{low}, {high}]"
        raise InputError(f"EchoConfig.{name} must lie in {bounds}, got {value!r}")


@dataclass(frozen=True)
class EchoConfig:
    """Parameters of a simulated apical view. Ranges ``(min, max)`` are drawn uniformly per seed.

    Anatomy and motion: ``view`` "2CH" or "4CH"; ``ejection_fraction`` (%) by the single-plane method
    of discs; ``longitudinal_shortening`` (fraction of the LV length the base moves towards the apex
    at end-systole; None: ``0.03 + 0.22 * EF / 100``); ``twist_deg`` (apex-base rotation at
    end-systole); ``es_phase`` (end-systole, fraction of the cycle from end-diastole at 0);
    ``lv_length_mm``, ``tilt_deg`` (long axis from vertical).
    Image: ``height``, ``width`` (pixels, the Cartesian field of view is ``depth x depth`` mm, so the
    fan is cut at the sides as in CAMUS); ``sector_angle_deg``, ``depth_mm``; pulse
    ``center_frequency_mhz``, ``axial_resolution_mm`` (-6 dB envelope width), ``beam_width_deg``
    (-6 dB lateral); ``scatterers_per_mm2``; ``attenuation_db_cm_mhz`` and ``tgc_db_cm`` (two-way
    loss and its compensation); ``gain_db``, ``dynamic_range_db``; ``noise_db`` (receiver noise rms
    relative to unit tissue echo, before TGC); ``clutter_db`` (static near-field clutter at the
    probe); ``sidelobe_db`` (peak level of a lateral side-lobe pedestal ``_SIDELOBE_WIDTH`` beam
    widths wide, relative to the main lobe); ``smoothing`` (the scanner's speckle-reducing filter
    on the log image in beam space, in PSF standard deviations); ``elevation_beam_mm`` (out-of-plane
    motion over which speckle fully decorrelates). Defaults are tuned to CAMUS's grey levels per
    structure and speckle size at 224 x 224 (:func:`deepultrasound.simulation.echo_stats.compare_with_camus`).
    """

    view: str = "4CH"
    ejection_fraction: float = 55.0
    longitudinal_shortening: float | None = None
    twist_deg: float = 12.0
    es_phase: float = 0.35
    lv_length_mm: tuple[float, float] = (78.0, 95.0)
    tilt_deg: tuple[float, float] = (-12.0, 12.0)
    height: int = 256
    width: int = 256
    sector_angle_deg: tuple[float, float] = (60.0, 75.0)
    depth_mm: tuple[float, float] = (145.0, 170.0)
    center_frequency_mhz: float = 2.5
    axial_resolution_mm: float = 2.2
    beam_width_deg: float = 1.7
    scatterers_per_mm2: float = 5.0
    attenuation_db_cm_mhz: float = 0.5
    tgc_db_cm: float = 2.0
    gain_db: float = -14.0
    dynamic_range_db: float = 35.0
    noise_db: float = -33.0
    clutter_db: float = 0.0
    sidelobe_db: float = -8.0
    smoothing: float = 0.5
    elevation_beam_mm: float = 4.0

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise InputError(f"EchoConfig.view must be one of {VIEWS}, got {self.view!r}")
        _check_number("ejection_fraction", self.ejection_fraction, 0.0, 100.0, open_interval=True)
        if self.longitudinal_shortening is not None:
            _check_number("longitudinal_shortening", self.longitudinal_shortening, 0.0, 0.4)
        _check_number("twist_deg", self.twist_deg, 0.0, 30.0)
        _check_number("es_phase", self.es_phase, 0.1, 0.6)
        for name in ("height", "width"):
            if not 16 <= getattr(self, name) <= 4096:
                raise InputError(f"EchoConfig.{name} must be 16 to 4096 pixels, got {getattr(self, name)!r}")
        _check_range("lv_length_mm", self.lv_length_mm, 40.0, 130.0)
        _check_range("tilt_deg", self.tilt_deg, -30.0, 30.0)
        _check_range("sector_angle_deg", self.sector_angle_deg, 30.0, 100.0)
        _check_range("depth_mm", self.depth_mm, 60.0, 250.0)
        for name, low, high in (
            ("center_frequency_mhz", 1.0, 10.0),
            ("axial_resolution_mm", 0.1, 5.0),
            ("beam_width_deg", 0.2, 10.0),
            ("scatterers_per_mm2", 0.5, 50.0),
            ("attenuation_db_cm_mhz", 0.0, 2.0),
            ("tgc_db_cm", 0.0, 10.0),
            ("gain_db", -60.0, 60.0),
            ("dynamic_range_db", 10.0, 120.0),
            ("noise_db", -120.0, 20.0),
            ("clutter_db", -120.0, 20.0),
            ("sidelobe_db", -120.0, 0.0),
            ("smoothing", 0.0, 4.0),
            ("elevation_beam_mm", 0.5, 20.0),
        ):
            _check_number(name, getattr(self, name), low, high)
        if self.lv_length_mm[1] > 0.8 * self.depth_mm[0]:
            raise InputError(
                f"EchoConfig.lv_length_mm up to {self.lv_length_mm[1]} does not fit a {self.depth_mm[0]} mm deep "
                "sector; allow at most 0.8 x the smallest depth"
            )

    @property
    def shortening(self) -> float:
        """Longitudinal shortening in use (the given one, or the EF-based default)."""
        if self.longitudinal_shortening is not None:
            return self.longitudinal_shortening
        return 0.03 + 0.22 * self.ejection_fraction / 100.0


def random_heart(config: EchoConfig, depth_mm: float, rng: np.random.Generator) -> HeartShape:
    """Draw an end-diastolic anatomy for ``config.view`` that fits a ``depth_mm`` sector."""
    lv_length = rng.uniform(*config.lv_length_mm)
    width = rng.uniform(0.27, 0.33) * lv_length
    return HeartShape(
        apex_mm=(rng.uniform(-8.0, 8.0), rng.uniform(0.12, 0.18) * depth_mm),
        tilt_rad=np.deg2rad(rng.uniform(*config.tilt_deg)),
        lv_length=lv_length,
        b_left=width * rng.uniform(0.9, 1.1),
        b_right=width * rng.uniform(0.9, 1.1),
        wall=rng.uniform(8.0, 11.0),
        apex_wall=rng.uniform(5.0, 8.0),
        la_length=rng.uniform(0.45, 0.6) * lv_length,
        la_radius=rng.uniform(0.2, 0.26) * lv_length,
        four_chamber=config.view == "4CH",
    )


@dataclass(frozen=True)
class EchoFrame:
    """One simulated frame: ``image`` (H, W) float32 in [0, 1]; ``labels`` (H, W) uint8 (CAMUS
    convention, 0 outside the fan); ``fan_mask`` (H, W) bool; ``phase`` in the cycle; ``contraction``."""

    image: np.ndarray
    labels: np.ndarray
    fan_mask: np.ndarray
    phase: float
    contraction: float


@dataclass(frozen=True)
class _Scatterers:
    """Material positions (heart frame, mm) and two independent complex amplitude sets (mixed by the
    out-of-plane motion), already scaled by echogenicity. All ``(N,)``."""

    lng: np.ndarray
    r: np.ndarray
    first: np.ndarray
    second: np.ndarray


class EchoSimulator:
    """A simulated heart, probe and cycle, drawn from ``seed``; frames and truth at any phase.

    Args:
        config: parameters (defaults: a 4-chamber view, EF 55 %, 256 x 256 pixels).
        seed: the only source of randomness; the same seed and config give identical output.
    """

    def __init__(self, config: EchoConfig | None = None, seed: int = 0) -> None:
        self.config = config = config or EchoConfig()
        self.seed = seed
        rng_sector, rng_heart, rng_scatter, rng_clutter = np.random.default_rng(seed).spawn(4)
        depth = rng_sector.uniform(*config.depth_mm)
        angle = np.deg2rad(rng_sector.uniform(*config.sector_angle_deg))
        sigma_r = config.axial_resolution_mm / _FWHM
        sigma_theta = np.deg2rad(config.beam_width_deg) / _FWHM
        self.sector = Sector(
            depth_mm=depth,
            angle_rad=angle,
            samples=int(np.ceil(depth * _SAMPLES_PER_FWHM / (sigma_r * _FWHM))),
            beams=int(np.ceil(angle * _SAMPLES_PER_FWHM / (sigma_theta * _FWHM))),
            height=config.height,
            width=config.width,
            width_mm=depth,
        )
        self._sigma = (sigma_r / self.sector.dr_mm, sigma_theta / self.sector.dtheta_rad)  # in beam-space samples
        self._sidelobe = (10 ** (config.sidelobe_db / 20.0), _SIDELOBE_WIDTH * self._sigma[1])
        self.shape = random_heart(config, depth, rng_heart)
        self.motion: HeartMotion = motion_for_ejection_fraction(
            self.shape, config.ejection_fraction, config.shortening, np.deg2rad(config.twist_deg)
        )
        self._scatterers = self._draw_scatterers(rng_scatter)
        self._clutter = self._draw_clutter(rng_clutter)
        self._pixels_mm = self.sector.pixel_grid_mm()
        self._fan = self.sector.fan_mask()

    # -- truth -------------------------------------------------------------------------------------

    @property
    def ejection_fraction(self) -> float:
        """Truth EF (%): single-plane method of discs on the endocardial contour, ED vs ES."""
        return 100.0 * (1.0 - self.motion.cavity_volume_ml(1.0) / self.motion.cavity_volume_ml(0.0))

    def global_longitudinal_strain(self, from_phase: float = 0.0, to_phase: float | None = None) -> float:
        """Truth GLS (%): change of the endocardial contour length from ``from_phase`` to ``to_phase``
        (default end-systole), relative to its length at ``from_phase``; shortening is negative."""
        to_phase = self.config.es_phase if to_phase is None else to_phase
        start = self.motion.contour_length_mm(float(contraction(from_phase, self.config.es_phase)))
        end = self.motion.contour_length_mm(float(contraction(to_phase, self.config.es_phase)))
        return 100.0 * (end - start) / start

    def _material_of_pixels(self, c: float) -> tuple[np.ndarray, np.ndarray]:
        """Material heart ``(lng, r)`` (mm) of the tissue at every pixel at contraction ``c``."""
        lng, r = self.shape.to_heart(*self._pixels_mm)
        return self.motion.inverse(lng, r, c)

    def labels(self, phase: float) -> np.ndarray:
        """``(H, W)`` uint8 CAMUS labels at ``phase``, 0 outside the fan."""
        labels = self.shape.labels(*self._material_of_pixels(self._contraction(phase)))
        return np.where(self._fan, labels, 0).astype(np.uint8)

    def displacement(self, fixed_phase: float, moving_phase: float) -> np.ndarray:
        """``(2, H, W)`` float32 pixels: tissue at pixel ``p`` of the ``fixed_phase`` frame lies at
        ``p + u(p)`` in the ``moving_phase`` frame (channel 0 lateral x, 1 axial y). Dense: defined
        outside the fan too."""
        lng, r = self._material_of_pixels(self._contraction(fixed_phase))
        moved_l, moved_r, _ = self.motion.forward(lng, r, self._contraction(moving_phase))
        x, z = self.shape.to_image(moved_l, moved_r)
        dx, dz = self.sector.pixel_mm
        return np.stack([(x - self._pixels_mm[0]) / dx, (z - self._pixels_mm[1]) / dz]).astype(np.float32)

    # -- images ------------------------------------------------------------------------------------

    def frame(self, phase: float) -> EchoFrame:
        """The B-mode frame, labels and fan mask at ``phase`` (0 end-diastole, ``es_phase`` end-systole)."""
        c = self._contraction(phase)
        image = self.sector.scan_convert(self._beam_image(phase, c))
        return EchoFrame(image, self.labels(phase), self._fan.copy(), float(phase), c)

    def sequence(self, n_frames: int) -> list[EchoFrame]:
        """``n_frames`` frames evenly spaced over one cycle, starting at end-diastole."""
        if n_frames < 1:
            raise InputError(f"n_frames must be at least 1, got {n_frames!r}")
        return [self.frame(k / n_frames) for k in range(n_frames)]

    def _contraction(self, phase: float) -> float:
        if not np.isfinite(phase):
            raise InputError(f"phase must be a finite number, got {phase!r}")
        return float(contraction(phase, self.config.es_phase))

    def _beam_image(self, phase: float, c: float) -> np.ndarray:
        """``(samples, beams)`` log-compressed grey levels in [0, 1] at contraction ``c``."""
        config, sector, scat = self.config, self.sector, self._scatterers
        lng, r, out_of_plane = self.motion.forward(scat.lng, scat.r, c)
        x, z = self.shape.to_image(lng, r)
        mix = 0.5 * np.pi * np.minimum(np.abs(out_of_plane) / config.elevation_beam_mm, 1.0)
        amplitude = scat.first * np.cos(mix) + scat.second * np.sin(mix)
        wavenumber = 2.0 * np.pi * config.center_frequency_mhz / _SPEED_MM_US
        iq = point_spread(splat(sector, x, z, amplitude, wavenumber), *self._sigma, *self._sidelobe)
        rho_cm = (np.arange(sector.samples) + 0.5)[:, None] * sector.dr_mm / 10.0
        iq = iq / np.sqrt(self._cell_weight(rho_cm * 10.0)) + self._clutter
        loss_db = 2.0 * config.attenuation_db_cm_mhz * config.center_frequency_mhz * rho_cm
        rng = np.random.default_rng([self.seed, int(round(np.mod(phase, 1.0) * 1e9))])
        noise = rng.standard_normal(iq.shape) + 1j * rng.standard_normal(iq.shape)
        noise = gaussian_filter1d(noise.real, self._sigma[0], axis=0) + 1j * gaussian_filter1d(
            noise.imag, self._sigma[0], axis=0
        )
        noise *= 10 ** (config.noise_db / 20.0) / np.sqrt(np.mean(np.abs(noise) ** 2))
        received = iq * 10 ** (-loss_db / 20.0) + noise
        envelope = np.abs(received) * 10 ** (config.tgc_db_cm * rho_cm / 20.0)
        grey = log_compress(envelope, config.gain_db, config.dynamic_range_db)
        return gaussian_filter(grey, (config.smoothing * self._sigma[0], config.smoothing * self._sigma[1]))

    def _cell_weight(self, rho_mm: np.ndarray) -> np.ndarray:
        """Expected |iq|^2 of unit-echogenicity tissue at range ``rho_mm`` before normalisation:
        scatterers per beam-space cell times the PSF's sum of squared weights."""
        sector = self.sector
        per_cell = self.config.scatterers_per_mm2 * rho_mm * sector.dr_mm * sector.dtheta_rad
        return np.maximum(per_cell, 1e-6) / (4.0 * np.pi * self._sigma[0] * self._sigma[1])

    def _draw_scatterers(self, rng: np.random.Generator) -> _Scatterers:
        """Uniform scatterers over the sector and a margin (tissue moves in from outside), with
        complex Gaussian amplitudes scaled by the echogenicity of their tissue."""
        sector = self.sector
        reach = sector.depth_mm + 15.0
        half = sector.angle_rad / 2.0 + 0.15
        area = half * reach**2  # the enlarged sector
        count = rng.poisson(self.config.scatterers_per_mm2 * area)
        rho = reach * np.sqrt(rng.uniform(0.0, 1.0, count))
        theta = rng.uniform(-half, half, count)
        x, z = rho * np.sin(theta), rho * np.cos(theta)
        lng, r = self.shape.to_heart(x, z)
        tissue = self.shape.tissue(lng, r)
        echo = _ECHOGENICITY[tissue] * self._texture(rng, x, z)
        scale = echo / np.sqrt(2.0)
        return _Scatterers(
            lng,
            r,
            scale * (rng.standard_normal(count) + 1j * rng.standard_normal(count)),
            scale * (rng.standard_normal(count) + 1j * rng.standard_normal(count)),
        )

    def _texture(self, rng: np.random.Generator, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Slowly varying echogenicity factor of the tissue (log-normal, median 1)."""
        size = int(np.ceil(2.0 * (self.sector.depth_mm + 15.0) / _TEXTURE_CELL_MM)) + 1
        field = gaussian_filter(rng.standard_normal((size, size)), 1.5)
        field /= field.std()
        rows = z / _TEXTURE_CELL_MM
        cols = (x + self.sector.depth_mm + 15.0) / _TEXTURE_CELL_MM
        return np.exp(_TEXTURE_SPREAD * map_coordinates(field, [rows, cols], order=1, mode="nearest"))

    def _draw_clutter(self, rng: np.random.Generator) -> np.ndarray:
        """Static near-field clutter (reverberation): speckle with the PSF's texture, decaying with range."""
        shape = (self.sector.samples, self.sector.beams)
        clutter = point_spread(rng.standard_normal(shape) + 1j * rng.standard_normal(shape), *self._sigma)
        clutter /= np.sqrt(np.mean(np.abs(clutter) ** 2))
        rho = (np.arange(self.sector.samples) + 0.5)[:, None] * self.sector.dr_mm
        return clutter * 10 ** (self.config.clutter_db / 20.0) * np.exp(-rho / _CLUTTER_DEPTH_MM)
