"""``deepultrasound bench superres``: lateral super-resolution against linear and cubic interpolation.

For each factor F (``--factors``, default 2 4), every full-resolution image is degraded
(:func:`~deepultrasound.superres.degradation.degrade`: a Gaussian beam-profile blur, then one line
in F kept, phase 0) and upsampled back by every method from the same low-resolution image; the
estimate is compared with the full-resolution image. The blur is the highest of the range the
factor's models were trained on (0 for a factor without models); ``--blur-sigma`` sets another one,
e.g. 0 for pure line decimation. Images:

- **simulated**: ``--simulated`` held-out simulated beam-space B-mode images (default 16, 256 x 128,
  the validation split of :func:`~deepultrasound.superres.data.simulated_images` with ``--seed``,
  never trained on);
- **real**: the held-out BUSI images (:func:`~deepultrasound.superres.data.busi_split` ``"val"``,
  never trained on; ``--real`` limits their number), skipped with a note when absent.

Figures per method: PSNR (dB) and SSIM (Gaussian window 11, sigma 1.5) with ``data_range`` 1 (images
are B-mode in [0, 1]; estimates clipped to it), means over images, and seconds per image (median;
noisy on a shared machine). Methods: ``linear``, ``cubic`` (Keys, a = -0.5) and every installed
super-resolution bundle of the factor; ``--model F=BUNDLE`` (a folder or an installed model's name,
repeatable) evaluates the given bundles at F instead of the installed ones.

``--figures DIR`` writes ``superres_x<F>.png`` per factor: the first simulated and the first real
image (a centred crop of at most 160 x 128), low-resolution input (each line repeated F times), every
method's estimate and the truth, with each panel's PSNR on the whole image.

``--tiles`` also upsamples a 2000 x 128 frame x4 to 2000 x 512 with the x4 model, tiled (default
tile) and in one piece, each in a fresh process: seconds and the peak resident memory the run adds
to the loaded model (``resource`` max RSS).

JSON (last stdout line): ``factors`` -> per factor ``blur_sigma_lines``, ``figure`` (with ``--figures``)
and ``simulated`` / ``real`` -> ``images`` and ``methods`` -> per method ``psnr``, ``ssim``,
``seconds_per_image``; ``gain_over_cubic`` per model (``psnr`` dB and ``ssim``); ``tiles`` (or null).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from deepultrasound.errors import FileFormatError, InputError
from deepultrasound.io.shared_data import shared_data_dir
from deepultrasound.losses.metrics import psnr, ssim
from deepultrasound.runtime import load_bundle
from deepultrasound.superres.data import BUSI_FOLDER, real_images, simulated_images
from deepultrasound.superres.degradation import METHODS, degrade, upsample_lines
from deepultrasound.superres.inference import (
    DEFAULT_TILE,
    SuperResolver,
    installed_models,
    resolve_model,
    superresolve,
)
from deepultrasound.superres.plots import save_comparison

HELP = "lateral super-resolution: models vs linear and cubic interpolation on held-out simulated and real images"
DATA_RANGE = 1.0
SIMULATED_SHAPE = (256, 128)
TILE_CHECK_SHAPE = (2000, 128)
TILE_CHECK_FACTOR = 4
FIGURE_CROP = (160, 128)
"""Largest (rows, lines) of the figure's panels: a centred crop, so that speckle stays visible."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--factors", type=int, nargs="+", default=[2, 4], help="lateral factors (default: 2 4)")
    parser.add_argument("--simulated", type=int, default=16, help="held-out simulated images (default: 16)")
    parser.add_argument("--real", type=int, default=None, help="at most this many held-out BUSI images (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated split (the training configs': 0)")
    parser.add_argument("--data", type=Path, default=None, help=f"BUSI folder (default: <shared data>/{BUSI_FOLDER})")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="F=BUNDLE",
        help="evaluate this bundle (folder or installed name) at factor F instead of the installed models of F; "
        "repeatable",
    )
    parser.add_argument(
        "--blur-sigma",
        type=float,
        default=None,
        metavar="LINES",
        help="beam-profile blur before the decimation, Gaussian sigma in fine lines (default: the highest the "
        "models were trained on)",
    )
    parser.add_argument("--figures", type=Path, default=None, help="write superres_x<F>.png (input, estimates, truth)")
    parser.add_argument("--tiles", action="store_true", help="also time a tiled and an untiled 2000 x 128 x4 frame")
    parser.add_argument("--device", default="cpu", help="device of the models (default: cpu)")


