"""The super-resolution models shipped in the package restore held-out simulated images better than cubic
interpolation of the same low-resolution image, under a scanner's beam (the highest blur each was trained on)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepultrasound.losses.metrics import psnr
from deepultrasound.runtime import bundled_models_dir
from deepultrasound.superres.data import simulated_images
from deepultrasound.superres.degradation import degrade, upsample_lines
from deepultrasound.superres.inference import SuperResolver, installed_models

SHIPPED = [(factor, path) for factor, found in installed_models([bundled_models_dir()]).items() for path, _ in found]
MIN_GAIN_DB = 0.5
"""Least PSNR gain over cubic asked of each shipped model on each of two held-out images (bench superres, means over
16: 1.2 dB at x2, 3.3 at x4, 1.5 at x8)."""


def test_the_package_ships_x2_x4_and_x8():
    assert {factor for factor, _ in SHIPPED} == {2, 4, 8}


@pytest.mark.parametrize(("factor", "path"), SHIPPED, ids=lambda value: getattr(value, "name", str(value)))
def test_shipped_model_beats_cubic_on_held_out_simulated_images(factor, path):
    model = SuperResolver(path, factor, device="cpu")
    images = simulated_images(0, "val", 2, (256, 128))  # the bench's first held-out images, never trained on
    truth = torch.from_numpy(np.stack(images))[:, None]
    low = degrade(truth, factor, model.blur_sigma_lines[1])
    cubic = upsample_lines(low, factor, "cubic")[..., :128].clamp(0, 1)
    ours = torch.from_numpy(model(low[:, 0].numpy()))[:, None, :, :128].clamp(0, 1)
    gain = psnr(ours, truth, 1.0) - psnr(cubic, truth, 1.0)
    assert bool((gain > MIN_GAIN_DB).all()), gain
