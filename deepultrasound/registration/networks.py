"""The registration network: MONAI's ``RegUNet`` in 2D predicting a dense displacement in pixels.

Shapes: the input is ``(B, 2, H, W)`` = [fixed, moving] B-mode in [0, 1], H and W multiples of
``2**depth``; the output is ``(B, 2, H, W)`` displacement in pixels in the project convention
(channel 0 lateral x along W, channel 1 axial y along H; ``moving(p + u(p)) ~ fixed(p)``).

``RegUNet`` predicts its field in MONAI's channel order (channel 0 along H); the network swaps it
with :func:`~deepultrasound.spatial.to_monai_order` (its own inverse). The decoder reads every level
(``extract_levels`` 0..depth, as DeepReg's LocalNet), so the field sums coarse and fine parts.
The output convolutions start at zero: an untrained network returns the identity (zero
displacement), and training departs from there. With ``diffeomorphic`` the field is a stationary
velocity integrated by scaling and squaring: ``u = v / 2**n`` composed with itself ``n`` times, the
arithmetic of :func:`~deepultrasound.spatial.integrate_velocity` (MONAI's ``DVF2DDF``) through
:func:`~deepultrasound.spatial.compose_displacements`. Not ``DVF2DDF`` itself: its ``Warp`` stacks a
reference grid per batch element behind Python checks of the batch size, so ``torch.export`` (the
ONNX exporter) fixes the batch axis; the composition exports with symbolic B, H and W.
"""

from __future__ import annotations

import torch
from monai.networks.nets import RegUNet
from torch import nn

from deepultrasound.errors import InputError
from deepultrasound.runtime.architectures import register_architecture
from deepultrasound.spatial import DEFAULT_INTEGRATION_STEPS, compose_displacements, to_monai_order

ARCHITECTURE = "registration.regunet"
"""Registered name of :class:`RegistrationNetwork` (bundles rebuild it from this name)."""


@register_architecture(ARCHITECTURE)
class RegistrationNetwork(nn.Module):
    """[fixed, moving] ``(B, 2, H, W)`` in [0, 1] -> displacement ``(B, 2, H, W)`` in pixels (channel 0 lateral).

    Args:
        channels: channels of the first level (doubled at each level down), >= 1.
        depth: down-sampling levels, >= 1; H and W must be multiples of ``2**depth``.
        diffeomorphic: the network's field is a stationary velocity, integrated to the displacement.
        integration_steps: squarings of the integration (``diffeomorphic`` only), >= 1.
    """

    def __init__(
        self,
        channels: int = 16,
        depth: int = 3,
        diffeomorphic: bool = False,
        integration_steps: int = DEFAULT_INTEGRATION_STEPS,
    ) -> None:
        super().__init__()
        if channels < 1 or depth < 1 or integration_steps < 1:
            raise ValueError(
                f"channels, depth and integration_steps must be >= 1, got {channels}, {depth}, {integration_steps}"
            )
        self.channels = channels
        self.depth = depth
        self.diffeomorphic = diffeomorphic
        self.integration_steps = integration_steps
        self.net = RegUNet(
            spatial_dims=2,
            in_channels=2,
            num_channel_initial=channels,
            depth=depth,
            out_channels=2,
            extract_levels=tuple(range(depth + 1)),
            concat_skip=True,
        )
        for parameter in self.net.output_block.parameters():
            nn.init.zeros_(parameter)

    @property
    def multiple(self) -> int:
        """H and W of the input must be multiples of this (``2**depth``)."""
        return 2**self.depth

    def get_config(self) -> dict[str, object]:
        """Constructor arguments, so that ``type(model)(**model.get_config())`` rebuilds the network."""
        return {
            "channels": self.channels,
            "depth": self.depth,
            "diffeomorphic": self.diffeomorphic,
            "integration_steps": self.integration_steps,
        }

    def _check_input(self, pair: torch.Tensor) -> None:
        if torch.jit.is_tracing():  # a traced graph keeps no Python checks
            return
        if pair.ndim != 4 or pair.shape[1] != 2:
            raise InputError(f"RegistrationNetwork: expected (B, 2, H, W) = [fixed, moving], got {tuple(pair.shape)}")
        if pair.shape[-2] % self.multiple or pair.shape[-1] % self.multiple:
            raise InputError(
                f"RegistrationNetwork: H and W must be multiples of {self.multiple} (depth {self.depth}), got "
                f"{tuple(pair.shape[-2:])}; pad with deepultrasound.spatial.pad_to_multiple"
            )

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        """``(B, 2, H, W)`` [fixed, moving] -> ``(B, 2, H, W)`` displacement in pixels, channel 0 lateral."""
        self._check_input(pair)
        field = to_monai_order(self.net(pair))
        if not self.diffeomorphic:
            return field
        displacement = field / 2**self.integration_steps
        for _ in range(self.integration_steps):
            displacement = compose_displacements(displacement, displacement)
        return displacement
