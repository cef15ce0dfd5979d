"""The data of ``deepultrasound bench synth``: label maps with their real images, and what is scored in them.

- **echo**: the CAMUS split (:func:`~deepultrasound.registration.data.camus_split`: the last 20
  patients held out), pairs made as the training pairs are (:func:`~deepultrasound.synthesis.data.camus_pairs`:
  both views, ED and ES, :class:`~deepultrasound.synthesis.data.EchoLabel` values).
- **linear**: simulated scenes of a configuration the linear model never saw (:func:`unseen_scene`,
  :data:`UNSEEN_CONFIGURATION`), from seeds :data:`UNSEEN_SEEDS` that the shipped linear config
  does not draw, with the simulator's own images (:func:`~deepultrasound.synthesis.data.linear_pairs`).

Segmentation classes (:data:`CLASSES`) and scored structures (:data:`STRUCTURES`): echo segmenters
have the 4 CAMUS classes, the region outside the fan counting as background (as in CAMUS's own
labels); structures LV endocardium (1), epicardium (1 + 2) and left atrium (3). Linear segmenters
have the 6 :class:`~deepultrasound.synthesis.data.LinearLabel` classes, every class but the
background a structure. Realism regions (:func:`regions`): echo SNR in the myocardium, speckle in
the unlabelled fan and the myocardium; linear SNR and speckle in the background; speckle tiles one
pixel clear of the region's border.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from deepultrasound.registration.data import camus_split
from deepultrasound.simulation.phantom import Phantom, random_phantom
from deepultrasound.superres.data import RESIDUAL_ATTENUATION_DB_CM_MHZ
from deepultrasound.synthesis.bmaps import depth_from_labels
from deepultrasound.synthesis.data import OUTSIDE_FAN, EchoLabel, LinearLabel, Pair, camus_pairs, linear_pairs
from deepultrasound.synthesis.realism import Regions, eroded

Kind = Literal["echo", "linear"]
STRUCTURES: dict[str, dict[str, tuple[int, ...]]] = {
    "echo": {"lv_endo": (1,), "epi": (1, 2), "la": (3,)},
    "linear": {label.name.lower(): (int(label),) for label in LinearLabel if label != LinearLabel.BACKGROUND},
}
"""Scored structures per data kind: name -> segmentation classes."""
CLASSES = {"echo": torch.tensor([0, 1, 2, 3, 0]), "linear": torch.arange(len(LinearLabel))}
"""Label value -> segmentation class per data kind: echo's outside-the-fan label is the background."""
UNSEEN_SEEDS = (31_337, 31_338)
"""Seeds of the linear training and test scenes (the shipped linear config draws from 0 and 1_000_003)."""
UNSEEN_CONFIGURATION = (
    "every scene has a layer; 0-3 elliptical lesions, none isoechoic, semi-major axis 30-45 % of the smaller side "
    "(training: at most 2, 0.5 mm to 30 %, 10 % isoechoic); no vessel (training: half the scenes)"
)


def unseen_scene(rng: np.random.Generator, depth_mm: float, width_mm: float) -> Phantom:
    """A linear-probe scene of the configuration described by :data:`UNSEEN_CONFIGURATION`."""
    side = min(depth_mm, width_mm)
    phantom = random_phantom(
        rng,
        depth_mm=depth_mm,
        width_mm=width_mm,
        max_inclusions=3,
        layer_probability=1.0,
        echogenicity_range=(0.02, 4.0),
        isoechoic_probability=0.0,
        radius_range_mm=(0.3 * side, 0.45 * side),
    )
    return Phantom(depth_mm, width_mm, phantom.layers, phantom.inclusions, rng.uniform(0.5, 2.0))


@dataclass(frozen=True)
class BenchData:
    """Training and test pairs of one data kind on an ``(S, S)`` grid, and what they are (for the report)."""

    kind: Kind
    train: list[Pair]
    test: list[Pair]
    description: dict[str, Any]

    def stack(self, part: Literal["train", "test"], key: Literal["image", "labels"]) -> torch.Tensor:
        """``(N, 1, S, S)`` images or ``(N, S, S)`` label maps of ``part``."""
        return torch.stack([pair[key] for pair in getattr(self, part)])


def echo_data(root: str | os.PathLike[str], size: int, train_patients: int | None, test_patients: int) -> BenchData:
    """The first ``train_patients`` (None: all) training and ``test_patients`` held-out CAMUS patients."""
    training, held_out = camus_split(root)
    training = training if train_patients is None else training[:train_patients]
    held_out = held_out[:test_patients]
    description = {"train_patients": len(training), "test_patients": held_out}
    return BenchData("echo", camus_pairs(root, training, size), camus_pairs(root, held_out, size), description)


def linear_data(
    size: int,
    train_scenes: int,
    test_scenes: int,
    attenuation_db_cm_mhz: tuple[float, float] = RESIDUAL_ATTENUATION_DB_CM_MHZ,
) -> BenchData:
    """Scenes of the unseen configuration: ``train_scenes`` and ``test_scenes`` from the two :data:`UNSEEN_SEEDS`,
    imaged with the attenuation left after time-gain compensation within ``attenuation_db_cm_mhz``."""
    options = {"scene": unseen_scene, "attenuation_db_cm_mhz": attenuation_db_cm_mhz}
    train = linear_pairs(UNSEEN_SEEDS[0], train_scenes, size, **options)
    test = linear_pairs(UNSEEN_SEEDS[1], test_scenes, size, **options)
    description = {
        "seeds": list(UNSEEN_SEEDS),
        "configuration": UNSEEN_CONFIGURATION,
        "attenuation_db_cm_mhz": list(attenuation_db_cm_mhz),
    }
    return BenchData("linear", train, test, description)


def regions(kind: Kind, labels: torch.Tensor) -> Regions:
    """Where the realism figures look in label maps ``(N, S, S)`` of ``kind`` (see the module docstring)."""
    maps = labels.numpy()
    if kind == "echo":
        inside = maps != OUTSIDE_FAN
        depth = depth_from_labels(labels, "sector", OUTSIDE_FAN)[:, 0].numpy()
        tissue = inside & np.isin(maps, (EchoLabel.BACKGROUND, EchoLabel.MYOCARDIUM))
        return Regions(inside, depth, maps == EchoLabel.MYOCARDIUM, eroded(tissue))
    background = maps == LinearLabel.BACKGROUND
    depth = depth_from_labels(labels, "linear")[:, 0].numpy()
    return Regions(np.ones_like(background), depth, background, eroded(background))
