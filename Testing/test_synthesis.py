"""USSynth engine: the B-map forward process, its schedulers, the SPADE diffusion model, data and training.

Truth: the B-maps and both schedulers are checked against per-pixel computations written here
in float64 from the published formulas (products over steps, posteriors from ratios of
``alpha_bar B_bar``); with ``eps = 1`` the schedulers equal MONAI's bit for bit; the fan estimate
against the simulator's sector of known apex, radius and opening angle; guidance scales 1 and 0
against denoising loops that call the network directly; DDIM and DDPM sampling with the exact noise
predictor of a one-image data set against that image; the CAMUS split against a folder whose
patients are known; the linear-probe labels against a scene of known regions.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from pydantic import ValidationError
from scipy.ndimage import binary_erosion

from deepultrasound.errors import ConfigError, InputError
from deepultrasound.io.image import Image
from deepultrasound.io.images import write_image
from deepultrasound.io.shared_data import shared_data_dir
from deepultrasound.registration.data import camus_split
from deepultrasound.runtime import load_bundle
from deepultrasound.runtime.inference_specs import BMapSettings, DiffusionInference, LabelClass, NoiseSchedule
from deepultrasound.simulation.echo_image import Sector
from deepultrasound.simulation.phantom import Inclusion, Layer, Phantom
from deepultrasound.synthesis.bmaps import (
    BMapProcess,
    SectorGeometry,
    depth_from_labels,
    estimate_sector,
    linear_depth,
    sector_depth,
    step_attenuation,
)
from deepultrasound.synthesis.data import (
    OUTSIDE_FAN,
    EchoLabel,
    LabelAugmentation,
    LinearLabel,
    SynthesisPairs,
    camus_pairs,
    echo_pairs,
    linear_labels,
    linear_pairs,
)
from deepultrasound.synthesis.model import SemanticDiffusionUNet, check_labels, sample
from deepultrasound.synthesis.schedulers import BMapDDIMScheduler, BMapDDPMScheduler, scheduler_for
from deepultrasound.synthesis.training_task import DiffusionArgs
from deepultrasound.training import Trainer, load_config, parse_config
from deepultrasound.training.task import get_task

CONFIGS = Path(__file__).resolve().parents[1] / "deepultrasound" / "configs"
T = 20  # training steps of the tiny schedules
BETAS = (0.01, 0.2)  # MONAI tabulates alpha_bar in float32: 1 - alpha_bar_0 is exact to ~6e-8 / beta_start


# -- the published formulas, per pixel, in float64 ------------------------------------------------


def published_attenuation(t: int, steps: int, eps: float) -> float:
    """``1 - lb_t`` with ``b_t = (1 - cos(((t + 0.008) / (1.008 T)) pi / 2))^2`` and ``lb_t = 1 - b_t (1 - eps)``."""
    b = (1.0 - math.cos((t + 0.008) / (1.008 * steps) * math.pi / 2.0)) ** 2
    return 1.0 - (1.0 - b * (1.0 - eps))


def direct_cumulative(depth: np.ndarray, t: int, steps: int, eps: float) -> np.ndarray:
    """``B_bar_t = prod_{s <= t} sqrt(1 - d (1 - lb_s))`` pixel by pixel (``t = -1``: ones)."""
    product = np.ones_like(depth, dtype=np.float64)
    for s in range(t + 1):
        product *= np.sqrt(1.0 - depth * published_attenuation(s, steps, eps))
    return product


def direct_alpha_bar(depth: np.ndarray, t: int, eps: float) -> np.ndarray:
    """``alpha_bar_t B_bar_t`` per pixel for MONAI's linear beta schedule of :data:`T` steps (1 at ``t = -1``)."""
    alphas_cumprod = np.cumprod(1.0 - np.linspace(*BETAS, T))
    scalar = alphas_cumprod[t] if t >= 0 else 1.0
    return scalar * direct_cumulative(depth, t, T, eps)


