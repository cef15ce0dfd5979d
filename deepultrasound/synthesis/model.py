"""The semantic diffusion model: MONAI's SPADE diffusion UNet on label maps, and sampling with guidance.

:class:`SemanticDiffusionUNet` predicts the noise (or the velocity: the bundle's ``prediction_type``) of a
noisy image ``(B, 1, H, W)`` at timesteps ``(B,)`` given an integer label map ``(B, H, W)``; the label map
conditions the decoder through spatially adaptive normalisation (SPADE) of its one-hot encoding. Label values
``0 .. K-1`` are the classes and ``K`` is the null label, which stands for "no label map" in classifier-free
guidance (Ho & Salimans 2022): the network learns both from label maps replaced by the null label in training.

:func:`sample` runs DDPM or DDIM with the B-map schedulers of :mod:`deepultrasound.synthesis.schedulers`
and returns images in [0, 1]; the network works on images scaled to [-1, 1] (:data:`NORMALISATION`).
Where a sector model's label map marks pixels outside the fan, their value is known (no echo: 0 in
B-mode); after every step those pixels are replaced by that value noised to the step reached, so the
network is shown, outside the fan, what the forward process would hold there (known-region conditioning,
as in RePaint, Lugmayr et al. 2022). Left to the network, the background drifts and the fan's
brightness with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch
from monai.networks.nets import SPADEDiffusionModelUNet
from torch import nn
from tqdm import tqdm

from deepultrasound.errors import InputError
from deepultrasound.runtime.architectures import register_architecture
from deepultrasound.runtime.inference_specs import DiffusionInference
from deepultrasound.synthesis.bmaps import depth_from_labels
from deepultrasound.synthesis.schedulers import BMapDDIMScheduler, BMapDDPMScheduler, scheduler_for

ARCHITECTURE = "synthesis.spade-diffusion-unet"
NORMALISATION = {
    "kind": "unit_to_symmetric",
    "description": "B-mode in [0, 1] is scaled to [-1, 1] (2 x - 1) for the network and back ((x + 1) / 2, "
    "clipped to [0, 1]) after sampling",
}
"""The ``normalisation`` manifest entry of synthesis bundles."""

Sampler = Literal["ddpm", "ddim"]
SAMPLING_REVISION = 2
"""Raised whenever :func:`sample` draws other images for the same network, label maps and settings (2: the known
background outside the fan), so that images kept from an earlier revision are not taken for new ones."""


class Denoiser(Protocol):
    """What :func:`sample` runs: a noise predictor in eval mode, called as :meth:`SemanticDiffusionUNet.forward`
    (the network itself, or its exported graph through a runtime predictor)."""

    multiple: int
    """Image sides must be multiples of it."""

    @property
    def null_label(self) -> int:
        """The label value that stands for no label map."""

    @property
    def device(self) -> torch.device:
        """Where its inputs and outputs live."""

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Predicted noise or velocity ``(B, 1, H, W)`` of ``x`` ``(B, 1, H, W)`` at ``timesteps`` ``(B,)`` given
        ``labels``."""


def size_multiple(channels: Sequence[int]) -> int:
    """What the sides of the images of a :class:`SemanticDiffusionUNet` with these ``channels`` must be multiples of
    (one halving per level below the first)."""
    return 2 ** (len(channels) - 1)


