"""USSynth benchmark: realism metrics against known answers, the downstream segmenter, and ``bench synth`` end to end.

Truth: a Rayleigh envelope (fully developed speckle) has SNR sqrt(pi / (4 - pi)) = 1.91 whatever its
scale, once log-compressed to B-mode and recovered; white noise smoothed by a Gaussian of sigma s has
a Gaussian autocorrelation of sigma s sqrt(2), FWHM 3.33 s; the depth profile of images that equal
their normalised depth is the depth itself, so a brightness offset is the profile error; Gaussians
that differ by a mean shift c are ``|c|^2`` apart in Frechet distance; Dice of known overlaps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from test_synthesis import tiny_config

from deepultrasound.cli import main
from deepultrasound.errors import InputError
from deepultrasound.io.image import Image
from deepultrasound.io.images import write_image
from deepultrasound.spatial.bmode import bmode_db, envelope
from deepultrasound.synthesis.bench_data import STRUCTURES, UNSEEN_SEEDS, unseen_scene
from deepultrasound.synthesis.bmaps import SectorGeometry
from deepultrasound.synthesis.data import LabelAugmentation, LinearLabel, linear_pairs
from deepultrasound.synthesis.inference import Synthesizer
from deepultrasound.synthesis.realism import (
    RAYLEIGH_SNR,
    Regions,
    depth_profile,
    envelope_from_bmode,
    envelope_snr,
    frechet_distance,
    profile_error,
    profile_error_difference,
    profile_error_interval,
    profile_shape_error,
    realism,
    speckle_fwhm,
)
from deepultrasound.synthesis.sample_cache import SampleCache, stack_key
from deepultrasound.synthesis.segmentation import (
    CHANNELS,
    SegmenterSettings,
    bottleneck_features,
    predict,
    structure_dice,
    train_segmenter,
)
from deepultrasound.training import Trainer, parse_config

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def everywhere(shape: tuple[int, int, int], depth: np.ndarray | None = None) -> Regions:
    """Regions covering every pixel of ``(N, H, W)`` images (depth: the normalised row unless given)."""
    rows = np.broadcast_to(np.linspace(0.0, 1.0, shape[1])[None, :, None], shape)
    full = np.ones(shape, bool)
    return Regions(full, rows if depth is None else depth, full, full)


def rayleigh_bmode(shape: tuple[int, int, int], dynamic_range_db: float, seed: int = 0) -> np.ndarray:
    """B-mode in [0, 1] of a Rayleigh envelope (magnitude of complex Gaussian noise), log-compressed."""
    rng = np.random.default_rng(seed)
    magnitude = np.abs(rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * 7.0  # any scale
    decibels = 20.0 * np.log10(magnitude / magnitude.max(axis=(1, 2), keepdims=True))
    return np.clip(1.0 + decibels / dynamic_range_db, 0.0, 1.0)


# -- realism metrics --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dynamic_range_db", [50.0, 60.0])
def test_a_rayleigh_envelope_has_the_snr_of_fully_developed_speckle(dynamic_range_db):
    bmode = rayleigh_bmode((4, 128, 128), dynamic_range_db)
    snr = envelope_snr(envelope_from_bmode(bmode, dynamic_range_db), everywhere(bmode.shape))
    assert snr == pytest.approx(RAYLEIGH_SNR, abs=0.03) and RAYLEIGH_SNR == pytest.approx(1.913, abs=1e-3)
    wrong = envelope_snr(envelope_from_bmode(bmode, 2 * dynamic_range_db), everywhere(bmode.shape))
    assert wrong < RAYLEIGH_SNR - 0.5  # the assumed dynamic range matters: too wide a range exaggerates the spread


def test_the_envelope_is_recovered_from_the_projects_log_compression():
    rf = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    bmode = (bmode_db(rf, 60.0) + 60.0) / 60.0
    truth = envelope(rf) / envelope(rf).max()
    kept = truth > 10 ** (-60.0 / 20.0)  # above the clipped floor
    np.testing.assert_allclose(envelope_from_bmode(bmode, 60.0)[kept], truth[kept], rtol=1e-4)


@pytest.mark.parametrize("sigma", [(1.5, 1.0), (1.0, 2.0)])
def test_speckle_size_is_the_fwhm_of_a_known_gaussian_autocorrelation(sigma):
    noise = np.random.default_rng(2).standard_normal((4, 256, 256))
    field = np.stack([gaussian_filter(image, sigma, mode="wrap") for image in noise])
    axial, lateral = speckle_fwhm(field, everywhere(field.shape), patch=32)
    expected = [FWHM_PER_SIGMA * math.sqrt(2.0) * s for s in sigma]  # autocorrelation sigma: s sqrt(2)
    assert [axial, lateral] == pytest.approx(expected, rel=0.05)


def test_speckle_size_is_undefined_without_a_tissue_tile_or_speckle():
    field = np.random.default_rng(3).random((2, 32, 32))
    regions = everywhere(field.shape)
    no_tissue = Regions(regions.inside, regions.depth, regions.signal, np.zeros_like(regions.tissue))
    assert speckle_fwhm(field, no_tissue) is None
    assert speckle_fwhm(np.ones((2, 32, 32)), regions) is None
    assert envelope_snr(np.ones((2, 32, 32)), regions) is None


def test_depth_profile_error_is_zero_for_identical_images_and_the_offset_for_shifted_ones():
    depth = np.broadcast_to(np.linspace(0.0, 1.0, 32)[None, :, None], (3, 32, 16))
    regions = everywhere(depth.shape, depth)
    images = 0.8 * depth
    profile = depth_profile(images, regions)
    centres = (np.arange(16) + 0.5) / 16
    np.testing.assert_allclose(profile, 0.8 * centres, atol=0.8 / 32)  # each bin's mean depth, within a row
    assert profile_error(profile, depth_profile(images.copy(), regions)) == 0.0
    assert profile_error(depth_profile(images + 0.1, regions), profile) == pytest.approx(0.1)


def test_profile_error_interval_is_exact_without_spread_and_narrows_with_more_label_maps():
    depth = np.broadcast_to(np.linspace(0.0, 1.0, 32)[None, :, None], (6, 32, 16))
    regions = everywhere(depth.shape, depth)
    reference = 0.8 - 0.4 * depth
    assert profile_error_interval(reference + 0.1, regions, reference, regions) == pytest.approx((0.1, 0.1))

    def interval(count: int) -> tuple[float, float, float]:
        """The interval, and the error itself: the mean gain, for images each brighter than its reference by its
        own gain (mean 0.1)."""
        gains = np.random.default_rng(count).normal(0.1, 0.05, count)[:, None, None]
        many = np.broadcast_to(np.linspace(0.0, 1.0, 32)[None, :, None], (count, 32, 16))
        images, regions = 0.6 - 0.3 * many, everywhere(many.shape, many)
        return *profile_error_interval(images + gains, regions, images, regions), float(gains.mean())

    (few_low, few_high, few_error), (low, high, error) = interval(8), interval(128)
    assert few_low < few_error < few_high and low < error < high
    assert high - low < 0.5 * (few_high - few_low)  # ~ 1 / sqrt(count): a quarter
    with pytest.raises(InputError, match="as long"):
        profile_error_interval(reference[:2], everywhere((2, 32, 16)), reference, regions)


def test_profile_error_difference_cancels_the_spread_the_label_maps_share():
    count = 64
    depth = np.broadcast_to(np.linspace(0.0, 1.0, 32)[None, :, None], (count, 32, 16))
    regions = everywhere(depth.shape, depth)
    reference = 0.5 - 0.3 * depth
    gains = np.random.default_rng(5).normal(0.1, 0.08, count)[:, None, None]  # some maps harder for both models
    closer, farther = reference + gains, reference + gains + 0.02
    alone = profile_error_interval(closer, regions, reference, regions)
    assert alone[1] - alone[0] > 0.02  # each error's own interval is wider than the difference
    difference, low, high = profile_error_difference(closer, farther, reference, regions)
    assert (difference, low, high) == pytest.approx((-0.02, -0.02, -0.02))  # negative: the first is the closer
    assert profile_error_difference(farther, closer, reference, regions)[0] == pytest.approx(0.02)
    with pytest.raises(InputError, match="differ in shape"):  # one set of label maps, hence of regions, for all
        profile_error_difference(closer[:2], farther, reference, regions)


def test_draws_of_each_label_map_are_pooled_and_redrawn_with_their_map():
    count = 32
    depth = np.broadcast_to(np.linspace(0.0, 1.0, 32)[None, :, None], (count, 32, 16))
    regions = everywhere(depth.shape, depth)
    reference = 0.5 - 0.3 * depth
    gains = np.random.default_rng(6).choice([-0.2, 0.2], count)[:, None, None]  # a gain drawn at random per image
    one_draw = reference + gains
    both_signs = np.stack([reference + gains, reference - gains])  # (K=2, N, H, W): the gains cancel per map
    assert profile_error(depth_profile(one_draw, regions), depth_profile(reference, regions)) > 0.0
    np.testing.assert_allclose(depth_profile(both_signs, regions), depth_profile(reference, regions), atol=1e-12)
    pooled = np.concatenate(list(both_signs))  # the same images as one (2 N, H, W) set
    np.testing.assert_allclose(depth_profile(both_signs, regions), depth_profile(pooled, regions.repeated(2)))
    assert profile_error_interval(both_signs, regions, reference, regions) == pytest.approx((0.0, 0.0), abs=1e-12)
    brighter = reference + np.abs(gains)  # one draw of each map, 0.2 too bright
    difference = profile_error_difference(both_signs, brighter[None], reference, regions)
    assert difference == pytest.approx((-0.2, -0.2, -0.2))  # whichever maps are drawn, with both their draws
    figures = realism(both_signs, regions, reference=(reference, regions, None), paired=True)
    assert figures["profile_error"] == pytest.approx(0.0, abs=1e-12)
    assert figures["mean_intensity_sd"] == pytest.approx(0.2)  # every image's mean is the reference's +- 0.2
    assert realism(reference, regions)["mean_intensity_sd"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(InputError, match="differ in shape"):
        depth_profile(both_signs[:, :4], regions)


def test_depth_profile_shape_error_ignores_the_gain_and_measures_the_change_with_depth():
    depth = np.broadcast_to(np.linspace(0.0, 1.0, 32)[None, :, None], (3, 32, 16))
    regions = everywhere(depth.shape, depth)
    falling = depth_profile(0.8 - 0.4 * depth, regions)  # 0.8 at the probe, 0.4 at the deepest row
    assert profile_shape_error(depth_profile(0.5 * (0.8 - 0.4 * depth), regions), falling) == pytest.approx(
        0, abs=1e-12
    )
    assert profile_error(depth_profile(0.5 * (0.8 - 0.4 * depth), regions), falling) == pytest.approx(0.3, rel=0.02)
    flat = depth_profile(np.full(depth.shape, 0.6), regions)
    # profile / its mean: 1 - 2 (d - 0.5) / 3 against 1 for the flat one, d about the bin's centre
    expected = 2.0 * np.abs((np.arange(16) + 0.5) / 16 - 0.5).mean() / 3.0
    assert profile_shape_error(flat, falling) == pytest.approx(expected, rel=0.05)
    assert profile_shape_error(flat, np.full(16, np.nan)) is None


def test_frechet_distance_is_zero_for_identical_features_and_the_squared_shift_otherwise():
    features = torch.randn(200, 8, generator=torch.Generator().manual_seed(4))
    shift = torch.tensor([0.5, -1.0, 0, 0, 0, 0, 0, 2.0])
    assert frechet_distance(features, features.clone()) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(features + shift, features) == pytest.approx(float(shift @ shift), rel=1e-6)
    with pytest.raises(InputError, match=r"\(N, F\) and \(M, F\)"):
        frechet_distance(features, features[:, :4])


def test_realism_of_the_reference_itself_is_perfect():
    bmode = rayleigh_bmode((4, 64, 64), 60.0)
    regions = everywhere(bmode.shape)
    features = torch.randn(4, 8, generator=torch.Generator().manual_seed(5))
    figures = realism(bmode, regions, features, (bmode, regions, features))
    assert figures["profile_error"] == 0.0 and figures["frechet"] == pytest.approx(0.0, abs=1e-6)
    assert figures["profile_shape_error"] == 0.0 and figures["mean_intensity"] == pytest.approx(bmode.mean())
    assert figures["snr"] == pytest.approx(RAYLEIGH_SNR, abs=0.1)
    with pytest.raises(InputError, match="in \\[0, 1\\]"):
        realism(bmode + 1.0, regions)


# -- segmenter --------------------------------------------------------------------------------------------


def test_structure_dice_of_known_overlaps():
    truth = torch.zeros(2, 8, 8, dtype=torch.long)
    truth[:, 2:6, 2:6] = 1  # LV: 16 pixels
    truth[:, 2:6, 6] = 2  # myocardium: 4 pixels
    prediction = truth.clone()
    prediction[0, 2:6, 2:4] = 0  # LV half found: Dice 2 * 8 / (16 + 8)
    dice = structure_dice(prediction, truth, STRUCTURES["echo"])
    assert dice["lv_endo"] == pytest.approx((2 * 8 / 24 + 1.0) / 2)
    assert dice["epi"] == pytest.approx((2 * 12 / 32 + 1.0) / 2)
    assert dice["la"] is None  # in no image


def test_segmenters_with_the_same_settings_and_data_are_identical_and_learn_the_data():
    labels = torch.zeros(4, 16, 16, dtype=torch.long)
    labels[:, 4:12, 4:12] = 1
    pairs = [{"image": (labels[k] == 1).float()[None], "labels": labels[k]} for k in range(4)]
    settings = SegmenterSettings(steps=15, batch_size=4, learning_rate=1e-2, augmentation=LabelAugmentation())
    first, second = (train_segmenter(pairs, torch.tensor([0, 1]), settings) for _ in range(2))
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        torch.testing.assert_close(a, b)
    images = torch.stack([pair["image"] for pair in pairs])
    assert structure_dice(predict(first, images), labels, {"square": (1,)})["square"] > 0.9  # a bright square
    assert bottleneck_features(first, images).shape == (4, CHANNELS[-1])


# -- linear data of an unseen configuration -----------------------------------------------------------------


def test_unseen_scenes_always_hold_a_layer_and_no_vessel():
    rng = np.random.default_rng(6)
    scenes = [unseen_scene(rng, 40.0, 30.0) for _ in range(20)]
    assert all(len(scene.layers) == 1 for scene in scenes)
    for scene in scenes:
        for inclusion in scene.inclusions:  # 30-45 % of the smaller side: never a thin vessel
            assert 0.3 * 30.0 <= max(inclusion.semi_axes_mm) <= 0.45 * 30.0 + 1e-9
    (pair,) = linear_pairs(6, 1, 16, scene=unseen_scene)
    assert pair["labels"].shape == (16, 16) and set(pair["labels"].unique().tolist()) <= set(map(int, LinearLabel))


# -- bench synth end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speckled_camus(tmp_path_factory) -> Path:
    """22 CAMUS-like patients of 64 x 64 sector images with log-compressed speckle: LV cavity (dark),
    myocardium, left atrium; the split trains on the first 2."""
    root = tmp_path_factory.mktemp("camus")
    fan = SectorGeometry(apex=(-0.5, 31.5), radius=64.0, angle=math.radians(70.0)).fan((64, 64))
    labels = np.zeros((64, 64), np.uint8)
    labels[12:44, 22:42] = 2
    labels[16:40, 26:38] = 1
    labels[44:56, 24:40] = 3
    echogenicity = np.choose(labels, [1.0, 0.1, 1.5, 0.1])
    for number in range(1, 23):
        bmode = rayleigh_bmode((1, 64, 64), 60.0, seed=number)[0] + 20.0 * np.log10(echogenicity) / 60.0
        image = np.where(fan, np.clip(bmode, 0.0, 1.0) * 255, 0).astype(np.uint8)
        for view in ("2CH", "4CH"):
            for phase in ("ED", "ES"):
                write_image(root / f"patient{number:04d}_{view}_{phase}.nii.gz", Image(image))
                write_image(root / f"patient{number:04d}_{view}_{phase}_gt.nii.gz", Image(labels))
    return root


@pytest.fixture(scope="module")
def tiny_bundles(speckled_camus, tmp_path_factory) -> dict[str, Path]:
    """An echo and a linear bundle of 32 x 32 images and 30 diffusion steps, each trained 2 steps; the linear one
    with its ONNX graph."""
    bundles = {}
    for data in ("echo", "linear"):
        output = tmp_path_factory.mktemp(data)
        config = tiny_config(speckled_camus, data=data, image_size=32, num_train_timesteps=30)
        config["bundle"]["formats"] = ["onnx"] if data == "linear" else []
        config = parse_config(config)
        Trainer(config, output_dir=output, progress=False, device="cpu").run()
        bundles[data] = output / "bundle"
    return bundles


def test_bench_synth_runs_end_to_end_and_leaves_out_a_missing_model(tiny_bundles, speckled_camus, tmp_path, capsys):
    argv = ["bench", "synth", "--camus", speckled_camus, "--test-patients", "2", "--linear-train", "4"]
    argv += ["--linear-test", "2", "--linear-attenuation", "0.5", "1.0", "--seg-steps", "2", "--seg-batch", "2"]
    argv += ["--batch", "2", "--steps", "2", "--samples-per-map", "2"]
    argv += ["--ddpm-steps", "2", "--repeats", "1", "--ddpm-repeats", "2", "--timed", "linear", "--device", "cpu"]
    argv += ["--figures", tmp_path, "--cache", tmp_path]
    argv += ["--model", f"echo={tiny_bundles['echo']}", "--model", f"linear={tiny_bundles['linear']}"]
    argv += ["--model", f"ghost={tmp_path / 'no_such_bundle'}", "--model", f"again={tiny_bundles['linear']}"]
    assert main([str(arg) for arg in argv]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["suite"] == "synth" and set(figures["models"]) == {"echo", "linear", "again"}
    assert figures["settings"]["repeats"] == 1 and figures["settings"]["ddpm_repeats"] == 2
    # two stacks of the 2 linear test maps, seeds 0 and 1 ('again' is 'linear': the same stacks)
    assert figures["settings"]["samples_per_map"] == 2
    assert sorted(len(np.load(path)) for path in tmp_path.glob("*.npy") if len(np.load(path)) == 2) == [2, 2]
    assert {model["sampler"] for model in figures["models"].values()} == {"ddpm"}  # the bundles' default
    assert {model["prediction_type"] for model in figures["models"].values()} == {"epsilon"}
    assert any(note.startswith("ghost: left out") for note in figures["notes"])
    for kind, model in (("echo", "echo"), ("linear", "linear")):
        part = figures[kind]
        structures = set(STRUCTURES[kind])
        assert set(part["segmentation"]["real"]["dice"]) == structures
        assert set(part["segmentation"][model]["ratio_to_real"]) == structures
        assert {"held_out_real", "real_train", model} <= set(part["realism"])
        for row in ("real_train", model):
            assert {"profile_error", "mean_intensity_sd", "snr", "speckle_axial_px", "frechet"} <= set(
                part["realism"][row]
            )
            assert part["realism"][row]["frechet"] >= 0 and part["realism"][row]["profile_error"] >= 0
        # the synthetic images of the test maps are paired with the real ones: an interval; other images are not
        assert part["realism"][model]["profile_error_low"] <= part["realism"][model]["profile_error_high"]
        assert "profile_error_low" not in part["realism"]["real_train"]
        assert Path(part["figure"]).is_file()
    assert figures["echo"]["throughput"] == {}  # not --timed
    assert figures["echo"]["profile_error_difference"] == {}  # one model: no ablation
    # the same bundle twice: the same images, no difference, nothing to spread
    again = figures["linear"]["profile_error_difference"]["again"]
    assert again == {"baseline": "linear", "difference": 0.0, "low": 0.0, "high": 0.0}
    speeds = figures["linear"]["throughput"]["linear"]
    assert "compared" not in speeds and speeds["backend"] == figures["models"]["linear"]["backend"]
    assert speeds["ddpm_steps"] == 2 and speeds["ddim_25"] > 0 and speeds["ddpm"] > 0
    assert speeds["ddim_50"] is None and speeds["ddpm_50"] is None  # more steps than the 30 of the schedule
    echo = figures["echo"]
    assert echo["data"] == {"train_patients": 2, "test_patients": ["patient0003", "patient0004"]} | {
        "train_images": 8,
        "test_images": 8,
    }
    # the real images of other patients are drawn as the held-out ones: closer to them than an untrained model
    assert echo["realism"]["real_train"]["profile_error"] < echo["realism"]["echo"]["profile_error"]
    assert echo["realism"]["held_out_real"]["snr"] > 0
    assert figures["linear"]["data"]["seeds"] == list(UNSEEN_SEEDS)
    assert figures["linear"]["data"]["attenuation_db_cm_mhz"] == [0.5, 1.0]


def test_bench_synth_times_two_backends_of_one_bundle_in_turn_and_gives_their_ratio(tiny_bundles, tmp_path, capsys):
    argv = ["bench", "synth", "--model", f"linear={tiny_bundles['linear']}", "--throughput-only"]
    argv += ["--backend", "onnxruntime", "--compare-backend", "torch", "--linear-train", "1", "--linear-test", "2"]
    argv += ["--batch", "2", "--ddpm-steps", "2", "--repeats", "1", "--device", "cpu", "--cache", tmp_path]
    assert main([str(arg) for arg in argv]) == 0
    out = capsys.readouterr().out
    figures = json.loads(out.strip().splitlines()[-1])["linear"]
    assert set(figures) == {"data", "throughput"}  # no segmenters, no realism
    assert (figures["data"]["train_images"], figures["data"]["test_images"]) == (0, 2)  # only test maps are made
    row = figures["throughput"]["linear"]
    compared = row["compared"]
    assert (row["backend"], compared["backend"]) == ("onnxruntime", "torch")
    for key in ("ddim_25", "ddpm"):
        assert row[key] > 0 and compared[key] > 0
        assert compared["ratio"][key] == pytest.approx(row[key] / compared[key])
    assert compared["ratio"]["ddim_50"] is None  # more steps than the 30 of the schedule: not timed
    assert "onnxruntime / torch: ddim_25" in out


def test_bench_synth_refuses_a_backend_to_compare_that_a_bundle_cannot_run_before_any_work(tiny_bundles, capsys):
    argv = ["bench", "synth", "--model", f"echo={tiny_bundles['echo']}", "--compare-backend", "onnxruntime"]
    assert main([str(arg) for arg in argv + ["--device", "cpu"]]) == 2
    assert "--compare-backend onnxruntime: echo:" in capsys.readouterr().err  # the echo bundle has no ONNX graph


def test_bench_synth_refuses_to_time_a_model_it_was_not_given(tiny_bundles, tmp_path, capsys):
    argv = ["bench", "synth", "--model", f"linear={tiny_bundles['linear']}", "--timed", "echo", "--device", "cpu"]
    assert main([*argv, "--cache", str(tmp_path)]) != 0
    assert "--timed echo: no such model (models: linear)" in capsys.readouterr().err


def test_bench_synth_refuses_an_attenuation_range_upside_down(tiny_bundles, tmp_path, capsys):
    argv = ["bench", "synth", "--model", f"linear={tiny_bundles['linear']}", "--linear-attenuation", "1", "0.5"]
    assert main([*argv, "--cache", str(tmp_path), "--device", "cpu"]) != 0
    assert "--linear-attenuation: an attenuation range takes LOW HIGH with 0 <= LOW <= HIGH" in capsys.readouterr().err


def test_a_stack_synthesised_in_parts_resumes_from_its_stored_chunks_and_equals_one_call(tiny_bundles, tmp_path):
    model = Synthesizer(tiny_bundles["linear"], device="cpu")
    first, second, third = model.label_values[:3]
    labels = np.full((5, *model.size), first, np.int64)
    labels[:, 8:24, 10:22] = second
    labels[2:, 4:8, 4:8] = third
    options = {"sampler": "ddim", "steps": 3, "seed": 4, "batch": 2}
    whole = model(labels, **options)
    cache = SampleCache(tmp_path)
    np.testing.assert_allclose(cache.synthesise(model, labels, **options), whole, atol=1e-6)

    # a run stopped after its first chunk: that chunk is taken from the file (marked here), the rest synthesised
    path = cache.path(model, labels, {"guidance": None, **options})
    stored = np.load(path)
    assert stored.shape == (5, *model.size)
    np.save(path, np.full((2, *model.size), 0.25, np.float32))
    resumed = cache.synthesise(model, labels, **options)
    assert (resumed[:2] == 0.25).all()
    np.testing.assert_allclose(resumed[2:], whole[2:], atol=1e-6)
    assert np.load(path).shape == (5, *model.size)
    assert cache.path(model, labels, {"guidance": None, **options, "seed": 5}) != path  # other settings, other file


def test_a_stack_is_kept_apart_per_backend():
    labels = np.zeros((2, 8, 8), np.int64)
    keys = {stack_key(SimpleNamespace(digest="d", backend=backend), labels, {}) for backend in ("torch", "onnxruntime")}
    assert len(keys) == 2  # the backends' images differ slightly: never served from another backend's file
