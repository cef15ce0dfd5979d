"""MRML-facing logic of the EchoRegistration module (echo motion tracking).

- :mod:`.logic`    CAMUS labels and segment names, the method and ``deepultrasound track`` command line,
                   displacements from the engine's pixels to RAS mm between frame grids
- :mod:`.inputs`   the frames of a sequence or multi-frame volume, the labels of the labelled frame
- :mod:`.job`      tracking in a background process (progress, Cancel), results read back
- :mod:`.outputs`  label and grid-transform sequences, strain table and chart
- :mod:`.session`  the state of tracking in a scene: job and outputs, forgotten when the scene closes

All import with ``slicer-core`` alone; the engine runs in its own process.
"""

from .inputs import TrackingFrames, framesOfInput, labelledFrameOf, labelsOnGrid
from .job import Tracking, TrackingJob
from .logic import (
    CAMUS_LABELS,
    METHODS,
    TrackingMethod,
    displacementRas,
    labelOfSegmentName,
    pixelsFromEngineDisplacement,
    segmentLabels,
    trackingArguments,
)
from .outputs import (
    PHASE_MARKS,
    STRAIN_CURVES,
    fillPhaseMarks,
    fillStrainChart,
    fillStrainTable,
    labelColourNode,
    setGridTransform,
    writeDisplacementSequence,
    writeLabelSequence,
)
from .session import EchoTrackingSession

__all__ = [
    "CAMUS_LABELS",
    "METHODS",
    "PHASE_MARKS",
    "STRAIN_CURVES",
    "EchoTrackingSession",
    "Tracking",
    "TrackingFrames",
    "TrackingJob",
    "TrackingMethod",
    "displacementRas",
    "fillPhaseMarks",
    "fillStrainChart",
    "fillStrainTable",
    "framesOfInput",
    "labelColourNode",
    "labelOfSegmentName",
    "labelledFrameOf",
    "labelsOnGrid",
    "pixelsFromEngineDisplacement",
    "segmentLabels",
    "setGridTransform",
    "trackingArguments",
    "writeDisplacementSequence",
    "writeLabelSequence",
]
