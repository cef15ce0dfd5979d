"""Training data of lateral super-resolution: simulated beam-space images, real B-mode, patches and augmentation.

Every image is a full-resolution ``(H, W)`` float32 B-mode image in [0, 1] (0: the bottom of the
displayed dynamic range, 1: its top), lines along W; a sample pairs a patch of it (the truth) with
its degradation (:func:`~deepultrasound.superres.degradation.degrade`). Samples are a deterministic
function of (seed, split, index), whatever the process or the order of access.

Sources:

- **simulated** (:func:`simulate_scan`): beam-space RF lines of point scatterers from
  :func:`deepultrasound.simulation.rf.beamformed_rf` at a high line density (about 2.5 to
  20 lines per beam width at the focus), over phantoms with layers, cysts, hypo- and hyperechoic lesions and a
  vessel; random probe frequency, bandwidth, f-number, focus, depth, attenuation, noise and
  dynamic range; envelope and log compression by :mod:`deepultrasound.spatial.bmode`.
- **real** (:func:`busi_split`): the BUSI breast images of ``<shared data>/busi_train``
  (scan-converted linear-probe B-mode, 8-bit grey, native size). A fixed split holds out about
  a fifth of them, chosen by a hash of the file name (so adding or removing files moves no other
  file between the sets); held-out images are never trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from deepultrasound.errors import FileFormatError, InputError
from deepultrasound.io.images import read_image
from deepultrasound.simulation.phantom import Inclusion, Phantom, random_phantom
from deepultrasound.simulation.rf import Transducer, attenuation_gain, band_limited_noise, beamformed_rf
from deepultrasound.spatial.bmode import bmode_db, envelope
from deepultrasound.superres.degradation import degrade

Split = Literal["train", "val"]
SceneDraw = Callable[[np.random.Generator, float, float], Phantom]
"""Draws a scene ``(rng, depth_mm, width_mm) -> Phantom`` for :func:`simulate_scan`."""
SOURCES = ("simulated", "real")
"""Where an image comes from; a sample's ``source`` is the index of its source here."""
_SPLIT_OFFSET = {"train": 0, "val": 1_000_003}
"""Seeds of validation samples are offset so that no validation sample equals a training one."""

BUSI_FOLDER = "busi_train"
RESIDUAL_ATTENUATION_DB_CM_MHZ = (0.0, 0.3)
"""Default range of the attenuation left after time-gain compensation in simulated scans, dB/cm/MHz."""


def attenuation_range(bounds: tuple[float, float]) -> tuple[float, float]:
    """``bounds`` (low, high) of the attenuation left after time-gain compensation, dB/cm/MHz, checked.

    Raises:
        InputError: unless 0 <= low <= high.
    """
    low, high = bounds
    if not 0 <= low <= high:
        raise InputError(f"an attenuation range takes LOW HIGH with 0 <= LOW <= HIGH (dB/cm/MHz), got {low} {high}")
    return low, high


HELD_OUT_FRACTION = 5
"""One BUSI image in (about) this many is held out: the first 8 hex digits of the SHA-256 of its
file name, as an integer, are divisible by it."""


@dataclass(frozen=True)
class SimulatedScan:
    """One simulated linear-probe acquisition in beam space, lines along x.

    Attributes:
        bmode: ``(H, W)`` float32 in [0, 1]: log-compressed envelope, ``dynamic_range_db`` below the
            brightest sample mapped to 0.
        envelope: ``(H, W)`` float32 envelope, maximum 1.
        spacing_mm: (line pitch, axial sample spacing) in mm.
        dynamic_range_db: the displayed dynamic range of ``bmode``.
        phantom: the scene; pixel ``(i, j)`` images its point ``((j + 0.5) pitch, (i + 0.5) spacing)``
            mm (:meth:`~deepultrasound.simulation.phantom.Phantom.grid` of the image's shape).
    """

    bmode: np.ndarray
    envelope: np.ndarray
    spacing_mm: tuple[float, float]
    dynamic_range_db: float
    phantom: Phantom


def _vessel(rng: np.random.Generator, depth_mm: float, width_mm: float) -> Inclusion:
    """An anechoic tube crossing the image at up to 15 degrees from horizontal."""
    radius = min(rng.uniform(0.8, 3.0), 0.2 * depth_mm)
    return Inclusion(
        center_mm=(width_mm / 2, rng.uniform(0.2, 0.8) * depth_mm),
        semi_axes_mm=(2 * width_mm, radius),
        stiffness=1.0,
        echogenicity=rng.uniform(0.01, 0.05),
        angle_deg=rng.uniform(-15.0, 15.0),
    )


