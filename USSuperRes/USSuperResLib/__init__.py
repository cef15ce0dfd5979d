"""MRML-facing logic of the USSuperRes module (lateral super-resolution)."""

from .logic import superResolvedGeometry, superResolutionInput, writeSuperResolved

__all__ = ["superResolvedGeometry", "superResolutionInput", "writeSuperResolved"]
