"""The downstream segmenter of the synthesis benchmark: a small MONAI UNet trained on image and label-map pairs.

The same network, budget (steps, batch, learning rate), augmentation and seed are used whatever the
images are (synthetic or real), so two segmenters differ only in what they were trained on.

- network: MONAI ``UNet``, 2D, one image channel, :data:`CHANNELS` with stride 2 and two residual
  units per level (about 0.4 M parameters), softmax over ``num_classes`` classes;
- training (:func:`train_segmenter`): Adam, MONAI ``DiceCELoss``; each item deformed by the label
  augmentation of the synthesis data (:class:`~deepultrasound.synthesis.data.LabelAugmentation`)
  before its label values are mapped to segmentation classes (``classes``: a lookup table, e.g. the
  outside-the-fan label of echo pairs to the background). A plain loop, not the trainer: the
  segmenter is a measuring instrument of the benchmark, never exported;
- evaluation: :func:`predict` (class per pixel), :func:`structure_dice` (MONAI ``DiceMetric`` per
  structure, a structure being a set of classes) and :func:`bottleneck_features` (the encoder's
  deepest activations, spatially averaged: the feature space of the Frechet distance).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.layers import SkipConnection
from monai.networks.nets import UNet
from torch import nn
from tqdm.auto import tqdm

from deepultrasound.errors import InputError
from deepultrasound.registration.metrics import structure_map
from deepultrasound.synthesis.data import LabelAugmentation, Pair

CHANNELS = (16, 32, 64, 128)
"""Feature channels per level of the segmenter; the bottleneck has the last."""
_PREDICT_BATCH = 64


@dataclass(frozen=True)
class SegmenterSettings:
    """The training budget and randomness shared by every segmenter of a comparison.

    Attributes:
        steps: optimiser steps. batch_size: pairs per step. learning_rate: Adam's.
        seed: initial weights, batch order and augmentation draws.
        augmentation: deformation of each training pair (None: none).
        device: where the segmenter trains and runs.
    """

    steps: int
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0
    augmentation: LabelAugmentation | None = None
    device: str | torch.device = "cpu"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise InputError(
                f"segmenter steps and batch size must be >= 1 and the learning rate > 0, got {self.steps}, "
                f"{self.batch_size}, {self.learning_rate}"
            )


def build_segmenter(num_classes: int) -> UNet:
    """The segmenter: images ``(B, 1, H, W)`` -> class logits ``(B, num_classes, H, W)``; sides multiples of 8."""
    if num_classes < 2:
        raise InputError(f"a segmenter needs at least 2 classes, got {num_classes}")
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=num_classes,
        channels=CHANNELS,
        strides=(2,) * (len(CHANNELS) - 1),
        num_res_units=2,
    )


def _bottleneck(network: UNet) -> nn.Module:
    """The deepest block of a MONAI UNet (inside its nested skip connections)."""
    block: nn.Module = network.model
    while isinstance(block, nn.Sequential) and isinstance(block[1], SkipConnection):
        block = block[1].submodule
    return block


def train_segmenter(
    pairs: Sequence[Pair], classes: torch.Tensor, settings: SegmenterSettings, description: str = "segmenter"
) -> UNet:
    """A segmenter trained on ``pairs`` (``image`` ``(1, S, S)`` in [0, 1], ``labels`` ``(S, S)`` int64), in eval mode.

    Args:
        classes: ``(L,)`` int64 lookup table: label value ``v`` of the pairs is segmentation class ``classes[v]``
            (``max + 1`` classes).
        settings: see :class:`SegmenterSettings`.
        description: of the progress bar.
    """
    if not pairs:
        raise InputError("no pairs to train a segmenter on")
    num_classes = int(classes.max()) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        network = build_segmenter(num_classes).to(settings.device)
    generator = torch.Generator().manual_seed(settings.seed)
    transform = settings.augmentation.transform(pairs[0]["labels"].shape[-1]) if settings.augmentation else None
    optimiser = torch.optim.Adam(network.parameters(), lr=settings.learning_rate)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    order = torch.randperm(len(pairs), generator=generator)
    position = 0
    network.train()
    for step in tqdm(range(settings.steps), desc=description, unit="step", leave=False):
        images, labels = [], []
        for slot in range(settings.batch_size):
            if position == len(order):
                order, position = torch.randperm(len(pairs), generator=generator), 0
            pair = pairs[int(order[position])]
            position += 1
            if transform is not None:
                seed = ((settings.seed * 1_000_003 + step) * settings.batch_size + slot) % 2**31
                pair = settings.augmentation.apply(transform, pair, seed)
            images.append(pair["image"])
            labels.append(classes[pair["labels"]])
        logits = network(torch.stack(images).to(settings.device))
        loss = loss_function(logits, torch.stack(labels)[:, None].to(settings.device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return network.eval()


@torch.inference_mode()
def predict(network: UNet, images: torch.Tensor) -> torch.Tensor:
    """Class per pixel ``(N, H, W)`` int64 of images ``(N, 1, H, W)`` in [0, 1] (on the CPU)."""
    device = next(network.parameters()).device
    return torch.cat([network(chunk.to(device)).argmax(1).cpu() for chunk in images.split(_PREDICT_BATCH)])


@torch.inference_mode()
def bottleneck_features(network: UNet, images: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` float32: the bottleneck activations of images ``(N, 1, H, W)``, averaged over space (on the CPU)."""
    captured: list[torch.Tensor] = []
    hook = _bottleneck(network).register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        predict(network, images)
    finally:
        hook.remove()
    return torch.cat([output.mean(dim=(-2, -1)).float().cpu() for output in captured])


def structure_dice(
    prediction: torch.Tensor, truth: torch.Tensor, structures: Mapping[str, tuple[int, ...]]
) -> dict[str, float | None]:
    """Mean Dice per structure over the images (MONAI ``DiceMetric``); a structure covers the classes it names.

    Args:
        prediction, truth: ``(N, H, W)`` integer classes.
        structures: name -> class values, e.g. ``{"epi": (1, 2)}``.

    Images whose truth lacks a structure are left out of its mean; None where every image lacks it.
    """
    if prediction.shape != truth.shape or prediction.ndim != 3:
        raise InputError(f"prediction {tuple(prediction.shape)} and truth {tuple(truth.shape)} must be (N, H, W)")

    def masks(labels: torch.Tensor) -> torch.Tensor:
        return torch.cat([structure_map(labels[:, None], values) for values in structures.values()], dim=1)

    per_image = DiceMetric(include_background=True, reduction="none", ignore_empty=True)(
        masks(prediction), masks(truth)
    )  # (N, structures), NaN where the truth lacks the structure
    found = torch.isfinite(per_image)
    means = torch.where(found, per_image, 0.0).sum(0) / found.sum(0)
    return {name: (float(value) if torch.isfinite(value) else None) for name, value in zip(structures, means)}