def _random_scene(rng: np.random.Generator, depth_mm: float, width_mm: float) -> Phantom:
    """Layers, up to two cysts or lesions and, in half the scenes, a vessel (drawn last: on top)."""
    phantom = random_phantom(
        rng,
        depth_mm=depth_mm,
        width_mm=width_mm,
        max_inclusions=2,
        layer_probability=0.6,
        echogenicity_range=(0.02, 4.0),
        isoechoic_probability=0.1,
        radius_range_mm=(0.5, 0.3 * min(depth_mm, width_mm)),
    )
    inclusions = phantom.inclusions + ((_vessel(rng, depth_mm, width_mm),) if rng.random() < 0.5 else ())
    return Phantom(depth_mm, width_mm, phantom.layers, inclusions, background_echogenicity=rng.uniform(0.5, 2.0))


def simulate_scan(
    seed: int,
    shape: tuple[int, int],
    scatterers_per_cell: float = 6.0,
    pitch_wavelengths: tuple[float, float] = (0.15, 0.6),
    scene: SceneDraw | None = None,
    attenuation_db_cm_mhz: tuple[float, float] = RESIDUAL_ATTENUATION_DB_CM_MHZ,
) -> SimulatedScan:
    """A simulated beam-space B-mode image of ``shape`` (rows, lines) at a high line density.

    Draws (from ``seed``): centre frequency 3.5-7.5 MHz, fractional bandwidth 0.5-0.8, f-number
    1.5-3, focus at 30-70 % of a depth of 20-50 mm, line pitch within ``pitch_wavelengths`` (default 0.15-0.6
    wavelengths: dense and parallel-beamformed acquisitions alike), residual
    attenuation after time-gain compensation within ``attenuation_db_cm_mhz`` (default 0-0.3 dB/cm/MHz; two-way,
    at the centre frequency), electronic noise 30-50 dB below
    the echo, dynamic range 50-70 dB, and a scene (``scene``, default :func:`_random_scene`). RF is computed at
    about 6 samples per wavelength and its envelope averaged down to ``shape[0]`` rows.
    """
    rows, lines = shape
    if rows < 8 or lines < 8:
        raise InputError(f"a simulated scan needs at least 8 rows and 8 lines, got {shape}")
    low, high = attenuation_range(attenuation_db_cm_mhz)
    rng = np.random.default_rng(seed)
    depth = rng.uniform(20.0, 50.0)
    transducer = Transducer(
        center_frequency_mhz=rng.uniform(3.5, 7.5),
        fractional_bandwidth=rng.uniform(0.5, 0.8),
        f_number=rng.uniform(1.5, 3.0),
        focal_depth_mm=rng.uniform(0.3, 0.7) * depth,
    )
    pitch = transducer.wavelength_mm * rng.uniform(*pitch_wavelengths)
    width = lines * pitch
    oversampling = int(np.ceil(depth / rows / (transducer.wavelength_mm / 6)))
    dz = depth / (rows * oversampling)

    count = int(scatterers_per_cell * depth * width / transducer.resolution_cell_mm2())
    x, z = rng.uniform(0, width, count), rng.uniform(0, depth, count)
    phantom = (scene or _random_scene)(rng, depth, width)
    amplitude = rng.standard_normal(count) * phantom.echogenicity_at(x, z)
    amplitude *= attenuation_gain(z, rng.uniform(low, high), transducer.center_frequency_mhz)
    rf = beamformed_rf(x, z, amplitude, transducer, (rows * oversampling, lines), (pitch, dz))
    noise = band_limited_noise(rng, rf.shape, transducer, dz)
    rf += noise * rf.std() * 10 ** (-rng.uniform(30.0, 50.0) / 20)

    dynamic_range = rng.uniform(50.0, 70.0)
    decibels = bmode_db(rf, dynamic_range).reshape(rows, oversampling, lines).mean(axis=1)
    magnitude = envelope(rf).reshape(rows, oversampling, lines).mean(axis=1)
    return SimulatedScan(
        bmode=((decibels + dynamic_range) / dynamic_range).astype(np.float32),
        envelope=(magnitude / magnitude.max()).astype(np.float32),
        spacing_mm=(float(pitch), float(depth / rows)),
        dynamic_range_db=float(dynamic_range),
        phantom=phantom,
    )


