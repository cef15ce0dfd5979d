"""``deepultrasound bench synth``: what synthetic images are worth: downstream segmentation, realism, speed.

Models: ``--model NAME=BUNDLE`` (repeatable; e.g. ``echo=...`` and ``echo-no-bmap=...`` for the
B-map ablation, every model of one data getting rows with the same settings); default the installed
sector (``echo``) and linear (``linear``) models. A bundle that cannot be found or does not fit its
data is left out with a note. A sector model is evaluated on CAMUS (``--train-patients`` of the
training split, default all 80; ``--test-patients`` held out, default 20), a linear one on
simulated scenes of a configuration it never saw (``--linear-train``, ``--linear-test``; the
attenuation their time-gain compensation leaves, ``--linear-attenuation``, default the simulator's: give
the range the models' training config set, e.g. ``0.5 1.0`` for ``ussynth_linear_attenuated_64.yaml``); see
:mod:`~deepultrasound.synthesis.bench_data` for the data, the segmentation classes and the scored
structures. Everything runs on the model's grid (64 px for the shipped models).

**(a) Downstream segmentation.** For each model, a segmenter
(:mod:`~deepultrasound.synthesis.segmentation`) is trained on images the model synthesises
(``--sampler``, ``--steps`` and ``--guidance``, default the bundle's; noise from ``--seed``) from the training
label maps, and one on the real images of the same maps, with the same budget (``--seg-steps``,
``--seg-batch``), augmentation, initial weights and batch order. Both are tested on the real test
images: mean Dice per structure and the ratio synthetic / real.

The synthesised images are kept in ``--cache`` (default ``runs/bench_synth_cache``) chunk by chunk,
keyed by model, label maps and sampling settings (:mod:`~deepultrasound.synthesis.sample_cache`):
a run stopped part way resumes from them and gives the figures of an uninterrupted one.

**(b) Realism** (:mod:`~deepultrasound.synthesis.realism`) of the images synthesised from the test
label maps (``--samples-per-map`` draws of each, default 1, their noise from ``--seed``, ``--seed + 1``, ...,
pooled: more draws average out the gain a model picks at random) against the real test images: mean intensity in
the imaged region (the gain) and its standard deviation from image to image, depth-profile
error (image units, with its 90 % bootstrap interval over the test label maps) and its shape error (each profile
over its mean: the change with depth alone), envelope SNR and
speckle FWHM (pixels), the envelope recovered for ``--dynamic-range`` dB (default 60, the
simulator's default display range), and the Frechet distance on the bottleneck features of the
real-trained segmenter. Rows ``held_out_real`` (the reference itself: its SNR and speckle) and
``real_train`` (the real training images: what a perfect model would reach). For an ablation, each model's
profile error minus that of the first model of its data, with the 90 % bootstrap interval of the difference: the
label maps are redrawn for both models at once, so that the spread the two share (some maps being harder for
both) cancels out.

**(c) Sampling throughput** of the ``--timed`` models (default every one; ``none``: none): images per second of DDIM-25,
DDIM-50, DDPM-50 and DDPM (``--ddpm-steps``, default the schedule's training steps) at batch ``--batch`` on
``--backend`` (default auto: ONNX Runtime on the CPU) and ``--device``, median of ``--repeats`` runs (DDPM:
``--ddpm-repeats``, default one run, its 1000 steps taking 20 times DDIM-50's time) after an untimed one-step run,
guidance as in (a); null for a sampler that needs more steps than the schedule has. With ``--compare-backend``,
the same bundle on that backend too, the two taking turns run by run, and the ratio of their images/s.
``--throughput-only`` skips (a) and (b).

JSON (last stdout line): ``models`` (bundle, backend, data, B-maps, prediction type, sampler, steps, guidance); per
data (``echo``, ``linear``): ``data`` (counts, patients or seeds and configuration), ``segmentation`` -> ``real``
and each model -> ``dice`` and (models) ``ratio_to_real`` per structure; ``realism`` -> row ->
``mean_intensity``, ``mean_intensity_sd``, ``profile_error`` (model rows: with ``profile_error_low`` and
``_high``, its 90 % bootstrap interval over the test label maps), ``profile_shape_error``, ``snr``,
``speckle_axial_px``,
``speckle_lateral_px``, ``frechet`` (null where undefined); ``profile_error_difference`` -> each model but
the first -> ``baseline`` (the first model's name), ``difference``, ``low``, ``high``; ``throughput`` -> timed
model -> ``backend``, ``ddim_25``, ``ddim_50``, ``ddpm_50``, ``ddpm`` (images/s), ``ddpm_steps``, ``batch`` and
(``--compare-backend``) ``compared`` -> ``backend``, the four samplers and ``ratio`` (the row's images/s over
these, per sampler); ``figure`` (with ``--figures DIR``: ``synth_<data>.png``, label maps, real images and each
model's images); then ``notes`` and ``seconds`` (wall time). With ``--throughput-only``, ``data`` and
``throughput`` only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from deepultrasound.errors import DeepUltrasoundError, InputError
from deepultrasound.registration.data import VALIDATION_PATIENTS, default_camus_root
from deepultrasound.runtime import choose_device
from deepultrasound.runtime.backends import BACKENDS
from deepultrasound.runtime.options import add_backend_options
from deepultrasound.spatial.bmode import DEFAULT_DYNAMIC_RANGE_DB
from deepultrasound.superres.data import RESIDUAL_ATTENUATION_DB_CM_MHZ, attenuation_range
from deepultrasound.synthesis.bench_data import (
    CLASSES,
    STRUCTURES,
    BenchData,
    echo_data,
    linear_data,
    regions,
)
from deepultrasound.synthesis.data import DATA_LABELS, DATA_PROBES, OUTSIDE_FAN, LabelAugmentation, label_classes
from deepultrasound.synthesis.inference import SAMPLERS, Synthesizer, resolve_model
from deepultrasound.synthesis.plots import save_synthesis_grid
from deepultrasound.synthesis.realism import Regions, profile_error_difference, realism
from deepultrasound.synthesis.sample_cache import SampleCache
from deepultrasound.synthesis.segmentation import (
    SegmenterSettings,
    bottleneck_features,
    predict,
    structure_dice,
    train_segmenter,
)

HELP = "USSynth: segmenters trained on synthetic vs real images, realism against held-out images, sampling speed"
DATA_OF_PROBE = {probe: kind for kind, probe in DATA_PROBES.items()}
TIMED_SAMPLERS = {"ddim_25": ("ddim", 25), "ddim_50": ("ddim", 50), "ddpm_50": ("ddpm", 50), "ddpm": ("ddpm", None)}
"""Timed samplers: key -> (sampler, steps); DDPM's steps are ``--ddpm-steps``."""
REALISM = (
    "mean_intensity",
    "mean_intensity_sd",
    "profile_error",
    "profile_shape_error",
    "snr",
    "speckle_axial_px",
    "speckle_lateral_px",
    "frechet",
)
FIGURE_ROWS = 4
DEFAULT_CACHE = Path("runs/bench_synth_cache")
"""Where the synthesised images are kept (relative to the working folder), so that an interrupted run resumes."""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the suite's options."""
    add = parser.add_argument
    add(
        "--model",
        action="append",
        default=[],
        metavar="NAME=BUNDLE",
        help="a model's rows (repeatable; default: the installed sector model as 'echo' and linear one as 'linear')",
    )
    add("--camus", type=Path, default=None, help="CAMUS folder (default: the shared camus_train)")
    add("--train-patients", type=int, default=None, help="CAMUS training patients (default: all of the split)")
    add("--test-patients", type=int, default=VALIDATION_PATIENTS, help="held-out CAMUS patients (default: 20)")
    add("--linear-train", type=int, default=320, help="linear training scenes (default: 320)")
    add("--linear-test", type=int, default=80, help="linear test scenes (default: 80)")
    add(
        "--linear-attenuation",
        type=float,
        nargs=2,
        default=RESIDUAL_ATTENUATION_DB_CM_MHZ,
        metavar=("LOW", "HIGH"),
        help="attenuation left after time-gain compensation in the linear scenes, dB/cm/MHz "
        "(default: %(default)s, the simulator's)",
    )
    add("--sampler", choices=SAMPLERS, default=None, help="sampler of the synthesis (default: the bundle's)")
    add("--steps", type=int, default=None, help="denoising steps of the synthesis (default: the bundle's)")
    add("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the bundle's)")
    add(
        "--samples-per-map",
        type=int,
        default=1,
        help="images synthesised from each test label map for the realism figures, seeds --seed, --seed + 1, ... "
        "(default: 1)",
    )
    add("--seg-steps", type=int, default=2000, help="segmenter training steps (default: 2000)")
    add("--seg-batch", type=int, default=16, help="segmenter batch size (default: 16)")
    add("--batch", type=int, default=8, help="synthesis batch size, also of the throughput (default: 8)")
    add("--ddpm-steps", type=int, default=None, help="DDPM steps timed (default: the schedule's training steps)")
    add("--repeats", type=int, default=3, help="timed runs per sampler but DDPM, median reported (default: 3)")
    add("--ddpm-repeats", type=int, default=1, help="timed DDPM runs, median reported (default: 1)")
    add(
        "--timed",
        action="append",
        default=None,
        metavar="NAME",
        help="a model whose sampling throughput is timed (repeatable; 'none': no model; default: every model)",
    )
    add(
        "--compare-backend",
        choices=BACKENDS,
        default=None,
        help="also time each timed model on this backend, run for run beside --backend's, and give the ratio "
        "(default: none)",
    )
    add("--throughput-only", action="store_true", help="time the sampling only: no segmenters, no realism (minutes)")
    add("--dynamic-range", type=float, default=DEFAULT_DYNAMIC_RANGE_DB, help="dB of the B-mode (default: 60)")
    add("--seed", type=int, default=0, help="seed of synthesis noise and segmenters (default: 0)")
    add_backend_options(parser)
    add("--figures", type=Path, default=None, help="write synth_<data>.png (maps, real, synthetic) here")
    add(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"synthesised images kept here chunk by chunk; a rerun resumes from them (default: {DEFAULT_CACHE})",
    )


