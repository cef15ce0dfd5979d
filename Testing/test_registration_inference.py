"""EchoRegistration inference: baselines, metrics, strain, the register/track commands and the bench suite.

Truth: baselines recover a known smooth warp; metrics give their known answers (identical maps,
a shift of known size, a constant error, an identity field); strain follows a uniform scaling exactly
and the simulator's GLS from its true motion; the commands keep geometry (a translation in mm comes
back in mm, a moving image on another grid registers to zero), warp labels without inventing
values and refuse bad input with one line, exit status 2 and no file. The network path runs an
untrained registration network exported by the trainer, its output layer randomised so that its
displacement is not zero.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from deepultrasound.cli import main
from deepultrasound.errors import BundleError, InputError
from deepultrasound.io import Image, read_image, write_image
from deepultrasound.registration.baselines import BASELINES, unavailable
from deepultrasound.registration.images import warp_label_array
from deepultrasound.registration.inference import Registrar, pair_method, resolve_model
from deepultrasound.registration.metrics import endpoint_error, overlap_scores, score_pair
from deepultrasound.registration.preprocessing import prepare_frame
from deepultrasound.registration.strain import endocardial_contour, strain_curves, track_points
from deepultrasound.registration.tracking import track_displacements
from deepultrasound.simulation.echo import EchoConfig, EchoSimulator
from deepultrasound.spatial import warp_image
from deepultrasound.training import parse_config
from deepultrasound.training.export import export_bundle
from deepultrasound.training.task import get_task

NETWORK_SIZE = 32


def speckle(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Smoothed noise in [0, 1]: texture every method can follow."""
    image = gaussian_filter(np.random.default_rng(seed).random(shape), 1.5)
    return ((image - image.min()) / (image.max() - image.min())).astype(np.float32)


def heart_labels(size: int) -> np.ndarray:
    """A CAMUS-like map: LV cavity (1) in a myocardial ring (2) open at the base onto the left atrium (3)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    centre, base = (size / 2, 0.45 * size), 0.65 * size
    inner = ((cols - centre[0]) / (0.15 * size)) ** 2 + ((rows - centre[1]) / (0.3 * size)) ** 2 <= 1
    outer = ((cols - centre[0]) / (0.22 * size)) ** 2 + ((rows - centre[1]) / (0.36 * size)) ** 2 <= 1
    atrium = (cols - centre[0]) ** 2 + (rows - base - 0.12 * size) ** 2 <= (0.12 * size) ** 2
    labels = np.zeros((size, size), np.uint8)
    labels[outer & (rows < base)] = 2
    labels[inner & (rows < base)] = 1
    labels[atrium & (rows >= base)] = 3
    return labels


def warp(frame: np.ndarray, field: np.ndarray) -> np.ndarray:
    return warp_image(torch.from_numpy(frame)[None, None], torch.from_numpy(field)[None])[0, 0].numpy()


def smooth_pair(size: int = 96) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fixed, moving, truth u) with ``moving(p + u(p)) = fixed(p)``: moving is fixed warped by a smooth field v
    (a translation plus sines), and u is v's inverse (fixed-point iteration ``u = -v(p + u)``)."""
    fixed = speckle((size, size))
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    v = np.stack([2.0 + 1.5 * np.sin(2 * np.pi * rows / size), -1.5 + np.cos(2 * np.pi * cols / size)])
    v = v.astype(np.float32)
    u = -v
    for _ in range(30):
        u = -warp_image(torch.from_numpy(v)[None], torch.from_numpy(u)[None])[0].numpy()
    return fixed, warp(fixed, v), u


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    """An untrained registration network (2 channels, depth 2, 32 px) exported as the trainer exports it."""
    args = {"size": NETWORK_SIZE, "channels": 2, "depth": 2, "synthetic_pairs": 0, "synthetic_random_pairs": 0}
    task_cls = get_task("echo-registration")
    task = task_cls(task_cls.parse_args(args), seed=0)
    config = parse_config(
        {
            "task": "echo-registration",
            "task_args": args,
            "stages": [{"steps": 1}],
            "bundle": {"name": "tiny-registration", "formats": []},
        }
    )
    networks = task.build_networks()
    torch.manual_seed(0)
    for parameter in networks[task.export_spec().network].net.output_block.parameters():
        torch.nn.init.normal_(parameter, std=0.5)  # the untrained output layer is zero: make the field non-zero
    return export_bundle(task, networks, config, {}, tmp_path_factory.mktemp("models") / "tiny-registration")


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- baselines ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(BASELINES))
def test_baselines_recover_a_known_smooth_warp_in_the_project_convention(method, tmp_path, monkeypatch):
    if unavailable(method):
        pytest.skip(unavailable(method))
    fixed, moving, truth = smooth_pair()
    monkeypatch.chdir(tmp_path)
    displacement = BASELINES[method](fixed, moving)
    assert not any(tmp_path.iterdir()), "a baseline left files in the working folder"
    assert displacement.shape == (2, 96, 96) and displacement.dtype == np.float32
    inner = (slice(None), slice(12, -12), slice(12, -12))
    error = np.hypot(*(displacement - truth)[inner]).mean()
    assert error < 0.3, f"{method}: endpoint error {error:.3f} px for a motion of ~2.8 px"


