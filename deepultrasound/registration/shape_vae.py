"""Shape priors of the heart: a variational autoencoder of LV-cavity and myocardium masks, and the shape loss.

One VAE encodes both structures as the two channels of one ``(B, 2, 64, 64)`` input (LV cavity,
myocardium). One network rather than one per structure: the myocardium wraps the cavity, and a joint
latent code holds that relation (wall thickness against cavity size, the wall closing at the apex),
which two separate codes cannot; it also halves the cost of the loss and ships as one bundle.

:class:`ShapeLatentLoss` compares two sets of soft masks through the frozen encoder: the squared
distance between the latent means of the fixed frame's masks and of the warped moving frame's
(:func:`~deepultrasound.spatial.warp_soft_labels`), per latent unit. The warped masks are
differentiable in the displacement, so the loss trains a registration towards anatomically
plausible shapes. Masks on any ``(H, W)`` grid are area-resampled to the VAE's grid first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.networks.nets import VarAutoEncoder
from torch import nn

from deepultrasound.errors import BundleError, InputError
from deepultrasound.io.camus import CamusLabel
from deepultrasound.runtime.architectures import register_architecture
from deepultrasound.runtime.bundle import load_network_bundle
from deepultrasound.training.checkpoint import exported_weights, load_checkpoint
from deepultrasound.training.config import TrainConfig
from deepultrasound.training.task import get_task

ARCHITECTURE = "registration.shape-vae"
"""Registered name of :class:`ShapeVAE`."""
STRUCTURES = (CamusLabel.LV_CAVITY, CamusLabel.MYOCARDIUM)
"""The labels the VAE's input channels hold, in order."""
MASK_SIZE = 64
"""Side of the VAE's square mask grid, pixels."""
TASK = "shape-vae"
"""The training task of the VAE (:mod:`deepultrasound.registration.shape_task`)."""
NETWORK = "vae"
"""Name of the VAE among that task's networks (checkpoints, export)."""


@register_architecture(ARCHITECTURE)
class ShapeVAE(nn.Module):
    """MONAI's ``VarAutoEncoder`` on ``(B, 2, S, S)`` soft masks [LV cavity, myocardium] in [0, 1].

    Args:
        size: side S of the mask grid, a multiple of ``2 ** len(strides)``.
        latent_size: units of the latent code.
        channels: encoder channels per level (the decoder mirrors them), each level halving the grid.
    """

    def __init__(self, size: int = MASK_SIZE, latent_size: int = 32, channels: Sequence[int] = (16, 32, 64, 128)):
        super().__init__()
        levels = len(channels)
        if size < 1 or latent_size < 1 or levels < 2 or size % 2**levels:
            raise ValueError(
                f"need size a multiple of 2**len(channels) = {2**levels}, latent_size >= 1 and two or more "
                f"levels; got size {size}, latent_size {latent_size}, channels {tuple(channels)}"
            )
        self.size = size
        self.latent_size = latent_size
        self.channels = tuple(int(c) for c in channels)
        self.vae = VarAutoEncoder(
            spatial_dims=2,
            in_shape=(len(STRUCTURES), size, size),
            out_channels=len(STRUCTURES),
            latent_size=latent_size,
            channels=self.channels,
            strides=(2,) * levels,
            use_mean_at_inference=True,
        )

    def get_config(self) -> dict[str, object]:
        """Constructor arguments, so that ``type(model)(**model.get_config())`` rebuilds the network."""
        return {"size": self.size, "latent_size": self.latent_size, "channels": list(self.channels)}

    def _check(self, masks: torch.Tensor) -> None:
        expected = (len(STRUCTURES), self.size, self.size)
        if masks.ndim != 4 or tuple(masks.shape[1:]) != expected:
            raise InputError(f"ShapeVAE: masks must be (B, {', '.join(map(str, expected))}), got {tuple(masks.shape)}")

    def encode(self, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 2, S, S)`` masks -> latent mean and log-variance, each ``(B, latent_size)``."""
        self._check(masks)
        return self.vae.encode_forward(masks)

    def forward(self, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, 2, S, S)`` masks -> (reconstruction ``(B, 2, S, S)`` in [0, 1], mean, log-variance ``(B, latent)``).

        Training decodes a sample of the posterior; evaluation decodes its mean (deterministic).
        """
        if not torch.jit.is_tracing():
            self._check(masks)
        reconstruction, mean, log_variance, _ = self.vae(masks)
        return reconstruction, mean, log_variance


