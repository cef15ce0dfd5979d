"""The ``us-diffusion`` training task: a semantic diffusion model of ultrasound from label maps, with B-maps.

Each step draws a timestep ``t`` and noise ``eps`` per image, noises the image (scaled to [-1, 1])
with the B-map forward process ``x_t = sqrt(alpha_bar_t B_bar_t) x_0 + sqrt(1 - alpha_bar_t B_bar_t) eps``
(:class:`~deepultrasound.synthesis.schedulers.BMapDDPMScheduler`, depth from each item's label map)
and trains :class:`~deepultrasound.synthesis.model.SemanticDiffusionUNet` to predict ``eps`` (MSE).
Classifier-free guidance: each label map is replaced by the null label with probability
``label_dropout``. An EMA copy of the network is validated and exported as a bundle whose
inference section (:class:`~deepultrasound.runtime.inference_specs.DiffusionInference`) states the
schedule, the B-map settings, the label classes, the image size and the default sampler, steps
and guidance scale.

Data (``data``): ``"echo"``, the CAMUS training split (the last 20 patients are never trained on)
and the echo simulator, sector probe; ``"linear"``, simulated linear-probe scenes
(:mod:`deepultrasound.synthesis.data`; ``linear_attenuation``: the depth attenuation left in their
images). Validation: the noise MSE at fixed noise and timesteps on held-out simulated pairs (and,
for echo, the first ``val_camus_patients`` held-out CAMUS patients), and images
``labels | real | synthetic`` from the default sampler with ``val_sampling_steps`` steps.
The sampling defaults and ``val_sampling_steps`` may change when a run resumes (``inference_args``).

Example configs: ``deepultrasound/configs/ussynth_echo_64.yaml``, ``ussynth_linear_64.yaml``,
``ussynth_echo_64_no_bmap.yaml``, ``ussynth_linear_attenuated_64.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn
from torch.utils.data import Dataset

from deepultrasound.errors import ConfigError
from deepultrasound.registration.data import camus_split, default_camus_root
from deepultrasound.runtime.inference_specs import BMapSettings, DiffusionInference, NoiseSchedule
from deepultrasound.superres.data import RESIDUAL_ATTENUATION_DB_CM_MHZ, attenuation_range
from deepultrasound.synthesis.bmaps import DEFAULT_EPS
from deepultrasound.synthesis.data import (
    DATA_LABELS,
    DATA_OUTSIDE,
    DATA_PROBES,
    SOURCES,
    LabelAugmentation,
    SynthesisPairs,
    camus_pairs,
    echo_pairs,
    label_classes,
    linear_pairs,
)
from deepultrasound.synthesis.model import ARCHITECTURE, NORMALISATION, SemanticDiffusionUNet, sample
from deepultrasound.synthesis.schedulers import scheduler_for
from deepultrasound.training.task import (
    ExportSpec,
    StepContext,
    Task,
    TaskArgs,
    ValidationContext,
    ValidationOutput,
    register_task,
)

NETWORK = "unet"
"""Name of the trained network in checkpoints and the export spec."""
VALIDATION_SEED_OFFSET = 1_000_003
"""Simulated validation pairs are drawn from ``seed + VALIDATION_SEED_OFFSET``: never a training pair."""
PANELS = 4
"""Validation images show the first this many label maps of the first batch."""
PREDICTED = {"epsilon": "noise", "v_prediction": "velocity"}
"""What the network's output is, by ``prediction_type``: its name in the export and the validation metric."""


