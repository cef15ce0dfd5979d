"""Import checkpoints of the original DeepUSE code (``<epoch>_net_USENet.pth``, ``<epoch>_net_ReUSENet.pth``).

Those files are plain state dicts (``torch.save(net.state_dict())``), with a ``module.`` prefix
when saved from ``torch.nn.DataParallel``. Their keys follow the original module layout, e.g.
``encoder.down_res_0.conv_0.conv.0.weight`` or ``decoder.up_res_2.lstm.Gates.bias``;
:func:`original_key` maps each parameter name of :class:`USENet` / :class:`ReUSENet` to it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from deepultrasound.elastography.layers import NormKind
from deepultrasound.elastography.networks import ReUSENet, USENet
from deepultrasound.errors import FileFormatError

# registered architecture name -> class (see deepultrasound.runtime.architectures)
_NETWORKS: dict[str, type[USENet] | type[ReUSENet]] = {"usenet": USENet, "reusenet": ReUSENet}
_DATA_PARALLEL_PREFIX = "module."
_FIRST_CONV = "encoder.down_res_0.conv_0.conv.0.weight"

# (pattern over our name, replacement giving the original name), applied in order.
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^encoder\.(\d+)\.conv(\d+)\.", r"encoder.down_res_\1.conv_\2."),
    (r"^decoder\.(\d+)\.merge\.deconv\.", r"decoder.up_res_\1.transposed."),
    (r"^decoder\.(\d+)\.conv(\d+)\.", r"decoder.up_res_\1.conv_\2."),
    (r"^decoder\.(\d+)\.lstm\.gates\.", r"decoder.up_res_\1.lstm.Gates."),
    (r"^bottleneck\.gates\.", r"decoder.bottleneck.Gates."),
    (r"^bottleneck\.", r"decoder.bottleneck."),
    (r"^ddf_head\.convs\.", r"decoder.ddf_summand.convs."),
    # conv + norm units: original nn.Sequential(conv, norm, relu) vs MONAI Convolution(conv, adn.N)
    (r"\.conv\.(weight|bias)$", r".conv.0.\1"),
    (r"\.adn\.N\.(weight|bias)$", r".conv.1.\1"),
)


def original_key(key: str) -> str:
    """Name in the original DeepUSE code of our parameter ``key``, e.g. ``encoder.0.conv1.adn.N.weight``
    -> ``encoder.down_res_0.conv_1.conv.1.weight``."""
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def strip_data_parallel_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix that ``torch.nn.DataParallel`` adds to every key."""
    return {
        key[len(_DATA_PARALLEL_PREFIX) :] if key.startswith(_DATA_PARALLEL_PREFIX) else key: value
        for key, value in state_dict.items()
    }


def infer_original_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, object]:
    """Architecture and sizes of an original DeepUSE state dict.

    Returns:
        ``{"architecture": "usenet" | "reusenet", "in_channels": int, "initial_channels": int}``
        (architecture names as registered in :mod:`deepultrasound.runtime.architectures`):
        ReUSENet when the state dict holds ConvLSTM gates (``...Gates.weight``); the channels
        come from the first convolution, of shape ``(initial_channels, in_channels, 3, 3)``.

    Raises:
        FileFormatError: the state dict is not one of an original DeepUSE network.
    """
    state_dict = strip_data_parallel_prefix(state_dict)
    first = state_dict.get(_FIRST_CONV)
    if first is None or first.ndim != 4:
        raise FileFormatError(
            f"not a DeepUSE USENet/ReUSENet state dict: no 4-D tensor '{_FIRST_CONV}' "
            f"(first keys: {list(state_dict)[:5]})"
        )
    recurrent = any(".Gates." in key for key in state_dict)
    return {
        "architecture": "reusenet" if recurrent else "usenet",
        "in_channels": int(first.shape[1]),
        "initial_channels": int(first.shape[0]),
    }


def load_original_state_dict(model: USENet | ReUSENet, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load an original DeepUSE state dict into ``model``, strictly.

    Args:
        model: a :class:`USENet` or :class:`ReUSENet` of the checkpoint's size (see
            :func:`infer_original_config`); either norm.
        state_dict: original keys, with or without the ``module.`` prefix.

    Raises:
        FileFormatError: keys missing or unexpected (listed with their original names), or
            a tensor of the wrong shape.
    """
    given = strip_data_parallel_prefix(state_dict)
    ours = model.state_dict()
    names = {original_key(key): key for key in ours}
    missing = sorted(set(names) - set(given))
    unexpected = sorted(set(given) - set(names))
    if missing or unexpected:
        raise FileFormatError(
            f"DeepUSE state dict does not match {type(model).__name__}(initial_channels={model.initial_channels}): "
            f"missing keys {missing}, unexpected keys {unexpected}"
        )
    wrong_shapes = [
        f"{name}: {tuple(given[name].shape)} (expected {tuple(ours[key].shape)})"
        for name, key in names.items()
        if given[name].shape != ours[key].shape
    ]
    if wrong_shapes:
        raise FileFormatError(f"DeepUSE state dict has tensors of the wrong shape: {wrong_shapes}")
    model.load_state_dict({key: given[name] for name, key in names.items()}, strict=True)


def import_deepuse_checkpoint(
    path: str | Path, norm: NormKind = "instance"
) -> tuple[USENet | ReUSENet, dict[str, object]]:
    """Build the network saved in an original DeepUSE checkpoint and load its weights.

    Args:
        path: ``<epoch>_net_USENet.pth`` or ``<epoch>_net_ReUSENet.pth`` (a plain state dict,
            read with ``weights_only=True``: nothing is unpickled beyond tensors).
        norm: normalisation of the built network, see :class:`USENet`.

    Returns:
        ``(model, config)``: the model in eval mode on the CPU, and
        ``{"architecture", "in_channels", "initial_channels", "norm"}``: the registered
        architecture name and its constructor arguments (``model.get_config()``).

    Raises:
        FileFormatError: missing, unreadable or not a DeepUSE state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"DeepUSE checkpoint not found: {path}")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or non-tensor pickles
        raise FileFormatError(f"cannot read DeepUSE checkpoint {path} as a tensor state dict: {error}") from error
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise FileFormatError(f"DeepUSE checkpoint {path} is not a plain state dict of tensors")
    config = infer_original_config(state_dict)
    architecture = str(config["architecture"])
    model = _NETWORKS[architecture](
        in_channels=int(config["in_channels"]), initial_channels=int(config["initial_channels"]), norm=norm
    )
    load_original_state_dict(model, state_dict)
    return model.eval(), {"architecture": architecture, **model.get_config()}
