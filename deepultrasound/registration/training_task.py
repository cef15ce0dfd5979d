"""The ``echo-registration`` training task: a RegUNet registering echo frames, with anatomical and texture terms.

Data (:mod:`deepultrasound.registration.data`): ED/ES pairs of the CAMUS training split (the last
20 patients are never read for training) and simulated pairs with their true motion, ED/ES and
random phases of the cycle; every pair has label maps. Training batches are augmented per sample
(:func:`~deepultrasound.registration.data.augment_pairs`: left-right mirror, CAMUS pairs in both
directions, a gain curve).

Loss of the network's displacement ``u`` (pixels, :class:`~deepultrasound.registration.networks.RegistrationNetwork`),
with ``warped = moving(p + u(p))``:

- ``similarity_weight`` x image similarity of warped and fixed: MONAI's global mutual information
  (``similarity: mi``) or 2D local normalised cross-correlation (``lncc``);
- ``bending_weight`` x bending energy of ``u`` (MONAI's, size-normalised, so one weight serves
  every stage of a multi-scale run);
- ``dice_weight`` x soft Dice loss (foreground classes) of the warped soft one-hot moving labels
  against the fixed one-hot labels (:func:`~deepultrasound.spatial.warp_soft_labels`: no label
  map is interpolated as integers);
- ``shape_weight`` x :class:`~deepultrasound.registration.shape_vae.ShapeLatentLoss` of the same
  soft labels through a frozen shape VAE (``shape_vae``: a ``shape-vae`` bundle or checkpoint);
- ``texture_weight`` x adversarial loss of a patch discriminator (MONAI's ``PatchDiscriminator``,
  least squares) that tells warped-moving images from fixed ones; it is trained alongside with its
  own optimiser (``discriminator``) on the detached warped images. Weight 0 at the top level: no
  discriminator (a stage may set the weight, not add the network);
- ``epe_weight`` x endpoint error (pixels) against the true displacement of simulated pairs.

Multi-scale training: stages override ``size`` (e.g. 64 then 128); the network is fully
convolutional and each stage starts from the last one's weights. The top-level ``size`` is the one
the bundle declares: set it to the last stage's.

Validation: CAMUS validation pairs (ES labels warped onto ED) and held-out simulated ED/ES pairs:
``val/<camus|synthetic>_dice_<lv|myo>`` and ``..._identity`` (no registration), ``val/synthetic_epe_px``
and ``val/synthetic_epe_px_identity`` (pixels of the stage's grid), ``val/folding_percent``
(non-positive Jacobian determinant). Images: fixed | moving | warped over their label maps.

Example configs: ``deepultrasound/configs/echo_registration*.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from deepultrasound.errors import ConfigError
from deepultrasound.io.camus import CamusLabel
from deepultrasound.losses import BendingEnergy, DiceLoss, GlobalMutualInformationLoss, LocalNCCLoss, dice_score
from deepultrasound.registration.data import (
    HELD_OUT_SYNTHETIC_SEED,
    NUM_CLASSES,
    PairDataset,
    augment_pairs,
    camus_pairs,
    camus_split,
    default_camus_root,
    synthetic_pairs,
)
from deepultrasound.registration.networks import ARCHITECTURE, RegistrationNetwork
from deepultrasound.registration.preprocessing import NORMALISATION
from deepultrasound.registration.shape_vae import ShapeLatentLoss
from deepultrasound.runtime.inference_specs import LabelClass, RegistrationInference
from deepultrasound.spatial import folding_fraction, labels_to_one_hot, warp_image, warp_labels, warp_soft_labels
from deepultrasound.training.task import (
    ExportSpec,
    StepContext,
    Task,
    TaskArgs,
    ValidationContext,
    ValidationOutput,
    register_task,
)

TASK = "echo-registration"
NETWORK = "registration"
"""Name of the registration network (checkpoints, ``init_from``, export) and of its optimiser."""
CRITIC = "discriminator"
"""Name of the texture discriminator and of its optimiser (``texture_weight`` > 0); never exported."""
SHAPE_LOSS = "shape"
"""Name of the frozen :class:`ShapeLatentLoss` (``shape_vae``)."""
SOURCES = ("camus", "synthetic")
"""Data sources, by the ``source`` index of the items."""
LABEL_CLASSES = [LabelClass(name=label.name.lower(), value=label.value) for label in CamusLabel]
"""The label classes a bundle declares: CAMUS's 0 background, 1 LV cavity, 2 myocardium, 3 left atrium."""


