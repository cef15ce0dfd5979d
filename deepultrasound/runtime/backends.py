"""One inference interface over three backends: eager torch, TorchScript and ONNX Runtime.

``create_predictor(bundle, backend, network=...)`` returns a :class:`Predictor` of one network of
the bundle (the main one by default); ``predict`` takes and returns numpy arrays in the order of
the exported graphs (data inputs, then states), each in the dtype of its TensorSpec (float32 data,
integer label maps or timesteps), and ``predict_tensors`` the same as torch tensors that stay on
the model's device (no host copy with the torch and TorchScript backends).
:class:`RecurrentPredictor` keeps the states of a recurrent model between numpy calls.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from abc import ABC, abstractmethod

import numpy as np
import torch

from deepultrasound.errors import InputError
from deepultrasound.runtime.bundle import Bundle, load_bundle
from deepultrasound.runtime.device import choose_device
from deepultrasound.runtime.manifest import MAIN_NETWORK, NetworkSpec, TensorSpec, file_name
from deepultrasound.runtime.shapes import check_shapes

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "torchscript", "onnxruntime")
AUTO_BACKEND = "auto"
"""ONNX Runtime on the CPU when the bundle has an ONNX graph, else torch (see :func:`create_predictor`)."""
BACKEND_CHOICES = (AUTO_BACKEND, *BACKENDS)


class Predictor(ABC):
    """Runs a bundle's model on numpy arrays.

    Attributes:
        bundle: the verified bundle.
        network: the name of the network run (see :meth:`Manifest.network_names`).
        spec: its manifest entry (inputs, outputs, states).
        backend: "torch", "torchscript" or "onnxruntime".
        device: the torch device the model runs on (ONNX Runtime: CUDA or CPU).
    """

    backend: str

    def __init__(self, bundle: Bundle, device: torch.device, network: str = MAIN_NETWORK) -> None:
        self.bundle = bundle
        self.network = network
        self.spec: NetworkSpec = bundle.manifest.network(network)
        self.device = device
        self._inputs = self.spec.graph_inputs()
        self._outputs = self.spec.graph_outputs()

    def predict(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Outputs (data outputs, then updated states) for ``inputs`` (data inputs, then states).

        Arrays are converted to the dtype of their TensorSpec; integer inputs must hold whole
        numbers within the spec's ``range`` or ``values``.

        Raises:
            InputError: wrong number of inputs, rank, fixed size or inconsistent symbolic size
                (the message gives expected and given shapes), non-finite values, or values an
                integer input may not hold.
        """
        arrays = [np.asarray(array) for array in inputs]
        check_shapes([(spec.name, spec.shape) for spec in self._inputs], [array.shape for array in arrays])
        converted = []
        for spec, array in zip(self._inputs, arrays):
            if not np.issubdtype(array.dtype, np.number):
                raise InputError(f"input {spec.name!r} has dtype {array.dtype}; expected a numeric array")
            if not np.isfinite(array).all():
                raise InputError(f"input {spec.name!r} contains NaN or infinite values")
            converted.append(_converted(array, spec))
        return self._run(converted)

    def predict_tensors(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """:meth:`predict` on torch tensors: outputs in their specs' dtypes on the first input's device.

        The device-resident path of a live stream: with the torch and TorchScript backends,
        inputs on the model's device are used as they are and outputs stay there (no host copy,
        no synchronisation); ONNX Runtime goes through host arrays. Shapes are checked, values
        are not (that would synchronise a GPU on every call): callers check their frames.

        Raises:
            InputError: wrong number of inputs, rank, fixed size or inconsistent symbolic size.
        """
        check_shapes([(spec.name, spec.shape) for spec in self._inputs], [tuple(tensor.shape) for tensor in inputs])
        return self._run_tensors(list(inputs))

    @abstractmethod
    def _run(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        """Run the model on validated arrays."""

    def _run_tensors(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Run the model on shape-checked tensors; this default goes through :meth:`_run` on the host."""
        arrays = [
            np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.dtype(spec.dtype))
            for tensor, spec in zip(inputs, self._inputs)
        ]
        device = inputs[0].device
        return tuple(torch.from_numpy(output).to(device) for output in self._run(arrays))

    def __repr__(self) -> str:
        manifest = self.bundle.manifest
        network = "" if self.network == MAIN_NETWORK else f", network={self.network}"
        return (
            f"{type(self).__name__}({manifest.name} {manifest.version}{network}, backend={self.backend}, "
            f"device={self.device})"
        )


def _converted(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """``array`` as a contiguous array of ``spec.dtype``; integer specs take whole numbers within
    their ``range`` or ``values`` only (a float label map is not silently truncated)."""
    if spec.is_float:
        return np.ascontiguousarray(array, dtype=np.dtype(spec.dtype))
    if not np.array_equal(array, np.round(array)):
        raise InputError(f"input {spec.name!r} is {spec.dtype}: it takes whole numbers, got fractional values")
    if spec.range is not None and array.size and (array.min() < spec.range[0] or array.max() > spec.range[1]):
        raise InputError(
            f"input {spec.name!r} holds values in [{array.min()}, {array.max()}], outside its range {list(spec.range)}"
        )
    if spec.values is not None and not np.isin(array, spec.values).all():
        unknown = np.setdiff1d(np.unique(array), spec.values)[:10].astype(np.int64)
        raise InputError(f"input {spec.name!r} holds values {unknown.tolist()} not among its values {spec.values}")
    return np.ascontiguousarray(array, dtype=np.dtype(spec.dtype))


class _TorchModulePredictor(Predictor):
    """Shared part of the eager and TorchScript backends: a callable module on ``device``.

    With ``half``, the module's weights are float16 and floating-point inputs are cast to float16
    on the way in; outputs are in their specs' dtypes either way (float32 data).
    """

    def __init__(self, bundle: Bundle, device: torch.device, network: str, module: torch.nn.Module, half: bool) -> None:
        super().__init__(bundle, device, network)
        self.half = half
        self._float = torch.float16 if half else torch.float32
        self._module = module.half() if half else module
        self._input_dtypes = [self._float if spec.is_float else getattr(torch, spec.dtype) for spec in self._inputs]
        self._output_dtypes = [getattr(torch, spec.dtype) for spec in self._outputs]

    def _run(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        outputs = self._run_tensors([torch.from_numpy(array) for array in inputs])
        return tuple(output.cpu().numpy() for output in outputs)

    def _run_tensors(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        device = inputs[0].device
        with torch.inference_mode():
            outputs = self._module(
                *[tensor.to(self.device, dtype) for tensor, dtype in zip(inputs, self._input_dtypes)]
            )
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return tuple(output.to(device, dtype) for output, dtype in zip(outputs, self._output_dtypes))


class TorchPredictor(_TorchModulePredictor):
    """Eager PyTorch: the architecture rebuilt from the registry with the bundle's weights."""

    backend = "torch"

    def __init__(self, bundle: Bundle, device: torch.device, network: str = MAIN_NETWORK, half: bool = False) -> None:
        super().__init__(bundle, device, network, bundle.build_torch_model(device, network), half)


class TorchScriptPredictor(_TorchModulePredictor):
    """The bundle's traced TorchScript graph."""

    backend = "torchscript"

    def __init__(self, bundle: Bundle, device: torch.device, network: str = MAIN_NETWORK, half: bool = False) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # TorchScript is deprecated, still served
            module = torch.jit.load(io.BytesIO(bundle.read("torchscript", network)), map_location=device)
        super().__init__(bundle, device, network, module.eval(), half)


class OnnxRuntimePredictor(Predictor):
    """The bundle's ONNX graph in ONNX Runtime: CUDA provider on a CUDA device when installed, else CPU."""

    backend = "onnxruntime"

    def __init__(self, bundle: Bundle, device: torch.device, network: str, threads: int | None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        # Idle intra-op threads sleep instead of spinning: spinning threads take the cores from
        # the other stages of a live pipeline (strain, B-mode, network I/O).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[str | tuple[str, dict[str, int]]] = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
            else:
                logger.warning("onnxruntime has no CUDA provider (install onnxruntime-gpu); running on the CPU")
                device = torch.device("cpu")
        elif device.type != "cpu":
            logger.warning("onnxruntime does not run on %s; running on the CPU", device)
            device = torch.device("cpu")
        super().__init__(bundle, device, network)
        self._session = onnxruntime.InferenceSession(bundle.read("onnx", network), options, providers=providers)
        self._names = [value.name for value in self._session.get_inputs()]

    def _run(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        outputs = self._session.run(None, dict(zip(self._names, inputs)))
        return tuple(np.asarray(output, dtype=np.dtype(spec.dtype)) for output, spec in zip(outputs, self._outputs))


def available_backends(bundle: Bundle, network: str = MAIN_NETWORK) -> list[str]:
    """The backends ``network`` of this bundle can run on: torch always, the others when their file was exported."""
    kinds = {"torchscript": "torchscript", "onnxruntime": "onnx"}
    return [
        backend
        for backend in BACKENDS
        if backend not in kinds or file_name(kinds[backend], network) in bundle.manifest.files
    ]


def create_predictor(
    bundle_or_path: Bundle | str | os.PathLike[str],
    backend: str = "torch",
    device: str | torch.device | None = None,
    threads: int | None = None,
    half: bool = False,
    network: str | None = None,
) -> Predictor:
    """A predictor of one network of a bundle (or of the path of one, which is loaded and verified).

    Args:
        backend: "torch" (eager, rebuilt from the architecture registry), "torchscript",
            "onnxruntime", or "auto": ONNX Runtime when the model runs on the CPU and the bundle
            has an ONNX graph (on 2 CPU cores it ran folded USENets 1.6 to 1.8x faster than eager
            torch), torch otherwise.
        device: see :func:`choose_device`; ``None`` is the automatic choice.
        threads: intra-op CPU threads (torch: ``torch.set_num_threads``, process-wide); ``None``
            leaves the library default.
        half: run the model in float16 (torch and TorchScript; meant for GPUs, where it halves
            memory traffic; "auto" then picks torch). Outputs stay float32.
        network: which network of the bundle (see :meth:`Manifest.network_names`); None: the main one.

    Raises:
        InputError: unknown backend or network, unavailable device, invalid thread count, or
            ``half`` with ONNX Runtime.
        BundleError: the bundle is invalid or lacks the backend's file.
    """
    if backend not in BACKEND_CHOICES:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be at least 1, got {threads}")
    bundle = bundle_or_path if isinstance(bundle_or_path, Bundle) else load_bundle(bundle_or_path)
    network = network or MAIN_NETWORK
    bundle.manifest.network(network)  # refuses an unknown network before anything is loaded
    chosen = choose_device(device)
    if backend == AUTO_BACKEND:
        onnx_on_cpu = chosen.type == "cpu" and not half and "onnxruntime" in available_backends(bundle, network)
        backend = "onnxruntime" if onnx_on_cpu else "torch"
    if backend == "onnxruntime":
        if half:
            raise InputError("half precision runs on the torch and torchscript backends, not onnxruntime")
        return OnnxRuntimePredictor(bundle, chosen, network, threads)
    if threads is not None:
        torch.set_num_threads(threads)
    predictor = TorchPredictor if backend == "torch" else TorchScriptPredictor
    return predictor(bundle, chosen, network, half)


class RecurrentPredictor:
    """Holds the states of a recurrent model between calls (the caller thread owns them).

    ``step(*data_inputs)`` feeds the data inputs with the current states, keeps the updated
    states and returns the data outputs. States start as zeros of shape
    (B, channels, H // stride, W // stride) from the first data input, and start again from
    zeros after :meth:`reset` or when the batch or spatial size of the first input changes.
    """

    def __init__(self, predictor: Predictor) -> None:
        if not predictor.spec.states:
            raise InputError(f"{predictor!r} has no recurrent states; use the predictor directly")
        self.predictor = predictor
        self._data_outputs = len(predictor.spec.outputs)
        self._states: list[np.ndarray] | None = None

    def reset(self) -> None:
        """Forget the states; the next step starts from zeros."""
        self._states = None

    def step(self, *data_inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Data outputs for ``data_inputs``, carrying the states over from the previous step."""
        spec = self.predictor.spec
        if len(data_inputs) != len(spec.inputs):
            names = ", ".join(tensor.name for tensor in spec.inputs)
            raise InputError(f"step takes {len(spec.inputs)} data input(s) ({names}); got {len(data_inputs)}")
        first = np.shape(data_inputs[0])
        if len(first) < 2:
            raise InputError(f"the first input needs batch and channel axes, got shape {first}")
        shapes = spec.initial_state_shapes(first)
        if self._states is None or [state.shape for state in self._states] != shapes:
            self._states = [np.zeros(shape, dtype=np.float32) for shape in shapes]
        outputs = self.predictor.predict(*data_inputs, *self._states)
        self._states = list(outputs[self._data_outputs :])
        return outputs[: self._data_outputs]

    @property
    def states(self) -> tuple[np.ndarray, ...]:
        """The states after the last step (empty before the first step or after a reset)."""
        return tuple(self._states or ())
