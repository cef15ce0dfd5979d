"""Quasi-static elastography sequences with known displacement and strain.

Frame 0 is uncompressed; frame ``k`` has the probe pushed in by ``d_k`` (``d_k`` grows with ``k``).
Truth is given on the RF grid (pixel centres, see :mod:`deepultrasound.simulation.rf`):

* ``displacement_mm`` / ``displacement_px``: ``(N-1, 2, H, W)``, channel 0 lateral, 1 axial (positive
  to the right / downwards), from frame 0 to frame ``k`` (index ``k - 1``), on the frame-0 grid: the
  tissue at pixel ``p`` of frame 0 lies at ``p + u(p)`` in frame ``k``, so frame ``k`` resampled at
  ``p + u(p)`` (MONAI ``Warp`` of frame ``k`` by ``u``) reproduces frame 0.
* ``frame_displacement_mm`` / ``_px``: the same from frame ``k - 1`` to frame ``k``, on the frame
  ``k - 1`` grid.
* ``strain_percent`` / ``frame_strain_percent``: axial strain ``100 * d u_z / d z`` of those fields
  (compression negative), central differences on the RF grid of the exact FE displacement.

Pixels: lateral px = mm / lateral pitch, axial px = mm / axial spacing.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.ndimage import map_coordinates

from deepultrasound.simulation.mechanics import CompressionSolution, solve_compression
from deepultrasound.simulation.phantom import Phantom, random_phantom
from deepultrasound.simulation.rf import Transducer, attenuation_gain, band_limited_noise, beamformed_rf

MeshCount = Annotated[int, Field(ge=2, le=400)]


class SimulationConfig(BaseModel):
    """Parameters of a simulated sequence. Defaults reproduce the geometry of the DeepUSE in vivo data
    (2000 samples x 128 lines, 0.02 mm x 0.2 mm, 6 frames) and its measured spectrum (4.4 MHz centre,
    about 50 % -6 dB bandwidth)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_frames: int = Field(6, ge=2, le=64, description="frames, frame 0 uncompressed")
    height: int = Field(2000, ge=32, le=8192, description="axial samples per line")
    width: int = Field(128, ge=8, le=1024, description="RF lines")
    axial_spacing_mm: float = Field(0.02, gt=0.002, le=0.2, description="mm per sample (0.02 = 38.5 MHz)")
    lateral_pitch_mm: float = Field(0.2, ge=0.05, le=0.5, description="mm between lines")

    compression_step_percent: float = Field(
        1.0, ge=0.1, le=3.0, description="applied axial strain added per frame, % of depth"
    )
    compression_jitter: float = Field(
        0.0, ge=0.0, le=0.9, description="relative random variation of each step (uniform +-)"
    )
    poisson: float = Field(0.495, ge=0.3, lt=0.5, description="Poisson ratio (plane strain)")
    contact: Literal["slip", "bonded"] = Field("slip", description="probe-tissue contact")
    mesh_cells: tuple[MeshCount, MeshCount] = Field(
        (80, 64), description="(axial, lateral) FE cells, 2 P2 triangles each"
    )
    margin_mm: float = Field(
        2.0,
        ge=0.0,
        le=20.0,
        description="tissue modelled beyond the image sides and bottom (plus the "
        "compression, so no tissue enters from outside)",
    )

    center_frequency_mhz: float = Field(4.4, ge=1.0, le=20.0, description="pulse centre frequency")
    fractional_bandwidth: float = Field(0.5, ge=0.2, le=1.2, description="pulse-echo -6 dB bandwidth / f0")
    f_number: float = Field(2.0, ge=0.5, le=8.0, description="aperture F-number (transmit and receive)")
    focal_depth_mm: float = Field(20.0, gt=0.0, le=200.0, description="transmit focal depth")
    transmit: Literal["focused", "plane_wave"] = "focused"
    sound_speed_m_s: float = Field(1540.0, ge=1300.0, le=1800.0)
    scatterers_per_cell: float = Field(
        12.0, ge=0.5, le=100.0, description="scatterers per -6 dB resolution cell at the focus"
    )
    attenuation_db_cm_mhz: float = Field(0.5, ge=0.0, le=2.0, description="frequency-independent, at f0")
    tgc: bool = Field(True, description="time-gain compensation of the nominal attenuation")
    snr_db: float | None = Field(
        40.0, ge=-10.0, le=120.0, description="echo RMS / noise RMS before TGC; None = no noise"
    )
    decorrelation: float = Field(
        0.0, ge=0.0, le=1.0, description="fraction of scatterer amplitudes re-drawn per frame (out-of-plane motion)"
    )

    max_inclusions: int = Field(3, ge=0, le=3, description="random phantom: 0..max inclusions")
    layer_probability: float = Field(0.3, ge=0.0, le=1.0, description="random phantom: chance of a layer")

    def transducer(self) -> Transducer:
        return Transducer(
            self.center_frequency_mhz,
            self.fractional_bandwidth,
            self.f_number,
            self.focal_depth_mm,
            self.transmit,
            self.sound_speed_m_s,
        )

    @property
    def spacing_mm(self) -> tuple[float, float]:
        """(lateral, axial) pixel size in mm."""
        return self.lateral_pitch_mm, self.axial_spacing_mm


