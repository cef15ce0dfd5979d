"""The DeepUSE training task: losses with known answers, TBPTT, data, refinement pairs, a tiny run and its bundle.

Losses: identical images are at the similarity optimum; a displacement linear in (z, x) costs
no smoothness; an unchanged strain pattern costs no temporal consistency; the supervised loss is
the displacement error plus its strain error. Truncated back-propagation detaches the recurrent
state, so each chunk back-propagates on its own graph. A refinement pair's residual carries its
moving frame back to the truth, in every crop and flip. A tiny run through ``Trainer`` exports a
bundle whose torch and ONNX Runtime predictors reproduce the trained network, states included.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from deepultrasound.elastography.data import (
    RFSequence,
    SequenceCrops,
    cache_path,
    load_simulated,
    prepare_simulated,
    refinement_pair,
    smooth_random_field,
)
from deepultrasound.elastography.frames import FRAME_TO_FRAME
from deepultrasound.elastography.losses import (
    compensated_strain,
    consistency_loss,
    local_ncc,
    similarity_loss,
    smoothness_loss,
    supervised_loss,
)
from deepultrasound.elastography.networks import ReUSENet
from deepultrasound.elastography.prealign import (
    PREALIGN_UNIFORM_STRAIN,
    DisplacementChain,
    _weighted_line,
    compose_with_uniform_strain,
    linear_prealignment,
    prealigned_previous,
    uniform_strain_displacement,
    uniform_strain_pair,
    warp_by_uniform_strain,
)
from deepultrasound.elastography.training_task import NETWORK, DeepUSETask
from deepultrasound.errors import ConfigError, InputError
from deepultrasound.runtime import RecurrentPredictor, create_predictor
from deepultrasound.simulation import SimulationConfig
from deepultrasound.spatial import compose_displacements, warp_image
from deepultrasound.training import Trainer, load_config, parse_config
from deepultrasound.training.checkpoint import load_checkpoint
from deepultrasound.training.task import StepContext, get_task

REPO = Path(__file__).resolve().parents[1]
TINY_SIMULATION = {"height": 256, "width": 64, "n_frames": 3, "mesh_cells": [8, 8]}


def tiny_config(cache: Path) -> dict:
    return {
        "task": "deepuse",
        "task_args": {
            "architecture": "reusenet",
            "initial_channels": 2,
            "patch_size": [64, 32],
            "sequence_length": 3,
            "truncation": 1,
            "consistency_window_mm": 0.3,
            "simulation": TINY_SIMULATION,
            "train_sequences": 2,
            "val_sequences": 1,
            "samples_per_epoch": 4,
            "cache_dir": str(cache),
            "val_patch_size": [128, 32],
            "eval_window_mm": 1.0,
        },
        "seed": 1,
        "batch_size": 2,
        "stages": [{"name": "main", "epochs": 1}],
    }


def speckle(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# -- losses ---------------------------------------------------------------------------------------
def test_identical_images_are_at_the_similarity_optimum():
    image = speckle((2, 1, 64, 32))
    assert torch.allclose(local_ncc(image, image), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(local_ncc(image, -image), torch.tensor(-1.0), atol=1e-5)  # signed, unlike squared LNCC
    zero = torch.zeros(2, 2, 64, 32)
    assert similarity_loss(image, image, zero, reduction="none").abs().max() < 1e-5


def test_similarity_prefers_the_true_displacement():
    fixed = speckle((1, 1, 64, 32))
    moving = torch.roll(fixed, shifts=3, dims=2)  # moving(z + 3) = fixed(z)
    true = torch.zeros(1, 2, 64, 32)
    true[:, 1] = 3.0
    at_truth = similarity_loss(fixed, moving, true)
    assert at_truth < 0.1  # only the rows warped in from outside differ
    assert similarity_loss(fixed, moving, torch.zeros_like(true)) > at_truth + 0.5


def test_local_ncc_refuses_bad_shapes():
    with pytest.raises(InputError, match="same shape"):
        local_ncc(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 8))
    with pytest.raises(InputError, match="window"):
        local_ncc(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16), window=(32, 8))


def test_linear_displacement_costs_no_smoothness_and_a_quadratic_one_its_curvature():
    z, x = torch.meshgrid(torch.arange(64.0), torch.arange(32.0), indexing="ij")
    linear = torch.stack([0.3 * z - 0.1 * x + 2, -0.02 * z + 0.05 * x - 1])[None]
    assert smoothness_loss(linear) < 1e-5
    quadratic = torch.zeros(1, 2, 64, 32)
    quadratic[:, 1] = 0.01 * z**2  # axial second difference 0.02 everywhere, lateral 0
    # mean over both channels of |d2/dz2| = 0.01, of |d2/dx2| = 0; their average
    assert torch.allclose(smoothness_loss(quadratic), torch.tensor(0.005), atol=1e-6)


def test_unchanged_strain_costs_no_temporal_consistency():
    z = torch.arange(128.0)[:, None].expand(128, 32)
    displacement = torch.zeros(1, 2, 128, 32)
    displacement[:, 1] = -0.01 * z - 1e-4 * z**2  # strain varying with depth
    strain = compensated_strain(displacement, 0.3, 0.02)
    assert consistency_loss(strain, strain.clone(), 0.3, 0.02) < 1e-5
    other = compensated_strain(displacement + 0.5 * speckle((1, 2, 128, 32)), 0.3, 0.02)
    assert consistency_loss(strain, other, 0.3, 0.02) > 0.1


# -- the task --------------------------------------------------------------------------------------
def test_task_is_registered_and_committed_configs_are_valid():
    assert get_task("deepuse") is DeepUSETask
    for name in ("deepuse_original", "deepuse_reusenet", "deepuse_usenet", "deepuse_usenet_fast"):
        config = load_config(REPO / "deepultrasound" / "configs" / f"{name}.yaml")
        DeepUSETask.parse_args(config.task_args)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"patch_size": [60, 32]}, "patch_size"),
        ({"normalisation": "percentile"}, "normalisation"),
        ({"train_sequences": 0}, "no training data"),
        ({"consistency_window_mm": 5.74}, "consistency_window_mm"),
        ({"simulation": {"height": 5}}, "simulation"),
        ({"prealign": True}, "prealign needs pairs: previous"),
        ({"validate_refined": True}, "validate_refined needs pairs: previous"),
        ({"supervised_weight": -1.0}, "supervised_weight"),
        ({"axial_fold": 2}, "axial_fold is a USENet option"),
        ({"architecture": "usenet", "axial_fold": 8, "patch_size": [64, 32]}, "multiple of 128"),
    ],
)
def test_bad_task_args_are_named(tmp_path, change, message):
    args = {**tiny_config(tmp_path)["task_args"], **change}
    with pytest.raises(ConfigError, match=message):
        DeepUSETask.parse_args(args)


def test_truncated_backpropagation_detaches_the_state_between_chunks(tmp_path):
    """Each chunk back-propagates alone: a graph reaching into an earlier chunk would be freed or
    hold weights the optimiser has changed in place, and backward would raise."""
    torch.manual_seed(0)
    args = {**tiny_config(tmp_path)["task_args"], "sequence_length": 4}
    for truncation, chunks in ((1, 3), (3, 1)):
        task = DeepUSETask(DeepUSETask.parse_args({**args, "truncation": truncation}), seed=0)
        network = task.build_networks()[NETWORK]
        optimizer = torch.optim.SGD(network.parameters(), lr=1e-3)
        losses = []

        def optimize(loss, name, optimizer=optimizer, losses=losses):
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())

        ctx = StepContext({NETWORK: network}, {}, {"main": optimizer}, torch.device("cpu"), optimize)
        logged = task.training_step({"rf": speckle((2, 4, 64, 32))}, ctx)
        assert len(losses) == chunks
        assert set(logged) == {"loss", "similarity", "smoothness", "consistency"}
        assert torch.isclose(logged["loss"], torch.stack(losses).mean())


def test_simulated_cache_is_written_once_and_normalised(tmp_path):
    config = SimulationConfig(**TINY_SIMULATION)
    (path,) = prepare_simulated(tmp_path, config, [5], progress=False)
    assert path == cache_path(tmp_path, config, 5) and path.is_file()
    stamp = path.stat().st_mtime_ns
    prepare_simulated(tmp_path, config, [5], progress=False)
    assert path.stat().st_mtime_ns == stamp  # not simulated again
    sequence = load_simulated(path, "frame_max")
    assert sequence.rf.shape == (3, 256, 64) and sequence.strain.shape == (2, 256, 64)
    assert sequence.displacement.shape == (2, 2, 256, 64)
    # the cached strain is the axial derivative of the cached displacement (px -> % at the axial spacing)
    derivative = 100 * np.gradient(sequence.displacement[:, 1], axis=1)
    np.testing.assert_allclose(sequence.strain[:, 8:-8], derivative[:, 8:-8], atol=1e-3)
    assert np.allclose(sequence.rf.reshape(3, -1).max(axis=1), 1.0)
    assert not list(tmp_path.glob(".*partial"))  # no staging left behind


def test_training_crops_are_a_function_of_the_index():
    rf = speckle((5, 96, 48)).numpy()
    sequences = [RFSequence(rf, None, "a"), RFSequence(-rf, None, "b")]
    first = SequenceCrops(sequences, length=3, patch=(32, 16), samples=8, seed=4)
    again = SequenceCrops(sequences, length=3, patch=(32, 16), samples=8, seed=4)
    for index in range(8):
        assert torch.equal(first[index]["rf"], again[index]["rf"])
        assert first[index]["rf"].shape == (3, 32, 16)
    assert not torch.equal(first[0]["rf"], first[1]["rf"])
    assert not torch.equal(first[0]["rf"], SequenceCrops(sequences, 3, (32, 16), 8, seed=5)[0]["rf"])
    with pytest.raises(ConfigError, match="too small"):
        SequenceCrops(sequences, length=6, patch=(32, 16), samples=8, seed=4)


# -- pre-alignment --------------------------------------------------------------------------------
def uniform_strain(strain: float, offset: float, shape: tuple[int, int]) -> torch.Tensor:
    """``(1, 2, H, W)`` axial displacement ``offset + strain * z`` px, lateral 0."""
    displacement = torch.zeros(1, 2, *shape)
    displacement[:, 1] = offset + strain * torch.arange(float(shape[0]))[:, None]
    return displacement


def band_limited_speckle(shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """``(1, 1, H, W)`` RF-like speckle: white noise smoothed along the rows (several samples per cycle)."""
    noise = speckle((1, 1, shape[0] + 8, shape[1]), seed)
    return torch.nn.functional.avg_pool2d(noise, (9, 1), stride=1)


def test_linear_prealignment_recovers_a_uniform_strain_and_chains():
    shape = (512, 16)
    fixed = band_limited_speckle(shape)
    steps = [uniform_strain(-0.02, -1.5, shape), uniform_strain(-0.01, 0.5, shape)]  # 2 % then 1 % compression
    # moving(p + u(p)) ~ fixed(p): sample fixed at the inverse map (u is affine in z, so exactly invertible)
    frames = [fixed]
    for step in steps:
        scale, offset = 1 + step[0, 1, 1, 0] - step[0, 1, 0, 0], step[0, 1, 0, 0]
        inverse = uniform_strain(1 / scale - 1, -offset / scale, shape)
        frames.append(warp_image(frames[-1], inverse))
    estimate = linear_prealignment(frames[0], frames[1])
    interior = slice(64, -64)  # rows warped in from outside the image excluded
    assert (estimate - steps[0])[..., interior, :].abs().max() < 0.2
    assert estimate[:, 0].abs().max() == 0
    chain = DisplacementChain(uniform_strain_pair)
    chained = torch.cat([chain.step(frames[0], frames[k]) for k in (1, 2)])  # (0, 1), then (0, 2) chained
    total = compose_displacements(steps[0], steps[1])
    assert chained.shape == (2, 2, *shape)
    assert (chained[1:] - total)[..., interior, :].abs().max() < 0.3
    aligned = prealigned_previous(torch.cat(frames)[:, 0].numpy())
    assert aligned.shape == (2, *shape)
    reference, moving = frames[0][0, 0].numpy()[interior], frames[1][0, 0].numpy()[interior]
    assert np.abs(aligned[0][interior] - reference).mean() < 0.2 * np.abs(moving - reference).mean()


def test_weighted_line_fit_equals_numpy_least_squares_on_the_kept_blocks():
    """The closed-form fit that replaces a solver call: rows in the thousands, 0/1 weights (outliers dropped)."""
    rng = np.random.default_rng(4)
    centres = torch.arange(24, dtype=torch.float32) * 64 + 63.5  # block centres of a 1600-row frame
    lags = torch.from_numpy(rng.uniform(-3, 3, (3, 1)) + rng.uniform(-0.02, 0.02, (3, 1)) * centres.numpy())
    lags = (lags + torch.from_numpy(rng.normal(0, 0.1, (3, 24)))).float()
    weight = torch.from_numpy(rng.random((3, 24)) > 0.3).float()
    lags[weight == 0] += 40.0  # what the dropped blocks hold must not matter
    line = _weighted_line(centres, lags, weight)
    for b in range(3):
        kept = weight[b].numpy() > 0
        slope, intercept = np.polyfit(centres.numpy()[kept].astype(float), lags[b].numpy()[kept].astype(float), 1)
        np.testing.assert_allclose(line[b].numpy(), [intercept, slope], rtol=1e-4, atol=1e-4)


def test_uniform_strain_warp_and_composition_in_closed_form_match_the_generic_ones():
    """The row interpolation and the closed-form composition used on every live pair equal
    ``warp_image`` and ``compose_displacements`` with the uniform-strain field, borders included."""
    fit = torch.tensor([[3.2, -0.011], [-1.5, 0.02]])  # offsets (px) and slopes pushing rows past both borders
    field = uniform_strain_displacement(fit, 300, 16)
    assert torch.allclose(field[:, 1, :, 5], fit[:, :1] + fit[:, 1:] * torch.arange(300.0)) and not field[:, 0].any()
    moving = speckle((2, 1, 300, 16))
    assert torch.allclose(warp_by_uniform_strain(moving, fit), warp_image(moving, field), atol=5e-4)
    inner = 3 * speckle((2, 2, 300, 16), seed=1)
    assert torch.allclose(compose_with_uniform_strain(inner, fit), compose_displacements(inner, field), atol=1e-5)


def test_composition_of_two_uniform_shifts_adds_them():
    one, two = uniform_strain(0.0, 2.0, (32, 8)), uniform_strain(0.0, -0.5, (32, 8))
    assert torch.allclose(compose_displacements(one, two), uniform_strain(0.0, 1.5, (32, 8)))


def test_prealigned_crops_follow_the_rf_crop_and_flip():
    rf = speckle((4, 96, 48)).numpy()
    crops = SequenceCrops([RFSequence(rf, None, "a", aligned=2 * rf[1:])], length=3, patch=(32, 16), samples=8, seed=2)
    for index in range(8):
        item = crops[index]
        assert item["aligned"].shape == (2, 32, 16)
        assert torch.equal(item["aligned"], 2 * item["rf"][1:])  # same frames, window and flip


# -- supervised refinement pairs ------------------------------------------------------------------
def test_smooth_random_field_has_unit_rms_and_follows_its_generator():
    field = smooth_random_field((256, 64), (64, 8), torch.Generator().manual_seed(3))
    assert field.shape == (256, 64)
    assert torch.isclose(field.square().mean(), torch.tensor(1.0), atol=1e-5)
    assert torch.equal(field, smooth_random_field((256, 64), (64, 8), torch.Generator().manual_seed(3)))
    assert not torch.equal(field, smooth_random_field((256, 64), (64, 8), torch.Generator().manual_seed(4)))
    neighbours = torch.stack([field[:-1].flatten(), field[1:].flatten()])
    assert torch.corrcoef(neighbours)[0, 1] > 0.99  # smooth at a 64-row knot spacing


def test_refinement_residual_carries_the_warped_frame_to_the_truth():
    """``warp(moving, residual)`` is the frame at ``p + d(p)`` (the truth) though ``moving`` is off by the error.

    The frame is linear in (z, x), which bilinear resampling reproduces exactly, so the only
    difference left is that of the residual.
    """
    shape = (256, 64)
    frame = 0.01 * torch.arange(256.0)[:, None] + 0.05 * torch.arange(64.0)
    truth = torch.zeros(2, *shape)
    truth[1] = -0.03 * torch.arange(256.0)[:, None]  # 3 % compression
    truth[0] = 0.5 * torch.sin(torch.arange(64.0) / 10)
    moving, residual = refinement_pair(frame, truth, (1.5, 1.0), torch.Generator().manual_seed(0))
    expected = warp_image(frame[None, None], truth[None])[0, 0]
    interior = (slice(24, -24), slice(8, -8))  # rows and lines warped in from outside excluded
    rms = residual[(slice(None), *interior)].square().mean((1, 2)).sqrt()
    assert torch.allclose(rms, torch.tensor([1.5, 1.0]), rtol=0.3)  # the error is there, of the asked size
    off = (moving - expected)[interior].abs().mean()
    assert (warp_image(moving[None, None], residual[None])[0, 0] - expected)[interior].abs().max() < 1e-3 * off
    mirrored = residual * torch.tensor([-1.0, 1.0])[:, None, None]  # a wrong lateral sign is caught
    assert (warp_image(moving[None, None], mirrored[None])[0, 0] - expected)[interior].abs().mean() > 0.5 * off


def test_refinement_items_are_consistent_in_every_crop_and_flip():
    """Identical frames, no motion: each item's residual warps its moving crop back onto its fixed crop
    (the frame linear in (z, x), which bilinear resampling reproduces exactly)."""
    frame = (0.01 * torch.arange(160.0)[:, None] + 0.05 * torch.arange(64.0)).numpy()
    rf = np.stack([frame] * 3)
    sequences = [RFSequence(rf, None, "real"), RFSequence(rf, None, "simulated", np.zeros((2, 2, 160, 64), "f4"))]
    crops = SequenceCrops(sequences, 3, (96, 32), samples=8, seed=1, refinement_error_px=(1.0, 0.5))
    interior = (slice(16, -16), slice(6, -6))
    for index in range(8):
        item = crops[index]
        assert item["refinement_residual"].shape == (2, 96, 32) and item["refinement_moving"].shape == (96, 32)
        fixed, moving = item["refinement_fixed"], item["refinement_moving"]
        back = warp_image(moving[None, None], item["refinement_residual"][None])[0, 0]
        assert (back - fixed)[interior].abs().max() < 1e-3 * (moving - fixed)[interior].abs().mean()
        assert torch.equal(crops[index]["refinement_moving"], moving)  # a function of the index
    with pytest.raises(ConfigError, match="refinement pairs need simulated"):
        SequenceCrops(sequences[:1], 3, (96, 32), samples=8, seed=1, refinement_error_px=(1.0, 0.5))


def test_supervised_loss_adds_the_displacement_error_and_its_strain_error():
    truth = speckle((2, 2, 64, 16))
    assert supervised_loss(truth, truth, 0.3, 0.02) == 0
    assert torch.isclose(supervised_loss(truth + 0.5, truth, 0.3, 0.02), torch.tensor(0.5))  # no strain error
    ramp = torch.zeros_like(truth)
    ramp[:, 1] = 0.001 * torch.arange(64.0)[:, None]  # 0.001 px per row: 0.1 % strain
    expected = ramp.abs().mean() + 0.1
    assert torch.isclose(supervised_loss(truth + ramp, truth, 0.3, 0.02), expected, rtol=1e-4)
    assert supervised_loss(truth + ramp, truth, 0.3, 0.02, reduction="none").shape == (2,)
    with pytest.raises(InputError, match="leave none"):
        supervised_loss(truth, truth, 2.0, 0.02)


def test_supervised_term_runs_the_refinement_pairs_from_zero_states_and_joins_the_first_chunk(tmp_path):
    args = {**tiny_config(tmp_path)["task_args"], "supervised_weight": 2.0}
    network = DeepUSETask(DeepUSETask.parse_args(args), seed=0).build_networks()[NETWORK]
    seen = []
    network.register_forward_pre_hook(lambda module, inputs: seen.append([tensor.clone() for tensor in inputs]))
    batch = {
        "rf": speckle((2, 3, 64, 32)),
        "refinement_fixed": speckle((2, 64, 32), seed=1),
        "refinement_moving": speckle((2, 64, 32), seed=2),
        "refinement_residual": torch.zeros(2, 2, 64, 32),
    }

    def chunk_losses(weight: float) -> tuple[list[float], dict[str, torch.Tensor]]:
        task = DeepUSETask(DeepUSETask.parse_args({**args, "supervised_weight": weight}), seed=0)
        losses = []
        context = StepContext({NETWORK: network}, {}, {}, torch.device("cpu"), lambda loss, name: losses.append(loss))
        logged = task.training_step(batch, context)
        return [float(loss) for loss in losses], logged

    (first, second), logged = chunk_losses(2.0)
    pair, *states = seen[0]
    assert torch.equal(pair, torch.stack([batch["refinement_fixed"], batch["refinement_moving"]], dim=1))
    assert all(state.abs().sum() == 0 for state in states)
    assert len(seen) == 3  # the refinement pair, then the two training pairs (one per chunk: truncation 1)
    (first_alone, second_alone), alone = chunk_losses(0.0)
    assert "supervised" not in alone and logged["supervised"] > 0
    assert first == pytest.approx(first_alone + 2.0 * float(logged["supervised"]), rel=1e-5)
    assert second == pytest.approx(second_alone, rel=1e-5)


@pytest.mark.parametrize("prealign", [False, True])
def test_export_spec_records_the_prealignment_for_inference(tmp_path, prealign):
    args = {**tiny_config(tmp_path)["task_args"], "pairs": "previous", "prealign": prealign}
    spec = DeepUSETask(DeepUSETask.parse_args(args), seed=0).export_spec()
    assert spec.normalisation["kind"] == "frame_max" and spec.inference.pairs == FRAME_TO_FRAME
    assert spec.inference.prealign == (PREALIGN_UNIFORM_STRAIN if prealign else None)
    assert spec.inference.input_multiple == (16, 16)


@pytest.mark.parametrize("pairs", ["first", "previous"])
def test_validation_runs_the_pairs_as_inference_does(tmp_path, pairs):
    """(0, k) directly, or chained from (k - 1, k) with the recurrent state running on."""
    task = DeepUSETask(DeepUSETask.parse_args({**tiny_config(tmp_path)["task_args"], "pairs": pairs}), seed=0)
    network = task.build_networks()[NETWORK].eval()
    seen = []
    network.register_forward_pre_hook(lambda module, inputs: seen.append(inputs))
    rf = speckle((1, 3, 64, 32))
    batch = {"rf": rf, "strain": torch.ones(1, 2, 64, 32), "region": torch.ones(1, 64, 32, dtype=torch.bool)}
    figures = task.validation_step(batch, {NETWORK: network})
    assert set(figures) == {"strain_nrmse", "strain_nrmse_contrast", "warped_ncc"}
    assert figures["strain_nrmse_contrast"].isnan().all()  # a uniform truth has no contrast
    assert len(seen) == 2
    for t, (pair, *states) in enumerate(seen, start=1):
        assert torch.equal(pair[:, 0], rf[:, t - 1 if pairs == "previous" else 0]) and torch.equal(pair[:, 1], rf[:, t])
        assert all(state.abs().sum() == 0 for state in states) == (t == 1)  # zero states, then carried on


def test_refined_validation_refines_each_chained_estimate_from_zero_states(tmp_path):
    """With ``validate_refined``, as ``deepultrasound strain`` runs: (0, 1), refined; (1, 2), on the
    running states, refined (each refinement mirror-averaged)."""
    args = {**tiny_config(tmp_path)["task_args"], "pairs": "previous", "validate_refined": True}
    task = DeepUSETask(DeepUSETask.parse_args(args), seed=0)
    network = task.build_networks()[NETWORK].eval()
    seen, returned = [], []
    network.register_forward_pre_hook(lambda module, inputs: seen.append([tensor.clone() for tensor in inputs]))
    network.register_forward_hook(
        lambda module, inputs, outputs: returned.append([tensor.clone() for tensor in outputs])
    )
    rf = speckle((1, 3, 64, 32))
    batch = {"rf": rf, "strain": torch.ones(1, 2, 64, 32), "region": torch.ones(1, 64, 32, dtype=torch.bool)}
    assert task.validation_step(batch, {NETWORK: network})["strain_nrmse"].isfinite().all()
    assert len(seen) == 6  # each pair, then its refinement: against frame 0 mirrored, then as it is
    (first, *zeros), (mirrored, *rest_mirrored), (reference, *rest) = seen[:3]
    (second, *carried), (mirrored_again, *rest_mirrored_again), (again, *rest_again) = seen[3:]
    assert torch.equal(first[:, 0], rf[:, 0]) and torch.equal(second[:, 0], rf[:, 1])
    assert torch.equal(reference[:, 0], rf[:, 0]) and torch.equal(again[:, 0], rf[:, 0])
    assert torch.equal(mirrored[:, 0], rf[:, 0].flip(-1)) and torch.equal(mirrored_again[:, 0], rf[:, 0].flip(-1))
    resting = [*zeros, *rest, *rest_mirrored, *rest_again, *rest_mirrored_again]
    assert all(state.abs().sum() == 0 for state in resting)
    assert all(torch.equal(state, out) for state, out in zip(carried, returned[0][1:]))  # the first pair's states


def test_folded_usenet_validates_frames_of_any_height_and_exports_its_fold(tmp_path):
    """Validation pads a 96-row crop to the folded network's 128-row multiple and crops back."""
    args = {**tiny_config(tmp_path)["task_args"], "architecture": "usenet", "axial_fold": 8, "patch_size": [128, 32]}
    task = DeepUSETask(DeepUSETask.parse_args({**args, "beta": 0.0}), seed=0)
    network = task.build_networks()[NETWORK].eval()
    seen = []
    network.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].shape))
    rf = speckle((1, 3, 96, 32))
    batch = {"rf": rf, "strain": torch.ones(1, 2, 96, 32), "region": torch.ones(1, 96, 32, dtype=torch.bool)}
    figures = task.validation_step(batch, {NETWORK: network})
    assert seen == [(1, 2, 128, 32)] * 2 and figures["strain_nrmse"].isfinite().all()
    spec = task.export_spec()
    assert spec.architecture_args["axial_fold"] == 8 and "multiple of 128" in spec.description


