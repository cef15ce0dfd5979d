"""``deepultrasound superres`` and the engine behind it: tiled network inference, value mapping, geometry.

Bundles are untrained SRResNets exported through the trainer's export path (random weights make
every pixel of a tile depend on its neighbours, which is what tiling must get right).

Truth: the receptive radius equals the measured reach of a one-pixel change; tiles reproduce the
whole-image output; interpolation keeps the input lines at k F exactly (integers round-trip), and
``--method cubic`` is :func:`upsample_lines`; the value mapping is the stated affine map; geometry
follows the phase-0 fine grid.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from deepultrasound.cli import main
from deepultrasound.errors import BundleError, InputError
from deepultrasound.io import Image, read_image, write_image
from deepultrasound.losses.metrics import psnr, ssim
from deepultrasound.runtime import MODELS_ENVIRONMENT_VARIABLE
from deepultrasound.superres.data import simulated_images
from deepultrasound.superres.degradation import degrade, upsample_lines
from deepultrasound.superres.inference import (
    SuperResolver,
    ValueMapping,
    receptive_radius,
    resolve_model,
    superresolve,
    superresolve_image,
    tile_spans,
)
from deepultrasound.superres.networks import SRResNet
from deepultrasound.training import parse_config
from deepultrasound.training.export import export_bundle
from deepultrasound.training.task import get_task

TILE = 16
"""Small tiles, so that test images span several of them."""


def export_untrained(directory: Path, factor: int, formats: list[str], blur: float = 0.0, name: str = "") -> Path:
    """An untrained 4-channel, 1-block SRResNet of ``factor`` for a degradation with ``blur`` (sigma, fine lines),
    exported as the trainer exports it (as ``name``, default ``tiny-xF``)."""
    name = name or f"tiny-x{factor}"
    args = {"factor": factor, "channels": 4, "blocks": 1, "blur_sigma_lines": blur}
    task_cls = get_task("superres")
    task = task_cls(task_cls.parse_args(args), seed=0)
    config = parse_config(
        {
            "task": "superres",
            "task_args": args,
            "stages": [{"steps": 1}],
            "bundle": {"name": name, "formats": formats},
        }
    )
    torch.manual_seed(0)
    return export_bundle(task, task.build_networks(), config, {}, directory / name)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A folder of installed models: x4 with an ONNX graph (the CPU runs it in ONNX Runtime), x2 weights only and
    trained for a degradation with a beam-profile blur of sigma 1 fine line."""
    folder = tmp_path_factory.mktemp("models")
    export_untrained(folder, 4, ["onnx"])
    export_untrained(folder, 2, [], blur=1.0)
    return folder


@pytest.fixture(scope="module")
def x4(models) -> SuperResolver:
    return SuperResolver(models / "tiny-x4", 4, tile=TILE)


def speckle(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# -- tiles ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("factor", "blocks"), [(2, 1), (4, 1), (4, 2), (8, 1), (3, 1)])
def test_receptive_radius_is_the_reach_of_a_one_pixel_change(factor, blocks):
    torch.manual_seed(0)
    network = SRResNet(factor, channels=4, blocks=blocks).double().eval()
    low = torch.rand(1, 1, 61, 61, dtype=torch.float64)
    changed = low.clone()
    changed[0, 0, 30, 30] += 1.0
    with torch.no_grad():
        moved = (network(changed) - network(low))[0, 0].abs() > 0
    rows = np.nonzero(moved.any(dim=1).numpy())[0] - 30
    lines = np.nonzero(moved.any(dim=0).numpy())[0] // factor - 30  # the input line of each output column
    radius = receptive_radius(network)
    assert radius == (rows.max(), lines.max()) and (rows.min(), lines.min()) == (-radius[0], -radius[1])


def test_receptive_radius_of_the_shipped_sizes():
    assert receptive_radius(SRResNet(4, channels=4, blocks=16)) == (43, 40)
    assert receptive_radius(SRResNet(4, channels=4, blocks=6)) == (23, 20)


def test_tile_spans_cover_the_axis_once_with_clipped_margins():
    assert tile_spans(10, 4, 2) == [(0, 3, 0, 5), (3, 7, 1, 9), (7, 10, 5, 10)]
    assert tile_spans(5, 16, 3) == [(0, 5, 0, 5)]


def test_tiled_output_equals_the_whole_image_output(models, x4):
    low = speckle((1, 70, 45))  # 5 x 3 tiles of at most 16 x 16
    whole = SuperResolver(models / "tiny-x4", 4, tile=1000)
    assert x4.tiles_per_frame((70, 45)) == 15 and whole.tiles_per_frame((70, 45)) == 1
    tiled = x4(low)
    assert tiled.shape == (1, 70, 180) and tiled.dtype == np.float32
    assert np.abs(tiled - whole(low)).max() < 1e-4
    assert np.abs(tiled - upsample_lines(torch.from_numpy(low), 4).numpy()).max() > 1e-2  # the network changes it


# -- values -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "low", "high"),
    [
        (np.array([[3, 200]], np.uint8), 0.0, 255.0),
        (np.array([[100, 4000]], np.uint16), 100.0, 4000.0),
        (np.array([[-30.0, 5.0]], np.float32), -30.0, 5.0),
        (np.array([[0.2, 0.7]], np.float32), 0.0, 1.0),  # float B-mode in [0, 1] goes in as it is
        (np.array([[7, 7]], np.int16), 7.0, 8.0),
    ],
)
def test_value_mapping_by_dtype(values, low, high):
    mapping = ValueMapping.of(values)
    assert (mapping.low, mapping.high) == (low, high)
    np.testing.assert_allclose(mapping.to_unit(values), (values - low) / (high - low), rtol=1e-6)
    np.testing.assert_array_equal(mapping.from_unit(mapping.to_unit(values)), values)
    assert mapping.from_unit(mapping.to_unit(values)).dtype == values.dtype


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_dtype_families_round_trip_through_interpolation(dtype):
    rng = np.random.default_rng(1)
    if np.issubdtype(dtype, np.integer):
        image = rng.integers(0, np.iinfo(dtype).max, (12, 9), endpoint=True).astype(dtype)
    else:
        image = (rng.random((12, 9)) * 60 - 50).astype(dtype)
    fine = superresolve(image, 4, method="cubic")
    assert fine.shape == (12, 36) and fine.dtype == dtype
    np.testing.assert_allclose(
        fine[:, ::4], image, rtol=0, atol=1e-5
    )  # input line k is output line 4 k (exact for integers)


