"""The headless trainer on its demonstration task (learning a known translation).

Checks behaviour against truth: the loss falls and the validation error beats the no-motion
predictor; two gloo processes under torchrun reproduce the single-process run; a run killed
mid-way resumes to exactly the figures of an uninterrupted run; the exported bundle gives the
trained network's outputs on every backend.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from deepultrasound.cli import main as cli_main
from deepultrasound.errors import ConfigError, FileFormatError
from deepultrasound.runtime import create_predictor, load_bundle
from deepultrasound.training import Trainer, load_config, parse_config
from deepultrasound.training.config import merge_config
from deepultrasound.training.tasks.translation import TranslationPairs, TranslationTask, translate

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "task": "translation",
    "task_args": {"image_size": 16, "max_shift": 2.0, "train_samples": 1024, "val_samples": 32, "channels": [8, 16]},
    "seed": 3,
    "batch_size": 16,
    "stages": [{"name": "main", "epochs": 4}],
    "optimizers": {"main": {"name": "adam", "lr": 0.001}},
    "model_update_freq": 1,
    "validation_freq": 2,
}


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def subprocess_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DEEPULTRASOUND_DEVICE": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted single-process run of the tiny config (shared by several tests)."""
    out = tmp_path_factory.mktemp("reference")
    result = Trainer(parse_config(TINY), output_dir=out, progress=False, device="cpu").run()
    return out, result


# -- configuration --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, message",
    [
        ({"epochz": 3}, "unknown key 'epochz'"),
        (
            {"optimizers": {"main": {"name": "adam", "lr": 0.1, "momentun": 0.9}}},
            "unknown key 'optimizers.main.momentun'",
        ),
        ({"batch_size": 0}, "'batch_size'"),
        ({"stages": []}, "'stages'"),
        ({"stages": [{"name": "a", "epochs": 1}, {"name": "a", "epochs": 1}]}, "stage names must be unique"),
    ],
)
def test_config_errors_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_config({**TINY, **change})


def test_task_args_and_task_name_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="task_args.image_sise: unknown key"):
        Trainer(parse_config({**TINY, "task_args": {"image_sise": 16}}), output_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown task 'translate'; known tasks: .*translation"):
        Trainer(parse_config({**TINY, "task": "translate"}), output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"stage.*|task_args.max_shift"):
        Trainer(parse_config({**TINY, "stages": [{"epochs": 1, "task_args": {"max_shift": -1}}]}), output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"lacks \['main'\]"):
        Trainer(parse_config({**TINY, "optimizers": {"generator": {}}}), output_dir=tmp_path, progress=False).run()


def test_config_files_yaml_json_and_bad_files(tmp_path):
    yaml_path = write_config(tmp_path / "c.yaml", TINY)
    json_path = tmp_path / "c.json"
    json_path.write_text(json.dumps(TINY))
    assert load_config(yaml_path) == load_config(json_path)
    assert load_config(yaml_path, {"seed": 9}).seed == 9
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(tmp_path / "empty.yaml")
    (tmp_path / "broken.yaml").write_text("task: [unclosed")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(FileFormatError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_a_config_builds_on_its_base_merging_mappings_and_replacing_lists(tmp_path):
    base = {**TINY, "task_args": {**TINY["task_args"], "val_samples": 16}, "ema_decay": 0.99}
    write_config(tmp_path / "base.yaml", base)
    (tmp_path / "variants").mkdir()
    change = {
        "base": "../base.yaml",
        "task_args": {"max_shift": 1.0},
        "stages": [{"name": "only", "epochs": 1}],
        "ema_decay": None,
        "output_dir": "runs/variant",
    }
    variant = load_config(write_config(tmp_path / "variants" / "variant.yaml", change))
    expected = {
        **base,
        "task_args": {**base["task_args"], "max_shift": 1.0},
        "stages": [{"name": "only", "epochs": 1}],
        "output_dir": "runs/variant",
    }
    del expected["ema_decay"]  # null removes the base's key: the default applies
    assert variant == parse_config(expected)
    assert variant.ema_decay == parse_config(TINY).ema_decay != load_config(tmp_path / "base.yaml").ema_decay
    assert merge_config({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2]}, "d": 3}) == {"a": {"b": 1, "c": [2]}, "d": 3}


