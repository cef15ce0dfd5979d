"""The trainer counted in steps, on a toy diffusion-like denoiser: step-based stages and cadences,
learning-rate schedules (warm-up then cosine), EMA of parameters and BatchNorm statistics,
validation with frozen networks and sample images, gradient accumulation, mixed precision, a run
stopped part-way through an epoch that resumes to bit-identical weights, and the export of a
bundle with an integer timestep input.

Truth: the analytic schedule; the EMA recurrence over the recorded BatchNorm statistics; the
uninterrupted run's weights; a run without accumulation (float64); the exported PNG equals the
image the validation step returned.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping

import numpy as np
import pytest
import torch
from PIL import Image

from deepultrasound.errors import ConfigError
from deepultrasound.runtime import load_bundle
from deepultrasound.runtime.parity import check_parity
from deepultrasound.training import StepContext, Trainer, parse_config, register_task
from deepultrasound.training.checkpoint import load_checkpoint
from deepultrasound.training.export import export_checkpoint
from deepultrasound.training.tasks.denoising import Blobs, ToyDenoisingTask


class Interrupted(Exception):
    """Raised from a training step to stop a run as a kill would."""


@register_task
class RecordingDenoisingTask(ToyDenoisingTask):
    """The toy denoiser that can stop at a step and records the online BatchNorm statistics after each."""

    name = "test-toy-denoising"
    interrupt_at_step: int | None = None  # raise Interrupted at the start of this step
    running_means: list[torch.Tensor] = []  # BatchNorm running_mean after each training step

    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        if ctx.step == type(self).interrupt_at_step:
            raise Interrupted(ctx.step)
        losses = super().training_step(batch, ctx)
        type(self).running_means.append(ctx.networks["denoiser"].norm.running_mean.detach().clone())
        return losses


LR = 0.01
CONFIG = {
    "task": "test-toy-denoising",
    "seed": 5,
    "batch_size": 8,  # 8 steps per epoch: 50 steps end part-way through the 7th epoch
    "stages": [{"name": "main", "steps": 50}],
    "optimizers": {"main": {"name": "adam", "lr": LR}},
    "scheduler": {"name": "cosine", "warmup_steps": 5, "warmup_start_scale": 0.1, "min_lr_scale": 0.05},
    "ema_decay": 0.9,
    "validation_every_steps": 20,
    "checkpoint_every_steps": 10,
    "log_every_steps": 5,
}


def run(tmp_path, **changes) -> Trainer:
    trainer = Trainer(parse_config({**CONFIG, **changes}), output_dir=tmp_path, progress=False, device="cpu")
    trainer.result = trainer.run()
    return trainer


def rows(trainer: Trainer) -> list[dict[str, str]]:
    with (trainer.output_dir / "metrics.csv").open(newline="") as stream:
        return list(csv.DictReader(stream))


def assert_same_weights(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run (records the online BatchNorm running_mean after each step)."""
    RecordingDenoisingTask.running_means = []
    RecordingDenoisingTask.interrupt_at_step = None
    trainer = run(tmp_path_factory.mktemp("reference"))
    trainer.running_means = list(RecordingDenoisingTask.running_means)
    return trainer


# -- acceptance: stop part-way through an epoch, resume to the same weights, export ----------------
def test_a_run_stopped_mid_epoch_resumes_to_identical_weights_and_exports(reference, tmp_path):
    RecordingDenoisingTask.interrupt_at_step = 27
    try:
        with pytest.raises(Interrupted):
            run(tmp_path)
    finally:
        RecordingDenoisingTask.interrupt_at_step = None
    saved = load_checkpoint(tmp_path / "checkpoints" / "checkpoint_last.pt")
    assert saved["position"] == {"step": 20, "stage": 0, "stage_step": 20, "epoch": 2, "batch": 4}

    resumed = run(tmp_path)
    assert resumed.result.resumed_from_step == 20 and resumed.result.steps_done == 50
    assert_same_weights(resumed.networks["denoiser"].state_dict(), reference.networks["denoiser"].state_dict())
    assert_same_weights(resumed.ema["denoiser"].state_dict(), reference.ema["denoiser"].state_dict())
    assert_same_weights(
        resumed.optimisation.optimizers["main"].state_dict()["state"][0],
        reference.optimisation.optimizers["main"].state_dict()["state"][0],
    )
    assert [row["step"] for row in rows(resumed)] == [row["step"] for row in rows(reference)]
    assert resumed.result.validation == reference.result.validation

    # the bundle: image (B, 1, H, W) float32 and timestep (B,) int64, the same on every backend
    bundle = load_bundle(resumed.result.bundle)
    assert [(spec.name, spec.dtype) for spec in bundle.manifest.inputs] == [("image", "float32"), ("timestep", "int64")]
    report = check_parity(bundle)
    assert report.ok, str(report)


# -- schedules and cadences ---------------------------------------------------------------------------
def test_learning_rate_warms_up_then_follows_the_cosine(reference):
    logged = {int(row["step"]): float(row["lr/main"]) for row in rows(reference)}
    assert sorted(logged) == list(range(5, 51, 5))

    def expected(step: int) -> float:  # the rate of the next step, after `step` steps
        if step < 5:
            return LR * (0.1 + 0.9 * step / 5)
        return LR * (0.05 + 0.95 * (1 + math.cos(math.pi * (step - 5) / 45)) / 2)

    for step, rate in logged.items():
        assert rate == pytest.approx(expected(step), rel=1e-6), step


