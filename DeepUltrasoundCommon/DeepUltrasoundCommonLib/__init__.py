"""Slicer-side helpers shared by the DeepUltrasound modules.

- :mod:`.volumes`       volume nodes <-> numpy arrays with their geometry
- :mod:`.bundles`       the model bundles the installed engine provides
- :mod:`.dependencies`  install the engine when the user first needs it

These import ``slicer`` MRML utilities and numpy only (never Qt or the application at
import time), so they run with ``slicer-core`` outside Slicer.
"""

from .bundles import BundleInfo, listBundledModels
from .dependencies import ensureRequirements, loadRequirements, missingRequirements
from .volumes import VolumeGeometry, arrayToVolume, labelMapToArray, setVolumeGeometry, volumeGeometry, volumeToArray

__all__ = [
    "BundleInfo",
    "VolumeGeometry",
    "arrayToVolume",
    "ensureRequirements",
    "labelMapToArray",
    "listBundledModels",
    "loadRequirements",
    "missingRequirements",
    "setVolumeGeometry",
    "volumeGeometry",
    "volumeToArray",
]
