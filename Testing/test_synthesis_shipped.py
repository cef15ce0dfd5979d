"""The synthesis model shipped in the package: the default for sector probes, trained by its committed config,
and its images show the echo anatomy of label maps it never saw (blood darker than the myocardium, nothing
outside the fan)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepultrasound.runtime import bundled_models_dir, load_bundle
from deepultrasound.synthesis.data import OUTSIDE_FAN, EchoLabel, echo_pairs
from deepultrasound.synthesis.inference import DEFAULT_MODELS, TRAINING_CONFIGS, Synthesizer, resolve_model
from deepultrasound.training import get_task, load_config

REPO = Path(__file__).resolve().parents[1]
UNSEEN_SEED = 31_337
"""Seed of simulated hearts that no training draws (the echo config draws from 0 and its validation offset)."""
MIN_CAVITY_CONTRAST = 0.05
"""Least margin, image units, of the myocardium's mean over the LV cavity's in each image (0.09 to 0.25 measured)."""


@pytest.fixture(scope="module")
def echo_model() -> Synthesizer:
    path = resolve_model(None, "sector")
    if path.resolve().parent != bundled_models_dir():
        pytest.skip(f"the sector model found is {path}, not a shipped one")
    return Synthesizer(path, device="cpu")


def test_the_shipped_sector_model_is_the_default_and_was_trained_by_its_committed_config(echo_model):
    bundle = load_bundle(resolve_model(None, "sector"))
    assert bundle.manifest.name == DEFAULT_MODELS["sector"]
    committed = load_config(REPO / TRAINING_CONFIGS["sector"])
    trained = bundle.manifest.training_config
    assert trained["task"] == committed.task == "us-diffusion"
    independent = set(committed.task_args) - get_task(committed.task).inference_args  # what a resume may not change
    assert {key: trained["task_args"][key] for key in independent} == {
        key: committed.task_args[key] for key in independent
    }
    assert echo_model.spec.bmap.enabled and echo_model.spec.bmap.probe == "sector"


def test_shipped_sector_model_draws_dark_blood_and_nothing_outside_the_fan(echo_model):
    pairs = echo_pairs(UNSEEN_SEED, 4, echo_model.size[0])
    labels = torch.stack([pair["labels"] for pair in pairs]).numpy()
    images = echo_model(labels, steps=10, seed=0)
    for image, label_map in zip(images, labels, strict=True):
        cavity = image[label_map == EchoLabel.LV_CAVITY].mean()
        myocardium = image[label_map == EchoLabel.MYOCARDIUM].mean()
        assert myocardium - cavity > MIN_CAVITY_CONTRAST, (cavity, myocardium)
        np.testing.assert_array_less(image[label_map == OUTSIDE_FAN], 0.02)


@pytest.mark.parametrize("backend", ["torch", "torchscript"])
def test_the_shipped_sector_model_draws_the_same_images_on_every_backend(echo_model, backend):
    # the default on the CPU is the ONNX graph; DDIM is deterministic, DDPM draws its noise from the same seed
    assert echo_model.backend == "onnxruntime"
    other = Synthesizer(resolve_model(None, "sector"), device="cpu", backend=backend)
    labels = torch.stack([pair["labels"] for pair in echo_pairs(UNSEEN_SEED, 2, echo_model.size[0])]).numpy()
    for sampler in ("ddim", "ddpm"):
        expected = other(labels, steps=5, sampler=sampler, seed=3)
        np.testing.assert_allclose(echo_model(labels, steps=5, sampler=sampler, seed=3), expected, rtol=0, atol=1e-3)
