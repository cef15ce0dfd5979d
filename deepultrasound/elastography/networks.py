"""USENet and ReUSENet: displacement networks for quasi-static ultrasound strain elastography.

Delaunay, Hu, Vercauteren, "An unsupervised learning approach to ultrasound strain elastography
with spatio-temporal consistency", Phys. Med. Biol. 2021 (DeepUSE). Same architecture and order
of operations as the published implementation, so its trained weights load (see
:mod:`deepultrasound.elastography.import_deepuse`) and give the same displacements.

Both networks take a frame pair ``(B, 2, H, W)`` = cat[fixed, moving] (channel 0 the fixed,
reference frame, channel 1 the moving frame) and return a displacement ``(B, 2, H, W)`` in pixels,
channel 0 lateral (along W), channel 1 axial (along H). The displacement u maps the fixed frame
into the moving one: ``moving(p + u(p)) ~ fixed(p)`` (the original trains by resampling the
moving frame at ``p + u(p)``). H and W must be multiples of :data:`NETWORK_STRIDE` (H of
``NETWORK_STRIDE * axial_fold`` for a folded USENet, see :func:`input_multiple`); use
:func:`deepultrasound.spatial.pad_to_multiple` and :func:`~deepultrasound.spatial.crop_to_size`
for other sizes.

Folded USENet (``axial_fold=f > 1``, ours, not in the paper): the pair's rows are folded into
channels (``(B, 2, H, W)`` -> ``(B, 2f, H/f, W)``, every sample kept, its phase within the group
of f rows a channel), the network runs at 1/f of the axial resolution, and the displacement is
resized back to H rows. RF is sampled far above what a displacement field needs (the 5.74 mm
strain window spans 287 samples), so this costs little accuracy and divides the work by about f:
it is the real-time variant of :mod:`deepultrasound.elastography.live`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepultrasound.elastography.layers import (
    NORM_KINDS,
    ConvLSTMCell,
    MultiScaleDisplacementHead,
    NormKind,
    RecurrentUpBlock,
    ResidualDownBlock,
    ResidualUpBlock,
    conv_norm,
)
from deepultrasound.errors import ConfigError, InputError
from deepultrasound.runtime.architectures import register_architecture

NETWORK_STRIDE = 16
"""Total down-sampling of both networks: H and W of the input must be multiples of it."""

_LEVELS = 4  # encoder levels (each halves H and W) below the full-resolution one


def input_multiple(axial_fold: int = 1) -> tuple[int, int]:
    """``(rows, lines)`` that H and W of a network's input must be multiples of, for its ``axial_fold``."""
    return NETWORK_STRIDE * axial_fold, NETWORK_STRIDE


