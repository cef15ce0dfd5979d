"""Read echo videos (``.avi``, ``.mp4``, anything the OpenCV FFmpeg backend decodes).

A video becomes a sequence ``Image``: array ``(frames, rows, cols)`` uint8 (grayscale) or
``(frames, rows, cols, 3)`` uint8 RGB, spacing ``(1, 1, frame interval s)``: videos carry no
physical pixel size, so the in-plane spacing is 1 (pixel units). The frame interval is
``1 / frame rate`` as the container reports it, or 1 when the container reports none.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np

from deepultrasound.errors import FileFormatError
from deepultrasound.io.image import Image
from deepultrasound.io.integrity import require_nonempty_file


def read_video(path: str | os.PathLike[str], grayscale: bool = True) -> Image:
    """Decode every frame of a video file.

    Args:
        path: the video file.
        grayscale: convert frames to one channel; otherwise keep RGB (a multichannel image).

    Returns:
        ``Image`` with array ``(frames, rows, cols)`` (or ``(frames, rows, cols, 3)``), uint8.
    """
    path = Path(path)
    require_nonempty_file(path)
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise FileFormatError(f"{path} is not a video OpenCV can open (corrupt file or unsupported codec)")
        fps = capture.get(cv2.CAP_PROP_FPS)
        conversion = cv2.COLOR_BGR2GRAY if grayscale else cv2.COLOR_BGR2RGB
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, conversion))
    finally:
        capture.release()
    if not frames:
        raise FileFormatError(f"{path} holds no decodable video frames")
    interval = 1.0 / fps if math.isfinite(fps) and fps > 0 else 1.0
    return Image(np.stack(frames), (1.0, 1.0, interval), multichannel=not grayscale)
