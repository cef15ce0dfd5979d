"""Symbolic tensor dimensions: naming them at export and checking given arrays against them.

A dimension is either a fixed size (``int``) or a symbol: a name such as ``"B"``, ``"H"``,
``"W"``, optionally scaled by an integer factor, ``"H//4"`` (floor division) or ``"W*4"``.
Plain names bind to the size first seen; scaled symbols are checked against their bound name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from deepultrasound.errors import InputError

Dim = int | str

_SYMBOL = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>//|\*)(?P<factor>[1-9][0-9]*))?$")

#: batch symbol; axis 0 of every data tensor
BATCH = "B"


def spatial_names(count: int) -> list[str]:
    """Symbols of ``count`` spatial axes: ``["H", "W"]`` for images, ``["D", "H", "W"]`` for volumes."""
    return {1: ["L"], 2: ["H", "W"], 3: ["D", "H", "W"]}.get(count, [f"S{index}" for index in range(count)])


def parse_symbol(symbol: str) -> tuple[str, str | None, int]:
    """``"H//4"`` -> ``("H", "//", 4)``; ``"W"`` -> ``("W", None, 1)``.

    Raises:
        ValueError: the text is not a symbol of this grammar.
    """
    match = _SYMBOL.match(symbol)
    if match is None:
        raise ValueError(f"invalid symbolic dimension {symbol!r}; use a name such as 'H', or 'H//4', 'W*2'")
    return match["name"], match["op"], int(match["factor"] or 1)


def scaled(name: str, op: str | None, factor: int) -> str:
    """Inverse of :func:`parse_symbol`; factor 1 gives the plain name."""
    return name if op is None or factor == 1 else f"{name}{op}{factor}"


def _evaluate(op: str | None, factor: int, size: int) -> int:
    return size // factor if op == "//" else size * factor


def name_dims(shape: Sequence[int], reference: Sequence[int], dynamic_spatial: bool = True) -> list[Dim]:
    """Symbolic shape of a tensor relative to the first input's shape ``reference`` (B, C, *spatial).

    Axis 0 is ``"B"`` when it equals the reference batch. A tensor of the reference's rank has a
    fixed channel axis 1 and spatial axes from 2; a tensor one axis shorter has no channel axis
    (e.g. a label map (B, H, W)) and spatial axes from 1; other ranks (e.g. timesteps (B,)) have
    no spatial axes. A spatial axis is named after the reference axis in its place when it
    equals it, is a multiple of it (``"W*4"``) or divides it (``"H//4"``); anything else is
    fixed. With ``dynamic_spatial=False`` (models with a fixed input size, e.g. a dense layer
    after the convolutions) every spatial axis is fixed.
    """
    names = spatial_names(len(reference) - 2)
    first_spatial = {len(reference): 2, len(reference) - 1: 1}.get(len(shape))
    dims: list[Dim] = []
    for axis, size in enumerate(shape):
        if axis == 0 and len(reference) > 0 and size == reference[0]:
            dims.append(BATCH)
        elif dynamic_spatial and first_spatial is not None and axis >= first_spatial and size > 0:
            base, name = reference[2 + axis - first_spatial], names[axis - first_spatial]
            if size % base == 0:
                dims.append(scaled(name, "*", size // base))
            elif base % size == 0:
                dims.append(scaled(name, "//", base // size))
            else:
                dims.append(size)
        else:
            dims.append(size)
    return dims


def check_shapes(specs: Sequence[tuple[str, Sequence[Dim]]], shapes: Sequence[tuple[int, ...]]) -> None:
    """Check array shapes against ``(name, dims)`` specs: count, rank, fixed sizes, consistent symbols.

    Raises:
        InputError: with the expected and the given shapes.
    """
    expected_text = ", ".join(f"{name} {_format(dims)}" for name, dims in specs)
    given_text = ", ".join(_format(shape) for shape in shapes)
    if len(shapes) != len(specs):
        raise InputError(f"expected {len(specs)} input(s): {expected_text}; got {len(shapes)}: {given_text}")
    bound: dict[str, int] = {}
    for (name, dims), shape in zip(specs, shapes):
        problem = _mismatch(dims, shape, bound)
        if problem:
            raise InputError(
                f"input {name!r} has shape {_format(shape)}, expected {_format(dims)} ({problem}); "
                f"all inputs expected: {expected_text}; given: {given_text}"
            )


def _mismatch(dims: Sequence[Dim], shape: tuple[int, ...], bound: dict[str, int]) -> str:
    """Why ``shape`` does not fit ``dims`` ("" when it does); binds new plain symbols in ``bound``."""
    if len(dims) != len(shape):
        return f"rank {len(shape)} instead of {len(dims)}"
    for axis, (dim, size) in enumerate(zip(dims, shape)):
        if isinstance(dim, int):
            if size != dim:
                return f"axis {axis} is {size}, must be {dim}"
            continue
        name, op, factor = parse_symbol(dim)
        if op is None:
            if bound.setdefault(name, size) != size:
                return f"axis {axis} ({name}) is {size} but {name} = {bound[name]} in an earlier input"
        elif name in bound and _evaluate(op, factor, bound[name]) != size:
            expected = _evaluate(op, factor, bound[name])
            return f"axis {axis} ({dim}) is {size}, must be {expected} for {name} = {bound[name]}"
    return ""


def _format(dims: Sequence[Dim]) -> str:
    return "(" + ", ".join(str(dim) for dim in dims) + ")"
