"""Spatial operations shared by every capability, on 2D images and displacement fields.

Convention: a displacement is ``(B, 2, H, W)`` in pixels, channel 0 lateral (x, along W), channel 1
axial (y, along H), and ``moving(p + u(p)) ~ fixed(p)``.

- ``warp``       warp an image by a displacement, compose displacements, MONAI channel order
- ``velocity``   scaling-and-squaring integration of a stationary velocity field (MONAI ``DVF2DDF``)
- ``jacobian``   Jacobian determinant of ``x + u(x)``, fraction of folded pixels
- ``labels``     label maps warped as soft one-hot; nearest label by argmax
- ``padding``    zero-pad to a size multiple and crop back
- ``resample``   a displacement on another grid of the same field of view
- ``bmode``      RF -> envelope -> log-compressed B-mode in dB
"""

from deepultrasound.spatial.bmode import DEFAULT_DYNAMIC_RANGE_DB, bmode_db, envelope
from deepultrasound.spatial.jacobian import folding_fraction, jacobian_determinant
from deepultrasound.spatial.labels import labels_to_one_hot, warp_labels, warp_soft_labels
from deepultrasound.spatial.padding import crop_to_size, pad_to_multiple
from deepultrasound.spatial.resample import resize_displacement
from deepultrasound.spatial.velocity import DEFAULT_INTEGRATION_STEPS, integrate_velocity
from deepultrasound.spatial.warp import check_displacement, compose_displacements, to_monai_order, warp_image

__all__ = [
    "DEFAULT_DYNAMIC_RANGE_DB",
    "DEFAULT_INTEGRATION_STEPS",
    "bmode_db",
    "check_displacement",
    "compose_displacements",
    "crop_to_size",
    "envelope",
    "folding_fraction",
    "integrate_velocity",
    "jacobian_determinant",
    "labels_to_one_hot",
    "pad_to_multiple",
    "resize_displacement",
    "to_monai_order",
    "warp_image",
    "warp_labels",
    "warp_soft_labels",
]
