"""``deepultrasound bench register``: the registration network against elastix, optical flow and no registration.

Data (ED fixed, ES moving, the ES labels warped onto ED and compared with the ED labels):

- ``synthetic``: ``--synthetic`` held-out simulated pairs (default 20) from
  :data:`~deepultrasound.registration.data.HELD_OUT_SYNTHETIC_SEED`, which training never draws,
  with the true displacement;
- ``camus``: the CAMUS validation patients (the last 20 of the folder, never trained on;
  ``--camus-patients`` limits them), both views each.

Every pair is on an ``--size`` grid (default 224, CAMUS's; :mod:`~deepultrasound.registration.data`),
and every method registers the pair there (the network resamples to its own grid and back).

Rows: ``ours`` (``--model``, default the installed registration model; left out with a note when
there is none), ``ablation:NAME`` for each ``--ablation NAME=BUNDLE`` (default: every other
installed registration bundle, by folder name), ``elastix`` (default B-spline map, see
:mod:`~deepultrasound.registration.baselines`), ``farneback``, ``tvl1`` (where OpenCV has it) and
``identity`` (no registration: the zero displacement). A baseline that cannot run here is listed
under ``unavailable`` with the reason.

Figures per row, means over the pairs (:func:`~deepultrasound.registration.metrics.score_pair`):
``dice_lv``, ``dice_myo``, ``dice_epi``; ``hd95_lv``, ``hd95_myo``, ``hd95_epi`` in pixels of the
``--size`` grid (the CAMUS copy has no physical spacing); ``folding_percent``; ``epe`` (synthetic
only, pixels, over the ED heart); ``seconds_per_pair`` (wall time of the registration alone, on
this machine, after one untimed warm-up pair for networks); ``speedup_vs_elastix``: elastix's
seconds per pair over the row's, measured in the same run (null without elastix).
``tracking``: ``--sequences`` held-out simulated cines (ED to ES, ``--frames`` frames) tracked from
their ED labels by every method as ``deepultrasound track`` does; per method the GLS error at ES
(endocardial, percentage points) against the simulator's truth and its mean absolute value.
The last stdout line is the JSON of everything (``deepultrasound bench``).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from deepultrasound.errors import DeepUltrasoundError, InputError
from deepultrasound.registration.baselines import BASELINES, PairMethod, unavailable
from deepultrasound.registration.data import (
    HELD_OUT_SYNTHETIC_SEED,
    SIMULATION_SIZE,
    VALIDATION_PATIENTS,
    camus_pairs,
    camus_split,
    default_camus_root,
    synthetic_pairs,
    synthetic_sequence,
)
from deepultrasound.registration.inference import Registrar, installed_models, resolve_model
from deepultrasound.registration.metrics import score_pair
from deepultrasound.registration.tracking import track_sequence
from deepultrasound.runtime.options import add_backend_options

HELP = "registration: network vs elastix vs optical flow vs none, on held-out simulated pairs and CAMUS validation"
IDENTITY = "identity"
FIGURES = ("dice_lv", "dice_myo", "dice_epi", "hd95_lv", "hd95_myo", "hd95_epi", "folding_percent", "epe")
HEADERS = {"folding_percent": "fold %", "seconds_per_pair": "s/pair", "speedup_vs_elastix": "x elastix"}
"""Short column headers of the printed tables."""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the suite's options."""
    parser.add_argument(
        "--model", default=None, help="bundle or installed model of the 'ours' row (default: installed)"
    )
    parser.add_argument(
        "--ablation",
        action="append",
        default=None,
        metavar="NAME=BUNDLE",
        help="an ablation row (repeatable; default: every other installed registration bundle)",
    )
    parser.add_argument("--synthetic", type=int, default=20, help="held-out simulated pairs (default: 20)")
    parser.add_argument(
        "--sequences", type=int, default=8, help="held-out simulated cines tracked ED -> ES for GLS (default: 8)"
    )
    parser.add_argument("--frames", type=int, default=8, help="frames of each tracked cine (default: 8)")
    parser.add_argument(
        "--camus-patients",
        type=int,
        default=VALIDATION_PATIENTS,
        help=f"CAMUS validation patients, 2 pairs each; 0 skips CAMUS (default: {VALIDATION_PATIENTS})",
    )
    parser.add_argument("--camus", type=Path, default=None, help="CAMUS folder (default: the shared camus_train)")
    parser.add_argument(
        "--size", type=int, default=SIMULATION_SIZE, help=f"grid of the pairs, pixels (default: {SIMULATION_SIZE})"
    )
    parser.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help=f"comma-separated classical methods to run (default: {','.join(BASELINES)})",
    )
    add_backend_options(parser)


