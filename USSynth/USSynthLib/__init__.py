"""MRML-facing logic of the USSynth module (label-conditioned ultrasound synthesis)."""

from .logic import labelSummary, synthesisInput, writeSynthesizedImages

__all__ = ["labelSummary", "synthesisInput", "writeSynthesizedImages"]