def _check(model: Synthesizer, kind: str, others: dict[str, Synthesizer]) -> None:
    """Refuse a model whose classes are not its data's, whose grid is not square or differs from ``others``'."""
    expected = [label.model_dump() for label in label_classes(DATA_LABELS[kind])]
    if [label.model_dump() for label in model.spec.label_classes] != expected:
        raise InputError(f"its label classes are not those of the {kind} data")
    if model.size[0] != model.size[1]:
        raise InputError(f"its grid {model.size} is not square")
    sizes = {other.size for other in others.values()}
    if sizes and model.size not in sizes:
        raise InputError(f"its grid {model.size} differs from the {sizes.pop()} of the other {kind} rows")


def _models(args: argparse.Namespace, device: str) -> tuple[dict[str, dict[str, Synthesizer]], list[str]]:
    """The models by data kind and row name, and notes on those left out."""
    wanted: list[tuple[str, str | None, str | None]] = []  # (name, bundle, probe)
    for entry in args.model:
        name, sep, bundle = entry.partition("=")
        if not sep or not name or not bundle:
            raise InputError(f"--model takes NAME=BUNDLE, e.g. echo=runs/ussynth_echo_64/bundle; got {entry!r}")
        wanted.append((name, bundle, None))
    wanted = wanted or [(kind, None, probe) for kind, probe in DATA_PROBES.items()]
    kinds: dict[str, dict[str, Synthesizer]] = {}
    notes = []
    for name, bundle, probe in wanted:
        try:
            model = Synthesizer(resolve_model(bundle, probe), device=device, backend=args.backend)
            kind = DATA_OF_PROBE[model.spec.bmap.probe]
            _check(model, kind, kinds.get(kind, {}))
        except DeepUltrasoundError as error:
            notes.append(f"{name}: left out ({error})")
            continue
        kinds.setdefault(kind, {})[name] = model
    return kinds, notes


