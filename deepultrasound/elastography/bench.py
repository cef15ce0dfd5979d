"""``deepultrasound bench strain``: DeepUSE networks against block matching, on data with truth and in vivo.

Simulated: ``--sequences`` sequences (default 20) from the reserved bench seeds
(:data:`deepultrasound.elastography.splits.BENCH_SEEDS`, never used for training), each frame
compared with frame 0 (``reference="first"``). Per pair, over the rows where the strain window
is complete:

- ``nrmse``: :func:`strain_nrmse` against the FEM truth (central differences of the exact FE
  displacement, frame 0 -> k). Normalised by the RMS of the true strain, which the mean
  (applied) compression dominates, so a uniform estimate of the right mean already scores low;
- ``nrmse_contrast``: :func:`strain_nrmse_contrast`, the same with the estimate and the truth
  each less its mean over the evaluated region: how well the strain contrast (inclusions against
  background) is recovered, 1 for any uniform estimate;
- ``cnr_e``: :func:`cnr_e` (linear) of each inclusion (>= 50 pixels) against the background mask
  of the simulator, averaged over inclusions;
- ``snr_e``: :func:`snr_e` over the background mask.

In vivo: the DeepUSE test sequences ``rf0299.mhd``/``rf0300.mhd`` (``--invivo DIR``, skipped with
a note when absent), pairs (0, k); no truth, so only ``snr_e`` over the central region of the
strain image (the middle half of the evaluated rows and of the lines).

Methods: every ``--model`` (repeatable; default the bundled DeepUSE model when there is one), the
block-matching baseline (:class:`BlockMatchingEstimator`: ``block matching`` chains
frame-to-frame matches to frame 0, as frame-to-frame networks do; ``block matching (direct)``
matches (0, k) directly and decorrelates as k grows), ``uniform``: the uniform-strain pre-alignment alone
(:class:`UniformStrainEstimator`, the displacement ``a + b z`` that pre-aligned networks start
from), and ``oracle``: the same least-squares strain of the true displacement, which shows what
the strain estimator alone loses against the truth. The uniform row has ``nrmse`` and
``nrmse_contrast`` only (SNRe and CNRe ``null``): its strain image is uniform by construction
(apart from a few border rows of chained pairs), where SNRe is infinite and CNRe zero.
Figures are means over all pairs; ``seconds_per_pair`` is wall time (noisy on a shared machine).

JSON (the last stdout line of ``deepultrasound bench strain``): ``simulated`` holds
``sequences``, ``seeds`` [first, last], ``pairs`` and ``methods``: per method label,
``nrmse``, ``nrmse_contrast``, ``cnr_e``, ``snr_e`` and ``seconds_per_pair`` (``null`` where
undefined); ``invivo`` holds ``sequences``, ``region`` and ``methods`` (``snr_e``,
``seconds_per_pair``, ``snr_e_per_sequence``), or ``skipped`` with the reason; ``refine`` says
per model whether its pairs were refined against the reference (``--refine/--no-refine``,
default: frame-to-frame models are).

``--record`` stores each model's figures, beside those of the baselines and with the command
and date, in its bundle's manifest (``metrics["bench_strain"]``, see
:func:`deepultrasound.runtime.record_metrics`): how shipped models carry their figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from tqdm.auto import tqdm

from deepultrasound.elastography.baselines import BlockMatchingEstimator, UniformStrainEstimator
from deepultrasound.elastography.estimators import SequenceStrainEstimator, StrainEstimator
from deepultrasound.elastography.frames import PAPER_CROP, crop_rows, parse_crop
from deepultrasound.elastography.metrics import cnr_e, snr_e, strain_nrmse, strain_nrmse_contrast
from deepultrasound.elastography.model_resolution import resolve_model
from deepultrasound.elastography.options import add_inference_options, inference_options
from deepultrasound.elastography.splits import BENCH_SEEDS, bench_seeds
from deepultrasound.elastography.strain import DEFAULT_WINDOW_MM, axial_strain_np, window_samples
from deepultrasound.errors import BundleError, ConfigError, InputError
from deepultrasound.io import Image, read_sequence
from deepultrasound.io.shared_data import shared_data_dir
from deepultrasound.runtime import record_metrics

HELP = "DeepUSE strain: networks vs block matching on held-out simulated sequences and in vivo data"

DEFAULT_SEQUENCES = 20
INVIVO_SEQUENCES = ("rf0299.mhd", "rf0300.mhd")
DEFAULT_INVIVO_DIR = shared_data_dir() / "deepuse_invivo"
"""``deepuse_invivo`` in the shared data (``$DEEPULTRASOUND_DATA``, else ``../shared/data`` beside the checkout)."""
MIN_INCLUSION_PIXELS = 50
ORACLE = "oracle"
MANIFEST_KEY = "bench_strain"
"""Key of the figures in a bundle manifest's ``metrics`` (``--record``)."""
UNIFORM_STRAIN_METHODS = (UniformStrainEstimator.name,)
"""Methods whose strain image is uniform by construction: no SNRe or CNRe."""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of the strain suite."""
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="model bundle folder or bundled name; repeat to compare models (default: the bundled DeepUSE model)",
    )
    add_inference_options(parser)
    parser.add_argument(
        "--sequences",
        type=int,
        default=DEFAULT_SEQUENCES,
        help=f"simulated sequences (default: {DEFAULT_SEQUENCES})",
    )
    parser.add_argument(
        "--seed-start",
        type=int,
        default=BENCH_SEEDS.start,
        help=f"first seed, inside the reserved bench range {BENCH_SEEDS.start}..{BENCH_SEEDS.stop - 1} "
        f"(default: {BENCH_SEEDS.start})",
    )
    parser.add_argument(
        "--simulation",
        default="{}",
        metavar="JSON",
        help="SimulationConfig fields as a JSON object, e.g. '{\"n_frames\": 4}' (default: the in vivo geometry)",
    )
    parser.add_argument(
        "--crop",
        type=parse_crop,
        default=PAPER_CROP,
        metavar="START:STOP",
        help="axial rows kept before estimation, simulated and in vivo alike (default: 100:-300, as the paper)",
    )
    parser.add_argument(
        "--window-mm",
        type=float,
        default=DEFAULT_WINDOW_MM,
        help=f"least-squares strain window in mm (default: {DEFAULT_WINDOW_MM})",
    )
    parser.add_argument(
        "--invivo",
        type=Path,
        default=DEFAULT_INVIVO_DIR,
        help=f"folder with rf0299.mhd and rf0300.mhd (default: {DEFAULT_INVIVO_DIR})",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help=f"store each model's figures and the baselines' in its bundle manifest (metrics.{MANIFEST_KEY})",
    )


@dataclass
class _Scores:
    """Per-pair figures of one method; a missing figure is NaN."""

    values: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    pairs: int = 0

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def summary(self) -> dict[str, float | None]:
        means = {name: _mean(values) for name, values in self.values.items()}
        timed = self.seconds / self.pairs if self.pairs else math.nan
        return {**means, "seconds_per_pair": None if math.isnan(timed) else round(timed, 4)}


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return round(float(np.mean(finite)), 5) if finite else None


def _metric(function: Callable[..., float], *args: Any) -> float:
    """The metric, or NaN where it is undefined (constant strain, empty region)."""
    try:
        return function(*args)
    except InputError:
        return math.nan


def _estimators(args: argparse.Namespace) -> tuple[dict[str, SequenceStrainEstimator], str]:
    """Methods by label, and a note when no network was available."""
    note = ""
    models = args.model
    if models is None:
        try:
            models = [str(resolve_model(None))]
        except BundleError as error:
            models, note = [], f"no network benchmarked: {error}"
    estimators: dict[str, SequenceStrainEstimator] = {}
    for model in models:
        estimator = StrainEstimator(model, **inference_options(args))
        label = estimator.name if estimator.name not in estimators else f"{estimator.name} ({model})"
        estimators[label] = estimator
    for chained in (True, False):
        baseline = BlockMatchingEstimator(device=args.device, chained=chained)
        estimators[baseline.name] = baseline
    estimators[UniformStrainEstimator.name] = UniformStrainEstimator()
    return estimators, note


def _simulation_config(text: str) -> Any:
    from deepultrasound.simulation import SimulationConfig

    try:
        return SimulationConfig.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as error:
        raise ConfigError(f"--simulation must be a JSON object of SimulationConfig fields: {error}") from error


def _evaluation_rows(height: int, axial_spacing_mm: float, window_mm: float) -> slice:
    """Rows where the least-squares window is complete."""
    half = window_samples(window_mm, axial_spacing_mm) // 2
    return slice(half, max(half, height - half))


def _timed(estimator: SequenceStrainEstimator, image: Image, window_mm: float, scores: _Scores) -> np.ndarray:
    start = time.perf_counter()
    result = estimator.estimate(image.array, image.axial_spacing_mm, reference="first", window_mm=window_mm)
    scores.seconds += time.perf_counter() - start
    scores.pairs += len(result.pairs)
    return result.strain


def _score_simulated(
    strain: np.ndarray, truth: np.ndarray, masks: dict[str, np.ndarray], scores: _Scores, uniform: bool = False
) -> None:
    """Figures of each pair of one sequence; ``masks`` hold the evaluated region, background and
    inclusions. A ``uniform`` (by construction) strain gets NaN SNRe and CNRe."""
    region, background = masks["region"], masks["background"]
    for k in range(len(strain)):
        scores.add("nrmse", _metric(strain_nrmse, strain[k], truth[k], region))
        scores.add("nrmse_contrast", _metric(strain_nrmse_contrast, strain[k], truth[k], region))
        if uniform:
            scores.add("snr_e", math.nan)
            scores.add("cnr_e", math.nan)
            continue
        scores.add("snr_e", _metric(snr_e, strain[k], background))
        contrasts = [_metric(cnr_e, strain[k], inclusion, background) for inclusion in masks["inclusions"]]
        scores.add("cnr_e", float(np.nanmean(contrasts)) if any(map(math.isfinite, contrasts)) else math.nan)


def _simulated(args: argparse.Namespace, estimators: dict[str, SequenceStrainEstimator]) -> dict[str, Any]:
    from deepultrasound.simulation import simulate_sequence

    config = _simulation_config(args.simulation)
    seeds = bench_seeds(args.sequences, args.seed_start)
    scores = {name: _Scores() for name in [*estimators, ORACLE]}
    for seed in tqdm(seeds, desc="simulated sequences", unit="sequence"):
        sequence = simulate_sequence(config, seed)
        spacing = (config.lateral_pitch_mm, config.axial_spacing_mm, 1.0)
        image = crop_rows(Image(sequence.rf, spacing), args.crop)
        rows = image.array.shape[1]
        start = args.crop.indices(sequence.rf.shape[1])[0]
        kept = slice(start, start + rows)  # the same rows of the truth
        evaluated = np.zeros(image.array.shape[1:], dtype=bool)
        evaluated[_evaluation_rows(rows, config.axial_spacing_mm, args.window_mm)] = True
        inclusions = [m[kept] & evaluated for m in sequence.inclusion_masks]
        masks = {
            "region": evaluated,
            "background": sequence.background_mask[kept] & evaluated,
            "inclusions": [m for m in inclusions if m.sum() >= MIN_INCLUSION_PIXELS],
        }
        truth = sequence.strain_percent[:, kept]
        for name, estimator in estimators.items():
            strain = _timed(estimator, image, args.window_mm, scores[name])
            _score_simulated(strain, truth, masks, scores[name], uniform=name in UNIFORM_STRAIN_METHODS)
        oracle = axial_strain_np(sequence.displacement_px[:, 1, kept], args.window_mm, config.axial_spacing_mm)
        _score_simulated(oracle, truth, masks, scores[ORACLE])
    return {
        "sequences": len(seeds),
        "seeds": [seeds.start, seeds.stop - 1],
        "pairs": len(seeds) * (config.n_frames - 1),
        "methods": {name: score.summary() for name, score in scores.items()},
    }


def _central_region(shape: tuple[int, int], rows: slice) -> np.ndarray:
    """Middle half of the evaluated rows and of the lines."""
    start, stop, _ = rows.indices(shape[0])
    quarter_rows, quarter_cols = (stop - start) // 4, shape[1] // 4
    mask = np.zeros(shape, dtype=bool)
    mask[start + quarter_rows : stop - quarter_rows, quarter_cols : shape[1] - quarter_cols] = True
    return mask


def _invivo(args: argparse.Namespace, estimators: dict[str, SequenceStrainEstimator]) -> dict[str, Any]:
    paths = [args.invivo / name for name in INVIVO_SEQUENCES]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        return {"skipped": f"in vivo data not found: {', '.join(missing)}"}
    per_sequence: dict[str, dict[str, float | None]] = {name: {} for name in estimators}
    scores = {name: _Scores() for name in estimators}
    for path in tqdm(paths, desc="in vivo sequences", unit="sequence"):
        image = crop_rows(read_sequence(path, min_frames=2), args.crop)
        region = _central_region(
            image.array.shape[1:], _evaluation_rows(image.array.shape[1], image.axial_spacing_mm, args.window_mm)
        )
        for name, estimator in estimators.items():
            strain = _timed(estimator, image, args.window_mm, scores[name])
            values = [math.nan if name in UNIFORM_STRAIN_METHODS else _metric(snr_e, frame, region) for frame in strain]
            for value in values:
                scores[name].add("snr_e", value)
            per_sequence[name][path.stem] = _mean(values)
    return {
        "sequences": [path.stem for path in paths],
        "region": "central half of the evaluated rows and lines",
        "methods": {name: {**scores[name].summary(), "snr_e_per_sequence": per_sequence[name]} for name in estimators},
    }


def _format(value: float | None, width: int = 11) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.4g}"


def _print_table(simulated: dict[str, Any], invivo: dict[str, Any], note: str) -> None:
    print(
        f"DeepUSE strain benchmark: {simulated['sequences']} simulated sequence(s), seeds "
        f"{simulated['seeds'][0]}..{simulated['seeds'][1]}, {simulated['pairs']} pairs (frame 0 vs k)"
    )
    print(f"{'method':<28}{'NRMSE':>11}{'NRMSE-c':>11}{'CNRe':>11}{'SNRe':>11}{'s/pair':>11}")
    keys = ("nrmse", "nrmse_contrast", "cnr_e", "snr_e", "seconds_per_pair")
    for name, row in simulated["methods"].items():
        print(f"{name:<28}" + "".join(_format(row.get(key)) for key in keys))
    if "skipped" in invivo:
        print(f"in vivo: skipped ({invivo['skipped']})")
    else:
        names = invivo["sequences"]
        print(f"in vivo SNRe ({invivo['region']}):")
        print(f"{'method':<28}" + "".join(f"{name:>11}" for name in names) + f"{'mean':>11}{'s/pair':>11}")
        for method, row in invivo["methods"].items():
            cells = [row["snr_e_per_sequence"].get(name) for name in names]
            print(f"{method:<28}" + "".join(map(_format, [*cells, row["snr_e"], row["seconds_per_pair"]])))
    print("NRMSE-c: NRMSE of the strain contrast (estimate and truth each less its mean)")
    if note:
        print(f"note: {note}")


def _methods_only(part: dict[str, Any], kept: list[str]) -> dict[str, Any]:
    """``part`` (simulated or in vivo figures) with only the ``kept`` methods' rows."""
    if "methods" not in part:  # skipped
        return part
    return {**part, "methods": {name: part["methods"][name] for name in kept if name in part["methods"]}}