def _zero(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """No registration: the zero displacement."""
    return np.zeros((2, *np.shape(fixed)), np.float32)


def _parse_ablation(text: str) -> tuple[str, str]:
    name, sep, bundle = text.partition("=")
    if not sep or not name or not bundle:
        raise InputError(f"--ablation takes NAME=BUNDLE, got {text!r}")
    return name, bundle


def _networks(args: argparse.Namespace) -> tuple[dict[str, Registrar], list[str]]:
    """The network rows (ours, ablations) and notes on what was left out."""
    notes: list[str] = []
    networks: dict[str, Registrar] = {}
    try:
        ours = resolve_model(args.model)
    except DeepUltrasoundError as error:
        if args.model is not None:
            raise
        notes.append(f"ours: left out ({error})")
        ours = None
    if ours is not None:
        networks["ours"] = Registrar(ours, args.backend, args.device)
    if args.ablation is not None:
        ablations = [_parse_ablation(text) for text in args.ablation]
    else:
        ablations = [(folder.name, str(folder)) for folder, _ in installed_models() if ours is None or folder != ours]
    for name, bundle in ablations:
        networks[f"ablation:{name}"] = Registrar(resolve_model(bundle), args.backend, args.device)
    return networks, notes


def _baselines(args: argparse.Namespace) -> tuple[dict[str, PairMethod], dict[str, str]]:
    wanted = [name.strip() for name in args.baselines.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(BASELINES))
    if unknown:
        raise InputError(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)}")
    missing = {name: reason for name in wanted if (reason := unavailable(name)) is not None}
    return {name: BASELINES[name] for name in wanted if name not in missing}, missing


def _mean(values: list[float]) -> float | None:
    finite = [value for value in values if math.isfinite(value)]
    return float(np.mean(finite)) if finite else None


def _evaluate(
    pairs: Iterable[dict[str, torch.Tensor]], methods: dict[str, PairMethod], networks: set[str], description: str
) -> dict[str, Any]:
    """Every method on every pair: per-method means of :data:`FIGURES` and seconds per pair."""
    scores: dict[str, dict[str, list[float]]] = {name: {} for name in methods}
    count = 0
    for pair in tqdm(pairs, desc=description, unit="pair"):
        fixed, moving = pair["fixed"][0].numpy(), pair["moving"][0].numpy()
        for name, method in methods.items():
            if count == 0 and name in networks:
                method(fixed, moving)  # warm-up: first-call allocations and graph set-up are not timed
            started = time.perf_counter()
            displacement = method(fixed, moving)
            seconds = time.perf_counter() - started
            figures = score_pair(
                torch.from_numpy(displacement), pair["fixed_labels"], pair["moving_labels"], pair.get("displacement")
            )
            for key, value in {**figures, "seconds_per_pair": seconds}.items():
                scores[name].setdefault(key, []).append(value)
        count += 1
    rows = {name: {key: _mean(values) for key, values in table.items()} for name, table in scores.items()}
    reference = rows.get("elastix", {}).get("seconds_per_pair")
    for row in rows.values():
        seconds = row.get("seconds_per_pair")
        row["speedup_vs_elastix"] = reference / seconds if reference and seconds else None
    return {"pairs": count, "methods": rows}


