"""Image, sequence, dataset and video files with their geometry.

Array conventions (see ``deepultrasound.io.image``): a 2D image is ``(rows, cols)`` =
``(axial / depth, lateral)``; a sequence is ``(frames, rows, cols)``, stored on disk as a 3D
volume whose third axis is the frame axis. Spacing is in SimpleITK order,
``(lateral mm, axial mm[, frame interval s])``, and also exposed as ``Image.lateral_spacing_mm``,
``Image.axial_spacing_mm`` and ``Image.frame_interval``.

- ``images``  read/write ``.mha/.mhd/.nrrd/.nii/.nii.gz`` (atomic writes, dtype kept)
- ``camus``   the CAMUS echocardiography dataset in its 2019 ``.mhd`` and newer ``.nii.gz`` layouts
- ``video``   ``.avi/.mp4`` echo videos (OpenCV)
- ``atomic``  temp-file-and-rename output for any writer
"""

from deepultrasound.io.atomic import atomic_write
from deepultrasound.io.camus import PHASES, VIEWS, CamusDataset, CamusInfo, CamusLabel, read_camus_info
from deepultrasound.io.image import Image
from deepultrasound.io.images import (
    READ_SUFFIXES,
    WRITE_SUFFIXES,
    from_sitk,
    read_image,
    read_sequence,
    to_sitk,
    write_image,
)
from deepultrasound.io.video import read_video

__all__ = [
    "PHASES",
    "READ_SUFFIXES",
    "VIEWS",
    "WRITE_SUFFIXES",
    "CamusDataset",
    "CamusInfo",
    "CamusLabel",
    "Image",
    "atomic_write",
    "from_sitk",
    "read_camus_info",
    "read_image",
    "read_sequence",
    "read_video",
    "to_sitk",
    "write_image",
]
