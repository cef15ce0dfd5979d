"""Model runtime: bundle export/load round trips, backend parity, tamper detection, atomic save,
bundle listing, device choice and input validation, on tiny networks (a conv net, a ConvGRU, a
recurrent net that takes its states as ``*states``, a net with integer inputs and outputs, and a
second network beside the conv net); the manifest's inference section and format-1 migration."""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deepultrasound import cli
from deepultrasound.errors import BundleError, InputError
from deepultrasound.runtime import (
    MODELS_ENVIRONMENT_VARIABLE,
    BundleSummary,
    Predictor,
    RecurrentPredictor,
    StateSpec,
    build_architecture,
    bundled_models_dir,
    check_parity,
    choose_device,
    create_predictor,
    find_bundles,
    list_bundles,
    load_bundle,
    model_directories,
    record_metrics,
    register_architecture,
    registered_architectures,
    save_bundle,
)
from deepultrasound.runtime import export as export_module
from deepultrasound.runtime.bundle import NetworkExport
from deepultrasound.runtime.device import DEVICE_ENVIRONMENT_VARIABLE, available_devices
from deepultrasound.runtime.inference_specs import ElastographyInference, SuperResolutionInference
from deepultrasound.runtime.manifest import Manifest, migrate_manifest
from deepultrasound.runtime.parity import verify_parity
from deepultrasound.training.config import TrainConfig
from deepultrasound.training.export import export_bundle
from deepultrasound.training.task import ComponentExport, ExportSpec

BACKENDS = ("torch", "torchscript", "onnxruntime")
# the architectures are registered below; the manifest must still name a module of the package
MODULE = "deepultrasound.runtime.architectures"


