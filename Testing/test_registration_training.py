"""Echo registration training: the network's plumbing, the data and its split, the shape loss, both tasks end to end.

Truth: an untrained network returns the identity; a velocity that folds as a displacement does not
fold once integrated; the simulator's true displacement warps the moving frame onto the fixed one
better than no registration (also after the left-right mirror of the augmentation); validation
patients never reach a training set; the shape loss is zero for identical masks and its gradient
reaches the displacement; tiny runs of both tasks export bundles that load and declare what the
inference side reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepultrasound.errors import ConfigError, FileFormatError, InputError
from deepultrasound.io import Image, write_image
from deepultrasound.io.camus import CamusLabel
from deepultrasound.losses import dice_score
from deepultrasound.registration import shape_task, training_task
from deepultrasound.registration.data import (
    HELD_OUT_SYNTHETIC_SEED,
    PairDataset,
    augment_pairs,
    camus_pairs,
    camus_split,
    default_camus_root,
    synthetic_pairs,
)
from deepultrasound.registration.networks import RegistrationNetwork
from deepultrasound.registration.preprocessing import normalise_frame, prepare_frame, resize_labels
from deepultrasound.registration.shape_vae import ShapeLatentLoss, ShapeVAE, load_shape_vae
from deepultrasound.runtime import load_bundle
from deepultrasound.spatial import (
    folding_fraction,
    integrate_velocity,
    labels_to_one_hot,
    warp_image,
    warp_labels,
    warp_soft_labels,
)
from deepultrasound.training import Trainer, load_config, parse_config
from deepultrasound.training.task import get_task

CONFIGS = Path(__file__).resolve().parents[1] / "deepultrasound" / "configs"


# -- network -------------------------------------------------------------------------------------
@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_an_untrained_network_returns_the_identity(diffeomorphic):
    network = RegistrationNetwork(channels=4, depth=2, diffeomorphic=diffeomorphic)
    pair = torch.rand(2, 2, 16, 24)
    displacement = network(pair)
    assert displacement.shape == (2, 2, 16, 24)
    torch.testing.assert_close(displacement, torch.zeros_like(displacement))


def test_the_network_gives_the_field_in_the_project_channel_order():
    """RegUNet's channel 0 runs along H (MONAI's order); the network's output channel 1 (axial) holds it."""
    network = RegistrationNetwork(channels=4, depth=2)
    axial = torch.zeros(1, 2, 8, 8)
    axial[:, 0] = 1.5  # MONAI order: channel 0 along H (rows)
    network.net.forward = lambda pair: axial
    displacement = network(torch.rand(1, 2, 8, 8))
    assert torch.all(displacement[:, 1] == 1.5) and torch.all(displacement[:, 0] == 0)
    # moving(p + u(p)) ~ fixed(p): content 1.5 rows further down in the moving image comes back
    rows = torch.arange(8.0).view(1, 1, 8, 1).expand(1, 1, 8, 8)
    torch.testing.assert_close(warp_image(rows - 1.5, displacement)[..., :6, :], rows[..., :6, :])


def test_the_diffeomorphic_path_does_not_fold_a_smooth_velocity():
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    swirl = torch.exp(-((rows - 15.5) ** 2 + (cols - 15.5) ** 2) / 40.0)
    velocity = 12.0 * torch.stack([swirl * (rows - 15.5) / 4, -swirl * (cols - 15.5) / 4])[None]  # project order
    assert float(folding_fraction(velocity)) > 0.01  # used as a displacement, it folds
    network = RegistrationNetwork(channels=4, depth=2, diffeomorphic=True)
    network.net.forward = lambda pair: velocity.flip(1)  # RegUNet speaks MONAI's channel order
    displacement = network(torch.rand(1, 2, 32, 32))
    assert float(folding_fraction(displacement)) == 0.0
    assert displacement.abs().max() > 3.0
    torch.testing.assert_close(displacement, integrate_velocity(velocity), atol=1e-5, rtol=1e-5)  # MONAI's DVF2DDF


@pytest.mark.parametrize(
    ("shape", "message"), [((1, 3, 16, 16), r"\(B, 2, H, W\)"), ((1, 2, 16, 12), "multiples of 8")]
)
def test_the_network_refuses_bad_input(shape, message):
    with pytest.raises(InputError, match=message):
        RegistrationNetwork(channels=4, depth=3)(torch.zeros(shape))


