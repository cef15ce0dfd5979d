"""SRGAN training of USSuperRes on tiny shapes: the B-mode feature network trained and exported here,
the perceptual loss on it, the adversarial step of the ``superres`` task, and networks started from
an earlier run (the trainer's ``init_from``).

Truth: the feature loss equals the MSE of the encoder features recomputed by hand and is zero for the
truth itself; with both new weights at 0 a step gives the loss values the task gave before it had
them (recorded for seed 0); a GAN step's generator loss is the weighted sum of its parts; a network
started from a bundle or a checkpoint holds that run's exported weights.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors

from deepultrasound.errors import BundleError, ConfigError, FileFormatError, InputError
from deepultrasound.runtime import load_bundle
from deepultrasound.superres.feature_task import corrupt
from deepultrasound.superres.features import FEATURES, BModeAutoEncoder, FeatureLoss
from deepultrasound.training import Trainer, load_config, parse_config
from deepultrasound.training.checkpoint import LAST_CHECKPOINT, initial_weights
from deepultrasound.training.config import OptimizerConfig, SchedulerConfig
from deepultrasound.training.optimisation import Optimisation, build_optimizer, build_scheduler
from deepultrasound.training.task import StepContext, get_task

CONFIGS = Path(__file__).resolve().parents[1] / "deepultrasound" / "configs"

DATA = {  # simulated images only, 24 x 24: no shared data needed
    "patch_size": (16, 16),
    "val_patch_size": (16, 16),
    "simulated_shape": (24, 24),
    "simulated_images": 2,
    "real_images": 0,
    "val_simulated_images": 2,
    "val_real_images": 0,
    "samples_per_epoch": 8,
}
TINY_GENERATOR = {"factor": 4, "channels": 4, "blocks": 1}


def run_config(task: str, task_args: dict, optimizers: dict | None = None, **top) -> dict:
    return {
        "task": task,
        "task_args": {**DATA, **task_args},
        "seed": 0,
        "batch_size": 4,
        "stages": [{"steps": 1}],
        "optimizers": optimizers or {"main": {"name": "adam", "lr": 1e-3}},
        "bundle": {"formats": []},  # weights only, unless a test exports graphs
        **top,
    }


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory):
    """The ``bmode-features`` task trained two steps, exported with its graphs."""
    config = run_config("bmode-features", {"channels": (4, 8)}, stages=[{"steps": 2}], bundle={})
    folder = tmp_path_factory.mktemp("features")
    return Trainer(parse_config(config), output_dir=folder, progress=False, device="cpu").run()


@pytest.fixture(scope="module")
def srresnet_run(tmp_path_factory):
    """The plain ``superres`` task trained two steps (its EMA copy differs from the online weights after the
    second): the run an SRGAN starts from."""
    config = run_config("superres", TINY_GENERATOR, stages=[{"steps": 2}])
    return Trainer(
        parse_config(config), output_dir=tmp_path_factory.mktemp("srresnet"), progress=False, device="cpu"
    ).run()


def manual_context(task, networks, frozen, optimizer_names):
    """A step context over ``networks`` with one Adam (lr 1e-3) per optimiser the task names."""
    optimizers, parameters, schedulers = {}, {}, {}
    for name, members in task.optimizer_networks(list(networks)).items():
        assert name in optimizer_names
        parameters[name] = [p for member in members for p in networks[member].parameters()]
        optimizers[name] = build_optimizer(OptimizerConfig(lr=1e-3), parameters[name])
        schedulers[name] = build_scheduler(SchedulerConfig(), optimizers[name], 0)
    optimisation = Optimisation(optimizers, parameters, schedulers, None, 1, None, "cpu")
    return StepContext(networks, frozen, optimizers, torch.device("cpu"), optimisation.optimize), optimisation


def fixed_batch() -> dict[str, torch.Tensor]:
    high = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    return {"high": high, "low": high[..., ::4], "source": torch.zeros(2, dtype=torch.int64)}


# -- the feature network ---------------------------------------------------------------------------
def test_the_feature_task_trains_validates_and_exports_a_small_bundle(feature_run):
    with (feature_run.output_dir / "metrics.csv").open(newline="") as stream:
        row = list(csv.DictReader(stream))[-1]
    assert math.isfinite(float(row["train/mse"])) and math.isfinite(float(row["val/mse_ours"]))
    assert float(row["val/mse_corrupted"]) > 0
    assert (feature_run.output_dir / "images" / "2" / "corrupted_restored_truth.png").is_file()

    bundle = load_bundle(feature_run.bundle)
    assert (bundle.manifest.task, bundle.manifest.architecture) == ("bmode-features", FEATURES)
    assert sum(path.stat().st_size for path in feature_run.bundle.iterdir()) < 1_000_000
    assert bundle.file("torchscript").is_file() and bundle.file("onnx").is_file()


def test_corruption_adds_noise_and_removes_whole_lines():
    image = torch.rand(3, 1, 8, 200, generator=torch.Generator().manual_seed(0)) + 0.5
    assert torch.equal(corrupt(image, 0.0, 0.0), image)
    masked = corrupt(image, 0.0, 0.25, torch.Generator().manual_seed(1))
    removed = (masked == 0).all(dim=2, keepdim=True)  # whole lines
    assert torch.equal(masked, image * ~removed)
    assert 0.15 < removed.float().mean() < 0.35
    noisy = corrupt(image, 0.1, 0.0, torch.Generator().manual_seed(1))
    assert float((noisy - image).std()) == pytest.approx(0.1, rel=0.1)


def test_feature_loss_is_the_mse_of_the_first_encoder_levels():
    torch.manual_seed(0)
    network = BModeAutoEncoder((4, 8, 8))
    truth, estimate = torch.rand(2, 2, 1, 16, 16)
    loss = FeatureLoss(network, levels=2, reduction="none")
    expected = [
        sum(F.mse_loss(a, b) for a, b in zip(network.features(e[None])[:2], network.features(t[None])[:2])) / 2
        for e, t in zip(estimate, truth)
    ]
    torch.testing.assert_close(loss(estimate, truth), torch.stack(expected))
    assert float(FeatureLoss(network)(truth, truth)) == 0.0
    assert [f.shape for f in network.features(truth)] == [(2, 4, 16, 16), (2, 8, 8, 8), (2, 8, 4, 4)]


def test_feature_loss_is_frozen_but_passes_the_gradient_to_the_estimate():
    torch.manual_seed(0)
    loss = FeatureLoss(BModeAutoEncoder((4, 8)))
    loss.train()
    assert not loss.network.training and not any(p.requires_grad for p in loss.parameters())
    estimate = torch.rand(2, 1, 16, 16, requires_grad=True)
    loss(estimate, torch.rand(2, 1, 16, 16)).backward()
    assert estimate.grad is not None and torch.isfinite(estimate.grad).all() and estimate.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())


def test_feature_loss_refuses_bad_shapes_levels_and_bundles(srresnet_run, tmp_path):
    loss = FeatureLoss(BModeAutoEncoder((4, 8)))
    with pytest.raises(InputError, match=r"\(2, 1, 16, 16\) and \(2, 1, 16, 8\)"):
        loss(torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 16, 8))
    with pytest.raises(ValueError, match="levels must be between 1 and the network's 2 levels, got 3"):
        FeatureLoss(BModeAutoEncoder((4, 8)), levels=3)
    with pytest.raises(BundleError, match="holds 'superres.srresnet', not 'superres.bmode-autoencoder'"):
        FeatureLoss.from_bundle(srresnet_run.bundle)
    with pytest.raises(BundleError, match="neither a bundle folder nor an installed bundle"):
        FeatureLoss.from_bundle(tmp_path / "missing")


# -- the superres task with and without its adversarial and perceptual losses -----------------------
@pytest.mark.parametrize(
    "loss, recorded",
    [  # the task's losses for this seed and batch before it had the SRGAN options
        ("l1", [0.2886342406272888, 0.2767254114151001, 0.26834285259246826]),
        ("mse", [0.14302359521389008, 0.13561847805976868, 0.12991146743297577]),
    ],
)
def test_with_both_weights_zero_the_task_is_the_plain_srresnet(loss, recorded):
    task_class = get_task("superres")
    task = task_class(task_class.parse_args({**TINY_GENERATOR, "loss": loss}), seed=0)
    torch.manual_seed(0)
    networks = task.build_networks()
    assert list(networks) == ["generator"] and task.build_frozen_networks() == {}
    ctx, optimisation = manual_context(task, networks, {}, {"main"})
    values = []
    for _ in range(3):
        optimisation.begin_step()
        optimisation.begin_micro_batch()
        losses = task.training_step(fixed_batch(), ctx)
        optimisation.finish_step()
        assert list(losses) == [loss]
        values.append(float(losses[loss]))
    assert values == pytest.approx(recorded, rel=1e-5)


def test_a_gan_step_updates_the_generator_and_the_discriminator(feature_run):
    task_class = get_task("superres")
    args = {
        **TINY_GENERATOR,
        "loss": "mse",
        "adversarial_weight": 0.5,
        "feature_weight": 2.0,
        "feature_bundle": str(feature_run.bundle),
        "discriminator_channels": 4,
    }
    task = task_class(task_class.parse_args(args), seed=0)
    torch.manual_seed(0)
    networks = task.build_networks()
    frozen = task.build_frozen_networks()
    ctx, optimisation = manual_context(task, networks, frozen, {"generator", "discriminator"})
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in {**networks, **frozen}.items()}
    optimisation.begin_step()
    optimisation.begin_micro_batch()
    losses = task.training_step(fixed_batch(), ctx)
    optimisation.finish_step()

    assert set(losses) == {"mse", "feature", "discriminator", "adversarial", "generator"}
    assert all(torch.isfinite(value) for value in losses.values())
    expected = losses["mse"] + 2.0 * losses["feature"] + 0.5 * losses["adversarial"]
    torch.testing.assert_close(losses["generator"], expected)
    for name in ("generator", "discriminator"):
        changed = [not torch.equal(a, b) for a, b in zip(before[name], networks[name].parameters())]
        assert sum(changed) > len(changed) // 2, name
    assert all(torch.equal(a, b) for a, b in zip(before["features"], frozen["features"].parameters()))


def test_a_gan_run_starts_from_the_srresnet_and_exports_the_generator_only(srresnet_run, feature_run, tmp_path):
    nearly_frozen = {"name": "adam", "lr": 1e-12}  # one step leaves the weights where they started
    config = run_config(
        "superres",
        {
            **TINY_GENERATOR,
            "adversarial_weight": 1e-3,
            "feature_weight": 0.1,
            "feature_bundle": str(feature_run.bundle),
        },
        optimizers={"generator": nearly_frozen, "discriminator": nearly_frozen},
        init_from={"generator": str(srresnet_run.bundle)},
        validation_every_steps=1,
    )
    result = Trainer(parse_config(config), output_dir=tmp_path, progress=False, device="cpu").run()
    assert {"train/discriminator", "train/adversarial", "train/feature"} <= set(result.train_losses)
    assert math.isfinite(result.validation["val/simulated_psnr_ours"])
    assert math.isfinite(result.validation["val/simulated_ssim_ours"])

    exported, source = load_bundle(result.bundle), load_bundle(srresnet_run.bundle)
    assert exported.manifest.network_names() == source.manifest.network_names()  # no discriminator
    weights, started = (load_safetensors(b.read("weights")) for b in (exported, source))
    model = exported.build_torch_model()
    for name, _ in model.named_parameters():
        torch.testing.assert_close(weights[name], started[name], rtol=0, atol=1e-8)


def test_init_from_a_checkpoint_takes_the_weights_its_run_exports(srresnet_run):
    checkpoint = srresnet_run.output_dir / "checkpoints" / LAST_CHECKPOINT
    from_checkpoint = initial_weights(checkpoint, "generator")  # the EMA copy: the run exports it
    from_bundle = initial_weights(srresnet_run.bundle, "generator")
    assert from_checkpoint.keys() == from_bundle.keys()
    for key, value in from_bundle.items():
        torch.testing.assert_close(from_checkpoint[key], value, rtol=0, atol=0)
    online = torch.load(checkpoint, weights_only=True)["networks"]["generator"]
    assert any(not torch.equal(online[key], value) for key, value in from_checkpoint.items())


@pytest.mark.parametrize(
    "init_from, error, message",
    [
        ({"critic": "BUNDLE"}, ConfigError, r"init_from names \['critic'\].*its networks: \['generator'\]"),
        ({"generator": "missing/bundle"}, FileFormatError, "neither a model bundle folder nor a checkpoint"),
        ({"generator": "CHECKPOINT"}, ConfigError, "do not fit network 'generator'"),
    ],
)
def test_init_from_errors_name_the_problem(srresnet_run, tmp_path, init_from, error, message):
    checkpoint = srresnet_run.output_dir / "checkpoints" / LAST_CHECKPOINT
    sources = {"BUNDLE": str(srresnet_run.bundle), "CHECKPOINT": str(checkpoint)}
    init_from = {name: sources.get(path, path) for name, path in init_from.items()}
    wider = {**TINY_GENERATOR, "channels": 8}  # does not fit the 4-channel run
    config = run_config("superres", wider, init_from=init_from)
    with pytest.raises(error, match=message):
        Trainer(parse_config(config), output_dir=tmp_path, progress=False, device="cpu").run()


def test_feature_weight_needs_a_bundle():
    with pytest.raises(ConfigError, match="task_args.feature_bundle: .*feature_weight 0.5 needs a feature_bundle"):
        get_task("superres").parse_args({"feature_weight": 0.5})


def test_a_stage_cannot_add_the_discriminator_or_the_feature_network():
    task_class = get_task("superres")
    task = task_class(task_class.parse_args(TINY_GENERATOR), seed=0)
    torch.manual_seed(0)
    networks = task.build_networks()
    ctx, _ = manual_context(task, networks, {}, {"main"})
    task.args = task_class.parse_args({**TINY_GENERATOR, "adversarial_weight": 0.1})  # as a stage's override
    with pytest.raises(ConfigError, match="adversarial_weight must be set in the top-level task_args"):
        task.training_step(fixed_batch(), ctx)
    task.args = task_class.parse_args({**TINY_GENERATOR, "feature_weight": 0.1, "feature_bundle": "b"})
    with pytest.raises(ConfigError, match="feature_bundle must be set in the top-level task_args"):
        task.training_step(fixed_batch(), ctx)


def test_the_committed_configs_are_valid():
    gan = load_config(CONFIGS / "superres_srgan_x4.yaml")
    task_class = get_task(gan.task)
    args = task_class.parse_args(gan.task_args)
    assert args.adversarial_weight > 0 and args.feature_weight > 0 and args.feature_bundle
    assert set(gan.init_from) == {"generator"} and gan.init_from["generator"].startswith("runs/superres_x4/")
    srresnet = load_config(CONFIGS / "superres_srresnet_x4.yaml")
    base = task_class.parse_args(srresnet.task_args)
    assert (args.factor, args.channels, args.blocks) == (base.factor, base.channels, base.blocks)  # init_from fits
    task = task_class(args, seed=gan.seed)
    assert set(task.optimizer_networks(list(task.build_networks()))) == set(gan.optimizers)

    features = load_config(CONFIGS / "bmode_features.yaml")
    feature_args = get_task(features.task).parse_args(features.task_args)
    assert features.task == "bmode-features" and feature_args.val_real_images > 0
    assert args.feature_bundle.startswith(str(features.resolved_output_dir()))
