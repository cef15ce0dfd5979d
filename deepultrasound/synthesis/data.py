"""Label-map and image pairs for the semantic diffusion model, and label augmentation.

A pair is ``{"image": (1, S, S) float32 in [0, 1], "labels": (S, S) int64}`` on a square grid of
``S`` pixels covering the source's field of view (images bilinear, anti-aliased; label maps take
the class covering most of each pixel, so no class is invented between two others:
:mod:`deepultrasound.registration.preprocessing`).

Sources and their label classes:

- **echo** (:class:`EchoLabel`, sector probe): the CAMUS training split (:func:`camus_pairs`; 8-bit
  images / 255; the fan is the span of non-zero pixels of each row) and the echo simulator
  (:func:`echo_pairs`; a heart of its own per pair, drawn at CAMUS's 224 x 224 grid and resampled
  as CAMUS frames are). Both take the CAMUS classes 0-3 inside the fan and :data:`OUTSIDE_FAN` outside.
- **linear** (:class:`LinearLabel`, linear probe): simulated beam-space scenes with layers, cysts,
  lesions and vessels (:func:`linear_pairs`, :func:`~deepultrasound.superres.data.simulate_scan`);
  each pixel is labelled by the region it shows and that region's echogenicity relative to the background.

:class:`SynthesisPairs` serves pairs as training items with their depth map for the B-maps and,
optionally, a label augmentation (:class:`LabelAugmentation`) and fixed validation noise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import torch
from monai.transforms import Rand2DElasticd
from monai.utils import convert_to_tensor
from torch.utils.data import Dataset

from deepultrasound.errors import FileFormatError, InputError
from deepultrasound.io.camus import PHASES, VIEWS, CamusDataset
from deepultrasound.registration.data import EJECTION_FRACTION, GAIN_DB, SIMULATION_SIZE
from deepultrasound.registration.preprocessing import resize_frame, resize_labels
from deepultrasound.runtime.inference_specs import LabelClass
from deepultrasound.simulation.echo import EchoConfig, EchoSimulator
from deepultrasound.simulation.echo_stats import fan_mask_of
from deepultrasound.simulation.phantom import Layer, Phantom
from deepultrasound.superres.data import RESIDUAL_ATTENUATION_DB_CM_MHZ, SceneDraw, simulate_scan
from deepultrasound.synthesis.bmaps import Probe, depth_from_labels

Pair = dict[str, torch.Tensor]


class EchoLabel(IntEnum):
    """Label values of echo (sector) pairs: the CAMUS classes, plus the region outside the imaging fan."""

    BACKGROUND = 0
    LV_CAVITY = 1
    MYOCARDIUM = 2
    LEFT_ATRIUM = 3
    OUTSIDE_FAN = 4


OUTSIDE_FAN = int(EchoLabel.OUTSIDE_FAN)


class LinearLabel(IntEnum):
    """Label values of linear-probe scenes: what a pixel shows and its echogenicity relative to the background.

    Hypo/hyperechoic: below 1 / :data:`ISOECHOIC_RATIO` / above :data:`ISOECHOIC_RATIO` times the
    background's echogenicity; anechoic: below :data:`ANECHOIC_RATIO` (cysts, vessels). Regions in
    between are labelled background (they look like it).
    """

    BACKGROUND = 0
    HYPOECHOIC_LAYER = 1
    HYPERECHOIC_LAYER = 2
    ANECHOIC = 3
    HYPOECHOIC_LESION = 4
    HYPERECHOIC_LESION = 5


ISOECHOIC_RATIO = 1.5
ANECHOIC_RATIO = 0.1
LINEAR_PITCH_WAVELENGTHS = (1.0, 2.5)
"""Line pitch of simulated linear-probe scenes, wavelengths: a field of view about as wide as it is deep at 64 px."""
SOURCES = ("camus", "echo_simulator", "linear_simulator")
"""Where a pair comes from; an item's ``source`` is the index of its source here."""

DATA_LABELS: dict[str, type[IntEnum]] = {"echo": EchoLabel, "linear": LinearLabel}
DATA_PROBES: dict[str, Probe] = {"echo": "sector", "linear": "linear"}
DATA_OUTSIDE: dict[str, int | None] = {"echo": OUTSIDE_FAN, "linear": None}


def label_classes(labels: type[IntEnum]) -> list[LabelClass]:
    """The manifest's ``label_classes`` of a label enumeration (names in lower case)."""
    return [LabelClass(name=label.name.lower(), value=int(label)) for label in labels]


def _pair(image: np.ndarray, labels: np.ndarray, size: int, num_classes: int) -> Pair:
    """A pair on the ``(size, size)`` grid from a ``(H, W)`` image in [0, 1] and its label map."""
    return {
        "image": resize_frame(image, (size, size)).clamp(0.0, 1.0)[None],
        "labels": resize_labels(labels.astype(np.int64), (size, size), num_classes),
    }


