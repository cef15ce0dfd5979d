"""A toy diffusion-like task: DDPM noise prediction on tiny synthetic images, with an EMA copy.

Not a capability: the fixture of the trainer's step-based tests (schedules, EMA of BatchNorm
statistics, sample images, per-step resume) and of exporting a bundle with an integer input
(the timestep, ``(B,)`` int64, no channel axis). A run of 50 steps takes seconds on a CPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDPMScheduler
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from deepultrasound.runtime.architectures import register_architecture
from deepultrasound.training.task import (
    ExportSpec,
    StepContext,
    Task,
    TaskArgs,
    ValidationContext,
    ValidationOutput,
    register_task,
)

TIMESTEPS = 100
SIZE = 16


@register_architecture("toy.tiny-denoiser")
class TinyDenoiser(nn.Module):
    """Predicts the noise ``(B, 1, H, W)`` of a noisy image ``(B, 1, H, W)`` at timesteps ``(B,)`` int64.

    Two convolutions around a BatchNorm, with a sinusoidal timestep embedding added per channel.
    MONAI's DiffusionModelUNet at its smallest (channels (8, 16), no attention) takes ~0.23 s per
    training step on two CPU cores, too slow for a test fixture of ~150 steps.
    """

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        half = channels // 2
        self.register_buffer("frequencies", torch.exp(-math.log(1000.0) * torch.arange(half) / half), persistent=False)
        self.inp = nn.Conv2d(1, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)
        self.time = nn.Linear(channels, channels)
        self.out = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, image: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        angles = timestep.to(image.dtype)[:, None] * self.frequencies.to(image.dtype)[None]
        embedding = self.time(torch.cat([angles.sin(), angles.cos()], dim=1))
        return self.out(F.silu(self.norm(self.inp(image)) + embedding[:, :, None, None]))


class Blobs(Dataset):
    """Deterministic smooth images in [0, 1]: sample ``i`` depends only on (seed, split, i).

    Validation items also carry a fixed noise and timestep, so its figures are deterministic.
    """

    def __init__(self, seed: int, split: str, size: int) -> None:
        self.base = seed * 7919 + {"train": 0, "val": 1}[split] * 104_729
        self.size = size
        self.split = split

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.base + index)
        rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
        centre = torch.rand(2, generator=gen) * SIZE
        image = torch.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / 12.0)[None]
        item = {"image": image}
        if self.split == "val":
            item["noise"] = torch.randn(1, SIZE, SIZE, generator=gen)
            item["timestep"] = torch.tensor(index * 7 % TIMESTEPS)
        return item


class DenoisingArgs(TaskArgs):
    updates: int = Field(1, ge=1, description="optimiser updates per batch (as truncated back-propagation makes)")
    train_samples: int = Field(64, ge=1)
    val_samples: int = Field(8, ge=1)


@register_task
class ToyDenoisingTask(Task):
    """Predict the noise DDPM added to an image at a random timestep; the EMA copy is validated
    (noise MSE, and the MSE of a frozen 3 x 3 mean filter as a baseline) and returns sample images."""

    name = "toy-denoising"
    Args = DenoisingArgs

    def __init__(self, args: DenoisingArgs, seed: int) -> None:
        super().__init__(args, seed)
        self.scheduler = DDPMScheduler(num_train_timesteps=TIMESTEPS)

    def build_networks(self) -> dict[str, nn.Module]:
        return {"denoiser": TinyDenoiser()}

    def build_frozen_networks(self) -> dict[str, nn.Module]:
        blur = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        nn.init.constant_(blur.weight, 1 / 9)
        return {"blur": blur}

    def ema_networks(self) -> list[str]:
        return ["denoiser"]

    def build_datasets(self, args: DenoisingArgs) -> tuple[Dataset, Dataset]:
        return Blobs(self.seed, "train", args.train_samples), Blobs(self.seed, "val", args.val_samples)

    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        image = batch["image"]
        timestep = torch.randint(0, TIMESTEPS, (image.shape[0],), device=image.device)
        noise = torch.randn_like(image)
        for _ in range(self.args.updates):
            predicted = ctx.networks["denoiser"](self.scheduler.add_noise(image, noise, timestep), timestep)
            loss = F.mse_loss(predicted.float(), noise)
            ctx.optimize(loss)
        return {"mse": loss}

    def validation_step(self, batch: Mapping[str, torch.Tensor], ctx: ValidationContext) -> ValidationOutput:
        image, noise, timestep = batch["image"], batch["noise"], batch["timestep"]
        noisy = self.scheduler.add_noise(image, noise, timestep)
        error = (ctx.networks["denoiser"](noisy, timestep).float() - noise).square().mean(dim=(1, 2, 3))
        blurred = (ctx.frozen["blur"](noisy) - image).square().mean(dim=(1, 2, 3))
        images = {"clean_0": image[0, 0], "noisy_0": noisy[0, 0].clamp(0, 1)} if ctx.batch_index == 0 else {}
        return ValidationOutput(metrics={"noise_mse": error, "blurred_mse": blurred}, images=images)

    def export_spec(self) -> ExportSpec:
        return ExportSpec(
            network="denoiser",
            architecture="toy.tiny-denoiser",
            architecture_module=__name__,
            architecture_args={},
            description="noise (B, 1, H, W) of a noisy image (B, 1, H, W) at DDPM timesteps (B,) int64",
            example_inputs=(torch.zeros(1, 1, SIZE, SIZE), torch.zeros(1, dtype=torch.int64)),
            input_names=["image", "timestep"],
            output_names=["noise"],
            input_ranges={"timestep": (0, TIMESTEPS - 1)},
        )