def is_held_out(name: str) -> bool:
    """Whether the BUSI file ``name`` belongs to the held-out set (see :data:`HELD_OUT_FRACTION`)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % HELD_OUT_FRACTION == 0


def busi_split(folder: Path, split: Split) -> list[Path]:
    """The PNG files of ``folder`` in ``split``, sorted by name: ``"train"`` or the held-out ``"val"``."""
    if not folder.is_dir():
        raise FileFormatError(f"no BUSI folder at {folder}; set DEEPULTRASOUND_DATA or use simulated data only")
    files = sorted(folder.glob("*.png"))
    if not files:
        raise FileFormatError(f"{folder} holds no .png images")
    return [path for path in files if is_held_out(path.name) == (split == "val")]


def read_grey(path: Path) -> np.ndarray:
    """A B-mode image file as ``(H, W)`` float32 in [0, 1]: 8-bit values / 255; colour is averaged to grey."""
    image = read_image(path, ndim=2)
    array = image.array.mean(axis=-1) if image.multichannel else image.array
    if image.array.dtype != np.uint8:
        raise InputError(f"{path}: expected an 8-bit B-mode image, got {image.array.dtype}")
    return (array / 255.0).astype(np.float32)


@dataclass(frozen=True)
class Augmentation:
    """Random changes of a training patch (B-mode in [0, 1]), applied before the degradation.

    Attributes:
        gain: largest overall gain change, as a fraction of the display range (added, then clipped).
        depth_gain: largest change of gain from the top of the patch to its bottom (a time-gain slope).
        flip: mirror half of the patches left-right (never up-down: shadows and attenuation point down).
    """

    gain: float = 0.1
    depth_gain: float = 0.1
    flip: bool = True

    def __call__(self, patch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``patch`` ``(1, h, w)`` -> augmented ``(1, h, w)`` in [0, 1]."""
        offset, slope, flip = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
        depth = torch.linspace(-0.5, 0.5, patch.shape[-2], dtype=patch.dtype)[:, None]
        patch = patch + (2 * offset - 1) * self.gain + (2 * slope - 1) * self.depth_gain * depth
        if self.flip and flip < 0.5:
            patch = patch.flip(-1)
        return patch.clamp(0.0, 1.0)


class SuperResolutionPatches(Dataset):
    """Pairs ``{"high": (1, h, w), "low": (1, h, ceil(w / F))}`` float32 from full-resolution images, with
    ``"source"``: a () int64 index into :data:`SOURCES`.

    Sample ``i`` crops image ``i mod N`` (of the ``N`` images given) at a position drawn from
    (seed, i), augments it (training) and degrades it with a blur drawn uniformly from the range
    (also from (seed, i)). Validation samples (``augmentation=None``) are the centred crop of each
    image, once, degraded with the highest blur of the range.

    Args:
        images: full-resolution ``(H, W)`` float32 images in [0, 1], each at least the patch size.
        patch_size: (rows, lines) of the full-resolution patch.
        factor: lateral factor F.
        blur_sigma_lines: (lowest, highest) sigma of the beam-profile blur before decimation, fine lines.
        samples: dataset length (training: patches per epoch; validation: ``len(images)``).
        augmentation: training augmentation, or None for fixed, centred validation crops.
        seed: base of every random draw.
        source: where the images come from (one of :data:`SOURCES`).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        patch_size: tuple[int, int],
        factor: int,
        blur_sigma_lines: tuple[float, float],
        samples: int,
        augmentation: Augmentation | None,
        seed: int,
        source: str,
    ) -> None:
        if source not in SOURCES:
            raise InputError(f"unknown image source {source!r}; use one of {', '.join(SOURCES)}")
        if not images:
            raise InputError("no images to cut patches from")
        small = [image.shape for image in images if image.shape[0] < patch_size[0] or image.shape[1] < patch_size[1]]
        if small:
            raise InputError(f"images {small} are smaller than the patch size {patch_size}")
        self.images = [torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)) for image in images]
        self.patch_size = patch_size
        self.factor = factor
        self.blur_sigma_lines = blur_sigma_lines
        self.samples = samples
        self.augmentation = augmentation
        self.seed = seed
        self.source = torch.tensor(SOURCES.index(source))

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self.images[index % len(self.images)]
        (rows, lines), (height, width) = self.patch_size, image.shape
        if self.augmentation is None:
            top, left = (height - rows) // 2, (width - lines) // 2
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            top = int(torch.randint(height - rows + 1, (1,), generator=generator))
            left = int(torch.randint(width - lines + 1, (1,), generator=generator))
        high = image[None, top : top + rows, left : left + lines]
        lowest, highest = self.blur_sigma_lines
        blur = highest
        if self.augmentation is not None:
            high = self.augmentation(high, generator)
            blur = lowest + (highest - lowest) * float(torch.rand((), generator=generator, dtype=torch.float64))
        return {"high": high, "low": degrade(high, self.factor, blur), "source": self.source}


def simulated_images(seed: int, split: Split, count: int, shape: tuple[int, int]) -> list[np.ndarray]:
    """``count`` simulated B-mode images of ``shape``; image ``i`` of a split depends only on (seed, split, i)."""
    base = seed * 7919 + _SPLIT_OFFSET[split]
    return [simulate_scan(base + index, shape).bmode for index in range(count)]


def real_images(folder: Path, split: Split, count: int | None = None) -> list[np.ndarray]:
    """The first ``count`` (None: all) BUSI images of ``split`` (:func:`busi_split`), read by :func:`read_grey`."""
    return [read_grey(path) for path in busi_split(folder, split)[:count]]
