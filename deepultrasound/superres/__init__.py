"""USSuperRes: lateral super-resolution of ultrasound images with the line-decimation degradation model.

- ``degradation``    keep every F-th beam line (optional beam-profile blur first); linear and cubic
                     upsamplers across lines with the same phase (coarse line k at fine line k F)
- ``networks``       SRResNet generator upsampling x only (one-axis pixel shuffle), SRGAN discriminator
- ``data``           simulated beam-space B-mode, the BUSI split, patches and augmentation
- ``training_task``  the ``superres`` training task (registered through ``capability.py``)
"""