class _DeepUSEEncoderNet(nn.Module):
    """Shared part of USENet and ReUSENet: constructor validation, encoder and displacement head."""

    def __init__(self, in_channels: int, initial_channels: int, norm: NormKind, axial_fold: int = 1) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ConfigError(f"{name}: in_channels must be an integer >= 1, got {in_channels!r}")
        if not isinstance(axial_fold, int) or axial_fold < 1:
            raise ConfigError(f"{name}: axial_fold must be an integer >= 1, got {axial_fold!r}")
        if not isinstance(initial_channels, int) or initial_channels < 1:
            raise ConfigError(f"{name}: initial_channels must be an integer >= 1, got {initial_channels!r}")
        if norm not in NORM_KINDS:
            raise ConfigError(f"{name}: norm must be one of {NORM_KINDS}, got {norm!r}")
        self.in_channels = in_channels
        self.initial_channels = initial_channels
        self.norm = norm
        self.axial_fold = axial_fold
        # channels[k] at stride 2^k (of the folded input); channels[4] is the bottleneck.
        self.channels = [initial_channels * 2**k for k in range(_LEVELS + 1)]
        inputs = [in_channels * axial_fold, *self.channels[: _LEVELS - 1]]
        self.encoder = nn.ModuleList(
            ResidualDownBlock(c_in, c_out, norm) for c_in, c_out in zip(inputs, self.channels[:_LEVELS])
        )
        self.ddf_head = MultiScaleDisplacementHead(self.channels)

    def _fold(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C f, H / f, W)``: channel ``c f + j`` holds rows ``j, j + f, ...`` of channel c."""
        fold = self.axial_fold
        if fold == 1:
            return x
        batch, channels, height, width = x.shape
        folded = x.reshape(batch, channels, height // fold, fold, width).permute(0, 1, 3, 2, 4)
        return folded.reshape(batch, channels * fold, height // fold, width)

    def _unfold_displacement(self, displacement: torch.Tensor) -> torch.Tensor:
        """``(B, 2, H / f, W)`` -> ``(B, 2, H, W)``, linear along H: folded row i lies at row ``f i + (f - 1) / 2``."""
        if self.axial_fold == 1:
            return displacement
        return F.interpolate(displacement, scale_factor=(self.axial_fold, 1), mode="bilinear", align_corners=False)

    def get_config(self) -> dict[str, object]:
        """Constructor arguments, so that ``type(model)(**model.get_config())`` rebuilds the network."""
        return {"in_channels": self.in_channels, "initial_channels": self.initial_channels, "norm": self.norm}

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing():  # a traced graph keeps no Python checks; skip their TracerWarnings
            return
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise InputError(
                f"{type(self).__name__}: expected input (B, {self.in_channels}, H, W) = cat[fixed, moving], "
                f"got shape {tuple(x.shape)}"
            )
        rows, lines = input_multiple(self.axial_fold)
        if x.shape[-2] % rows or x.shape[-1] % lines:
            raise InputError(
                f"{type(self).__name__}: H must be a multiple of {rows} and W of {lines}, got "
                f"{tuple(x.shape[-2:])}; pad with deepultrasound.spatial.pad_to_multiple and crop back with "
                "crop_to_size"
            )

    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``(B, C_in, H, W)`` -> skips (finest first, ``skips[k]`` at stride 2^k) and the stride-16 map."""
        skips = []
        for block in self.encoder:
            skip, x = block(x)
            skips.append(skip)
        return skips, x


