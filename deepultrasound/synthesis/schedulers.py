"""MONAI's DDPM and DDIM schedulers with the B-map forward process: ``alpha_bar_t B_bar_t(x)`` per pixel.

MONAI's schedulers use one scalar ``alpha_bar_t`` per step. These subclasses replace it, in
``add_noise`` and ``step`` (forward process, posterior mean and variance, x0/eps conversions),
by ``alpha_bar_t B_bar_t(x)`` of :class:`~deepultrasound.synthesis.bmaps.BMapProcess`, computed
for the depth map passed as ``depth`` ``(B, 1, H, W)`` (or ``(1, 1, H, W)`` for the whole batch).
The per-step ``alpha_t`` becomes ``alpha_t B_t(x)`` and ``beta_t`` becomes ``1 - alpha_t B_t(x)``,
so every product and ratio of the plain process keeps its meaning pixel by pixel.

Both step from a timestep to the previous one of the sampling schedule (MONAI's ``set_timesteps``
spreads ``n`` steps evenly over ``T - 1 .. 0``, rounded), where MONAI's steps assume a stride of
``t - 1`` (DDPM) or ``t - T // n`` (DDIM) that the schedule does not keep.

The network's output is the noise (``prediction_type="epsilon"``) or the velocity
``v = sqrt(a) eps - sqrt(1 - a) x_0`` (``"v_prediction"``, with ``a = alpha_bar_t B_bar_t(x)`` per pixel;
:meth:`_BMapMixin.get_velocity` gives the training target).

With ``bmap_eps=1`` every ``B`` is 1 and, when all ``T`` steps run, the results equal MONAI's bit for
bit (the arithmetic follows MONAI's order); ``depth`` may then be omitted. Samples are ``(B, C, H, W)``.
"""

from __future__ import annotations

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from monai.networks.schedulers.ddpm import DDPMPredictionType, DDPMVarianceType
from monai.utils import unsqueeze_right

from deepultrasound.errors import InputError
from deepultrasound.runtime.inference_specs import DiffusionInference
from deepultrasound.synthesis.bmaps import DEFAULT_EPS, BMapProcess

PREDICTION_TYPES = (DDPMPredictionType.EPSILON, DDPMPredictionType.V_PREDICTION)
"""What the networks may predict: the noise or the velocity."""


