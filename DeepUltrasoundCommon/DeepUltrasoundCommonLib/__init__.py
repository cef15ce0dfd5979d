"""Slicer-side helpers shared by the DeepUltrasound modules.

- :mod:`.volumes`       volume nodes <-> numpy arrays with their geometry
- :mod:`.sequences`     recordings in Sequences: the sequence behind a proxy volume, its frames
- :mod:`.bundles`       the model bundles the installed engine provides
- :mod:`.dependencies`  install the engine's third-party packages when the user first needs them
- :mod:`.versions`      the Slicer and Python versions the extension runs on
- :mod:`.process`       engine commands in a background process (progress, stop, no orphans)
- :mod:`.engineJob`     an engine command on volume files: inputs written, process, results read back

These import ``slicer`` MRML utilities and numpy only (never Qt or the application at
import time), so they run with ``slicer-core`` outside Slicer.
"""

from .bundles import DEFAULT_MODEL_LABEL, BundleInfo, EngineMethod, listBundledModels, modelChoices
from .dependencies import ENGINE_REQUIREMENTS, ensureRequirements, loadRequirements, missingRequirements
from .sequences import framesOfSequence, sequenceOfProxy, shownItemNumber
from .versions import MINIMUM_SLICER_VERSION, unsupportedPythonMessage
from .volumes import (
    VolumeGeometry,
    arrayToVolume,
    labelMapToArray,
    newFrameTime,
    setVolumeGeometry,
    volumeGeometry,
    volumeToArray,
)

__all__ = [
    "ENGINE_REQUIREMENTS",
    "MINIMUM_SLICER_VERSION",
    "BundleInfo",
    "EngineMethod",
    "DEFAULT_MODEL_LABEL",
    "VolumeGeometry",
    "arrayToVolume",
    "ensureRequirements",
    "framesOfSequence",
    "labelMapToArray",
    "listBundledModels",
    "loadRequirements",
    "missingRequirements",
    "modelChoices",
    "newFrameTime",
    "sequenceOfProxy",
    "setVolumeGeometry",
    "shownItemNumber",
    "unsupportedPythonMessage",
    "volumeGeometry",
    "volumeToArray",
]
