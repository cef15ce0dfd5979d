"""Draw the extension and module icons (128 x 128 RGBA PNG): ``python Resources/make_icons.py``."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZE_PX = 128
DPI = 64


def canvas():
    """Figure of 128 x 128 pixels with a transparent background and unit axes."""
    fig = plt.figure(figsize=(SIZE_PX / DPI, SIZE_PX / DPI), dpi=DPI)
    fig.patch.set_alpha(0.0)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_axis_off()
    return fig, ax


def save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, transparent=True)
    plt.close(fig)


def speckle(shape, seed):
    """Fully developed speckle: Rayleigh-distributed envelope, log-compressed to [0, 1]."""
    rng = np.random.default_rng(seed)
    envelope = np.abs(rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    db = 20 * np.log10(envelope / envelope.max() + 1e-3)
    return np.clip((db + 40) / 40, 0, 1)


def strain_icon(ax):
    """Axial strain map: soft background, stiff circular inclusion (low strain)."""
    y, x = np.mgrid[0:1:96j, 0:1:96j]
    strain = 1.0 - 0.8 * np.exp(-((((x - 0.5) ** 2 + (y - 0.5) ** 2) / 0.025) ** 3))
    ax.imshow(strain, cmap="jet", extent=(0.06, 0.94, 0.06, 0.94), vmin=0, vmax=1)
    ax.add_patch(Rectangle((0.06, 0.06), 0.88, 0.88, fill=False, lw=3, ec="white"))


def heart_icon(ax):
    """Left-ventricle contour on speckle, with motion arrows towards its centre."""
    ax.imshow(speckle((48, 48), 1) * 0.5, cmap="gray", extent=(0.04, 0.96, 0.04, 0.96), vmin=0, vmax=1)
    t = np.linspace(0, 2 * np.pi, 200)
    ax.plot(0.5 + 0.24 * np.cos(t), 0.5 + 0.34 * np.sin(t), color="#ff4040", lw=5)
    for angle in np.linspace(0, 2 * np.pi, 6, endpoint=False):
        start = (0.5 + 0.40 * np.cos(angle), 0.5 + 0.44 * np.sin(angle))
        end = (0.5 + 0.27 * np.cos(angle), 0.5 + 0.32 * np.sin(angle))
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, lw=3, color="#40ff80"))


def synthesis_icon(ax):
    """Label map on the left turning into speckle on the right."""
    y, x = np.mgrid[0:1:64j, 0:1:64j]
    labels = np.where((x - 0.5) ** 2 / 0.12 + (y - 0.5) ** 2 / 0.2 < 1, 2.0, 1.0)
    labels[y > 0.8] = 0.0
    image = 0.25 + 0.6 * speckle((64, 64), 2) * (labels / 2 + 0.2)
    blend = np.clip((x - 0.35) / 0.3, 0, 1)
    label_rgb = plt.get_cmap("tab10")(labels.astype(int))[..., :3]
    rgb = (1 - blend[..., None]) * label_rgb + blend[..., None] * image[..., None]
    ax.imshow(rgb, extent=(0.04, 0.96, 0.04, 0.96))


def superres_icon(ax):
    """Coarse beam lines (few, wide columns) beside the same image with four times the beam lines."""
    rows = speckle((24, 32), 3)
    low = np.repeat(rows[:, ::4], 4, axis=1)
    ax.imshow(low, cmap="gray", extent=(0.04, 0.48, 0.14, 0.86), vmin=0, vmax=1, interpolation="nearest")
    ax.imshow(rows, cmap="gray", extent=(0.52, 0.96, 0.14, 0.86), vmin=0, vmax=1, interpolation="nearest")
    ax.add_patch(FancyArrowPatch((0.36, 0.5), (0.64, 0.5), arrowstyle="-|>", mutation_scale=22, lw=4, color="#ffb000"))


def extension_icon(ax):
    """Four quadrants, one per capability."""
    for draw, (x0, y0) in zip(
        (strain_icon, heart_icon, synthesis_icon, superres_icon), ((0, 0.5), (0.5, 0.5), (0, 0), (0.5, 0))
    ):
        inset = ax.inset_axes((x0 + 0.02, y0 + 0.02, 0.46, 0.46))
        inset.set_xlim(0, 1)
        inset.set_ylim(0, 1)
        inset.set_axis_off()
        draw(inset)


def common_icon(ax):
    """Shared helpers: a plain ultrasound sector of speckle."""
    y, x = np.mgrid[0:1:96j, -0.5:0.5:96j]
    radius, angle = np.hypot(x, y), np.arctan2(x, y)  # apex at the top row
    inside = (radius > 0.1) & (radius < 0.95) & (np.abs(angle) < 0.6)
    rgba = np.zeros((96, 96, 4))
    rgba[..., :3] = speckle((96, 96), 4)[..., None]
    rgba[..., 3] = inside
    ax.imshow(rgba, extent=(0.02, 0.98, 0.02, 0.98))


ICONS = {
    ROOT / "Resources/Icons/DeepUltrasound.png": extension_icon,
    ROOT / "DeepUSE/Resources/Icons/DeepUSE.png": strain_icon,
    ROOT / "EchoRegistration/Resources/Icons/EchoRegistration.png": heart_icon,
    ROOT / "USSynth/Resources/Icons/USSynth.png": synthesis_icon,
    ROOT / "USSuperRes/Resources/Icons/USSuperRes.png": superres_icon,
    ROOT / "DeepUltrasoundCommon/Resources/Icons/DeepUltrasoundCommon.png": common_icon,
}

if __name__ == "__main__":
    for path, draw in ICONS.items():
        fig, ax = canvas()
        draw(ax)
        save(fig, path)
        print(path.relative_to(ROOT))
