"""Building blocks of the DeepUSE networks (USENet, ReUSENet).

Shapes use ``(B, C, H, W)``: H axial (depth), W lateral (beam lines). Every block keeps the
order of operations of the published DeepUSE implementation, so that its trained weights give
the same displacements here.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

NormKind = Literal["batch", "instance"]
NORM_KINDS: tuple[str, ...] = ("batch", "instance")

# "batch" is the original layer: batch statistics in train and eval mode. "instance" normalises
# each image on its own with the same affine weight and bias: identical output for batch size 1.
_NORM_ARGS: dict[str, tuple[str, dict[str, bool]]] = {
    "batch": ("batch", {"track_running_stats": False}),
    "instance": ("instance", {"affine": True}),
}


def conv_norm(
    in_channels: int,
    out_channels: int,
    norm: NormKind,
    relu: bool = True,
    transposed: bool = False,
) -> Convolution:
    """3 x 3 convolution without bias, then normalisation, then (optionally) ReLU.

    Args:
        in_channels: input channels C_in.
        out_channels: output channels C_out.
        norm: ``"batch"`` (BatchNorm2d with batch statistics) or ``"instance"``
            (InstanceNorm2d with affine weight and bias).
        relu: apply ReLU after the normalisation.
        transposed: a stride-2 transposed convolution (padding 1, output padding 1) that maps
            ``(B, C_in, H, W)`` to ``(B, C_out, 2H, 2W)``; otherwise the size is kept (padding 1).

    Parameters are ``conv.weight``, ``adn.N.weight`` and ``adn.N.bias`` for both norms.
    """
    extra = {"strides": 2, "is_transposed": True, "output_padding": 1} if transposed else {}
    return Convolution(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=3,
        norm=_NORM_ARGS[norm],
        act="relu" if relu else None,
        bias=False,
        **extra,
    )


class ResidualDownBlock(nn.Module):
    """Encoder level: three convolutions with a residual connection, then 2 x 2 max pooling.

    ``a = conv0(x)``; ``r = relu(conv2(conv1(a)) + a)``; the block returns ``a`` (the skip
    connection passed to the decoder, taken before the residual add as in the original) and
    ``maxpool(r)``.

    Args:
        in_channels: input channels C_in.
        out_channels: output channels C.
        norm: ``"batch"`` or ``"instance"``, see :func:`conv_norm`.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: NormKind) -> None:
        super().__init__()
        self.conv0 = conv_norm(in_channels, out_channels, norm)
        self.conv1 = conv_norm(out_channels, out_channels, norm)
        self.conv2 = conv_norm(out_channels, out_channels, norm, relu=False)
        self.pool = nn.MaxPool2d(kernel_size=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C_in, H, W)`` -> skip ``(B, C, H, W)``, pooled ``(B, C, H/2, W/2)``."""
        skip = self.conv0(x)
        residual = F.relu(self.conv2(self.conv1(skip)) + skip)
        return skip, self.pool(residual)


def additive_upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (corners aligned) to ``size``, then add the two halves of the channels.

    ``(B, 2C, h, w)`` -> ``(B, C, *size)``: output channel k is the sum of channels k and C + k.
    """
    resized = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    first, second = resized.chunk(2, dim=1)
    return first + second