def camus_pairs(root: str | os.PathLike[str], patients: Sequence[str], size: int) -> list[Pair]:
    """Every view (2CH, 4CH) and phase (ED, ES) of ``patients`` of a CAMUS folder (:class:`EchoLabel` values).

    Raises:
        FileFormatError: an image that is not 8-bit.
    """
    dataset = CamusDataset(root)
    pairs = []
    for patient in patients:
        for view in VIEWS:
            for phase in PHASES:
                image, labels = dataset.load(patient, view, phase)
                if image.array.dtype != np.uint8:
                    raise FileFormatError(f"{patient} {view} {phase}: expected an 8-bit image, got {image.array.dtype}")
                fan = fan_mask_of(image.array)
                echo_labels = np.where(fan, labels.array, OUTSIDE_FAN)
                pairs.append(_pair(image.array / 255.0, echo_labels, size, len(EchoLabel)))
    return pairs


def echo_pairs(seed: int, count: int, size: int, simulation_size: int = SIMULATION_SIZE) -> list[Pair]:
    """``count`` simulated echo frames with their labels (:class:`EchoLabel` values).

    Pair ``k`` depends on ``(seed, k)`` only: a heart of its own (2CH or 4CH, EF drawn from
    :data:`~deepultrasound.registration.data.EJECTION_FRACTION`, gain from
    :data:`~deepultrasound.registration.data.GAIN_DB`, anatomy and sector drawn by the simulator)
    at a phase drawn over the cycle, simulated on a ``simulation_size`` square grid.
    """
    if count < 0 or size < 1:
        raise InputError(f"count must be >= 0 and size >= 1, got {count} and {size}")
    pairs = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        config = EchoConfig(
            view=VIEWS[int(rng.integers(len(VIEWS)))],
            ejection_fraction=float(rng.uniform(*EJECTION_FRACTION)),
            gain_db=float(rng.uniform(*GAIN_DB)),
            height=simulation_size,
            width=simulation_size,
        )
        frame = EchoSimulator(config, seed=int(rng.integers(2**31))).frame(float(rng.uniform(0.0, 1.0)))
        echo_labels = np.where(frame.fan_mask, frame.labels, OUTSIDE_FAN)
        pairs.append(_pair(frame.image, echo_labels, size, len(EchoLabel)))
    return pairs