def test_integer_output_is_rounded_and_clipped_to_the_dtype_range():
    image = np.tile(np.array([0, 0, 0, 255, 255, 255, 0, 0], np.uint8), (3, 1))  # cubic overshoots steps
    unclipped = upsample_lines(torch.from_numpy(image.astype(np.float64)), 4, "cubic").numpy()
    assert unclipped.min() < -1 and unclipped.max() > 256
    np.testing.assert_array_equal(superresolve(image, 4, method="cubic"), np.clip(np.rint(unclipped), 0, 255))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_network_values_are_mapped_to_unit_b_mode_and_back(x4, dtype):
    image = (speckle((20, 12), seed=2) * 3000 + 500).astype(dtype)
    low, high = (0.0, 255.0) if dtype == np.uint8 else (float(image.min()), float(image.max()))
    unit = x4(((image - low) / (high - low)).astype(np.float32)[None])[0]
    expected = np.clip(np.rint(unit.astype(np.float64) * (high - low) + low), 0, np.iinfo(dtype).max)
    fine = superresolve(image, 4, model=x4)
    assert fine.dtype == dtype
    assert np.abs(fine.astype(np.int64) - expected).max() <= 1  # rounding at .5 of float32 sums


@pytest.mark.parametrize(
    ("shape", "options", "message"),
    [
        ((8, 8), {"factor": 1, "method": "cubic"}, "at least 2"),
        ((8, 8), {"factor": 2, "method": "nearest"}, "unknown method 'nearest'"),
        ((8, 8), {"factor": 2, "method": "cubic", "model": "tiny-x2"}, "not both"),
        ((2, 2, 8, 8), {"factor": 2, "method": "cubic"}, r"got shape \(2, 2, 8, 8\)"),
        ((0, 8), {"factor": 2, "method": "cubic"}, "empty"),
    ],
)
def test_ill_options_are_refused(shape, options, message):
    with pytest.raises(InputError, match=message):
        superresolve(np.zeros(shape, np.float32), **options)


def test_nan_and_infinite_values_are_refused_with_their_count():
    image = speckle((8, 8))
    image[0, :2], image[1, 0] = np.nan, np.inf
    with pytest.raises(InputError, match="2 NaN and 1 infinite value"):
        superresolve(image, 4, method="cubic")


# -- frames, colour, narrow images, geometry --------------------------------------------------------------
def test_output_is_on_the_phase_zero_fine_grid(x4):
    direction = (0.0, 1.0, -1.0, 0.0)
    image = Image(speckle((20, 10)), spacing=(0.3, 0.05), origin=(1.5, -2.0), direction=direction)
    fine = superresolve_image(image, 4, model=x4)
    assert fine.array.shape == (20, 40)
    assert fine.spacing == (0.075, 0.05) and fine.origin == (1.5, -2.0) and fine.direction == direction