@register_architecture("usenet")
class USENet(_DeepUSEEncoderNet):
    """USENet: residual encoder-decoder with additive up-sampling and a multi-scale displacement sum.

    Four encoder levels (C, 2C, 4C, 8C channels for C = ``initial_channels``), a bottleneck
    of 16C channels at stride 16, four decoder levels, and one displacement prediction per level
    (strides 1 to 16) resized to full resolution and summed.

    Args:
        in_channels: input channels; 2 for a frame pair (fixed, moving).
        initial_channels: channels C of the first level; the published models use 8 or 16.
        norm: ``"instance"`` (default) or ``"batch"``. The original uses BatchNorm2d with batch
            statistics in train and eval mode (``"batch"``). ``"instance"`` (InstanceNorm2d with
            the same affine weight and bias) gives identical output for a batch of one frame
            pair, keeps each pair of a batch independent of the others, and exports to ONNX,
            which the batch-statistics layer does not. Both load the same weights.
        axial_fold: rows folded into channels (see the module docstring); 1 (the original) runs
            at full resolution, 4 is the real-time variant.
    """

    def __init__(
        self, in_channels: int = 2, initial_channels: int = 8, norm: NormKind = "instance", axial_fold: int = 1
    ) -> None:
        super().__init__(in_channels, initial_channels, norm, axial_fold)
        c = self.channels
        self.bottleneck = conv_norm(c[_LEVELS - 1], c[_LEVELS], norm)
        self.decoder = nn.ModuleList(ResidualUpBlock(c[k + 1], c[k], norm) for k in reversed(range(_LEVELS)))

    def get_config(self) -> dict[str, object]:
        """Constructor arguments, so that ``USENet(**model.get_config())`` rebuilds the network."""
        return {**super().get_config(), "axial_fold": self.axial_fold}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Estimate the displacement between two frames.

        Args:
            x: ``(B, 2, H, W)`` = cat[fixed, moving] along channels, H (axial) a multiple of
                ``16 * axial_fold`` and W (lateral) of 16.

        Returns:
            Displacement ``(B, 2, H, W)`` in pixels, channel 0 lateral, channel 1 axial, with
            ``moving(p + u(p)) ~ fixed(p)``.
        """
        self._check_input(x)
        skips, bottom = self._encode(self._fold(x))
        feature = self.bottleneck(bottom)
        features = [feature]
        for block, skip in zip(self.decoder, reversed(skips)):
            feature = block(feature, skip)
            features.append(feature)
        return self._unfold_displacement(self.ddf_head(features[::-1]))


@register_architecture("reusenet")
class ReUSENet(_DeepUSEEncoderNet):
    """ReUSENet: USENet's encoder with a convolutional-LSTM decoder that carries state over time.

    Used on a sequence as ``(frame_0, frame_t)`` for t = 1, 2, ..., passing the states returned
    by one step into the next, starting from :meth:`initial_state` (zeros). The bottleneck and
    each of the four decoder levels is a ConvLSTM cell with a hidden and a cell state.

    State order (10 tensors), coarsest level first, hidden before cell:
    ``(hidden_s16, cell_s16, hidden_s8, cell_s8, hidden_s4, cell_s4, hidden_s2, cell_s2,
    hidden_s1, cell_s1)``; the state at stride s has shape ``(B, channels, H // s, W // s)``,
    see :meth:`state_specs`.

    Args:
        in_channels: input channels; 2 for a frame pair (fixed, moving).
        initial_channels: channels C of the first level; the published models use 8 or 16.
        norm: ``"instance"`` (default) or ``"batch"``; see :class:`USENet`.
    """

    def __init__(self, in_channels: int = 2, initial_channels: int = 8, norm: NormKind = "instance") -> None:
        super().__init__(in_channels, initial_channels, norm)
        c = self.channels
        self.bottleneck = ConvLSTMCell(c[_LEVELS - 1], c[_LEVELS])
        self.decoder = nn.ModuleList(RecurrentUpBlock(c[k + 1], c[k], norm) for k in reversed(range(_LEVELS)))

    def state_specs(self) -> tuple[tuple[int, int], ...]:
        """``(channels, stride)`` of each state tensor, in the order of :meth:`forward`.

        For input ``(B, 2, H, W)`` the state has shape ``(B, channels, H // stride, W // stride)``.
        """
        return tuple(
            (self.channels[level], 2**level) for level in reversed(range(_LEVELS + 1)) for _ in ("hidden", "cell")
        )

    def state_names(self) -> tuple[str, ...]:
        """Names of the state tensors in the order of :meth:`forward`, e.g. ``hidden_s16`` (for export)."""
        return tuple(f"{kind}_s{2**level}" for level in reversed(range(_LEVELS + 1)) for kind in ("hidden", "cell"))

    def initial_state(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Zero states for input ``x`` ``(B, 2, H, W)``, on its device and with its dtype."""
        batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
        return tuple(
            x.new_zeros((batch, channels, height // stride, width // stride)) for channels, stride in self.state_specs()
        )

    def _check_states(self, x: torch.Tensor, states: tuple[torch.Tensor, ...]) -> None:
        specs = self.state_specs()
        if len(states) != len(specs):
            raise InputError(
                f"ReUSENet: expected {len(specs)} state tensors {self.state_names()} or none, got {len(states)}"
            )
        if torch.jit.is_tracing():  # shapes are traced tensors here; see _check_input
            return
        for name, state, (channels, stride) in zip(self.state_names(), states, specs):
            shape = (x.shape[0], channels, x.shape[-2] // stride, x.shape[-1] // stride)
            if tuple(state.shape) != shape:
                raise InputError(
                    f"ReUSENet: state {name} must have shape {shape} for input {tuple(x.shape)}, "
                    f"got {tuple(state.shape)}"
                )

    def forward(self, x: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One time step: displacement between two frames, and the updated recurrent state.

        Args:
            x: ``(B, 2, H, W)`` = cat[fixed, moving] along channels, H (axial) and W (lateral)
                multiples of 16. On a sequence the fixed frame is the first frame.
            *states: the 10 state tensors returned by the previous step, in the order given in
                the class docstring, or none at all for zero states (the first step).

        Returns:
            ``(ddf, *new_states)``: displacement ``(B, 2, H, W)`` in pixels, channel 0 lateral,
            channel 1 axial, with ``moving(p + u(p)) ~ fixed(p)``; then the 10 new states.
        """
        self._check_input(x)
        if not states:
            states = self.initial_state(x)
        self._check_states(x, states)
        skips, bottom = self._encode(x)
        hidden, cell = self.bottleneck(bottom, states[0], states[1])
        new_states = [hidden, cell]
        for k, (block, skip) in enumerate(zip(self.decoder, reversed(skips))):
            hidden, cell = block(hidden, skip, states[2 * k + 2], states[2 * k + 3])
            new_states += [hidden, cell]
        ddf = self.ddf_head(new_states[-2::-2])
        return (ddf, *new_states)
