"""MRML-facing logic of the USSuperRes module (lateral super-resolution)."""

from .logic import superResolutionInput, superResolvedGeometry, writeSuperResolved

__all__ = ["superResolvedGeometry", "superResolutionInput", "writeSuperResolved"]