class RegistrationArgs(TaskArgs):
    """``task_args`` of the ``echo-registration`` task."""

    size: int = Field(128, ge=8, description="side of the square grid the frames are resampled to, pixels")
    channels: int = Field(16, ge=1, description="RegUNet channels of the first level")
    depth: int = Field(3, ge=1, description="RegUNet levels; size must be a multiple of 2**depth")
    diffeomorphic: bool = Field(False, description="predict a stationary velocity integrated by scaling and squaring")
    integration_steps: int = Field(7, ge=1, description="squarings of the integration (diffeomorphic)")
    similarity: Literal["mi", "lncc"] = Field("mi", description="global mutual information or local NCC (2D)")
    similarity_weight: float = Field(1.0, ge=0)
    mi_bins: int = Field(23, ge=4, description="Parzen bins of the mutual information")
    lncc_kernel: int = Field(9, ge=3, description="window side of the local NCC, pixels, odd")
    bending_weight: float = Field(1.0, ge=0, description="weight of the size-normalised bending energy")
    dice_weight: float = Field(1.0, ge=0, description="weight of the soft Dice loss of the warped labels")
    shape_weight: float = Field(0.0, ge=0, description="weight of the shape-VAE latent distance")
    shape_vae: str | None = Field(
        None, validate_default=True, description="shape-vae bundle (folder or installed name) or training checkpoint"
    )
    texture_weight: float = Field(0.0, ge=0, description="weight of the adversarial texture term; > 0 adds the critic")
    discriminator_channels: int = Field(16, ge=1, description="channels of the patch discriminator's first layer")
    discriminator_layers: int = Field(3, ge=1, description="convolution layers of the patch discriminator")
    epe_weight: float = Field(0.0, ge=0, description="weight of the endpoint error (pixels) on simulated pairs")
    camus_root: str | None = Field(None, description="CAMUS folder (default: <shared data>/camus_train)")
    camus_patients: int | None = Field(None, ge=0, description="first training-split patients used (default: all)")
    val_camus_patients: int | None = Field(None, ge=0, description="validation patients used (default: all 20)")
    synthetic_pairs: int = Field(64, ge=0, description="simulated ED/ES training pairs")
    synthetic_random_pairs: int = Field(64, ge=0, description="simulated training pairs at random phases")
    val_synthetic_pairs: int = Field(16, ge=0, description="held-out simulated ED/ES validation pairs")
    flip: bool = Field(True, description="mirror half the training pairs left-right")
    swap: bool = Field(True, description="exchange fixed and moving of half the CAMUS training pairs")
    log_gamma: float = Field(0.3, ge=0, description="gain-curve augmentation: gamma = exp(U(-x, x))")

    @field_validator("lncc_kernel")
    @classmethod
    def _odd(cls, kernel: int) -> int:
        if kernel % 2 == 0:
            raise ValueError(f"lncc_kernel must be odd, got {kernel}")
        return kernel

    @field_validator("shape_vae")
    @classmethod
    def _shape_needs_a_vae(cls, vae: str | None, info: ValidationInfo) -> str | None:
        weight = info.data.get("shape_weight", 0.0)
        if weight > 0 and vae is None:
            raise ValueError(f"shape_weight {weight} needs shape_vae (a shape-vae bundle or checkpoint)")
        return vae

    @model_validator(mode="after")
    def _size_fits_depth(self) -> RegistrationArgs:
        if self.size % 2**self.depth:
            raise ValueError(f"size {self.size} must be a multiple of 2**depth = {2**self.depth}")
        return self


