"""Lateral super-resolution: the degradation model and its phase, the classical upsamplers, the
one-axis generator and the discriminator, export parity, and the training data.

Truth: column indices survive decimation at k F; interpolation reproduces the coarse lines
exactly and polynomials it is exact for (linear: ramps, cubic: quadratics); the pixel shuffle's
index mapping written out by hand; a generator with a zeroed last layer is the cubic baseline.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from deepultrasound.errors import FileFormatError, InputError
from deepultrasound.io.image import Image
from deepultrasound.io.shared_data import shared_data_dir
from deepultrasound.runtime import load_bundle, save_bundle
from deepultrasound.runtime.parity import check_parity, verify_parity
from deepultrasound.superres.data import (
    HELD_OUT_FRACTION,
    Augmentation,
    SuperResolutionPatches,
    busi_split,
    is_held_out,
    read_grey,
    simulate_scan,
)
from deepultrasound.superres.degradation import (
    decimate_lines,
    degrade,
    degrade_image,
    lateral_blur,
    upsample_image,
    upsample_lines,
)
from deepultrasound.superres.networks import GENERATOR, LateralPixelShuffle, SRGANDiscriminator, SRResNet

FACTORS = (2, 4, 8)


def columns(height: int, width: int) -> torch.Tensor:
    """``(height, width)`` float64 whose value is the column index."""
    return torch.arange(width, dtype=torch.float64).expand(height, width).clone()


# -- degradation: phase, sizes, blur ---------------------------------------------------------------------
@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("width", [16, 17, 13])
def test_coarse_line_k_is_fine_line_k_times_factor(factor, width):
    low = decimate_lines(columns(3, width), factor)
    assert low.shape == (3, -(-width // factor))
    np.testing.assert_array_equal(low[0].numpy(), np.arange(0, width, factor))


@pytest.mark.parametrize("method", ["linear", "cubic"])
@pytest.mark.parametrize("factor", (2, 3, 4, 8))
def test_upsampling_keeps_the_coarse_lines(method, factor):
    low = torch.rand(2, 5, 7, dtype=torch.float64)
    fine = upsample_lines(low, factor, method)
    assert fine.shape == (2, 5, 7 * factor)
    torch.testing.assert_close(decimate_lines(fine, factor), low, rtol=0, atol=1e-12)
    if method == "linear":  # right of the last coarse line: that line repeated
        torch.testing.assert_close(fine[..., 6 * factor :], low[..., 6:].expand(2, 5, factor), rtol=0, atol=1e-12)


@pytest.mark.parametrize("factor", FACTORS)
def test_linear_is_exact_on_ramps_and_cubic_on_quadratics(factor):
    x = columns(4, 10 * factor)
    last = 9 * factor  # the last coarse line: beyond it the edge line is repeated
    linear = upsample_lines(decimate_lines(3 * x - 2, factor), factor, "linear")
    torch.testing.assert_close(linear[..., : last + 1], (3 * x - 2)[..., : last + 1], rtol=0, atol=1e-9)
    quadratic = 0.02 * x**2 - x + 1
    cubic = upsample_lines(decimate_lines(quadratic, factor), factor, "cubic")
    inner = slice(factor, last - factor + 1)  # two coarse lines from each edge (the padding is a repeat)
    torch.testing.assert_close(cubic[..., inner], quadratic[..., inner], rtol=0, atol=1e-9)


def test_blur_acts_across_lines_only_with_the_requested_width():
    depth_profile = torch.linspace(0, 1, 9, dtype=torch.float64)[:, None].expand(9, 31)
    torch.testing.assert_close(lateral_blur(depth_profile, 2.0), depth_profile)  # constant along x: unchanged
    impulse = torch.zeros(1, 61, dtype=torch.float64)
    impulse[0, 30] = 1
    response = lateral_blur(impulse, 2.0)[0]
    offsets = torch.arange(61, dtype=torch.float64) - 30
    assert float(response.sum()) == pytest.approx(1.0)
    assert float((response * offsets**2).sum()) == pytest.approx(4.0, rel=0.02)  # variance sigma^2
    assert torch.equal(degrade(impulse, 4, 2.0), response[None, ::4])


def test_images_keep_their_geometry_on_both_grids():
    image = Image(np.arange(6 * 16, dtype=np.uint8).reshape(6, 16), spacing=(0.1, 0.05), origin=(-3.0, 2.0))
    low = degrade_image(image, 4)
    assert low.array.shape == (6, 4) and low.array.dtype == np.float32
    assert low.spacing == pytest.approx((0.4, 0.05)) and low.origin == image.origin
    fine = upsample_image(low, 4, "linear")
    assert fine.array.shape == (6, 16) and fine.spacing == pytest.approx((0.1, 0.05)) and fine.origin == image.origin
    np.testing.assert_array_equal(fine.array[:, :13], image.array[:, :13].astype(np.float32))  # a ramp in x


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: decimate_lines(torch.rand(4, 8), 1), "at least 2"),
        (lambda: decimate_lines(torch.rand(4, 8), 2.5), "integer"),
        (lambda: upsample_lines(torch.rand(4, 8), 2, "nearest"), "unknown interpolation method"),
        (lambda: degrade(torch.ones(4, 8, dtype=torch.int64), 2), "floating-point"),
        (lambda: lateral_blur(torch.rand(4, 8), 5.0), "more than 8 lines"),
        (lambda: degrade_image(Image(np.zeros((4, 8, 3)), multichannel=True), 2), "grey"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(call, message):
    with pytest.raises(InputError, match=message):
        call()


# -- networks ---------------------------------------------------------------------------------------------
def test_lateral_pixel_shuffle_moves_channels_into_columns():
    x = torch.randn(2, 6, 5, 7)  # 2 output channels x factor 3
    out = LateralPixelShuffle(3)(x)
    assert out.shape == (2, 2, 5, 21)
    for c in range(2):
        for f in range(3):
            torch.testing.assert_close(out[:, c, :, f::3], x[:, c * 3 + f])


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize(("height", "width"), [(16, 8), (13, 7)])
def test_generator_enlarges_the_lines_only(factor, height, width):
    generator = SRResNet(factor, channels=4, blocks=1).eval()
    with torch.no_grad():
        assert generator(torch.rand(2, 1, height, width)).shape == (2, 1, height, width * factor)


def test_untrained_skip_path_is_the_cubic_baseline():
    generator = SRResNet(4, channels=4, blocks=1).eval()
    torch.nn.init.zeros_(generator.tail.weight)
    torch.nn.init.zeros_(generator.tail.bias)
    low = torch.rand(1, 1, 9, 6)
    with torch.no_grad():
        torch.testing.assert_close(generator(low), upsample_lines(low, 4, "cubic"))


@pytest.mark.parametrize("batch_norm", [True, False])
def test_without_batch_norm_an_image_is_upsampled_alike_whatever_shares_its_batch(batch_norm):
    torch.manual_seed(0)
    generator = SRResNet(4, channels=4, blocks=2, batch_norm=batch_norm).train()  # training mode: batch statistics
    image, other = torch.rand(1, 1, 12, 8), torch.rand(1, 1, 12, 8) * 0.2
    with torch.no_grad():
        alone, together = generator(image), generator(torch.cat([image, other]))[:1]
    assert torch.allclose(alone, together, atol=1e-6) != batch_norm
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in generator.modules()) == batch_norm


def test_discriminator_scores_any_size():
    discriminator = SRGANDiscriminator(channels=4).eval()
    with torch.no_grad():
        assert discriminator(torch.rand(3, 1, 16, 24)).shape == (3, 1)
        assert discriminator(torch.rand(1, 1, 33, 17)).shape == (1, 1)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_generator_exports_with_parity_at_other_sizes(tmp_path, batch_norm):
    torch.manual_seed(0)
    generator = SRResNet(4, channels=4, blocks=1, batch_norm=batch_norm)
    path = save_bundle(
        tmp_path / "srresnet",
        generator,
        name="tiny-srresnet",
        version="1.0",
        task="superres",
        architecture=GENERATOR,
        architecture_module="deepultrasound.superres.networks",
        architecture_args={"factor": 4, "channels": 4, "blocks": 1, "batch_norm": batch_norm},
        example_inputs=(torch.rand(1, 1, 16, 8),),
        input_names=["image"],
        output_names=["fine"],
        verify=lambda bundle: verify_parity(bundle, atol=1e-4),
    )
    bundle = load_bundle(path)
    assert bundle.manifest.outputs[0].shape == ["B", 1, "H", "W*4"]
    report = check_parity(bundle, inputs=[np.random.default_rng(1).random((2, 1, 13, 5), dtype=np.float32)])
    assert report.ok and set(report.differences) == {"torchscript", "onnxruntime"}, str(report)


# -- data -------------------------------------------------------------------------------------------------
def test_simulated_scans_are_deterministic_b_mode():
    first, again, other = simulate_scan(3, (64, 32)), simulate_scan(3, (64, 32)), simulate_scan(4, (64, 32))
    np.testing.assert_array_equal(first.bmode, again.bmode)
    assert not np.array_equal(first.bmode, other.bmode)
    assert first.bmode.shape == first.envelope.shape == (64, 32) and first.bmode.dtype == np.float32
    assert first.bmode.min() >= 0 and first.bmode.max() <= 1 and first.envelope.max() == pytest.approx(1.0)
    pitch, dz = first.spacing_mm
    assert 0.05 < pitch < 0.35 and 20 / 64 <= dz <= 50 / 64


def test_patches_pair_a_crop_with_its_degradation_deterministically():
    images = [np.random.default_rng(i).random((40, 30), dtype=np.float32) for i in range(2)]
    train = SuperResolutionPatches(images, (16, 12), 4, (0.0, 0.0), 10, Augmentation(gain=0, depth_gain=0), 7, "real")
    sample = train[5]
    assert torch.equal(sample["high"], train[5]["high"]) and int(sample["source"]) == 1
    assert torch.equal(sample["low"], sample["high"][..., ::4])
    windows = torch.from_numpy(images[1]).unfold(0, 16, 1).unfold(1, 12, 1)  # every (16, 12) crop
    crops = windows.reshape(-1, 16, 12)
    high = sample["high"][0]
    assert any(torch.equal(high, c) or torch.equal(high.flip(-1), c) for c in crops)  # flips are left-right only
    val = SuperResolutionPatches(images, (16, 12), 4, (0.0, 0.0), 2, None, 7, "simulated")
    assert torch.equal(val[0]["high"][0], torch.from_numpy(images[0][12:28, 9:21]))  # the centred crop


def test_training_patches_draw_their_blur_from_the_range_and_validation_takes_the_highest():
    images = [np.random.default_rng(3).random((40, 64), dtype=np.float32)]
    augmentation = Augmentation(gain=0, depth_gain=0)
    train = SuperResolutionPatches(images, (16, 48), 4, (1.0, 3.0), 6, augmentation, 7, "real")
    candidates = torch.linspace(1.0, 3.0, 2001)  # every 0.001 fine line of the range
    drawn = []
    for sample in (train[i] for i in range(6)):
        errors = [(degrade(sample["high"], 4, float(s)) - sample["low"]).abs().max() for s in candidates]
        best = int(torch.stack(errors).argmin())
        assert errors[best] < 1e-3  # the sample's low-resolution patch is the degradation at one blur of the range
        drawn.append(float(candidates[best]))
    assert max(drawn) - min(drawn) > 0.5  # and the blur varies between patches
    val = SuperResolutionPatches(images, (16, 48), 4, (1.0, 3.0), 1, None, 7, "real")
    torch.testing.assert_close(val[0]["low"], degrade(val[0]["high"], 4, 3.0))


def test_gain_augmentation_stays_in_the_display_range():
    patch = torch.full((1, 8, 8), 0.95)
    augmented = Augmentation(gain=0.5, depth_gain=0.5, flip=False)(patch, torch.Generator().manual_seed(0))
    assert augmented.min() >= 0 and augmented.max() <= 1 and not torch.equal(augmented, patch)


def test_colour_pngs_become_grey_and_other_depths_are_refused(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = 30, 90
    PILImage.fromarray(rgb).save(tmp_path / "colour.png")
    np.testing.assert_allclose(read_grey(tmp_path / "colour.png"), np.full((4, 5), 40 / 255), rtol=1e-6)
    PILImage.fromarray(np.zeros((4, 5), np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(InputError, match="8-bit"):
        read_grey(tmp_path / "deep.png")
    with pytest.raises(FileFormatError, match="no BUSI folder"):
        busi_split(tmp_path / "missing", "train")


@pytest.mark.shared_data("busi_train")
def test_busi_split_holds_out_a_fixed_fifth(tmp_path):
    folder = shared_data_dir() / "busi_train"
    train, val = busi_split(folder, "train"), busi_split(folder, "val")
    assert not set(train) & set(val) and len(train) + len(val) == len(list(folder.glob("*.png")))
    assert abs(len(val) / (len(train) + len(val)) - 1 / HELD_OUT_FRACTION) < 0.05
    subset = train[:3] + val[:3]  # membership depends on the name alone, not on the other files
    for path in subset:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    assert busi_split(tmp_path, "val") == [tmp_path / path.name for path in val[:3]]
    assert all(is_held_out(path.name) for path in val)