@register_architecture("test-tiny-conv")
class TinyConvNet(nn.Module):
    """(B, 2, H, W) -> (B, 1, H, W); batch-statistics BatchNorm like the DeepUSE networks."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.encode = nn.Conv2d(2, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels, track_running_stats=False)
        self.down = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.head = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.norm(self.encode(frames)))
        coarse = nn.functional.interpolate(torch.relu(self.down(features)), scale_factor=2.0, mode="bilinear")
        return self.head(features + coarse)


@register_architecture("test-tiny-convgru")
class TinyConvGRU(nn.Module):
    """(B, 1, H, W) frame and (B, hidden, H/2, W/2) state -> (B, 2, H, W) output and the new state."""

    def __init__(self, hidden: int = 3) -> None:
        super().__init__()
        self.down = nn.Conv2d(1, hidden, 3, stride=2, padding=1)
        self.gates = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1)
        self.candidate = nn.Conv2d(2 * hidden, hidden, 3, padding=1)
        self.head = nn.Conv2d(hidden, 2, 3, padding=1)

    def forward(self, frame: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.tanh(self.down(frame))
        update, reset = torch.sigmoid(self.gates(torch.cat([x, state], 1))).chunk(2, 1)
        candidate = torch.tanh(self.candidate(torch.cat([x, reset * state], 1)))
        new_state = (1 - update) * state + update * candidate
        return self.head(nn.functional.interpolate(new_state, scale_factor=2.0)), new_state


@register_architecture("test-tiny-varstates")
class TinyVarStatesNet(nn.Module):
    """(B, 1, H, W) frame and ``*states`` = ((B, hidden, H/2, W/2), (B, 1, H, W)) -> (B, 1, H, W)
    output and the two new states, like ReUSENet's ``forward(x, *states)``."""

    def __init__(self, hidden: int = 2) -> None:
        super().__init__()
        self.down = nn.Conv2d(1, hidden, 3, stride=2, padding=1)
        self.head = nn.Conv2d(hidden + 1, 1, 3, padding=1)

    def forward(self, frame: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        coarse, fine = states
        coarse = torch.tanh(self.down(frame) + 0.5 * coarse)
        fine = 0.5 * (fine + frame)
        return self.head(torch.cat([nn.functional.interpolate(coarse, scale_factor=2.0), fine], 1)), coarse, fine


@register_architecture("test-tiny-labelled")
class TinyLabelledNet(nn.Module):
    """(B, 1, H, W) float image, (B, H, W) int64 label map of 3 classes, (B,) int64 timesteps < 10
    -> (B, 1, H, W) float image and (B, H, W) int64 class map, like a label-conditioned denoiser."""

    def __init__(self, classes: int = 3, timesteps: int = 10) -> None:
        super().__init__()
        self.label_embedding = nn.Embedding(classes, 2)
        self.time_embedding = nn.Embedding(timesteps, 2)
        self.mix = nn.Conv2d(3, classes + 1, 3, padding=1)

    def forward(self, image: torch.Tensor, labels: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, ...]:
        condition = self.label_embedding(labels).permute(0, 3, 1, 2) + self.time_embedding(timestep)[:, :, None, None]
        mixed = self.mix(torch.cat([image, condition], dim=1))
        return mixed[:, :1], mixed[:, 1:].argmax(dim=1)


@register_architecture("test-tiny-head")
class TinyHead(nn.Module):
    """(B, 1, H, W) -> (B, 3, H, W): a second network that reads the conv net's output."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, classes, 3, padding=1)

    def forward(self, strain: torch.Tensor) -> torch.Tensor:
        return self.conv(strain)


LABEL_VALUES = [0, 1, 2]
TIMESTEPS = (0, 9)


def _conv_model() -> TinyConvNet:
    torch.manual_seed(0)
    return TinyConvNet(4)


def _save_conv(directory: Path, model: nn.Module | None = None, **overrides) -> Path:
    model = model or _conv_model()
    arguments = dict(
        name="tiny-conv",
        version="1.0",
        task="test",
        architecture="test-tiny-conv",
        architecture_module=MODULE,
        architecture_args={"channels": 4},
        example_inputs=(torch.randn(1, 2, 16, 12),),
        input_names=["frames"],
        output_names=["strain"],
        metrics={"rmse": 0.1},
    )
    arguments.update(overrides)
    return save_bundle(directory, model, **arguments)


@pytest.fixture(scope="module")
def conv_bundle(tmp_path_factory) -> Path:
    return _save_conv(tmp_path_factory.mktemp("bundles") / "conv")


@pytest.fixture(scope="module")
def gru_bundle(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    return save_bundle(
        tmp_path_factory.mktemp("bundles") / "gru",
        TinyConvGRU(3),
        name="tiny-gru",
        version="1.0",
        task="test",
        architecture="test-tiny-convgru",
        architecture_module=MODULE,
        architecture_args={"hidden": 3},
        example_inputs=(torch.randn(1, 1, 16, 8),),
        input_names=["frame"],
        output_names=["displacement"],
        states=[StateSpec(input="state", output="next_state", channels=3, stride=2)],
    )


@pytest.fixture(scope="module")
def varstates_bundle(tmp_path_factory) -> Path:
    torch.manual_seed(2)
    return save_bundle(
        tmp_path_factory.mktemp("bundles") / "varstates",
        TinyVarStatesNet(2),
        name="tiny-varstates",
        version="1.0",
        task="test",
        architecture="test-tiny-varstates",
        architecture_module=MODULE,
        architecture_args={"hidden": 2},
        example_inputs=(torch.randn(1, 1, 16, 8),),
        input_names=["frame"],
        output_names=["output"],
        states=[
            StateSpec(input="coarse", output="next_coarse", channels=2, stride=2),
            StateSpec(input="fine", output="next_fine", channels=1, stride=1),
        ],
    )


def _labelled_example(batch: int = 2, height: int = 16, width: int = 12, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 1, height, width, generator=generator),
        torch.randint(0, 3, (batch, height, width), generator=generator),
        torch.randint(0, 10, (batch,), generator=generator),
    )


@pytest.fixture(scope="module")
def labelled_bundle(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    return save_bundle(
        tmp_path_factory.mktemp("bundles") / "labelled",
        TinyLabelledNet(),
        name="tiny-labelled",
        version="1.0",
        task="test",
        architecture="test-tiny-labelled",
        architecture_module=MODULE,
        architecture_args={},
        example_inputs=_labelled_example(),
        input_names=["image", "labels", "timestep"],
        output_names=["denoised", "classes"],
        input_values={"labels": LABEL_VALUES},
        input_ranges={"timestep": TIMESTEPS},
    )


@pytest.fixture(scope="module")
def two_network_bundle(tmp_path_factory) -> tuple[Path, TinyConvNet, TinyHead]:
    torch.manual_seed(4)
    main, head = _conv_model(), TinyHead()
    head_export = NetworkExport(
        architecture="test-tiny-head",
        architecture_module=MODULE,
        architecture_args={},
        example_inputs=(torch.randn(1, 1, 16, 12),),
        input_names=["strain"],
        output_names=["scores"],
    )
    path = _save_conv(tmp_path_factory.mktemp("bundles") / "two", model=main, components={"head": (head, head_export)})
    return path, main, head


@pytest.fixture
def conv_copy(conv_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(conv_bundle, tmp_path / "copy"))


# --- export and parity ---------------------------------------------------------------------


def test_manifest_describes_the_export(conv_bundle, gru_bundle):
    conv = load_bundle(conv_bundle).manifest
    assert [spec.shape for spec in conv.inputs] == [["B", 2, "H", "W"]]
    assert [spec.shape for spec in conv.outputs] == [["B", 1, "H", "W"]]
    assert conv.example_shapes == [[1, 2, 16, 12]]
    assert sorted(conv.files) == ["model.onnx", "model.torchscript.pt", "weights.safetensors"]
    gru = load_bundle(gru_bundle).manifest
    assert [spec.name for spec in gru.graph_inputs()] == ["frame", "state"]
    assert [spec.shape for spec in gru.graph_outputs()] == [["B", 2, "H", "W"], ["B", 3, "H//2", "W//2"]]


def test_onnx_graph_has_named_dynamic_axes(gru_bundle):
    import onnx

    graph = onnx.load(str(load_bundle(gru_bundle).file("onnx"))).graph

    def dims(values):
        return {value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] for value in values}

    assert dims(graph.input) == {"frame": ["B", 1, "H", "W"], "state": ["B", 3, "H//2", "W//2"]}
    assert dims(graph.output) == {"displacement": ["B", 2, "H", "W"], "next_state": ["B", 3, "H//2", "W//2"]}
    assert graph.input[0].name == "frame" and graph.output[1].name == "next_state"


@pytest.mark.parametrize("shape", [(1, 2, 16, 12), (2, 2, 24, 20)], ids=["example", "dynamic"])
def test_backends_agree_with_the_original_model(conv_bundle, shape):
    frames = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        truth = _conv_model().eval()(torch.from_numpy(frames)).numpy()
    for backend in BACKENDS:
        (strain,) = create_predictor(conv_bundle, backend, device="cpu").predict(frames)
        assert strain.dtype == np.float32 and strain.shape == (shape[0], 1, *shape[2:])
        np.testing.assert_allclose(strain, truth, atol=1e-4, err_msg=backend)


def test_parity_report(conv_bundle):
    report = check_parity(conv_bundle)
    assert report.ok and report.reference == "torch" and set(report.differences) == {"torchscript", "onnxruntime"}
    assert all(value <= 1e-4 for diffs in report.differences.values() for value in diffs.values())
    assert "OK" in str(report) and "onnxruntime" in str(report)
    strict = check_parity(conv_bundle, atol=0.0, inputs=[np.full((1, 2, 8, 8), 1e3, np.float32)])
    assert strict.input_shapes == [(1, 2, 8, 8)]
    assert strict.ok == (max(strict.max_difference(b) for b in strict.differences) == 0.0)


def test_recurrent_state_is_carried_and_agrees_across_backends(gru_bundle):
    rng = np.random.default_rng(5)
    frames = [rng.standard_normal((1, 1, 20, 12)).astype(np.float32) for _ in range(3)]  # not the example size
    torch.manual_seed(1)
    model, state, truth = TinyConvGRU(3).eval(), torch.zeros(1, 3, 10, 6), []
    with torch.no_grad():
        for frame in frames:
            output, state = model(torch.from_numpy(frame), state)
            truth.append(output.numpy())
    for backend in BACKENDS:
        recurrent = RecurrentPredictor(create_predictor(gru_bundle, backend, device="cpu"))
        outputs = [recurrent.step(frame)[0] for frame in frames]
        for step, (output, expected) in enumerate(zip(outputs, truth)):
            np.testing.assert_allclose(output, expected, atol=1e-4, err_msg=f"{backend} step {step}")
        np.testing.assert_allclose(recurrent.states[0], state.numpy(), atol=1e-4)
        recurrent.reset()
        np.testing.assert_allclose(recurrent.step(frames[0])[0], truth[0], atol=1e-4)
    assert not np.allclose(truth[1], truth[2])  # the state changes what the same network returns
    assert check_parity(gru_bundle, steps=3).ok


def test_states_taken_as_varargs_export_with_dynamic_shapes(varstates_bundle):
    import onnx

    graph = onnx.load(str(load_bundle(varstates_bundle).file("onnx"))).graph
    assert [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input] == [
        ["B", 1, "H", "W"],
        ["B", 2, "H//2", "W//2"],
        ["B", 1, "H", "W"],
    ]
    rng = np.random.default_rng(6)
    frames = [rng.standard_normal((2, 1, 24, 20)).astype(np.float32) for _ in range(3)]  # not the example size
    torch.manual_seed(2)
    model, states, truth = TinyVarStatesNet(2).eval(), (torch.zeros(2, 2, 12, 10), torch.zeros(2, 1, 24, 20)), []
    with torch.no_grad():
        for frame in frames:
            output, *states = model(torch.from_numpy(frame), *states)
            truth.append(output.numpy())
    for backend in BACKENDS:
        recurrent = RecurrentPredictor(create_predictor(varstates_bundle, backend, device="cpu"))
        for step, (frame, expected) in enumerate(zip(frames, truth)):
            np.testing.assert_allclose(recurrent.step(frame)[0], expected, atol=1e-5, err_msg=f"{backend} step {step}")
        for ours, theirs in zip(recurrent.states, states):
            np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5, err_msg=backend)
    assert not np.allclose(truth[1], truth[2], atol=1e-3)  # the states change what the same network returns
    assert check_parity(varstates_bundle, steps=3).ok


def test_tensor_predictions_equal_array_predictions_and_stay_tensors(conv_bundle, gru_bundle):
    rng = np.random.default_rng(8)
    frames = rng.standard_normal((1, 2, 20, 12)).astype(np.float32)
    sequence = [rng.standard_normal((1, 1, 20, 12)).astype(np.float32) for _ in range(3)]
    for backend in BACKENDS:
        predictor = create_predictor(conv_bundle, backend, device="cpu")
        (expected,) = predictor.predict(frames)
        (output,) = predictor.predict_tensors(torch.from_numpy(frames))
        assert isinstance(output, torch.Tensor) and output.dtype == torch.float32
        np.testing.assert_array_equal(output.numpy(), expected, err_msg=backend)
        with pytest.raises(InputError, match="shape|rank|size"):
            predictor.predict_tensors(torch.zeros(1, 3, 20, 12))

        recurrent = RecurrentPredictor(create_predictor(gru_bundle, backend, device="cpu"))
        predictor = create_predictor(gru_bundle, backend, device="cpu")
        state = torch.zeros(1, 3, 10, 6)  # states in and out explicitly, as the strain estimator holds them
        for frame in sequence:
            (expected,) = recurrent.step(frame)
            output, state = predictor.predict_tensors(torch.from_numpy(frame), state)
            np.testing.assert_allclose(output.numpy(), expected, atol=1e-6, err_msg=backend)
        np.testing.assert_allclose(state.numpy(), recurrent.states[0], atol=1e-6)


def test_half_precision_runs_the_weights_in_float16_and_returns_float32(conv_bundle):
    frames = np.random.default_rng(9).standard_normal((1, 2, 16, 12)).astype(np.float32)
    (full,) = create_predictor(conv_bundle, "torch", device="cpu").predict(frames)
    for backend in ("auto", "torch", "torchscript"):
        predictor = create_predictor(conv_bundle, backend, device="cpu", half=True)
        assert predictor.backend in ("torch", "torchscript")  # auto does not pick ONNX Runtime for float16
        (half,) = predictor.predict(frames)
        assert half.dtype == np.float32
        # float16 keeps ~3 significant digits: close to the float32 result, and not identical to it
        np.testing.assert_allclose(half, full, atol=2e-2 * np.abs(full).max(), err_msg=backend)
        assert np.abs(half - full).max() > 0
    with pytest.raises(InputError, match="half precision"):
        create_predictor(conv_bundle, "onnxruntime", device="cpu", half=True)


# --- integrity ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["weights.safetensors", "model.torchscript.pt", "model.onnx"])
def test_one_flipped_byte_is_refused(conv_copy, name):
    path = conv_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=name.replace(".", r"\.") + ".*sha256"):
        load_bundle(conv_copy)


def test_recorded_metrics_keep_the_bundle_valid(conv_copy):
    saved = load_bundle(conv_copy).manifest.metrics
    record_metrics(conv_copy, "bench", {"nrmse": 0.25, "rows": {"baseline": None}})
    manifest = record_metrics(conv_copy, "other", {"fps": 30})
    assert manifest.metrics == {**saved, "bench": {"nrmse": 0.25, "rows": {"baseline": None}}, "other": {"fps": 30}}
    assert load_bundle(conv_copy).manifest.metrics == manifest.metrics  # checksums unchanged, still verifies
    with pytest.raises(BundleError, match="cannot be stored"):
        record_metrics(conv_copy, "bench", {"nrmse": float("nan")})
    assert load_bundle(conv_copy).manifest.metrics == manifest.metrics  # a refused record changes nothing
    (conv_copy / "model.onnx").write_bytes(b"modified")
    with pytest.raises(BundleError, match="sha256"):
        record_metrics(conv_copy, "bench", {})


def test_truncated_and_missing_files_are_refused(conv_copy):
    weights = conv_copy / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(BundleError, match=r"weights\.safetensors.*truncated"):
        load_bundle(conv_copy)
    (conv_copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"model\.onnx.*missing"):
        load_bundle(conv_copy)
    (conv_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        load_bundle(conv_copy)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(surprise=1), "surprise"),
        (lambda m: m.update(format_version=99), "format_version 99"),
        (lambda m: m.update(architecture_module="os"), "architecture_module"),
        (lambda m: m["files"].update({"../escape.bin": "0" * 64}), "escape"),
    ],
    ids=["unknown-key", "format-version", "untrusted-module", "path-escape"],
)
def test_invalid_manifests_are_refused(conv_copy, change, message):
    manifest = json.loads((conv_copy / "manifest.json").read_text())
    change(manifest)
    (conv_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        load_bundle(conv_copy)


def test_invalid_json_is_refused(conv_copy):
    (conv_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(conv_copy)


def test_architecture_registry(conv_bundle, monkeypatch):
    assert {"test-tiny-conv", "test-tiny-convgru"} <= set(registered_architectures())
    with pytest.raises(BundleError, match="unknown architecture 'nope'.*test-tiny-conv"):
        build_architecture("nope", {})
    with pytest.raises(BundleError, match="cannot be built"):
        build_architecture("test-tiny-conv", {"colours": 3})
    with pytest.raises(ValueError, match="already registered"):
        register_architecture("test-tiny-conv")(TinyConvGRU)
    # not registered: loading imports the manifest's module, which does not register it here
    from deepultrasound.runtime import architectures

    monkeypatch.delitem(architectures._REGISTRY, "test-tiny-conv")
    with pytest.raises(BundleError, match="does not register architecture 'test-tiny-conv'"):
        load_bundle(conv_bundle).build_torch_model()


def test_save_refuses_architecture_that_does_not_rebuild_the_model(tmp_path):
    with pytest.raises(BundleError, match="does not rebuild"):
        _save_conv(tmp_path / "bad", architecture_args={"channels": 5})
    assert list(tmp_path.iterdir()) == []


# --- atomic save -------------------------------------------------------------------------


def test_failed_export_leaves_no_bundle_and_keeps_the_older_one(conv_bundle, tmp_path, monkeypatch):
    older = Path(shutil.copytree(conv_bundle, tmp_path / "model"))
    before = {path.name: path.read_bytes() for path in older.iterdir()}

    def fail(*args, **kwargs):
        raise BundleError("ONNX export failed: simulated")

    monkeypatch.setattr(export_module, "write_onnx", fail)
    for target in (older, tmp_path / "new"):
        with pytest.raises(BundleError, match="simulated"):
            _save_conv(target, version="2.0")
    assert {path.name: path.read_bytes() for path in older.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # no new bundle, no temporary folders
    load_bundle(older)


def test_save_replaces_an_older_bundle_and_never_a_foreign_folder(tmp_path):
    target = _save_conv(tmp_path / "model", formats=())
    assert load_bundle(_save_conv(target, version="2.0", formats=())).manifest.version == "2.0"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]
    foreign = tmp_path / "documents"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(BundleError, match="not a model bundle"):
        _save_conv(foreign, formats=())
    assert (foreign / "thesis.txt").read_text() == "precious"
    assert find_bundles([tmp_path, tmp_path / "absent"]) == [target]
    assert find_bundles([target]) == [target]


def test_weights_only_bundle(tmp_path):
    bundle = load_bundle(_save_conv(tmp_path / "model", formats=()))
    with pytest.raises(BundleError, match="without that format"):
        create_predictor(bundle, "onnxruntime")
    (strain,) = create_predictor(bundle, "torch", device="cpu").predict(np.zeros((1, 2, 8, 8), np.float32))
    assert strain.shape == (1, 1, 8, 8)


def test_list_bundles_reads_manifests_only(conv_bundle, gru_bundle, tmp_path, monkeypatch, caplog):
    shelf = tmp_path / "shelf"
    conv = Path(shutil.copytree(conv_bundle, shelf / "conv"))
    (conv / "weights.safetensors").write_bytes(b"tampered")  # still listed: checksums are checked on loading
    (shelf / "broken").mkdir()
    (shelf / "broken" / "manifest.json").write_text("{not json")
    (shelf / "notes").mkdir()
    assert list_bundles([shelf, gru_bundle, tmp_path / "absent", gru_bundle]) == [
        BundleSummary(name="tiny-conv", task="test", version="1.0", path=conv, description=""),
        BundleSummary(name="tiny-gru", task="test", version="1.0", path=gru_bundle, description=""),
    ]
    assert "broken" in caplog.text and "not valid JSON" in caplog.text
    monkeypatch.setenv(MODELS_ENVIRONMENT_VARIABLE, os.pathsep.join([str(shelf), "", str(gru_bundle)]))
    assert model_directories() == [bundled_models_dir(), shelf, gru_bundle]
    assert [summary.path for summary in list_bundles() if tmp_path in summary.path.parents] == [conv]
    assert gru_bundle in [summary.path for summary in list_bundles()]
    monkeypatch.delenv(MODELS_ENVIRONMENT_VARIABLE)
    assert model_directories() == [bundled_models_dir()]


# --- device choice -----------------------------------------------------------------------


def test_device_choice_precedence(monkeypatch):
    monkeypatch.delenv(DEVICE_ENVIRONMENT_VARIABLE, raising=False)
    automatic = choose_device()
    assert str(automatic).split(":")[0] in {"cpu", "cuda", "mps"} and choose_device("auto") == automatic
    monkeypatch.setenv(DEVICE_ENVIRONMENT_VARIABLE, "cpu")
    assert choose_device() == torch.device("cpu") and choose_device("auto") == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENVIRONMENT_VARIABLE, "cuda:99")
    assert choose_device("cpu") == torch.device("cpu")  # the argument wins over the environment
    with pytest.raises(InputError, match=f"{DEVICE_ENVIRONMENT_VARIABLE}.*available: cpu"):
        choose_device()


def test_unavailable_device_is_refused():
    with pytest.raises(InputError, match="'cuda:99'.*not available here; available: cpu"):
        choose_device("cuda:99")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        choose_device("tpu")
    if "mps" not in available_devices():
        with pytest.raises(InputError, match="'mps'.*available: cpu"):
            choose_device("mps")


# --- input validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs, message",
    [
        ([], r"expected 2 input\(s\): frame \(B, 1, H, W\), state \(B, 3, H//2, W//2\); got 0"),
        ([np.zeros((1, 16, 8))], "expected 2 input"),
        ([np.zeros((1, 16, 8)), np.zeros((1, 3, 8, 4))], r"shape \(1, 16, 8\), expected \(B, 1, H, W\).*rank 3"),
        ([np.zeros((1, 2, 16, 8)), np.zeros((1, 3, 8, 4))], "axis 1 is 2, must be 1"),
        ([np.zeros((1, 1, 16, 8)), np.zeros((1, 3, 8, 5))], r"state.*axis 3 \(W//2\) is 5, must be 4"),
        ([np.zeros((1, 1, 16, 8)), np.zeros((2, 3, 8, 4))], r"axis 0 \(B\) is 2 but B = 1"),
        ([np.full((1, 1, 16, 8), np.nan), np.zeros((1, 3, 8, 4))], "NaN"),
        ([np.array([["a"]]).reshape(1, 1, 1, 1).repeat(2, 2), np.zeros((1, 3, 1, 0))], "numeric"),
    ],
    ids=["none", "count", "rank", "channels", "state-size", "batch", "nan", "dtype"],
)
def test_input_validation(gru_bundle, inputs, message):
    predictor = create_predictor(gru_bundle, "torch", device="cpu")
    with pytest.raises(InputError, match=message):
        predictor.predict(*inputs)


def test_predictor_options_are_validated(gru_bundle):
    with pytest.raises(InputError, match="unknown backend 'tensorrt'"):
        create_predictor(gru_bundle, "tensorrt")
    with pytest.raises(InputError, match="threads"):
        create_predictor(gru_bundle, "onnxruntime", threads=0)
    predictor = create_predictor(gru_bundle, "onnxruntime", device="cpu", threads=1)
    assert predictor.backend == "onnxruntime" and predictor.device == torch.device("cpu")
    with pytest.raises(InputError, match="step takes 1 data input"):
        RecurrentPredictor(predictor).step()


def test_auto_backend_takes_onnx_runtime_on_the_cpu_when_the_bundle_has_a_graph(conv_bundle, tmp_path):
    assert create_predictor(conv_bundle, "auto", device="cpu").backend == "onnxruntime"
    weights_only = _save_conv(tmp_path / "weights-only", formats=())
    assert create_predictor(weights_only, "auto", device="cpu").backend == "torch"


# --- command line ------------------------------------------------------------------------


def test_bundle_command(gru_bundle, conv_copy, capsys):
    assert cli.main(["bundle", str(gru_bundle), "--parity"]) == 0
    out = capsys.readouterr().out
    assert "tiny-gru 1.0" in out and "state -> next_state" in out and "parity of tiny-gru 1.0: OK" in out
    (conv_copy / "model.onnx").write_bytes(b"tampered")
    assert cli.main(["bundle", str(conv_copy)]) == 2
    assert "model.onnx" in capsys.readouterr().err


# --- tensor dtypes -------------------------------------------------------------------------


def test_integer_and_channel_less_inputs_are_described_by_dtype_and_domain(labelled_bundle):
    manifest = load_bundle(labelled_bundle).manifest
    described = {spec.name: (spec.shape, spec.dtype, spec.values, spec.range) for spec in manifest.inputs}
    assert described == {
        "image": (["B", 1, "H", "W"], "float32", None, None),
        "labels": (["B", "H", "W"], "int64", LABEL_VALUES, None),
        "timestep": (["B"], "int64", None, TIMESTEPS),
    }
    assert [(spec.shape, spec.dtype) for spec in manifest.outputs] == [
        (["B", 1, "H", "W"], "float32"),
        (["B", "H", "W"], "int64"),
    ]


def test_integer_inputs_and_outputs_agree_across_backends(labelled_bundle):
    inputs = [tensor.numpy() for tensor in _labelled_example(batch=3, height=24, width=20, seed=5)]
    model = load_bundle(labelled_bundle).build_torch_model()
    with torch.no_grad():
        expected = [tensor.numpy() for tensor in model(*map(torch.from_numpy, inputs))]
    for backend in BACKENDS:
        denoised, classes = create_predictor(labelled_bundle, backend, device="cpu").predict(*inputs)
        assert denoised.dtype == np.float32 and classes.dtype == np.int64, backend
        np.testing.assert_allclose(denoised, expected[0], atol=1e-5, err_msg=backend)
        np.testing.assert_array_equal(classes, expected[1], err_msg=backend)
    tensors = create_predictor(labelled_bundle, "torch", device="cpu").predict_tensors(*map(torch.from_numpy, inputs))
    assert [tensor.dtype for tensor in tensors] == [torch.float32, torch.int64]


def test_parity_draws_inputs_within_each_spec(labelled_bundle, monkeypatch):
    drawn = []
    original = Predictor.predict

    def recording(self, *inputs):
        drawn.append(inputs)
        return original(self, *inputs)

    monkeypatch.setattr(Predictor, "predict", recording)
    report = check_parity(labelled_bundle)
    assert report.ok and set(report.differences) == {"torchscript", "onnxruntime"}, report
    assert len(drawn) == 3
    for image, labels, timestep in drawn:
        assert image.dtype == np.float32 and labels.dtype == np.int64 and timestep.dtype == np.int64
        assert set(np.unique(labels)) == set(LABEL_VALUES)
        assert TIMESTEPS[0] <= timestep.min() and timestep.max() <= TIMESTEPS[1]


@pytest.mark.parametrize(
    "index, value, message",
    [
        (1, 3, r"values \[3\] not among its values \[0, 1, 2\]"),
        (1, 0.5, "whole numbers"),
        (2, 10, r"outside its range \[0.0, 9.0\]"),
    ],
    ids=["unknown-label", "fractional-label", "timestep-out-of-range"],
)
def test_integer_inputs_outside_their_domain_are_refused(labelled_bundle, index, value, message):
    inputs = [tensor.numpy().astype(np.float64) for tensor in _labelled_example()]
    inputs[index].flat[0] = value
    with pytest.raises(InputError, match=message):
        create_predictor(labelled_bundle, "torch", device="cpu").predict(*inputs)


def test_integer_inputs_need_a_domain(tmp_path):
    with pytest.raises(InputError, match="integer input 'labels' needs a range or values"):
        save_bundle(
            tmp_path / "b",
            TinyLabelledNet(),
            name="b",
            version="1",
            task="test",
            architecture="test-tiny-labelled",
            architecture_module=MODULE,
            architecture_args={},
            example_inputs=_labelled_example(),
            input_names=["image", "labels", "timestep"],
            output_names=["denoised", "classes"],
            input_ranges={"timestep": TIMESTEPS},
        )
    assert not (tmp_path / "b").exists()


# --- several networks in one bundle ---------------------------------------------------------


def test_a_bundle_holds_several_networks_each_loaded_and_run_by_name(two_network_bundle):
    path, main, head = two_network_bundle
    bundle = load_bundle(path)
    assert bundle.manifest.network_names() == ["main", "head"]
    assert sorted(bundle.manifest.files) == [
        "head.model.onnx",
        "head.model.torchscript.pt",
        "head.weights.safetensors",
        "model.onnx",
        "model.torchscript.pt",
        "weights.safetensors",
    ]
    assert bundle.manifest.architecture == "test-tiny-conv"  # single-network code reads the main network
    frames = torch.randn(1, 2, 24, 20)
    with torch.no_grad():
        strain = main(frames)
        scores = head(strain)
    for name, network, example, expected in (("main", None, frames, strain), ("head", "head", strain, scores)):
        rebuilt = bundle.build_torch_model(name=network)
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(example), expected, atol=1e-6, rtol=0)
        for backend in BACKENDS:
            (output,) = create_predictor(bundle, backend, "cpu", network=network).predict(example.numpy())
            np.testing.assert_allclose(output, expected.numpy(), atol=1e-5, err_msg=f"{name} {backend}")
    assert check_parity(bundle, network="head").ok
    with pytest.raises(InputError, match="has no network 'vae'; it has main, head"):
        create_predictor(bundle, "torch", "cpu", network="vae")


def test_a_tampered_component_file_is_refused(two_network_bundle, tmp_path):
    copy = Path(shutil.copytree(two_network_bundle[0], tmp_path / "copy"))
    data = bytearray((copy / "head.weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "head.weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"head\.weights\.safetensors fails its sha256 check"):
        load_bundle(copy)


# --- float16 weights ----------------------------------------------------------------------


def test_float16_weights_halve_the_file_and_stay_within_rounding_of_float32(tmp_path):
    torch.manual_seed(5)
    model, arguments = TinyConvNet(32), {"architecture_args": {"channels": 32}, "formats": ("onnx",)}  # 10k weights
    full = _save_conv(tmp_path / "full", model, **arguments)
    half = _save_conv(tmp_path / "half", model, weights_dtype="float16", **arguments)
    size = {path: (path / "weights.safetensors").stat().st_size for path in (full, half)}
    assert size[half] < 0.6 * size[full]
    rebuilt = load_bundle(half).build_torch_model()
    assert all(value.dtype == torch.float32 for value in rebuilt.state_dict().values())
    frames = np.random.default_rng(3).standard_normal((1, 2, 32, 24)).astype(np.float32)
    (reference,) = create_predictor(full, "torch", device="cpu").predict(frames)
    (rounded,) = create_predictor(half, "torch", device="cpu").predict(frames)
    # weights rounded to float16 (relative error <= 2**-11) move the output by a few parts in 1e4
    difference = np.abs(rounded - reference).max()
    assert 0 < difference < 2e-3 * np.abs(reference).max()
    # the graphs were traced from the rounded weights: the backends agree as closely as float32 ones
    assert check_parity(half, atol=1e-5).ok


def test_parity_is_checked_at_export_and_a_disagreeing_graph_is_refused(tmp_path, monkeypatch):
    path = _save_conv(tmp_path / "checked", formats=("onnx",), verify=functools.partial(verify_parity, atol=1e-4))
    figures = load_bundle(path).manifest.metrics["parity"]
    assert (
        set(figures) == {"main"} and set(figures["main"]) == {"onnxruntime"} and figures["main"]["onnxruntime"] < 1e-4
    )
    real_write_onnx = export_module.write_onnx

    def perturbed(model, *args):
        wrong = _conv_model()
        wrong.load_state_dict({key: value + 0.1 for key, value in model.state_dict().items()})
        real_write_onnx(wrong.eval(), *args)

    monkeypatch.setattr(export_module, "write_onnx", perturbed)
    with pytest.raises(BundleError, match="the exported graphs disagree with the network"):
        _save_conv(tmp_path / "broken", formats=("onnx",), verify=functools.partial(verify_parity, atol=1e-4))
    assert not (tmp_path / "broken").exists()


# --- inference section and format 1 ---------------------------------------------------------

FORMAT_1_MANIFEST = Path(__file__).parent / "data" / "manifest_format1_usenet-fast-deepuse.json"


def test_a_format_1_manifest_moves_its_frame_pair_settings_into_inference():
    raw = json.loads(FORMAT_1_MANIFEST.read_text())
    assert raw["format_version"] == 1 and raw["normalisation"]["pairs"] == "previous"
    manifest = Manifest.model_validate(raw)
    assert manifest.format_version == 2
    assert manifest.inference == ElastographyInference(
        pairs="previous", prealign="uniform_strain", input_multiple=(64, 16)
    )
    assert manifest.normalisation == {key: raw["normalisation"][key] for key in ("kind", "description")}
    assert manifest.files == raw["files"] and manifest.architecture_args == raw["architecture_args"]
    assert migrate_manifest(manifest.model_dump(mode="json")) == manifest.model_dump(mode="json")  # 2 stays 2


def test_a_format_1_bundle_loads_and_is_rewritten_as_format_2(conv_copy):
    manifest = json.loads((conv_copy / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and "inference" not in manifest
    for key in ("components", "weights_dtype"):  # format 1 had neither
        del manifest[key]
    manifest.update(format_version=1, task="elastography", normalisation={"kind": "none", "pairs": "previous"})
    (conv_copy / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_bundle(conv_copy).manifest
    assert loaded.inference == ElastographyInference(pairs="previous") and loaded.normalisation == {"kind": "none"}
    record_metrics(conv_copy, "note", {"ok": 1})
    assert json.loads((conv_copy / "manifest.json").read_text())["format_version"] == 2


@pytest.mark.parametrize(
    "inference, message",
    [
        ({"kind": "elastography", "pairs": "first", "window": 3}, "window"),
        ({"kind": "elastography", "version": 2}, "version"),
        ({"kind": "elastography", "pairs": "first", "prealign": "uniform_strain"}, "needs pairs 'previous'"),
        ({"kind": "tomography"}, "tomography"),
        ({"kind": "superres", "factor": 4, "phase": 4}, "phase 4 must be below factor 4"),
        (
            {
                "kind": "diffusion",
                "schedule": {"name": "linear_beta", "num_train_timesteps": 10, "beta_start": 1e-4, "beta_end": 0.02},
                "sampling_steps": 50,
                "label_classes": [{"name": "background", "value": 0}],
                "image_size": [64, 64],
            },
            "sampling_steps 50 exceeds the 10 training steps",
        ),
        (
            {"kind": "registration", "input_size": [128, 128], "label_classes": [{"name": "a", "value": 1}] * 2},
            "distinct",
        ),
    ],
    ids=["unknown-key", "unknown-version", "prealign-first", "unknown-kind", "superres-phase", "diffusion", "labels"],
)
def test_invalid_inference_sections_are_refused(conv_copy, inference, message):
    manifest = json.loads((conv_copy / "manifest.json").read_text())
    manifest["inference"] = inference
    (conv_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        load_bundle(conv_copy)


def test_each_capability_has_an_inference_section(conv_copy):
    sections = {
        "diffusion": {
            "kind": "diffusion",
            "schedule": {"name": "linear_beta", "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02},
            "bmap": {"enabled": True, "eps": 0.97, "probe": "sector", "outside_label": 0},
            "sampler": "ddpm",
            "sampling_steps": 250,
            "guidance_scale": 2.0,
            "label_classes": [{"name": "background", "value": 0}, {"name": "myocardium", "value": 2}],
            "image_size": [256, 256],
        },
        "registration": {"kind": "registration", "input_size": [128, 128], "diffeomorphic": True},
        "superres": {"kind": "superres", "factor": 4, "phase": 1},
        "elastography": {"kind": "elastography", "pairs": "previous", "prealign": "uniform_strain"},
    }
    for kind, section in sections.items():
        manifest = json.loads((conv_copy / "manifest.json").read_text())
        manifest["inference"] = section
        (conv_copy / "manifest.json").write_text(json.dumps(manifest))
        loaded = load_bundle(conv_copy).manifest.inference
        assert loaded.kind == kind
        dumped = loaded.model_dump(mode="json")
        assert {key: dumped[key] for key in section} == section


# --- training export ------------------------------------------------------------------------


class _TwoNetworkTask:
    """What :func:`export_bundle` reads of a task: an export spec naming a main network and a component."""

    def export_spec(self) -> ExportSpec:
        head = ComponentExport(
            network="classifier",
            architecture="test-tiny-head",
            architecture_module=MODULE,
            architecture_args={},
            example_inputs=(torch.randn(1, 1, 16, 12),),
            input_names=["strain"],
            output_names=["scores"],
        )
        return ExportSpec(
            network="regressor",
            architecture="test-tiny-conv",
            architecture_module=MODULE,
            architecture_args={"channels": 4},
            example_inputs=(torch.randn(1, 2, 16, 12),),
            input_names=["frames"],
            output_names=["strain"],
            inference=SuperResolutionInference(factor=2),
            components={"head": head},
        )


@pytest.mark.parametrize("formats", [["onnx"], []], ids=["onnx", "weights-only"])
def test_training_export_writes_the_configured_formats_of_every_network(tmp_path, formats):
    config = TrainConfig.model_validate({"task": "toy", "stages": [{"epochs": 1}], "bundle": {"formats": formats}})
    networks = {"regressor": _conv_model(), "classifier": TinyHead()}
    path = export_bundle(_TwoNetworkTask(), networks, config, {"loss": 0.5}, tmp_path / "bundle")
    manifest = load_bundle(path).manifest
    graphs = ["head.model.onnx", "model.onnx"] if formats else []
    assert sorted(manifest.files) == sorted(graphs + ["head.weights.safetensors", "weights.safetensors"])
    assert manifest.inference == SuperResolutionInference(factor=2) and manifest.metrics["loss"] == 0.5
    # parity was checked at export for what is shipped, and recorded
    assert set(manifest.metrics["parity"]) == ({"main", "head"} if formats else set())
    head = load_bundle(path).build_torch_model(name="head")
    torch.testing.assert_close(head.state_dict(), networks["classifier"].state_dict())
