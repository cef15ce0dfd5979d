"""B-mode images from RF: envelope detection and log compression.

The envelope is the magnitude of the analytic signal (Hilbert transform along the axial axis,
one RF line at a time, in float32 from a real FFT), log-compressed to decibels relative to the
brightest sample of each frame (0 dB) and clipped at ``-dynamic_range_db``, so a frame spans
``[-dynamic_range_db, 0]`` dB.
"""

from __future__ import annotations

import numpy as np
from scipy import fft

from deepultrasound.errors import InputError

DEFAULT_DYNAMIC_RANGE_DB = 60.0
"""Displayed B-mode range below each frame's maximum, dB."""


def envelope(rf: np.ndarray) -> np.ndarray:
    """Magnitude of the analytic signal of ``rf`` ``(..., H, W)`` along H, float32 (as ``scipy.signal.hilbert``).

    The analytic signal's spectrum is the real signal's with the positive frequencies doubled and
    the negative ones zeroed: one real FFT, the doubling, and an inverse FFT zero-padded to H.
    """
    height = rf.shape[-2]
    spectrum = fft.rfft(np.asarray(rf, dtype=np.float32), axis=-2)
    spectrum[..., 1 : (height + 1) // 2, :] *= 2  # DC and, for even H, the Nyquist bin stay as they are
    return np.abs(fft.ifft(spectrum, n=height, axis=-2))


def bmode_db(rf: np.ndarray, dynamic_range_db: float = DEFAULT_DYNAMIC_RANGE_DB) -> np.ndarray:
    """Log-compressed envelope of RF data.

    Args:
        rf: ``(..., H, W)`` RF, H axial samples, W lines (any leading axes, e.g. frames).
        dynamic_range_db: values below ``-dynamic_range_db`` are clipped to it.

    Returns:
        ``(..., H, W)`` float32 B-mode in dB, 0 at each frame's brightest sample, in
        ``[-dynamic_range_db, 0]``. A frame without echo is all ``-dynamic_range_db``.
    """
    if not np.isfinite(dynamic_range_db) or dynamic_range_db <= 0:
        raise InputError(f"dynamic_range_db must be a positive number of dB, got {dynamic_range_db}")
    array = np.asarray(rf, dtype=np.float32)
    if array.ndim < 2:
        raise InputError(f"RF must be (..., H, W), got shape {array.shape}")
    magnitude = envelope(array)
    peak = magnitude.max(axis=(-2, -1), keepdims=True)
    tiny = np.finfo(np.float32).tiny
    decibels = 20.0 * np.log10(np.maximum(magnitude, tiny) / np.maximum(peak, tiny))
    decibels[np.broadcast_to(peak == 0, decibels.shape)] = -dynamic_range_db
    return np.clip(decibels, -dynamic_range_db, 0.0).astype(np.float32)
