"""MRML-facing logic of the DeepUSE module (strain elastography from RF frames)."""

from .logic import framePairs, rfFramesFromVolume, writeStrainFrames

__all__ = ["framePairs", "rfFramesFromVolume", "writeStrainFrames"]
