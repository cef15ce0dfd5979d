"""The ``shape-vae`` training task: the :class:`~deepultrasound.registration.shape_vae.ShapeVAE` of heart masks.

Training masks: the label maps of the CAMUS training split (ED and ES of both views; the validation
patients are never read here) and simulated label maps (:func:`~deepultrasound.registration.data.simulated_labels`),
as soft [LV cavity, myocardium] masks on the VAE's grid, each sample under a random affine
transformation (rotation, isotropic scale, translation; bilinear on the soft masks, zeros outside).
Loss: binary cross-entropy of the reconstruction plus ``beta`` times the KL divergence
(:func:`~deepultrasound.registration.shape_vae.vae_loss_terms`).

Validation: the CAMUS validation patients' maps and held-out simulated maps, unaugmented: the
loss terms and the Dice of the thresholded reconstruction (posterior mean decoded) per structure,
``val/<camus|simulated>_dice_<lv|myo>``; images: masks | reconstruction of the first sample.

Example config: ``deepultrasound/configs/echo_shape_vae.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from deepultrasound.errors import ConfigError
from deepultrasound.io.camus import PHASES, VIEWS, CamusDataset
from deepultrasound.registration.data import (
    HELD_OUT_SYNTHETIC_SEED,
    NUM_CLASSES,
    camus_split,
    default_camus_root,
    simulated_labels,
)
from deepultrasound.registration.preprocessing import resize_labels
from deepultrasound.registration.shape_vae import ARCHITECTURE, NETWORK, STRUCTURES, TASK, ShapeVAE, vae_loss_terms
from deepultrasound.spatial import labels_to_one_hot
from deepultrasound.training.task import (
    ExportSpec,
    StepContext,
    Task,
    TaskArgs,
    ValidationContext,
    ValidationOutput,
    register_task,
)

SOURCES = ("camus", "simulated")
"""Validation sources, by the index items carry in ``source``."""


class ShapeVAEArgs(TaskArgs):
    """``task_args`` of the ``shape-vae`` task."""

    size: int = Field(64, ge=16, description="side of the square mask grid, pixels")
    latent_size: int = Field(32, ge=1, description="latent units")
    channels: tuple[int, ...] = Field((16, 32, 64, 128), min_length=2, description="encoder channels per level")
    beta: float = Field(0.01, ge=0, description="weight of the KL term (per latent unit) against the BCE (per pixel)")
    camus_root: str | None = Field(None, description="CAMUS folder (default: <shared data>/camus_train)")
    camus_patients: int | None = Field(None, ge=0, description="first training-split patients used (default: all)")
    simulated_maps: int = Field(256, ge=0, description="simulated training label maps")
    val_simulated_maps: int = Field(32, ge=0, description="held-out simulated validation label maps")
    val_camus_patients: int | None = Field(None, ge=0, description="validation patients used (default: all 20)")
    samples_per_epoch: int = Field(1024, ge=1, description="augmented training masks per epoch")
    rotation_deg: float = Field(12.0, ge=0, description="largest rotation of the augmentation")
    scale: float = Field(0.12, ge=0, lt=1, description="largest relative scale change of the augmentation")
    translation: float = Field(0.08, ge=0, lt=1, description="largest shift, fraction of the grid side")


def masks_of_labels(labels: torch.Tensor) -> torch.Tensor:
    """``(N, S, S)`` CAMUS label maps -> ``(N, 2, S, S)`` float32 [LV cavity, myocardium] masks."""
    return labels_to_one_hot(labels[:, None], NUM_CLASSES)[:, list(STRUCTURES)]


def camus_label_maps(root: Path, patients: list[str], size: int) -> torch.Tensor:
    """``(N, size, size)`` label maps of every view and phase of ``patients`` (:func:`resize_labels`)."""
    dataset = CamusDataset(root)
    maps = (
        resize_labels(dataset.load(patient, view, phase)[1].array, (size, size), NUM_CLASSES)
        for patient in patients
        for view in VIEWS
        for phase in PHASES
    )
    return _stack(maps, size)


class ShapeMasks(Dataset):
    """Masks of label maps; ``samples`` > 0: that many items, item ``i`` map ``i mod N`` under the affine
    transformation drawn from ``(seed, i)``; ``samples`` None: each map as it is. Items: ``masks``
    ``(2, S, S)`` float32 and ``source`` (int64 index into :data:`SOURCES`)."""

    def __init__(
        self, masks: torch.Tensor, source: int, seed: int, samples: int | None = None, args: ShapeVAEArgs | None = None
    ):
        self.masks = masks
        self.source = source
        self.seed = seed
        self.samples = samples
        self.args = args

    def __len__(self) -> int:
        return self.samples if self.samples is not None else len(self.masks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        masks = self.masks[index % len(self.masks)]
        if self.samples is not None:
            masks = self._augment(masks, torch.Generator().manual_seed(self.seed * 1_000_003 + index))
        return {"masks": masks, "source": torch.tensor(self.source)}

    def _augment(self, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``masks`` ``(2, S, S)`` rotated, scaled and shifted about the grid centre (``affine_grid`` coordinates)."""
        args = self.args
        angle, scale, shift_x, shift_y = (torch.rand(4, generator=generator) * 2 - 1).tolist()
        angle = math.radians(angle * args.rotation_deg)
        zoom = 1 + scale * args.scale
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        shift = 2 * args.translation  # the grid spans [-1, 1]
        theta = torch.tensor([[cos, -sin, shift * shift_x], [sin, cos, shift * shift_y]])[None]
        grid = F.affine_grid(theta, [1, *masks.shape], align_corners=False)
        return F.grid_sample(masks[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


@register_task
class ShapeVAETask(Task):
    """Train the shape VAE on augmented CAMUS and simulated [LV cavity, myocardium] masks."""

    name = TASK
    Args = ShapeVAEArgs

    def _network_args(self) -> dict[str, object]:
        return {"size": self.args.size, "latent_size": self.args.latent_size, "channels": list(self.args.channels)}

    def build_networks(self) -> dict[str, nn.Module]:
        return {NETWORK: ShapeVAE(**self._network_args())}

    def build_datasets(self, args: ShapeVAEArgs) -> tuple[Dataset, Dataset | None]:
        if self.seed == HELD_OUT_SYNTHETIC_SEED:
            raise ConfigError(f"seed {HELD_OUT_SYNTHETIC_SEED} draws the held-out simulated hearts; choose another")
        root = Path(args.camus_root) if args.camus_root else default_camus_root()
        train_patients, val_patients = camus_split(root)
        train_labels = [camus_label_maps(root, train_patients[: args.camus_patients], args.size)]
        train_labels.append(_stack(simulated_labels(self.seed, args.simulated_maps, args.size), args.size))
        masks = masks_of_labels(torch.cat(train_labels))
        if not len(masks):
            raise ConfigError("the shape-vae task needs training masks: set camus_patients or simulated_maps above 0")
        train = ShapeMasks(masks, 0, self.seed, args.samples_per_epoch, args)
        val_sets = [
            camus_label_maps(root, val_patients[: args.val_camus_patients], args.size),
            _stack(simulated_labels(HELD_OUT_SYNTHETIC_SEED, args.val_simulated_maps, args.size), args.size),
        ]
        val = [ShapeMasks(masks_of_labels(labels), source, self.seed) for source, labels in enumerate(val_sets)]
        val = [dataset for dataset in val if len(dataset)]
        return train, ConcatDataset(val) if val else None

    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        masks = batch["masks"]
        reconstruction, mean, log_variance = ctx.networks[NETWORK](masks)
        bce, kl = vae_loss_terms(reconstruction.float(), masks, mean.float(), log_variance.float())
        loss = bce + self.args.beta * kl
        ctx.optimize(loss)
        return {"loss": loss, "bce": bce, "kl": kl}

    def validation_step(self, batch: Mapping[str, torch.Tensor], ctx: ValidationContext) -> ValidationOutput:
        masks, source = batch["masks"], batch["source"]
        reconstruction, _, _ = ctx[NETWORK](masks)
        reconstruction = reconstruction.float()
        bce = F.binary_cross_entropy(reconstruction.clamp(1e-6, 1 - 1e-6), masks, reduction="none").mean((1, 2, 3))
        predicted, truth = reconstruction > 0.5, masks > 0.5
        total = (predicted.sum((2, 3)) + truth.sum((2, 3))).float()
        overlap = torch.where(total > 0, 2 * (predicted & truth).sum((2, 3)) / total.clamp_min(1), torch.nan)
        metrics = {}
        for index, name in enumerate(SOURCES):
            here = source == index
            metrics[f"{name}_bce"] = torch.where(here, bce, torch.nan)
            for channel, structure in enumerate(("lv", "myo")):
                metrics[f"{name}_dice_{structure}"] = torch.where(here, overlap[:, channel], torch.nan)
        images = {}
        if ctx.batch_index == 0:
            panels = (masks[0, 0], masks[0, 1], reconstruction[0, 0], reconstruction[0, 1])
            images["masks_lv_myo_reconstruction_lv_myo"] = torch.cat(panels, dim=-1)
        return ValidationOutput(metrics=metrics, images=images)

    def export_spec(self) -> ExportSpec:
        size = self.args.size
        return ExportSpec(
            network=NETWORK,
            architecture=ARCHITECTURE,
            architecture_module="deepultrasound.registration.shape_vae",
            architecture_args=self._network_args(),
            description=f"[LV cavity, myocardium] soft masks (B, 2, {size}, {size}) in [0, 1] -> (reconstruction, "
            "latent mean, latent log-variance); the frozen encoder of the registration's shape loss",
            example_inputs=(torch.zeros(2, len(STRUCTURES), size, size),),
            input_names=["masks"],
            output_names=["reconstruction", "mean", "log_variance"],
            dynamic_spatial=False,
            normalisation={
                "kind": "soft_masks",
                "description": f"per-pixel probabilities of the LV cavity and the myocardium on a {size} x {size} "
                "grid over the image's field of view (area-resampled one-hot CAMUS labels)",
            },
            task=TASK,
        )


def _stack(maps: Iterable[torch.Tensor], size: int) -> torch.Tensor:
    """Label maps from an iterator as one ``(N, size, size)`` tensor (``N`` may be 0)."""
    maps = list(maps)
    return torch.stack(maps) if maps else torch.zeros(0, size, size, dtype=torch.int64)