def masks_from_probabilities(probabilities: torch.Tensor, size: int = MASK_SIZE) -> torch.Tensor:
    """``(B, K, H, W)`` per-class probabilities (CAMUS classes, K >= 3) -> ``(B, 2, size, size)`` VAE masks.

    Takes the LV-cavity and myocardium channels and area-resamples them (a pixel of the coarse grid
    holds the mean probability of the pixels it covers; bilinear when enlarging); differentiable.
    """
    needed = max(STRUCTURES) + 1
    if probabilities.ndim != 4 or probabilities.shape[1] < needed:
        raise InputError(
            f"probabilities must be (B, K, H, W) with K >= {needed} CAMUS classes, got {tuple(probabilities.shape)}"
        )
    masks = probabilities[:, list(STRUCTURES)]
    if tuple(masks.shape[-2:]) == (size, size):
        return masks
    return F.interpolate(masks, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def vae_loss_terms(
    reconstruction: torch.Tensor, target: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(binary cross-entropy per pixel, KL divergence to N(0, I) per latent unit), both means over the batch.

    MONAI has no VAE loss; these are the two terms of the usual evidence lower bound, each a mean
    so that their weighting (``bce + beta * kl``) does not depend on the mask or latent size.
    """
    bce = F.binary_cross_entropy(reconstruction.clamp(1e-6, 1 - 1e-6), target)
    kl = -0.5 * torch.mean(1 + log_variance - mean.square() - log_variance.exp())
    return bce, kl


class ShapeLatentLoss(nn.Module):
    """Mean squared distance between the latent means of two sets of soft masks, through a frozen :class:`ShapeVAE`.

    Args:
        vae: a trained shape VAE; frozen here (no gradients, evaluation mode).
        reduction: ``"mean"`` (a scalar) or ``"none"`` (``(B,)``).
    """

    def __init__(self, vae: ShapeVAE, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        self.vae = vae.eval().requires_grad_(False)
        self.reduction = reduction

    def train(self, mode: bool = True) -> ShapeLatentLoss:
        super().train(mode)
        self.vae.eval()
        return self

    @classmethod
    def from_source(cls, source: str | os.PathLike[str], reduction: str = "mean") -> ShapeLatentLoss:
        """The loss on the VAE of a ``shape-vae`` bundle (folder or installed name) or training checkpoint."""
        return cls(load_shape_vae(source), reduction)

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """``fixed``, ``warped``: ``(B, K, H, W)`` CAMUS class probabilities (one-hot or warped soft one-hot)."""
        if fixed.shape != warped.shape:
            raise InputError(f"fixed {tuple(fixed.shape)} and warped {tuple(warped.shape)} masks differ in shape")
        size = self.vae.size
        with torch.no_grad():
            target, _ = self.vae.encode(masks_from_probabilities(fixed, size))
        estimate, _ = self.vae.encode(masks_from_probabilities(warped, size))
        per_sample = (estimate - target).square().mean(1)
        return per_sample.mean() if self.reduction == "mean" else per_sample


def load_shape_vae(source: str | os.PathLike[str]) -> ShapeVAE:
    """The trained :class:`ShapeVAE` of a bundle folder, an installed bundle's name, or a ``shape-vae`` checkpoint.

    Raises:
        BundleError: nothing of that name, or a bundle or checkpoint of another network.
    """
    path = Path(source)
    if path.is_file():
        state = load_checkpoint(path)
        config = TrainConfig.model_validate(state["config"])
        if config.task != TASK:
            raise BundleError(f"checkpoint {path} is of task {config.task!r}, not {TASK!r}")
        task_cls = get_task(config.task)
        network = task_cls(task_cls.parse_args(config.task_args), seed=config.seed).build_networks()[NETWORK]
        network.load_state_dict(exported_weights(state, NETWORK), strict=True)
        return network
    how = "deepultrasound train deepultrasound/configs/echo_shape_vae.yaml"
    loaded = load_network_bundle(source, ARCHITECTURE, how)
    return loaded.build_torch_model()
