"""``deepultrasound synth`` / ``synth-dataset`` and the engine behind them: model lookup, label maps, sampling.

Bundles are untrained semantic diffusion UNets (16 x 16, 20 training steps) exported through the
trainer's export path, one echo (sector probe, outside-the-fan class 4) and one linear-probe model.

Truth: the fan given to label maps without one is the echo simulator's (the training data's); a map
of twice the size in blocks resizes back exactly; the command's output is the engine's images resampled
onto the label grid, slice-major, with the label map's geometry; the dataset reads back through
:class:`~deepultrasound.io.camus.CamusDataset` and the trainer's CAMUS reader with the labels as given.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from deepultrasound.cli import main
from deepultrasound.errors import BundleError, InputError
from deepultrasound.io import CamusDataset, Image, read_image, write_image
from deepultrasound.registration.preprocessing import resize_frame
from deepultrasound.runtime import MODELS_ENVIRONMENT_VARIABLE, bundled_models_dir
from deepultrasound.simulation.echo_image import Sector
from deepultrasound.synthesis.bmaps import estimate_sector
from deepultrasound.synthesis.data import OUTSIDE_FAN, camus_pairs
from deepultrasound.synthesis.inference import (
    TRAINING_FAN_ANGLE,
    Synthesizer,
    installed_models,
    prepare_labels,
    resolve_model,
    training_fan,
)
from deepultrasound.training import parse_config
from deepultrasound.training.export import export_bundle
from deepultrasound.training.task import get_task

SIZE = 16
STEPS = "2"


def export_untrained(directory: Path, data: str, name: str) -> Path:
    """An untrained tiny semantic diffusion UNet for ``data`` (echo or linear), exported as the trainer does."""
    args = {
        "data": data,
        "image_size": SIZE,
        "num_train_timesteps": 20,
        "channels": [8, 16],
        "num_head_channels": 8,
        "norm_num_groups": 8,
        "spade_intermediate_channels": 8,
        "sampling_steps": 2,
    }
    task_class = get_task("us-diffusion")
    task = task_class(task_class.parse_args(args), seed=0)
    config = parse_config(
        {"task": "us-diffusion", "task_args": args, "stages": [{"steps": 1}], "bundle": {"name": name, "formats": []}}
    )
    torch.manual_seed(0)
    return export_bundle(task, task.build_networks(), config, {}, directory / name)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A folder of installed models: a linear-probe model first, then an echo model."""
    folder = tmp_path_factory.mktemp("models")
    export_untrained(folder, "linear", "a-linear")
    export_untrained(folder, "echo", "b-echo")
    return folder


@pytest.fixture(scope="module")
def echo(models) -> Synthesizer:
    return Synthesizer(models / "b-echo", device="cpu")


@pytest.fixture(scope="module")
def linear(models) -> Synthesizer:
    return Synthesizer(models / "a-linear", device="cpu")