def test_a_sequence_is_upsampled_frame_by_frame(x4):
    frames = speckle((3, 20, 18), seed=3) * 50.0 - 10.0  # values outside [0, 1]: mapped by their range
    image = Image(frames, spacing=(0.2, 0.05, 0.04))
    fine = superresolve_image(image, 4, model=x4)
    assert fine.array.shape == (3, 20, 72) and fine.spacing == (0.05, 0.05, 0.04)
    low, high = frames.min(), frames.max()
    for k in range(3):  # one value mapping for the whole sequence
        alone = x4(((frames[k] - low) / (high - low))[None])[0] * (high - low) + low
        np.testing.assert_allclose(fine.array[k], alone, atol=1e-4)


def test_colour_becomes_grey_with_a_warning(caplog):
    rgb = np.random.default_rng(4).integers(0, 256, (10, 6, 3), dtype=np.uint8)
    with caplog.at_level(logging.WARNING):
        fine = superresolve_image(Image(rgb, multichannel=True), 2, method="linear")
    assert "converted to grey" in caplog.text
    grey = np.rint(rgb.mean(axis=-1)).astype(np.uint8)
    assert not fine.multichannel
    np.testing.assert_array_equal(fine.array, superresolve(grey, 2, method="linear"))


def test_a_narrow_image_is_edge_padded_to_the_receptive_field_and_cropped_back(models, caplog):
    x4 = SuperResolver(models / "tiny-x4", 4, tile=TILE)
    low = speckle((1, 20, 5))
    assert x4.min_lines == 2 * 10 + 1
    with caplog.at_level(logging.WARNING):
        fine = x4(low)
        assert "padded with copies of its edge lines" in caplog.text
        caplog.clear()
        x4(low)  # the same width again: no second warning
        assert "padded" not in caplog.text
    padded = np.pad(low, ((0, 0), (0, 0), (8, 8)), mode="edge")  # 5 + 16 = 21 lines
    expected = SuperResolver(models / "tiny-x4", 4, tile=1000)(padded)[..., 8 * 4 : 13 * 4]
    assert fine.shape == (1, 20, 20)
    assert np.abs(fine - expected).max() < 1e-4


# -- models -----------------------------------------------------------------------------------------------
def test_the_installed_model_of_the_factor_is_found_by_factor_and_name(models):
    assert resolve_model(None, 4, [models]) == models / "tiny-x4"
    assert resolve_model("tiny-x2", 2, [models]) == models / "tiny-x2"


def test_a_factor_without_a_model_lists_the_factors_that_have_one(models):
    with pytest.raises(BundleError, match=r"factor 3 .*x2 \(tiny-x2\), x4 \(tiny-x4\).*--method cubic"):
        resolve_model(None, 3, [models])
    with pytest.raises(InputError, match="upsamples x4, not x2"):
        SuperResolver(models / "tiny-x4", 2)


# -- command line -----------------------------------------------------------------------------------------
def test_cli_writes_the_upsampled_sequence(models, tmp_path, capsys):
    frames = (speckle((3, 24, 20), seed=5) * 65535).astype(np.uint16)
    source = write_image(tmp_path / "in.mha", Image(frames, spacing=(0.2, 0.05, 0.1), origin=(4.0, 1.0, 0.0)))
    model = str(models / "tiny-x4")
    argv = ["superres", str(source), "--factor", "4", "--model", model, "--tile", str(TILE), "--device", "cpu"]
    assert main([*argv, "-o", str(tmp_path / "out.nrrd")]) == 0
    written = read_image(tmp_path / "out.nrrd")
    assert written.array.shape == (3, 24, 80) and written.array.dtype == np.uint16
    assert written.spacing == pytest.approx((0.05, 0.05, 0.1)) and written.origin == pytest.approx((4.0, 1.0, 0.0))
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "3 x 24 x 20 -> 3 x 24 x 80 uint16" in summary and "tiny-x4" in summary and summary.endswith(" s")
    assert "trained for line decimation alone" in summary  # the degradation the model undoes is named


def test_cli_cubic_is_upsample_lines(tmp_path):
    image = speckle((30, 11), seed=6) * 40 - 60  # dB-like floats
    write_image(tmp_path / "in.nii.gz", Image(image, spacing=(0.4, 0.1)))
    assert (
        main(
            [
                "superres",
                str(tmp_path / "in.nii.gz"),
                "--factor",
                "3",
                "--method",
                "cubic",
                "-o",
                str(tmp_path / "out.mha"),
            ]
        )
        == 0
    )
    written = read_image(tmp_path / "out.mha")
    assert written.array.dtype == np.float32 and written.spacing == pytest.approx((0.4 / 3, 0.1))
    expected = upsample_lines(torch.from_numpy(image), 3, "cubic").numpy()
    np.testing.assert_allclose(written.array, expected, atol=1e-5)


