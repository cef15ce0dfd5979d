"""EchoRegistration: echocardiography motion tracking with anatomical (shape VAE) and texture (adversarial) constraints.

- ``networks``       RegUNet (MONAI) predicting a displacement in pixels, optionally diffeomorphic
- ``preprocessing``  the frame normalisation shared by training and inference
- ``data``           the CAMUS split (last 20 patients for validation), CAMUS and simulated ED/ES pairs
- ``shape_vae``      variational autoencoders of LV and myocardium masks, the shape latent loss
- ``training_task``  the ``echo-registration`` task: similarity, bending, Dice, shape and texture terms
- ``shape_task``     the ``shape-vae`` task that trains the shape VAEs
                     (both tasks registered through ``capability.py``)
"""
