"""B-mode features for a perceptual loss: a small denoising autoencoder trained here, and the loss on its encoder.

No downloadable perceptual network (VGG and the like) can be used in this project, and an
ImageNet network knows nothing of speckle. :class:`BModeAutoEncoder` is MONAI's convolutional
``AutoEncoder`` (no skip connections, so the encoder must describe the whole image) trained by
the ``bmode-features`` task (:mod:`deepultrasound.superres.feature_task`) to restore B-mode
patches with noise added and whole lines removed; :class:`FeatureLoss` compares what its first
encoder levels see in an estimate and in the truth.

Shapes: images are ``(B, 1, H, W)`` B-mode in [0, 1], lines along W.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from monai.networks.nets import AutoEncoder
from torch import nn

from deepultrasound.errors import InputError
from deepultrasound.runtime.architectures import register_architecture
from deepultrasound.runtime.bundle import load_network_bundle

FEATURES = "superres.bmode-autoencoder"
"""Registered architecture name of :class:`BModeAutoEncoder`."""


@register_architecture(FEATURES)
class BModeAutoEncoder(AutoEncoder):
    """Convolutional autoencoder ``(B, 1, H, W)`` -> ``(B, 1, H, W)`` with H and W multiples of ``2 ** (levels - 1)``.

    MONAI ``AutoEncoder``: per level a 3 x 3 convolution, instance normalisation and PReLU; the
    first level keeps the full resolution, every further one halves it; transposed convolutions
    decode. :meth:`features` returns each encoder level's output.

    Args:
        channels: feature channels of each encoder level (at least two levels).
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64)) -> None:
        channels = tuple(channels)
        if len(channels) < 2 or any(c < 1 for c in channels):
            raise ValueError(f"channels needs at least two positive entries, got {channels}")
        super().__init__(
            spatial_dims=2, in_channels=1, out_channels=1, channels=channels, strides=(1,) + (2,) * (len(channels) - 1)
        )

    def features(self, image: torch.Tensor, levels: int | None = None) -> list[torch.Tensor]:
        """``image`` ``(B, 1, H, W)`` -> the outputs of the first ``levels`` (None: all) encoder levels, level ``l``
        ``(B, channels[l], H / 2^l, W / 2^l)`` (sizes rounded up)."""
        outputs = []
        for level in list(self.encode)[:levels]:
            image = level(image)
            outputs.append(image)
        return outputs


class FeatureLoss(nn.Module):
    """Perceptual loss: MSE between the features of an estimate and of the truth at the first encoder levels.

    The mean over ``levels`` levels of the mean squared difference of :meth:`BModeAutoEncoder.features`.
    The network is frozen and stays in eval mode (whatever ``train()`` is called with); no gradient
    reaches its weights, while the gradient with respect to the estimate flows through it. The
    truth's features are computed without a graph. Written here because MONAI's ``PerceptualLoss``
    only wraps networks whose weights it downloads.

    Args:
        network: the trained feature network (e.g. from a ``bmode-features`` bundle, :meth:`from_bundle`).
        levels: how many encoder levels to compare, from the first (full resolution).
        reduction: ``"mean"`` over the batch, a scalar; ``"none"``: per sample ``(B,)``.
    """

    def __init__(self, network: BModeAutoEncoder, levels: int = 2, reduction: Literal["mean", "none"] = "mean") -> None:
        super().__init__()
        if not 1 <= levels <= len(network.encode):
            raise ValueError(f"levels must be between 1 and the network's {len(network.encode)} levels, got {levels}")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        self.network = network.eval().requires_grad_(False)
        self.levels = levels
        self.reduction = reduction

    @classmethod
    def from_bundle(cls, bundle: str | os.PathLike[str], levels: int = 2) -> FeatureLoss:
        """The loss with the network of a ``bmode-features`` bundle: a bundle folder, or the name of an installed one.

        Raises:
            BundleError: no such bundle, or a bundle of another architecture.
        """
        how = "deepultrasound train deepultrasound/configs/bmode_features.yaml"
        loaded = load_network_bundle(bundle, FEATURES, how)
        return cls(loaded.build_torch_model(), levels)

    def train(self, mode: bool = True) -> FeatureLoss:
        super().train(mode)
        self.network.eval()
        return self

    def forward(self, estimate: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """``estimate``, ``truth`` ``(B, 1, H, W)`` -> the loss: a scalar, or ``(B,)`` with ``reduction="none"``."""
        if estimate.shape != truth.shape or estimate.ndim != 4 or estimate.shape[1] != 1:
            raise InputError(
                f"estimate and truth must both be (B, 1, H, W), got {tuple(estimate.shape)} and {tuple(truth.shape)}"
            )
        with torch.no_grad():
            targets = self.network.features(truth, self.levels)
        estimated = self.network.features(estimate, self.levels)
        per_sample = torch.stack(
            [F.mse_loss(e, t, reduction="none").flatten(1).mean(1) for e, t in zip(estimated, targets)]
        ).mean(0)
        return per_sample.mean() if self.reduction == "mean" else per_sample
