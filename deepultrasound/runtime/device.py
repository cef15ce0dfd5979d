"""Choice of the torch device that runs a model.

Precedence: an explicit ``requested`` device, then the environment variable
``DEEPULTRASOUND_DEVICE``, then automatic choice (CUDA, else Apple MPS, else CPU).
"""

from __future__ import annotations

import os

import torch

from deepultrasound.errors import InputError

#: environment variable that overrides the automatic device choice
DEVICE_ENVIRONMENT_VARIABLE = "DEEPULTRASOUND_DEVICE"

_AUTO = "auto"


def available_devices() -> list[str]:
    """Names of the devices this machine offers, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def _automatic() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _parse(text: str, source: str) -> torch.device:
    """A device from ``text`` ("cpu", "cuda", "cuda:1", "mps"), checked against what is available."""
    try:
        device = torch.device(text.strip().lower())
    except RuntimeError as error:
        raise InputError(f"unknown device {text!r} ({source}); use auto, cpu, cuda, cuda:N or mps") from error
    available = available_devices()
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        usable = torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    elif device.type == "mps":
        usable = torch.backends.mps.is_available()
    else:
        raise InputError(f"unsupported device {text!r} ({source}); use auto, cpu, cuda, cuda:N or mps")
    if not usable:
        raise InputError(f"device {text!r} ({source}) is not available here; available: {', '.join(available)}")
    return device


def choose_device(requested: str | torch.device | None = None) -> torch.device:
    """The torch device to run on.

    Args:
        requested: "cpu", "cuda", "cuda:N", "mps", a ``torch.device``, or ``None``/"auto" for
            the automatic choice. ``None`` and "auto" defer to ``DEEPULTRASOUND_DEVICE`` when set.

    Raises:
        InputError: the device is unknown or not available on this machine (the message lists
            the available ones).
    """
    if isinstance(requested, torch.device):
        requested = str(requested)
    if requested is not None and requested.strip().lower() != _AUTO:
        return _parse(requested, "requested")
    from_environment = os.environ.get(DEVICE_ENVIRONMENT_VARIABLE, "").strip()
    if from_environment and from_environment.lower() != _AUTO:
        return _parse(from_environment, f"from {DEVICE_ENVIRONMENT_VARIABLE}")
    return _automatic()