def test_previous_pairs_train_on_the_prealigned_frames(tmp_path):
    args = {
        **tiny_config(tmp_path)["task_args"],
        "architecture": "usenet",
        "beta": 0.0,
        "pairs": "previous",
        "prealign": True,
    }
    task = DeepUSETask(DeepUSETask.parse_args(args), seed=0)
    network = task.build_networks()[NETWORK]
    seen = []
    network.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3)

    def optimize(loss, name):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    rf, aligned = speckle((2, 3, 64, 32)), speckle((2, 2, 64, 32), seed=3)
    task.training_step(
        {"rf": rf, "aligned": aligned},
        StepContext({NETWORK: network}, {}, {"main": optimizer}, torch.device("cpu"), optimize),
    )
    assert len(seen) == 2
    for t, pair in enumerate(seen, start=1):
        assert torch.equal(pair[:, 0], rf[:, t - 1]) and torch.equal(pair[:, 1], aligned[:, t - 1])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("deepuse")
    config = parse_config(tiny_config(out / "cache"))
    result = Trainer(config, output_dir=out / "run", progress=False, device="cpu").run()
    return out / "run", result


def test_tiny_run_trains_validates_and_exports(tiny_run):
    _, result = tiny_run
    assert result.epochs_done == 1
    assert all(np.isfinite(value) for value in result.train_losses.values())
    assert 0 < result.validation["val/strain_nrmse"] < 100
    assert -1 <= result.validation["val/warped_ncc"] <= 1
    manifest = create_predictor(result.bundle).bundle.manifest
    assert manifest.architecture == "reusenet" and manifest.normalisation["kind"] == "frame_max"
    assert len(manifest.states) == 10
    assert manifest.task == "elastography", "trained DeepUSE bundles are listed with the imported ones"


