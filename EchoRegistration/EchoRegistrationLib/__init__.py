"""MRML-facing logic of the EchoRegistration module (echo motion tracking)."""

from .logic import checkSameGrid, displacementToVolume

__all__ = ["checkSameGrid", "displacementToVolume"]