def test_tvl1_says_why_it_is_unavailable():
    if hasattr(cv2, "optflow"):
        pytest.skip("this OpenCV has cv2.optflow: TV-L1 runs")
    assert "cv2.optflow" in unavailable("tvl1")
    with pytest.raises(InputError, match="TV-L1 is unavailable"):
        pair_method("tvl1")


def test_baselines_refuse_frames_of_different_shapes():
    with pytest.raises(InputError, match="differ in shape"):
        BASELINES["farneback"](np.zeros((40, 40)), np.zeros((40, 41)))


# -- metrics ------------------------------------------------------------------------------------------------


def test_overlap_scores_known_answers():
    labels = torch.from_numpy(heart_labels(64).astype(np.int64))[None, None]
    same = overlap_scores(labels, labels)
    assert all(float(same[f"dice_{s}"]) == 1.0 and float(same[f"hd95_{s}"]) == 0.0 for s in ("lv", "myo", "epi"))
    shifted = torch.roll(labels, 3, dims=-2)  # 3 rows down
    scores = overlap_scores(shifted, labels, spacing=(0.5, 2.0))
    assert float(scores["hd95_epi"]) == pytest.approx(6.0)  # 3 rows of 2 mm
    assert float(overlap_scores(shifted, labels)["hd95_epi"]) == pytest.approx(3.0)  # pixels
    assert 0 < float(scores["dice_myo"]) < float(scores["dice_epi"]) < 1


def test_endpoint_error_and_score_pair_known_answers():
    truth = torch.zeros(1, 2, 16, 16)
    estimate = truth + torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    assert float(endpoint_error(estimate, truth)) == pytest.approx(5.0)
    assert float(endpoint_error(estimate, truth, spacing=(2.0, 1.0))) == pytest.approx(np.hypot(6.0, 4.0))
    labels = torch.from_numpy(heart_labels(64).astype(np.int64))
    scores = score_pair(torch.zeros(2, 64, 64), labels, labels, truth=torch.zeros(2, 64, 64))
    assert scores["dice_lv"] == 1.0 and scores["folding_percent"] == 0.0 and scores["epe"] == 0.0
    folded = torch.zeros(2, 64, 64)
    folded[0, :, 20:30] = -3.0 * torch.arange(10.0)  # d(u_x)/dx = -3 inside the strip: the map folds there
    assert score_pair(folded, labels, labels)["folding_percent"] == pytest.approx(100 * 8 * 64 / 64**2, abs=2)


# -- strain -------------------------------------------------------------------------------------------------


def test_track_points_inverts_the_field():
    rows, cols = np.mgrid[0:64, 0:64].astype(float)
    field = np.stack([2.0 + 0.05 * rows, -1.0 + 0.03 * cols])  # frame -> reference
    frame_points = np.array([[20.0, 30.0], [40.5, 12.25]])
    reference_points = frame_points + np.array([2.0 + 0.05 * frame_points[:, 1], -1.0 + 0.03 * frame_points[:, 0]]).T
    assert np.allclose(track_points(reference_points, field), frame_points, atol=1e-6)


