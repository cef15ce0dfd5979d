"""The ``superres`` training task: an SRResNet generator that restores the lines a sparser acquisition lost.

Each training sample is a full-resolution B-mode patch (simulated beam-space images and real
BUSI images, :mod:`deepultrasound.superres.data`) and its degradation (every ``factor``-th line
kept after an optional beam-profile blur, :mod:`deepultrasound.superres.degradation`); the
generator maps the degraded patch back to the fine grid and is trained with an L1 or MSE loss
against the truth. An EMA copy of the generator is validated and exported.

SRGAN: with ``feature_weight`` > 0 the generator's loss adds a perceptual term, the MSE of the
features of a frozen network trained here on B-mode (:class:`~deepultrasound.superres.features.FeatureLoss`,
from a ``bmode-features`` bundle); with ``adversarial_weight`` > 0 an SRGAN discriminator is
trained alongside, with its own optimiser, and the generator's loss adds the adversarial term
(binary cross-entropy with logits, as SRGAN). Both weights 0 (the default) train the plain
SRResNet. The adversarial stage starts from a trained SRResNet through the config's
``init_from``; only the generator is exported.

Validation crops the centre of held-out simulated images and of the held-out BUSI split and
reports, per source (``simulated``, ``real``), PSNR and SSIM against the truth (B-mode in [0, 1],
``data_range`` 1; the network's output clipped to that range) of the linear and cubic
interpolations and of the network: ``val/<source>_<psnr|ssim>_<linear|cubic|ours>``. Its images
show, for the first sample of each source, the low-resolution input (each line repeated ``F``
times) | cubic | ours | truth.

Example configs: ``deepultrasound/configs/superres_srresnet_x4.yaml``, ``superres_srgan_x4.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from deepultrasound.errors import ConfigError
from deepultrasound.io.shared_data import shared_data_dir
from deepultrasound.losses.metrics import psnr, ssim
from deepultrasound.runtime.inference_specs import SuperResolutionInference
from deepultrasound.superres.data import (
    BUSI_FOLDER,
    SOURCES,
    Augmentation,
    Split,
    SuperResolutionPatches,
    real_images,
    simulated_images,
)
from deepultrasound.superres.degradation import PHASE, upsample_lines
from deepultrasound.superres.features import FeatureLoss
from deepultrasound.superres.networks import GENERATOR, SRGANDiscriminator, SRResNet
from deepultrasound.training.task import (
    ExportSpec,
    StepContext,
    Task,
    TaskArgs,
    ValidationContext,
    ValidationOutput,
    register_task,
)

NETWORK = "generator"
"""Name of the trained network (in checkpoints and the export spec) and, in an SRGAN, of its optimiser."""
CRITIC = "discriminator"
"""Name of the SRGAN discriminator and of its optimiser (``adversarial_weight`` > 0); never exported."""
FEATURE_LOSS = "features"
"""Name of the frozen :class:`~deepultrasound.superres.features.FeatureLoss` (``feature_bundle``)."""

NORMALISATION = {
    "kind": "bmode_unit",
    "description": "B-mode in [0, 1]: 8-bit display values / 255, or dB above -dynamic range, over the dynamic range",
}
"""The ``normalisation`` manifest entry: what the generator's input and output values mean."""

Size = tuple[int, int]
DATA_RANGE = 1.0
"""Span of B-mode values, the PSNR/SSIM ``data_range``."""


class PatchArgs(TaskArgs):
    """The B-mode patches a task trains and validates on (:func:`patch_datasets`)."""

    patch_size: Size = Field((64, 64), description="full-resolution training patch (rows, lines)")
    val_patch_size: Size = Field((128, 128), description="centred full-resolution validation crop (rows, lines)")
    simulated_shape: Size = Field((256, 128), description="simulated images (rows, lines)")
    simulated_images: int = Field(64, ge=0, description="simulated training images (patches are cut from them)")
    real_images: int = Field(400, ge=0, description="BUSI training images (first of the training split); 0: none")
    val_simulated_images: int = Field(8, ge=0, description="held-out simulated validation images")
    val_real_images: int = Field(16, ge=0, description="held-out BUSI validation images")
    data_folder: str | None = Field(None, description="BUSI folder (default: <shared data>/busi_train)")
    samples_per_epoch: int = Field(1024, ge=1, description="training patches per epoch")
    gain: float = Field(0.1, ge=0, le=1, description="largest gain change, fraction of the display range")
    depth_gain: float = Field(0.1, ge=0, le=1, description="largest top-to-bottom gain change of a patch")
    flip: bool = Field(True, description="mirror half of the training patches left-right")


