"""Model runtime: bundles (manifest + weights + sha256), TorchScript/ONNX export, inference
backends, device choice and parity between backends.

Typical use::

    bundle = load_bundle("models/reusenet")          # verified against its checksums
    predictor = create_predictor(bundle, backend="onnxruntime", device="auto")
    strain, = predictor.predict(frames)              # numpy in, numpy out
"""

from deepultrasound.runtime.architectures import build_architecture, register_architecture, registered_architectures
from deepultrasound.runtime.backends import BACKENDS, Predictor, RecurrentPredictor, create_predictor
from deepultrasound.runtime.bundle import (
    Bundle,
    Manifest,
    StateSpec,
    TensorSpec,
    bundled_models_dir,
    find_bundles,
    load_bundle,
    save_bundle,
)
from deepultrasound.runtime.device import available_devices, choose_device
from deepultrasound.runtime.parity import ParityReport, check_parity

__all__ = [
    "BACKENDS",
    "Bundle",
    "Manifest",
    "ParityReport",
    "Predictor",
    "RecurrentPredictor",
    "StateSpec",
    "TensorSpec",
    "available_devices",
    "build_architecture",
    "bundled_models_dir",
    "check_parity",
    "choose_device",
    "create_predictor",
    "find_bundles",
    "load_bundle",
    "register_architecture",
    "registered_architectures",
    "save_bundle",
]
