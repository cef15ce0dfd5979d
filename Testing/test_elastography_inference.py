"""Tests of DeepUSE offline inference, ``deepultrasound strain``, ``import-deepuse`` and ``bench strain``.

Truth: the original code's reference displacements (``deepuse_reference`` in the shared data), the
network run by hand on the same pairs and states, image geometry round trips, and a synthetic
uniform compression of known strain for the block-matching path.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from deepultrasound.cli import main
from deepultrasound.elastography import estimators, model_resolution
from deepultrasound.elastography.baselines import BlockMatchingEstimator, UniformStrainEstimator
from deepultrasound.elastography.block_matching import BlockMatchingParams
from deepultrasound.elastography.bundles import save_deepuse_bundle
from deepultrasound.elastography.estimators import StrainEstimator
from deepultrasound.elastography.frames import (
    FRAME_TO_FRAME,
    crop_rows,
    normalise_frame,
    parse_crop,
    prepare_rf,
)
from deepultrasound.elastography.import_command import import_deepuse_bundle
from deepultrasound.elastography.networks import ReUSENet, USENet
from deepultrasound.elastography.options import add_inference_options, inference_options, live_inference_options
from deepultrasound.elastography.prealign import (
    PREALIGN_UNIFORM_STRAIN,
    REFINEMENT_WEIGHT,
    linear_prealignment,
    mirror_averaged,
)
from deepultrasound.elastography.strain import axial_strain_np
from deepultrasound.errors import BundleError, InputError
from deepultrasound.io import Image, read_image, write_image
from deepultrasound.io.shared_data import shared_data_dir
from deepultrasound.runtime import RecurrentPredictor, create_predictor, load_bundle
from deepultrasound.runtime.graphs import GraphedStep, restore, snapshot
from deepultrasound.spatial import compose_displacements, warp_image

REFERENCE = shared_data_dir() / "deepuse_reference"
SPACING = (0.2, 0.02, 0.05)  # lateral mm, axial mm, frame interval s
WINDOW_MM = 0.3  # 15 samples: fits the tiny frames


def _pair(frames: np.ndarray, t: int) -> np.ndarray:
    """(1, 2, H, W) = cat[frame 0, frame t] of (N, 1, H, W) frames."""
    return np.concatenate([frames[0:1], frames[t : t + 1]], axis=1)


@pytest.fixture(scope="module")
def reference_frames() -> np.ndarray:
    return np.load(REFERENCE / "frames.npy")


@pytest.fixture(scope="module")
def imported_reusenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference ReUSENet imported with ONNX (the one slow export of this file, ~15 s)."""
    folder = tmp_path_factory.mktemp("import") / "reusenet"
    return import_deepuse_bundle(
        REFERENCE / "reusenet_c8_state_dict.pth", folder, example_size=(64, 32), formats=("onnx",)
    )


@pytest.fixture(scope="module")
def small_model() -> ReUSENet:
    torch.manual_seed(0)
    return ReUSENet(initial_channels=2).eval()