def _tracking(count: int, frames: int, methods: dict[str, PairMethod]) -> dict[str, Any]:
    """GLS at end-systole of ``count`` held-out simulated cines tracked from their ED labels by every method
    (:func:`~deepultrasound.registration.tracking.track_sequence`), against the simulator's truth."""
    errors: dict[str, list[float]] = {name: [] for name in methods}
    truths = []
    for index in tqdm(range(count), desc="tracking", unit="cine"):
        images, labels, spacing, truth = synthetic_sequence(HELD_OUT_SYNTHETIC_SEED, index, frames)
        truths.append(truth)
        for name, method in methods.items():
            curves = track_sequence(images, labels, 0, method, spacing).curves
            errors[name].append(curves.gls - truth)
    return {
        "cines": count,
        "frames": frames,
        "gls_truth_percent": truths,
        "methods": {
            name: {"gls_error_pp": values, "mean_abs_gls_error_pp": _mean([abs(v) for v in values])}
            for name, values in errors.items()
        },
    }


def _print_table(title: str, part: dict[str, Any]) -> None:
    print(f"\n{title}: {part.get('pairs', 0)} pairs" + (f" (skipped: {part['skipped']})" if "skipped" in part else ""))
    if "methods" not in part:
        return
    columns = [*FIGURES, "seconds_per_pair", "speedup_vs_elastix"]
    print(f"{'method':<24}" + "".join(f"{HEADERS.get(column, column):>11}" for column in columns))
    for name, row in part["methods"].items():
        cells = (row.get(column) for column in columns)
        print(f"{name:<24}" + "".join(f"{'-' if v is None else format(v, '.4g'):>11}" for v in cells))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the suite; prints the tables and returns the figures."""
    if args.synthetic < 0 or args.camus_patients < 0 or args.size < 32:
        raise InputError("--synthetic and --camus-patients must be >= 0 and --size >= 32")
    networks, notes = _networks(args)
    baselines, missing = _baselines(args)
    methods: dict[str, PairMethod] = {**networks, **baselines, IDENTITY: _zero}
    figures: dict[str, Any] = {
        "size": args.size,
        "units": {"hd95": "pixels of the size grid", "epe": "pixels of the size grid", "folding": "percent"},
        "unavailable": missing,
        "notes": notes,
        "models": {name: registrar.name for name, registrar in networks.items()},
    }
    figures["synthetic"] = {
        "seed": HELD_OUT_SYNTHETIC_SEED,
        **_evaluate(
            synthetic_pairs(HELD_OUT_SYNTHETIC_SEED, args.synthetic, args.size), methods, set(networks), "synthetic"
        ),
    }
    root = args.camus if args.camus is not None else default_camus_root()
    if args.camus_patients == 0:
        figures["camus"] = {"skipped": "--camus-patients 0"}
    elif not root.is_dir():
        figures["camus"] = {"skipped": f"no CAMUS folder at {root}"}
    else:
        patients = camus_split(root)[1][: args.camus_patients]
        figures["camus"] = {
            "patients": patients,
            **_evaluate(camus_pairs(root, patients, args.size), methods, set(networks), "CAMUS validation"),
        }
    tracked = {name: method for name, method in methods.items() if name != IDENTITY}
    figures["tracking"] = _tracking(args.sequences, args.frames, tracked) if args.sequences else None
    _print_table("held-out simulated ED -> ES pairs", figures["synthetic"])
    _print_table("CAMUS validation patients, ED fixed / ES moving", figures["camus"])
    for name, reason in missing.items():
        print(f"{name}: {reason}")
    for note in notes:
        print(f"note: {note}")
    if figures["tracking"]:
        truth = ", ".join(f"{value:.1f}" for value in figures["tracking"]["gls_truth_percent"])
        print(f"\ntracked cines (GLS at ES, truth {truth} %): mean |GLS error| in percentage points")
        for name, row in figures["tracking"]["methods"].items():
            print(f"{name:<24}{row['mean_abs_gls_error_pp']:>11.3g}")
    print("HD95 and EPE in pixels of the pair grid; speedup = elastix seconds per pair / the row's")
    return figures