def tensors(seed: int = 0, shape: tuple[int, ...] = (2, 1, 6, 5)) -> tuple[torch.Tensor, ...]:
    """(x0 in [-1, 1], noise, model output, depth in [0, 1]) float64, drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1
    noise, output = (torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(2))
    depth = torch.rand((shape[0], 1, *shape[2:]), generator=generator, dtype=torch.float64)
    return x0, noise, output, depth


# -- B-maps ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.97, 0.5, 0.05])
def test_cumulative_bmaps_are_the_product_of_the_published_step_bmaps(eps):
    steps = 300
    process = BMapProcess(steps, eps)
    expected_attenuation = [published_attenuation(t, steps, eps) for t in range(steps)]
    np.testing.assert_allclose(step_attenuation(steps, eps).numpy(), expected_attenuation, rtol=1e-12, atol=1e-15)
    depth = torch.rand(3, 1, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    depth[0, 0, 0, 0], depth[1, 0, 0, 0] = 0.0, 1.0
    timesteps = torch.tensor([0, 137, steps - 1])
    got = process.cumulative(depth, timesteps).numpy()
    for index, t in enumerate(timesteps.tolist()):
        np.testing.assert_allclose(got[index], direct_cumulative(depth[index].numpy(), t, steps, eps), rtol=1e-11)
    step = process.step(depth, 137).numpy()
    np.testing.assert_allclose(step, np.sqrt(1.0 - depth.numpy() * expected_attenuation[137]), rtol=1e-14)
    assert got[1, 0, 0, 0] < got[0, 0, 0, 0] == 1.0  # the deepest pixel is the most attenuated, the probe not


def test_eps_one_attenuates_nothing():
    depth = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    assert torch.equal(BMapProcess(50, 1.0).cumulative(depth, torch.tensor([0, 49])), torch.ones_like(depth))


def test_linear_depth_is_the_normalised_row():
    depth = linear_depth((5, 3))
    assert depth.shape == (1, 1, 5, 3)
    assert torch.equal(depth[0, 0], torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])[:, None].expand(5, 3))
    labels = torch.zeros(2, 5, 3, dtype=torch.long)
    assert torch.equal(depth_from_labels(labels, "linear"), depth.expand(2, 1, 5, 3))


@pytest.mark.parametrize("size, angle_deg", [(64, 60.0), (64, 75.0), (224, 70.0)])
def test_the_fan_of_the_echo_simulator_is_estimated_from_its_mask(size, angle_deg):
    # the simulator's sector: apex half a pixel above the image centre, radius the image height
    sector = Sector(150.0, np.deg2rad(angle_deg), 10, 10, size, size, 150.0)
    geometry = estimate_sector(sector.fan_mask())
    assert geometry.apex == pytest.approx((-0.5, size / 2 - 0.5), abs=0.15)
    assert geometry.radius == pytest.approx(size, abs=1.0)
    assert math.degrees(geometry.angle) == pytest.approx(angle_deg, abs=0.5)
    assert geometry.tilt == pytest.approx(0.0, abs=1e-3)


def test_a_tilted_fan_is_estimated_and_its_depth_is_the_distance_from_the_apex():
    truth = SectorGeometry(apex=(-3.0, 30.0), radius=58.0, angle=math.radians(70.0), tilt=0.12)
    fan = truth.fan((64, 64))
    geometry = estimate_sector(fan)
    assert geometry.apex == pytest.approx(truth.apex, abs=0.5)
    assert (geometry.angle, geometry.tilt) == pytest.approx((truth.angle, truth.tilt), abs=0.02)
    labels = torch.from_numpy(np.where(fan, 1, OUTSIDE_FAN))[None]
    depth = depth_from_labels(labels, "sector", OUTSIDE_FAN)[0, 0].numpy()
    assert np.all(depth[~fan] == 0.0)  # B = 1 outside the fan
    row, col = 40, 30 + round(43 * math.tan(0.12))  # on the fan's axis
    apex_row, apex_col = geometry.apex
    assert depth[row, col] == pytest.approx(math.hypot(row - apex_row, col - apex_col) / geometry.radius, abs=1e-6)
    assert depth[fan].max() == pytest.approx(1.0)
    given = sector_depth(truth, (64, 64))[0, 0].numpy()
    assert given[row, col] == pytest.approx(math.hypot(row + 3.0, col - 30.0) / 58.0, abs=1e-6)


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.zeros((16, 16), bool), "no pixel inside the fan"),
        (np.pad(np.ones((12, 6), bool), 2), "do not open downwards"),
        (np.ones((16, 16), bool), "fewer than 3 rows"),
    ],
    ids=["empty", "rectangle", "no-edges"],
)
def test_label_maps_without_a_fan_are_refused(mask, message):
    with pytest.raises(InputError, match=message):
        estimate_sector(mask)


def test_bad_depth_maps_and_probes_are_refused():
    process = BMapProcess(10)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        process.cumulative(torch.full((1, 1, 2, 2), 1.5), 3)
    with pytest.raises(InputError, match="timesteps"):
        process.cumulative(torch.zeros(1, 1, 2, 2), 10)
    with pytest.raises(InputError, match="outside_label"):
        depth_from_labels(torch.zeros(1, 4, 4, dtype=torch.long), "sector")


# -- schedulers --------------------------------------------------------------------------------------


def test_add_noise_uses_alpha_bar_times_the_cumulative_bmap_per_pixel():
    x0, noise, _, depth = tensors()
    timesteps = torch.tensor([3, 17])
    noisy = BMapDDPMScheduler(T, beta_start=BETAS[0], beta_end=BETAS[1], bmap_eps=0.97).add_noise(
        x0, noise, timesteps, depth
    )
    for i, t in enumerate(timesteps.tolist()):
        alpha_bar = direct_alpha_bar(depth[i].numpy(), t, 0.97)
        expected = np.sqrt(alpha_bar) * x0[i].numpy() + np.sqrt(1 - alpha_bar) * noise[i].numpy()
        np.testing.assert_allclose(noisy[i].numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("inference_steps, timestep", [(T, 9), (T, 0), (5, 15)], ids=["t9", "t0", "strided"])
def test_a_ddpm_step_is_the_per_pixel_posterior(inference_steps, timestep):
    x_t, _, output, depth = tensors(1)
    scheduler = BMapDDPMScheduler(T, beta_start=BETAS[0], beta_end=BETAS[1], bmap_eps=0.97, clip_sample=False)
    scheduler.set_timesteps(inference_steps)
    previous, original = scheduler.step(output, timestep, x_t, torch.Generator().manual_seed(5), depth=depth)

    earlier = [int(t) for t in scheduler.timesteps if t < timestep]
    d, x, eps = depth.numpy(), x_t.numpy(), output.numpy()
    ab_t, ab_s = direct_alpha_bar(d, timestep, 0.97), direct_alpha_bar(d, max(earlier, default=-1), 0.97)
    x0 = (x - np.sqrt(1 - ab_t) * eps) / np.sqrt(ab_t)
    alpha = ab_t / ab_s  # alpha of the step from t to s, per pixel
    mean = np.sqrt(ab_s) * (1 - alpha) / (1 - ab_t) * x0 + np.sqrt(alpha) * (1 - ab_s) / (1 - ab_t) * x
    variance = (1 - ab_s) / (1 - ab_t) * (1 - alpha)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).numpy()
    expected = mean + (np.sqrt(variance) * noise if timestep > 0 else 0.0)
    np.testing.assert_allclose(original.numpy(), x0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(previous.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta, timestep", [(0.0, 19), (0.7, 19), (0.0, 0)], ids=["deterministic", "eta", "last"])
def test_a_ddim_step_uses_the_per_pixel_alpha_bar(eta, timestep):
    x_t, _, output, depth = tensors(2)
    scheduler = BMapDDIMScheduler(T, beta_start=BETAS[0], beta_end=BETAS[1], bmap_eps=0.97, clip_sample=False)
    scheduler.set_timesteps(5)  # 19, 14, 10, 5, 0: the stride is not T // 5 = 4
    previous, original = scheduler.step(output, timestep, x_t, eta, torch.Generator().manual_seed(3), depth=depth)

    d, x, eps = depth.numpy(), x_t.numpy(), output.numpy()
    earlier = [int(t) for t in scheduler.timesteps if t < timestep]
    ab_t, ab_s = direct_alpha_bar(d, timestep, 0.97), direct_alpha_bar(d, max(earlier, default=-1), 0.97)
    x0 = (x - np.sqrt(1 - ab_t) * eps) / np.sqrt(ab_t)
    sigma = eta * np.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).numpy()
    expected = np.sqrt(ab_s) * x0 + np.sqrt(1 - ab_s - sigma**2) * eps + sigma * noise
    np.testing.assert_allclose(original.numpy(), x0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(previous.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_the_velocity_target_uses_alpha_bar_times_the_cumulative_bmap_per_pixel():
    x0, noise, _, depth = tensors(6)
    timesteps = torch.tensor([2, 19])
    scheduler = BMapDDPMScheduler(T, beta_start=BETAS[0], beta_end=BETAS[1], prediction_type="v_prediction")
    velocity = scheduler.get_velocity(x0, noise, timesteps, depth)
    for i, t in enumerate(timesteps.tolist()):
        alpha_bar = direct_alpha_bar(depth[i].numpy(), t, 0.97)
        expected = np.sqrt(alpha_bar) * noise[i].numpy() - np.sqrt(1 - alpha_bar) * x0[i].numpy()
        np.testing.assert_allclose(velocity[i].numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scheduler_class", [BMapDDPMScheduler, BMapDDIMScheduler], ids=["ddpm", "ddim"])
def test_a_velocity_step_is_the_noise_step_of_the_same_noise(scheduler_class):
    # the velocity of (x0, noise) at the per-pixel alpha_bar gives the step that the noise itself gives
    x0, noise, _, depth = tensors(7)
    schedulers = {
        kind: scheduler_class(T, beta_start=BETAS[0], beta_end=BETAS[1], clip_sample=False, prediction_type=kind)
        for kind in ("epsilon", "v_prediction")
    }
    for scheduler in schedulers.values():
        scheduler.set_timesteps(5)
    timesteps = torch.tensor([14, 14])
    x_t = schedulers["epsilon"].add_noise(x0, noise, timesteps, depth)
    velocity = schedulers["v_prediction"].get_velocity(x0, noise, timesteps, depth)
    options = {"eta": 0.6} if scheduler_class is BMapDDIMScheduler else {}
    steps = {
        kind: scheduler.step(output, 14, x_t, generator=torch.Generator().manual_seed(8), depth=depth, **options)
        for (kind, scheduler), output in zip(schedulers.items(), (noise, velocity))
    }
    torch.testing.assert_close(steps["v_prediction"][1], x0, rtol=0, atol=1e-12)  # x0 recovered
    torch.testing.assert_close(steps["v_prediction"][0], steps["epsilon"][0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("with_depth", [False, True], ids=["no-depth", "depth"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_eps_one_reproduces_monai_exactly(with_depth, prediction_type):
    x0, noise, output, depth = (tensor.float() for tensor in tensors(4))
    depth = depth if with_depth else None
    for plain, ours, options in (
        (DDPMScheduler, BMapDDPMScheduler, {}),
        (DDIMScheduler, BMapDDIMScheduler, {"eta": 0.5}),
    ):
        monai = plain(T, prediction_type=prediction_type)
        bmap = ours(T, bmap_eps=1.0, prediction_type=prediction_type)
        timesteps = torch.tensor([0, 13])
        assert torch.equal(monai.add_noise(x0, noise, timesteps), bmap.add_noise(x0, noise, timesteps, depth))
        assert torch.equal(monai.get_velocity(x0, noise, timesteps), bmap.get_velocity(x0, noise, timesteps, depth))
        if plain is DDIMScheduler:  # all T steps: MONAI's stride T // n is then the schedule's
            monai.set_timesteps(T)
            bmap.set_timesteps(T)
        for t in (19, 6, 0):
            expected = monai.step(output, t, x0, generator=torch.Generator().manual_seed(t), **options)
            got = bmap.step(output, t, x0, generator=torch.Generator().manual_seed(t), depth=depth, **options)
            assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1]), (plain.__name__, t)


def test_bmaps_without_a_depth_map_and_unsupported_settings_are_refused():
    x0, noise, _, _ = tensors()
    with pytest.raises(InputError, match="needs the depth map"):
        BMapDDPMScheduler(T).add_noise(x0, noise, torch.tensor([1, 2]))
    with pytest.raises(InputError, match="variance_type 'learned'"):
        BMapDDPMScheduler(T, variance_type="learned")
    with pytest.raises(InputError, match="prediction_type 'sample'"):
        BMapDDIMScheduler(T, prediction_type="sample")


# -- the inference section ---------------------------------------------------------------------------


def spec(bmap: BMapSettings, classes: int = 3, **fields) -> DiffusionInference:
    return DiffusionInference(
        schedule=NoiseSchedule(name="linear_beta", num_train_timesteps=T, beta_start=BETAS[0], beta_end=BETAS[1]),
        bmap=bmap,
        label_classes=[LabelClass(name=f"class{value}", value=value) for value in range(classes)],
        image_size=(16, 16),
        sampling_steps=4,
        **fields,
    )


def test_bmap_settings_default_to_the_published_eps_and_refuse_unknown_outside_labels():
    assert BMapSettings().eps == 0.97 and BMapSettings(eps=1.0).eps == 1.0
    with pytest.raises(ValueError, match="less than or equal to 1"):
        BMapSettings(eps=1.5)
    with pytest.raises(ValueError, match="outside_label 7 is not a label class value"):
        spec(BMapSettings(enabled=True, probe="sector", outside_label=7))
    assert spec(BMapSettings(enabled=True, probe="sector", outside_label=2)).bmap.outside_label == 2


# -- the model and sampling --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model() -> SemanticDiffusionUNet:
    """A tiny network with random weights everywhere (MONAI zero-initialises its output convolution)."""
    torch.manual_seed(0)
    model = SemanticDiffusionUNet(
        num_classes=3, channels=(8, 16), num_head_channels=8, norm_num_groups=8, spade_intermediate_channels=8
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def two_label_maps() -> torch.Tensor:
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[0, 4:12, 4:12] = 1
    labels[1, :, 8:] = 2
    return labels


def direct_ddim(model, labels, inference: DiffusionInference, steps: int, seed: int, conditioning) -> torch.Tensor:
    """DDIM written out with the network called on ``conditioning`` (the label maps or the null label)."""
    scheduler = scheduler_for(inference, "ddim")
    scheduler.set_timesteps(steps)
    depth = linear_depth(labels.shape[-2:])
    x = torch.randn((labels.shape[0], 1, 16, 16), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for t in scheduler.timesteps:
            noise = model(x, t.expand(labels.shape[0]), conditioning)
            x, _ = scheduler.step(noise, int(t), x, depth=depth)
    return ((x + 1) / 2).clamp(0, 1)


def test_the_network_predicts_noise_of_the_image_shape(tiny_model, two_label_maps):
    noise = tiny_model(torch.randn(2, 1, 16, 16), torch.tensor([0, 19]), two_label_maps)
    assert noise.shape == (2, 1, 16, 16) and torch.isfinite(noise).all()
    assert tiny_model.null_label == 3


def test_sampling_is_seeded_and_guidance_one_is_the_conditional_model(tiny_model, two_label_maps):
    inference = spec(BMapSettings(enabled=True, probe="linear"))
    images = sample(tiny_model, two_label_maps, inference, guidance_scale=1.0, seed=7, progress=False)
    assert images.shape == (2, 1, 16, 16) and images.min() >= 0 and images.max() <= 1
    assert torch.equal(
        images, sample(tiny_model, two_label_maps, inference, guidance_scale=1.0, seed=7, progress=False)
    )
    assert not torch.equal(
        images, sample(tiny_model, two_label_maps, inference, guidance_scale=1.0, seed=8, progress=False)
    )
    torch.testing.assert_close(images, direct_ddim(tiny_model, two_label_maps, inference, 4, 7, two_label_maps))
    guided = sample(tiny_model, two_label_maps, inference, guidance_scale=3.0, seed=7, progress=False)
    assert (guided - images).abs().max() > 1e-3


def test_guidance_zero_runs_the_null_label_alone(tiny_model, two_label_maps):
    inference = spec(BMapSettings(enabled=True, probe="linear"))
    null = torch.full_like(two_label_maps, tiny_model.null_label)
    unconditional = sample(tiny_model, two_label_maps, inference, guidance_scale=0.0, seed=3, progress=False)
    torch.testing.assert_close(unconditional, direct_ddim(tiny_model, two_label_maps, inference, 4, 3, null))
    other = sample(tiny_model, two_label_maps.flip(0), inference, guidance_scale=0.0, seed=3, progress=False)
    torch.testing.assert_close(unconditional, other)  # the label maps play no part


def test_ddpm_sampling_runs_its_steps(tiny_model, two_label_maps):
    inference = spec(BMapSettings(enabled=True, probe="linear"))
    images = sample(tiny_model, two_label_maps, inference, sampler="ddpm", steps=3, progress=False)
    assert images.shape == (2, 1, 16, 16) and torch.isfinite(images).all()


class OracleDenoiser(torch.nn.Module):
    """The exact noise predictor of a data set of one image ``x*`` ``(1, 1, H, W)`` in [-1, 1] for a linear probe:
    ``eps = (x_t - sqrt(a) x*) / sqrt(1 - a)`` with ``a = alpha_bar_t B_bar_t`` per pixel, tabulated here in float64
    from the published formulas for MONAI's linear beta schedule of ``steps`` steps (1e-4 to 0.02); with
    ``velocity``, the exact velocity predictor ``v = sqrt(a) eps - sqrt(1 - a) x*``."""

    null_label, multiple = 3, 1

    def __init__(self, image: torch.Tensor, steps: int, eps: float, velocity: bool = False) -> None:
        super().__init__()
        self.velocity = velocity
        self.register_buffer("image", image.double())
        depth = np.linspace(0.0, 1.0, image.shape[-2])[:, None] * np.ones(image.shape[-1])
        attenuation = np.array([published_attenuation(t, steps, eps) for t in range(steps)])
        cumulative = np.cumprod(np.sqrt(1.0 - depth[None] * attenuation[:, None, None]), axis=0)
        alpha_bar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, steps))[:, None, None] * cumulative
        self.register_buffer("alpha_bar", torch.from_numpy(alpha_bar))

    @property
    def device(self) -> torch.device:
        return self.image.device

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        alpha_bar = self.alpha_bar[timesteps.long()][:, None]
        noise = (x.double() - alpha_bar.sqrt() * self.image) / (1.0 - alpha_bar).sqrt()
        if self.velocity:
            return (alpha_bar.sqrt() * noise - (1.0 - alpha_bar).sqrt() * self.image).to(x.dtype)
        return noise.to(x.dtype)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler, steps", [("ddim", 50), ("ddim", 25), ("ddpm", 40)])
def test_sampling_with_the_exact_predictor_returns_its_image(two_label_maps, sampler, steps, prediction_type):
    # the whole loop (schedule, strides, B-maps of the label maps' depth, guidance, the last step) ends at x*
    image = torch.rand((1, 1, 16, 16), generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    schedule = NoiseSchedule(name="linear_beta", num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02)
    inference = spec(BMapSettings(enabled=True, probe="linear"), prediction_type=prediction_type)
    inference = inference.model_copy(update={"schedule": schedule})
    oracle = OracleDenoiser(image, 1000, BMapSettings().eps, velocity=prediction_type == "v_prediction")
    images = sample(oracle, two_label_maps, inference, sampler=sampler, steps=steps, seed=1, progress=False)
    expected = ((image + 1) / 2).expand(2, 1, 16, 16)
    torch.testing.assert_close(images, expected, rtol=0, atol=2e-3)


class ConstantDenoiser:
    """A :class:`~deepultrasound.synthesis.model.Denoiser` that predicts the same noise ``value`` everywhere (a network
    that pushes every pixel one way) and keeps each input ``(x, timestep)`` it is called on."""

    null_label, multiple, device = 2, 1, torch.device("cpu")

    def __init__(self, value: float) -> None:
        self.value = value
        self.inputs: list[tuple[torch.Tensor, int]] = []

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.inputs.append((x.clone(), int(timesteps[0])))
        return torch.full_like(x, self.value)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_the_known_background_outside_the_fan_follows_the_forward_process_whatever_the_network(sampler):
    # class 2 outside a 70-degree fan: black (-1) noised to each step, whatever the network predicts there
    fan = torch.from_numpy(SectorGeometry(apex=(-0.5, 31.5), radius=64.0, angle=math.radians(70)).fan((64, 64)))
    labels = torch.where(fan, 1, 2).expand(2, 64, 64)
    inference = spec(BMapSettings(enabled=True, probe="sector", outside_label=2)).model_copy(
        update={"image_size": (64, 64)}
    )
    network = ConstantDenoiser(-0.3)  # eps < 0: the predicted x0 brightens step after step
    images = sample(network, labels, inference, sampler=sampler, steps=8, guidance_scale=1.0, seed=2, progress=False)
    assert torch.all(images[:, 0][labels == 2] == 0.0) and images[:, 0][labels == 1].mean() > 0.5
    alpha_bar = scheduler_for(inference, sampler).alphas_cumprod
    outside = (labels == 2)[:, None]
    for x, timestep in network.inputs[1:]:  # the first input is the initial noise
        background = x[outside]  # 2 x 2000 pixels: the mean within 0.08 (5 standard errors), the std within 10 %
        assert background.mean().item() == pytest.approx(-alpha_bar[timestep].sqrt().item(), abs=0.08)
        assert background.std().item() == pytest.approx((1 - alpha_bar[timestep]).sqrt().item(), rel=0.1)


@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.full((1, 16, 16), 5), r"label values \[5\] are unknown to the model, which knows 0..2"),
        (torch.zeros(1, 16, 17, dtype=torch.long), "multiples of 2"),
        (torch.zeros(16, 16, dtype=torch.long), r"\(B, H, W\)"),
        (torch.zeros(1, 16, 16), "integers"),
        (torch.zeros(0, 16, 16, dtype=torch.long), "empty"),
    ],
    ids=["unknown", "odd-size", "2d", "float", "empty"],
)
def test_bad_label_maps_are_refused(labels, message):
    with pytest.raises(InputError, match=message):
        check_labels(labels, 3, 2)


# -- data --------------------------------------------------------------------------------------------


def test_linear_labels_name_the_region_and_its_echogenicity():
    phantom = Phantom(
        depth_mm=20.0,
        width_mm=20.0,
        layers=(Layer(2.0, 6.0, 1.0, echogenicity=0.5),),  # hypoechoic against 1.25
        inclusions=(
            Inclusion((5.0, 14.0), (2.0, 2.0), 1.0, echogenicity=0.05),  # anechoic cyst
            Inclusion((15.0, 14.0), (2.0, 2.0), 1.0, echogenicity=4.0),  # hyperechoic lesion
            Inclusion((10.0, 4.0), (1.0, 1.0), 1.0, echogenicity=1.3),  # inside the layer, isoechoic
        ),
        background_echogenicity=1.25,
    )
    labels = linear_labels(phantom, (20, 20))  # 1 mm pixels, centres at k + 0.5 mm
    assert labels[0, 0] == LinearLabel.BACKGROUND
    assert labels[3, 0] == LinearLabel.HYPOECHOIC_LAYER
    assert labels[14, 5] == LinearLabel.ANECHOIC
    assert labels[14, 15] == LinearLabel.HYPERECHOIC_LESION
    assert labels[4, 10] == LinearLabel.BACKGROUND  # looks like the background


def test_simulated_pairs_are_labelled_and_repeatable():
    first, second = echo_pairs(3, 2, 32, simulation_size=64)
    for pair in (first, second):
        image, labels = pair["image"], pair["labels"]
        assert image.shape == (1, 32, 32) and labels.shape == (32, 32) and labels.dtype == torch.long
        assert set(labels.unique().tolist()) <= set(EchoLabel) and 0.0 <= image.min() <= image.max() <= 1.0
        outside = labels == OUTSIDE_FAN
        assert outside[0, 0] and not outside[16, 16]
        assert image[0][binary_erosion(outside.numpy(), iterations=2)].max() == 0.0  # black but at the fan edge
    assert torch.equal(echo_pairs(3, 1, 32, simulation_size=64)[0]["image"], first["image"])
    scene = linear_pairs(5, 1, 16)[0]
    assert scene["image"].shape == (1, 16, 16) and set(scene["labels"].unique().tolist()) <= set(LinearLabel)


def test_uncompensated_attenuation_darkens_the_depth_of_the_same_scene():
    compensated = linear_pairs(5, 4, 32)
    attenuated = linear_pairs(5, 4, 32, attenuation_db_cm_mhz=(0.8, 1.0))
    for flat, dark in zip(compensated, attenuated):
        assert torch.equal(flat["labels"], dark["labels"])  # the attenuation draws nothing else
        change = (dark["image"] - flat["image"])[0].mean(dim=1)  # (rows,): per-row change of the B-mode
        # the two-way loss grows with depth: at least 3 dB more (of a 50-70 dB range) at the bottom than the top
        assert change[-8:].mean() < change[:8].mean() - 3.0 / 70.0


def test_the_attenuation_range_of_linear_training_scenes_is_checked():
    assert DiffusionArgs(data="linear", linear_attenuation=(0.5, 1.0)).linear_attenuation == (0.5, 1.0)
    for bounds in ((1.0, 0.5), (-0.1, 0.3)):
        with pytest.raises(ValidationError, match="linear_attenuation"):
            DiffusionArgs(data="linear", linear_attenuation=bounds)
        with pytest.raises(InputError, match="0 <= LOW <= HIGH"):
            linear_pairs(0, 1, 32, attenuation_db_cm_mhz=bounds)  # the simulator refuses it too


@pytest.mark.shared_data("camus_train")
def test_camus_pairs_mark_the_fan_whose_geometry_is_estimated():
    root = shared_data_dir() / "camus_train"
    pairs = camus_pairs(root, camus_split(root)[0][:2], 64)
    assert len(pairs) == 8
    for pair in pairs:
        labels = pair["labels"].numpy()
        assert set(np.unique(labels)) == set(EchoLabel)  # the 4 CAMUS classes and the outside of the fan
        geometry = estimate_sector(labels != OUTSIDE_FAN)
        assert geometry.apex == pytest.approx((0.0, 31.5), abs=2.0)  # CAMUS: apex at the top centre
        assert 60.0 < math.degrees(geometry.angle) < 80.0 and geometry.radius == pytest.approx(64.0, abs=2.0)


def test_label_augmentation_keeps_the_classes_and_fills_with_the_outside_class():
    fan = SectorGeometry(apex=(-0.5, 15.5), radius=30.0, angle=math.radians(70.0)).fan((32, 32))
    labels = torch.from_numpy(np.where(fan, 0, OUTSIDE_FAN))
    labels[10:20, 12:20] = 1
    image = torch.full((1, 32, 32), 0.5)  # 0 only where the deformation brings in what lies outside the image
    pairs = [{"image": image, "labels": labels}]
    augmentation = LabelAugmentation(probability=1.0, rotate_deg=20.0, translate=0.2, fill_label=OUTSIDE_FAN)
    served = SynthesisPairs(pairs, [0], "sector", OUTSIDE_FAN, seed=1, augmentation=augmentation, samples=4)
    items = [served[index] for index in range(4)]
    for item in items:
        assert set(item["labels"].unique().tolist()) <= {0, 1, OUTSIDE_FAN}  # nearest: no class invented
        assert not torch.equal(item["labels"], labels)
        assert torch.all(item["labels"][item["image"][0] == 0.0] == OUTSIDE_FAN)  # filled with the outside class
    assert any((item["image"] == 0.0).any() for item in items)
    assert torch.equal(served[2]["labels"], items[2]["labels"])  # item i is a function of (seed, i)
    untouched = SynthesisPairs(pairs, [0], "sector", OUTSIDE_FAN, seed=1)[0]
    assert torch.equal(untouched["labels"], labels) and torch.equal(untouched["image"], image)


# -- training ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def camus_like(tmp_path_factory) -> Path:
    """22 CAMUS patients of 32 x 32 sector images: the split trains on the first 2; each patient's images
    hold its number, so a pair tells which patient it came from."""
    root = tmp_path_factory.mktemp("camus")
    fan = SectorGeometry(apex=(-0.5, 15.5), radius=32.0, angle=math.radians(70.0)).fan((32, 32))
    labels = np.zeros((32, 32), np.uint8)
    labels[8:20, 12:20] = 1
    labels[20:26, 12:20] = 3
    for number in range(1, 23):
        patient = f"patient{number:04d}"
        for view in ("2CH", "4CH"):
            for phase in ("ED", "ES"):
                write_image(
                    root / f"{patient}_{view}_{phase}.nii.gz", Image(np.where(fan, 10 * number, 0).astype(np.uint8))
                )
                write_image(root / f"{patient}_{view}_{phase}_gt.nii.gz", Image(labels))
    return root


def tiny_config(camus: Path, **task_args) -> dict:
    return {
        "task": "us-diffusion",
        "task_args": {
            "data": "echo",
            "image_size": 16,
            "simulated_images": 1,
            "val_simulated_images": 1,
            "val_camus_patients": 1,
            "data_folder": str(camus),
            "samples_per_epoch": 4,
            "num_train_timesteps": T,
            "beta_end": BETAS[1],
            "channels": [8, 16],
            "num_head_channels": 8,
            "norm_num_groups": 8,
            "spade_intermediate_channels": 8,
            "sampling_steps": 2,
            "val_sampling_steps": 2,
            **task_args,
        },
        "seed": 2,
        "batch_size": 2,
        "stages": [{"steps": 2}],
        "optimizers": {"main": {"name": "adamw", "lr": 1e-3}},
        "validation_every_steps": 2,
        "log_every_steps": 1,
        "bundle": {"name": "tiny-ussynth", "formats": []},
    }


def test_the_training_split_leaves_the_last_twenty_patients_out(camus_like):
    task_class = get_task("us-diffusion")
    args = task_class.parse_args({**tiny_config(camus_like)["task_args"], "simulated_images": 0})
    training, validation = task_class(args, seed=0).build_datasets(args)
    brightness = {round(float(pair["image"].max()) * 255 / 10) for pair in training.pairs}
    assert brightness == {1, 2} and len(training.pairs) == 8  # patients 1 and 2, 2 views x 2 phases
    held_out = {
        round(float(pair["image"].max()) * 255 / 10)
        for pair, source in zip(validation.pairs, validation.sources)
        if source == 0
    }
    assert held_out == {3}  # the first held-out patient


def test_a_two_step_run_exports_a_bundle_that_samples(camus_like, tmp_path):
    config = parse_config(tiny_config(camus_like))
    trainer = Trainer(config, output_dir=tmp_path, progress=False, device="cpu")
    trainer.run()
    with (tmp_path / "metrics.csv").open(newline="") as stream:
        row = list(csv.DictReader(stream))[-1]
    assert float(row["train/mse"]) > 0 and float(row["val/noise_mse"]) > 0
    assert (tmp_path / "images" / "2" / "labels_real_synthetic.png").is_file()

    bundle = load_bundle(tmp_path / "bundle")
    inference = bundle.manifest.inference
    assert inference.kind == "diffusion" and inference.bmap == BMapSettings(
        enabled=True, eps=0.97, probe="sector", outside_label=OUTSIDE_FAN
    )
    assert [label.name for label in inference.label_classes][-1] == "outside_fan" and inference.image_size == (16, 16)
    model = bundle.build_torch_model()
    labels = torch.from_numpy(np.where(SectorGeometry((-0.5, 7.5), 16.0, 1.2).fan((16, 16)), 1, OUTSIDE_FAN))[None]
    images = sample(model, labels, inference, sampler="ddim", steps=2, progress=False)
    assert images.shape == (1, 1, 16, 16) and torch.isfinite(images).all()


def test_a_velocity_run_exports_a_bundle_that_samples_with_velocity(camus_like, tmp_path):
    config = parse_config(tiny_config(camus_like, prediction_type="v_prediction", val_sampling_steps=0))
    Trainer(config, output_dir=tmp_path, progress=False, device="cpu").run()
    with (tmp_path / "metrics.csv").open(newline="") as stream:
        row = list(csv.DictReader(stream))[-1]
    assert float(row["val/velocity_mse"]) > 0 and "val/noise_mse" not in row
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.manifest.inference.prediction_type == "v_prediction"
    assert scheduler_for(bundle.manifest.inference, "ddim").prediction_type == "v_prediction"


def test_a_run_resumes_with_other_sampling_defaults_but_not_with_other_training(camus_like, tmp_path):
    Trainer(parse_config(tiny_config(camus_like, sampler="ddim")), output_dir=tmp_path, progress=False).run()
    changed = {"sampler": "ddpm", "sampling_steps": 3, "guidance_scale": 2.0, "val_sampling_steps": 1}
    with pytest.raises(ConfigError, match="task_args.sampler"):
        Trainer(parse_config(tiny_config(camus_like, label_dropout=0.5)), output_dir=tmp_path, progress=False).run()
    result = Trainer(parse_config(tiny_config(camus_like, **changed)), output_dir=tmp_path, progress=False).run()
    assert result.resumed_from_step == 2
    inference = load_bundle(result.bundle).manifest.inference
    assert (inference.sampler, inference.sampling_steps, inference.guidance_scale) == ("ddpm", 3, 2.0)


@pytest.mark.parametrize(
    "name",
    [
        "ussynth_echo_64",
        "ussynth_linear_64",
        "ussynth_echo_64_no_bmap",
        "ussynth_linear_attenuated_64",
        "ussynth_linear_attenuated_64_no_bmap",
        "ussynth_linear_attenuated_32",
        "ussynth_linear_attenuated_32_no_bmap",
        "ussynth_linear_attenuated_32_v",
        "ussynth_linear_attenuated_32_v_no_bmap",
    ],
)
def test_the_shipped_configs_are_valid(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    task_class = get_task(config.task)
    args = task_class.parse_args(config.task_args)
    assert f"_{args.image_size}" in name and config.checkpoint_every_steps
    inference = task_class(args, seed=config.seed).inference_spec()
    assert inference.bmap.enabled == (not name.endswith("no_bmap"))


@pytest.mark.parametrize(
    "name",
    [
        "ussynth_echo_64",
        "ussynth_linear_attenuated_64",
        "ussynth_linear_attenuated_32",
        "ussynth_linear_attenuated_32_v",
    ],
)
def test_each_ablation_differs_from_its_config_only_in_eps_and_names(name):
    with_bmap, without = (load_config(CONFIGS / f"{config}.yaml") for config in (name, f"{name}_no_bmap"))
    assert without.task_args == {**with_bmap.task_args, "bmap_eps": 1.0}
    assert without.model_dump(exclude={"task_args", "output_dir", "bundle"}) == with_bmap.model_dump(
        exclude={"task_args", "output_dir", "bundle"}
    )


@pytest.mark.parametrize("suffix", ["", "_no_bmap"])
def test_the_velocity_runs_differ_from_the_noise_runs_only_in_prediction_and_names(suffix):
    noise, velocity = (load_config(CONFIGS / f"ussynth_linear_attenuated_32{kind}{suffix}.yaml") for kind in ("", "_v"))
    assert velocity.task_args == {**noise.task_args, "prediction_type": "v_prediction"}
    assert velocity.model_dump(exclude={"task_args", "output_dir", "bundle"}) == noise.model_dump(
        exclude={"task_args", "output_dir", "bundle"}
    )