@pytest.fixture(scope="module")
def small_bundle(small_model: ReUSENet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ReUSENet (2 initial channels), weights only."""
    folder = tmp_path_factory.mktemp("small") / "tiny-reusenet"
    return save_deepuse_bundle(small_model, folder, name="tiny-reusenet", example_size=(32, 16), formats=())


def _speckle(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------- import-deepuse


@pytest.mark.shared_data("deepuse_reference")
# tolerances as fractions of the largest |displacement| of the reference: float32 rounding varies by CPU
@pytest.mark.parametrize(("backend", "tolerance"), [("torch", 1e-4), ("onnxruntime", 2e-4)])
def test_imported_reusenet_reproduces_reference_sequence(
    imported_reusenet: Path, reference_frames: np.ndarray, backend: str, tolerance: float
) -> None:
    expected = np.load(REFERENCE / "reusenet_ddf_seq.npy")
    recurrent = RecurrentPredictor(create_predictor(imported_reusenet, backend, "cpu"))
    for t in (1, 2, 3):
        (ddf,) = recurrent.step(_pair(reference_frames, t))
        assert np.abs(ddf - expected[t - 1]).max() <= tolerance * np.abs(expected).max()
    manifest = load_bundle(imported_reusenet).manifest
    assert manifest.architecture == "reusenet" and len(manifest.states) == 10
    assert manifest.normalisation["kind"] == "frame_max"


@pytest.mark.shared_data("deepuse_reference")
def test_import_command_usenet_reproduces_reference(tmp_path: Path, reference_frames: np.ndarray) -> None:
    folder = tmp_path / "usenet"
    code = main(
        [
            "import-deepuse",
            str(REFERENCE / "usenet_c8_state_dict.pth"),
            "-o",
            str(folder),
            "--example-size",
            "64",
            "32",
            "--formats",
            "--name",
            "usenet-ref",
        ]
    )
    assert code == 0
    predictor = create_predictor(folder, "torch", "cpu")
    assert predictor.bundle.manifest.name == "usenet-ref" and not predictor.bundle.manifest.states
    (ddf,) = predictor.predict(_pair(reference_frames, 1))
    expected = np.load(REFERENCE / "usenet_ddf_0to1.npy")
    assert np.abs(ddf - expected).max() <= 1e-4 * np.abs(expected).max()  # float32 rounding varies by CPU


def test_import_command_missing_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import-deepuse", str(tmp_path / "none.pth"), "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err


# ---------------------------------------------------------------- StrainEstimator


def test_estimator_carries_state_like_the_network_by_hand(small_bundle: Path, small_model: ReUSENet) -> None:
    rng = np.random.default_rng(1)
    rf = _speckle(rng, (4, 40, 20)) * 7.0  # 40 x 20: not multiples of 16, padded inside
    estimator = StrainEstimator(small_bundle, "torch", "cpu")
    assert estimator.prealignment is None  # no pre-alignment in the manifest: the network alone
    result = estimator.estimate(rf, SPACING[1], window_mm=WINDOW_MM)
    assert result.displacement.shape == (3, 2, 40, 20) and result.strain.shape == (3, 40, 20)
    assert result.pairs.tolist() == [[0, 1], [0, 2], [0, 3]] and result.valid.all()

    frames = np.stack([normalise_frame(frame, "frame_max") for frame in rf])
    padded = np.zeros((4, 48, 32), np.float32)
    padded[:, :40, :20] = frames
    states = ()
    with torch.no_grad():
        for k in range(1, 4):
            pair = torch.from_numpy(np.stack([padded[0], padded[k]])[None])
            ddf, *states = small_model(pair, *states)
            np.testing.assert_allclose(result.displacement[k - 1], ddf[0, :, :40, :20].numpy(), atol=1e-5)
    np.testing.assert_allclose(
        result.strain, axial_strain_np(result.displacement[:, 1], WINDOW_MM, SPACING[1]), atol=1e-5
    )


def test_previous_reference_restarts_the_state(small_bundle: Path, small_model: ReUSENet) -> None:
    rf = _speckle(np.random.default_rng(2), (3, 32, 16))
    result = StrainEstimator(small_bundle).estimate(rf, SPACING[1], reference="previous", window_mm=WINDOW_MM)
    assert result.pairs.tolist() == [[0, 1], [1, 2]]
    frames = np.stack([normalise_frame(frame, "frame_max") for frame in rf])
    with torch.no_grad():
        fresh = small_model(torch.from_numpy(frames[None, 1:3]))[0]  # pair (1, 2) from zero states
    np.testing.assert_allclose(result.displacement[1], fresh[0].numpy(), atol=1e-5)


def test_constant_frame_gives_zero_strain_and_a_warning(small_bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    rf = _speckle(np.random.default_rng(3), (3, 32, 16))
    rf[2] = 0.0
    result = StrainEstimator(small_bundle).estimate(rf, SPACING[1], window_mm=WINDOW_MM)
    assert result.valid.tolist() == [True, False]
    assert not result.strain[1].any() and result.strain[0].any()
    assert "frame 2 is constant" in caplog.text


@pytest.mark.parametrize(
    ("rf", "message"),
    [
        (np.zeros((8, 8)), "frames, axial samples, lines"),
        (np.zeros((1, 8, 8)), "at least 2 frames"),
        (np.full((2, 8, 8), 1j), "real numbers"),
    ],
)
def test_prepare_rf_refuses_bad_input(rf: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        prepare_rf(rf)


def test_prepare_rf_names_the_nan_frame_and_converts_int16() -> None:
    rf = np.ones((3, 4, 4), np.float32)
    rf[1, 2, 2] = np.nan
    with pytest.raises(InputError, match="RF frame 1 holds 1 NaN"):
        prepare_rf(rf)
    converted = prepare_rf(np.full((2, 4, 4), -32768, np.int16))
    assert converted.dtype == np.float32 and converted.min() == -32768.0


def test_crop_rows_moves_the_origin_along_the_axial_direction() -> None:
    direction = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # Slicer's flipped ultrasound frame
    image = Image(np.zeros((2, 50, 4), np.float32), SPACING, (1.0, 2.0, 3.0), direction)
    cropped = crop_rows(image, parse_crop("10:-15"))
    assert cropped.array.shape == (2, 25, 4)
    assert cropped.origin == pytest.approx((1.0, 2.0 - 10 * 0.02, 3.0))
    with pytest.raises(InputError, match="keeps no row"):
        crop_rows(image, parse_crop("40:-20"))
    with pytest.raises(InputError, match="START:STOP"):
        parse_crop("ten")


def _compressed_sequence(strains_percent: list[float], height: int = 400, width: int = 8) -> np.ndarray:
    """RF of point scatterers convolved with a 4.4 MHz pulse at 38.5 MHz sampling; frame k has the
    tissue compressed uniformly: depth z -> z (1 + strain_k)."""
    rng = np.random.default_rng(4)
    count = 3 * height
    depth = rng.uniform(-20, height + 20, (width, count))
    amplitude = rng.standard_normal((width, count))
    z = np.arange(height)[:, None]
    frames = []
    for strain in [0.0, *strains_percent]:
        frame = np.zeros((height, width))
        for line in range(width):
            offset = z - depth[line][None] * (1 + strain / 100)
            pulse = np.exp(-0.5 * (offset / 4.0) ** 2) * np.cos(2 * np.pi * offset / 8.75)
            frame[:, line] = pulse @ amplitude[line]
        frames.append(frame)
    return np.stack(frames).astype(np.float32)


@pytest.fixture(scope="module")
def prealigned_bundle(small_model: ReUSENet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained small ReUSENet, its manifest asking for frame-to-frame pairs with uniform-strain pre-alignment."""
    folder = tmp_path_factory.mktemp("prealigned") / "tiny-prealigned"
    return save_deepuse_bundle(
        small_model,
        folder,
        name="tiny-prealigned",
        example_size=(32, 16),
        formats=(),
        pairs=FRAME_TO_FRAME,
        prealign=PREALIGN_UNIFORM_STRAIN,
    )


def _network_on_prealigned(
    model: ReUSENet, fixed: torch.Tensor, moving: torch.Tensor, prealignment: torch.Tensor, states: tuple
) -> tuple[torch.Tensor, tuple]:
    """Total displacement (1, 2, H, W) of the network on (fixed, moving warped by the pre-alignment), H = 128, W = 8."""
    warped = warp_image(moving, prealignment)
    padded = torch.zeros(1, 2, 128, 16)
    padded[:, :, :, :8] = torch.cat([fixed, warped], dim=1)
    residual, *states = model(padded, *states)
    return compose_displacements(residual[..., :8], prealignment), tuple(states)


def test_frame_to_frame_bundle_chains_its_prealigned_pairs(prealigned_bundle: Path, small_model: ReUSENet) -> None:
    rf = _compressed_sequence([-1.0, -2.0], height=128)
    estimator = StrainEstimator(prealigned_bundle, "torch", "cpu", refine=False)
    assert estimator.prealignment == PREALIGN_UNIFORM_STRAIN and estimator.frame_to_frame
    result = estimator.estimate(rf, SPACING[1], window_mm=WINDOW_MM)
    previous = estimator.estimate(rf, SPACING[1], reference="previous", window_mm=WINDOW_MM)

    frames = torch.from_numpy(np.stack([normalise_frame(frame, "frame_max") for frame in rf]))[:, None]
    fits = [linear_prealignment(frames[k - 1 : k], frames[k : k + 1]) for k in (1, 2)]  # pairs (0, 1), (1, 2)
    with torch.no_grad():
        first, states = _network_on_prealigned(small_model, frames[:1], frames[1:2], fits[0], ())
        second, _ = _network_on_prealigned(small_model, frames[1:2], frames[2:3], fits[1], states)  # state runs on
        fresh, _ = _network_on_prealigned(small_model, frames[1:2], frames[2:3], fits[1], ())
    np.testing.assert_allclose(result.displacement[0], first[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(result.displacement[1], compose_displacements(first, second)[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(previous.displacement[1], fresh[0].numpy(), atol=1e-4)  # a new reference: zero state
    np.testing.assert_allclose(
        result.strain, axial_strain_np(result.displacement[:, 1], WINDOW_MM, SPACING[1]), atol=1e-5
    )


def test_refined_chain_corrects_each_pair_against_the_reference(prealigned_bundle: Path, small_model: ReUSENet) -> None:
    """Each chained estimate is averaged with the network's own estimate against frame 0 (from
    zero states, the running states untouched, averaged with that of the mirrored pair), and the
    chain carries the refined one on."""
    rf = _compressed_sequence([-1.0, -2.0], height=128)
    estimator = StrainEstimator(prealigned_bundle, "torch", "cpu")
    assert estimator.refine  # the default for frame-to-frame bundles
    result = estimator.estimate(rf, SPACING[1], window_mm=WINDOW_MM)

    frames = torch.from_numpy(np.stack([normalise_frame(frame, "frame_max") for frame in rf]))[:, None]

    def at_rest(fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        return _network_on_prealigned(small_model, fixed, warped, torch.zeros(1, 2, *fixed.shape[-2:]), ())[0]

    def refined(chained: torch.Tensor, k: int) -> torch.Tensor:
        warped = warp_image(frames[k : k + 1], chained)
        mirrored = at_rest(frames[:1].flip(-1), warped.flip(-1)).flip(-1) * torch.tensor([-1.0, 1.0])[:, None, None]
        against_reference = 0.5 * (at_rest(frames[:1], warped) + mirrored)
        return chained + REFINEMENT_WEIGHT * (compose_displacements(against_reference, chained) - chained)

    with torch.no_grad():
        first, states = _network_on_prealigned(
            small_model, frames[:1], frames[1:2], linear_prealignment(frames[:1], frames[1:2]), ()
        )
        second, _ = _network_on_prealigned(
            small_model, frames[1:2], frames[2:3], linear_prealignment(frames[1:2], frames[2:3]), states
        )
        refined_first = refined(first, 1)
        refined_second = refined(compose_displacements(refined_first, second), 2)
    np.testing.assert_allclose(result.displacement[0], refined_first[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(result.displacement[1], refined_second[0].numpy(), atol=1e-4)
    assert np.abs(result.displacement[0] - first[0].numpy()).max() > 1e-3  # the refinement did something


def test_mirror_averaging_keeps_a_mirror_equivariant_estimate_and_cancels_a_lateral_bias() -> None:
    pair = torch.randn(2, 2, 32, 16, generator=torch.Generator().manual_seed(0))

    def equivariant(pair: torch.Tensor) -> torch.Tensor:
        """Lateral: the moving frame's lateral gradient (odd under mirroring); axial: the fixed frame (even)."""
        return torch.stack([torch.gradient(pair[:, 1], dim=-1)[0], pair[:, 0]], dim=1)

    def biased(pair: torch.Tensor) -> torch.Tensor:
        return equivariant(pair) + torch.tensor([0.3, -0.2])[:, None, None]

    expected = equivariant(pair)
    assert torch.allclose(mirror_averaged(equivariant, pair), expected, atol=1e-6)
    averaged = mirror_averaged(biased, pair)
    assert torch.allclose(averaged[:, 0], expected[:, 0], atol=1e-6)  # a lateral bias does not survive mirroring
    assert torch.allclose(averaged[:, 1], expected[:, 1] - 0.2, atol=1e-6)  # an axial one does


@pytest.mark.parametrize(
    ("argv", "offline", "live"), [([], True, False), (["--refine"], True, True), (["--no-refine"], False, False)]
)
def test_refinement_is_on_offline_and_off_live_unless_asked(
    argv: list[str], offline: bool, live: bool, prealigned_bundle: Path
) -> None:
    from deepultrasound.elastography.live import LiveStrainProcessor

    parser = argparse.ArgumentParser()
    add_inference_options(parser)
    args = parser.parse_args([*argv, "--backend", "torch", "--device", "cpu"])
    assert StrainEstimator(prealigned_bundle, **inference_options(args)).refine is offline
    assert LiveStrainProcessor(prealigned_bundle, **live_inference_options(args)).estimator.refine is live


class _ReplayOnCpu:
    """:class:`GraphedStep`'s contract without a GPU: a warm-up run whose state changes are undone,
    then each call runs the step on the static input buffers and returns a copy of the output."""

    def __init__(self, function, inputs, state) -> None:
        self.function, self.inputs = function, [tensor.clone() for tensor in inputs]
        self.addresses = [tensor.data_ptr() for tensor in state]
        saved = snapshot(state)
        function(*self.inputs)
        restore(state, saved)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        for buffer, value in zip(self.inputs, inputs):
            buffer.copy_(value)
        return self.function(*self.inputs).clone()


def test_pairs_replayed_on_static_buffers_equal_the_eager_ones(
    prealigned_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a CUDA graph relies on: the chain and the recurrent states are updated in place, so
    one capture serves every pair of every reference of a frame size, with the eager results."""
    rf = _compressed_sequence([-0.5, -1.0, -1.5, -2.0], height=128)
    expected = StrainEstimator(prealigned_bundle, "torch", "cpu").estimate(rf, SPACING[1], window_mm=WINDOW_MM)
    captures: list[_ReplayOnCpu] = []
    monkeypatch.setattr(estimators, "GraphedStep", lambda *args: captures.append(_ReplayOnCpu(*args)) or captures[-1])
    replayed = StrainEstimator(prealigned_bundle, "torch", "cpu")
    replayed.cuda_graphs = True  # CPU tensors: the stand-in replays them
    for _ in range(2):  # two references of one size
        result = replayed.estimate(rf, SPACING[1], window_mm=WINDOW_MM)
        np.testing.assert_allclose(result.displacement, expected.displacement, atol=1e-5)
    assert len(captures) == 1 and replayed.cuda_graphs
    assert [tensor.data_ptr() for tensor in replayed._carried_state()] == captures[0].addresses


@pytest.mark.parametrize("failure", ["capture raises", "replay differs"])
def test_a_failed_or_wrong_capture_falls_back_to_eager_pairs(
    failure: str, prealigned_bundle: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(function, inputs, state):
        if failure == "capture raises":
            raise RuntimeError("operation not permitted when stream is capturing")
        replay = _ReplayOnCpu(function, inputs, state)
        return lambda *inputs: replay(*inputs) + 0.01

    rf = _compressed_sequence([-0.5, -1.0, -1.5], height=128)
    expected = StrainEstimator(prealigned_bundle, "torch", "cpu").estimate(rf, SPACING[1], window_mm=WINDOW_MM)
    monkeypatch.setattr(estimators, "GraphedStep", broken)
    estimator = StrainEstimator(prealigned_bundle, "torch", "cpu")
    estimator.cuda_graphs = True
    result = estimator.estimate(rf, SPACING[1], window_mm=WINDOW_MM)
    np.testing.assert_allclose(result.displacement, expected.displacement, atol=1e-5)
    assert not estimator.cuda_graphs
    assert ("capture failed" if failure == "capture raises" else "differs from the eager step") in caplog.text


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_graphed_step_replays_the_step_and_leaves_the_state_to_the_replays() -> None:
    state = torch.zeros(4, device="cuda")

    def accumulate(x: torch.Tensor) -> torch.Tensor:
        state.add_(x)
        return 2 * state

    graph = GraphedStep(accumulate, [torch.ones(4, device="cuda")], [state])
    assert not state.any()  # the warm-up run was undone
    first, second = graph(torch.full((4,), 3.0, device="cuda")), graph(torch.ones(4, device="cuda"))
    assert first.tolist() == [6.0] * 4 and second.tolist() == [8.0] * 4 and state.tolist() == [4.0] * 4


@needs_cuda
def test_live_pairs_on_cuda_replay_graphs_with_the_cpu_results(prealigned_bundle: Path) -> None:
    rf = _compressed_sequence([-0.5, -1.0, -1.5, -2.0], height=128)
    on_cpu = StrainEstimator(prealigned_bundle, "torch", "cpu").estimate(rf, SPACING[1], window_mm=WINDOW_MM)
    estimator = StrainEstimator(prealigned_bundle, "torch", "cuda")
    assert estimator.cuda_graphs
    for _ in range(2):  # two references: the second replays the graph of the first
        on_gpu = estimator.estimate(rf, SPACING[1], window_mm=WINDOW_MM)
        np.testing.assert_allclose(on_gpu.displacement, on_cpu.displacement, atol=1e-3)
    assert estimator.cuda_graphs  # captured, checked against the eager step, kept


def test_cuda_graphs_need_a_cuda_device(prealigned_bundle: Path) -> None:
    with pytest.raises(InputError, match="CUDA graphs need a CUDA device"):
        StrainEstimator(prealigned_bundle, "torch", "cpu", cuda_graphs=True)
    with pytest.raises(InputError, match="CUDA tensors"):
        GraphedStep(lambda x: x, [torch.zeros(2)], [])
    assert not StrainEstimator(prealigned_bundle, "torch", "cpu").cuda_graphs


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_folded_bundle_pads_frames_to_its_row_multiple(backend: str, tmp_path: Path) -> None:
    """An 8-fold USENet needs multiples of 128 rows: a 200-row pair is padded to 256 and cropped back."""
    torch.manual_seed(0)
    model = USENet(initial_channels=2, axial_fold=8).eval()
    folder = save_deepuse_bundle(
        model, tmp_path / "folded", name="tiny-folded", example_size=(256, 32), formats=("onnx",)
    )
    pair = np.random.default_rng(5).standard_normal((2, 200, 20)).astype(np.float32)
    displacement = StrainEstimator(folder, backend, "cpu").step(pair, new_reference=True)
    padded = torch.zeros(1, 2, 256, 32)
    padded[0, :, :200, :20] = torch.from_numpy(pair)
    with torch.no_grad():
        expected = model(padded)[0, :, :200, :20].numpy()
    assert displacement.shape == (2, 200, 20)
    np.testing.assert_allclose(displacement, expected, atol=1e-4)


def test_prealignment_without_frame_to_frame_pairs_is_refused(small_model: ReUSENet, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="prealign 'uniform_strain' needs pairs 'previous'"):
        save_deepuse_bundle(
            small_model, tmp_path / "b", name="b", example_size=(32, 16), formats=(), prealign=PREALIGN_UNIFORM_STRAIN
        )
    assert not (tmp_path / "b").exists()


def test_unknown_prealignment_is_refused(prealigned_bundle: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(prealigned_bundle, tmp_path / "b"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["inference"]["prealign"] = "affine"  # what a newer engine might write
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="inference.elastography.prealign"):
        StrainEstimator(folder)


def test_a_bundle_without_an_elastography_inference_section_is_refused(small_model, tmp_path: Path) -> None:
    folder = save_deepuse_bundle(small_model, tmp_path / "b", name="b", example_size=(32, 16), formats=())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["inference"] = {"kind": "superres", "factor": 4}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="has a 'superres' inference section"):
        StrainEstimator(folder)


def test_uniform_estimator_recovers_uniform_compression() -> None:
    rf = _compressed_sequence([-1.0, -2.0])
    result = UniformStrainEstimator().estimate(rf, 0.02, window_mm=2.0)
    assert result.displacement[:, 0].max() == 0 == result.displacement[:, 0].min()
    interior = result.strain[:, 80:-80]  # chained fits compose with clamped borders: edge rows deviate
    assert (np.ptp(interior, axis=(1, 2)) < 1e-3).all()  # uniform per pair
    assert interior[:, 0, 0] == pytest.approx([-1.0, -2.0], rel=0.05)


def test_block_matching_recovers_uniform_compression() -> None:
    rf = _compressed_sequence([-1.0, -2.0])
    result = BlockMatchingEstimator(device="cpu").estimate(rf, 0.02, window_mm=2.0)
    interior = result.strain[:, 80:-80]
    assert np.median(interior[0]) == pytest.approx(-1.0, rel=0.1)
    assert np.median(interior[1]) == pytest.approx(-2.0, rel=0.1)


@pytest.mark.parametrize("history_fallback", [False, True])
def test_block_matching_recovers_a_compression_jump_after_rest(monkeypatch, history_fallback) -> None:
    """Frames at 0, 0, 2 and 3 % compression: a pair at rest, then a jump beyond the search range.

    A search guided by the previous pair alone started the jump 10 samples off at the bottom
    (search +-6 here, as +-32 at 1600 rows), and the wrong field then guided the next pair too:
    median strain 15 % and 11 % off. Each pair is now guided by its own uniform-strain fit.
    """
    from deepultrasound.simulation import SimulationConfig, simulate_sequence

    config = SimulationConfig(n_frames=4, height=512, width=64, compression_step_percent=1.0, mesh_cells=(16, 8))
    sequence = simulate_sequence(config, seed=1)
    if history_fallback:  # also match around the previous pair's field and keep the better-correlated pixels
        monkeypatch.setattr(BlockMatchingEstimator, "POOR_FRACTION", -1.0)
    estimator = BlockMatchingEstimator(BlockMatchingParams(axial_search=6), device="cpu")
    result = estimator.estimate(sequence.rf[[0, 0, 2, 3]], 0.02, window_mm=2.0)
    rows = slice(60, -60)
    assert np.abs(result.strain[0, rows]).max() < 0.05  # identical frames: no strain (in %)
    for estimated, truth in zip(result.strain[1:], sequence.strain_percent[1:]):
        assert np.median(estimated[rows]) == pytest.approx(np.median(truth[rows]), rel=0.05)
        assert np.median(np.abs(estimated[rows] - truth[rows])) < 0.1 * np.abs(np.median(truth[rows]))


# ---------------------------------------------------------------- strain command


def _write_rf(path: Path, rf: np.ndarray) -> Image:
    image = Image(rf, SPACING, (5.0, -1.0, 0.0))
    write_image(path, image)
    return image


def test_strain_command_keeps_geometry_crops_and_draws(tmp_path: Path, small_bundle: Path) -> None:
    rf = (_speckle(np.random.default_rng(5), (3, 50, 20)) * 1000).astype(np.int16)
    source = _write_rf(tmp_path / "rf.mha", rf)
    out, bmode, figures = tmp_path / "strain.mha", tmp_path / "bmode.nrrd", tmp_path / "png"
    code = main(
        [
            "strain",
            str(tmp_path / "rf.mha"),
            "-o",
            str(out),
            "--model",
            str(small_bundle),
            "--device",
            "cpu",
            "--window-mm",
            str(WINDOW_MM),
            "--crop",
            "5:-3",
            "--bmode",
            str(bmode),
            "--png",
            str(figures),
        ]
    )
    assert code == 0
    strain = read_image(out)
    assert strain.array.shape == (2, 42, 20) and strain.array.dtype == np.float32
    assert strain.spacing == pytest.approx(source.spacing)
    assert strain.origin == pytest.approx((5.0, -1.0 + 5 * 0.02, 0.0))
    bmode_image = read_image(bmode)
    assert bmode_image.array.shape == (3, 42, 20) and bmode_image.array.max() == pytest.approx(0.0)
    pngs = sorted(figures.glob("*.png"))
    assert [p.name for p in pngs] == ["rf_strain_0001.png", "rf_strain_0002.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_strain_command_uncropped_origin_equals_input(tmp_path: Path) -> None:
    rf = _compressed_sequence([-1.0], height=200, width=4)
    source = _write_rf(tmp_path / "rf.nrrd", rf)
    code = main(["strain", str(tmp_path / "rf.nrrd"), "-o", str(tmp_path / "s.mha"), "--baseline", "--window-mm", "1"])
    assert code == 0
    strain = read_image(tmp_path / "s.mha")
    assert strain.origin == pytest.approx(source.origin) and strain.spacing == pytest.approx(source.spacing)
    assert np.median(strain.array[0, 40:-40]) == pytest.approx(-1.0, rel=0.1)


def test_strain_command_half_precision_is_close_to_float32_and_refused_on_onnxruntime(
    tmp_path: Path, small_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_rf(tmp_path / "rf.mha", _compressed_sequence([-1.0, -2.0], height=128))
    base = ["strain", str(tmp_path / "rf.mha"), "--model", str(small_bundle), "--device", "cpu"]
    base += ["--backend", "torch", "--window-mm", str(WINDOW_MM)]
    assert main([*base, "-o", str(tmp_path / "full.mha")]) == 0
    assert main([*base, "-o", str(tmp_path / "half.mha"), "--half"]) == 0
    full, half = read_image(tmp_path / "full.mha").array, read_image(tmp_path / "half.mha").array
    assert 0 < np.abs(half - full).max() <= 0.05 * np.abs(full).max()  # float16 rounding, nothing more
    capsys.readouterr()
    refused = [*base[:-4], "--backend", "onnxruntime", "--half", "-o", str(tmp_path / "x.mha")]
    assert main(refused) == 2
    assert "half precision runs on the torch and torchscript backends" in capsys.readouterr().err


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    write_image(tmp_path / "two_d.mha", Image(np.zeros((16, 16), np.float32)))
    write_image(tmp_path / "one.mha", Image(np.ones((1, 16, 16), np.float32)))
    nan = np.ones((3, 16, 16), np.float32)
    nan[2, 0, 0] = np.nan
    write_image(tmp_path / "nan.mha", Image(nan))
    return {
        "2d": (tmp_path / "two_d.mha", "3D (frames, rows, cols) sequence"),
        "one frame": (tmp_path / "one.mha", "at least 2 are needed"),
        "nan": (tmp_path / "nan.mha", "RF frame 2 holds 1 NaN"),
        "missing": (tmp_path / "absent.mha", "absent.mha"),
    }


@pytest.mark.parametrize("case", ["2d", "one frame", "nan", "missing"])
def test_strain_command_bad_input_is_one_clean_line(
    tmp_path: Path, small_bundle: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    path, message = _bad_inputs(tmp_path)[case]
    code = main(["strain", str(path), "-o", str(tmp_path / "s.mha"), "--model", str(small_bundle)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_strain_command_without_model_says_how_to_get_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_resolution, "model_directories", lambda: [tmp_path / "no-models"])
    _write_rf(tmp_path / "rf.mha", _speckle(np.random.default_rng(6), (2, 16, 16)))
    assert main(["strain", str(tmp_path / "rf.mha"), "-o", str(tmp_path / "s.mha")]) == 2
    err = capsys.readouterr().err
    assert "no DeepUSE model is installed" in err and "import-deepuse" in err and "Traceback" not in err
    assert main(["strain", str(tmp_path / "rf.mha"), "-o", str(tmp_path / "s.mha"), "--model", "nope"]) == 2
    assert "'nope' is neither a bundle folder" in capsys.readouterr().err


# ---------------------------------------------------------------- bench


def test_bench_strain_prints_json_last(tmp_path: Path, small_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = Path(shutil.copytree(small_bundle, tmp_path / "bundle"))
    # a layer (and here an inclusion) for a strain contrast; a homogeneous phantom has none
    simulation = json.dumps({"n_frames": 3, "height": 128, "width": 16, "mesh_cells": [8, 4], "layer_probability": 1.0})
    code = main(
        [
            "bench",
            "strain",
            "--model",
            str(bundle),
            "--sequences",
            "1",
            "--simulation",
            simulation,
            "--crop",
            ":",
            "--window-mm",
            str(WINDOW_MM),
            "--device",
            "cpu",
            "--invivo",
            str(tmp_path / "none"),
            "--record",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(lines[-1])
    methods = figures["simulated"]["methods"]
    assert figures["suite"] == "strain" and figures["simulated"]["pairs"] == 2
    assert set(methods) == {"tiny-reusenet", "block matching", "block matching (direct)", "uniform", "oracle"}
    assert methods["oracle"]["nrmse"] < methods["tiny-reusenet"]["nrmse"]
    assert methods["oracle"]["nrmse_contrast"] < methods["tiny-reusenet"]["nrmse_contrast"]
    # a uniform strain has no contrast: its contrast NRMSE is 1 whatever its level, and no SNRe/CNRe
    assert methods["uniform"]["nrmse_contrast"] == pytest.approx(1.0, abs=0.02)
    assert methods["uniform"]["nrmse"] < methods["block matching"]["nrmse"]  # the mean strain dominates NRMSE
    assert methods["uniform"]["snr_e"] is None and methods["uniform"]["cnr_e"] is None
    assert "skipped" in figures["invivo"]
    assert any(line.startswith("block matching") for line in lines[:-1])
    # --record: the same figures in the bundle's manifest, which still verifies
    recorded = load_bundle(bundle).manifest.metrics["bench_strain"]
    assert recorded["simulated"] == figures["simulated"] and recorded["invivo"] == figures["invivo"]
    assert recorded["command"].startswith("deepultrasound bench strain --model") and "--record" in recorded["command"]