@register_task
class RegistrationTask(Task):
    """Train :class:`RegistrationNetwork` on CAMUS and simulated pairs (see the module docstring)."""

    name = TASK
    Args = RegistrationArgs

    def __init__(self, args: RegistrationArgs, seed: int) -> None:
        super().__init__(args, seed)
        self.bending = BendingEnergy(normalize=True)
        self.dice = DiceLoss(include_background=False)
        self.adversarial = PatchAdversarialLoss(criterion="least_squares")
        self._similarities: dict[tuple[str, int, int], nn.Module] = {}

    def _network_args(self) -> dict[str, object]:
        args = self.args
        return {
            "channels": args.channels,
            "depth": args.depth,
            "diffeomorphic": args.diffeomorphic,
            "integration_steps": args.integration_steps,
        }

    def build_networks(self) -> dict[str, nn.Module]:
        networks: dict[str, nn.Module] = {NETWORK: RegistrationNetwork(**self._network_args())}
        if self.args.texture_weight > 0:
            networks[CRITIC] = PatchDiscriminator(
                spatial_dims=2,
                channels=self.args.discriminator_channels,
                in_channels=1,
                num_layers_d=self.args.discriminator_layers,
            )
        return networks

    def build_frozen_networks(self) -> dict[str, nn.Module]:
        if self.args.shape_vae is None:
            return {}
        return {SHAPE_LOSS: ShapeLatentLoss.from_source(self.args.shape_vae)}

    def optimizer_networks(self, network_names: Sequence[str]) -> dict[str, list[str]]:
        if CRITIC in network_names:
            return {NETWORK: [NETWORK], CRITIC: [CRITIC]}
        return super().optimizer_networks(network_names)

    # -- data ------------------------------------------------------------------------------------
    def build_datasets(self, args: RegistrationArgs) -> tuple[Dataset, Dataset | None]:
        if self.seed == HELD_OUT_SYNTHETIC_SEED:
            raise ConfigError(f"seed {HELD_OUT_SYNTHETIC_SEED} draws the held-out simulated pairs; choose another")
        root = Path(args.camus_root) if args.camus_root else default_camus_root()
        train_patients, val_patients = camus_split(root)
        size = args.size
        train = [
            PairDataset(camus_pairs(root, train_patients[: args.camus_patients], size), 0),
            PairDataset(synthetic_pairs(self.seed, args.synthetic_pairs, size), 1),
            PairDataset(synthetic_pairs(self.seed, args.synthetic_random_pairs, size, random_phases=True), 1),
        ]
        val = [
            PairDataset(camus_pairs(root, val_patients[: args.val_camus_patients], size), 0),
            PairDataset(synthetic_pairs(HELD_OUT_SYNTHETIC_SEED, args.val_synthetic_pairs, size), 1),
        ]
        train = [dataset for dataset in train if len(dataset)]
        val = [dataset for dataset in val if len(dataset)]
        if not train:
            raise ConfigError(f"the {TASK} task needs training pairs: CAMUS patients or simulated pairs above 0")
        return ConcatDataset(train), ConcatDataset(val) if val else None

    # -- losses ----------------------------------------------------------------------------------
    def _similarity(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        args = self.args
        key = (args.similarity, args.mi_bins, args.lncc_kernel)  # a stage may change them
        if key not in self._similarities:
            self._similarities[key] = (
                GlobalMutualInformationLoss(num_bins=args.mi_bins)
                if args.similarity == "mi"
                else LocalNCCLoss(kernel_size=args.lncc_kernel)
            )
        return self._similarities[key](warped, fixed)

    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        """The weighted loss of the registration network; first the discriminator's update when there is one."""
        args = self.args
        if args.texture_weight > 0 and CRITIC not in ctx.networks:
            raise ConfigError("texture_weight must be set in the top-level task_args to build the discriminator")
        if args.shape_weight > 0 and SHAPE_LOSS not in ctx.frozen:
            raise ConfigError("shape_vae must be set in the top-level task_args to load the shape VAE")
        batch = augment_pairs(batch, flip=args.flip, swap=args.swap, log_gamma=args.log_gamma)
        fixed, moving = batch["fixed"], batch["moving"]
        displacement = ctx.networks[NETWORK](torch.cat([fixed, moving], dim=1)).float()
        warped = warp_image(moving, displacement)
        fixed_soft = labels_to_one_hot(batch["fixed_labels"][:, None], NUM_CLASSES)
        warped_soft = warp_soft_labels(labels_to_one_hot(batch["moving_labels"][:, None], NUM_CLASSES), displacement)

        losses = {
            "similarity": self._similarity(warped, fixed),
            "bending": self.bending(displacement),
            "dice": self.dice(warped_soft, fixed_soft),
        }
        loss = (
            args.similarity_weight * losses["similarity"]
            + args.bending_weight * losses["bending"]
            + args.dice_weight * losses["dice"]
        )
        if args.shape_weight > 0:
            losses["shape"] = ctx.frozen[SHAPE_LOSS](fixed_soft, warped_soft)
            loss = loss + args.shape_weight * losses["shape"]
        if args.epe_weight > 0:  # zero for a batch without simulated pairs (every process logs the same keys)
            has_truth = batch["has_displacement"]
            endpoint = (displacement - batch["displacement"]).norm(dim=1).mean((1, 2))
            losses["epe"] = (endpoint * has_truth).sum() / has_truth.sum().clamp_min(1)
            loss = loss + args.epe_weight * losses["epe"]
        if CRITIC in ctx.networks:
            # both passes see fixed and warped images in one batch, so BatchNorm normalises them alike
            critic = ctx.networks[CRITIC]
            real, fake = critic(torch.cat([fixed, warped.detach()]))[-1].float().chunk(2)
            losses["discriminator"] = 0.5 * (
                self.adversarial(real, target_is_real=True, for_discriminator=True)
                + self.adversarial(fake, target_is_real=False, for_discriminator=True)
            )
            ctx.optimize(losses["discriminator"], CRITIC)
            _, fake = critic(torch.cat([fixed, warped]))[-1].float().chunk(2)
            losses["texture"] = self.adversarial(fake, target_is_real=True, for_discriminator=False)
            loss = loss + args.texture_weight * losses["texture"]
        losses["loss"] = loss
        ctx.optimize(loss, NETWORK if CRITIC in ctx.networks else "main")
        return losses

    # -- validation ------------------------------------------------------------------------------
    def validation_step(self, batch: Mapping[str, torch.Tensor], ctx: ValidationContext) -> ValidationOutput:
        fixed, moving, source = batch["fixed"], batch["moving"], batch["source"]
        fixed_labels, moving_labels = batch["fixed_labels"][:, None], batch["moving_labels"][:, None]
        displacement = ctx[NETWORK](torch.cat([fixed, moving], dim=1)).float()
        warped_labels = warp_labels(moving_labels, displacement, NUM_CLASSES)
        dice = {
            "": dice_score(warped_labels, fixed_labels, NUM_CLASSES),
            "_identity": dice_score(moving_labels, fixed_labels, NUM_CLASSES),
        }
        metrics = {"folding_percent": 100 * folding_fraction(displacement)}
        for index, name in enumerate(SOURCES):
            here = source == index
            for suffix, scores in dice.items():
                for column, structure in ((0, "lv"), (1, "myo")):
                    metrics[f"{name}_dice_{structure}{suffix}"] = torch.where(here, scores[:, column], torch.nan)
        truth = batch["has_displacement"] > 0
        for suffix, estimate in (("", displacement), ("_identity", torch.zeros_like(displacement))):
            endpoint = (estimate - batch["displacement"]).norm(dim=1).mean((1, 2))
            metrics[f"synthetic_epe_px{suffix}"] = torch.where(truth, endpoint, torch.nan)
        images = {}
        if ctx.batch_index == 0:
            warped = warp_image(moving, displacement)
            frames = torch.cat([fixed[0, 0], moving[0, 0], warped[0, 0].clamp(0, 1)], dim=-1)
            labels = torch.cat([fixed_labels[0, 0], moving_labels[0, 0], warped_labels[0, 0]], dim=-1)
            images["fixed_moving_warped"] = torch.cat([frames, labels.float() / (NUM_CLASSES - 1)], dim=-2)
        return ValidationOutput(metrics=metrics, images=images)

    # -- export ----------------------------------------------------------------------------------
    def export_spec(self) -> ExportSpec:
        size = self.args.size
        return ExportSpec(
            network=NETWORK,
            architecture=ARCHITECTURE,
            architecture_module="deepultrasound.registration.networks",
            architecture_args=self._network_args(),
            description=f"[fixed, moving] B-mode (B, 2, H, W) in [0, 1], H and W multiples of {2**self.args.depth} "
            "-> displacement (B, 2, H, W) in pixels, channel 0 lateral, channel 1 axial, moving(p + u(p)) ~ fixed(p)",
            example_inputs=(torch.zeros(2, 2, size, size),),
            input_names=["pair"],
            output_names=["displacement"],
            normalisation=dict(NORMALISATION),
            task=TASK,
            inference=RegistrationInference(
                input_size=(size, size),
                channel_order=["fixed", "moving"],
                diffeomorphic=self.args.diffeomorphic,
                label_classes=LABEL_CLASSES,
            ),
        )