def _synthesise(model: Synthesizer, labels: torch.Tensor, args: argparse.Namespace, draw: int = 0) -> torch.Tensor:
    """``(N, 1, S, S)`` images synthesised from label maps ``(N, S, S)`` (``--batch`` at a time) with the noise of
    seed ``--seed + draw``, each chunk kept in ``--cache`` as it is done."""
    options = {"steps": args.steps, "guidance": args.guidance, "seed": args.seed + draw, "batch": args.batch}
    sampler = args.sampler or model.spec.sampler
    images = SampleCache(args.cache).synthesise(model, labels.numpy(), sampler=sampler, progress=True, **options)
    return torch.from_numpy(images)[:, None]


def _throughput(
    model: Synthesizer, compared: Synthesizer | None, labels: torch.Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    """Images per second of ``model`` for each of :data:`TIMED_SAMPLERS`, median of ``--repeats`` runs at batch
    ``--batch``, and of the same bundle on another backend (``compared``, or None), the two taking turns run by
    run so that a change of the machine's load reaches both alike: its figures under ``compared``, with ``ratio``
    (``model``'s images/s over its)."""
    runners = [model] if compared is None else [model, compared]
    batch = labels[torch.arange(args.batch) % len(labels)].numpy()
    ddpm_steps = args.ddpm_steps or model.spec.schedule.num_train_timesteps
    rows: list[dict[str, Any]] = [{"backend": runner.backend} for runner in runners]
    for key, (sampler, steps) in TIMED_SAMPLERS.items():
        steps = steps or ddpm_steps
        if steps > model.spec.schedule.num_train_timesteps:
            for row in rows:
                row[key] = None  # more steps than the schedule has
            continue
        options = {"guidance": args.guidance, "sampler": sampler, "seed": args.seed, "batch": args.batch}
        for runner in runners:
            runner(batch, steps=1, **options)  # warm-up: first-call allocations are not timed
        seconds: list[list[float]] = [[] for _ in runners]
        repeats = args.ddpm_repeats if key == "ddpm" else args.repeats
        for _ in tqdm(range(repeats), desc=f"{model.name}: {key}", unit="run", leave=False):
            for runner, times in zip(runners, seconds):
                started = time.perf_counter()
                runner(batch, steps=steps, **options)
                times.append(time.perf_counter() - started)
        for row, times in zip(rows, seconds):
            row[key] = args.batch / float(np.median(times))
    figures: dict[str, Any] = {**rows[0], "batch": args.batch, "ddpm_steps": ddpm_steps}
    if compared is not None:
        other = rows[1]
        figures["compared"] = {
            **other,
            "ratio": {key: figures[key] / other[key] if other[key] else None for key in TIMED_SAMPLERS},
        }
    return figures


def _dice(segmenter: torch.nn.Module, data: BenchData) -> dict[str, float | None]:
    """Mean Dice per structure of ``segmenter`` on the real test images."""
    truth = CLASSES[data.kind][data.stack("test", "labels")]
    return structure_dice(predict(segmenter, data.stack("test", "image")), truth, STRUCTURES[data.kind])


def _data(kind: str, size: int, args: argparse.Namespace) -> BenchData:
    """The bench data of ``kind`` on an ``(size, size)`` grid; without training pairs for ``--throughput-only``,
    which needs the test label maps only."""
    if kind == "linear":
        train = 0 if args.throughput_only else args.linear_train
        return linear_data(size, train, args.linear_test, tuple(args.linear_attenuation))
    root = args.camus if args.camus is not None else default_camus_root()
    return echo_data(root, size, 0 if args.throughput_only else args.train_patients, args.test_patients)


def _evaluate(
    kind: str,
    models: dict[str, Synthesizer],
    compared: dict[str, Synthesizer],
    args: argparse.Namespace,
    device: str,
) -> dict[str, Any]:
    """(a), (b) (unless ``--throughput-only``) and (c) for the models of one data kind; ``compared``: the bundles
    of the timed models on ``--compare-backend``, by name."""
    data = _data(kind, next(iter(models.values())).size[0], args)
    result: dict[str, Any] = {
        "data": {**data.description, "train_images": len(data.train), "test_images": len(data.test)}
    }
    if not args.throughput_only:
        result.update(_quality(kind, models, data, args, device))
    result["throughput"] = {}
    for name, model in models.items():
        if args.timed is None or name in args.timed:
            result["throughput"][name] = _throughput(model, compared.get(name), data.stack("test", "labels"), args)
    return result


def _on_compared_backend(
    kinds: dict[str, dict[str, Synthesizer]], args: argparse.Namespace, device: str
) -> dict[str, Synthesizer]:
    """The timed models' bundles on ``--compare-backend``, by name (none without it), made before any work so that
    a bundle that cannot run there is refused at once."""
    if args.compare_backend is None:
        return {}
    compared = {}
    for group in kinds.values():
        for name, model in group.items():
            if args.timed is None or name in args.timed:
                try:
                    compared[name] = Synthesizer(model.model.predictor.bundle, device, args.compare_backend)
                except DeepUltrasoundError as error:
                    raise InputError(f"--compare-backend {args.compare_backend}: {name}: {error}") from error
    return compared


def _quality(
    kind: str, models: dict[str, Synthesizer], data: BenchData, args: argparse.Namespace, device: str
) -> dict[str, Any]:
    """(a) and (b): ``segmentation``, ``realism``, ``profile_error_difference`` and (``--figures``) ``figure``."""
    train_labels, test_labels = data.stack("train", "labels"), data.stack("test", "labels")
    real_train, real_test = data.stack("train", "image"), data.stack("test", "image")
    settings = SegmenterSettings(
        steps=args.seg_steps,
        batch_size=args.seg_batch,
        seed=args.seed,
        augmentation=LabelAugmentation(fill_label=OUTSIDE_FAN if kind == "echo" else None),
        device=device,
    )
    real_segmenter = train_segmenter(data.train, CLASSES[kind], settings, f"{kind} segmenter on real images")
    test_regions = regions(kind, test_labels)
    reference = (real_test[:, 0].numpy(), test_regions, bottleneck_features(real_segmenter, real_test))

    def realism_of(images: torch.Tensor, image_regions: Regions | None = None) -> dict[str, float | None]:
        """Realism of images ``(N, 1, S, S)`` of the test label maps (``(K, N, 1, S, S)``: ``K`` draws of each;
        paired with the real test images, map by map) or, with their ``image_regions``, of other maps."""
        features = bottleneck_features(real_segmenter, images.reshape(-1, *images.shape[-3:]))
        paired = image_regions is None
        image_regions = test_regions if paired else image_regions
        values = images[..., 0, :, :].numpy()
        return realism(values, image_regions, features, reference, args.dynamic_range, paired)

    real_dice = _dice(real_segmenter, data)
    result: dict[str, Any] = {
        "segmentation": {"real": {"dice": real_dice}},
        "realism": {
            "held_out_real": realism(reference[0], test_regions, dynamic_range_db=args.dynamic_range),
            "real_train": realism_of(real_train, regions(kind, train_labels)),
        },
    }
    synthetic_tests = {}
    for name, model in models.items():
        pairs = [{**pair, "image": image} for pair, image in zip(data.train, _synthesise(model, train_labels, args))]
        dice = _dice(train_segmenter(pairs, CLASSES[kind], settings, f"{name} segmenter on synthetic images"), data)
        ratio = {
            key: value / real_dice[key] if value is not None and real_dice[key] else None for key, value in dice.items()
        }
        result["segmentation"][name] = {"dice": dice, "ratio_to_real": ratio}
        synthetic_test = torch.stack(
            [_synthesise(model, test_labels, args, draw) for draw in range(args.samples_per_map)]
        )
        result["realism"][name] = realism_of(synthetic_test)
        synthetic_tests[name] = synthetic_test[:, :, 0].numpy()
    result["profile_error_difference"] = _differences(synthetic_tests, reference[0], test_regions)
    if args.figures is not None:
        rows = slice(FIGURE_ROWS)
        grid = args.figures / f"synth_{kind}.png"
        shown = {name: images[0, rows] for name, images in synthetic_tests.items()}
        result["figure"] = str(save_synthesis_grid(grid, test_labels[rows].numpy(), reference[0][rows], shown))
    return result


def _differences(synthetic: dict[str, np.ndarray], real: np.ndarray, test_regions: Regions) -> dict[str, Any]:
    """Each model's profile error minus the first model's (the baseline of an ablation), with its 90 % bootstrap
    interval over the test label maps, all the images of a map drawn together: ``{name: {"baseline",
    "difference", "low", "high"}}`` for every model but the first (values null where undefined)."""
    (baseline, baseline_images), *others = synthetic.items()
    differences = {}
    for name, images in others:
        figures = profile_error_difference(images, baseline_images, real, test_regions)
        values = dict(zip(("difference", "low", "high"), figures or (None, None, None)))
        differences[name] = {"baseline": baseline, **values}
    return differences


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _print(kind: str, figures: dict[str, Any]) -> None:
    if "segmentation" in figures:
        _print_quality(kind, figures)
    print(f"\n{kind}: sampling throughput, images/s")
    for name, row in figures["throughput"].items():
        for speeds in [row, *([row["compared"]] if "compared" in row else [])]:
            cells = ", ".join(f"{key} {_cell(speeds[key])}" for key in TIMED_SAMPLERS)
            print(f"{name:<20}{speeds['backend']:<12} batch {row['batch']}: {cells} (DDPM {row['ddpm_steps']} steps)")
        if "compared" in row:
            ratios = ", ".join(f"{key} {_cell(row['compared']['ratio'][key], 2)}" for key in TIMED_SAMPLERS)
            print(f"{name:<20}{row['backend']} / {row['compared']['backend']}: {ratios}")


def _print_quality(kind: str, figures: dict[str, Any]) -> None:
    structures = list(STRUCTURES[kind])
    print(f"\n{kind}: Dice on {figures['data']['test_images']} real test images (ratio synthetic / real)")
    print(f"{'trained on':<20}" + "".join(f"{name:>22}" for name in structures))
    for name, row in figures["segmentation"].items():
        ratios = row.get("ratio_to_real")
        cells = [_cell(row["dice"][key]) + (f" ({_cell(ratios[key], 2)})" if ratios else "") for key in structures]
        print(f"{name:<20}" + "".join(f"{cell:>22}" for cell in cells))
    print(
        f"\n{kind}: realism against the real test images (profile error in image units with its 90 % bootstrap "
        "interval, speckle in pixels)"
    )
    widths = [max(len(column), 8) + 2 for column in REALISM]  # 8: a value printed with 4 decimals
    widths[REALISM.index("profile_error")] = 26  # and its interval: 0.0830 [0.0750, 0.0910]
    print(f"{'images':<20}" + "".join(f"{column:>{width}}" for column, width in zip(REALISM, widths)))
    for name, row in figures["realism"].items():
        cells = [_cell(row.get(column), 4) for column in REALISM]
        if row.get("profile_error_low") is not None:
            interval = f" [{_cell(row['profile_error_low'], 4)}, {_cell(row['profile_error_high'], 4)}]"
            cells[REALISM.index("profile_error")] += interval
        print(f"{name:<20}" + "".join(f"{cell:>{width}}" for cell, width in zip(cells, widths)))
    for name, row in figures["profile_error_difference"].items():
        print(
            f"{name}: profile error minus {row['baseline']}'s {_cell(row['difference'], 4)} "
            f"[{_cell(row['low'], 4)}, {_cell(row['high'], 4)}] (90 % interval over the test label maps; "
            f"negative: {name}'s profile is the closer)"
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the suite; prints the tables and returns the figures."""
    counts = (args.seg_steps, args.seg_batch, args.batch, args.repeats, args.ddpm_repeats, args.samples_per_map)
    counts += (args.test_patients, args.linear_train, args.linear_test, args.train_patients or 1)
    if min(counts) < 1:
        raise InputError(
            "--seg-steps, --seg-batch, --batch, --repeats, --ddpm-repeats, --samples-per-map and the image counts "
            "must be >= 1"
        )
    try:
        attenuation_range(args.linear_attenuation)
    except InputError as error:
        raise InputError(f"--linear-attenuation: {error}") from error
    started = time.perf_counter()
    device = str(choose_device(None if args.device == "auto" else args.device))
    kinds, notes = _models(args, device)
    names = {name for group in kinds.values() for name in group}
    unknown = set(args.timed or ()) - names - {"none"}
    if unknown:
        raise InputError(f"--timed {', '.join(sorted(unknown))}: no such model (models: {', '.join(sorted(names))})")
    compared = _on_compared_backend(kinds, args, device)
    settings = (
        "sampler",
        "steps",
        "guidance",
        "samples_per_map",
        "seg_steps",
        "seg_batch",
        "batch",
        "repeats",
        "ddpm_repeats",
        "timed",
        "compare_backend",
        "throughput_only",
        "seed",
        "dynamic_range",
    )
    figures: dict[str, Any] = {
        "device": device,
        "settings": {key: getattr(args, key) for key in settings},
        "models": {
            name: {
                "bundle": model.name,
                "backend": model.backend,
                "data": kind,
                "image_size": list(model.size),
                "bmap": model.spec.bmap.enabled,
                "prediction_type": model.spec.prediction_type,
                "sampler": args.sampler or model.spec.sampler,
                "steps": args.steps or model.spec.sampling_steps,
                "guidance": model.spec.guidance_scale if args.guidance is None else args.guidance,
            }
            for kind, group in kinds.items()
            for name, model in group.items()
        },
    }
    for kind, group in kinds.items():
        figures[kind] = _evaluate(kind, group, compared, args, device)
        _print(kind, figures[kind])
    for note in notes:
        print(f"note: {note}")
    figures["notes"] = notes
    figures["seconds"] = time.perf_counter() - started
    return figures
