"""Writers of the model files in a bundle: safetensors weights, TorchScript and ONNX graphs.

Each writer takes the model in eval mode and the example inputs of every graph input
(data inputs, then states) and writes one file.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from deepultrasound.errors import BundleError
from deepultrasound.runtime.manifest import TensorSpec

if TYPE_CHECKING:
    import onnx

#: ONNX opset of exported graphs
ONNX_OPSET = 18


def write_weights(model: nn.Module, path: Path, dtype: str = "float32") -> None:
    """Save the state dict as safetensors (no pickle), floating-point tensors in ``dtype``
    ("float32" or "float16"). Tensors are copied to the CPU and untied."""
    from safetensors.torch import save_file

    float_dtype = getattr(torch, dtype)
    state = {
        key: value.detach().to("cpu", float_dtype if value.is_floating_point() else value.dtype).contiguous().clone()
        for key, value in model.state_dict().items()
    }
    save_file(state, str(path), metadata={"format": "pt"})


def write_torchscript(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    """Trace ``model`` on ``example_inputs`` and save it as TorchScript."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            traced = torch.jit.trace(model, example_inputs)
            torch.jit.save(traced, str(path))
    except Exception as error:  # the tracer raises many types; report them as a failed export
        raise BundleError(
            f"TorchScript export to {path.name} failed: {error}; leave 'torchscript' out of formats"
        ) from error


def write_onnx(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> None:
    """Export ``model`` to ONNX with the torch.export-based exporter and check the graph.

    Symbolic dimensions of ``inputs`` (the graph inputs in ``forward``'s order, whether its
    parameters are named or gathered in ``*args``) become dynamic axes of the same name; the
    output axes are renamed to the symbols of ``outputs``. The torch.export-based exporter is used because the
    TorchScript-based one refuses batch-statistics BatchNorm, which the DeepUSE networks use.
    """
    import onnx

    try:
        dynamic_shapes = _dynamic_shapes(model, inputs)
        # without autograd bookkeeping, tracing and decomposing take about a third less time
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                example_inputs,
                str(path),
                input_names=[spec.name for spec in inputs],
                output_names=[spec.name for spec in outputs],
                dynamic_shapes=dynamic_shapes,
                opset_version=ONNX_OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
    except Exception as error:  # exporter and checker raise many types; report them as a failed export
        raise BundleError(f"ONNX export to {path.name} failed: {error}; leave 'onnx' out of formats") from error
    _check_dynamic_inputs(proto, inputs)
    _name_output_axes(proto, outputs)
    onnx.save(proto, str(path))


def _dynamic_shapes(model: nn.Module, inputs: Sequence[TensorSpec]) -> dict[str, Any]:
    """torch.export's dynamic shapes of ``model.forward``: parameter name -> {axis: symbol}.

    torch.export matches dynamic shapes to ``forward``'s parameters, so the per-input axes
    are bound to its signature like the inputs themselves: a ``*states`` parameter receives
    the tuple of the trailing inputs' axes.

    Raises:
        TypeError: ``forward`` does not take ``len(inputs)`` positional tensors.
    """
    axes = [{axis: dim for axis, dim in enumerate(spec.shape) if isinstance(dim, str)} for spec in inputs]
    return dict(inspect.signature(model.forward).bind(*axes).arguments)


def _check_dynamic_inputs(proto: onnx.ModelProto, inputs: Sequence[TensorSpec]) -> None:
    """Refuse a graph in which the exporter fixed an axis that the manifest declares symbolic."""
    for value, spec in zip(proto.graph.input, inputs):
        for axis, (exported, dim) in enumerate(zip(value.type.tensor_type.shape.dim, spec.shape)):
            if isinstance(dim, str) and not exported.dim_param:
                raise BundleError(
                    f"ONNX export fixed axis {axis} ({dim}) of input {spec.name!r} to {exported.dim_value}; "
                    "export with example sizes above 1 and avoid Python branches on tensor sizes"
                )


def _name_output_axes(proto: onnx.ModelProto, outputs: Sequence[TensorSpec]) -> None:
    """Give the graph outputs' symbolic axes the manifest's names (the exporter derives formulas)."""
    for value, spec in zip(proto.graph.output, outputs):
        for axis, dim in zip(value.type.tensor_type.shape.dim, spec.shape):
            if isinstance(dim, str):
                axis.dim_param = dim
