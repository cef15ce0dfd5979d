"""Quasi-static elastography simulation: phantoms, FEM displacement, RF formation, sequences with truth.

Typical use::

    from deepultrasound.simulation import SimulationConfig, simulate_sequence
    seq = simulate_sequence(SimulationConfig(n_frames=6), seed=0)
    seq.rf                  # (N, H, W) float32, max |rf| = 1 per frame
    seq.displacement_px     # (N-1, 2, H, W) frame 0 -> k, channel 0 lateral, 1 axial
    seq.strain_percent      # (N-1, H, W) axial strain in %, compression negative
"""

from deepultrasound.simulation.mechanics import CompressionSolution, solve_compression
from deepultrasound.simulation.phantom import Inclusion, Layer, Phantom, random_phantom
from deepultrasound.simulation.rf import Transducer, beamformed_rf
from deepultrasound.simulation.sequence import SimulatedSequence, SimulationConfig, save_sequence, simulate_sequence

__all__ = [
    "CompressionSolution",
    "Inclusion",
    "Layer",
    "Phantom",
    "SimulatedSequence",
    "SimulationConfig",
    "Transducer",
    "beamformed_rf",
    "random_phantom",
    "save_sequence",
    "simulate_sequence",
    "solve_compression",
]