@dataclass
class SimulatedSequence:
    """A simulated sequence and its truth. Shapes: ``N`` frames, ``H`` samples, ``W`` lines, ``K`` inclusions."""

    rf: np.ndarray  # (N, H, W) float32, each frame scaled to max |rf| = 1
    displacement_mm: np.ndarray  # (N-1, 2, H, W) float32, frame 0 -> k
    displacement_px: np.ndarray  # (N-1, 2, H, W) float32
    strain_percent: np.ndarray  # (N-1, H, W) float32, axial, frame 0 -> k
    frame_displacement_mm: np.ndarray  # (N-1, 2, H, W) float32, frame k-1 -> k on the frame k-1 grid
    frame_displacement_px: np.ndarray  # (N-1, 2, H, W) float32
    frame_strain_percent: np.ndarray  # (N-1, H, W) float32
    applied_strain_percent: np.ndarray  # (N,) float64, applied axial strain of each frame (<= 0)
    compression_mm: np.ndarray  # (N,) float64, probe displacement of each frame
    mechanics: CompressionSolution  # FE field per mm of compression: truth = compression_mm[k] * field
    stiffness: np.ndarray  # (H, W) float32 relative Young's modulus (frame 0)
    inclusion_masks: np.ndarray  # (K, H, W) bool
    background_mask: np.ndarray  # (H, W) bool: neither layer nor inclusion
    phantom: Phantom
    config: SimulationConfig
    seed: int


def _compression_steps(config: SimulationConfig, rng: np.random.Generator) -> np.ndarray:
    steps = config.compression_step_percent * (
        1.0 + config.compression_jitter * rng.uniform(-1, 1, config.n_frames - 1)
    )
    return np.concatenate([[0.0], np.cumsum(steps)]) / 100.0  # applied |strain| per frame


def _axial_strain_percent(displacement_mm: np.ndarray, dz_mm: float) -> np.ndarray:
    return (100.0 * np.gradient(displacement_mm[:, 1], dz_mm, axis=-2)).astype(np.float32)


def _to_pixels(displacement_mm: np.ndarray, spacing_mm: tuple[float, float]) -> np.ndarray:
    """``(..., 2, H, W)`` mm -> pixels (channel 0 / lateral pitch, channel 1 / axial spacing)."""
    return (displacement_mm / np.array(spacing_mm)[:, None, None]).astype(np.float32)


def _frame_to_frame(unit_px: np.ndarray, scale: np.ndarray, shape: tuple[int, int], pad_col: int) -> np.ndarray:
    """Pixel displacement from frame k-1 to k on the frame k-1 grid, for the field ``scale[k] * unit_px``
    given on the frame-0 grid extended below and beside the image (``unit_px`` is ``(2, H + pad_row,
    W + 2 pad_col)``, so sources outside the image are known): invert ``y = x + s_{k-1} U(x)`` by
    fixed-point iteration. Returns ``(len(scale) - 1, 2, H, W)``."""
    h, w = shape
    grid = np.stack(np.meshgrid(np.arange(h), np.arange(w) + pad_col, indexing="ij")).astype(float)  # row, col
    out = []
    for previous, current in zip(scale[:-1], scale[1:]):
        source = grid.copy()
        for _ in range(6):
            u = np.stack([map_coordinates(c, source, order=1, mode="nearest") for c in unit_px])
            source = grid - previous * u[::-1]
        out.append((current - previous) * u)
    return np.stack(out).astype(np.float32)


