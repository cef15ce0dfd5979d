"""The demo phantom: the scene that ``deepultrasound demo`` and ``deepultrasound scanner`` image.

Background plus a stiff (3x) and a soft (0.4x) circular inclusion, both isoechoic (invisible in
B-mode, as lesions often are), 40 mm deep and 25.6 mm wide. However many samples and lines the
user asks for, the image covers the whole phantom: the sample spacing follows from the size.
"""

from __future__ import annotations

from pydantic import ValidationError

from deepultrasound.errors import InputError
from deepultrasound.simulation.phantom import Inclusion, Phantom
from deepultrasound.simulation.sequence import SimulationConfig

DEMO_DEPTH_MM = 40.0
DEMO_WIDTH_MM = 25.6


def demo_phantom() -> Phantom:
    """Background plus a stiff (3x) and a soft (0.4x) isoechoic circular inclusion, 40 x 25.6 mm."""
    return Phantom(
        depth_mm=DEMO_DEPTH_MM,
        width_mm=DEMO_WIDTH_MM,
        inclusions=(
            Inclusion(center_mm=(7.5, 17.0), semi_axes_mm=(4.0, 4.0), stiffness=3.0),
            Inclusion(center_mm=(18.0, 26.0), semi_axes_mm=(3.5, 3.5), stiffness=0.4),
        ),
    )


def demo_config(*, n_frames: int, height: int, width: int, compression_step_percent: float) -> SimulationConfig:
    """A compression ramp of the demo phantom, ``height`` samples over its 40 mm depth and ``width`` lines over
    its 25.6 mm width (axial spacing ``40 / height`` mm, lateral pitch ``25.6 / width`` mm).

    Raises:
        InputError: a size whose spacing :class:`SimulationConfig` refuses (e.g. fewer than 200 samples).
    """
    try:
        return SimulationConfig(
            n_frames=n_frames,
            height=height,
            width=width,
            compression_step_percent=compression_step_percent,
            axial_spacing_mm=DEMO_DEPTH_MM / height,
            lateral_pitch_mm=DEMO_WIDTH_MM / width,
        )
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors())
        raise InputError(
            f"cannot image the {DEMO_DEPTH_MM:g} x {DEMO_WIDTH_MM:g} mm demo phantom with {n_frames} frames of "
            f"{height} samples x {width} lines: {problems}"
        ) from None