def test_config_bases_that_are_missing_cyclic_or_not_paths_are_refused(tmp_path):
    write_config(tmp_path / "orphan.yaml", {"base": "gone.yaml", "seed": 1})
    with pytest.raises(FileFormatError, match=r"gone.yaml \(the base of .*orphan.yaml\)"):
        load_config(tmp_path / "orphan.yaml")
    write_config(tmp_path / "a.yaml", {"base": "b.yaml"})
    write_config(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(tmp_path / "a.yaml")
    write_config(tmp_path / "listed.yaml", {"base": ["a.yaml"]})
    with pytest.raises(ConfigError, match="base must be a path"):
        load_config(tmp_path / "listed.yaml")


# -- the task's data is what it says --------------------------------------------------------------
def test_translate_matches_the_analytic_shift():
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(40.0), indexing="ij")

    def image(y, x):  # smooth: bilinear interpolation is nearly exact
        return torch.sin(0.21 * x + 0.3) * torch.cos(0.17 * y)

    shift = torch.tensor([1.6, -2.3])  # (lateral, axial) pixels
    moved = translate(image(rows, cols)[None, None], shift)[0, 0]
    inner = (slice(4, -4), slice(4, -4))
    expected = image(rows - shift[1], cols - shift[0])
    assert (moved - expected)[inner].abs().max() < 0.02


def test_translation_pairs_hold_the_known_shift():
    args = TranslationTask.parse_args({"image_size": 24, "max_shift": 3.0})
    data = TranslationPairs(args, seed=0, split="train", size=4)
    sample = data[2]
    assert torch.equal(sample["pair"], data[2]["pair"]), "samples must be a function of their index"
    fixed, moving = sample["pair"]
    back = translate(moving[None, None], -sample["shift"])[0, 0]  # undo the known shift

    def ncc(a, b):
        inner = (slice(4, -4), slice(4, -4))
        a, b = a[inner] - a[inner].mean(), b[inner] - b[inner].mean()
        return float((a * b).sum() / (a.norm() * b.norm()))

    assert ncc(back, fixed) > 0.9
    assert ncc(back, fixed) > ncc(moving, fixed) + 0.2
    assert not torch.equal(data[0]["shift"], data[1]["shift"])


# -- training, export ---------------------------------------------------------------------------
def test_single_process_run_learns_and_exports(reference_run):
    out, result = reference_run
    rows = read_metrics(out)
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2, 3]
    losses = [float(row["train/mse"]) for row in rows]
    assert losses[-1] < 0.5 * losses[0]
    assert result.validation["val/endpoint_error_px"] < 0.8 * result.validation["val/endpoint_error_zero_px"]
    assert (out / "tensorboard").is_dir() and (out / "config.yaml").is_file()

    bundle = load_bundle(result.bundle)
    assert bundle.manifest.task == "translation"
    assert bundle.manifest.metrics["val/endpoint_error_px"] == pytest.approx(result.validation["val/endpoint_error_px"])
    pair = TranslationPairs(TranslationTask.parse_args(TINY["task_args"]), seed=3, split="val", size=4)
    batch = torch.stack([pair[i]["pair"] for i in range(4)]).numpy()
    outputs = {
        backend: create_predictor(bundle, backend=backend).predict(batch)[0]
        for backend in ("torch", "torchscript", "onnxruntime")
    }
    for backend in ("torchscript", "onnxruntime"):
        np.testing.assert_allclose(outputs[backend], outputs["torch"], atol=1e-4, err_msg=backend)


def test_export_command_rebuilds_the_bundle_from_a_checkpoint(reference_run, tmp_path):
    out, result = reference_run
    code = cli_main(["export", str(out / "checkpoints" / "checkpoint_last.pt"), "-o", str(tmp_path / "b")])
    assert code == 0
    exported = create_predictor(tmp_path / "b").predict(np.zeros((1, 2, 16, 16), np.float32))[0]
    trained = create_predictor(result.bundle).predict(np.zeros((1, 2, 16, 16), np.float32))[0]
    np.testing.assert_array_equal(exported, trained)


def test_resume_refuses_a_different_config(reference_run):
    out, _ = reference_run
    with pytest.raises(ConfigError, match="different config"):
        Trainer(parse_config({**TINY, "seed": 4}), output_dir=out, progress=False, device="cpu").run()


