"""A per-frame step replayed as one CUDA graph.

A live stream on a GPU runs a few hundred small kernels per frame (pre-alignment fit, warp,
network, composition); launched one by one from Python they cost more than they compute.
:class:`GraphedStep` records ``function(*inputs)`` once as a CUDA graph on static input buffers;
each call copies the new inputs into the buffers, replays the graph and returns copies of the
outputs (the graph's own output memory is reused by the next replay).

The function may update persistent tensors in place (a recurrent state, the previous frame of a
chain), never rebinding them: the graph reads and writes the memory it saw at capture. Those
tensors are passed as ``state``, so that the warm-up run before the capture leaves them as they
were.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from deepultrasound.errors import InputError

Step = Callable[..., torch.Tensor]
"""``(*inputs) -> output``: a step on tensors of fixed shapes that updates its state in place."""


def snapshot(state: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of ``state``, for :func:`restore`."""
    return [tensor.clone() for tensor in state]


def restore(state: Sequence[torch.Tensor], saved: Sequence[torch.Tensor]) -> None:
    """Write a :func:`snapshot` back into the same tensors (in place: their storage stays put)."""
    for tensor, value in zip(state, saved):
        tensor.copy_(value)


class GraphedStep:
    """``function(*inputs)`` captured once as a CUDA graph and replayed per call.

    Args:
        function: the step; its inputs have the shapes of ``inputs`` at every call.
        inputs: example inputs on one CUDA device (their values are used by the warm-up only).
        state: tensors ``function`` updates in place; left unchanged by the construction.

    Raises:
        InputError: the inputs are not on a CUDA device.
        RuntimeError: the capture failed (an operation that synchronises with the host or
            cannot be recorded); the caller may run ``function`` eagerly instead.
    """

    def __init__(self, function: Step, inputs: Sequence[torch.Tensor], state: Sequence[torch.Tensor]) -> None:
        device = inputs[0].device
        if device.type != "cuda":
            raise InputError(f"CUDA graphs need CUDA tensors, got tensors on {device}")
        self._inputs = [tensor.clone() for tensor in inputs]
        saved = snapshot(state)
        # The warm-up on a side stream settles what the capture must not do for the first time:
        # lazy initialisation, cuFFT plans, cuDNN algorithm choices, allocator growth.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            function(*self._inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        restore(state, saved)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):  # records the kernels without running them
            self._output = function(*self._inputs)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The step on ``inputs`` (copied into the static buffers); a fresh output tensor."""
        for buffer, value in zip(self._inputs, inputs):
            buffer.copy_(value)
        self._graph.replay()
        return self._output.clone()
