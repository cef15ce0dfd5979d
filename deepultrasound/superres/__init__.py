"""USSuperRes: lateral super-resolution of ultrasound images with the line-decimation degradation model.

- ``degradation``    keep every F-th beam line (optional beam-profile blur first); linear and cubic
                     upsamplers across lines with the same phase (coarse line k at fine line k F)
- ``networks``       SRResNet generator upsampling x only (one-axis pixel shuffle), SRGAN discriminator
- ``data``           simulated beam-space B-mode, the BUSI split, patches and augmentation
- ``features``       a B-mode feature network (denoising autoencoder trained here) and the perceptual loss on it
- ``training_task``  the ``superres`` training task: SRResNet, or SRGAN with adversarial and perceptual losses
- ``feature_task``   the ``bmode-features`` task that trains the feature network
                     (both tasks registered through ``capability.py``)
- ``inference``      whole images and sequences through a bundle in overlapping tiles, or linear/cubic
- ``command``        ``deepultrasound superres IN --factor F -o OUT``
"""