def test_uniform_contraction_gives_its_strain_and_ejection_fraction():
    size, k = 96, 0.85
    reference = heart_labels(size)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = (size / 2, 0.45 * size)
    onto_reference = np.stack([(cols - centre[0]), (rows - centre[1])]) * (1 / k - 1)  # frame 1 = reference scaled by k
    fields = np.stack([np.zeros_like(onto_reference), onto_reference]).astype(np.float32)
    labels = np.stack([reference, warp_label_array(reference, fields[1])])
    curves = strain_curves(reference, fields, labels, (0.5, 0.5))
    assert (curves.ed, curves.es) == (0, 1)
    for series in (curves.gls_endo, curves.gls_mid, curves.radial):
        assert series[1] == pytest.approx(100 * (k - 1), abs=0.3)
    assert curves.ejection_fraction == pytest.approx(100 * (1 - k**3), abs=2.0)


@pytest.mark.parametrize("view, ejection_fraction", [("4CH", 55.0), ("2CH", 35.0)])
def test_gls_from_the_true_motion_matches_the_simulator(view, ejection_fraction):
    simulator = EchoSimulator(EchoConfig(view=view, ejection_fraction=ejection_fraction, height=128, width=128), seed=1)
    es = simulator.config.es_phase
    onto_ed = simulator.displacement(es, 0.0)  # ES grid -> ED: the field that warps ED labels onto ES
    fields = np.stack([np.zeros_like(onto_ed), onto_ed])
    labels = np.stack([simulator.labels(0.0), simulator.labels(es)])
    curves = strain_curves(labels[0], fields, labels, simulator.sector.pixel_mm)
    assert (curves.ed, curves.es) == (0, 1)
    assert curves.gls == pytest.approx(simulator.global_longitudinal_strain(), abs=1.0)
    assert curves.ejection_fraction == pytest.approx(simulator.ejection_fraction, abs=3.0)
    assert curves.gls_endo[1] < curves.gls_mid[1] < 0 < curves.radial[1]  # the wall thickens


def test_contour_needs_an_opening_towards_the_atrium():
    closed = heart_labels(64)
    closed[closed == 3] = 0
    closed[(closed == 0) & (np.roll(closed, -2, axis=0) == 1)] = 2  # a myocardial lid over the base
    closed[(closed == 1) & (np.roll(closed, -1, axis=0) == 0)] = 2
    with pytest.raises(InputError, match="mitral plane"):
        endocardial_contour(closed)
    assert endocardial_contour(heart_labels(64)).shape == (101, 2)


# -- tracking -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reference", [0, 2])
def test_tracking_a_translating_sequence_recovers_the_motion(reference):
    base = speckle((80, 80), seed=3)
    step = np.array([1.5, 1.0], np.float32)
    frames = np.stack([warp(base, np.broadcast_to(-t * step[:, None, None], (2, 80, 80)).copy()) for t in range(4)])
    fields = track_displacements(frames, reference, BASELINES["farneback"])
    inner = (slice(None), slice(15, -15), slice(15, -15))
    for t in range(4):
        expected = (reference - t) * step  # frame_r(p + w_t) = frame_t(p)
        assert np.abs(fields[t][inner].mean(axis=(1, 2)) - expected).max() < 0.15, t


# -- network ------------------------------------------------------------------------------------------------


def test_registrar_feeds_fixed_then_moving_and_returns_the_frames_grid(tiny_bundle):
    registrar = Registrar(tiny_bundle, backend="torch")
    fixed, moving = speckle((NETWORK_SIZE, NETWORK_SIZE), 1), speckle((NETWORK_SIZE, NETWORK_SIZE), 2) * 7 + 3
    model = registrar.predictor.bundle.build_torch_model()
    pair = torch.cat([prepare_frame(fixed, (NETWORK_SIZE,) * 2), prepare_frame(moving, (NETWORK_SIZE,) * 2)])[None]
    with torch.no_grad():
        expected = model(pair)[0].numpy()
    assert np.abs(expected).max() > 0.05  # a non-zero field, so swapped inputs would show
    assert np.allclose(registrar(fixed, moving), expected, atol=1e-5)
    assert not np.allclose(registrar(moving, fixed), expected, atol=1e-3)
    assert registrar(speckle((50, 70)), speckle((50, 70), 1)).shape == (2, 50, 70)


def test_model_resolution_says_what_to_do_without_a_model(tmp_path, tiny_bundle):
    with pytest.raises(BundleError, match="--method elastix or --method farneback"):
        resolve_model(None, directories=[tmp_path])
    with pytest.raises(BundleError, match="installed: tiny-registration"):
        resolve_model("missing", directories=[tiny_bundle.parent])
    assert resolve_model(None, directories=[tiny_bundle.parent]) == tiny_bundle
    assert resolve_model("tiny-registration", directories=[tiny_bundle.parent]) == tiny_bundle