def test_exported_bundle_reproduces_the_trained_network_with_states(tiny_run):
    run_dir, result = tiny_run
    state = load_checkpoint(run_dir / "checkpoints" / "checkpoint_last.pt")
    network = ReUSENet(in_channels=2, initial_channels=2)
    network.load_state_dict(state["networks"][NETWORK], strict=True)
    network.eval()
    pairs = [speckle((1, 2, 96, 48), seed) for seed in (1, 2)]  # not the export size: dynamic spatial axes
    with torch.no_grad():
        first, *states = network(pairs[0])
        second = network(pairs[1], *states)[0]
    for backend in ("torch", "onnxruntime"):
        recurrent = RecurrentPredictor(create_predictor(result.bundle, backend=backend, device="cpu"))
        outputs = [recurrent.step(pair.numpy())[0] for pair in pairs]
        np.testing.assert_allclose(outputs[0], first.numpy(), atol=1e-4)
        np.testing.assert_allclose(outputs[1], second.numpy(), atol=1e-4)


def test_a_supervised_stage_trains_on_refinement_pairs_from_the_simulated_cache(tmp_path):
    config = tiny_config(tmp_path / "cache")
    config["task_args"]["pairs"] = "previous"
    refine = {"supervised_weight": 1.0, "validate_refined": True}
    config["stages"] = [{"name": "main", "epochs": 1}, {"name": "refine", "epochs": 1, "task_args": refine}]
    result = Trainer(parse_config(config), output_dir=tmp_path / "run", progress=False, device="cpu").run()
    with open(tmp_path / "run" / "metrics.csv") as table:
        rows = list(csv.DictReader(table))
    assert [row["stage"] for row in rows] == ["main", "refine"]
    assert rows[0]["train/supervised"] == "" and float(rows[1]["train/supervised"]) > 0
    assert 0 < result.validation["val/strain_nrmse"] < 100
