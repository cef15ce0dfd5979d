"""Model runtime: bundles (manifest + weights + sha256), TorchScript/ONNX export, inference
backends, device choice, parity between backends, and per-frame steps replayed as CUDA graphs
(``graphs``).

Typical use::

    bundle = load_bundle("models/reusenet")          # verified against its checksums
    predictor = create_predictor(bundle, backend="onnxruntime", device="auto")
    strain, = predictor.predict(frames)              # numpy in, numpy out
    strain, = predictor.predict_tensors(tensors)     # torch in, torch out, on the model's device
    vae = create_predictor(bundle, network="vae")    # a further network of the bundle, by name
    list_bundles()                                   # installed bundles: the package's models folder
                                                     # and the folders in DEEPULTRASOUND_MODELS
"""

from deepultrasound.runtime.architectures import build_architecture, register_architecture, registered_architectures
from deepultrasound.runtime.backends import (
    AUTO_BACKEND,
    BACKEND_CHOICES,
    BACKENDS,
    Predictor,
    RecurrentPredictor,
    create_predictor,
)
from deepultrasound.runtime.bundle import (
    MODELS_ENVIRONMENT_VARIABLE,
    Bundle,
    BundleSummary,
    Manifest,
    NetworkExport,
    StateSpec,
    TensorSpec,
    bundled_models_dir,
    find_bundles,
    list_bundles,
    load_bundle,
    load_network_bundle,
    model_directories,
    record_metrics,
    save_bundle,
)
from deepultrasound.runtime.device import available_devices, choose_device
from deepultrasound.runtime.manifest import NetworkSpec
from deepultrasound.runtime.parity import ParityReport, check_parity

__all__ = [
    "AUTO_BACKEND",
    "BACKEND_CHOICES",
    "BACKENDS",
    "MODELS_ENVIRONMENT_VARIABLE",
    "Bundle",
    "BundleSummary",
    "Manifest",
    "NetworkExport",
    "NetworkSpec",
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
    "list_bundles",
    "load_bundle",
    "load_network_bundle",
    "model_directories",
    "record_metrics",
    "register_architecture",
    "registered_architectures",
    "save_bundle",
]
