"""MRML-facing logic of the DeepUSE module (strain elastography from RF frames).

- :mod:`.logic`       RF frame volumes <-> arrays
- :mod:`.engine`      a strain method -> the engine's offline estimator or live processor (lazy imports)
- :mod:`.offline`     strain of a loaded RF volume or sequence
- :mod:`.offlineJob`  strain of a loaded RF volume in a background process (progress, Cancel)
- :mod:`.live`        strain of every frame arriving in a volume node (OpenIGTLink), worker thread
- :mod:`.liveStream`  live strain in a ``deepultrasound stream`` process, served back over OpenIGTLink
- :mod:`.recording`   live frames -> sequence nodes
- :mod:`.session`     the state of a session in a scene: offline and live strain, forgotten when the scene closes
- :mod:`.display`     strain colour map, range and legend; B-mode grey scale
- :mod:`.connection`  the OpenIGTLinkIF connector (Slicer application only)

All import with ``slicer-core`` alone; the engine is imported when strain is computed.
"""

from DeepUltrasoundCommonLib import sequenceOfProxy

from .connection import (
    RF_DEVICE_NAME,
    STRAIN_CONNECTOR_NAME,
    connectionState,
    connectToScanner,
    disconnectFromScanner,
    incomingNode,
    incomingStatus,
    incomingVolume,
)
from .display import (
    BMODE_DYNAMIC_RANGE_DB,
    FLAGGED_LEGEND_TITLE,
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
from .liveStream import (
    BMODE_DEVICE_NAME,
    DEFAULT_SERVE_PORT,
    LOW_QUALITY_STATUS,
    QUALITY_OK_STATUS,
    STRAIN_DEVICE_NAME,
    LiveStream,
    qualityFlagOf,
    streamArguments,
)
from .logic import framePairs, rfFramesFromVolume, writeStrainFrames
from .offline import (
    FLAGGED_ATTRIBUTE,
    NCC_AFTER_ATTRIBUTE,
    OfflineStrain,
    flaggedFrames,
    rfFramesFromSequence,
    setQualityAttributes,
    shownItemFlagged,
    strainOfSequence,
    strainOfVolume,
)
from .offlineJob import OfflineStrainJob, strainArguments
from .recording import StrainRecorder
from .session import DeepUSESession

__all__ = [
    "BMODE_DEVICE_NAME",
    "BMODE_DYNAMIC_RANGE_DB",
    "DEFAULT_SERVE_PORT",
    "DEFAULT_WINDOW_MM",
    "DeepUSESession",
    "FLAGGED_ATTRIBUTE",
    "FLAGGED_LEGEND_TITLE",
    "LOW_QUALITY_STATUS",
    "QUALITY_OK_STATUS",
    "NCC_AFTER_ATTRIBUTE",
    "RF_DEVICE_NAME",
    "STRAIN_CONNECTOR_NAME",
    "STRAIN_DEVICE_NAME",
    "LiveCounters",
    "LiveStrainLogic",
    "LiveStream",
    "OfflineStrain",
    "OfflineStrainJob",
    "StrainMethod",
    "StrainRecorder",
    "colorLegend",
    "connectToScanner",
    "connectionState",
    "createEstimator",
    "createLiveProcessor",
    "defaultStrainColorNode",
    "disconnectFromScanner",
    "flaggedFrames",
    "framePairs",
    "incomingNode",
    "incomingStatus",
    "incomingVolume",
    "rfFramesFromSequence",
    "rfFramesFromVolume",
    "sequenceOfProxy",
    "qualityFlagOf",
    "setQualityAttributes",
    "showBMode",
    "showStrain",
    "shownItemFlagged",
    "strainArguments",
    "strainOfSequence",
    "strainOfVolume",
    "streamArguments",
    "writeStrainFrames",
]