def test_cli_reads_a_colour_png(tmp_path, caplog):
    rgb = np.random.default_rng(7).integers(0, 256, (12, 8, 3), dtype=np.uint8)
    PILImage.fromarray(rgb).save(tmp_path / "in.png")
    with caplog.at_level(logging.WARNING):
        assert (
            main(
                [
                    "superres",
                    str(tmp_path / "in.png"),
                    "--factor",
                    "2",
                    "--method",
                    "linear",
                    "-o",
                    str(tmp_path / "out.mha"),
                ]
            )
            == 0
        )
    assert "converted to grey" in caplog.text
    written = read_image(tmp_path / "out.mha")
    assert written.array.shape == (12, 16) and not written.multichannel


def test_cli_user_errors_are_one_line_with_exit_status_2(models, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(MODELS_ENVIRONMENT_VARIABLE, str(models))
    write_image(tmp_path / "in.mha", Image(speckle((8, 8))))
    nan = speckle((8, 8))
    nan[2, 3] = np.nan
    write_image(tmp_path / "nan.mha", Image(nan))
    (tmp_path / "broken.mha").write_bytes(b"not an image")
    out = str(tmp_path / "out.mha")
    cases = {
        "the lateral factor must be an integer of at least 2": [str(tmp_path / "in.mha"), "--factor", "1"],
        "no super-resolution model for factor 3": [str(tmp_path / "in.mha"), "--factor", "3"],
        "1 NaN and 0 infinite": [str(tmp_path / "nan.mha"), "--factor", "2", "--method", "cubic"],
        "broken.mha": [str(tmp_path / "broken.mha"), "--factor", "2", "--method", "cubic"],
        "unsupported extension": [str(tmp_path / "in.mha"), "--factor", "2", "--method", "cubic", "-o", "x.png"],
    }
    for message, argv in cases.items():
        assert main(["superres", *argv, *(["-o", out] if "-o" not in argv else [])]) == 2, message
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("deepultrasound superres: error: ") and message in err[0], err
    assert not (tmp_path / "out.mha").exists()


# -- bench ------------------------------------------------------------------------------------------------
def test_bench_superres_scores_every_method_against_the_full_resolution_image(models, tmp_path, capsys):
    """One held-out simulated image at x2: the cubic row equals PSNR/SSIM computed here from the model's
    degradation (its blur, then decimation), the model row is there with its gain over cubic, and the last stdout
    line is the JSON of the figures."""
    code = main(
        ["bench", "superres", "--factors", "2", "--simulated", "1", "--real", "1"]
        + ["--data", str(models / "no BUSI here"), "--model", f"2={models / 'tiny-x2'}", "--figures", str(tmp_path)]
    )
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert code == 0 and figures["suite"] == "superres" and figures["tiles"] is None
    assert figures["factors"]["2"]["blur_sigma_lines"] == 1.0
    simulated = figures["factors"]["2"]["simulated"]
    assert simulated["images"] == 1 and set(simulated["methods"]) == {"linear", "cubic", "tiny-x2"}
    (image,) = simulated_images(0, "val", 1, (256, 128))
    truth = torch.from_numpy(image)[None, None]
    cubic = upsample_lines(degrade(truth, 2, 1.0), 2, "cubic")[..., :128].clamp(0, 1)
    assert simulated["methods"]["cubic"]["psnr"] == pytest.approx(float(psnr(cubic, truth, 1.0)), abs=1e-4)
    assert simulated["methods"]["cubic"]["ssim"] == pytest.approx(float(ssim(cubic, truth, 1.0)), abs=1e-5)
    gain = simulated["gain_over_cubic"]["tiny-x2"]["psnr"]
    assert gain == pytest.approx(simulated["methods"]["tiny-x2"]["psnr"] - simulated["methods"]["cubic"]["psnr"])
    assert "no BUSI folder" in figures["factors"]["2"]["real"]["skipped"]
    picture = np.asarray(PILImage.open(figures["factors"]["2"]["figure"]))
    assert picture.shape[1] > picture.shape[0] > 100  # one row (no real image), five panels side by side


def test_bench_superres_refuses_models_of_different_degradations_unless_one_is_set(models, tmp_path, capsys):
    sharp = export_untrained(tmp_path, 2, [], name="tiny-x2-sharp")
    common = ["bench", "superres", "--factors", "2", "--simulated", "1", "--data", str(tmp_path / "none")]
    common += ["--model", f"2={models / 'tiny-x2'}", "--model", f"2={sharp}"]

    assert main(common) != 0
    assert "different degradations" in capsys.readouterr().err
    assert main([*common, "--blur-sigma", "0"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["factors"]["2"]
    assert figures["blur_sigma_lines"] == 0 and {"tiny-x2", "tiny-x2-sharp"} <= set(figures["simulated"]["methods"])