def test_kept_checkpoints_resume_with_other_cadences_to_the_same_model(tmp_path):
    steps = {k: v for k, v in TINY.items() if k != "model_update_freq"}
    steps.update(stages=[{"name": "main", "steps": 8}], checkpoint_every_steps=2, keep_checkpoint_every_steps=4)
    whole = Trainer(parse_config(steps), output_dir=tmp_path / "whole", progress=False, device="cpu").run()
    kept = sorted(path.name for path in (tmp_path / "whole" / "checkpoints").glob("checkpoint_step*.pt"))
    assert kept == ["checkpoint_step000004.pt", "checkpoint_step000008.pt"]

    resumed_checkpoints = tmp_path / "resumed" / "checkpoints"
    resumed_checkpoints.mkdir(parents=True)
    shutil.copy(tmp_path / "whole" / "checkpoints" / kept[0], resumed_checkpoints / "checkpoint_last.pt")
    cadences = {**steps, "checkpoint_every_steps": 4, "keep_checkpoint_every_steps": None, "log_every_steps": 1}
    resumed = Trainer(parse_config(cadences), output_dir=tmp_path / "resumed", progress=False, device="cpu").run()
    assert resumed.resumed_from_step == 4
    assert resumed.validation["val/endpoint_error_px"] == pytest.approx(
        whole.validation["val/endpoint_error_px"], rel=1e-5
    )
    with pytest.raises(ConfigError, match="multiple of checkpoint_every_steps"):
        parse_config({**steps, "keep_checkpoint_every_steps": 3})


# -- torchrun (DDP, gloo) -----------------------------------------------------------------------------
def test_torchrun_two_processes_match_single_process(tmp_path):
    # float64: one process and two train the same model to rounding, so any difference in the
    # data split or gradient averaging shows (float32 runs differ by ~1e-3 through rounding alone)
    data = {**TINY, "precision": "float64"}
    single = Trainer(parse_config(data), output_dir=tmp_path / "single", progress=False, device="cpu").run()
    config = write_config(tmp_path / "tiny.yaml", data)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "deepultrasound",
        "train",
        str(config),
        "-o",
        str(tmp_path / "ddp"),
        "--no-progress",
        "--device",
        "cpu",
    ]
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    for key, expected in {**single.train_losses, **single.validation}.items():
        assert figures[key] == pytest.approx(expected, rel=1e-6), key


# -- kill and resume -------------------------------------------------------------------------------------
def test_killed_run_resumes_to_the_uninterrupted_result(reference_run, tmp_path):
    _, single = reference_run
    config = write_config(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "deepultrasound",
        "train",
        str(config),
        "-o",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = out / "checkpoints" / "checkpoint_last.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    done_epochs = len(read_metrics(out))
    assert 1 <= done_epochs < TINY["stages"][0]["epochs"]

    resumed = Trainer(load_config(config), output_dir=out, progress=False, device="cpu").run()
    assert resumed.resumed_from_epoch == done_epochs
    assert [int(row["epoch"]) for row in read_metrics(out)] == [0, 1, 2, 3]
    assert resumed.train_losses["train/mse"] == pytest.approx(single.train_losses["train/mse"], rel=1e-5)
    assert resumed.validation["val/endpoint_error_px"] == pytest.approx(
        single.validation["val/endpoint_error_px"], rel=1e-5
    )


def test_a_diverging_run_stops_with_a_clear_error(tmp_path):
    from deepultrasound.training.trainer import TrainingDivergedError

    config = parse_config({**TINY, "optimizers": {"main": {"name": "sgd", "lr": 1e6}}})
    with pytest.raises(
        TrainingDivergedError, match=r"train/mse became non-finite in epoch 1 \(by step 64\); lower the learning rate"
    ):
        Trainer(config, output_dir=tmp_path, progress=False, device="cpu").run()
    assert not (tmp_path / "checkpoints" / "checkpoint_last.pt").exists()


def test_float64_runs_train_and_export_float32_bundles(tmp_path):
    config = parse_config({**TINY, "precision": "float64", "stages": [{"epochs": 1}], "validation_freq": 1})
    result = Trainer(config, output_dir=tmp_path, progress=False, device="cpu").run()
    assert math.isfinite(result.train_losses["train/mse"])
    predicted = create_predictor(result.bundle, backend="onnxruntime").predict(np.zeros((2, 2, 16, 16), np.float32))[0]
    assert predicted.dtype == np.float32 and predicted.shape == (2, 2)
