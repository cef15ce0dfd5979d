"""Left-heart anatomy and its motion over the cardiac cycle, for simulated apical echocardiography.

Coordinates are in mm. Image frame: ``x`` lateral (0 on the probe, positive to the right), ``z``
depth (0 at the probe, increasing downwards). Heart frame: ``lng`` along the left-ventricular long
axis (0 at the endocardial apex, increasing towards the base), ``r`` across it (positive to the
right of the image when the axis is vertical). The axis is tilted by ``tilt_rad`` (positive turns
the base towards +x).

Anatomy (material coordinates, end-diastole): the LV cavity is a half-ellipse of length ``a``
(apex to the centre) and half-widths ``b_left``/``b_right``, cut at the base ``lng = lv_length``;
the myocardium is the ring up to a wider ellipse (lateral thickness ``wall``, apical ``apex_wall``);
the left atrium is a truncated ellipse below the base. In the 4-chamber view a right ventricle and
atrium lie to the left of the septum; they are imaged but labelled background, as in CAMUS.

Motion (:meth:`HeartMotion.forward`), for contraction ``c`` in [0, 1] (0 end-diastole, 1
end-systole), from a material point ``(lng, r)``:

* longitudinal shortening: ``lng -> lng - s c g(lng) w(r)``; ``g`` is ``lng`` between apex and base (the
  apex stays still, the base moves towards it by ``s * lv_length``; rounded off about the apex) and
  fades out across the atrium;
  ``w`` fades out beyond the heart's side;
* radial thickening: the cavity scales by ``1 - k c`` towards the axis; the wall keeps its volume
  (axisymmetric incompressibility: ``r'^2 = e'^2 + (r^2 - e^2) / lambda_l`` with ``e`` the
  endocardial half-width and ``lambda_l`` the local longitudinal stretch), so it thickens; outside
  the epicardium the motion decays over ``_DECAY_MM``;
* twist: each level rotates about the long axis by ``alpha(lng)`` (apex and base in opposite senses);
  the image plane sees ``r cos(alpha)``, the rest, ``r sin(alpha)``, is out-of-plane motion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepultrasound.errors import InputError

_DECAY_MM = 12.0  # radial motion decay outside the epicardium
_SIDE_DECAY_MM = 15.0  # longitudinal motion decay beyond the heart's side
_BASE_TAPER_MM = 20.0  # the cavity's radial contraction continues this far into the atrium
_APEX_ROUND_MM = 4.0  # the longitudinal motion starts smoothly over this distance about the apex
_INVERSE_ITERATIONS = 12
_INVERSE_TOLERANCE_MM = 1e-6


def _smoothstep(t: np.ndarray) -> np.ndarray:
    """0 for t <= 0, 1 for t >= 1, cubic in between (C1)."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smoothstep_slope(t: np.ndarray) -> np.ndarray:
    inside = (t > 0) & (t < 1)
    return np.where(inside, 6.0 * t * (1.0 - t), 0.0)


