"""Networks of lateral super-resolution: an SRResNet-style generator that enlarges x only, and an SRGAN discriminator.

Shapes: images are ``(B, 1, H, W)``, H axial samples, W lines (lateral, x). The generator maps
``n`` lines to ``n F`` lines with the phase of :mod:`deepultrasound.superres.degradation` and
leaves H unchanged; every convolution is "same"-padded, so any H and W (odd ones too) work.

Why not MONAI's upsamplers: ``SubpixelUpsample`` is isotropic (it enlarges every spatial axis by
the same factor) and ``UpSample(mode="pixelshuffle", scale_factor=(1, F))`` silently uses only the
first factor. Ultrasound loses beam lines, not depth samples, so the upsampling here is a
one-axis pixel shuffle (:class:`LateralPixelShuffle`, a reshape).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from deepultrasound.runtime.architectures import register_architecture
from deepultrasound.superres.degradation import check_factor, upsample_lines

GENERATOR = "superres.srresnet"
DISCRIMINATOR = "superres.srgan-discriminator"


class LateralPixelShuffle(nn.Module):
    """One-axis pixel shuffle: ``(B, C F, H, W)`` -> ``(B, C, H, W F)``.

    Input channel ``c F + f`` becomes output column ``w F + f`` of channel ``c``; H is unchanged.
    """

    def __init__(self, factor: int) -> None:
        super().__init__()
        check_factor(factor)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        out_channels = channels // self.factor
        x = x.reshape(batch, out_channels, self.factor, height, width).permute(0, 1, 3, 4, 2)
        return x.reshape(batch, out_channels, height, width * self.factor)


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


class ResidualBlock(nn.Module):
    """SRResNet block: conv-BN-PReLU-conv-BN plus the input, ``(B, C, H, W)`` -> same (without BN: EDSR's block)."""

    def __init__(self, channels: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels, batch_norm),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels, batch_norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _upsampling_steps(factor: int) -> list[int]:
    """x2 steps for a power of two (as SRResNet), else one step of the whole factor."""
    steps = int(math.log2(factor))
    return [2] * steps if 2**steps == factor else [factor]


@register_architecture(GENERATOR)
class SRResNet(nn.Module):
    """SRResNet (Ledig et al. 2017) upsampling the lateral axis only: ``(B, 1, H, n)`` -> ``(B, 1, H, n F)``.

    Head convolution (9 x 9) and PReLU, ``blocks`` residual blocks, a convolution and BatchNorm
    added to the head's features, then one lateral upsampling step per x2 of the factor
    (convolution to ``channels x 2`` channels, :class:`LateralPixelShuffle`, PReLU), and a 9 x 9
    output convolution. With ``skip`` the network predicts the residual over the cubic
    interpolation of its input (:func:`~deepultrasound.superres.degradation.upsample_lines`), so an
    untrained network starts at the classical baseline.

    Args:
        factor: lateral factor F >= 2 (2, 4 and 8 upsample in x2 steps).
        channels: feature channels (64 in SRResNet).
        blocks: residual blocks (16 in SRResNet).
        in_channels: image channels (1: grey B-mode or envelope).
        skip: add the cubic interpolation of the input to the output.
        batch_norm: BatchNorm in the residual blocks and after the body, as SRResNet; without it the
            blocks are EDSR's (Lim et al. 2017), which removed BatchNorm from super-resolution networks
            because its batch statistics differ between training patches and whole test images.
    """

    def __init__(
        self,
        factor: int = 4,
        channels: int = 64,
        blocks: int = 16,
        in_channels: int = 1,
        skip: bool = True,
        batch_norm: bool = True,
    ):
        super().__init__()
        check_factor(factor)
        if channels < 1 or blocks < 0 or in_channels < 1:
            raise ValueError(
                f"channels and in_channels must be positive and blocks non-negative, got channels={channels}, "
                f"blocks={blocks}, in_channels={in_channels}"
            )
        self.factor = factor
        self.skip = skip
        self.head = nn.Sequential(nn.Conv2d(in_channels, channels, 9, padding=4), nn.PReLU(channels))
        self.body = nn.Sequential(
            *(ResidualBlock(channels, batch_norm) for _ in range(blocks)),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels, batch_norm),
        )
        upsampling = []
        for step in _upsampling_steps(factor):
            upsampling += [nn.Conv2d(channels, channels * step, 3, padding=1), LateralPixelShuffle(step)]
            upsampling.append(nn.PReLU(channels))
        self.upsample = nn.Sequential(*upsampling)
        self.tail = nn.Conv2d(channels, in_channels, 9, padding=4)

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        """``low`` ``(B, C, H, n)`` -> ``(B, C, H, n F)`` on the fine grid (coarse line k at fine line k F)."""
        features = self.head(low)
        fine = self.tail(self.upsample(features + self.body(features)))
        return fine + upsample_lines(low, self.factor, "cubic") if self.skip else fine


@register_architecture(DISCRIMINATOR)
class SRGANDiscriminator(nn.Module):
    """SRGAN discriminator: ``(B, 1, H, W)`` -> real/fake logits ``(B, 1)``.

    Eight 3 x 3 convolutions with LeakyReLU (0.2), BatchNorm after all but the first, stride 2 on
    every second one and the channels doubling every two (``channels`` .. ``8 channels``), then a
    dense head (1024 units). SRGAN's dense layer needs a fixed 96 x 96 input; here the features are
    averaged over space first and the dense layers are 1 x 1 convolutions, so any H, W >= 16 work.

    Args:
        channels: channels of the first convolutions (64 in SRGAN).
        in_channels: image channels.
    """

    def __init__(self, channels: int = 64, in_channels: int = 1) -> None:
        super().__init__()
        if channels < 1 or in_channels < 1:
            raise ValueError(f"channels and in_channels must be positive, got {channels}, {in_channels}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for multiple, stride in zip((1, 2, 2, 4, 4, 8, 8), (2, 1, 2, 1, 2, 1, 2)):
            out = channels * multiple
            layers += [nn.Conv2d(width, out, 3, stride=stride, padding=1), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            width = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(width, 1024, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(1024, 1, 1),
            nn.Flatten(),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` ``(B, C, H, W)`` -> logits ``(B, 1)`` (positive: judged a real full-resolution image)."""
        return self.head(self.features(image))