# -- preprocessing -------------------------------------------------------------------------------
def test_frames_are_scaled_to_the_unit_range_and_labels_keep_their_values():
    frame = prepare_frame(np.arange(64, dtype=np.uint8).reshape(8, 8) + 10, (4, 4))
    assert frame.shape == (1, 4, 4) and float(frame.min()) == 0.0 and float(frame.max()) == 1.0
    assert torch.all(normalise_frame(np.full((3, 3), 7.0)) == 0)
    labels = np.zeros((8, 8), np.uint8)
    labels[:, :4], labels[:, 4:] = 1, 3  # bilinear interpolation of integers would put a 2 between them
    resized = resize_labels(labels, (5, 5), 4)
    assert set(resized.unique().tolist()) == {1, 3} and resized.dtype == torch.int64
    with pytest.raises(InputError, match="2D"):
        normalise_frame(np.zeros((2, 3, 3)))


# -- data ----------------------------------------------------------------------------------------
def _fake_camus(root: Path, patients: int, size: int = 16) -> Path:
    """A flat CAMUS folder: noise images, an LV disc (ED larger than ES) in myocardium, an atrium below."""
    rows, cols = np.mgrid[:size, :size]
    rng = np.random.default_rng(0)
    for number in range(1, patients + 1):
        for view in ("2CH", "4CH"):
            for phase, radius in (("ED", 0.3), ("ES", 0.22)):
                distance = np.hypot(rows - size * 0.4, cols - size / 2) / size
                labels = np.where(distance < radius + 0.1, CamusLabel.MYOCARDIUM, CamusLabel.BACKGROUND)
                labels = np.where(distance < radius, CamusLabel.LV_CAVITY, labels)
                labels[int(size * 0.85) :, size // 3 : 2 * size // 3] = CamusLabel.LEFT_ATRIUM
                stem = root / f"patient{number:04d}_{view}_{phase}"
                write_image(f"{stem}.nii.gz", Image(rng.integers(0, 255, (size, size), dtype=np.uint8)))
                write_image(f"{stem}_gt.nii.gz", Image(labels.astype(np.uint8)))
    return root


@pytest.fixture(scope="module")
def fake_camus(tmp_path_factory):
    return _fake_camus(tmp_path_factory.mktemp("camus"), patients=23)


def test_the_split_keeps_the_last_patients_for_validation(fake_camus, tmp_path):
    train, val = camus_split(fake_camus)
    assert train == [f"patient{n:04d}" for n in range(1, 4)]
    assert val == [f"patient{n:04d}" for n in range(4, 24)]
    with pytest.raises(FileFormatError, match="needs at least one more"):
        camus_split(_fake_camus(tmp_path, patients=20, size=8))


def test_no_training_set_reads_a_validation_patient(fake_camus, monkeypatch):
    """Both tasks' training sets are built from the first patients only; the validation sets from the last 20."""
    read = {"train": set(), "val": set()}
    _, val_patients = camus_split(fake_camus)

    def recording(function):
        def record(root, patients, size):
            read["val" if set(patients) <= set(val_patients) and patients else "train"].update(patients)
            return function(root, patients, size)

        return record

    monkeypatch.setattr(training_task, "camus_pairs", recording(camus_pairs))
    monkeypatch.setattr(shape_task, "camus_label_maps", recording(shape_task.camus_label_maps))
    registration = training_task.RegistrationTask
    task = registration(
        registration.parse_args(
            {
                "size": 16,
                "depth": 2,
                "camus_root": str(fake_camus),
                "synthetic_pairs": 0,
                "synthetic_random_pairs": 0,
                "val_synthetic_pairs": 0,
            }
        ),
        seed=0,
    )
    train, val = task.build_datasets(task.args)
    vae = shape_task.ShapeVAETask
    shapes = vae(vae.parse_args({"camus_root": str(fake_camus), "simulated_maps": 0, "val_simulated_maps": 0}), seed=0)
    shape_train, _ = shapes.build_datasets(shapes.args)
    assert read["train"] == {"patient0001", "patient0002", "patient0003"}
    assert read["val"] == set(val_patients)
    assert len(train) == 3 * 2 and len(val) == 20 * 2 and len(shape_train.masks) == 3 * 2 * 2


@pytest.mark.shared_data("camus_train")
def test_camus_pairs_of_the_shared_folder():
    train, val = camus_split(default_camus_root())
    assert (len(train), len(val)) == (80, 20) and not set(train) & set(val) and train + val == sorted(train + val)
    pair = next(camus_pairs(default_camus_root(), val[:1], 32))
    assert pair["fixed"].shape == (1, 32, 32) and pair["fixed_labels"].shape == (32, 32)
    assert pair["fixed_labels"].dtype == torch.int64 and set(pair["fixed_labels"].unique().tolist()) == {0, 1, 2, 3}
    assert float(pair["moving"].min()) == 0.0 and float(pair["moving"].max()) == 1.0


@pytest.fixture(scope="module")
def simulated():
    """Two held-out ED/ES pairs on a 64-pixel grid, as a batch of training items."""
    items = PairDataset(synthetic_pairs(HELD_OUT_SYNTHETIC_SEED, 2, 64), source=1)
    return {key: torch.stack([items[i][key] for i in range(len(items))]) for key in items[0]}


def _errors(batch):
    """(image L1 error, LV and myocardium Dice) of the moving frame warped by the true displacement and unwarped."""
    moving, fixed, truth = batch["moving"], batch["fixed"], batch["displacement"]
    labels = batch["moving_labels"][:, None], batch["fixed_labels"][:, None]
    return {
        name: (
            float((warp_image(moving, u) - fixed).abs().mean()),
            dice_score(warp_labels(labels[0], u, 4), labels[1], 4)[:, :2].mean(0),
        )
        for name, u in (("truth", truth), ("identity", torch.zeros_like(truth)))
    }


def test_the_true_displacement_registers_simulated_pairs(simulated):
    assert simulated["displacement"].shape == (2, 2, 64, 64) and float(simulated["has_displacement"].min()) == 1.0
    errors = _errors(simulated)
    assert errors["truth"][0] < 0.9 * errors["identity"][0]
    assert torch.all(errors["truth"][1] > 0.9) and torch.all(errors["truth"][1] > errors["identity"][1] + 0.05)
    again = next(synthetic_pairs(HELD_OUT_SYNTHETIC_SEED, 1, 64))
    torch.testing.assert_close(again["displacement"], simulated["displacement"][0])
    other = next(synthetic_pairs(HELD_OUT_SYNTHETIC_SEED, 1, 64, random_phases=True))
    assert not torch.allclose(other["fixed"], simulated["fixed"][0])


def test_the_mirror_augmentation_keeps_the_true_displacement_true(simulated):
    mirrored = augment_pairs(simulated, flip=True, swap=False, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(mirrored["fixed"], simulated["fixed"])  # this seed mirrors at least one pair
    assert _errors(mirrored)["truth"][0] == pytest.approx(_errors(simulated)["truth"][0], rel=1e-4)


def test_the_swap_augmentation_exchanges_only_pairs_without_truth(simulated):
    batch = {**simulated, "has_displacement": torch.tensor([0.0, 1.0])}
    exchanged = 0
    for seed in range(8):
        swapped = augment_pairs(batch, flip=False, swap=True, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(swapped["fixed"][1], batch["fixed"][1])
        if not torch.equal(swapped["fixed"][0], batch["fixed"][0]):
            assert torch.equal(swapped["fixed"][0], batch["moving"][0])
            assert torch.equal(swapped["moving_labels"][0], batch["fixed_labels"][0])
            exchanged += 1
    assert 0 < exchanged < 8


# -- shape loss ----------------------------------------------------------------------------------
def test_the_shape_loss_is_zero_for_identical_masks_and_its_gradient_reaches_the_displacement(simulated):
    torch.manual_seed(0)
    loss = ShapeLatentLoss(ShapeVAE(size=32, latent_size=8, channels=(4, 8)))
    fixed = labels_to_one_hot(simulated["fixed_labels"][:, None], 4)
    moving = labels_to_one_hot(simulated["moving_labels"][:, None], 4)
    assert float(loss(fixed, fixed)) == 0.0
    displacement = torch.zeros(2, 2, 64, 64, requires_grad=True)
    value = loss(fixed, warp_soft_labels(moving, displacement))
    value.backward()
    assert float(value) > 0 and torch.isfinite(displacement.grad).all() and displacement.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in loss.parameters())
    with pytest.raises(InputError, match="differ in shape"):
        loss(fixed, fixed[..., :32, :32])


# -- training runs -------------------------------------------------------------------------------
def _shape_config(camus: Path) -> dict:
    return {
        "task": "shape-vae",
        "task_args": {
            "size": 32,
            "latent_size": 8,
            "channels": [4, 8],
            "camus_root": str(camus),
            "simulated_maps": 1,
            "val_simulated_maps": 1,
            "val_camus_patients": 1,
            "samples_per_epoch": 8,
        },
        "seed": 1,
        "batch_size": 4,
        "stages": [{"steps": 2}],
        "validation_every_steps": 2,
        "bundle": {"name": "tiny-shape-vae", "formats": ["torchscript"]},
    }


@pytest.fixture(scope="module")
def shape_run(fake_camus, tmp_path_factory):
    output = tmp_path_factory.mktemp("shape_vae")
    return Trainer(parse_config(_shape_config(fake_camus)), output_dir=output, progress=False, device="cpu").run()


def test_a_shape_vae_run_exports_a_bundle_that_loads(shape_run):
    assert np.isfinite(shape_run.validation["val/camus_dice_lv"]) and shape_run.train_losses["train/kl"] >= 0
    bundle = load_bundle(shape_run.bundle)
    assert bundle.manifest.task == "shape-vae"
    vae = load_shape_vae(shape_run.bundle)
    from_checkpoint = load_shape_vae(shape_run.output_dir / "checkpoints" / "checkpoint_last.pt")
    masks = torch.rand(2, 2, 32, 32)
    torch.testing.assert_close(vae.eval()(masks)[1], from_checkpoint.eval()(masks)[1])


def test_a_multiscale_registration_run_with_every_term_exports_a_bundle_that_loads(fake_camus, shape_run, tmp_path):
    config = {
        "task": "echo-registration",
        "task_args": {
            "size": 32,
            "channels": 4,
            "depth": 2,
            "diffeomorphic": True,
            "camus_root": str(fake_camus),
            "val_camus_patients": 1,
            "synthetic_pairs": 1,
            "synthetic_random_pairs": 1,
            "val_synthetic_pairs": 1,
            "shape_weight": 0.1,
            "shape_vae": str(shape_run.bundle),
            "texture_weight": 0.01,
            "discriminator_layers": 1,
            "epe_weight": 0.01,
        },
        "seed": 1,
        "batch_size": 4,
        "optimizers": {"registration": {"lr": 1e-3}, "discriminator": {"lr": 1e-3}},
        "stages": [{"name": "coarse", "steps": 1, "task_args": {"size": 16}}, {"name": "fine", "steps": 1}],
        "validation_every_steps": 2,
        "bundle": {"name": "tiny-echo-registration"},
    }
    result = Trainer(parse_config(config), output_dir=tmp_path, progress=False, device="cpu").run()
    losses = result.train_losses
    assert {"train/similarity", "train/bending", "train/dice", "train/shape", "train/texture", "train/epe"} <= set(
        losses
    )
    assert result.validation["val/synthetic_epe_px_identity"] > 0 and result.validation["val/folding_percent"] < 1
    assert (tmp_path / "images" / "2" / "fixed_moving_warped.png").is_file()

    bundle = load_bundle(result.bundle)
    inference = bundle.manifest.inference
    assert (inference.kind, inference.input_size, inference.diffeomorphic) == ("registration", (32, 32), True)
    assert inference.channel_order == ["fixed", "moving"]
    assert [(c.name, c.value) for c in inference.label_classes] == [
        ("background", 0),
        ("lv_cavity", 1),
        ("myocardium", 2),
        ("left_atrium", 3),
    ]
    assert bundle.manifest.task == "echo-registration" and bundle.manifest.normalisation["kind"] == "minmax_per_frame"
    network = bundle.build_torch_model().eval()
    with torch.no_grad():
        assert network(torch.rand(1, 2, 32, 48)).shape == (1, 2, 32, 48)


def test_bad_registration_arguments_are_refused():
    registration = get_task("echo-registration")
    with pytest.raises(ConfigError, match="shape_vae"):
        registration.parse_args({"shape_weight": 0.1})
    with pytest.raises(ConfigError, match="multiple of 2\\*\\*depth"):
        registration.parse_args({"size": 60, "depth": 3})
    task = registration(registration.parse_args({}), seed=HELD_OUT_SYNTHETIC_SEED)
    with pytest.raises(ConfigError, match="held-out"):
        task.build_datasets(task.args)


# -- configs -------------------------------------------------------------------------------------
def _stage_sizes(config) -> list[int]:
    return [stage.task_args.get("size", config.task_args["size"]) for stage in config.stages]


def test_the_committed_configs_are_valid_and_the_ablations_differ_in_one_thing_each():
    vae = load_config(CONFIGS / "echo_shape_vae.yaml")
    get_task(vae.task).parse_args(vae.task_args)
    configs = {
        name: load_config(CONFIGS / f"echo_registration{name}.yaml")
        for name in ("", "_no_shape", "_no_texture", "_single_scale")
    }
    registration = get_task("echo-registration")
    args = {name: registration.parse_args(config.task_args) for name, config in configs.items()}
    main = args[""]
    assert main.shape_weight > 0 and main.texture_weight > 0 and main.dice_weight > 0 and main.bending_weight > 0
    assert _stage_sizes(configs[""]) == [64, 128] and main.size == 128  # the bundle declares the last stage's grid
    assert args["_no_shape"] == main.model_copy(update={"shape_weight": 0.0, "shape_vae": None})
    assert args["_no_texture"] == main.model_copy(update={"texture_weight": 0.0})
    assert set(configs["_no_texture"].optimizers) == {"main"}
    assert args["_single_scale"] == main and _stage_sizes(configs["_single_scale"]) == [128]
    for config in configs.values():
        assert config.seed != HELD_OUT_SYNTHETIC_SEED and config.task_args["size"] == _stage_sizes(config)[-1]