# -- register command ---------------------------------------------------------------------------------------


def test_register_returns_a_translation_in_mm_on_the_fixed_grid(tmp_path, capsys):
    spacing, origin = (0.4, 0.25), (10.0, -5.0)
    fixed = speckle((80, 72), seed=5)
    shift_px = np.array([3.0, -3.0], np.float32)  # moving(p + shift) = fixed(p)
    moving = warp(fixed, np.broadcast_to(-shift_px[:, None, None], (2, 80, 72)).copy())
    labels = heart_labels(80)[:, 4:76]
    labels[30:40, 10:20] = 1
    labels[40:50, 10:20] = 3  # 1 directly beside 3: interpolating values would make a 2 between them
    moving_labels = warp_label_array(labels, np.broadcast_to(-shift_px[:, None, None], (2, 80, 72)).copy())
    for name, array in (("fixed", fixed), ("moving", moving), ("labels", moving_labels)):
        write_image(tmp_path / f"{name}.mha", Image(array, spacing, origin))
    code, out, err = run_cli(
        [
            "register",
            tmp_path / "fixed.mha",
            tmp_path / "moving.mha",
            "-o",
            tmp_path / "d.mha",
            "--method",
            "farneback",
            "--labels",
            tmp_path / "labels.mha",
            "--warped-labels",
            tmp_path / "warped_labels.nii.gz",
            "--warped",
            tmp_path / "warped.mha",
        ],
        capsys,
    )
    assert code == 0, err
    field = read_image(tmp_path / "d.mha")
    assert field.multichannel and field.array.shape == (80, 72, 2) and field.array.dtype == np.float32
    assert field.spacing == spacing and field.origin == origin
    inner = field.array[15:-15, 15:-15]
    assert np.allclose(inner.mean(axis=(0, 1)), shift_px * spacing, atol=0.04)  # (1.2, -0.75) mm
    warped = read_image(tmp_path / "warped_labels.nii.gz").array
    assert set(np.unique(warped)) <= {0, 1, 2, 3} and warped.dtype == np.uint8
    assert not (warped[30:50, 10:20] == 2).any()
    assert np.mean(warped[10:-10, 10:-10] == labels[10:-10, 10:-10]) > 0.98
    assert read_image(tmp_path / "warped.mha").array.shape == (80, 72)
    assert "d.mha" in out


def test_register_resamples_a_moving_image_on_another_grid(tmp_path, capsys):
    fine = speckle((96, 96), seed=6)
    coarse = fine.reshape(48, 2, 48, 2).mean(axis=(1, 3))  # the same field of view at 2x the pixel size
    write_image(tmp_path / "fixed.mha", Image(fine, (0.3, 0.3), (0.0, 0.0)))
    write_image(tmp_path / "moving.mha", Image(coarse.astype(np.float32), (0.6, 0.6), (0.15, 0.15)))
    code, _, err = run_cli(
        [
            "register",
            tmp_path / "fixed.mha",
            tmp_path / "moving.mha",
            "-o",
            tmp_path / "d.mha",
            "--method",
            "farneback",
        ],
        capsys,
    )
    assert code == 0, err
    field = read_image(tmp_path / "d.mha").array[12:-12, 12:-12]
    assert np.abs(field.mean(axis=(0, 1))).max() < 0.05  # mm: nothing moved


def test_register_with_a_model_gives_its_pixels_times_the_spacing(tmp_path, capsys, tiny_bundle):
    fixed, moving = speckle((40, 48), 1), speckle((40, 48), 2)
    for name, array in (("fixed", fixed), ("moving", moving)):
        write_image(tmp_path / f"{name}.nrrd", Image(array, (0.5, 0.2)))
    code, out, err = run_cli(
        ["register", tmp_path / "fixed.nrrd", tmp_path / "moving.nrrd", "-o", tmp_path / "d.mha"]
        + ["--model", tiny_bundle, "--backend", "torch"],
        capsys,
    )
    assert code == 0, err
    expected = Registrar(tiny_bundle, backend="torch")(fixed, moving) * np.array([0.5, 0.2])[:, None, None]
    assert np.allclose(read_image(tmp_path / "d.mha").array, np.moveaxis(expected, 0, -1), atol=1e-5)
    assert "tiny-registration" in out