class SuperResolutionArgs(PatchArgs):
    """``task_args`` of the ``superres`` task.

    ``adversarial_weight`` > 0 trains an SRGAN; it must be set in the top-level ``task_args`` (the
    discriminator is built with the networks; a stage may change the weight, not add the
    discriminator). ``feature_weight`` > 0 needs ``feature_bundle``.
    """

    factor: int = Field(4, ge=2, le=8, description="lateral factor F: one line in F is kept")
    blur_sigma_lines: float | tuple[float, float] = Field(
        (0.0, 0.0),
        description="Gaussian beam-profile blur before decimation, sigma in fine lines: one value, or a range "
        "[lowest, highest] drawn from per training patch (validation uses the highest)",
    )
    channels: int = Field(64, ge=1, description="generator feature channels")
    blocks: int = Field(16, ge=0, description="generator residual blocks")
    batch_norm: bool = Field(True, description="BatchNorm in the generator's blocks (SRResNet); false: EDSR's blocks")
    loss: Literal["l1", "mse"] = Field("l1", description="pixel loss against the full-resolution patch")
    adversarial_weight: float = Field(
        0.0, ge=0, description="weight of the generator's adversarial loss; > 0 trains an SRGAN discriminator"
    )
    discriminator_channels: int = Field(64, ge=1, description="channels of the discriminator's first convolutions")
    feature_weight: float = Field(0.0, ge=0, description="weight of the perceptual loss (FeatureLoss)")
    feature_bundle: str | None = Field(
        None, validate_default=True, description="bmode-features bundle: a folder or an installed bundle name"
    )
    feature_levels: int = Field(2, ge=1, description="encoder levels the perceptual loss compares, from the first")

    @field_validator("blur_sigma_lines")
    @classmethod
    def _blur_range(cls, blur: float | tuple[float, float]) -> tuple[float, float]:
        lowest, highest = (blur, blur) if isinstance(blur, (int, float)) else blur
        if not 0 <= lowest <= highest:
            raise ValueError(f"blur_sigma_lines must be >= 0 and a range [lowest, highest] in order, got {blur}")
        return (float(lowest), float(highest))

    @field_validator("feature_bundle")
    @classmethod
    def _features_need_a_bundle(cls, bundle: str | None, info: ValidationInfo) -> str | None:
        weight = info.data.get("feature_weight", 0.0)
        if weight > 0 and bundle is None:
            raise ValueError(f"feature_weight {weight} needs a feature_bundle (a bmode-features bundle)")
        return bundle


def patch_datasets(
    args: PatchArgs, seed: int, factor: int, blur_sigma_lines: tuple[float, float], task: str
) -> tuple[Dataset, Dataset | None]:
    """(training, validation) patch sets of ``args`` for a lateral factor and a blur range
    (:class:`SuperResolutionPatches`).

    Training: ``samples_per_epoch`` augmented patches shared among the sources in proportion to
    their image counts; validation: the centred crop of each held-out image, or None without any.
    ``task`` names the task in the error for a run without training images.
    """
    folder = Path(args.data_folder) if args.data_folder else shared_data_dir() / BUSI_FOLDER
    counts = {"simulated": args.simulated_images, "real": args.real_images}
    total = sum(counts.values())
    if total == 0:
        raise ConfigError(f"the {task} task needs training images: set simulated_images or real_images above 0")

    def patches(split: Split, source: str, count: int, samples: int | None = None) -> SuperResolutionPatches:
        """``samples`` augmented training patches of ``count`` images, or (None) each image's centred crop."""
        if source == "simulated":
            images = simulated_images(seed, split, count, args.simulated_shape)
        else:
            images = real_images(folder, split, count)
        augmentation = None if samples is None else Augmentation(args.gain, args.depth_gain, args.flip)
        size = args.patch_size if split == "train" else args.val_patch_size
        return SuperResolutionPatches(
            images, size, factor, blur_sigma_lines, samples or len(images), augmentation, seed, source
        )

    train = [
        patches("train", source, count, max(1, round(args.samples_per_epoch * count / total)))
        for source, count in counts.items()
        if count
    ]
    val_counts = {"simulated": args.val_simulated_images, "real": args.val_real_images}
    val = [patches("val", source, count) for source, count in val_counts.items() if count]
    return ConcatDataset(train), ConcatDataset(val) if val else None


