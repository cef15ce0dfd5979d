"""The synthesis model shipped in the package: the default for sector probes, trained by its committed config,
and its images show the echo anatomy of label maps it never saw (blood darker than the myocardium, nothing
outside the fan)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepultrasound.runtime import bundled_models_dir, load_bundle
from deepultrasound.synthesis.data import OUTSIDE_FAN, EchoLabel, LinearLabel, echo_pairs, linear_pairs
from deepultrasound.synthesis.inference import DEFAULT_MODELS, TRAINING_CONFIGS, Synthesizer, resolve_model
from deepultrasound.training import get_task, load_config

REPO = Path(__file__).resolve().parents[1]
UNSEEN_SEED = 31_337
"""Seed of simulated hearts and scenes that no training draws (the configs draw from 0 and their validation offset)."""
MIN_CAVITY_CONTRAST = 0.05
"""Least margin, image units, of the myocardium's mean over the LV cavity's in each image (0.09 to 0.25 measured)."""


def shipped_model(probe: str) -> Synthesizer:
    path = resolve_model(None, probe)
    if path.resolve().parent != bundled_models_dir():
        pytest.skip(f"the {probe} model found is {path}, not a shipped one")
    return Synthesizer(path, device="cpu")


@pytest.fixture(scope="module")
def echo_model() -> Synthesizer:
    return shipped_model("sector")


@pytest.fixture(scope="module")
def linear_model() -> Synthesizer:
    return shipped_model("linear")


@pytest.mark.parametrize("probe", ["sector", "linear"])
def test_the_shipped_model_of_each_probe_is_its_default_and_was_trained_by_its_committed_config(probe):
    model = shipped_model(probe)
    bundle = load_bundle(resolve_model(None, probe))
    assert bundle.manifest.name == DEFAULT_MODELS[probe]
    committed = load_config(REPO / TRAINING_CONFIGS[probe])
    trained = bundle.manifest.training_config
    assert trained["task"] == committed.task == "us-diffusion"
    independent = set(committed.task_args) - get_task(committed.task).inference_args  # what a resume may not change
    assert {key: trained["task_args"][key] for key in independent} == {
        key: committed.task_args[key] for key in independent
    }
    assert model.spec.bmap.enabled and model.spec.bmap.probe == probe


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


def test_shipped_linear_model_draws_cysts_darker_and_hyperechoic_regions_brighter_than_the_background(linear_model):
    # mean contrast to each image's background over 8 scenes no training drew (measured: anechoic -0.39,
    # hyperechoic +0.16; the simulator's own images -0.43 and +0.15)
    labels = torch.stack([pair["labels"] for pair in linear_pairs(UNSEEN_SEED, 8, linear_model.size[0])]).numpy()
    images = linear_model(labels, steps=10, seed=0)
    groups = {
        "anechoic": [LinearLabel.ANECHOIC],
        "hyperechoic": [LinearLabel.HYPERECHOIC_LAYER, LinearLabel.HYPERECHOIC_LESION],
    }
    contrasts: dict[str, list[float]] = {name: [] for name in groups}
    for image, label_map in zip(images, labels, strict=True):
        background = image[label_map == LinearLabel.BACKGROUND].mean()
        for name, classes in groups.items():
            region = np.isin(label_map, classes)
            if region.sum() > 20:
                contrasts[name].append(float(image[region].mean() - background))
    assert min(len(values) for values in contrasts.values()) >= 2, contrasts
    assert np.mean(contrasts["anechoic"]) < -0.2 and np.mean(contrasts["hyperechoic"]) > 0.05, contrasts