def test_validation_runs_every_n_steps_and_writes_its_images(reference):
    validated = [int(row["step"]) for row in rows(reference) if row["val/noise_mse"]]
    assert validated == [20, 40, 50]  # every 20 steps, and after the last
    assert (reference.output_dir / "checkpoints" / "checkpoint_last.pt").is_file()
    clean = Blobs(CONFIG["seed"], "val", 8)[0]["image"][0].numpy()
    for step in validated:
        png = np.asarray(Image.open(reference.output_dir / "images" / str(step) / "clean_0.png"))
        np.testing.assert_array_equal(png, np.round(clean * 255).astype(np.uint8))
        assert (reference.output_dir / "images" / str(step) / "noisy_0.png").is_file()
    assert float(rows(reference)[-1]["val/blurred_mse"]) > 0  # the frozen network reached validation


# -- EMA ------------------------------------------------------------------------------------------------
def test_ema_averages_batchnorm_statistics(reference):
    decay = CONFIG["ema_decay"]
    expected = reference.running_means[0]
    for running_mean in reference.running_means[1:]:
        expected = decay * expected + (1 - decay) * running_mean
    online = reference.networks["denoiser"].norm.running_mean
    averaged = reference.ema["denoiser"].module.norm.running_mean
    torch.testing.assert_close(averaged, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(averaged, online, atol=1e-3), "the EMA statistics lag the online ones"


@pytest.mark.parametrize("export_ema", [True, False])
def test_export_ema_chooses_the_exported_weights(tmp_path, export_ema):
    trainer = run(tmp_path, stages=[{"steps": 4}], export_ema=export_ema, scheduler={"name": "constant"})
    exported = load_bundle(trainer.result.bundle).build_torch_model().state_dict()
    source = trainer.ema["denoiser"].module if export_ema else trainer.networks["denoiser"]
    assert_same_weights(exported, source.state_dict())
    # `deepultrasound export` of the last checkpoint makes the same choice
    again = load_bundle(export_checkpoint(trainer.checkpoint_path, tmp_path / "exported"))
    assert_same_weights(again.build_torch_model().state_dict(), source.state_dict())
    # ... and its manifest has the figures the run logged by that step (read back from metrics.csv)
    logged = {key: value for key, value in load_bundle(trainer.result.bundle).manifest.metrics.items() if "/" in key}
    assert logged.keys() >= {"train/mse", "val/blurred_mse"}
    assert {key: again.manifest.metrics[key] for key in logged} == logged
    assert again.manifest.metrics["checkpoint_step"] == 4


# -- accumulation, mixed precision ------------------------------------------------------------------------
TRANSLATION = {
    "task": "translation",
    "task_args": {"image_size": 16, "max_shift": 2.0, "train_samples": 64, "val_samples": 8, "channels": [4, 8]},
    "batch_size": 16,
    "stages": [{"steps": 3}],
    "precision": "float64",
    "grad_clip_norm": 1.0,
}


def test_accumulated_micro_batches_update_as_the_whole_batch(tmp_path):
    # the regressor normalises each sample on its own, so two half-batches give the gradient of the batch
    whole = Trainer(parse_config(TRANSLATION), output_dir=tmp_path / "whole", progress=False, device="cpu")
    whole.run()
    halves_config = parse_config({**TRANSLATION, "accumulate_steps": 2})
    halves = Trainer(halves_config, output_dir=tmp_path / "halves", progress=False, device="cpu")
    halves.run()
    a, b = whole.networks["regressor"].state_dict(), halves.networks["regressor"].state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-9, atol=1e-12, msg=key)
    steps = [int(run.optimisation.optimizers["main"].state_dict()["state"][0]["step"]) for run in (whole, halves)]
    assert steps == [3, 3]  # one update per batch, not per micro-batch


def test_accumulation_refuses_several_updates_per_micro_batch(tmp_path):
    with pytest.raises(ConfigError, match="called 'main' again"):
        run(tmp_path, task_args={"updates": 2}, accumulate_steps=2, stages=[{"steps": 1}], scheduler={})


def test_bf16_autocast_trains_on_the_cpu(tmp_path):
    trainer = run(
        tmp_path, stages=[{"steps": 3}], amp="bf16", scheduler={}, log_every_steps=1, validation_every_steps=3
    )
    assert math.isfinite(trainer.result.train_losses["train/mse"])
    assert math.isfinite(trainer.result.validation["val/noise_mse"])


def test_fp16_is_refused_without_cuda(tmp_path):
    with pytest.raises(ConfigError, match="amp fp16 needs a CUDA device"):
        run(tmp_path, amp="fp16")


# -- configuration --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, message",
    [
        ({"stages": [{"epochs": 1, "steps": 5}]}, "exactly one of 'epochs' or 'steps'"),
        ({"stages": [{"name": "a"}]}, "stage 'a' needs exactly one"),
        ({"validation_freq": 2}, "give 'validation_freq' \\(epochs\\) or 'validation_every_steps', not both"),
        ({"scheduler": {"name": "exponential"}}, "'scheduler.name'"),
        ({"scheduler": {"name": "cosine", "warmup_step": 5}}, "unknown key 'scheduler.warmup_step'"),
        ({"optimizers": {"main": {"scheduler": {"name": "step", "gama": 0.5}}}}, "unknown key 'optimizers.main.sch"),
        ({"amp": "fp8"}, "'amp'"),
        ({"amp": "bf16", "precision": "float64"}, "amp 'bf16' needs precision float32"),
        ({"accumulate_steps": 0}, "'accumulate_steps'"),
    ],
)
def test_config_errors_name_the_setting(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({**CONFIG, **change})


def test_a_warm_up_longer_than_the_run_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="warmup_steps 60 leaves no step of the run \\(50 steps\\)"):
        run(tmp_path, scheduler={"name": "cosine", "warmup_steps": 60})
