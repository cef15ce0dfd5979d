"""The ``inference`` section of a bundle manifest: how a capability runs its network(s).

One model per capability, told apart by ``kind`` (a pydantic discriminated union) and versioned
by ``version``, so a reader refuses settings it does not know instead of guessing. ``normalisation``
stays the manifest's record of how inputs are scaled; this section holds everything else the
inference code of the capability reads: frame pairing, pre-alignment, samplers, sizes, classes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelClass(_Section):
    """One label of a label map: its name and its integer value in the map."""

    name: str = Field(min_length=1)
    value: int = Field(ge=0)


def _distinct_values(classes: list[LabelClass]) -> None:
    values = [label.value for label in classes]
    if len(set(values)) != len(values):
        raise ValueError(f"label class values must be distinct, got {values}")


class ElastographyInference(_Section):
    """Strain elastography (DeepUSE): which frame pairs the network was trained on and how they are prepared.

    Attributes:
        pairs: ``"first"``: the network takes (reference, k) pairs directly; ``"previous"``:
            it was trained on frame-to-frame pairs (k-1, k), so the displacement to the reference
            is composed from frame-to-frame ones.
        prealign: ``"uniform_strain"``: the moving frame of each frame-to-frame pair is warped by
            the pair's uniform-strain fit first and the network returns the residual; None: no
            pre-alignment.
        input_multiple: (rows, lines): frames are zero-padded at the bottom and right to
            multiples of these before the network, and its output cropped back.
    """

    kind: Literal["elastography"] = "elastography"
    version: Literal[1] = 1
    pairs: Literal["first", "previous"] = "first"
    prealign: Literal["uniform_strain"] | None = None
    input_multiple: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = (16, 16)

    @model_validator(mode="after")
    def _prealign_needs_frame_pairs(self) -> ElastographyInference:
        if self.prealign is not None and self.pairs != "previous":
            raise ValueError(
                f"prealign {self.prealign!r} needs pairs 'previous' (pre-aligned pairs are frame to frame)"
            )
        return self


class NoiseSchedule(_Section):
    """A diffusion model's training noise schedule: ``name`` (e.g. ``"linear_beta"``), steps, beta range."""

    name: str = Field(min_length=1)
    num_train_timesteps: int = Field(ge=1)
    beta_start: float = Field(gt=0, lt=1)
    beta_end: float = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _increasing(self) -> NoiseSchedule:
        if self.beta_start >= self.beta_end:
            raise ValueError(f"beta_start {self.beta_start} must be below beta_end {self.beta_end}")
        return self


class BMapSettings(_Section):
    """The depth-attenuation "B-map" forward process (per-pixel alpha_bar, :mod:`deepultrasound.synthesis.bmaps`).

    Attributes:
        enabled: False: the plain process.
        eps: the B-map floor (0.97 as published; 1 attenuates nothing).
        probe: whose depth the B-maps follow: the row (``"linear"``) or the distance from the
            fan's apex (``"sector"``).
        outside_label: sector probes: the label value outside the fan, from which the fan is
            estimated; None: the fan geometry is given with each label map.
    """

    enabled: bool = False
    eps: float = Field(0.97, gt=0, le=1)
    probe: Literal["linear", "sector"] = "linear"
    outside_label: int | None = Field(None, ge=0)


class DiffusionInference(_Section):
    """Label-conditioned ultrasound synthesis: schedule, sampler defaults and the label classes.

    Attributes:
        image_size: (H, W) in pixels of the generated images.
        prediction_type: what the network predicts, ``"epsilon"`` (the noise) or ``"v_prediction"``
            (``v = sqrt(a) eps - sqrt(1 - a) x_0``, ``a`` the per-pixel ``alpha_bar``; Salimans & Ho 2022).
        sampler, sampling_steps: the default sampler and its number of denoising steps.
        guidance_scale: classifier-free guidance weight (1.0: conditional model alone).
        label_classes: the values a conditioning label map may hold, with their names.
    """

    kind: Literal["diffusion"] = "diffusion"
    version: Literal[1] = 1
    schedule: NoiseSchedule
    bmap: BMapSettings = BMapSettings()
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    sampler: Literal["ddim", "ddpm"] = "ddim"
    sampling_steps: int = Field(50, ge=1)
    guidance_scale: float = Field(1.0, ge=0)
    label_classes: list[LabelClass] = Field(min_length=1)
    image_size: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]

    @model_validator(mode="after")
    def _consistent(self) -> DiffusionInference:
        _distinct_values(self.label_classes)
        values = [label.value for label in self.label_classes]
        if self.bmap.outside_label is not None and self.bmap.outside_label not in values:
            raise ValueError(f"bmap.outside_label {self.bmap.outside_label} is not a label class value {values}")
        if self.sampling_steps > self.schedule.num_train_timesteps:
            raise ValueError(
                f"sampling_steps {self.sampling_steps} exceeds the {self.schedule.num_train_timesteps} training steps"
            )
        return self


class RegistrationInference(_Section):
    """Dense frame-to-frame registration.

    Attributes:
        input_size: (H, W) the frames are resampled to before the network.
        displacement_units: units of the output displacement (pixels of ``input_size``).
        channel_order: what the input channels hold, in order (e.g. ``["fixed", "moving"]``).
        diffeomorphic: the output is a stationary velocity field integrated to a displacement.
        label_classes: the values of the label maps the model was trained with.
    """

    kind: Literal["registration"] = "registration"
    version: Literal[1] = 1
    input_size: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]
    displacement_units: Literal["pixels"] = "pixels"
    channel_order: list[str] = Field(default=["fixed", "moving"], min_length=1)
    diffeomorphic: bool = False
    label_classes: list[LabelClass] = []

    @model_validator(mode="after")
    def _consistent(self) -> RegistrationInference:
        _distinct_values(self.label_classes)
        return self


class SuperResolutionInference(_Section):
    """One-axis super-resolution: the upsampled axis, the factor, the sub-sampling phase of the
    degradation model (which of each ``factor`` lines the low-resolution image kept) and the range
    of its beam-profile blur the model was trained on (lowest, highest Gaussian sigma in fine lines
    before the decimation; 0: none)."""

    kind: Literal["superres"] = "superres"
    version: Literal[1] = 1
    axis: Literal["lateral"] = "lateral"
    factor: int = Field(ge=2)
    phase: int = Field(0, ge=0)
    blur_sigma_lines: tuple[float, float] = (0.0, 0.0)

    @model_validator(mode="after")
    def _phase_below_factor(self) -> SuperResolutionInference:
        if self.phase >= self.factor:
            raise ValueError(f"phase {self.phase} must be below factor {self.factor}")
        lowest, highest = self.blur_sigma_lines
        if not 0 <= lowest <= highest:
            raise ValueError(
                f"blur_sigma_lines must be (lowest, highest) with 0 <= lowest <= highest, got {lowest, highest}"
            )
        return self


InferenceSpec = Annotated[
    ElastographyInference | DiffusionInference | RegistrationInference | SuperResolutionInference,
    Field(discriminator="kind"),
]
"""The ``inference`` section of a manifest, one model per capability (``kind``)."""