@register_task
class SuperResolutionTask(Task):
    """Train :class:`~deepultrasound.superres.networks.SRResNet` on (degraded, full-resolution) B-mode pairs."""

    name = "superres"
    Args = SuperResolutionArgs

    def build_networks(self) -> dict[str, nn.Module]:
        networks: dict[str, nn.Module] = {NETWORK: SRResNet(**self._generator_args())}
        if self.args.adversarial_weight > 0:
            networks[CRITIC] = SRGANDiscriminator(self.args.discriminator_channels)
        return networks

    def _generator_args(self) -> dict[str, int | bool]:
        args = self.args
        return {"factor": args.factor, "channels": args.channels, "blocks": args.blocks, "batch_norm": args.batch_norm}

    def build_frozen_networks(self) -> dict[str, nn.Module]:
        if self.args.feature_bundle is None:
            return {}
        return {FEATURE_LOSS: FeatureLoss.from_bundle(self.args.feature_bundle, self.args.feature_levels)}

    def optimizer_networks(self, network_names: Sequence[str]) -> dict[str, list[str]]:
        if CRITIC in network_names:
            return {NETWORK: [NETWORK], CRITIC: [CRITIC]}
        return super().optimizer_networks(network_names)

    def ema_networks(self) -> list[str]:
        return [NETWORK]

    def build_datasets(self, args: SuperResolutionArgs) -> tuple[Dataset, Dataset | None]:
        return patch_datasets(args, self.seed, args.factor, args.blur_sigma_lines, self.name)

    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        """The pixel loss (and, when set, the perceptual and adversarial losses) of the generator.

        SRGAN (``adversarial_weight`` > 0): first the discriminator's update, binary cross-entropy
        with logits of the truth (label 1) and the detached estimate (label 0), then the
        generator's, whose adversarial loss is the cross-entropy of the estimate labelled 1. Both
        discriminator passes see truth and estimate in one batch, so its BatchNorm normalises them
        alike, and each pass of the (DDP-wrapped) discriminator has one backward.
        """
        args = self.args
        if args.adversarial_weight > 0 and CRITIC not in ctx.networks:
            raise ConfigError("adversarial_weight must be set in the top-level task_args to build the discriminator")
        if args.feature_weight > 0 and FEATURE_LOSS not in ctx.frozen:
            raise ConfigError("feature_bundle must be set in the top-level task_args to load the feature network")
        high = batch["high"]
        predicted = ctx.networks[NETWORK](batch["low"]).float()
        loss_function = F.l1_loss if args.loss == "l1" else F.mse_loss
        loss = loss_function(predicted, high)
        losses = {args.loss: loss}
        if args.feature_weight > 0:
            losses["feature"] = ctx.frozen[FEATURE_LOSS](predicted, high)
            loss = loss + args.feature_weight * losses["feature"]
        if CRITIC not in ctx.networks:
            ctx.optimize(loss)
            return losses
        real, fake = self._discriminate(ctx.networks[CRITIC], high, predicted.detach())
        losses["discriminator"] = F.binary_cross_entropy_with_logits(
            torch.cat([real, fake]), torch.cat([torch.ones_like(real), torch.zeros_like(fake)])
        )
        ctx.optimize(losses["discriminator"], CRITIC)
        _, fake = self._discriminate(ctx.networks[CRITIC], high, predicted)
        losses["adversarial"] = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
        losses["generator"] = loss + args.adversarial_weight * losses["adversarial"]
        ctx.optimize(losses["generator"], NETWORK)
        return losses

    @staticmethod
    def _discriminate(
        discriminator: nn.Module, high: torch.Tensor, estimate: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, 1)`` of the truth and of the estimate, both ``(B, 1, H, W)``, from one pass."""
        logits = discriminator(torch.cat([high, estimate])).float()
        return logits.chunk(2)

    def validation_step(self, batch: Mapping[str, torch.Tensor], ctx: ValidationContext) -> ValidationOutput:
        low, high, source = batch["low"], batch["high"], batch["source"]
        factor = self.args.factor
        width = high.shape[-1]
        estimates = {
            "linear": upsample_lines(low, factor, "linear")[..., :width],
            "cubic": upsample_lines(low, factor, "cubic")[..., :width],
            "ours": ctx[NETWORK](low).float()[..., :width],
        }
        metrics = {}
        for method, estimate in estimates.items():
            clipped = estimate.clamp(0.0, DATA_RANGE)
            for metric, function in (("psnr", psnr), ("ssim", ssim)):
                values = function(clipped, high, data_range=DATA_RANGE)
                for index, name in enumerate(SOURCES):
                    metrics[f"{name}_{metric}_{method}"] = torch.where(source == index, values, torch.nan)
        images = {}
        for index, name in enumerate(SOURCES):
            first = (source == index).nonzero()
            if len(first):  # the trainer keeps the first panel of each name
                i = int(first[0])
                nearest = low[i, 0].repeat_interleave(factor, -1)[:, :width]  # each line repeated F times
                panels = (nearest, estimates["cubic"][i, 0], estimates["ours"][i, 0], high[i, 0])
                images[f"{name}_low_cubic_ours_truth"] = torch.cat(panels, dim=-1).clamp(0.0, 1.0)
        return ValidationOutput(metrics=metrics, images=images)

    def export_spec(self) -> ExportSpec:
        factor = self.args.factor
        return ExportSpec(
            network=NETWORK,
            architecture=GENERATOR,
            architecture_module="deepultrasound.superres.networks",
            architecture_args=self._generator_args(),
            description=f"B-mode (B, 1, H, W) in [0, 1], lines along W -> (B, 1, H, {factor} W) on the fine grid",
            example_inputs=(torch.zeros(1, 1, 32, 16),),
            input_names=["image"],
            output_names=["fine"],
            normalisation=dict(NORMALISATION),
            task="superres",
            inference=SuperResolutionInference(
                axis="lateral", factor=factor, phase=PHASE, blur_sigma_lines=self.args.blur_sigma_lines
            ),
        )