@dataclass(frozen=True)
class HeartShape:
    """End-diastolic geometry of one apical view (all lengths in mm, angles in radians).

    ``apex_mm`` is the endocardial apex ``(x, z)`` in the image frame; ``lv_length`` runs from it to
    the mitral plane; ``b_left``/``b_right`` are the cavity's largest half-widths; ``wall`` and
    ``apex_wall`` the myocardial thickness at the side and at the apex; ``la_length``/``la_radius``
    the atrium's length and half-width; ``four_chamber`` adds a right ventricle and atrium.
    """

    apex_mm: tuple[float, float]
    tilt_rad: float
    lv_length: float
    b_left: float
    b_right: float
    wall: float
    apex_wall: float
    la_length: float
    la_radius: float
    four_chamber: bool

    def __post_init__(self) -> None:
        for name in ("lv_length", "b_left", "b_right", "wall", "apex_wall", "la_length", "la_radius"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise InputError(f"HeartShape.{name} must be a positive size in mm, got {value!r}")
        if max(self.b_left, self.b_right) >= self.lv_length:
            raise InputError(
                f"the LV half-width ({max(self.b_left, self.b_right)} mm) must be smaller than its length "
                f"({self.lv_length} mm)"
            )

    @property
    def semi_axis(self) -> float:
        """``a``: apex-to-centre distance of the cavity ellipse; the base cuts it at 1.75 a."""
        return self.lv_length / 1.75

    def to_heart(self, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image ``(x, z)`` mm -> heart ``(lng, r)`` mm."""
        s, c = np.sin(self.tilt_rad), np.cos(self.tilt_rad)
        dx, dz = x - self.apex_mm[0], z - self.apex_mm[1]
        return dx * s + dz * c, dx * c - dz * s

    def to_image(self, lng: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Heart ``(lng, r)`` mm -> image ``(x, z)`` mm."""
        s, c = np.sin(self.tilt_rad), np.cos(self.tilt_rad)
        return self.apex_mm[0] + lng * s + r * c, self.apex_mm[1] + lng * c - r * s

    def _half_width(self, lng: np.ndarray, r: np.ndarray, grow: float, grow_apex: float) -> np.ndarray:
        """Half-width at level ``lng`` of the cavity ellipse enlarged by ``grow`` (side) / ``grow_apex``;
        the side (left or right half-width) is chosen by the sign of ``r``."""
        a = self.semi_axis
        b = np.where(r < 0, self.b_left, self.b_right) + grow
        return b * np.sqrt(np.clip(1.0 - ((lng - a) / (a + grow_apex)) ** 2, 0.0, None))

    def endocardium(self, lng: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Cavity half-width ``e(lng)`` (mm) on the side of ``r``; it tapers to 0 across the mitral plane
        over ``_BASE_TAPER_MM`` so that the motion stays continuous there."""
        width = self._half_width(np.minimum(lng, self.lv_length), r, 0.0, 0.0)
        return width * (1.0 - _smoothstep((lng - self.lv_length) / _BASE_TAPER_MM))

    def epicardium(self, lng: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Epicardial half-width (mm) on the side of ``r``, tapered like :meth:`endocardium`."""
        width = self._half_width(np.minimum(lng, self.lv_length), r, self.wall, self.apex_wall)
        return width * (1.0 - _smoothstep((lng - self.lv_length) / _BASE_TAPER_MM))

    def labels(self, lng: np.ndarray, r: np.ndarray) -> np.ndarray:
        """CAMUS labels (0 background, 1 LV cavity, 2 myocardium, 3 left atrium) at material ``(lng, r)``."""
        out = np.zeros(np.shape(lng), np.uint8)
        below_base = lng > self.lv_length
        ventricle = ~below_base & (lng > -self.apex_wall)
        out[ventricle & (np.abs(r) <= self._half_width(lng, r, self.wall, self.apex_wall))] = 2
        out[ventricle & (lng >= 0) & (np.abs(r) < self._half_width(lng, r, 0.0, 0.0))] = 1
        out[below_base & self._in_atrium(lng, r, 0.0)] = 3
        return out

    def _in_atrium(self, lng: np.ndarray, r: np.ndarray, grow: float) -> np.ndarray:
        """Inside the left atrium (a truncated ellipse below the base) enlarged by ``grow`` mm."""
        half = 0.65 * self.la_length
        centre = self.lv_length + self.la_length - half
        return ((lng - centre) / (half + grow)) ** 2 + (r / (self.la_radius + grow)) ** 2 <= 1.0

    def tissue(self, lng: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Echogenic class at material ``(lng, r)``: the label, or 4 right-heart blood (4-chamber view)
        or 5 pericardium (a bright 3 mm band around the epicardium)."""
        out = self.labels(lng, r)
        background = out == 0
        epi = self._half_width(np.minimum(lng, self.lv_length), r, self.wall, self.apex_wall)
        band = (lng > -self.apex_wall - 3.0) & (lng < self.lv_length + 4.0) & (np.abs(r) < epi + 3.0)
        out[background & band] = 5
        if self.four_chamber:
            rv = _ellipse(
                lng, r, (0.58 * self.lv_length, -(self.b_left + self.wall + 16.0)), (0.42 * self.lv_length, 13.0)
            )
            ra = _ellipse(lng, r, (self.lv_length + 0.45 * self.la_length, -(self.la_radius + 19.0)), (22.0, 16.0))
            out[background & ~band & (rv | ra)] = 4
        return out


def _ellipse(lng: np.ndarray, r: np.ndarray, centre: tuple[float, float], semi: tuple[float, float]) -> np.ndarray:
    return ((lng - centre[0]) / semi[0]) ** 2 + ((r - centre[1]) / semi[1]) ** 2 <= 1.0


@dataclass(frozen=True)
class HeartMotion:
    """Deformation of a :class:`HeartShape` (see the module docstring).

    Args:
        shape: the end-diastolic anatomy.
        shortening: ``s``, base-to-apex shortening at end-systole as a fraction of ``lv_length``.
        radial: ``k``, fractional decrease of the cavity half-width at end-systole.
        twist_rad: apex-to-base rotation difference at end-systole (apex +2/3, base -1/3 of it).
    """

    shape: HeartShape
    shortening: float
    radial: float
    twist_rad: float

    def _longitudinal(self, lng: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``g(lng) w(r)`` and its slope ``d/dl`` (see the module docstring). ``g`` is C1: a ramp that
        starts with a parabola over ``_APEX_ROUND_MM`` about the apex and fades out across the atrium."""
        shape = self.shape
        reach = shape.la_length + 10.0
        t = (lng - shape.lv_length) / reach
        fade, fade_slope = 1.0 - _smoothstep(t), -_smoothstep_slope(t) / reach
        d = _APEX_ROUND_MM
        ramp = np.where(lng > d, lng, np.where(lng < -d, 0.0, (lng + d) ** 2 / (4.0 * d)))
        ramp_slope = np.where(lng > d, 1.0, np.where(lng < -d, 0.0, (lng + d) / (2.0 * d)))
        side = max(shape.b_left, shape.b_right) + shape.wall + 5.0
        w = np.exp(-0.5 * (np.clip(np.abs(r) - side, 0.0, None) / _SIDE_DECAY_MM) ** 2)
        return ramp * fade * w, (ramp_slope * fade + ramp * fade_slope) * w

    def forward(self, lng: np.ndarray, r: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Material ``(lng, r)`` -> deformed ``(lng', r')`` at contraction ``c``, plus the out-of-plane
        displacement (mm) caused by the twist."""
        if c == 0.0:
            return lng, r, np.zeros_like(lng)
        g, slope = self._longitudinal(lng, r)
        stretch = 1.0 - self.shortening * c * slope  # local longitudinal stretch lambda_l
        e = self.shape.endocardium(lng, r)
        p = self.shape.epicardium(lng, r)
        e_new = e * (1.0 - self.radial * c)
        a = np.abs(r)

        def wall(radius: np.ndarray) -> np.ndarray:
            return np.sqrt(e_new**2 + np.clip(radius**2 - e**2, 0.0, None) / stretch)

        moved = np.where(a <= e, a * (1.0 - self.radial * c), wall(a))
        outside = a > p
        moved = np.where(outside, a + (wall(p) - p) * np.exp(-(a - p) / _DECAY_MM), moved)
        alpha = (
            self.twist_rad
            * c
            * (2.0 / 3.0 - np.clip(lng / self.shape.lv_length, 0.0, 1.0))
            * np.exp(-0.5 * (np.clip(a - p, 0.0, None) / _DECAY_MM) ** 2)
        )
        r_new = np.sign(r) * moved
        return lng - self.shortening * c * g, r_new * np.cos(alpha), r_new * np.sin(alpha)

    def inverse(self, l_new: np.ndarray, r_new: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
        """Deformed ``(lng', r')`` -> material ``(lng, r)`` at contraction ``c``: Newton's method with a
        finite-difference Jacobian and step halving where a step does not reduce the residual (the map
        is orientation-preserving but only C1 at the endo- and epicardium)."""
        lng, r = np.array(l_new, float), np.array(r_new, float)
        if c == 0.0:
            return lng, r
        h = 1e-4

        def residual(lng: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            fl, fr, _ = self.forward(lng, r, c)
            return fl - l_new, fr - r_new

        rl, rr = residual(lng, r)
        for _ in range(_INVERSE_ITERATIONS):
            if max(np.abs(rl).max(initial=0.0), np.abs(rr).max(initial=0.0)) < _INVERSE_TOLERANCE_MM:
                break
            dl_l, dr_l = residual(lng + h, r)
            dl_r, dr_r = residual(lng, r + h)
            j11, j21, j12, j22 = (dl_l - rl) / h, (dr_l - rr) / h, (dl_r - rl) / h, (dr_r - rr) / h
            det = j11 * j22 - j12 * j21
            det = np.where(np.abs(det) < 1e-6, 1e-6, det)
            step_l = np.clip((j22 * rl - j12 * rr) / det, -5.0, 5.0)
            step_r = np.clip((-j21 * rl + j11 * rr) / det, -5.0, 5.0)
            size = np.hypot(rl, rr)
            for _ in range(4):
                trial_l, trial_r = lng - step_l, r - step_r
                trial_rl, trial_rr = residual(trial_l, trial_r)
                better = np.hypot(trial_rl, trial_rr) < size
                lng, r = np.where(better, trial_l, lng), np.where(better, trial_r, r)
                rl, rr = np.where(better, trial_rl, rl), np.where(better, trial_rr, rr)
                if better.all():
                    break
                step_l, step_r = np.where(better, 0.0, step_l / 2), np.where(better, 0.0, step_r / 2)
                size = np.where(better, -1.0, size)  # done points take no more trial steps
        return lng, r

    def endocardial_contour(self, c: float, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
        """The deformed endocardium in the heart frame, base-left -> apex -> base-right: ``(lng', r')``
        arrays of ``2 * points - 1`` points (the mitral line is not part of it)."""
        lng = self.shape.semi_axis * (1.0 - np.cos(np.linspace(0.0, np.arccos(1.0 - 1.75), points)))
        lng = np.minimum(lng, self.shape.lv_length)
        r_left = -self.shape.endocardium(lng, -np.ones_like(lng))
        r_right = self.shape.endocardium(lng, np.ones_like(lng))
        contour_l = np.concatenate([lng[::-1], lng[1:]])
        contour_r = np.concatenate([r_left[::-1], r_right[1:]])
        moved_l, moved_r, _ = self.forward(contour_l, contour_r, c)
        return moved_l, moved_r

    def cavity_volume_ml(self, c: float) -> float:
        """LV volume (ml) by the single-plane method of discs on the deformed contour: discs
        perpendicular to the long axis, diameter = contour width at that level."""
        lng, r = self.endocardial_contour(c)
        n = len(lng) // 2
        left_l, left_r = lng[: n + 1][::-1], r[: n + 1][::-1]  # apex -> base, increasing lng
        right_l, right_r = lng[n:], r[n:]
        levels = np.linspace(0.0, min(left_l[-1], right_l[-1]), 400)
        width = np.interp(levels, right_l, right_r) - np.interp(levels, left_l, left_r)
        return float(np.trapezoid(np.pi * (width / 2.0) ** 2, levels) / 1000.0)

    def contour_length_mm(self, c: float) -> float:
        """Length (mm) of the deformed endocardial contour."""
        lng, r = self.endocardial_contour(c)
        return float(np.sum(np.hypot(np.diff(lng), np.diff(r))))


def contraction(phase: float | np.ndarray, es_phase: float) -> np.ndarray:
    """Contraction ``c`` in [0, 1] over a cycle: 0 at end-diastole (phase 0 and 1), 1 at end-systole
    (``es_phase``). Systole is a raised cosine; diastole a fast relaxation (early filling) over
    60 % of the diastolic time, a still diastasis, and an atrial kick (c = 0.15) before the next
    end-diastole."""
    phase = np.mod(np.asarray(phase, float), 1.0)
    systole = 0.5 - 0.5 * np.cos(np.pi * phase / es_phase)
    t = (phase - es_phase) / (1.0 - es_phase)  # 0..1 through diastole
    relaxation = 0.5 + 0.5 * np.cos(np.pi * np.clip(t / 0.6, 0.0, 1.0))
    kick = 0.15 * np.sin(np.pi * np.clip((t - 0.8) / 0.2, 0.0, 1.0)) ** 2
    return np.where(phase <= es_phase, systole, relaxation + kick)


def motion_for_ejection_fraction(
    shape: HeartShape, ejection_fraction: float, shortening: float, twist_rad: float
) -> HeartMotion:
    """The :class:`HeartMotion` whose radial contraction gives ``ejection_fraction`` (%) by the method
    of discs, for the given longitudinal ``shortening``; bisection on ``k`` (EF grows with it)."""
    end_diastolic = HeartMotion(shape, shortening, 0.0, twist_rad).cavity_volume_ml(0.0)

    def ef(radial: float) -> float:
        return 100.0 * (1.0 - HeartMotion(shape, shortening, radial, twist_rad).cavity_volume_ml(1.0) / end_diastolic)

    low, high = 0.0, 0.8
    if not ef(low) <= ejection_fraction <= ef(high):
        raise InputError(
            f"ejection fraction {ejection_fraction} % is out of reach with longitudinal shortening {shortening}: "
            f"this heart gives {ef(low):.1f} to {ef(high):.1f} %; change either"
        )
    for _ in range(40):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if ef(mid) < ejection_fraction else (low, mid)
    return HeartMotion(shape, shortening, 0.5 * (low + high), twist_rad)