def _models(args: argparse.Namespace) -> dict[int, dict[str, Path]]:
    """Bundles to evaluate per factor by manifest name: those of ``--model F=BUNDLE`` where a factor has any,
    else the installed ones."""
    given: dict[int, dict[str, Path]] = {}
    for entry in args.model:
        factor, _, model = entry.partition("=")
        if not factor.isdigit() or not model:
            raise InputError(f"--model takes F=BUNDLE, e.g. 4=runs/superres_x4/bundle; got {entry!r}")
        path = resolve_model(model, int(factor))
        given.setdefault(int(factor), {})[load_bundle(path).manifest.name] = path
    installed = {factor: {name: path for path, name in found} for factor, found in installed_models().items()}
    return {**installed, **given}


def _blur_of(factor: int, models: dict[str, SuperResolver], override: float | None) -> float:
    """The degradation's blur at ``factor``: ``override``, else the highest one all of the factor's models were
    trained on (0 without models)."""
    if override is not None:
        if not np.isfinite(override) or override < 0:
            raise InputError(f"--blur-sigma must be a non-negative number of fine lines, got {override}")
        return override
    blurs = {name: model.blur_sigma_lines[1] for name, model in models.items()}
    if len(set(blurs.values())) > 1:
        raise InputError(
            f"the x{factor} models were trained for different degradations (highest blur sigma in fine lines: "
            f"{blurs}); "
            "compare them on one with --blur-sigma, or run them separately"
        )
    return next(iter(blurs.values()), 0.0)


def _estimate(method: str | SuperResolver, low: np.ndarray, factor: int, width: int) -> np.ndarray:
    """``low`` ``(H, w)`` upsampled by a classical method or a model, cropped to ``width`` lines, clipped."""
    if isinstance(method, str):
        fine = upsample_lines(torch.from_numpy(low), factor, method).numpy()
    else:
        fine = method(low[None])[0]  # B-mode in [0, 1], as the model was trained on
    return np.clip(fine[:, :width], 0.0, DATA_RANGE)


def _score(
    images: list[np.ndarray], factor: int, blur: float, methods: dict[str, str | SuperResolver], label: str
) -> tuple[dict, dict[str, np.ndarray], dict[str, float]]:
    """PSNR, SSIM and seconds per image of every method on ``images`` degraded by ``factor`` after a ``blur``; and
    the first image's panels (its low-resolution input with each line repeated F times, every method's
    estimate, the truth) and their PSNRs, for :func:`_figure`."""
    scores = {name: {"psnr": [], "ssim": [], "seconds": []} for name in methods}
    panels: dict[str, np.ndarray] = {}
    for image in tqdm(images, desc=f"x{factor} {label}", unit="image", leave=False):
        truth = torch.from_numpy(image)[None, None]
        low = degrade(torch.from_numpy(image), factor, blur).numpy()
        estimates = {}
        for name, method in methods.items():
            started = time.perf_counter()
            estimates[name] = _estimate(method, low, factor, image.shape[1])
            scores[name]["seconds"].append(time.perf_counter() - started)
            estimate = torch.from_numpy(estimates[name].astype(np.float32))[None, None]
            scores[name]["psnr"].append(float(psnr(estimate, truth, DATA_RANGE)))
            scores[name]["ssim"].append(float(ssim(estimate, truth, DATA_RANGE)))
        if not panels:
            low_panel = np.repeat(low, factor, axis=1)[:, : image.shape[1]]
            panels = {"low resolution": low_panel, **estimates, "full resolution": image}
    first_psnr = {name: values["psnr"][0] for name, values in scores.items()}
    part = {
        "images": len(images),
        "methods": {
            name: {
                "psnr": float(np.mean(values["psnr"])),
                "ssim": float(np.mean(values["ssim"])),
                "seconds_per_image": float(np.median(values["seconds"])),
            }
            for name, values in scores.items()
        },
    }
    return part, panels, first_psnr


