"""Registry of network architectures, so a bundle rebuilds its model from a name and arguments.

A capability package registers its networks when it is imported::

    @register_architecture("reusenet")
    class ReUSENet(nn.Module): ...

A bundle manifest records the architecture name, its constructor arguments and the module
that registers it; loading imports that module (only modules of this package) and builds the
network without unpickling anything.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from deepultrasound.errors import BundleError

#: only modules under this prefix may be imported on behalf of a manifest
TRUSTED_MODULE_PREFIX = "deepultrasound."

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_architecture(name: str) -> Callable[[Factory], Factory]:
    """Decorator that registers an ``nn.Module`` class (or a factory returning one) as ``name``.

    Registering the same object twice (a module imported again) is harmless; registering a
    different object under a taken name raises ``ValueError``.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"architecture name must be a non-empty string, got {name!r}")

    def decorator(factory: Factory) -> Factory:
        known = _REGISTRY.get(name)
        if known is not None and _qualified_name(known) != _qualified_name(factory):
            raise ValueError(
                f"architecture {name!r} is already registered by {_qualified_name(known)}; "
                f"choose another name for {_qualified_name(factory)}"
            )
        _REGISTRY[name] = factory
        return factory

    return decorator


def _qualified_name(factory: Callable[..., Any]) -> str:
    return f"{factory.__module__}.{factory.__qualname__}"


def registered_architectures() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(_REGISTRY)


def import_architecture_module(module: str) -> None:
    """Import ``module`` so that it registers its architectures.

    Raises:
        BundleError: the module is outside this package (a manifest may not make the engine
            import arbitrary code) or cannot be imported.
    """
    if not module.startswith(TRUSTED_MODULE_PREFIX):
        raise BundleError(
            f"architecture_module {module!r} is not a {TRUSTED_MODULE_PREFIX.rstrip('.')} module; "
            "bundles may only name modules of this package"
        )
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise BundleError(f"cannot import architecture_module {module!r}: {error}") from error


def build_architecture(name: str, args: dict[str, Any]) -> nn.Module:
    """A new, untrained network of architecture ``name`` built with keyword arguments ``args``.

    Raises:
        BundleError: the name is not registered (the message lists the known ones), or the
            arguments do not fit its constructor.
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        known = ", ".join(registered_architectures()) or "none"
        raise BundleError(f"unknown architecture {name!r}; registered architectures: {known}")
    try:
        model = factory(**args)
    except (TypeError, ValueError) as error:
        raise BundleError(f"architecture {name!r} cannot be built from arguments {args!r}: {error}") from error
    if not isinstance(model, nn.Module):
        raise BundleError(f"architecture {name!r} built a {type(model).__name__}, not a torch nn.Module")
    return model