class DiffusionArgs(TaskArgs):
    """``task_args`` of the ``us-diffusion`` task."""

    data: Literal["echo", "linear"] = Field("echo", description="echo: CAMUS + echo simulator; linear: scenes")
    image_size: int = Field(64, ge=8, description="side S of the square images and label maps, pixels")
    camus_patients: int | None = Field(
        None, ge=0, description="echo: CAMUS training patients used (first of the split); None: all, 0: none"
    )
    simulated_images: int = Field(400, ge=0, description="simulated training pairs (echo frames or linear scenes)")
    val_camus_patients: int = Field(2, ge=0, description="echo: held-out CAMUS patients validated on (first of 20)")
    val_simulated_images: int = Field(8, ge=0, description="held-out simulated validation pairs")
    linear_attenuation: tuple[float, float] = Field(
        RESIDUAL_ATTENUATION_DB_CM_MHZ,
        description="linear: range of the attenuation left after time-gain compensation, dB/cm/MHz (per scene)",
    )
    data_folder: str | None = Field(None, description="CAMUS folder (default: <shared data>/camus_train)")
    samples_per_epoch: int = Field(2048, ge=1, description="training items per epoch (pairs repeat, augmented)")
    augmentation_probability: float = Field(0.8, ge=0, le=1, description="of deforming a training pair")
    label_dropout: float = Field(0.2, ge=0, le=1, description="of replacing a label map by the null label")
    bmap_eps: float = Field(DEFAULT_EPS, gt=0, le=1, description="B-map floor; 1 turns B-maps off")
    prediction_type: Literal["epsilon", "v_prediction"] = Field(
        "epsilon",
        description="what the network predicts: the noise, or v = sqrt(a) eps - sqrt(1 - a) x0 (a = alpha_bar "
        "B_bar per pixel), whose x0 estimate does not amplify the network's error where the noise dominates",
    )
    num_train_timesteps: int = Field(1000, ge=2)
    schedule: Literal["linear_beta", "scaled_linear_beta", "sigmoid_beta"] = Field(
        "linear_beta", description="MONAI noise schedule (one of those that take beta_start and beta_end)"
    )
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)
    channels: tuple[int, ...] = Field((32, 64, 64), min_length=2, description="UNet channels per level")
    num_res_blocks: int = Field(1, ge=1)
    num_head_channels: int = Field(32, ge=1, description="attention channels per head (lowest level)")
    norm_num_groups: int = Field(32, ge=1, description="group-norm groups; divides every entry of channels")
    spade_intermediate_channels: int = Field(128, ge=1)
    sampler: Literal["ddim", "ddpm"] = Field("ddpm", description="the bundle's default sampler")
    sampling_steps: int = Field(50, ge=1, description="the bundle's default number of denoising steps")
    guidance_scale: float = Field(1.5, ge=0, description="the bundle's default classifier-free guidance scale")
    val_sampling_steps: int = Field(
        25, ge=0, description="steps of the validation images (the default sampler); 0: none"
    )

    @field_validator("linear_attenuation")
    @classmethod
    def _is_a_range(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        return attenuation_range(bounds)

    @field_validator("image_size")
    @classmethod
    def _fits_the_unet(cls, size: int) -> int:
        if size % 4:
            raise ValueError(f"image_size {size} must be a multiple of 4 (the UNet halves it twice)")
        return size


@register_task
class DiffusionTask(Task):
    """Train the semantic diffusion model on label-map and image pairs with the B-map forward process."""

    name = "us-diffusion"
    Args = DiffusionArgs
    inference_args = frozenset({"sampler", "sampling_steps", "guidance_scale", "val_sampling_steps"})

    def inference_spec(self) -> DiffusionInference:
        """The bundle's inference section for the top-level arguments."""
        args = self.args
        return DiffusionInference(
            schedule=NoiseSchedule(
                name=args.schedule,
                num_train_timesteps=args.num_train_timesteps,
                beta_start=args.beta_start,
                beta_end=args.beta_end,
            ),
            bmap=BMapSettings(
                enabled=args.bmap_eps < 1.0,
                eps=args.bmap_eps,
                probe=DATA_PROBES[args.data],
                outside_label=DATA_OUTSIDE[args.data],
            ),
            prediction_type=args.prediction_type,
            sampler=args.sampler,
            sampling_steps=args.sampling_steps,
            guidance_scale=args.guidance_scale,
            label_classes=label_classes(DATA_LABELS[args.data]),
            image_size=(args.image_size, args.image_size),
        )

    def _network_args(self) -> dict:
        args = self.args
        return {
            "num_classes": len(DATA_LABELS[args.data]),
            "channels": list(args.channels),
            "num_res_blocks": args.num_res_blocks,
            "num_head_channels": args.num_head_channels,
            "norm_num_groups": args.norm_num_groups,
            "spade_intermediate_channels": args.spade_intermediate_channels,
        }

    def build_networks(self) -> dict[str, nn.Module]:
        return {NETWORK: SemanticDiffusionUNet(**self._network_args())}

    def ema_networks(self) -> list[str]:
        return [NETWORK]

    def build_datasets(self, args: DiffusionArgs) -> tuple[Dataset, Dataset | None]:
        size, seed = args.image_size, self.seed
        train, val = [], []  # (pairs, source)
        if args.data == "echo":
            train.append((echo_pairs(seed, args.simulated_images, size), SOURCES.index("echo_simulator")))
            val.append(
                (
                    echo_pairs(seed + VALIDATION_SEED_OFFSET, args.val_simulated_images, size),
                    SOURCES.index("echo_simulator"),
                )
            )
            if args.camus_patients != 0 or args.val_camus_patients:
                root = Path(args.data_folder) if args.data_folder else default_camus_root()
                train_patients, val_patients = camus_split(root)
                chosen = train_patients if args.camus_patients is None else train_patients[: args.camus_patients]
                camus = SOURCES.index("camus")
                train.append((camus_pairs(root, chosen, size), camus))
                val.append((camus_pairs(root, val_patients[: args.val_camus_patients], size), camus))
        else:
            linear = SOURCES.index("linear_simulator")
            attenuation = {"attenuation_db_cm_mhz": args.linear_attenuation}
            train.append((linear_pairs(seed, args.simulated_images, size, **attenuation), linear))
            val.append(
                (linear_pairs(seed + VALIDATION_SEED_OFFSET, args.val_simulated_images, size, **attenuation), linear)
            )

        def dataset(parts: list, **options) -> SynthesisPairs | None:
            pairs = [pair for part, _ in parts for pair in part]
            if not pairs:
                return None
            sources = [source for part, source in parts for _ in part]
            return SynthesisPairs(pairs, sources, DATA_PROBES[args.data], DATA_OUTSIDE[args.data], seed, **options)

        augmentation = LabelAugmentation(args.augmentation_probability, fill_label=DATA_OUTSIDE[args.data])
        training = dataset(train, augmentation=augmentation, samples=args.samples_per_epoch)
        if training is None:
            raise ConfigError("the us-diffusion task needs training pairs: set simulated_images or camus_patients")
        return training, dataset(val, fixed_noise=True, num_train_timesteps=args.num_train_timesteps)

    def _noised_and_target(
        self, batch: Mapping[str, torch.Tensor], noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's images scaled to [-1, 1] and noised to ``timesteps`` by the B-map forward process, and what
        the network is to predict from them (the noise or the velocity, ``prediction_type``)."""
        scheduler = scheduler_for(self.inference_spec(), "ddpm")
        images, depth = batch["image"] * 2.0 - 1.0, batch["depth"]
        noised = scheduler.add_noise(images, noise, timesteps, depth=depth)
        return noised, scheduler.prediction_target(images, noise, timesteps, depth=depth)

    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        images, labels = batch["image"], batch["labels"]
        count = images.shape[0]
        noise = torch.randn_like(images)
        timesteps = torch.randint(self.args.num_train_timesteps, (count,), device=images.device)
        dropped = torch.rand(count, device=images.device) < self.args.label_dropout
        network = ctx.networks[NETWORK]
        null = len(DATA_LABELS[self.args.data])
        conditioning = torch.where(dropped[:, None, None], null, labels)
        noised, target = self._noised_and_target(batch, noise, timesteps)
        loss = F.mse_loss(network(noised, timesteps, conditioning).float(), target)
        ctx.optimize(loss)
        return {"mse": loss}

    def validation_step(self, batch: Mapping[str, torch.Tensor], ctx: ValidationContext) -> ValidationOutput:
        network = ctx[NETWORK]
        noised, target = self._noised_and_target(batch, batch["noise"], batch["timestep"])
        predicted = network(noised, batch["timestep"], batch["labels"]).float()
        metrics = {f"{PREDICTED[self.args.prediction_type]}_mse": ((predicted - target) ** 2).flatten(1).mean(1)}
        images = {}
        if ctx.batch_index == 0 and self.args.val_sampling_steps:
            labels = batch["labels"][:PANELS]
            synthetic = sample(
                network,
                labels,
                self.inference_spec(),
                steps=self.args.val_sampling_steps,
                seed=self.seed,
                depth=batch["depth"][:PANELS],
                progress=False,
            )
            scaled_labels = labels.float() / max(1, len(DATA_LABELS[self.args.data]) - 1)
            rows = [
                torch.cat([scaled_labels[i], batch["image"][i, 0], synthetic[i, 0]], dim=-1) for i in range(len(labels))
            ]
            images["labels_real_synthetic"] = torch.cat(rows, dim=-2)
        return ValidationOutput(metrics=metrics, images=images)

    def export_spec(self) -> ExportSpec:
        args = self.args
        size = args.image_size
        num_classes = len(DATA_LABELS[args.data])
        return ExportSpec(
            network=NETWORK,
            architecture=ARCHITECTURE,
            architecture_module="deepultrasound.synthesis.model",
            architecture_args=self._network_args(),
            description=f"{PREDICTED[args.prediction_type]} (B, 1, H, W) of a noisy image in [-1, 1] at timesteps "
            f"(B,) given a label map (B, H, W) of values 0..{num_classes - 1} ({num_classes}: the null label); "
            "sides multiples of 4",
            example_inputs=(
                torch.zeros(1, 1, size, size),
                torch.zeros(1, dtype=torch.long),
                torch.zeros(1, size, size, dtype=torch.long),
            ),
            input_names=["noisy", "timesteps", "labels"],
            output_names=[PREDICTED[args.prediction_type]],
            input_ranges={"timesteps": (0, args.num_train_timesteps - 1)},
            input_values={"labels": list(range(num_classes + 1))},
            normalisation=dict(NORMALISATION),
            task="synthesis",
            inference=self.inference_spec(),
        )
