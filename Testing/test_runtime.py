"""Model runtime: bundle export/load round trips, backend parity, tamper detection, atomic save,
bundle listing, device choice and input validation, on tiny networks (a conv net, a ConvGRU, and
a recurrent net that takes its states as ``*states``)."""

from __future__ import annotations

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
from deepultrasound.runtime.device import DEVICE_ENVIRONMENT_VARIABLE, available_devices

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


def _conv_model() -> TinyConvNet:
    torch.manual_seed(0)
    return TinyConvNet(4)


def _save_conv(directory: Path, **overrides) -> Path:
    model = _conv_model()
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
