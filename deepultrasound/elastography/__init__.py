"""Quasi-static strain elastography (DeepUSE): displacement networks, strain, metrics.

- ``networks``        USENet and ReUSENet (Delaunay et al., PMB 2021), padding helpers
- ``layers``          their building blocks (residual levels, additive up-sampling, ConvLSTM)
- ``import_deepuse``  checkpoints of the original DeepUSE code -> these networks

Importing this package registers the architectures ``"usenet"`` and ``"reusenet"`` with
:mod:`deepultrasound.runtime.architectures`.
"""

from deepultrasound.elastography.networks import (
    NETWORK_STRIDE,
    ReUSENet,
    USENet,
    crop_to_size,
    input_multiple,
    pad_to_multiple,
)

__all__ = ["NETWORK_STRIDE", "ReUSENet", "USENet", "crop_to_size", "input_multiple", "pad_to_multiple"]