def simulate_sequence(
    config: SimulationConfig | None = None, seed: int = 0, phantom: Phantom | None = None
) -> SimulatedSequence:
    """Simulate ``config.n_frames`` RF frames under increasing compression.

    Args:
        config: parameters (defaults: the in vivo geometry).
        seed: the only source of randomness; the same seed gives identical output.
        phantom: material map over ``height * axial_spacing`` x ``width * pitch`` mm; drawn with
            :func:`random_phantom` when None.

    Returns:
        :class:`SimulatedSequence`. The mechanics is linear, so one FE solve for 1 mm of compression is
        scaled for every frame.
    """
    config = config or SimulationConfig()
    rng_phantom, rng_steps, rng_scat, rng_frames = np.random.default_rng(seed).spawn(4)
    h, w = config.height, config.width
    pitch, dz = config.spacing_mm
    depth, width = h * dz, w * pitch
    if phantom is None:
        phantom = random_phantom(rng_phantom, depth, width, config.max_inclusions, config.layer_probability)
    scale_strain = _compression_steps(config, rng_steps)
    s_max = scale_strain[-1]
    fe_depth = depth + config.margin_mm + s_max * depth / (1.0 - s_max)
    x_range = (-config.margin_mm, width + config.margin_mm)
    solution = solve_compression(phantom, x_range, fe_depth, config.mesh_cells, config.poisson, config.contact)
    scale_mm = scale_strain * fe_depth  # probe displacement (mm) per frame

    xx, zz = phantom.grid((h, w))
    # Truth on the image grid extended by the largest motion, so that frame-to-frame sources are known.
    pad_row = int(np.ceil(scale_mm[-1] / dz)) + 2
    pad_col = int(np.ceil(scale_mm[-1] / pitch)) + 2
    x_ext = np.clip((np.arange(-pad_col, w + pad_col) + 0.5) * pitch, *x_range)
    z_ext = np.minimum((np.arange(h + pad_row) + 0.5) * dz, fe_depth)
    unit_ext = solution.displacement_at(x_ext[None, :], z_ext[:, None])  # (2, H+, W+) per mm of compression
    unit_mm = unit_ext[:, :h, pad_col : pad_col + w]
    displacement_mm = (scale_mm[1:, None, None, None] * unit_mm).astype(np.float32)
    frame_px = _frame_to_frame(_to_pixels(unit_ext, config.spacing_mm), scale_mm, (h, w), pad_col)

    transducer = config.transducer()
    area = (x_range[1] - x_range[0]) * fe_depth
    n_scat = int(rng_scat.poisson(config.scatterers_per_cell * area / transducer.resolution_cell_mm2()))
    xs = rng_scat.uniform(*x_range, n_scat)
    zs = rng_scat.uniform(0.0, fe_depth, n_scat)
    echogenicity = phantom.echogenicity_at(xs, zs)
    amplitude = rng_scat.standard_normal(n_scat) * echogenicity
    unit_scat = solution.displacement_at(xs, zs)
    tgc = 1.0 / attenuation_gain(zz[:, :1], config.attenuation_db_cm_mhz, config.center_frequency_mhz)

    frames = []
    for k, s in enumerate(scale_mm):
        if k > 0 and config.decorrelation > 0:
            redraw = rng_frames.random(n_scat) < config.decorrelation
            amplitude[redraw] = rng_frames.standard_normal(int(redraw.sum())) * echogenicity[redraw]
        x_k, z_k = xs + s * unit_scat[0], zs + s * unit_scat[1]
        gain = attenuation_gain(z_k, config.attenuation_db_cm_mhz, config.center_frequency_mhz)
        rf = beamformed_rf(x_k, z_k, amplitude * gain, transducer, (h, w), config.spacing_mm)
        if config.snr_db is not None:
            noise_std = np.sqrt(np.mean(rf**2)) * 10.0 ** (-config.snr_db / 20.0)
            rf = rf + noise_std * band_limited_noise(rng_frames, (h, w), transducer, dz)
        if config.tgc:
            rf = rf * tgc
        frames.append((rf / max(np.abs(rf).max(), np.finfo(float).tiny)).astype(np.float32))

    frame_mm = frame_px * np.array(config.spacing_mm)[:, None, None]
    return SimulatedSequence(
        rf=np.stack(frames),
        displacement_mm=displacement_mm,
        displacement_px=_to_pixels(displacement_mm, config.spacing_mm),
        strain_percent=_axial_strain_percent(displacement_mm, dz),
        frame_displacement_mm=frame_mm.astype(np.float32),
        frame_displacement_px=frame_px,
        frame_strain_percent=_axial_strain_percent(frame_mm, dz),
        applied_strain_percent=-100.0 * scale_strain,
        compression_mm=scale_mm,
        mechanics=solution,
        stiffness=phantom.rasterise((h, w)),
        inclusion_masks=phantom.inclusion_masks(xx, zz),
        background_mask=phantom.background_mask(xx, zz),
        phantom=phantom,
        config=config,
        seed=seed,
    )


def _write_image(array: np.ndarray, path: Path, spacing: tuple[float, ...], vector: bool = False) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing(spacing)
    fd, tmp = tempfile.mkstemp(suffix=".mha", dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_sequence(sequence: SimulatedSequence, path_prefix: str | os.PathLike) -> list[Path]:
    """Write ``<prefix>_rf.mha`` (N, H, W), ``_displacement.mha`` (N-1, H, W) 2-vector in pixels
    (lateral, axial), ``_strain.mha`` (N-1, H, W) in %, ``_stiffness.mha`` (H, W), ``_inclusions.mha``
    (H, W) uint8 label (0 none, k inclusion k). Spacing (lateral, axial, frame) = (pitch, dz, 1) mm as
    in the in vivo files. Each file is written atomically. Returns the paths."""
    prefix = Path(path_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    spacing = (*sequence.config.spacing_mm, 1.0)
    labels = np.zeros(sequence.stiffness.shape, np.uint8)
    for k, mask in enumerate(sequence.inclusion_masks):
        labels[mask] = k + 1
    items = [
        ("rf", sequence.rf, spacing, False),
        ("displacement", np.ascontiguousarray(sequence.displacement_px.transpose(0, 2, 3, 1)), spacing, True),
        ("strain", sequence.strain_percent, spacing, False),
        ("stiffness", sequence.stiffness, spacing[:2], False),
        ("inclusions", labels, spacing[:2], False),
    ]
    paths = []
    for name, array, sp, vector in items:
        path = prefix.with_name(f"{prefix.name}_{name}.mha")
        _write_image(array, path, sp, vector)
        paths.append(path)
    return paths
