"""The ``superres`` task end to end on tiny shapes: train a few steps on simulated and real-like
images, validate (metrics per source and method, the low | cubic | ours | truth panel) and export a
bundle whose inference section states the axis, factor and phase.

Truth: the cubic figures the run logs equal PSNR/SSIM recomputed from the validation set; the
panel holds the truth as its last quarter.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepultrasound.errors import ConfigError
from deepultrasound.losses import psnr
from deepultrasound.runtime import load_bundle
from deepultrasound.superres.data import is_held_out
from deepultrasound.superres.degradation import upsample_lines
from deepultrasound.training import Trainer, load_config, parse_config
from deepultrasound.training.task import get_task


@pytest.fixture(scope="module")
def busi_like(tmp_path_factory):
    """Eight 8-bit PNGs named so that both the training and the held-out split get some."""
    folder = tmp_path_factory.mktemp("busi")
    names = [f"image_{i:03d}.png" for i in range(40)]
    chosen = [n for n in names if is_held_out(n)][:3] + [n for n in names if not is_held_out(n)][:5]
    rng = np.random.default_rng(0)
    for name in chosen:
        Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(folder / name)
    return folder


def config(folder, **task_args):
    return {
        "task": "superres",
        "task_args": {
            "factor": 4,
            "channels": 4,
            "blocks": 1,
            "blur_sigma_lines": 0.5,
            "patch_size": (16, 16),
            "val_patch_size": (16, 16),
            "simulated_shape": (24, 24),
            "simulated_images": 2,
            "real_images": 5,
            "val_simulated_images": 2,
            "val_real_images": 3,
            "samples_per_epoch": 8,
            "data_folder": str(folder),
            **task_args,
        },
        "seed": 1,
        "batch_size": 4,
        "stages": [{"steps": 3}],
        "optimizers": {"main": {"name": "adam", "lr": 1e-3}},
        "validation_every_steps": 3,
        "log_every_steps": 3,
        "bundle": {"name": "tiny-superres"},
    }


def test_a_tiny_run_trains_validates_with_images_and_exports(busi_like, tmp_path):
    trainer = Trainer(parse_config(config(busi_like)), output_dir=tmp_path, progress=False, device="cpu")
    result = trainer.run()
    with (tmp_path / "metrics.csv").open(newline="") as stream:
        row = list(csv.DictReader(stream))[-1]
    assert float(row["train/l1"]) > 0
    for source in ("simulated", "real"):
        for metric in ("psnr", "ssim"):
            for method in ("linear", "cubic", "ours"):
                assert np.isfinite(float(row[f"val/{source}_{metric}_{method}"])), (source, metric, method)

    # the logged cubic PSNR of the held-out real images, recomputed
    task = get_task("superres")(get_task("superres").parse_args(config(busi_like)["task_args"]), seed=1)
    _, val = task.build_datasets(task.args)
    real = [val[i] for i in range(len(val)) if int(val[i]["source"]) == 1]
    high = torch.stack([item["high"] for item in real])
    cubic = upsample_lines(torch.stack([item["low"] for item in real]), 4, "cubic").clamp(0, 1)
    assert float(row["val/real_psnr_cubic"]) == pytest.approx(float(psnr(cubic, high, 1.0).mean()), rel=1e-5)

    panel = np.asarray(Image.open(tmp_path / "images" / "3" / "real_low_cubic_ours_truth.png"))
    assert panel.shape == (16, 64)
    np.testing.assert_array_equal(panel[:, 48:], np.round(real[0]["high"][0].numpy() * 255).astype(np.uint8))

    bundle = load_bundle(result.bundle)
    inference = bundle.manifest.inference
    assert (inference.kind, inference.axis, inference.factor, inference.phase) == ("superres", "lateral", 4, 0)
    assert inference.blur_sigma_lines == (0.5, 0.5)  # the degradation the model learnt to undo travels with it
    assert bundle.manifest.task == "superres" and bundle.manifest.outputs[0].shape[-1] == "W*4"


def test_a_run_without_training_images_is_refused(busi_like):
    task_class = get_task("superres")
    task = task_class(task_class.parse_args({"simulated_images": 0, "real_images": 0}), seed=0)
    with pytest.raises(ConfigError, match="needs training images"):
        task.build_datasets(task.args)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_the_committed_configs_are_valid_and_blur_up_to_three_quarters_of_a_coarse_line(factor):
    path = Path(__file__).resolve().parents[1] / "deepultrasound" / "configs" / f"superres_srresnet_x{factor}.yaml"
    loaded = load_config(path)
    args = get_task(loaded.task).parse_args(loaded.task_args)
    assert (loaded.task, args.factor, args.loss) == ("superres", factor, "mse")
    assert args.blur_sigma_lines == (0.0, 0.75 * factor)