@register_architecture(ARCHITECTURE)
class SemanticDiffusionUNet(nn.Module):
    """Noise prediction conditioned on a label map (MONAI ``SPADEDiffusionModelUNet``, 2D, one image channel).

    Args:
        num_classes: K, the label values ``0 .. K-1``; the value K is the null label.
        channels: feature channels per level; attention (``num_head_channels`` per head) at the
            lowest resolution only.
        num_res_blocks: residual blocks per level.
        norm_num_groups: group-norm groups (divides every entry of ``channels``).
        spade_intermediate_channels: hidden channels of each SPADE block.

    Images need sides that are multiples of :func:`size_multiple` of ``channels``.
    """

    def __init__(
        self,
        num_classes: int,
        channels: Sequence[int] = (32, 64, 64),
        num_res_blocks: int = 1,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
        spade_intermediate_channels: int = 128,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if not channels or any(width % norm_num_groups for width in channels):
            raise ValueError(f"every entry of channels {tuple(channels)} must be a multiple of {norm_num_groups}")
        self.num_classes = num_classes
        self.multiple = size_multiple(channels)
        self.unet = SPADEDiffusionModelUNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            label_nc=num_classes + 1,
            num_res_blocks=num_res_blocks,
            channels=tuple(channels),
            attention_levels=tuple(level == len(channels) - 1 for level in range(len(channels))),
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
            spade_intermediate_channels=spade_intermediate_channels,
        )
        self.register_buffer("label_values", torch.arange(num_classes + 1)[None, :, None, None], persistent=False)

    @property
    def null_label(self) -> int:
        """The label value that stands for no label map."""
        return self.num_classes

    @property
    def device(self) -> torch.device:
        """Where the network's weights are."""
        return self.label_values.device

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Predicted noise or velocity ``(B, 1, H, W)`` of ``x`` ``(B, 1, H, W)`` (images in [-1, 1] plus noise) at
        ``timesteps`` ``(B,)`` int64 given ``labels`` ``(B, H, W)`` int64 in ``0 .. K`` (K: null)."""
        one_hot = (labels[:, None] == self.label_values).to(x.dtype)
        return self.unet(x, timesteps, one_hot)


def check_labels(labels: torch.Tensor, num_classes: int, multiple: int = 1) -> None:
    """Refuse label maps that are not ``(B, H, W)`` integers in ``0 .. num_classes - 1`` with sides of ``multiple``."""
    if labels.ndim != 3:
        raise InputError(f"label maps must be (B, H, W), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(f"label maps must hold integers, got dtype {labels.dtype}")
    if labels.numel() == 0:
        raise InputError("the label maps are empty")
    unknown = sorted(set(torch.unique(labels).tolist()) - set(range(num_classes)))
    if unknown:
        raise InputError(f"label values {unknown} are unknown to the model, which knows 0..{num_classes - 1}")
    if labels.shape[-2] % multiple or labels.shape[-1] % multiple:
        raise InputError(f"label maps of {tuple(labels.shape[-2:])} pixels: the sides must be multiples of {multiple}")


def guided_noise(
    model: Denoiser, x: torch.Tensor, timestep: torch.Tensor, labels: torch.Tensor, guidance_scale: float
) -> torch.Tensor:
    """Classifier-free guided output ``out_null + g (out_labels - out_null)`` ``(B, 1, H, W)`` (noise or velocity).

    ``g = 1`` runs the conditional network alone and ``g = 0`` the unconditional one alone; other
    scales run both in one batch.
    """
    timesteps = timestep.expand(x.shape[0])
    null = torch.full_like(labels, model.null_label)
    if guidance_scale == 1.0:
        return model(x, timesteps, labels)
    if guidance_scale == 0.0:
        return model(x, timesteps, null)
    conditional, unconditional = model(
        torch.cat([x, x]), torch.cat([timesteps, timesteps]), torch.cat([labels, null])
    ).chunk(2)
    return unconditional + guidance_scale * (conditional - unconditional)


@torch.inference_mode()
def sample(
    model: Denoiser,
    labels: torch.Tensor,
    spec: DiffusionInference,
    *,
    sampler: Sampler | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    depth: torch.Tensor | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Images ``(B, 1, H, W)`` float32 in [0, 1] synthesised from label maps ``(B, H, W)``.

    With a sector ``spec`` that names the outside-the-fan label, the pixels holding it are the known background
    at every step (see the module docstring) and 0 in the images.

    Args:
        model: the trained network in eval mode, or its exported graph (see :class:`Denoiser`); its device is used.
        labels: integer label maps with values among ``spec.label_classes`` (``0 .. K-1``).
        spec: the bundle's inference section: schedule, B-map settings and the defaults below.
        sampler, steps, guidance_scale: DDPM or DDIM, its number of denoising steps and the
            classifier-free guidance scale (None: the defaults of ``spec``).
        seed: the only source of randomness (initial noise, DDPM's noise, the background's noise).
        depth: ``(B|1, 1, H, W)`` normalised depth for the B-maps; None: from the label maps
            (:func:`~deepultrasound.synthesis.bmaps.depth_from_labels` with ``spec.bmap``).
        progress: show a progress bar over the denoising steps.
    """
    sampler = sampler or spec.sampler
    steps = steps or spec.sampling_steps
    guidance_scale = spec.guidance_scale if guidance_scale is None else guidance_scale
    if guidance_scale < 0:
        raise InputError(f"the guidance scale must be >= 0, got {guidance_scale}")
    check_labels(labels, len(spec.label_classes), model.multiple)
    device = model.device
    labels = labels.to(device=device, dtype=torch.long)
    if spec.bmap.enabled and depth is None:
        depth = depth_from_labels(labels, spec.bmap.probe, spec.bmap.outside_label)
    depth = depth.to(device) if spec.bmap.enabled else None
    scheduler = scheduler_for(spec, sampler)
    scheduler.set_timesteps(steps)
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn((labels.shape[0], 1, *labels.shape[-2:]), generator=generator, device=device)
    outside = spec.bmap.outside_label
    known = (labels == outside)[:, None] if spec.bmap.probe == "sector" and outside is not None else None
    for timestep in tqdm(scheduler.timesteps, desc=f"{sampler.upper()} steps", disable=not progress, leave=False):
        noise = guided_noise(model, x, timestep.to(device), labels, guidance_scale)
        x, _ = scheduler.step(noise, int(timestep), x, generator=generator, depth=depth)
        if known is not None:
            x = torch.where(known, _noised_background(scheduler, int(timestep), x, depth, generator), x)
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0).float()


def _noised_background(
    scheduler: BMapDDPMScheduler | BMapDDIMScheduler,
    timestep: int,
    x: torch.Tensor,
    depth: torch.Tensor | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """``(B, 1, H, W)``: the background (-1: no echo) noised by the forward process to the sampling schedule's
    timestep after ``timestep`` (the background itself after the last one), like ``x``."""
    background = torch.full_like(x, -1.0)
    previous = scheduler.previous_timestep(timestep)
    if previous < 0:
        return background
    noise = torch.randn(x.shape, dtype=x.dtype, generator=generator, device=x.device)
    timesteps = torch.full((x.shape[0],), previous, dtype=torch.long, device=x.device)
    return scheduler.add_noise(background, noise, timesteps, depth=depth)
