"""The ``deepuse`` training task: USENet / ReUSENet on RF sequences, unsupervised (a supervised term optional).

Each training sample is a crop of ``sequence_length`` consecutive RF frames. With ``pairs:
first`` the first is the fixed frame and every later frame ``t`` is paired with it, as ReUSENet
runs at inference; with ``pairs: previous`` frame ``t`` is paired with frame ``t - 1`` (small
displacements). With ``prealign`` the moving frame is first warped by the uniform-strain field of
:func:`~deepultrasound.elastography.prealign.linear_prealignment` (on the whole frame, before the
crop) and the network learns the residual. A bundle trained on frame-to-frame pairs records
``inference.pairs = "previous"`` (and ``inference.prealign = "uniform_strain"`` when pre-aligned),
so that inference (:class:`~deepultrasound.elastography.estimators.StrainEstimator`) chains its
frame-to-frame estimates to the reference as validation does. The
loss (:mod:`deepultrasound.elastography.losses`) needs no truth, so simulated and real RF train
alike. Simulated sequences know their displacement, and with ``supervised_weight`` a supervised
term on *refinement pairs* joins it: frame k warped back by its true displacement plus a smooth
random error, the pairs the refining pass sees at inference, with the true residual
(:func:`~deepultrasound.elastography.data.refinement_pair`). ReUSENet carries its convLSTM state
from pair to pair; with truncated back-propagation through time the pairs are processed in chunks
of ``truncation`` steps, the optimiser steps after each chunk and the states (and the last
motion-compensated strain of the consistency term) are detached before the next one.

Validation estimates the pairs (0, k) of the first frames of simulated validation sequences (a
centred crop) as inference does - directly, or chained from frame-to-frame pairs
(:class:`~deepultrasound.elastography.prealign.DisplacementChain`), with ``validate_refined``
each chained estimate refined against frame 0 as ``deepultrasound strain`` does - and reports,
per sequence, the axial strain NRMSE against the FEM truth and that of its contrast (least-squares strain with
``eval_window_mm``, on the rows where the window is complete) and the NCC between the fixed
frame and the warped moving frame, averaged over the pairs.

Example configs: ``deepultrasound/configs/deepuse_original.yaml`` (the paper's settings),
``deepuse_reusenet.yaml`` and ``deepuse_usenet.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from deepultrasound.elastography.bundles import (
    ARCHITECTURE_MODULE,
    INPUT_NAME,
    OUTPUT_NAME,
    TASK,
    deepuse_inference,
    deepuse_state_specs,
)
from deepultrasound.elastography.data import (
    RFSequence,
    SequenceCrops,
    ValidationSequences,
    load_real,
    load_simulated,
    prepare_simulated,
)
from deepultrasound.elastography.frames import DEEPUSE_NORMALISATION, NORMALISATIONS
from deepultrasound.elastography.layers import NormKind
from deepultrasound.elastography.losses import (
    compensated_strain,
    consistency_loss,
    similarity_loss,
    smoothness_loss,
    supervised_loss,
)
from deepultrasound.elastography.metrics import ncc, strain_nrmse, strain_nrmse_contrast
from deepultrasound.elastography.networks import NETWORK_STRIDE, ReUSENet, USENet, input_multiple
from deepultrasound.elastography.prealign import (
    PREALIGN_UNIFORM_STRAIN,
    DisplacementChain,
    mirror_averaged,
    prealigned_estimate,
    prealigned_previous,
    refined_against_reference,
)
from deepultrasound.elastography.splits import TRAINING_SEEDS, VALIDATION_SEEDS
from deepultrasound.elastography.strain import (
    DEFAULT_WINDOW_MM,
    axial_strain,
    window_samples,
)
from deepultrasound.errors import InputError
from deepultrasound.simulation import SimulationConfig
from deepultrasound.spatial import crop_to_size, pad_to_multiple, warp_image
from deepultrasound.training.task import (
    ExportSpec,
    StepContext,
    Task,
    TaskArgs,
    register_task,
)

NETWORK = "displacement"
"""Name of the trained network (in checkpoints and the export spec)."""

Size = tuple[int, int]


class DeepUSEArgs(TaskArgs):
    """``task_args`` of the ``deepuse`` task."""

    architecture: Literal["usenet", "reusenet"] = "reusenet"
    initial_channels: int = Field(8, ge=1, le=64, description="channels of the first level (8 or 16 published)")
    norm: NormKind = Field("instance", description="instance (exports to ONNX) or batch (the original layer)")
    axial_fold: int = Field(1, ge=1, le=16, description="USENet only: rows folded into channels (4: real time)")
    patch_size: Size = Field((256, 64), description="training crop (rows, lines), multiples of 16 (rows: 16 x fold)")
    sequence_length: int = Field(6, ge=2, description="frames per training sample, the first one fixed")
    truncation: int = Field(5, ge=1, description="pairs per back-propagation chunk (TBPTT)")
    pairs: Literal["first", "previous"] = Field("first", description="training pairs (0, t) or (t - 1, t)")
    prealign: bool = Field(False, description="train and validate on the residual after linear_prealignment")
    similarity_window: Size = Field((8, 8), description="NCC tile (rows, lines) of similarity and consistency")
    alpha: float = Field(5.0, ge=0, description="weight of the smoothness term")
    beta: float = Field(0.1, ge=0, description="weight of the temporal consistency term")
    consistency_window_mm: float = Field(
        1.0, gt=0, description="least-squares strain window of the consistency and supervised terms"
    )
    supervised_weight: float = Field(
        0.0, ge=0, description="weight of the supervised term on refinement pairs (simulated truth); 0: none"
    )
    refinement_error_px: tuple[float, float] = Field(
        (0.3, 0.2), description="largest RMS error (lateral, axial) per frame step of the refinement pairs, px"
    )
    validate_refined: bool = Field(
        False, description="refine each chained validation estimate against the first frame, as inference does"
    )
    normalisation: str = Field("frame_max", description="per-frame input normalisation (inference.NORMALISATIONS)")
    flip_lateral: bool = Field(True, description="mirror half of the training crops left-right")
    simulation: dict[str, Any] = Field(default_factory=dict, description="SimulationConfig fields of the sequences")
    train_sequences: int = Field(16, ge=0, description="simulated training sequences (seeds from TRAINING_SEEDS)")
    val_sequences: int = Field(4, ge=0, description="simulated validation sequences (seeds from VALIDATION_SEEDS)")
    real_sequences: list[str] = Field(default_factory=list, description="real RF sequence files (training only)")
    samples_per_epoch: int = Field(256, ge=1, description="training crops per epoch")
    cache_dir: str = Field("runs/cache/deepuse-simulation", description="folder of the simulated sequences")
    val_patch_size: Size = Field((1600, 128), description="centred validation crop (rows, lines), multiples of 16")
    eval_window_mm: float = Field(DEFAULT_WINDOW_MM, gt=0, description="least-squares strain window of validation")

    @field_validator("patch_size", "val_patch_size")
    @classmethod
    def _multiple_of_stride(cls, size: Size) -> Size:
        if min(size) < NETWORK_STRIDE or size[0] % NETWORK_STRIDE or size[1] % NETWORK_STRIDE:
            raise ValueError(f"must be positive multiples of {NETWORK_STRIDE}, got {list(size)}")
        return size

    @field_validator("normalisation")
    @classmethod
    def _known_normalisation(cls, kind: str) -> str:
        if kind not in NORMALISATIONS:
            raise ValueError(f"unknown normalisation {kind!r}; known: {', '.join(NORMALISATIONS)}")
        return kind

    @field_validator("simulation")
    @classmethod
    def _valid_simulation(cls, fields: dict[str, Any]) -> dict[str, Any]:
        SimulationConfig.model_validate(fields)
        return fields

    @model_validator(mode="after")
    def _consistent(self) -> DeepUSEArgs:
        if self.axial_fold > 1 and self.architecture != "usenet":
            raise ValueError("axial_fold is a USENet option; ReUSENet runs at full resolution (axial_fold: 1)")
        rows = input_multiple(self.axial_fold)[0]
        if self.patch_size[0] % rows:
            raise ValueError(f"patch_size rows must be a multiple of {rows} with axial_fold {self.axial_fold}")
        if self.prealign and self.pairs != "previous":
            raise ValueError("prealign needs pairs: previous (pre-aligned training pairs are frame to frame)")
        if self.validate_refined and self.pairs != "previous":
            raise ValueError("validate_refined needs pairs: previous (only chained estimates are refined)")
        if self.train_sequences == 0 and not self.real_sequences:
            raise ValueError("no training data: set train_sequences > 0 or give real_sequences")
        spacing = self.simulation_config.axial_spacing_mm
        samples = window_samples(self.consistency_window_mm, spacing)
        if self.beta > 0 and samples + self.similarity_window[0] > self.patch_size[0]:
            raise ValueError(
                f"consistency_window_mm {self.consistency_window_mm} ({samples} samples) leaves no rows of a "
                f"{self.patch_size[0]}-row patch for the consistency term; shorten it or use taller patches"
            )
        return self

    @property
    def simulation_config(self) -> SimulationConfig:
        return SimulationConfig.model_validate(self.simulation)


def _unwrapped(network: nn.Module) -> nn.Module:
    return network.module if isinstance(network, DistributedDataParallel) else network


def initial_states(network: nn.Module, pair: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Zero recurrent states of ``network`` (possibly DDP-wrapped) for ``pair`` ``(B, 2, H, W)``; none for USENet."""
    module = _unwrapped(network)
    return module.initial_state(pair) if isinstance(module, ReUSENet) else ()


