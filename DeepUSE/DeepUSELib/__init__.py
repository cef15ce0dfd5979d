"""MRML-facing logic of the DeepUSE module (strain elastography from RF frames).

- :mod:`.logic`       RF frame volumes <-> arrays
- :mod:`.engine`      a strain method -> the engine's offline estimator or live processor (lazy imports)
- :mod:`.offline`     strain of a loaded RF volume or sequence
- :mod:`.live`        strain of every frame arriving in a volume node (OpenIGTLink), worker thread
- :mod:`.recording`   live frames -> sequence nodes
- :mod:`.display`     strain colour map, range and legend; B-mode grey scale
- :mod:`.connection`  the OpenIGTLinkIF connector (Slicer application only)

All import with ``slicer-core`` alone; the engine is imported when strain is computed.
"""

from .connection import (
    RF_DEVICE_NAME,
    connectionState,
    connectToScanner,
    disconnectFromScanner,
    incomingRfVolume,
)
from .display import (
    BMODE_DYNAMIC_RANGE_DB,
    colorLegend,
    defaultStrainColorNode,
    showBMode,
    showStrain,
)
from .engine import (
    DEFAULT_WINDOW_MM,
    StrainMethod,
    createEstimator,
    createLiveProcessor,
)
from .live import LiveCounters, LiveStrainLogic
from .logic import framePairs, rfFramesFromVolume, writeStrainFrames
from .offline import (
    OfflineStrain,
    rfFramesFromSequence,
    sequenceOfProxy,
    strainOfSequence,
    strainOfVolume,
)
from .recording import StrainRecorder

__all__ = [
    "BMODE_DYNAMIC_RANGE_DB",
    "DEFAULT_WINDOW_MM",
    "RF_DEVICE_NAME",
    "LiveCounters",
    "LiveStrainLogic",
    "OfflineStrain",
    "StrainMethod",
    "StrainRecorder",
    "colorLegend",
    "connectToScanner",
    "connectionState",
    "createEstimator",
    "createLiveProcessor",
    "defaultStrainColorNode",
    "disconnectFromScanner",
    "framePairs",
    "incomingRfVolume",
    "rfFramesFromSequence",
    "rfFramesFromVolume",
    "sequenceOfProxy",
    "showBMode",
    "showStrain",
    "strainOfSequence",
    "strainOfVolume",
    "writeStrainFrames",
]