def _crop(image: np.ndarray) -> np.ndarray:
    """The centred crop of at most :data:`FIGURE_CROP` of ``image`` ``(H, W)``."""
    top, left = ((size - min(size, crop)) // 2 for size, crop in zip(image.shape, FIGURE_CROP))
    return image[top : top + FIGURE_CROP[0], left : left + FIGURE_CROP[1]]


def _figure(
    folder: Path, factor: int, panels: dict[str, dict[str, np.ndarray]], scores: dict[str, dict[str, float]]
) -> Path:
    """``superres_x<F>.png`` of the first image of each set: its panels (:func:`_score`), cropped, and PSNRs."""
    rows = {label: {name: _crop(panel) for name, panel in row.items()} for label, row in panels.items()}
    return save_comparison(folder / f"superres_x{factor}.png", rows, scores)


def _gains(part: dict[str, Any], models: list[str]) -> dict[str, dict[str, float]]:
    cubic = part["methods"]["cubic"]
    return {
        name: {key: part["methods"][name][key] - cubic[key] for key in ("psnr", "ssim")}
        for name in models
        if name in part["methods"]
    }


def _tile_run(bundle: str, tile: int, device: str, queue: multiprocessing.Queue) -> None:
    """In a fresh process: load the model, then upsample one 2000 x 128 frame; seconds and added max RSS (MiB)."""
    model = SuperResolver(bundle, TILE_CHECK_FACTOR, tile=tile, device=device)
    frame = np.random.default_rng(0).random(TILE_CHECK_SHAPE, dtype=np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    fine = superresolve(frame, TILE_CHECK_FACTOR, model=model)
    seconds = time.perf_counter() - started
    added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    queue.put({"output_shape": list(fine.shape), "seconds": seconds, "added_peak_rss_mib": added})


def _tiles(bundle: Path, device: str) -> dict[str, Any]:
    """The tiled and the untiled run of :func:`_tile_run`, each in a process of its own."""
    context = multiprocessing.get_context("spawn")
    figures: dict[str, Any] = {"model": load_bundle(bundle).manifest.name, "input_shape": list(TILE_CHECK_SHAPE)}
    for label, tile in (("tiled", DEFAULT_TILE), ("untiled", max(TILE_CHECK_SHAPE))):
        queue = context.Queue()
        process = context.Process(target=_tile_run, args=(str(bundle), tile, device, queue))
        process.start()
        figures[label] = {"tile": tile, **queue.get()}
        process.join()
    return figures


def _print_part(factor: int, label: str, part: dict[str, Any]) -> None:
    print(f"x{factor} {label} ({part['images']} images): method, PSNR dB, SSIM, s/image")
    for name, figures in part["methods"].items():
        print(f"  {name:<28} {figures['psnr']:7.2f} {figures['ssim']:7.4f} {figures['seconds_per_image']:9.4f}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    models = _models(args)
    folder = args.data or shared_data_dir() / BUSI_FOLDER
    try:
        real = real_images(folder, "val", args.real)
        real_note = None
    except FileFormatError as error:
        real, real_note = [], str(error)
    simulated = simulated_images(args.seed, "val", args.simulated, SIMULATED_SHAPE)
    results: dict[str, Any] = {}
    for factor in args.factors:
        found = models.get(factor, {})
        networks = {name: SuperResolver(path, factor, device=args.device) for name, path in found.items()}
        blur = _blur_of(factor, networks, args.blur_sigma)
        methods: dict[str, str | SuperResolver] = {**{name: name for name in METHODS}, **networks}
        entry: dict[str, Any] = {"blur_sigma_lines": blur}
        print(f"x{factor}: blur sigma {blur:g} fine lines, then one line in {factor} kept")
        panels, first_psnr = {}, {}
        for label, images in (("simulated", simulated), ("real", real)):
            if not images:
                entry[label] = {"skipped": real_note}
                print(f"x{factor} {label}: skipped ({real_note})")
                continue
            part, panels[label], first_psnr[label] = _score(images, factor, blur, methods, label)
            part["gain_over_cubic"] = _gains(part, list(networks))
            _print_part(factor, label, part)
            entry[label] = part
        if args.figures is not None:
            entry["figure"] = str(_figure(args.figures, factor, panels, first_psnr))
            print(f"x{factor}: figure {entry['figure']}")
        results[str(factor)] = entry
    tiles = None
    if args.tiles:
        x4 = models.get(TILE_CHECK_FACTOR, {})
        tiles = _tiles(next(iter(x4.values())), args.device) if x4 else {"skipped": "no x4 model"}
        print(f"2000 x 128 x4 frame: {tiles}")
    return {"data_range": DATA_RANGE, "seed": args.seed, "factors": results, "tiles": tiles}