def linear_labels(phantom: Phantom, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` int64 :class:`LinearLabel` map of a scene imaged on an ``shape`` grid (:meth:`Phantom.grid`)."""
    x, z = phantom.grid(shape)
    labels = np.full(shape, int(LinearLabel.BACKGROUND), np.int64)
    for region in (*phantom.layers, *phantom.inclusions):  # painted in the phantom's order: the last one shows
        ratio = region.echogenicity / phantom.background_echogenicity
        if isinstance(region, Layer):
            classes = (None, LinearLabel.HYPOECHOIC_LAYER, LinearLabel.HYPERECHOIC_LAYER)
        else:
            classes = (LinearLabel.ANECHOIC, LinearLabel.HYPOECHOIC_LESION, LinearLabel.HYPERECHOIC_LESION)
        if ratio < ANECHOIC_RATIO and classes[0] is not None:
            label = classes[0]
        elif ratio < 1.0 / ISOECHOIC_RATIO:
            label = classes[1]
        elif ratio > ISOECHOIC_RATIO:
            label = classes[2]
        else:
            label = LinearLabel.BACKGROUND
        labels[region.contains(x, z)] = int(label)
    return labels


def linear_pairs(
    seed: int,
    count: int,
    size: int,
    scene: SceneDraw | None = None,
    attenuation_db_cm_mhz: tuple[float, float] = RESIDUAL_ATTENUATION_DB_CM_MHZ,
) -> list[Pair]:
    """``count`` simulated linear-probe scenes of ``(size, size)`` pixels with their :class:`LinearLabel` maps.

    Pair ``k`` depends on ``(seed, k)`` only; line pitch :data:`LINEAR_PITCH_WAVELENGTHS`, the rest
    drawn by :func:`~deepultrasound.superres.data.simulate_scan` (its scene by ``scene``, default the
    simulator's own; the attenuation left after time-gain compensation within ``attenuation_db_cm_mhz``).
    """
    if count < 0 or size < 8:
        raise InputError(f"count must be >= 0 and size >= 8, got {count} and {size}")
    pairs = []
    for index in range(count):
        scan_seed = int(np.random.default_rng([seed, index]).integers(2**31))
        scan = simulate_scan(
            scan_seed,
            (size, size),
            pitch_wavelengths=LINEAR_PITCH_WAVELENGTHS,
            scene=scene,
            attenuation_db_cm_mhz=attenuation_db_cm_mhz,
        )
        pairs.append(
            {
                "image": torch.from_numpy(np.clip(scan.bmode, 0.0, 1.0))[None],
                "labels": torch.from_numpy(linear_labels(scan.phantom, (size, size))),
            }
        )
    return pairs


@dataclass(frozen=True)
class LabelAugmentation:
    """A random affine and elastic deformation of a pair (MONAI ``Rand2DElasticd``): the image bilinear,
    the label map nearest-neighbour.

    Attributes:
        probability: of deforming a pair at all.
        rotate_deg, scale, translate: largest rotation (degrees), relative scaling and shift
            (fraction of the side).
        elastic_spacing: distance of the elastic control points, fraction of the side;
            ``elastic_magnitude``: largest control-point offset (MONAI's ``magnitude_range`` upper bound).
        fill_label: label of what moves in from outside the image (e.g. outside the fan), whose image is 0;
            None: the image and labels are mirrored at the borders instead.
    """

    probability: float = 0.8
    rotate_deg: float = 8.0
    scale: float = 0.08
    translate: float = 0.04
    elastic_spacing: float = 0.25
    elastic_magnitude: float = 1.0
    fill_label: int | None = None

    def transform(self, size: int) -> Rand2DElasticd:
        """The MONAI transform for ``(size, size)`` items with keys image, labels and inside."""
        padding = "zeros" if self.fill_label is not None else "reflection"
        return Rand2DElasticd(
            keys=("image", "labels", "inside"),
            spacing=max(2.0, self.elastic_spacing * size),
            magnitude_range=(0.0, self.elastic_magnitude),
            prob=self.probability,
            rotate_range=np.deg2rad(self.rotate_deg),
            scale_range=(self.scale, self.scale),
            translate_range=(self.translate * size, self.translate * size),
            mode=("bilinear", "nearest", "nearest"),
            padding_mode=padding,
        )

    def apply(self, transform: Rand2DElasticd, pair: Pair, seed: int) -> Pair:
        """``pair`` deformed by ``transform`` (from :meth:`transform`) drawn from ``seed``."""
        transform.set_random_state(seed=seed)
        labels = pair["labels"]
        item = transform(
            {"image": pair["image"], "labels": labels[None].float(), "inside": torch.ones_like(pair["image"])}
        )
        item = {key: convert_to_tensor(value, track_meta=False) for key, value in item.items()}
        image = item["image"].float().clamp(0.0, 1.0)
        deformed = item["labels"][0].round().long()
        if self.fill_label is not None:
            outside = item["inside"][0] < 0.5
            deformed = torch.where(outside, self.fill_label, deformed)
            image = torch.where(outside, 0.0, image)
        return {**pair, "image": image, "labels": deformed}


class SynthesisPairs(Dataset):
    """Pairs as items: ``image`` ``(1, S, S)`` float32 in [0, 1], ``labels`` ``(S, S)`` int64, ``depth``
    ``(1, S, S)`` float32 (:func:`~deepultrasound.synthesis.bmaps.depth_from_labels`), ``source`` () int64.

    Item ``i`` is pair ``i mod N``, deformed by ``augmentation`` drawn from ``(seed, i)``. With
    ``fixed_noise`` items also hold ``noise`` ``(1, S, S)`` and ``timestep`` () int64 drawn from
    ``(seed, i)`` (uniform over ``num_train_timesteps``): a validation set whose loss is repeatable.

    Args:
        pairs: the pairs, each of one source (``sources``: indices into :data:`SOURCES`, one per pair).
        probe, outside_label: the depth maps' probe and, for sector probes, the label outside the fan.
        samples: number of items (default: one per pair).
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        sources: Sequence[int],
        probe: Probe,
        outside_label: int | None,
        seed: int,
        *,
        augmentation: LabelAugmentation | None = None,
        samples: int | None = None,
        fixed_noise: bool = False,
        num_train_timesteps: int = 1000,
    ) -> None:
        if not pairs:
            raise InputError("no label-map and image pairs to serve")
        if len(sources) != len(pairs):
            raise InputError(f"{len(pairs)} pairs but {len(sources)} sources")
        self.pairs = list(pairs)
        self.sources = [torch.tensor(source) for source in sources]
        self.probe = probe
        self.outside_label = outside_label
        self.seed = seed
        self.augmentation = augmentation
        self.samples = samples or len(self.pairs)
        self.fixed_noise = fixed_noise
        self.num_train_timesteps = num_train_timesteps
        size = self.pairs[0]["labels"].shape[-1]
        self._transform = augmentation.transform(size) if augmentation is not None else None

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> Pair:
        pair = self.pairs[index % len(self.pairs)]
        item_seed = (self.seed * 1_000_003 + index) % 2**31
        if self.augmentation is not None:
            pair = self.augmentation.apply(self._transform, pair, item_seed)
        depth = depth_from_labels(pair["labels"][None], self.probe, self.outside_label)[0]
        item = {**pair, "depth": depth, "source": self.sources[index % len(self.pairs)]}
        if self.fixed_noise:
            generator = torch.Generator().manual_seed(item_seed)
            item["noise"] = torch.randn(pair["image"].shape, generator=generator)
            item["timestep"] = torch.randint(self.num_train_timesteps, (), generator=generator)
        return item
