"""MRML-facing logic of the USSynth module (label-conditioned ultrasound synthesis).

- :mod:`.logic`    labels from a label map or segmentation, sampler settings and the ``deepultrasound synth``
                   command line, the engine's stack as samples
- :mod:`.samples`  the samples as a volume, and a Sequence to browse when there are several
- :mod:`.job`      synthesis of a label map in a background process (progress, Cancel)

All import with ``slicer-core`` alone; the engine runs in its own process.
"""

from .job import Synthesis, SynthesisJob
from .logic import (
    PROBES,
    SynthesisSettings,
    samplesOfStack,
    segmentationLabels,
    synthesisArguments,
    synthesisInput,
)
from .samples import SAMPLES_ATTRIBUTE, samplesBrowsing, storeSamples

__all__ = [
    "PROBES",
    "SAMPLES_ATTRIBUTE",
    "Synthesis",
    "SynthesisJob",
    "SynthesisSettings",
    "samplesBrowsing",
    "samplesOfStack",
    "segmentationLabels",
    "storeSamples",
    "synthesisArguments",
    "synthesisInput",
]
