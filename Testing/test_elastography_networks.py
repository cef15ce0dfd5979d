"""Tests of the DeepUSE networks (USENet, ReUSENet) and the importer of original checkpoints.

Parity is checked against reference displacements computed by the original DeepUSE code on
the same weights and frames (``deepuse_reference`` in the shared data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from deepultrasound.elastography import NETWORK_STRIDE, ReUSENet, USENet, input_multiple
from deepultrasound.elastography.import_deepuse import (
    import_deepuse_checkpoint,
    infer_original_config,
    load_original_state_dict,
    original_key,
)
from deepultrasound.errors import ConfigError, FileFormatError, InputError
from deepultrasound.io.shared_data import shared_data_dir
from deepultrasound.runtime.architectures import build_architecture
from deepultrasound.spatial import crop_to_size, pad_to_multiple

REFERENCE = shared_data_dir() / "deepuse_reference"
NORMS = ("batch", "instance")
PARITY = 1e-4
"""Largest difference to the original code, as a fraction of the largest |displacement| it gave: float32
rounding differs with the CPU's vector width (1.3e-5 px of 4 px seen with AVX-512); a 10 % change of a
single conv weight or two swapped layers of one shape move the output by far more."""


def _original_state_dict(name: str) -> dict[str, torch.Tensor]:
    return torch.load(REFERENCE / f"{name}_c8_state_dict.pth", weights_only=True)


def _reference_model(cls: type[USENet] | type[ReUSENet], norm: str) -> USENet | ReUSENet:
    model = cls(initial_channels=8, norm=norm)
    load_original_state_dict(model, _original_state_dict(cls.__name__.lower()))
    return model.eval()


def _as_original(model: USENet | ReUSENet) -> dict[str, torch.Tensor]:
    """``model``'s weights under the original key names, as an original checkpoint holds them."""
    return {original_key(key): value for key, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    """(4, 1, 256, 64) RF frames of the reference vectors."""
    return torch.from_numpy(np.load(REFERENCE / "frames.npy"))


def _pair(frames: torch.Tensor, t: int) -> torch.Tensor:
    """(1, 2, H, W) = cat[frame 0 (fixed), frame t (moving)]."""
    return torch.cat([frames[0:1], frames[t : t + 1]], dim=1)


# ---------------------------------------------------------------- parity with the original code


@pytest.mark.shared_data("deepuse_reference")
@pytest.mark.parametrize("norm", NORMS)
@torch.no_grad()
def test_usenet_matches_original(frames: torch.Tensor, norm: str) -> None:
    expected = np.load(REFERENCE / "usenet_ddf_0to1.npy")
    ddf = _reference_model(USENet, norm)(_pair(frames, 1))
    assert ddf.shape == (1, 2, 256, 64)
    assert np.abs(ddf.numpy() - expected).max() <= PARITY * np.abs(expected).max()


@pytest.mark.shared_data("deepuse_reference")
@pytest.mark.parametrize("norm", NORMS)
@torch.no_grad()
def test_reusenet_matches_original_over_three_steps(frames: torch.Tensor, norm: str) -> None:
    expected = np.load(REFERENCE / "reusenet_ddf_seq.npy")
    model = _reference_model(ReUSENet, norm)
    states = model.initial_state(_pair(frames, 1))
    for t in (1, 2, 3):
        ddf, *states = model(_pair(frames, t), *states)
        assert np.abs(ddf.numpy() - expected[t - 1]).max() <= PARITY * np.abs(expected).max()
    # the carried state matters: starting step 3 from zeros gives another displacement
    fresh = model(_pair(frames, 3))[0]
    assert np.abs(fresh.numpy() - expected[2]).max() > 1e-3


@torch.no_grad()
def test_norms_differ_only_across_a_batch() -> None:
    torch.manual_seed(0)
    pair = torch.randn(2, 2, 64, 32)
    instance, batch = USENet(norm="instance").eval(), USENet(norm="batch").eval()
    batch.load_state_dict(instance.state_dict())
    singles = torch.cat([instance(pair[i : i + 1]) for i in range(2)])
    assert torch.allclose(instance(pair), singles, atol=1e-4)  # each pair on its own
    assert torch.allclose(batch(pair[:1]), singles[:1], atol=1e-4)  # identical for one pair
    assert not torch.allclose(batch(pair), singles, atol=1e-3)  # batch statistics mix the pairs


# ---------------------------------------------------------------- shapes, padding, validation


@torch.no_grad()
def test_padding_lets_any_size_through() -> None:
    torch.manual_seed(0)
    pair = torch.randn(1, 2, 50, 21)
    padded, size = pad_to_multiple(pair, NETWORK_STRIDE)
    assert padded.shape == (1, 2, 64, 32) and size == (50, 21)
    assert torch.equal(padded[..., :50, :21], pair)
    assert not padded[..., 50:, :].any() and not padded[..., 21:].any()
    ddf = crop_to_size(USENet().eval()(padded), size)
    assert ddf.shape == (1, 2, 50, 21)
    aligned = torch.randn(1, 2, 32, 16)
    assert pad_to_multiple(aligned, NETWORK_STRIDE)[0] is aligned


@pytest.mark.parametrize(
    ("shape", "message"),
    [((1, 2, 50, 32), "multiple of 16"), ((1, 3, 64, 32), r"\(B, 2, H, W\)"), ((2, 64, 32), r"\(B, 2, H, W\)")],
)
def test_forward_rejects_bad_input(shape: tuple[int, ...], message: str) -> None:
    for model in (USENet(), ReUSENet()):
        with pytest.raises(InputError, match=message):
            model(torch.zeros(shape))


def test_padding_per_axis_for_a_folded_network() -> None:
    assert input_multiple(8) == (128, NETWORK_STRIDE)
    padded, size = pad_to_multiple(torch.ones(1, 2, 130, 20), input_multiple(8))
    assert padded.shape == (1, 2, 256, 32) and size == (130, 20)
    with pytest.raises(InputError, match="multiple of 128 and W of 16"):
        USENet(axial_fold=8)(torch.zeros(1, 2, 64, 32))
    with pytest.raises(ConfigError, match="axial_fold"):
        USENet(axial_fold=0)


def test_fold_keeps_every_sample_with_its_row_phase_as_a_channel() -> None:
    fold = 4
    x = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(1, 2, 16, 3)
    folded = USENet(axial_fold=fold)._fold(x)
    assert folded.shape == (1, 2 * fold, 16 // fold, 3)
    for channel in range(2):
        for phase in range(fold):
            assert torch.equal(folded[0, channel * fold + phase], x[0, channel, phase::fold])


def test_unfolded_displacement_puts_each_folded_row_at_its_centre() -> None:
    fold, rows = 8, 12
    centres = fold * torch.arange(rows, dtype=torch.float32) + (fold - 1) / 2
    coarse = (1.5 - 0.02 * centres).view(1, 1, rows, 1).expand(1, 2, rows, 3)
    fine = USENet(axial_fold=fold)._unfold_displacement(coarse)
    assert fine.shape == (1, 2, rows * fold, 3)
    depth = torch.arange(rows * fold, dtype=torch.float32)
    inside = slice(fold // 2, -(fold // 2))  # the first and last half groups are held constant
    assert torch.allclose(fine[0, 1, inside, 0], (1.5 - 0.02 * depth)[inside], atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm": "group"}, "norm must be one of"),
        ({"initial_channels": 0}, "initial_channels"),
        ({"in_channels": 1.5}, "in_channels"),
    ],
)
def test_constructor_rejects_bad_options(kwargs: dict[str, object], message: str) -> None:
    for cls in (USENet, ReUSENet):
        with pytest.raises(ConfigError, match=message):
            cls(**kwargs)


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 64, 32), (2, 32, 48)])
@torch.no_grad()
def test_state_specs_describe_the_states(batch: int, height: int, width: int) -> None:
    model = ReUSENet(initial_channels=4).eval()
    pair = torch.randn(batch, 2, height, width)
    expected = [(batch, channels, height // stride, width // stride) for channels, stride in model.state_specs()]
    assert [tuple(s.shape) for s in model.initial_state(pair)] == expected
    ddf, *states = model(pair)
    assert ddf.shape == (batch, 2, height, width)
    assert [tuple(s.shape) for s in states] == expected
    assert len(model.state_names()) == len(expected) == 10
    assert model.state_specs()[0] == (64, 16) and model.state_specs()[-1] == (4, 1)


def test_reusenet_rejects_bad_states() -> None:
    model = ReUSENet(initial_channels=4)
    pair = torch.zeros(1, 2, 64, 32)
    states = list(model.initial_state(pair))
    with pytest.raises(InputError, match="expected 10 state tensors"):
        model(pair, *states[:3])
    states[4] = torch.zeros(1, 16, 8, 8)
    with pytest.raises(InputError, match="state hidden_s4 must have shape"):
        model(pair, *states)


# ---------------------------------------------------------------- importer and registry


@pytest.mark.shared_data("deepuse_reference")
def test_infer_original_config() -> None:
    expected = {"architecture": "usenet", "in_channels": 2, "initial_channels": 8}
    assert infer_original_config(_original_state_dict("usenet")) == expected
    assert infer_original_config(_original_state_dict("reusenet"))["architecture"] == "reusenet"
    assert infer_original_config(_as_original(ReUSENet(initial_channels=16)))["initial_channels"] == 16
    with pytest.raises(FileFormatError, match="not a DeepUSE"):
        infer_original_config({"conv.weight": torch.zeros(8, 2, 3, 3)})


@pytest.mark.shared_data("deepuse_reference")
def test_load_is_strict_and_names_the_keys() -> None:
    original = _original_state_dict("reusenet")
    missing = dict(original)
    del missing["decoder.up_res_2.lstm.Gates.bias"]
    with pytest.raises(FileFormatError, match=r"missing keys \['decoder\.up_res_2\.lstm\.Gates\.bias'\]"):
        load_original_state_dict(ReUSENet(), missing)
    with pytest.raises(FileFormatError, match=r"unexpected keys \['extra\.weight'\]"):
        load_original_state_dict(ReUSENet(), {**original, "extra.weight": torch.zeros(1)})
    with pytest.raises(FileFormatError, match="wrong shape"):
        load_original_state_dict(ReUSENet(initial_channels=8), _as_original(ReUSENet(in_channels=3)))
    with pytest.raises(FileFormatError, match="missing keys"):
        load_original_state_dict(USENet(), original)


@pytest.mark.shared_data("deepuse_reference")
def test_import_checkpoint_with_data_parallel_prefix(tmp_path: Path) -> None:
    original = _original_state_dict("reusenet")
    path = tmp_path / "300_net_ReUSENet.pth"
    torch.save({f"module.{key}": value for key, value in original.items()}, path)
    model, config = import_deepuse_checkpoint(path, norm="batch")
    assert isinstance(model, ReUSENet) and not model.training
    assert config == {"architecture": "reusenet", "in_channels": 2, "initial_channels": 8, "norm": "batch"}
    assert all(torch.equal(value, original[key]) for key, value in _as_original(model).items())
    rebuilt = build_architecture(config.pop("architecture"), config)
    assert isinstance(rebuilt, ReUSENet) and rebuilt.get_config() == model.get_config()


def test_import_rejects_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match="not found"):
        import_deepuse_checkpoint(tmp_path / "absent.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(FileFormatError, match="cannot read"):
        import_deepuse_checkpoint(corrupt)
    nested = tmp_path / "nested.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}}, nested)
    with pytest.raises(FileFormatError, match="plain state dict"):
        import_deepuse_checkpoint(nested)


# ---------------------------------------------------------------- export


@torch.no_grad()
def test_traced_reusenet_with_explicit_states_matches_eager() -> None:
    torch.manual_seed(0)
    model = ReUSENet(initial_channels=4).eval()
    pair = torch.randn(1, 2, 64, 32)
    states = tuple(torch.randn_like(s) for s in model.initial_state(pair))
    traced = torch.jit.trace(model, (pair, *states), check_trace=False)
    eager_states: tuple[torch.Tensor, ...] = states
    traced_states: tuple[torch.Tensor, ...] = states
    for _ in range(2):  # feed each graph its own states back
        eager_ddf, *eager_next = model(pair, *eager_states)
        traced_ddf, *traced_next = traced(pair, *traced_states)
        assert torch.allclose(traced_ddf, eager_ddf, atol=1e-6)
        eager_states, traced_states = tuple(eager_next), tuple(traced_next)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(eager_states, traced_states))


@pytest.mark.parametrize(
    "build",
    [
        lambda: USENet(initial_channels=4),
        lambda: ReUSENet(initial_channels=4),
        lambda: USENet(initial_channels=4, axial_fold=4),
    ],
    ids=["usenet", "reusenet", "usenet-folded"],
)
@torch.no_grad()
def test_onnx_export_matches_eager(build, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build().eval()
    pair = torch.randn(1, 2, 64, 32)
    states = tuple(torch.randn_like(s) for s in model.initial_state(pair)) if isinstance(model, ReUSENet) else ()
    state_names = list(model.state_names()) if isinstance(model, ReUSENet) else []
    input_names = ["pair", *state_names]
    output_names = ["ddf", *[f"next_{name}" for name in state_names]]
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (pair, *states), path, input_names=input_names, output_names=output_names)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(output_names, {name: t.numpy() for name, t in zip(input_names, (pair, *states))})
    expected = model(pair, *states)
    expected = (expected,) if isinstance(expected, torch.Tensor) else expected
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected):
        assert np.abs(got - want.numpy()).max() <= 1e-4
