"""The capability registry: which commands, bench suites and training tasks the engine offers.

A capability contributes them without editing the trainer, ``cli.py`` or ``bench.py``: it
declares them in a *capability module*, plain data that imports nothing::

    # deepultrasound/elastography/capability.py
    COMMANDS = {"strain": ("deepultrasound.elastography.strain_command", "RF sequence file -> strain")}
    BENCH_SUITES = {"strain": "deepultrasound.elastography.bench"}
    TASKS = {"deepuse": "deepultrasound.elastography.training_task"}

``COMMANDS`` maps a subcommand to (module with ``configure(parser)`` and ``run(args) -> int``,
one-line help); ``BENCH_SUITES`` maps a suite to its module (``HELP``, ``configure``, ``run``, see
:mod:`deepultrasound.bench`); ``TASKS`` maps a task name to the module whose import registers it
(:func:`deepultrasound.training.task.register_task`). Each is optional. The modules named are
imported only when their command, suite or task is used, so ``deepultrasound --help`` stays fast.

Where capability modules are found:

- built in: ``deepultrasound/capability.py`` and ``capability.py`` in each sub-package of
  ``deepultrasound``; they are read without importing their package (whose ``__init__`` may
  load torch);
- installed: every module named by an entry point of the group ``deepultrasound.capabilities``,
  e.g. in a third-party ``pyproject.toml``::

      [project.entry-points."deepultrasound.capabilities"]
      toy = "toy_capability.capability"

Two capability modules that claim the same name are an error naming both.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.metadata
import importlib.util
import pkgutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType

from deepultrasound.errors import ConfigError

ENTRY_POINT_GROUP = "deepultrasound.capabilities"
CAPABILITY_MODULE = "capability"
"""Name of the capability module in the engine's package and in each of its sub-packages."""
_ROOT_PACKAGE = "deepultrasound"


@dataclass(frozen=True)
class Provided:
    """One command, bench suite or task.

    Attributes:
        module: the module that implements it (imported only when it is used).
        provider: the capability module that declared it, as it is named in error messages.
        help: one-line help (commands only).
    """

    module: str
    provider: str
    help: str = ""


@dataclass(frozen=True)
class Capabilities:
    """Everything registered, by name: subcommands, bench suites and training tasks."""

    commands: Mapping[str, Provided]
    bench_suites: Mapping[str, Provided]
    tasks: Mapping[str, Provided]


def _builtin_modules() -> Iterator[tuple[str, ModuleType]]:
    """The engine's own capability modules, executed from their files without importing their packages."""
    root = importlib.util.find_spec(_ROOT_PACKAGE)
    locations = list(root.submodule_search_locations or ())
    packages = [(_ROOT_PACKAGE, locations)]
    for info in pkgutil.iter_modules(locations):
        if info.ispkg:
            spec = info.module_finder.find_spec(f"{_ROOT_PACKAGE}.{info.name}")
            packages.append((spec.name, list(spec.submodule_search_locations or ())))
    for package, package_locations in packages:
        spec = importlib.machinery.PathFinder.find_spec(f"{package}.{CAPABILITY_MODULE}", package_locations)
        if spec is None:
            continue
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield spec.name, module


def _installed_modules() -> Iterator[tuple[str, ModuleType]]:
    """Capability modules of installed distributions, from the entry-point group."""
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        distribution = entry_point.dist.name if entry_point.dist is not None else "an unknown distribution"
        provider = f"{entry_point.value} (entry point '{entry_point.name}' of {distribution})"
        try:
            module = entry_point.load()
        except Exception as error:
            raise ConfigError(f"cannot load the capability module {provider}: {error}") from error
        if not isinstance(module, ModuleType):
            raise ConfigError(f"the entry point {provider} must name a module, not {type(module).__name__}")
        yield provider, module


def _declared(provider: str, module: ModuleType, attribute: str) -> Mapping[str, object]:
    declared = getattr(module, attribute, {})
    if not isinstance(declared, Mapping):
        raise ConfigError(f"{attribute} of the capability module {provider} must be a dict, got {declared!r}")
    return declared


def _entry(provider: str, attribute: str, name: object, value: object) -> Provided:
    """One declaration, checked: ``COMMANDS`` values are (module, help); the others a module name."""
    if attribute == "COMMANDS":
        if isinstance(value, tuple) and len(value) == 2 and all(isinstance(part, str) for part in value):
            return Provided(value[0], provider, value[1])
        expected = "a (module, one-line help) pair of strings"
    elif isinstance(value, str):
        return Provided(value, provider)
    else:
        expected = "a module name"
    raise ConfigError(f"{attribute}[{name!r}] of the capability module {provider} must be {expected}, got {value!r}")


def collect(modules: Iterator[tuple[str, ModuleType]]) -> Capabilities:
    """Merge capability modules given as (provider, module); a name claimed twice raises :class:`ConfigError`."""
    merged: dict[str, dict[str, Provided]] = {"COMMANDS": {}, "BENCH_SUITES": {}, "TASKS": {}}
    kinds = {"COMMANDS": "command", "BENCH_SUITES": "bench suite", "TASKS": "task"}
    seen: set[str] = set()
    for provider, module in modules:
        if module.__name__ in seen:  # one module named by two entry points, or built in and installed
            continue
        seen.add(module.__name__)
        for attribute, registered in merged.items():
            for name, value in _declared(provider, module, attribute).items():
                entry = _entry(provider, attribute, name, value)
                if name in registered:
                    raise ConfigError(
                        f"the {kinds[attribute]} '{name}' is declared twice: by {registered[name].provider} "
                        f"and by {provider}; uninstall one of them"
                    )
                registered[name] = entry
    return Capabilities(merged["COMMANDS"], merged["BENCH_SUITES"], merged["TASKS"])


@functools.cache
def capabilities() -> Capabilities:
    """The registry: built-in capabilities, then installed ones (read once per process)."""

    def every_module() -> Iterator[tuple[str, ModuleType]]:
        yield from _builtin_modules()
        yield from _installed_modules()

    return collect(every_module())
