"""A small real task: learn the known translation between two speckle-like images.

Each sample is a pair (fixed, moving) where ``moving`` is ``fixed`` translated by a known
sub-pixel shift; a MONAI :class:`~monai.networks.nets.Regressor` learns to predict it. It trains
to sub-pixel accuracy in a minute on a CPU, which makes it the trainer's demonstration and the
fixture of its tests (single process, DDP, resume, export).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from monai.networks.nets import Regressor
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from deepultrasound.runtime.architectures import register_architecture
from deepultrasound.training.task import ExportSpec, StepContext, Task, TaskArgs, register_task

register_architecture("monai.Regressor")(Regressor)


class TranslationArgs(TaskArgs):
    image_size: int = Field(32, ge=16, le=256, description="side of the square images, pixels")
    max_shift: float = Field(3.0, gt=0, le=8, description="translations are uniform in [-max_shift, max_shift] pixels")
    speckle_sigma: float = Field(1.0, gt=0, description="Gaussian smoothing of the random texture, pixels")
    train_samples: int = Field(512, ge=1)
    val_samples: int = Field(128, ge=1)
    channels: tuple[int, ...] = (8, 16, 32)


class TranslationPairs(Dataset):
    """Deterministic pairs: sample ``i`` depends only on (seed, split, i).

    Items are ``{"pair": (2, S, S) float32 [fixed, moving], "shift": (2,) float32 pixels}`` with
    shift channel 0 lateral (columns, +x), channel 1 axial (rows, +y); ``moving(x) = fixed(x - shift)``.
    """

    def __init__(self, args: TranslationArgs, seed: int, split: str, size: int) -> None:
        self.args = args
        self.base_seed = seed * 7919 + {"train": 0, "val": 1}[split] * 104_729
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        args = self.args
        gen = torch.Generator().manual_seed(self.base_seed + index)
        margin = int(args.max_shift) + 4
        side = args.image_size + 2 * margin
        texture = _gaussian_blur(torch.randn(1, 1, side, side, generator=gen), args.speckle_sigma)
        texture = (texture - texture.mean()) / texture.std()
        shift = (torch.rand(2, generator=gen) * 2 - 1) * args.max_shift
        moving = translate(texture, shift)
        crop = slice(margin, margin + args.image_size)
        pair = torch.cat([texture, moving], dim=1)[0, :, crop, crop]
        return {"pair": pair.contiguous(), "shift": shift}


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    image = F.conv2d(F.pad(image, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(image, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))


def translate(image: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Bilinear translation of ``image`` (1, 1, H, W) by ``shift`` (2,) = (lateral, axial) pixels."""
    _, _, height, width = image.shape
    rows = torch.arange(height, dtype=image.dtype) - shift[1]
    cols = torch.arange(width, dtype=image.dtype) - shift[0]
    grid_y, grid_x = torch.meshgrid(rows, cols, indexing="ij")
    # normalised coordinates with align_corners=True: -1 and 1 are the centres of the corner pixels
    grid = torch.stack([2 * grid_x / (width - 1) - 1, 2 * grid_y / (height - 1) - 1], dim=-1)
    return F.grid_sample(image, grid[None], mode="bilinear", padding_mode="border", align_corners=True)


@register_task
class TranslationTask(Task):
    """Regress the translation (lateral, axial) in pixels between a fixed and a moving image."""

    name = "translation"
    Args = TranslationArgs

    def _architecture_args(self) -> dict:
        size = self.args.image_size
        channels = list(self.args.channels)
        return {"in_shape": [2, size, size], "out_shape": [2], "channels": channels, "strides": [2] * len(channels)}

    def build_networks(self) -> dict[str, nn.Module]:
        return {"regressor": Regressor(**self._architecture_args())}

    def build_datasets(self, args: TranslationArgs) -> tuple[Dataset, Dataset]:
        return (
            TranslationPairs(args, self.seed, "train", args.train_samples),
            TranslationPairs(args, self.seed, "val", args.val_samples),
        )

    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        predicted = ctx.networks["regressor"](batch["pair"])
        loss = F.mse_loss(predicted, batch["shift"])
        ctx.optimize(loss)
        return {"mse": loss}

    def validation_step(
        self, batch: Mapping[str, torch.Tensor], networks: Mapping[str, nn.Module]
    ) -> dict[str, torch.Tensor]:
        predicted = networks["regressor"](batch["pair"])
        return {
            "endpoint_error_px": (predicted - batch["shift"]).norm(dim=1),
            "endpoint_error_zero_px": batch["shift"].norm(dim=1),  # error of always predicting no motion
        }

    def export_spec(self) -> ExportSpec:
        size = self.args.image_size
        return ExportSpec(
            network="regressor",
            architecture="monai.Regressor",
            architecture_module=__name__,
            architecture_args=self._architecture_args(),
            example_inputs=(torch.zeros(1, 2, size, size),),
            input_names=["pair"],
            output_names=["shift"],
            normalisation={"kind": "none"},
            dynamic_spatial=False,  # the regressor ends in a dense layer sized for image_size
            description=(
                "translation (lateral, axial) in pixels between two images; input (B, 2, S, S) = [fixed, moving]"
            ),
        )