def network_step(
    network: nn.Module, pair: torch.Tensor, states: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One pair through USENet or ReUSENet: ``(displacement (B, 2, H, W) px, new states)``."""
    if not states:
        return network(pair), ()
    displacement, *new_states = network(pair, *states)
    return displacement, tuple(new_states)


def _contrast_nrmse(strain: torch.Tensor, truth: torch.Tensor, region: torch.Tensor) -> float:
    """:func:`strain_nrmse_contrast`, NaN where the true strain is uniform (no inclusion)."""
    try:
        return strain_nrmse_contrast(strain, truth, region)
    except InputError:
        return math.nan


@register_task
class DeepUSETask(Task):
    """Displacement estimation for strain elastography (USENet or ReUSENet), unsupervised on RF pairs
    with an optional supervised term on simulated refinement pairs."""

    name = "deepuse"
    Args = DeepUSEArgs
    args: DeepUSEArgs

    # -- networks --------------------------------------------------------------------------------
    def build_networks(self) -> dict[str, nn.Module]:
        args = self.args
        if args.architecture == "reusenet":
            return {NETWORK: ReUSENet(in_channels=2, initial_channels=args.initial_channels, norm=args.norm)}
        return {
            NETWORK: USENet(
                in_channels=2, initial_channels=args.initial_channels, norm=args.norm, axial_fold=args.axial_fold
            )
        }

    # -- data ------------------------------------------------------------------------------------
    def build_datasets(self, args: DeepUSEArgs) -> tuple[Dataset, Dataset | None]:
        config = args.simulation_config
        cache = Path(args.cache_dir)
        train_seeds = list(TRAINING_SEEDS[: args.train_sequences])
        val_seeds = list(VALIDATION_SEEDS[: args.val_sequences])
        paths = prepare_simulated(cache, config, [*val_seeds, *train_seeds])
        loaded = [load_simulated(path, args.normalisation) for path in paths]
        validation_sequences = loaded[: len(val_seeds)]
        training: list[RFSequence] = loaded[len(val_seeds) :]
        training += [load_real(path, args.normalisation) for path in args.real_sequences]
        if args.prealign:
            training = [replace(sequence, aligned=prealigned_previous(sequence.rf)) for sequence in training]
        train_set = SequenceCrops(
            training,
            args.sequence_length,
            args.patch_size,
            args.samples_per_epoch,
            self.seed,
            args.flip_lateral,
            args.refinement_error_px if args.supervised_weight > 0 else None,
        )
        val_set = None
        if validation_sequences:
            val_set = ValidationSequences(
                validation_sequences,
                args.sequence_length,
                args.val_patch_size,
                args.eval_window_mm,
                config.axial_spacing_mm,
            )
        return train_set, val_set

    # -- steps -----------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        """Back-propagate the loss of the pairs (frame 0 or t - 1, frame t) chunk by chunk (TBPTT).

        ``batch["rf"]`` is ``(B, L, H, W)``; with ``prealign``, ``batch["aligned"]`` ``(B, L-1, H, W)``
        holds the moving frames pre-aligned onto their predecessors. Returns the means over the
        chunks of the total loss and of each term (the consistency term only when ``beta > 0`` and two steps exist).
        """
        args = self.args
        spacing = args.simulation_config.axial_spacing_mm
        rf = batch["rf"]
        network = ctx.networks[NETWORK]
        fixed = rf[:, :1]
        states = initial_states(network, torch.cat([fixed, fixed], dim=1))
        previous: torch.Tensor | None = None  # compensated strain of the last step, detached across chunks
        logged: dict[str, list[torch.Tensor]] = {}
        supervised = self._supervised_term(batch, network) if args.supervised_weight > 0 else None
        steps = list(range(1, rf.shape[1]))
        for first in range(0, len(steps), args.truncation):
            terms: dict[str, list[torch.Tensor]] = {"similarity": [], "smoothness": [], "consistency": []}
            for t in steps[first : first + args.truncation]:
                if args.pairs == "previous":
                    fixed = rf[:, t - 1 : t]
                moving = batch["aligned"][:, t - 1 : t] if args.prealign else rf[:, t : t + 1]
                displacement, states = network_step(network, torch.cat([fixed, moving], dim=1), states)
                terms["similarity"].append(similarity_loss(fixed, moving, displacement, args.similarity_window))
                terms["smoothness"].append(smoothness_loss(displacement))
                if args.beta > 0:
                    current = compensated_strain(displacement, args.consistency_window_mm, spacing)
                    if previous is not None:
                        terms["consistency"].append(
                            consistency_loss(
                                previous, current, args.consistency_window_mm, spacing, args.similarity_window
                            )
                        )
                    previous = current
            means = {key: torch.stack(values).mean() for key, values in terms.items() if values}
            if first == 0 and supervised is not None:
                means["supervised"] = supervised
            weights = {
                "similarity": 1.0,
                "smoothness": args.alpha,
                "consistency": args.beta,
                "supervised": args.supervised_weight,
            }
            loss = sum(weights[key] * value for key, value in means.items())
            ctx.optimize(loss)
            states = tuple(state.detach() for state in states)
            previous = previous.detach() if previous is not None else None
            for key, value in {"loss": loss, **means}.items():
                logged.setdefault(key, []).append(value.detach())
        return {key: torch.stack(values).mean() for key, values in logged.items()}

    def _supervised_term(self, batch: Mapping[str, torch.Tensor], network: nn.Module) -> torch.Tensor:
        """:func:`supervised_loss` of the network's residual on the batch's refinement pairs."""
        args = self.args
        pair = torch.stack([batch["refinement_fixed"], batch["refinement_moving"]], dim=1)
        residual, _ = network_step(network, pair, initial_states(network, pair))
        return supervised_loss(
            residual,
            batch["refinement_residual"],
            args.consistency_window_mm,
            args.simulation_config.axial_spacing_mm,
        )

    @torch.no_grad()
    def validation_step(
        self, batch: Mapping[str, torch.Tensor], networks: Mapping[str, nn.Module]
    ) -> dict[str, torch.Tensor]:
        """Per sequence ``(B,)``: ``strain_nrmse`` and ``strain_nrmse_contrast`` vs truth and
        ``warped_ncc``, means over the pairs (0, k)."""
        args = self.args
        spacing = args.simulation_config.axial_spacing_mm
        rf, truth, region = batch["rf"], batch["strain"], batch["region"]
        network = networks[NETWORK]
        fixed = rf[:, :1]
        states = initial_states(network, torch.cat([fixed, fixed], dim=1))

        def padded_step(
            pair: torch.Tensor, states: tuple[torch.Tensor, ...] | None
        ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
            """:func:`network_step` on ``pair`` padded to the network's multiple (None: from zero states)."""
            padded, size = pad_to_multiple(pair, input_multiple(args.axial_fold))
            if states is None:
                states = initial_states(network, padded)
            displacement, states = network_step(network, padded, states)
            return crop_to_size(displacement, size), states

        def network_on(pair: torch.Tensor) -> torch.Tensor:
            nonlocal states
            displacement, states = padded_step(pair, states)
            return displacement

        def frame_to_frame(first: torch.Tensor, second: torch.Tensor, starts: bool) -> torch.Tensor:
            if args.prealign:
                return prealigned_estimate(network_on, first, second)
            return network_on(torch.cat([first, second], dim=1))

        def at_rest(pair: torch.Tensor) -> torch.Tensor:
            return padded_step(pair, None)[0]

        def refine(first: torch.Tensor, second: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
            return refined_against_reference(
                lambda reference, warped: mirror_averaged(at_rest, torch.cat([reference, warped], dim=1)),
                first,
                second,
                displacement,
            )

        chain = None
        if args.pairs == "previous":
            chain = DisplacementChain(frame_to_frame, refine if args.validate_refined else None)
        pairs = rf.shape[1] - 1
        nrmse = torch.zeros(rf.shape[0], pairs)
        nrmse_contrast = torch.zeros(rf.shape[0], pairs)
        similarity = torch.zeros(rf.shape[0], pairs)
        for t in range(1, rf.shape[1]):
            moving = rf[:, t : t + 1]
            if chain is not None:
                displacement = chain.step(fixed, moving)
            else:
                displacement = network_on(torch.cat([fixed, moving], dim=1))
            strain = axial_strain(displacement, args.eval_window_mm, spacing)[:, 0]
            warped = warp_image(moving, displacement)[:, 0]
            for b in range(rf.shape[0]):
                nrmse[b, t - 1] = strain_nrmse(strain[b], truth[b, t - 1], region[b])
                nrmse_contrast[b, t - 1] = _contrast_nrmse(strain[b], truth[b, t - 1], region[b])
                similarity[b, t - 1] = ncc(fixed[b, 0], warped[b], region[b])
        return {
            "strain_nrmse": nrmse.mean(1).to(rf),
            "strain_nrmse_contrast": nrmse_contrast.nanmean(1).to(rf),
            "warped_ncc": similarity.mean(1).to(rf),
        }

    # -- export ----------------------------------------------------------------------------------
    def export_spec(self) -> ExportSpec:
        args = self.args
        network = self.build_networks()[NETWORK]
        if args.normalisation == DEEPUSE_NORMALISATION["kind"]:
            normalisation = dict(DEEPUSE_NORMALISATION)
        else:
            normalisation = {"kind": args.normalisation, "description": "per-frame normalisation used in training"}
        example = torch.randn(1, 2, *args.patch_size, generator=torch.Generator().manual_seed(0))
        return ExportSpec(
            network=NETWORK,
            task=TASK,
            architecture=args.architecture,
            architecture_module=ARCHITECTURE_MODULE,
            architecture_args=network.get_config(),
            example_inputs=(example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            states=deepuse_state_specs(network),
            normalisation=normalisation,
            inference=deepuse_inference(network, args.pairs, PREALIGN_UNIFORM_STRAIN if args.prealign else None),
            description=(
                f"{args.architecture} (initial channels {args.initial_channels}, {args.norm} norm"
                + (f", {args.axial_fold} rows folded into channels" if args.axial_fold > 1 else "")
                + ") trained without supervision; input (B, 2, H, W) = cat[fixed, moving] RF, H a multiple of "
                + f"{input_multiple(args.axial_fold)[0]} and W of 16; "
                "output displacement (B, 2, H, W) in pixels, channel 0 lateral, 1 axial"
                + (
                    "; the moving frame is pre-aligned by a uniform-strain fit and the output is the residual "
                    "(inference.prealign)"
                    if args.prealign
                    else ""
                )
            ),
        )
