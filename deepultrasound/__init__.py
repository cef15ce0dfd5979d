"""DeepUltrasound: the headless engine behind the DeepUltrasound 3D Slicer extension.

Sub-packages, one job each:

- ``io``           image and sequence files with geometry (SimpleITK), CAMUS, echo videos
- ``runtime``      model bundles, TorchScript/ONNX export, inference backends, device choice
- ``training``     the headless trainer (validated configs, checkpoints, resume, DDP)
- ``simulation``   data with known ground truth
- ``elastography`` ``registration`` ``synthesis`` ``superres``   one package per capability
- ``streaming``    OpenIGTLink in/out and the real-time pipeline

The engine never imports Qt or the Slicer application.
"""

__version__ = "0.1.0"
