"""Realism figures of echocardiography frames, to compare the simulator with CAMUS side by side.

* grey-level statistics inside the fan per structure (LV cavity, myocardium, left atrium, other =
  unlabelled fan pixels), grey levels in [0, 1];
* speckle size: full width at half maximum (pixels) of the autocorrelation of tissue patches
  (myocardium and other tissue), axial (rows) and lateral (columns).

:func:`compare_with_camus` runs both on CAMUS frames and on simulated frames on the same 224 x 224
grid and returns the figures (the last line of a bench is this dict as JSON).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_erosion

from deepultrasound.errors import InputError

STRUCTURES = {"cavity": 1, "myocardium": 2, "atrium": 3, "other": 0}
_PATCH = 16  # speckle patch side, pixels
_BINS = np.linspace(0.0, 1.0, 33)


def fan_mask_of(image: np.ndarray) -> np.ndarray:
    """Fan of a scan-converted frame whose outside is 0: per row, the span between the first and
    last non-zero pixel (a sector is convex). ``(H, W)`` -> bool ``(H, W)``."""
    nonzero = image > 0
    cols = np.arange(image.shape[1])
    first = np.where(nonzero.any(1), np.argmax(nonzero, 1), image.shape[1])
    last = np.where(nonzero.any(1), image.shape[1] - 1 - np.argmax(nonzero[:, ::-1], 1), -1)
    return (cols[None, :] >= first[:, None]) & (cols[None, :] <= last[:, None])


def _structure_mask(labels: np.ndarray, fan: np.ndarray, name: str) -> np.ndarray:
    return fan & (labels == STRUCTURES[name])


def grey_levels(images: list[np.ndarray], labels: list[np.ndarray], fans: list[np.ndarray]) -> dict[str, dict]:
    """Pooled grey-level statistics per structure over frames (each ``(H, W)``, grey in [0, 1]).

    Returns ``{structure: {"mean", "std", "p10", "p50", "p90", "histogram"}}``; ``histogram`` is the
    density over 32 equal bins of [0, 1] (sums to 1)."""
    if not (len(images) == len(labels) == len(fans) > 0):
        raise InputError(
            f"need as many images, label maps and fans (at least one), got {len(images)}, {len(labels)}, {len(fans)}"
        )
    out = {}
    for name in STRUCTURES:
        values = np.concatenate([im[_structure_mask(lab, fan, name)] for im, lab, fan in zip(images, labels, fans)])
        if values.size == 0:
            continue
        histogram = np.histogram(values, _BINS)[0] / values.size
        p10, p50, p90 = np.percentile(values, [10, 50, 90])
        out[name] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "p10": float(p10),
            "p50": float(p50),
            "p90": float(p90),
            "histogram": histogram.round(4).tolist(),
        }
    return out


def autocorrelation(image: np.ndarray, mask: np.ndarray, patch: int = _PATCH) -> np.ndarray | None:
    """Mean normalised autocorrelation ``(2 patch - 1, 2 patch - 1)`` (zero lag at the centre) of the
    mean-removed ``patch x patch`` tiles that lie wholly inside ``mask``; None if there are none.
    Each lag is averaged over the pixel pairs it has (unbiased)."""
    h, w = image.shape
    tiles = [
        image[i : i + patch, j : j + patch]
        for i in range(0, h - patch + 1, patch)
        for j in range(0, w - patch + 1, patch)
        if mask[i : i + patch, j : j + patch].all()
    ]
    if not tiles:
        return None
    stack = np.stack(tiles).astype(float)
    stack -= stack.mean(axis=(1, 2), keepdims=True)
    spectrum = np.fft.rfft2(stack, s=(2 * patch, 2 * patch))
    acf = np.fft.irfft2(np.abs(spectrum) ** 2, s=(2 * patch, 2 * patch)).mean(0)
    overlap = np.fft.irfft2(np.abs(np.fft.rfft2(np.ones((patch, patch)), s=(2 * patch, 2 * patch))) ** 2)
    acf = np.fft.fftshift(acf / np.maximum(overlap, 1.0))[1:, 1:]
    return acf / acf[patch - 1, patch - 1]


def half_width(profile: np.ndarray) -> float:
    """Lag (fractional) where a profile starting at 1 first falls to 0.5."""
    below = np.nonzero(profile < 0.5)[0]
    if below.size == 0:
        return float(len(profile))
    k = below[0]
    return float(k - 1 + (profile[k - 1] - 0.5) / (profile[k - 1] - profile[k]))


def speckle_size(images: list[np.ndarray], labels: list[np.ndarray], fans: list[np.ndarray]) -> dict[str, float]:
    """Speckle FWHM (pixels) of the autocorrelation in tissue (myocardium and other fan pixels, 2
    pixels in from any border), pooled over frames: ``{"axial_px", "lateral_px", "frames"}`` (frames
    that had a tissue patch)."""
    acfs = []
    for image, label, fan in zip(images, labels, fans):
        tissue = binary_erosion(fan & ((label == 0) | (label == 2)), iterations=2)
        acf = autocorrelation(image, tissue)
        if acf is not None:
            acfs.append(acf)
    if not acfs:
        raise InputError("no 16 x 16 tissue patch inside the fan in any frame; speckle size is undefined")
    acf = np.mean(acfs, axis=0)
    centre = _PATCH - 1
    return {
        "axial_px": 2.0 * half_width(acf[centre:, centre]),
        "lateral_px": 2.0 * half_width(acf[centre, centre:]),
        "frames": len(acfs),
    }


def realism(images: list[np.ndarray], labels: list[np.ndarray], fans: list[np.ndarray]) -> dict:
    """Grey levels per structure and speckle size of a set of frames (see the module docstring)."""
    return {"grey_levels": grey_levels(images, labels, fans), "speckle": speckle_size(images, labels, fans)}


def compare_with_camus(
    camus_root: str | os.PathLike[str],
    n_patients: int = 100,
    n_simulated: int = 40,
    seed: int = 0,
    png_path: str | os.PathLike[str] | None = None,
) -> dict:
    """Realism of CAMUS (both views, ED and ES, first ``n_patients``) and of ``n_simulated`` simulated
    frames (alternating views, ED and ES, EF 35 to 65 %, seeds ``seed``...) on the same 224 x 224 grid.

    Returns ``{"camus": realism, "simulated": realism, "histogram_distance": {structure: W1}}`` where
    W1 is the Wasserstein-1 distance (grey levels) between the two histograms. Writes a side-by-side
    PNG (simulated frame | CAMUS frame, labels contoured) to ``png_path`` when given."""
    from deepultrasound.io.camus import PHASES, VIEWS, CamusDataset
    from deepultrasound.simulation.echo import EchoConfig, EchoSimulator

    dataset = CamusDataset(camus_root)
    camus: tuple[list, list, list] = ([], [], [])
    for patient in dataset.patients[:n_patients]:
        for view in VIEWS:
            for phase in PHASES:
                image, label = dataset.load(patient, view, phase)
                grey = image.array.astype(np.float32) / 255.0
                for store, item in zip(camus, (grey, label.array, fan_mask_of(grey))):
                    store.append(item)
    simulated: tuple[list, list, list] = ([], [], [])
    sim_frames = []
    rng = np.random.default_rng(seed)
    for k in range(n_simulated):
        config = EchoConfig(view=VIEWS[k % 2], ejection_fraction=float(rng.uniform(35, 65)), height=224, width=224)
        simulator = EchoSimulator(config, seed=seed + k)
        frame = simulator.frame(0.0 if k % 4 < 2 else config.es_phase)
        sim_frames.append(frame)
        for store, item in zip(simulated, (frame.image, frame.labels, frame.fan_mask)):
            store.append(item)
    report = {"camus": realism(*camus), "simulated": realism(*simulated)}
    centres = 0.5 * (_BINS[1:] + _BINS[:-1])
    report["histogram_distance"] = {
        name: float(
            np.abs(
                np.cumsum(report["camus"]["grey_levels"][name]["histogram"])
                - np.cumsum(report["simulated"]["grey_levels"][name]["histogram"])
            ).sum()
            * (centres[1] - centres[0])
        )
        for name in STRUCTURES
        if name in report["camus"]["grey_levels"] and name in report["simulated"]["grey_levels"]
    }
    if png_path is not None:
        save_comparison_png(png_path, sim_frames[0].image, sim_frames[0].labels, camus[0][0], camus[1][0])
    return report


def save_comparison_png(
    path: str | os.PathLike[str],
    simulated: np.ndarray,
    simulated_labels: np.ndarray,
    camus: np.ndarray,
    camus_labels: np.ndarray,
) -> Path:
    """Write a PNG: the simulated frame beside a CAMUS frame, grey in [0, 1], labels contoured
    (red endocardium, green epicardium, blue atrium). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 5))
    for axis, image, label, title in (
        (axes[0], simulated, simulated_labels, "simulated"),
        (axes[1], camus, camus_labels, "CAMUS"),
    ):
        axis.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
        for mask, colour in (
            (label == 1, "tab:red"),
            ((label == 1) | (label == 2), "tab:green"),
            (label == 3, "tab:blue"),
        ):
            if mask.any():
                axis.contour(mask, levels=[0.5], colors=colour, linewidths=0.8)
        axis.set_title(title)
        axis.axis("off")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
