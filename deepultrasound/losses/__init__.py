"""Losses and metrics shared by the image capabilities (registration, synthesis, super-resolution).

MONAI's where it has them, set up for 2D and for the project's displacement convention
(``(B, 2, H, W)`` in pixels, channel 0 lateral):

- ``similarity``   :class:`LocalNCCLoss` (2D LNCC), ``GlobalMutualInformationLoss``
- ``regularisers`` :class:`BendingEnergy`, :class:`FirstOrderSmoothness`
- ``DiceLoss``     MONAI's, on soft one-hot probabilities against a one-hot target
  (:func:`~deepultrasound.spatial.warp_soft_labels`, :func:`~deepultrasound.spatial.labels_to_one_hot`)
- ``metrics``      :func:`dice_score`, :func:`hausdorff_distance_95`, :func:`psnr`, :func:`ssim`

The DeepUSE training losses (signed tile NCC, L1 strain smoothness, temporal consistency) are
:mod:`deepultrasound.elastography.losses`.
"""

from monai.losses import DiceLoss

from deepultrasound.losses.metrics import dice_score, hausdorff_distance_95, psnr, ssim
from deepultrasound.losses.regularisers import BendingEnergy, FirstOrderSmoothness
from deepultrasound.losses.similarity import GlobalMutualInformationLoss, LocalNCCLoss

__all__ = [
    "BendingEnergy",
    "DiceLoss",
    "FirstOrderSmoothness",
    "GlobalMutualInformationLoss",
    "LocalNCCLoss",
    "dice_score",
    "hausdorff_distance_95",
    "psnr",
    "ssim",
]
