"""The ``bmode-features`` training task: the B-mode feature network of the super-resolution perceptual loss.

A :class:`~deepultrasound.superres.features.BModeAutoEncoder` learns to restore B-mode patches
(the training patches of the ``superres`` task: simulated beam-space images and the BUSI training
split, never its held-out split) from a corrupted copy: Gaussian noise added and a random
fraction of whole lines set to 0. Restoring lost lines from their neighbours and speckle from
noise makes its encoder describe the lateral structure and texture that super-resolution must
reproduce; :class:`~deepultrasound.superres.features.FeatureLoss` compares those features.

Validation restores fixed corruptions of the held-out patches and reports the mean squared
error against the truth of the corrupted input and of the network: ``val/mse_<corrupted|ours>``.
Its images show, for the first sample, corrupted | restored | truth.

Example config: ``deepultrasound/configs/bmode_features.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from deepultrasound.superres.features import FEATURES, BModeAutoEncoder
from deepultrasound.superres.training_task import NORMALISATION, PatchArgs, patch_datasets
from deepultrasound.training.task import (
    ExportSpec,
    StepContext,
    Task,
    ValidationContext,
    ValidationOutput,
    register_task,
)

NETWORK = "autoencoder"
PATCH_FACTOR = 2
"""Lateral factor the shared patch sets are made with; this task reads only their full-resolution ``high``."""


class BModeFeatureArgs(PatchArgs):
    """``task_args`` of the ``bmode-features`` task (the patch settings of :class:`PatchArgs` and these)."""

    channels: tuple[int, ...] = Field((16, 32, 64), min_length=2, description="channels of each encoder level")
    noise_sigma: float = Field(0.05, ge=0, description="std of the added Gaussian noise, B-mode units")
    masked_lines: float = Field(0.25, ge=0, lt=1, description="probability that a line is set to 0")


def corrupt(
    image: torch.Tensor, noise_sigma: float, masked_lines: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``image`` ``(B, 1, H, W)`` plus Gaussian noise of std ``noise_sigma``, each line (column) set to 0 with
    probability ``masked_lines``; same shape. The draws are made on the CPU (from ``generator``, or the global RNG)."""
    batch, width = image.shape[0], image.shape[-1]
    noise = torch.randn(image.shape, generator=generator) * noise_sigma
    kept = torch.rand(batch, 1, 1, width, generator=generator) >= masked_lines
    return (image + noise.to(image)) * kept.to(image)


@register_task
class BModeFeatureTask(Task):
    """Train a :class:`BModeAutoEncoder` to restore corrupted B-mode patches (MSE); the autoencoder is exported."""

    name = "bmode-features"
    Args = BModeFeatureArgs

    def build_networks(self) -> dict[str, nn.Module]:
        return {NETWORK: BModeAutoEncoder(self.args.channels)}

    def build_datasets(self, args: BModeFeatureArgs) -> tuple[Dataset, Dataset | None]:
        return patch_datasets(args, self.seed, PATCH_FACTOR, (0.0, 0.0), self.name)

    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        high = batch["high"]
        restored = ctx.networks[NETWORK](corrupt(high, self.args.noise_sigma, self.args.masked_lines)).float()
        loss = F.mse_loss(restored, high)
        ctx.optimize(loss)
        return {"mse": loss}

    def validation_step(self, batch: Mapping[str, torch.Tensor], ctx: ValidationContext) -> ValidationOutput:
        high = batch["high"]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + ctx.batch_index)  # the same every validation
        corrupted = corrupt(high, self.args.noise_sigma, self.args.masked_lines, generator)
        restored = ctx[NETWORK](corrupted).float()
        metrics = {
            f"mse_{name}": (estimate - high).square().mean(dim=(1, 2, 3))
            for name, estimate in (("corrupted", corrupted), ("ours", restored))
        }
        images = {}
        if ctx.batch_index == 0:
            panel = torch.cat([corrupted[0, 0], restored[0, 0], high[0, 0]], dim=-1)
            images["corrupted_restored_truth"] = panel.clamp(0.0, 1.0)
        return ValidationOutput(metrics=metrics, images=images)

    def export_spec(self) -> ExportSpec:
        return ExportSpec(
            network=NETWORK,
            architecture=FEATURES,
            architecture_module="deepultrasound.superres.features",
            architecture_args={"channels": list(self.args.channels)},
            description="B-mode feature network: restores (B, 1, H, W) B-mode in [0, 1], H and W multiples of "
            f"{2 ** (len(self.args.channels) - 1)}; its encoder serves the super-resolution perceptual loss",
            example_inputs=(torch.zeros(1, 1, 32, 32),),
            input_names=["image"],
            output_names=["restored"],
            normalisation=dict(NORMALISATION),
            task="bmode-features",
        )
