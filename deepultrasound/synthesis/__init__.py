"""USSynth: ultrasound images from label maps by semantic diffusion with the B-map (depth attenuation) process.

- ``bmaps``          the B-map forward process (per-pixel attenuation with depth) and depth maps of
                     linear and sector probes (the fan estimated from a label map or given)
- ``schedulers``     MONAI's DDPM and DDIM schedulers with ``alpha_bar_t B_bar_t(x)`` per pixel
- ``model``          the SPADE diffusion UNet on integer label maps (null label for classifier-free
                     guidance) and sampling with DDPM or DDIM
- ``data``           label-map and image pairs: CAMUS, the echo simulator, linear-probe scenes;
                     label augmentation
- ``training_task``  the ``us-diffusion`` training task (registered through ``capability.py``)
- ``inference``      model lookup, label maps made ready for a model (classes, grid, fan), batched sampling
- ``command``        ``deepultrasound synth``: a label map -> images on its grid
- ``dataset_command`` ``deepultrasound synth-dataset``: a folder of label maps -> a CAMUS-like dataset
- ``bench``          ``deepultrasound bench synth``: segmenters trained on synthetic vs real images, realism,
                     sampling speed; its data (``bench_data``), segmenter (``segmentation``), realism
                     metrics (``realism``) and picture (``plots``)
"""
