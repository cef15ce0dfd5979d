"""Quasi-static strain elastography (DeepUSE): displacement networks, strain, metrics.

- ``networks``        USENet and ReUSENet (Delaunay et al., PMB 2021)
- ``layers``          their building blocks (residual levels, additive up-sampling, ConvLSTM)
- ``import_deepuse``  checkpoints of the original DeepUSE code -> these networks
- ``frames``          RF checks, per-frame normalisation, frame pairs, row crops
- ``estimators``      :class:`StrainEstimator`: a model bundle over an RF sequence, pair by pair
- ``baselines``       :class:`BlockMatchingEstimator` (NCC) and :class:`UniformStrainEstimator`
- ``model_resolution`` which bundle ``--model`` names (a folder, a bundled name, the default)

Importing this package registers the architectures ``"usenet"`` and ``"reusenet"`` with
:mod:`deepultrasound.runtime.architectures`.
"""

from deepultrasound.elastography.baselines import BlockMatchingEstimator, UniformStrainEstimator
from deepultrasound.elastography.estimators import SequenceStrainEstimator, StrainEstimator, StrainResult
from deepultrasound.elastography.model_resolution import resolve_model
from deepultrasound.elastography.networks import NETWORK_STRIDE, ReUSENet, USENet, input_multiple

__all__ = [
    "NETWORK_STRIDE",
    "BlockMatchingEstimator",
    "ReUSENet",
    "SequenceStrainEstimator",
    "StrainEstimator",
    "StrainResult",
    "USENet",
    "UniformStrainEstimator",
    "input_multiple",
    "resolve_model",
]