def heart(shape: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    """A CAMUS-valued (0-3) uint8 label map with the LV, myocardium and atrium in the middle."""
    rows, cols = shape
    labels = np.zeros(shape, np.uint8)
    labels[rows // 4 : rows * 3 // 4, cols * 3 // 8 : cols * 5 // 8] = 2
    labels[rows // 4 + 1 : rows * 3 // 4, cols * 3 // 8 + 1 : cols * 5 // 8 - 1] = 1
    labels[rows * 3 // 4 : rows * 7 // 8, cols * 3 // 8 : cols * 5 // 8] = 3
    return labels


def only_models_in(monkeypatch, folder: str | Path) -> None:
    """Installed models are those of ``folder`` alone (not the package's shipped ones)."""
    monkeypatch.setattr("deepultrasound.runtime.bundle.bundled_models_dir", lambda: Path(folder) / "no-shipped-models")
    monkeypatch.setenv(MODELS_ENVIRONMENT_VARIABLE, str(folder))


# -- model lookup ----------------------------------------------------------------------------------


def test_installed_models_are_found_and_the_default_follows_the_probe(models, monkeypatch):
    only_models_in(monkeypatch, str(models))
    assert installed_models() == [(models / "a-linear", "a-linear"), (models / "b-echo", "b-echo")]
    assert resolve_model(None, None) == models / "b-echo"  # sector (echo) by default, though listed second
    assert resolve_model(None, "linear") == models / "a-linear"
    assert resolve_model("a-linear", "sector") == models / "a-linear"  # a named model wins; synth checks the probe
    with pytest.raises(BundleError, match="'nothing' is neither a bundle folder nor an installed synthesis model"):
        resolve_model("nothing", None)


@pytest.mark.parametrize(
    ("probe", "config"),
    [(None, "ussynth_echo_64.yaml"), ("sector", "ussynth_echo_64.yaml"), ("linear", "ussynth_linear_64.yaml")],
)
def test_a_missing_model_names_its_training_command(probe, config, tmp_path, monkeypatch):
    only_models_in(monkeypatch, str(tmp_path))
    with pytest.raises(BundleError, match=f"deepultrasound train deepultrasound/configs/{config}"):
        resolve_model(None, probe)


def test_bundles_of_other_tasks_are_refused():
    with pytest.raises(BundleError, match="is not a synthesis model"):
        Synthesizer(bundled_models_dir() / "usenet-fast-deepuse", device="cpu")


# -- label maps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [SIZE, 64])
def test_the_fan_given_to_maps_without_one_is_the_echo_simulators(size):
    fan = training_fan((size, size))
    assert np.array_equal(fan, Sector(size, TRAINING_FAN_ANGLE, 1, 1, size, size, size).fan_mask())
    assert math.degrees(TRAINING_FAN_ANGLE) == pytest.approx(67.5)
    estimated = estimate_sector(fan)  # what sampling estimates the B-maps' depth from
    assert estimated.apex == pytest.approx((-0.5, (size - 1) / 2), abs=0.05)
    assert estimated.angle == pytest.approx(TRAINING_FAN_ANGLE, abs=0.03) and estimated.radius == pytest.approx(
        size, abs=0.2
    )


def test_camus_values_get_the_training_fan_and_a_given_fan_is_kept(echo):
    labels = heart()
    prepared, notes = prepare_labels(labels, echo.spec)
    assert prepared.shape == (1, SIZE, SIZE) and prepared.dtype == np.int64
    assert np.array_equal(prepared[0], np.where(training_fan((SIZE, SIZE)), labels, OUTSIDE_FAN))
    assert len(notes) == 1 and "training data's fan" in notes[0]
    with_fan = np.where(np.arange(SIZE)[None, :] < 2, OUTSIDE_FAN, labels)
    kept, notes = prepare_labels(with_fan, echo.spec)
    assert np.array_equal(kept[0], with_fan) and notes == []


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            [7, 9],
            r"label values \[7, 9\] are unknown to the model, which knows 0 background, 1 lv_cavity, "
            r"2 myocardium, 3 left_atrium, 4 outside_fan",
        ),
        ([1.5], "whole numbers"),
    ],
)
def test_unknown_label_values_are_listed_with_the_known_ones(echo, values, message):
    labels = heart().astype(np.float32)
    labels[0, : len(values)] = values
    with pytest.raises(InputError, match=message):
        prepare_labels(labels, echo.spec)


def test_a_map_of_another_size_is_resized_with_a_note(echo):
    small = np.where(training_fan((SIZE, SIZE)), heart(), OUTSIDE_FAN)
    large = np.kron(small, np.ones((2, 2), small.dtype))  # each pixel a 2 x 2 block
    prepared, notes = prepare_labels(large, echo.spec)
    assert np.array_equal(prepared[0], small)
    assert notes == [
        "label maps of 32 x 32 pixels resized to the model's grid of 16 x 16 (the class covering most of each "
        "pixel, as the training pairs were)"
    ]


@pytest.mark.parametrize("fill", [0, OUTSIDE_FAN])
def test_background_only_maps_are_refused(echo, fill):
    labels = np.zeros((SIZE, SIZE), np.uint8)
    labels[:, :3] = fill
    with pytest.raises(InputError, match="the label map holds background only"):
        prepare_labels(labels, echo.spec)
    with pytest.raises(InputError, match=r"slices \[1\] of the label map hold background only"):
        prepare_labels(np.stack([heart(), labels]), echo.spec)


def test_a_volume_gives_one_map_per_slice(echo):
    volume = np.stack([heart(), np.roll(heart(), 2, axis=1), np.roll(heart(), -2, axis=0)])
    prepared, notes = prepare_labels(volume, echo.spec)
    assert prepared.shape == (3, SIZE, SIZE) and notes[0] == "3 slices, one image each"
    for item, labels in zip(prepared, volume):
        assert np.array_equal(item, prepare_labels(labels, echo.spec)[0][0])


def test_linear_models_take_their_classes_and_mark_no_fan(linear):
    labels = np.zeros((SIZE, SIZE), np.int16)
    labels[4:6] = 2
    labels[8:12, 6:10] = 5
    prepared, notes = prepare_labels(labels, linear.spec)
    assert np.array_equal(prepared[0], labels) and notes == []
    with pytest.raises(InputError, match=r"\[6\] are unknown .* 5 hyperechoic_lesion"):
        prepare_labels(np.where(labels == 5, 6, labels), linear.spec)


# -- sampling --------------------------------------------------------------------------------------


def test_images_are_seeded_bounded_and_black_outside_the_fan(echo):
    maps = np.repeat(prepare_labels(heart(), echo.spec)[0], 3, axis=0)
    images = echo(maps, steps=2, seed=3, batch=2)
    assert images.shape == (3, SIZE, SIZE) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.std() > 0
    assert np.array_equal(images, echo(maps, steps=2, seed=3, batch=2))
    assert not np.allclose(images, echo(maps, steps=2, seed=4, batch=2))
    assert not np.allclose(images[0], images[2])  # each chunk draws noise of its own
    assert (images[maps == OUTSIDE_FAN] == 0).all()
    with pytest.raises(InputError, match="on the model's grid"):
        echo(np.zeros((1, 8, 8), np.int64))
    with pytest.raises(InputError, match="steps must lie in 1..20"):
        echo(maps, steps=21)


# -- synth -----------------------------------------------------------------------------------------


def label_image(array: np.ndarray) -> Image:
    """``array`` on a grid with spacing, origin and a flipped direction of its own."""
    if array.ndim == 2:
        return Image(array, (0.3, 0.4), (1.0, -2.0), (-1.0, 0.0, 0.0, 1.0))
    return Image(array, (0.3, 0.4, 2.0), (1.0, -2.0, 5.0), (-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def synth(labels: Path, output: Path, models: Path, *options: str) -> int:
    return main(
        ["synth", str(labels), "-o", str(output), "--model", str(models / "b-echo")]
        + ["--steps", STEPS, "--device", "cpu", *options]
    )


def test_synth_writes_images_on_the_label_grid(models, echo, tmp_path, capsys):
    labels = label_image(heart((24, 20)))
    write_image(tmp_path / "labels.nii.gz", labels)
    assert synth(tmp_path / "labels.nii.gz", tmp_path / "a.nii.gz", models) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith(f"wrote {tmp_path / 'a.nii.gz'}: labels 24 x 20 -> images 24 x 20 float32")
    assert "model b-echo" in out[-1] and "ddpm 2 steps" in out[-1]  # the model's default sampler
    assert any("resized to the model's grid of 16 x 16" in line for line in out[:-1])
    image = read_image(tmp_path / "a.nii.gz")
    assert image.array.shape == (24, 20) and image.array.dtype == np.float32
    assert image.array.min() >= 0 and image.array.max() <= 1
    for got, want in (
        (image.spacing, labels.spacing),
        (image.origin, labels.origin),
        (image.direction, labels.direction),
    ):
        assert got == pytest.approx(want, abs=1e-6)
    expected = resize_frame(echo(prepare_labels(labels.array, echo.spec)[0], steps=2, seed=0)[0], (24, 20))
    assert np.allclose(image.array, expected.numpy(), atol=1e-6)

    assert synth(tmp_path / "labels.nii.gz", tmp_path / "b.nii.gz", models) == 0
    assert np.array_equal(read_image(tmp_path / "b.nii.gz").array, image.array)
    assert synth(tmp_path / "labels.nii.gz", tmp_path / "c.nii.gz", models, "--seed", "1") == 0
    assert not np.allclose(read_image(tmp_path / "c.nii.gz").array, image.array)


def test_synth_stacks_the_images_of_each_slice_slice_major(models, echo, tmp_path, capsys):
    volume = label_image(np.stack([heart(), np.roll(heart(), 3, axis=1)]))
    write_image(tmp_path / "volume.nrrd", volume)
    assert synth(tmp_path / "volume.nrrd", tmp_path / "out.nrrd", models, "--n", "2", "--seed", "5") == 0
    assert "labels 2 x 16 x 16 -> images 4 x 16 x 16" in capsys.readouterr().out.strip().splitlines()[-1]
    image = read_image(tmp_path / "out.nrrd")
    maps = np.repeat(prepare_labels(volume.array, echo.spec)[0], 2, axis=0)  # slice 0 twice, then slice 1
    assert np.allclose(image.array, echo(maps, steps=2, seed=5), atol=1e-6)
    assert image.spacing == volume.spacing and image.direction == volume.direction

    write_image(tmp_path / "one.mha", label_image(heart()))
    assert synth(tmp_path / "one.mha", tmp_path / "two.mha", models, "--n", "2") == 0
    two = read_image(tmp_path / "two.mha")
    assert two.array.shape == (2, SIZE, SIZE) and two.spacing == (0.3, 0.4, 1.0) and two.origin == (1.0, -2.0, 0.0)
    assert two.direction == (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    write_image(tmp_path / "single.mha", label_image(heart()[None]))  # one slice stored in 3D, as CAMUS .mhd
    assert synth(tmp_path / "single.mha", tmp_path / "single-out.mha", models) == 0
    assert read_image(tmp_path / "single-out.mha").array.shape == (SIZE, SIZE)


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda path: path.write_text("not an image"), "is corrupt or not a .nii.gz image"),
        (
            lambda path: write_image(path, Image(np.where(heart() == 3, 9, heart()).astype(np.uint8))),
            r"\[9\] are unknown",
        ),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(models, tmp_path, capsys, write, message):
    write(tmp_path / "labels.nii.gz")
    assert synth(tmp_path / "labels.nii.gz", tmp_path / "out" / "synthetic.nii.gz", models) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deepultrasound synth: error:")
    assert re.search(message, err[0])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_synth_without_an_installed_model_names_the_training_command(tmp_path, monkeypatch, capsys):
    only_models_in(monkeypatch, str(tmp_path / "none"))
    write_image(tmp_path / "labels.nii.gz", Image(heart()))
    assert main(["synth", str(tmp_path / "labels.nii.gz"), "-o", str(tmp_path / "out.nii.gz"), "--device", "cpu"]) == 2
    assert "deepultrasound train deepultrasound/configs/ussynth_echo_64.yaml" in capsys.readouterr().err
    assert not (tmp_path / "out.nii.gz").exists()


# -- synth-dataset ---------------------------------------------------------------------------------


def test_synth_dataset_writes_a_camus_folder_that_reads_back(models, tmp_path, capsys):
    source = tmp_path / "labels"
    given = {}
    for number in (1, 2):
        patient = f"patient{number:04d}"
        for view in ("2CH", "4CH"):
            for shift, phase in enumerate(("ED", "ES")):
                labels = np.roll(heart((24, 24)), shift + number, axis=1)
                given[patient, view, phase] = labels
                write_image(source / patient / f"{patient}_{view}_{phase}_gt.nii.gz", Image(labels))
                write_image(
                    source / patient / f"{patient}_{view}_{phase}.nii.gz", Image(np.full((24, 24), 9, np.uint8))
                )
    command = ["synth-dataset", str(source), "-o", str(tmp_path / "out"), "--n", "2", "--steps", STEPS]
    command += ["--model", str(models / "b-echo"), "--device", "cpu"]
    assert main(command) == 0
    assert (
        capsys.readouterr()
        .out.strip()
        .splitlines()[-1]
        .startswith(f"wrote 16 image and label pairs of 8 label maps to {tmp_path / 'out'} (0 maps already done)")
    )
    dataset = CamusDataset(tmp_path / "out")
    assert dataset.patients == ["patient00010", "patient00011", "patient00020", "patient00021"]
    assert (tmp_path / "out" / "patient00011" / "patient00011_4CH_ES_gt.nii.gz").is_file()
    for patient in dataset.patients:
        for (source_patient, view, phase), labels in given.items():
            if patient[:-1] == source_patient:
                image, read_labels = dataset.load(patient, view, phase)
                assert np.array_equal(read_labels.array, labels)
                assert image.array.shape == (24, 24) and image.array.dtype == np.uint8 and image.array.any()
    first, second = (
        dataset.load_image("patient00010", "2CH", "ED").array,
        dataset.load_image("patient00011", "2CH", "ED").array,
    )
    assert not np.array_equal(first, second)  # two samples of one label map
    pairs = camus_pairs(tmp_path / "out", dataset.patients, SIZE)  # the trainer reads it
    assert len(pairs) == 16 and pairs[0]["image"].shape == (1, SIZE, SIZE)

    written = {path: path.stat().st_mtime_ns for path in (tmp_path / "out").rglob("*.nii.gz")}
    assert main(command) == 0
    assert "wrote 0 image and label pairs of 0 label maps" in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "out").rglob("*.nii.gz")} == written


def test_synth_dataset_names_samples_of_other_files_by_their_stem(models, tmp_path, capsys):
    write_image(tmp_path / "maps" / "scan.mha", Image(heart()))
    command = ["synth-dataset", str(tmp_path / "maps"), "-o", str(tmp_path / "out"), "--steps", STEPS]
    assert main([*command, "--model", str(models / "b-echo"), "--device", "cpu"]) == 0
    assert sorted(path.relative_to(tmp_path / "out").as_posix() for path in (tmp_path / "out").rglob("*")) == [
        "scan",
        "scan/scan.nii.gz",
        "scan/scan_gt.nii.gz",
    ]
    assert main(["synth-dataset", str(tmp_path / "maps"), "-o", str(tmp_path / "maps" / "out")]) == 2
    assert "lies inside" in capsys.readouterr().err


def test_a_named_model_of_another_probe_is_refused(models, tmp_path, capsys):
    write_image(tmp_path / "labels.nii.gz", Image(heart()))
    command = ["synth", str(tmp_path / "labels.nii.gz"), "-o", str(tmp_path / "out.nii.gz"), "--probe", "sector"]
    assert main([*command, "--model", str(models / "a-linear"), "--device", "cpu"]) == 2
    assert "model a-linear 0.1.0 is for a linear probe, not sector" in capsys.readouterr().err
    assert not (tmp_path / "out.nii.gz").exists()