# MONAI's AdditiveUpSampleBlock (RegUNet) fixes BatchNorm with running statistics and adds the
# skip connection elsewhere; DeepUSE needs batch statistics or instance norm and its own order.
class UpsampleMerge(nn.Module):
    """Decoder entry of one level: ``relu(norm(deconv(x))) + skip + additive_upsample(x)``.

    Args:
        in_channels: channels 2C of the coarser feature map.
        out_channels: channels C of the skip connection and of the output.
        norm: ``"batch"`` or ``"instance"``, see :func:`conv_norm`.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: NormKind) -> None:
        super().__init__()
        self.deconv = conv_norm(in_channels, out_channels, norm, transposed=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, 2C, H/2, W/2)``, ``skip`` ``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        return self.deconv(x) + skip + additive_upsample(x, (skip.shape[-2], skip.shape[-1]))


class ResidualUpBlock(nn.Module):
    """USENet decoder level: :class:`UpsampleMerge`, then two convolutions with a residual add.

    ``m = merge(x, skip)``; ``a = conv0(m)``; output ``relu(conv1(a) + a)``.

    Args:
        in_channels: channels 2C of the coarser feature map.
        out_channels: channels C of the skip connection and of the output.
        norm: ``"batch"`` or ``"instance"``, see :func:`conv_norm`.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: NormKind) -> None:
        super().__init__()
        self.merge = UpsampleMerge(in_channels, out_channels, norm)
        self.conv0 = conv_norm(out_channels, out_channels, norm)
        self.conv1 = conv_norm(out_channels, out_channels, norm, relu=False)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, 2C, H/2, W/2)``, ``skip`` ``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        merged = self.conv0(self.merge(x, skip))
        return F.relu(self.conv1(merged) + merged)


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM cell (Shi et al. 2015 without peepholes), one 3 x 3 convolution for all gates.

    ``[i, f, o, g] = split(gates(cat[x, h]))`` in this channel order;
    ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``; ``h' = sigmoid(o) * tanh(c')``.

    Args:
        in_channels: input channels C_in.
        hidden_channels: channels C_h of the hidden and cell states.
    """

    def __init__(self, in_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.gates = nn.Conv2d(in_channels + hidden_channels, 4 * hidden_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, hidden: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, C_in, H, W)``, ``hidden`` and ``cell`` ``(B, C_h, H, W)`` -> new (hidden, cell)."""
        in_gate, forget_gate, out_gate, candidate = self.gates(torch.cat([x, hidden], dim=1)).chunk(4, dim=1)
        new_cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(in_gate) * torch.tanh(candidate)
        return torch.sigmoid(out_gate) * torch.tanh(new_cell), new_cell


class RecurrentUpBlock(nn.Module):
    """ReUSENet decoder level: :class:`UpsampleMerge`, then a :class:`ConvLSTMCell`.

    Args:
        in_channels: channels 2C of the coarser feature map.
        out_channels: channels C of the skip connection, of the LSTM state and of the output.
        norm: ``"batch"`` or ``"instance"``, see :func:`conv_norm`.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: NormKind) -> None:
        super().__init__()
        self.merge = UpsampleMerge(in_channels, out_channels, norm)
        self.lstm = ConvLSTMCell(out_channels, out_channels)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor, hidden: torch.Tensor, cell: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, 2C, H/2, W/2)``, ``skip``/``hidden``/``cell`` ``(B, C, H, W)`` -> new (hidden, cell)."""
        return self.lstm(self.merge(x, skip), hidden, cell)


# MONAI's RegistrationExtractionBlock averages the levels and defaults to nearest resizing;
# DeepUSE sums bilinear (corner-aligned) resizes, so the trained weights need this exact form.
class MultiScaleDisplacementHead(nn.Module):
    """Sum of per-level displacement predictions, each resized to full resolution.

    One biased 3 x 3 convolution per level maps its features to 2 channels; level k
    (stride 2^k) is resized bilinearly with aligned corners to the full size, and the levels
    are added. No output activation or scaling.

    Args:
        channels: feature channels per level, finest (stride 1) first.
    """

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, 2, kernel_size=3, padding=1) for c in channels)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """``features[k]`` ``(B, channels[k], H / 2^k, W / 2^k)`` -> displacement ``(B, 2, H, W)``."""
        size = (features[0].shape[-2], features[0].shape[-1])
        total = self.convs[0](features[0])
        for conv, feature in zip(list(self.convs)[1:], features[1:]):
            total = total + F.interpolate(conv(feature), size=size, mode="bilinear", align_corners=True)
        return total
