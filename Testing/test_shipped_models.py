"""The DeepUSE models shipped in the package: verified format-2 bundles that carry their bench
figures, ship the files their backends use, agree across them, and recover a strain contrast the
uniform-strain fit cannot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deepultrasound.elastography.baselines import UniformStrainEstimator
from deepultrasound.elastography.bench import MANIFEST_KEY
from deepultrasound.elastography.bundles import TASK
from deepultrasound.elastography.estimators import StrainEstimator
from deepultrasound.elastography.frames import PAPER_CROP, crop_rows
from deepultrasound.elastography.live.processor import LIVE_MODEL, resolve_live_model
from deepultrasound.elastography.metrics import strain_nrmse, strain_nrmse_contrast
from deepultrasound.elastography.model_resolution import resolve_model
from deepultrasound.io import read_sequence
from deepultrasound.io.shared_data import shared_data_dir
from deepultrasound.runtime import bundled_models_dir, check_parity, create_predictor, list_bundles, load_bundle
from deepultrasound.runtime.inference_specs import ElastographyInference
from deepultrasound.runtime.manifest import Manifest
from deepultrasound.simulation import SimulationConfig, simulate_sequence

SHIPPED = [summary.path for summary in list_bundles([bundled_models_dir()]) if summary.task == TASK]
WINDOW_MM = 5.74  # the paper's (and the bench's) least-squares window
INVIVO = shared_data_dir() / "deepuse_invivo" / "rf0299.mhd"
#: the manifest of usenet-fast-deepuse as it was shipped in format 1 (before TorchScript was dropped)
FORMAT_1_MANIFEST = Path(__file__).parent / "data" / "manifest_format1_usenet-fast-deepuse.json"


def test_the_package_ships_deepuse_models():
    assert {load_bundle(path).manifest.architecture for path in SHIPPED} == {"reusenet", "usenet"}
    assert load_bundle(resolve_model(None)).manifest.architecture == "reusenet"  # the default: the better figures


def test_live_processing_defaults_to_the_real_time_model():
    manifest = load_bundle(resolve_live_model()).manifest
    assert manifest.name == LIVE_MODEL and manifest.architecture_args["axial_fold"] > 1
    assert resolve_live_model("reusenet-deepuse") == resolve_model("reusenet-deepuse")  # a named model wins


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_shipped_model_carries_its_bench_figures(path):
    manifest = load_bundle(path).manifest
    figures = manifest.metrics[MANIFEST_KEY]
    assert figures["command"].startswith("deepultrasound bench strain") and "--record" in figures["command"]
    simulated = figures["simulated"]
    assert simulated["sequences"] >= 20 and simulated["methods"][manifest.name]["nrmse"] is not None
    assert {"block matching", "block matching (direct)", "uniform", "oracle"} <= set(simulated["methods"])
    assert manifest.name in figures["invivo"]["methods"]
    assert manifest.training_config["task"] == "deepuse"  # trained by the committed config it records


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_shipped_model_ships_what_its_backends_use(path):
    """Weights for the torch backend (GPUs, CUDA graphs) and the ONNX graph for ONNX Runtime, the
    CPU default (1.3 to 1.8x faster than eager torch on 1600 x 128 pairs here); no backend picks
    TorchScript by itself, so it is not shipped. Weights stay float32: stored in float16 they moved
    displacements by up to 0.002 (ReUSENet) to 0.046 px (USENet), above the 0.001 px allowed."""
    manifest = load_bundle(path).manifest
    assert manifest.format_version == 2 and isinstance(manifest.inference, ElastographyInference)
    assert sorted(manifest.files) == ["model.onnx", "weights.safetensors"] and manifest.weights_dtype == "float32"
    assert create_predictor(path, "auto", device="cpu").backend == "onnxruntime"


def test_the_shipped_format_2_manifest_keeps_what_format_1_said():
    old = Manifest.model_validate(json.loads(FORMAT_1_MANIFEST.read_text()))
    shipped = load_bundle(bundled_models_dir() / old.name).manifest
    assert (
        shipped.inference
        == old.inference
        == ElastographyInference(pairs="previous", prealign="uniform_strain", input_multiple=(64, 16))
    )
    unchanged = set(Manifest.model_fields) - {"files", "description"}
    assert {key: getattr(shipped, key) for key in unchanged} == {key: getattr(old, key) for key in unchanged}
    assert shipped.files == {name: digest for name, digest in old.files.items() if name != "model.torchscript.pt"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_shipped_model_backends_agree(path):
    report = check_parity(path, inputs=[np.random.default_rng(0).standard_normal((1, 2, 128, 32), dtype=np.float32)])
    assert report.ok, report


@pytest.fixture(scope="module")
def inclusion_sequence():
    # 1024 x 128, where each model's contrast NRMSE at the paper's window is 0.40 to 0.69
    config = SimulationConfig(n_frames=3, height=1024, width=128, mesh_cells=(16, 8), max_inclusions=3)
    sequence = simulate_sequence(config, seed=2)  # one inclusion of 7547 pixels
    assert len(sequence.inclusion_masks) > 0, "the seed must give an inclusion"
    return sequence, config


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_shipped_model_recovers_strain_contrast(path, inclusion_sequence):
    sequence, config = inclusion_sequence
    rows = slice(150, -150)  # the incomplete strain windows (143 rows) at the top and bottom excluded
    figures = {}
    for estimator in (StrainEstimator(path, device="cpu"), UniformStrainEstimator()):
        strain = estimator.estimate(sequence.rf, config.axial_spacing_mm, window_mm=WINDOW_MM).strain
        figures[estimator.name] = [
            (strain_nrmse(s[rows], t[rows]), strain_nrmse_contrast(s[rows], t[rows]))
            for s, t in zip(strain, sequence.strain_percent)
        ]
    uniform = np.array(figures.pop(UniformStrainEstimator.name))
    (model,) = map(np.array, figures.values())
    assert uniform[:, 1] == pytest.approx(np.ones(len(uniform)), abs=0.05)  # a uniform strain has no contrast
    assert (model[:, 1] < 0.85).all(), f"contrast NRMSE {model[:, 1]}"
    assert (model[:, 0] < uniform[:, 0]).all(), f"NRMSE {model[:, 0]} vs uniform {uniform[:, 0]}"


@pytest.mark.shared_data("deepuse_invivo")
@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_refinement_keeps_the_in_vivo_compression(path):
    """Refined against the reference, each in vivo pair keeps the mean strain of the chain (-0.3
    to -1.7 % on rf0299). A refinement that pre-aligned the warped frame once locked on a wrong lag
    there and read -17 % at frame 5."""
    image = crop_rows(read_sequence(INVIVO, min_frames=2), PAPER_CROP)
    means = {}
    for refine in (False, True):
        estimator = StrainEstimator(path, device="cpu", refine=refine)
        strain = estimator.estimate(image.array, image.axial_spacing_mm, window_mm=WINDOW_MM).strain
        means[refine] = strain[:, 200:-200].mean(axis=(1, 2))
    np.testing.assert_allclose(means[True], means[False], rtol=0.1)