class _BMapMixin:
    """What both schedulers share: the B-map process and ``alpha_bar`` per pixel."""

    alphas: torch.Tensor
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    num_train_timesteps: int
    prediction_type: str
    clip_sample: bool
    clip_sample_values: list[float]

    timesteps: torch.Tensor

    def _init_bmap(self, eps: float) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise InputError(
                f"prediction_type {self.prediction_type!r} is not supported; use one of {list(PREDICTION_TYPES)}"
            )
        self.bmap = BMapProcess(self.num_train_timesteps, eps)

    def previous_timestep(self, timestep: int) -> int:
        """The largest timestep of the sampling schedule below ``timestep``; -1 after the last one."""
        earlier = self.timesteps[self.timesteps < timestep]
        return int(earlier.max()) if earlier.numel() else -1

    def _alpha_bar(self, timesteps: int | torch.Tensor, depth: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """``alpha_bar_t B_bar_t(x)`` in the dtype and on the device of ``like`` ``(B, C, H, W)``: ``(B|1, 1, H, W)``
        with a depth map, else (``eps = 1`` only) ``alpha_bar_t`` broadcastable to ``like``."""
        timesteps = torch.as_tensor(timesteps, device=self.alphas_cumprod.device)
        alpha_bar = unsqueeze_right(self.alphas_cumprod[timesteps], like.ndim).to(like)
        if depth is None:
            if self.bmap.enabled:
                raise InputError(f"the B-map forward process (eps {self.bmap.eps}) needs the depth map of the samples")
            return alpha_bar
        return alpha_bar * self.bmap.cumulative(depth, timesteps).to(like)

    def _alpha_beta(self, timestep: int, depth: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-step ``(alpha_t B_t(x), 1 - alpha_t B_t(x))``; ``beta`` written as ``beta_t + alpha_t (1 - B_t)``
        with ``1 - B_t = d c_t / (1 + B_t)``, exact where ``B_t`` is 1."""
        alpha, beta = self.alphas[timestep].to(like), self.betas[timestep].to(like)
        if depth is None:
            return alpha, beta
        bmap = self.bmap.step(depth, timestep)
        loss = (depth.double() * self.bmap.attenuation[timestep] / (1.0 + bmap)).to(like)
        return alpha * bmap.to(like), beta + alpha * loss

    def _original(self, model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor) -> torch.Tensor:
        """Predicted ``x_0`` from the network's output at ``alpha_bar`` (per pixel), clipped where ``clip_sample``."""
        if self.prediction_type == DDPMPredictionType.V_PREDICTION:
            original = alpha_prod_t**0.5 * sample - (1 - alpha_prod_t) ** 0.5 * model_output
        else:
            original = (sample - (1 - alpha_prod_t) ** (0.5) * model_output) / alpha_prod_t ** (0.5)
        low, high = self.clip_sample_values
        return torch.clamp(original, low, high) if self.clip_sample else original

    def _noise(self, model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor) -> torch.Tensor:
        """Predicted noise from the network's output at ``alpha_bar`` (per pixel)."""
        if self.prediction_type == DDPMPredictionType.V_PREDICTION:
            return alpha_prod_t**0.5 * model_output + (1 - alpha_prod_t) ** 0.5 * sample
        return model_output

    def get_velocity(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, depth: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``v = sqrt(alpha_bar_t B_bar_t) eps - sqrt(1 - alpha_bar_t B_bar_t) x_0`` per pixel: the target of a
        network that predicts velocity, for clean ``sample`` and ``noise`` ``(B, C, H, W)``, ``timesteps`` ``(B,)``
        and ``depth`` as :meth:`add_noise` takes them."""
        alpha_bar = self._alpha_bar(timesteps.to(self.alphas_cumprod.device), depth, sample)
        return alpha_bar**0.5 * noise - (1 - alpha_bar) ** 0.5 * sample

    def prediction_target(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, depth: torch.Tensor | None = None
    ) -> torch.Tensor:
        """What the network is trained to output for clean ``sample`` noised with ``noise`` to ``timesteps``: the
        noise itself or (velocity prediction) :meth:`get_velocity`; arguments as :meth:`get_velocity` takes them."""
        if self.prediction_type == DDPMPredictionType.V_PREDICTION:
            return self.get_velocity(sample, noise, timesteps, depth)
        return noise

    def add_noise(
        self,
        original_samples: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        depth: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar_t B_bar_t) x_0 + sqrt(1 - alpha_bar_t B_bar_t) eps`` per pixel.

        Args:
            original_samples, noise: ``(B, C, H, W)``.
            timesteps: ``(B,)`` int, one step per sample.
            depth: ``(B|1, 1, H, W)`` normalised depth in [0, 1] (optional only with ``eps = 1``).
        """
        alpha_bar = self._alpha_bar(timesteps.to(self.alphas_cumprod.device), depth, original_samples)
        return alpha_bar**0.5 * original_samples + (1 - alpha_bar) ** 0.5 * noise


class BMapDDPMScheduler(_BMapMixin, DDPMScheduler):
    """DDPM (Ho et al. 2020) with the B-map forward process.

    Args are those of MONAI's ``DDPMScheduler`` (noise or velocity prediction and fixed variances only), plus
    ``bmap_eps``: the B-map floor (1 turns B-maps off).
    """

    def __init__(self, *args, bmap_eps: float = DEFAULT_EPS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.variance_type not in (DDPMVarianceType.FIXED_SMALL, DDPMVarianceType.FIXED_LARGE):
            raise InputError(f"variance_type {self.variance_type!r} is not supported; use fixed_small or fixed_large")
        self._init_bmap(bmap_eps)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        depth: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step from ``timestep`` to the previous timestep of the sampling schedule ``s`` with the
        per-pixel posterior ``q(x_s | x_t, x_0)`` (Ho et al., eqs. 6-7 and 15).

        MONAI's step takes the posterior of ``t - 1`` whatever the schedule's stride; here, with fewer
        steps than ``T``, ``alpha`` and ``beta`` of the step are ``alpha_bar_t / alpha_bar_s`` and one
        minus it (per pixel), so DDPM with 25-100 steps samples the right process. With all ``T`` steps
        both are the same.

        Returns:
            (the sample at the previous timestep, predicted ``x_0``), both ``(B, C, H, W)``.
        """
        previous_timestep = self.previous_timestep(timestep)
        alpha_prod_t = self._alpha_bar(timestep, depth, sample)
        if previous_timestep >= 0:
            alpha_prod_t_prev = self._alpha_bar(previous_timestep, depth, sample)
        else:
            alpha_prod_t_prev = torch.ones_like(sample)
        if previous_timestep == timestep - 1:
            alpha_t, beta_t = self._alpha_beta(timestep, depth, sample)
        else:
            alpha_t = alpha_prod_t / alpha_prod_t_prev
            beta_t = 1 - alpha_t
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev

        original = self._original(model_output, sample, alpha_prod_t)
        original_coefficient = (alpha_prod_t_prev ** (0.5) * beta_t) / beta_prod_t
        current_coefficient = alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
        previous = original_coefficient * original + current_coefficient * sample

        if timestep > 0:
            noise = torch.randn(
                model_output.size(),
                dtype=model_output.dtype,
                layout=model_output.layout,
                generator=generator,
                device=model_output.device,
            )
            if self.variance_type == DDPMVarianceType.FIXED_SMALL:
                variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * beta_t, min=1e-20)
            else:
                variance = beta_t
            previous = previous + (variance**0.5) * noise
        return previous, original


class BMapDDIMScheduler(_BMapMixin, DDIMScheduler):
    """DDIM (Song et al. 2021) with the B-map forward process.

    Args are those of MONAI's ``DDIMScheduler`` (noise or velocity prediction), plus ``bmap_eps``: the B-map
    floor (1 turns B-maps off).
    """

    def __init__(self, *args, bmap_eps: float = DEFAULT_EPS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_bmap(bmap_eps)
        self._final_is_one = bool(self.final_alpha_cumprod == 1.0)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        depth: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step from ``timestep`` to the previous timestep of the sampling schedule (Song et al., eqs. 12
        and 16; after the last one, to ``alpha_bar = 1`` with ``set_alpha_to_one``, else to ``alpha_bar_0``).

        Deterministic DDIM (``eta = 0``) carries the predicted noise from step to step: where a network
        under-estimates the noise of nearly clean images, that shortfall stays in the sample as grain, which
        more steps make worse. DDPM (and ``eta = 1``) draws the noise afresh at each step and does not keep it.

        Returns:
            (the sample at the previous step, predicted ``x_0``), both ``(B, C, H, W)``.
        """
        previous_timestep = self.previous_timestep(timestep)
        alpha_prod_t = self._alpha_bar(timestep, depth, sample)
        if previous_timestep >= 0:
            alpha_prod_t_prev = self._alpha_bar(previous_timestep, depth, sample)
        elif self._final_is_one:
            alpha_prod_t_prev = torch.ones_like(sample)
        else:
            alpha_prod_t_prev = self._alpha_bar(0, depth, sample)

        original = self._original(model_output, sample, alpha_prod_t)
        noise = self._noise(model_output, sample, alpha_prod_t)
        beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
        variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = eta * variance**0.5
        direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * noise
        previous = alpha_prod_t_prev**0.5 * original + direction

        if eta > 0:
            fresh = torch.randn(
                model_output.shape, dtype=model_output.dtype, generator=generator, device=model_output.device
            )
            previous = previous + variance**0.5 * eta * fresh
        return previous, original


def scheduler_for(spec: DiffusionInference, sampler: str) -> BMapDDPMScheduler | BMapDDIMScheduler:
    """The ``"ddpm"`` or ``"ddim"`` scheduler of a diffusion model's inference section: its training schedule
    and B-map settings (``eps`` 1 where B-maps are off), its prediction type, predicted ``x_0`` clipped to
    [-1, 1]."""
    schedulers = {"ddpm": BMapDDPMScheduler, "ddim": BMapDDIMScheduler}
    if sampler not in schedulers:
        raise InputError(f"unknown sampler {sampler!r}; use one of {sorted(schedulers)}")
    schedule = spec.schedule
    return schedulers[sampler](
        num_train_timesteps=schedule.num_train_timesteps,
        schedule=schedule.name,
        beta_start=schedule.beta_start,
        beta_end=schedule.beta_end,
        bmap_eps=spec.bmap.eps if spec.bmap.enabled else 1.0,
        prediction_type=spec.prediction_type,
    )