def _record(args: argparse.Namespace, estimators: dict[str, SequenceStrainEstimator], figures: dict[str, Any]) -> None:
    """Store each model's rows, with the baselines' (every non-network method), in its manifest."""
    models = {label: e for label, e in estimators.items() if isinstance(e, StrainEstimator)}
    for label, estimator in models.items():
        kept = [name for name in [*estimators, ORACLE] if name == label or name not in models]
        record = {
            "command": getattr(args, "command", None),
            "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "backend": args.backend,
            "refine": estimator.refine,
            "simulated": _methods_only(figures["simulated"], kept),
            "invivo": _methods_only(figures["invivo"], kept),
        }
        path = estimator.predictor.bundle.path
        record_metrics(path, MANIFEST_KEY, record)
        print(f"recorded the figures of {label} in {path}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the suite; prints the tables and returns the figures (and records them with ``--record``)."""
    estimators, note = _estimators(args)
    simulated = _simulated(args, estimators)
    invivo = _invivo(args, estimators)
    _print_table(simulated, invivo, note)
    refined = {label: e.refine for label, e in estimators.items() if isinstance(e, StrainEstimator)}
    figures = {"simulated": simulated, "invivo": invivo, "refine": refined, **({"note": note} if note else {})}
    if args.record:
        _record(args, estimators, figures)
    return figures