# -- bad input ----------------------------------------------------------------------------------------------


@pytest.fixture
def pair_files(tmp_path) -> Path:
    folder = tmp_path / "in"
    write_image(folder / "fixed.mha", Image(speckle((64, 64)), (0.3, 0.3)))
    write_image(folder / "moving.mha", Image(speckle((64, 64), 1), (0.3, 0.3)))
    write_image(folder / "labels.mha", Image(heart_labels(64)))
    write_image(folder / "labels_small.mha", Image(heart_labels(48)))
    bad = heart_labels(64)
    bad[0, 0] = 5
    write_image(folder / "labels_bad.mha", Image(bad))
    write_image(folder / "tiny.mha", Image(speckle((24, 64))))
    write_image(folder / "sequence1.mha", Image(speckle((64, 64))[None], (0.3, 0.3, 0.02)))
    write_image(folder / "sequence2.mha", Image(np.stack([speckle((64, 64)), speckle((64, 64), 1)]), (0.3, 0.3, 0.02)))
    (folder / "text.mha").write_text("not an image\n")
    return folder


REGISTER = ["register", "{in}/fixed.mha", "{in}/moving.mha", "-o", "{out}/d.mha"]
BAD_INPUTS = {
    "labels of another size": (
        [*REGISTER, "--method", "farneback", "--labels", "{in}/labels_small.mha", "--warped-labels", "{out}/w.mha"],
        "48 x 48 pixels but the image is 64 x 64",
    ),
    "label values outside the convention": (
        [*REGISTER, "--method", "farneback", "--labels", "{in}/labels_bad.mha", "--warped-labels", "{out}/w.mha"],
        "values 5 outside the CAMUS convention",
    ),
    "labels without an output": ([*REGISTER, "--method", "farneback", "--labels", "{in}/labels.mha"], "go together"),
    "a file that is not an image": (
        ["register", "{in}/text.mha", "{in}/moving.mha", "-o", "{out}/d.mha", "--method", "farneback"],
        "text.mha",
    ),
    "an image under 32 px": (
        ["register", "{in}/tiny.mha", "{in}/moving.mha", "-o", "{out}/d.mha", "--method", "farneback"],
        "at least 32 x 32",
    ),
    "a missing model": ([*REGISTER, "--model", "{in}/no-such-model"], "--method elastix or --method farneback"),
    "a one-frame sequence": (
        ["track", "{in}/sequence1.mha", "--labels", "{in}/labels.mha", "-o", "{out}", "--method", "farneback"],
        "at least 2 frames",
    ),
    "a labelled frame outside the sequence": (
        ["track", "{in}/sequence2.mha", "--labels", "{in}/labels.mha", "-o", "{out}", "--frame", "3"],
        "--frame 3 is outside the sequence's frames 0..1",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, pair_files, tmp_path, capsys):
    argv, message = BAD_INPUTS[case]
    out = tmp_path / "out"
    code, _, err = run_cli([arg.format(**{"in": pair_files, "out": out}) for arg in argv], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and message in lines[0], err
    assert not out.exists() or not any(out.iterdir())


# -- track command ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated_sequence(tmp_path_factory) -> tuple[Path, Path, EchoSimulator]:
    """4 frames end-diastole -> end-systole of a 96 x 96 simulated 4-chamber view, and the ED labels."""
    simulator = EchoSimulator(EchoConfig(height=96, width=96), seed=2)
    phases = np.linspace(0.0, simulator.config.es_phase, 4)
    frames = np.stack([simulator.frame(float(phase)).image for phase in phases])
    folder = tmp_path_factory.mktemp("sequence")
    spacing = simulator.sector.pixel_mm
    write_image(folder / "sequence.nii.gz", Image(frames, (*spacing, 0.05)))
    write_image(folder / "labels.mha", Image(simulator.labels(0.0), spacing))
    return folder / "sequence.nii.gz", folder / "labels.mha", simulator


@pytest.mark.parametrize("method", [["--method", "farneback"], ["--model", "BUNDLE", "--backend", "torch"]])
def test_track_writes_labels_displacements_strain_and_plot(method, simulated_sequence, tiny_bundle, tmp_path, capsys):
    sequence, labels, simulator = simulated_sequence
    out = tmp_path / "tracked"
    method = [str(tiny_bundle) if arg == "BUNDLE" else arg for arg in method]
    code, stdout, err = run_cli(["track", sequence, "--labels", labels, "--frame", "1", "-o", out, *method], capsys)
    assert code == 0, err
    tracked = read_image(out / "labels.mha")
    assert tracked.array.shape == (4, 96, 96) and tracked.array.dtype == np.uint8
    assert set(np.unique(tracked.array)) <= {0, 1, 2, 3}
    assert np.array_equal(tracked.array[1], read_image(labels).array)
    assert tracked.spacing == pytest.approx((*simulator.sector.pixel_mm, 0.05))
    field = read_image(out / "displacement.mha")
    assert field.multichannel and field.array.shape == (4, 96, 96, 2)
    assert not field.array[1].any()  # the labelled frame onto itself
    with open(out / "strain.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["frame"]) for row in rows] == [0, 1, 2, 3]
    assert float(rows[2]["time_s"]) == pytest.approx(0.1)
    summary = json.loads((out / "summary.json").read_text())
    assert rows[summary["ed_frame"]]["phase"].startswith("ED") and "ES" in rows[summary["es_frame"]]["phase"]
    assert {"lv_area_mm2", "lv_volume_ml", "gls_endo_percent", "gls_mid_percent", "radial_percent"} <= set(rows[0])
    assert (out / "strain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["labelled_frame"] == 1 and summary["units"] == "mm" and "ejection_fraction_percent" in summary
    assert "EF" in stdout


def test_track_reads_a_colour_video_as_grey(tmp_path, capsys, caplog):
    size = 64
    base = speckle((size, size), seed=4)
    frames = [warp(base, np.full((2, size, size), -t, np.float32)) for t in range(3)]
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (size, size))
    if not writer.isOpened():
        pytest.skip("this OpenCV cannot write MJPG video")
    for frame in frames:
        grey = np.rint(frame * 255).astype(np.uint8)
        writer.write(np.stack([grey // 2, grey, grey], axis=-1))  # tinted: a colour video
    writer.release()
    write_image(tmp_path / "labels.mha", Image(heart_labels(size)))
    code, _, err = run_cli(
        ["track", path, "--labels", tmp_path / "labels.mha", "-o", tmp_path / "out", "--method", "farneback"], capsys
    )
    assert code == 0, err
    assert "in colour: converted to grey" in caplog.text
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["units"] == "px"


# -- bench --------------------------------------------------------------------------------------------------


def test_bench_register_on_two_pairs(tiny_bundle, capsys):
    code, out, err = run_cli(
        ["bench", "register", "--synthetic", "2", "--camus-patients", "0", "--size", "64", "--sequences", "1"]
        + ["--frames", "2"]
        + [
            "--model",
            tiny_bundle,
            "--ablation",
            f"copy={tiny_bundle}",
            "--backend",
            "torch",
            "--baselines",
            "farneback",
        ],
        capsys,
    )
    assert code == 0, err
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["suite"] == "register" and figures["camus"] == {"skipped": "--camus-patients 0"}
    synthetic = figures["synthetic"]
    assert synthetic["pairs"] == 2
    rows = synthetic["methods"]
    assert {"ours", "ablation:copy", "farneback", "identity"} <= set(rows)
    expected = {"dice_lv", "dice_myo", "dice_epi", "hd95_lv", "folding_percent", "epe", "seconds_per_pair"}
    assert all(expected <= set(row) for row in rows.values())
    assert rows["identity"]["folding_percent"] == 0.0 and rows["identity"]["epe"] > 0
    assert rows["ours"]["dice_lv"] == pytest.approx(rows["ablation:copy"]["dice_lv"])  # the same bundle twice
    assert "elastix" not in rows and rows["ours"]["speedup_vs_elastix"] is None  # elastix left out of this run
    tracking = figures["tracking"]
    (truth,) = tracking["gls_truth_percent"]
    assert tracking["cines"] == 1 and truth < -5  # the simulated heart shortens
    assert set(tracking["methods"]) == {"ours", "ablation:copy", "farneback"}  # every method but the identity
    assert tracking["methods"]["farneback"]["mean_abs_gls_error_pp"] < abs(truth)
