"""Tests of deepultrasound.io: image/sequence files, atomic writes, bad files, CAMUS, videos."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import SimpleITK as sitk

import deepultrasound.io.images as images_module
from deepultrasound.errors import FileFormatError, InputError
from deepultrasound.io import (
    CamusDataset,
    CamusInfo,
    CamusLabel,
    Image,
    atomic_write,
    read_camus_info,
    read_image,
    read_sequence,
    read_video,
    write_image,
)
from deepultrasound.io.shared_data import shared_data_dir

DATA = shared_data_dir()
RF_SEQUENCE = DATA / "deepuse_invivo" / "rf0299.mhd"
CAMUS_FLAT = DATA / "camus_train"
SUFFIXES = (".mha", ".mhd", ".nrrd", ".nii", ".nii.gz")
DTYPES = ("uint8", "int16", "float32")

# Geometry whose values are exact in float32, so that every format must keep it bit for bit.
GEOMETRY = {
    2: dict(spacing=(0.25, 0.125), origin=(1.5, -2.25), direction=(0.0, 1.0, 1.0, 0.0)),
    3: dict(spacing=(0.25, 0.125, 0.5), origin=(1.5, -2.25, 3.0), direction=(1, 0, 0, 0, -1, 0, 0, 0, 1)),
}


def _image(shape: tuple[int, ...], dtype: str, seed: int = 0) -> Image:
    """A random image of ``shape`` spanning the dtype's range, with the test geometry."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        array = rng.standard_normal(shape).astype(dtype)
    return Image(array, **GEOMETRY[len(shape)])


def _files(folder: Path) -> list[str]:
    """Every entry in ``folder`` (hidden ones included), sorted."""
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- Image


def test_image_defaults_and_named_spacings() -> None:
    image = Image(np.zeros((4, 6, 5), np.float32), spacing=(0.2, 0.02, 0.043))
    assert image.is_sequence and image.ndim == 3
    assert (image.lateral_spacing_mm, image.axial_spacing_mm, image.frame_interval) == (0.2, 0.02, 0.043)
    assert image.origin == (0.0, 0.0, 0.0)
    assert image.direction == tuple(np.eye(3).ravel())
    plain = Image(np.zeros((6, 5), np.uint8))
    assert plain.spacing == (1.0, 1.0) and plain.frame_interval is None and not plain.is_sequence


def test_image_frame_keeps_in_plane_geometry() -> None:
    sequence = _image((3, 4, 5), "float32")
    frame = sequence.frame(-1)
    np.testing.assert_array_equal(frame.array, sequence.array[2])
    assert frame.spacing == (0.25, 0.125) and frame.origin == (1.5, -2.25)
    assert frame.direction == (1.0, 0.0, 0.0, -1.0)
    with pytest.raises(InputError, match="out of range"):
        sequence.frame(3)
    with pytest.raises(InputError, match="sequence"):
        frame.frame(0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(array=np.zeros(5)), "spatial axes"),
        (dict(array=np.zeros((2, 2, 2, 2))), "spatial axes"),
        (dict(array=np.zeros((4, 5)), spacing=(1.0, 1.0, 1.0)), "spacing must hold 2"),
        (dict(array=np.zeros((4, 5)), spacing=(1.0, 0.0)), "positive"),
        (dict(array=np.zeros((4, 5)), origin=(0.0, float("nan"))), "finite"),
        (dict(array=np.zeros((4, 5)), direction=(1.0, 0.0, 0.0)), "direction must hold 4"),
        (dict(array=[[1, 2]]), "numpy array"),
    ],
)
def test_image_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Image(**kwargs)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 7), (3, 5, 7)], ids=["2d", "sequence"])
def test_round_trip_keeps_pixels_dtype_and_geometry(
    tmp_path: Path, suffix: str, dtype: str, shape: tuple[int, ...]
) -> None:
    image = _image(shape, dtype)
    path = write_image(tmp_path / f"img{suffix}", image)
    back = read_image(path)
    assert back.array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.array, image.array)
    assert (back.spacing, back.origin, back.direction) == (image.spacing, image.origin, image.direction)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_keeps_rf_spacing(tmp_path: Path, suffix: str) -> None:
    """Decimal spacings: exact in MetaImage and NRRD, float32-exact in NIfTI."""
    image = Image(np.ones((2, 8, 4), np.float32), spacing=(0.2, 0.02, 0.043), origin=(0.1, -3.3, 0.7))
    back = read_sequence(write_image(tmp_path / f"rf{suffix}", image))
    if suffix.startswith(".nii"):
        np.testing.assert_allclose(back.spacing, image.spacing, rtol=1e-7)
        np.testing.assert_allclose(back.origin, image.origin, rtol=1e-7)
    else:
        assert back.spacing == image.spacing and back.origin == image.origin


@pytest.mark.parametrize("suffix", [".mha", ".nii.gz"])
def test_round_trip_multichannel(tmp_path: Path, suffix: str) -> None:
    image = Image(np.arange(40, dtype=np.float32).reshape(4, 5, 2), spacing=(0.5, 0.25), multichannel=True)
    back = read_image(write_image(tmp_path / f"vec{suffix}", image))
    assert back.multichannel and back.ndim == 2 and back.spacing == image.spacing
    np.testing.assert_array_equal(back.array, image.array)


def test_mhd_writes_header_and_raw_under_final_names(tmp_path: Path) -> None:
    write_image(tmp_path / "seq.mhd", _image((2, 3, 4), "int16"))
    assert _files(tmp_path) == ["seq.mhd", "seq.raw"]
    header = dict(line.split(" = ", 1) for line in (tmp_path / "seq.mhd").read_text().splitlines())
    assert header["ElementDataFile"] == "seq.raw"
    assert (tmp_path / "seq.raw").stat().st_size == 2 * 3 * 4 * 2


def test_write_creates_missing_folders_and_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.nrrd"
    write_image(target, _image((3, 3), "uint8", seed=1))
    second = _image((3, 3), "uint8", seed=2)
    write_image(target, second)
    np.testing.assert_array_equal(read_image(target).array, second.array)
    assert _files(target.parent) == ["out.nrrd"]


def test_write_rejects_unsupported_dtype_and_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="bool"):
        write_image(tmp_path / "mask.mha", Image(np.zeros((3, 3), bool)))
    with pytest.raises(FileFormatError, match="unsupported extension"):
        write_image(tmp_path / "img.png", _image((3, 3), "uint8"))
    assert _files(tmp_path) == []


# ---------------------------------------------------------------- atomic writes


def _failing_writer(fail_after: bytes):
    """A stand-in for SimpleITK's writer that leaves partial files behind, then fails mid-write."""

    def write(sitk_image: sitk.Image, name: str) -> None:
        staged = Path(name)
        staged.write_bytes(fail_after)
        staged.with_suffix(".raw").write_bytes(b"\0" * 7)
        raise RuntimeError("disk full\nwrite failed")

    return write


@pytest.mark.parametrize("name", ["out.mha", "out.mhd", "out.nii.gz"])
def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(images_module.sitk, "WriteImage", _failing_writer(b"ObjectType = Image\n"))
    with pytest.raises(FileFormatError, match=f"could not write .*{name}: write failed"):
        write_image(tmp_path / name, _image((4, 4), "float32"))
    assert _files(tmp_path) == []


def test_failed_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = _image((4, 4), "float32", seed=3)
    write_image(tmp_path / "out.mhd", original)
    monkeypatch.setattr(images_module.sitk, "WriteImage", _failing_writer(b"garbage"))
    with pytest.raises(FileFormatError):
        write_image(tmp_path / "out.mhd", _image((4, 4), "float32", seed=4))
    monkeypatch.undo()
    assert _files(tmp_path) == ["out.mhd", "out.raw"]
    np.testing.assert_array_equal(read_image(tmp_path / "out.mhd").array, original.array)


def test_atomic_write_publishes_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "state.bin"
    with pytest.raises(ValueError):
        with atomic_write(target) as staged:
            staged.write_bytes(b"half")
            raise ValueError("interrupted")
    assert _files(tmp_path) == []
    with atomic_write(target) as staged:
        staged.write_bytes(b"complete")
        assert not target.exists()
    assert target.read_bytes() == b"complete" and _files(tmp_path) == ["state.bin"]


# ---------------------------------------------------------------- bad files


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match=r"nothere\.mha does not exist"):
        read_image(tmp_path / "nothere.mha")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(FileFormatError, match=r"empty\.nii\.gz is empty"):
        read_image(tmp_path / "empty.nii.gz")
    (tmp_path / "folder.mha").mkdir()
    with pytest.raises(FileFormatError, match="is not a file"):
        read_image(tmp_path / "folder.mha")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileFormatError, match="unsupported extension"):
        read_image(tmp_path / "notes.txt")


def test_truncated_raw_is_reported_with_both_names(tmp_path: Path) -> None:
    write_image(tmp_path / "rf.mhd", _image((3, 8, 8), "float32"))
    _truncate(tmp_path / "rf.raw")
    message = r"rf\.raw is truncated: it holds 384 bytes .*rf\.mhd describes 768"
    with pytest.raises(FileFormatError, match=message):
        read_sequence(tmp_path / "rf.mhd")


def test_missing_raw_is_reported(tmp_path: Path) -> None:
    write_image(tmp_path / "rf.mhd", _image((8, 8), "float32"))
    (tmp_path / "rf.raw").unlink()
    with pytest.raises(FileFormatError, match=r"rf\.mhd names the data file 'rf\.raw', which does not exist"):
        read_image(tmp_path / "rf.mhd")


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".nii", ".nii.gz"])
def test_truncated_files_are_reported(tmp_path: Path, suffix: str) -> None:
    path = write_image(tmp_path / f"img{suffix}", _image((4, 16, 16), "int16"))
    _truncate(path, keep=0.8)
    with pytest.raises(FileFormatError, match=re.escape(str(path))):
        read_image(path)


def test_complete_gzip_of_a_short_nifti_is_truncated(tmp_path: Path) -> None:
    """A valid gzip stream whose NIfTI payload is short: caught by the size check."""
    plain = write_image(tmp_path / "img.nii", _image((16, 16), "float32"))
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(plain.read_bytes()[:-100]))
    with pytest.raises(FileFormatError, match=r"short\.nii\.gz is truncated"):
        read_image(short)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".nii", ".nii.gz"])
def test_corrupt_files_are_reported(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(FileFormatError, match=rf"junk{re.escape(suffix)} is corrupt or not a"):
        read_image(path)


def test_non_finite_data_rejected_only_on_request(tmp_path: Path) -> None:
    array = np.ones((2, 4, 4), np.float32)
    array[0, 1, 1], array[1, 2, 2] = np.nan, np.inf
    path = write_image(tmp_path / "nan.mha", Image(array))
    assert np.isnan(read_sequence(path).array).sum() == 1
    with pytest.raises(InputError, match=r"nan\.mha holds 1 NaN and 1 infinite"):
        read_sequence(path, require_finite=True)


def test_wrong_dimensionality(tmp_path: Path) -> None:
    flat = write_image(tmp_path / "flat.mha", _image((4, 4), "uint8"))
    with pytest.raises(InputError, match=r"flat\.mha holds a 2D image .* expected a 3D"):
        read_sequence(flat)
    sequence = write_image(tmp_path / "seq.mha", _image((3, 4, 4), "uint8"))
    with pytest.raises(InputError, match="expected a 2D"):
        read_image(sequence, ndim=2)
    with pytest.raises(InputError, match="3 frame.*at least 4"):
        read_sequence(sequence, min_frames=4)
    single = write_image(tmp_path / "single.mha", _image((1, 4, 4), "uint8"))
    assert read_image(single, ndim=2).array.shape == (4, 4)
    sitk.WriteImage(sitk.Image([2, 2, 2, 2], sitk.sitkUInt8), str(tmp_path / "vol4d.nrrd"))
    with pytest.raises(InputError, match=r"vol4d\.nrrd.*4 spatial axes"):
        read_image(tmp_path / "vol4d.nrrd")


# ---------------------------------------------------------------- real data


@pytest.mark.shared_data("deepuse_invivo")
def test_reads_in_vivo_rf_sequence() -> None:
    image = read_sequence(RF_SEQUENCE, min_frames=2, require_finite=True)
    assert image.array.shape == (6, 2000, 128) and image.array.dtype == np.float32
    assert (image.lateral_spacing_mm, image.axial_spacing_mm, image.frame_interval) == (0.2, 0.02, 1.0)
    np.testing.assert_allclose(image.array.reshape(6, -1).max(axis=1), 1.0, rtol=1e-6)


# ---------------------------------------------------------------- CAMUS

CFG_2019 = "ED: 1\nES: 3\nNbFrame: 4\nSex: F\nAge: 62\nImageQuality: Good\nLVedv: 90.5\nLVesv: 40.25\nLVef: 55.5\n"
SPACING_2019 = (0.154, 0.308, 1.54)
CFG_NIFTI = "ED: 1\nES: 3\nNbFrame: 3\nSex: M\nAge: 71\nImageQuality: Poor\nEF: 47\nFrameRate: 50\n"


def _labels(shape: tuple[int, ...], shift: int) -> np.ndarray:
    """A label map holding every CAMUS class, different per ``shift``."""
    rows, cols = shape[-2:]
    base = (np.add.outer(np.arange(rows), np.arange(cols)) + shift) % 4
    return np.broadcast_to(base, shape).astype(np.uint8).copy()


def _write_sitk(path: Path, array: np.ndarray, spacing: tuple[float, ...]) -> None:
    """Write ``array`` as CAMUS does: through SimpleITK, 2D images as given."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _camus_2019(root: Path, patient: str) -> None:
    """The 2019 layout: 2D images stored as single-slice 3D .mhd volumes, a full-cycle sequence."""
    folder = root / "training" / patient
    for number, view in enumerate(("2CH", "4CH")):
        for shift, phase in enumerate(("ED", "ES")):
            stem = folder / f"{patient}_{view}_{phase}"
            _write_sitk(stem.with_suffix(".mhd"), np.full((1, 6, 5), 10 * number + shift, np.uint8), SPACING_2019)
            _write_sitk(Path(f"{stem}_gt.mhd"), _labels((1, 6, 5), shift), SPACING_2019)
        _write_sitk(folder / f"{patient}_{view}_sequence.mhd", np.zeros((4, 6, 5), np.uint8), SPACING_2019)
        (folder / f"Info_{view}.cfg").write_text(CFG_2019)


def _camus_nifti(root: Path, patient: str) -> None:
    """The newer layout: .nii.gz images, a labelled ED-to-ES half sequence."""
    folder = root / "database_nifti" / patient
    for view in ("2CH", "4CH"):
        for shift, phase in enumerate(("ED", "ES")):
            stem = f"{patient}_{view}_{phase}"
            _write_sitk(folder / f"{stem}.nii.gz", np.full((6, 5), 7 + shift, np.uint8), (0.25, 0.5))
            _write_sitk(folder / f"{stem}_gt.nii.gz", _labels((6, 5), shift), (0.25, 0.5))
        stem = f"{patient}_{view}_half_sequence"
        _write_sitk(folder / f"{stem}.nii.gz", np.ones((3, 6, 5), np.uint8), (0.25, 0.5, 1.0))
        _write_sitk(folder / f"{stem}_gt.nii.gz", _labels((3, 6, 5), 2), (0.25, 0.5, 1.0))
        (folder / f"Info_{view}.cfg").write_text(CFG_NIFTI)


def test_camus_2019_layout(tmp_path: Path) -> None:
    for patient in ("patient0002", "patient0001"):
        _camus_2019(tmp_path, patient)
    dataset = CamusDataset(tmp_path)
    assert dataset.patients == ["patient0001", "patient0002"]
    image, labels = dataset.load("patient0002", "4CH", "ES")
    assert image.array.shape == labels.array.shape == (6, 5) and image.array.dtype == np.uint8
    assert (image.lateral_spacing_mm, image.axial_spacing_mm) == (0.154, 0.308)
    assert np.all(image.array == 11)
    np.testing.assert_array_equal(labels.array, _labels((6, 5), 1))
    assert dataset.load_sequence("patient0001", "2CH").array.shape == (4, 6, 5)
    assert dataset.info("patient0001", "2CH") == CamusInfo(
        ed_frame=1,
        es_frame=3,
        n_frames=4,
        sex="F",
        age=62,
        image_quality="Good",
        lv_edv=90.5,
        lv_esv=40.25,
        lv_ef=55.5,
        frame_rate=None,
    )
    with pytest.raises(FileFormatError, match="no half_sequence label map for patient0001 2CH"):
        dataset.load_sequence_labels("patient0001", "2CH")


def test_camus_nifti_layout(tmp_path: Path) -> None:
    _camus_nifti(tmp_path, "patient0007")
    dataset = CamusDataset(tmp_path)
    assert dataset.patients == ["patient0007"]
    image, labels = dataset.load("patient0007", "2CH", "ED")
    assert np.all(image.array == 7) and image.spacing == (0.25, 0.5)
    assert set(np.unique(labels.array)) == {label.value for label in CamusLabel}
    sequence = dataset.load_sequence("patient0007", "4CH")
    sequence_labels = dataset.load_sequence_labels("patient0007", "4CH")
    assert sequence.array.shape == sequence_labels.array.shape == (3, 6, 5)
    info = dataset.info("patient0007", "4CH")
    assert (info.lv_ef, info.frame_rate, info.sex, info.age, info.lv_edv) == (47.0, 50.0, "M", 71, None)


def test_camus_errors(tmp_path: Path) -> None:
    _camus_nifti(tmp_path, "patient0001")
    (tmp_path / "database_nifti" / "patient0001" / "patient0001_2CH_ES_gt.nii.gz").unlink()
    dataset = CamusDataset(tmp_path)
    with pytest.raises(InputError, match="unknown CAMUS patient 'patient0099'"):
        dataset.load("patient0099", "2CH", "ED")
    with pytest.raises(InputError, match="unknown CAMUS view '3CH'"):
        dataset.load("patient0001", "3CH", "ED")
    with pytest.raises(InputError, match="unknown CAMUS phase 'MID'"):
        dataset.load("patient0001", "2CH", "MID")
    with pytest.raises(FileFormatError, match="no ES label map for patient0001 2CH"):
        dataset.load("patient0001", "2CH", "ES")
    assert dataset.load_image("patient0001", "2CH", "ES").array.shape == (6, 5)
    bad_labels = tmp_path / "database_nifti" / "patient0001" / "patient0001_4CH_ED_gt.nii.gz"
    _write_sitk(bad_labels, np.full((6, 5), 9, np.uint8), (0.25, 0.5))
    with pytest.raises(FileFormatError, match=r"label map holds values \[9\] outside 0-3"):
        dataset.load("patient0001", "4CH", "ED")
    _write_sitk(tmp_path / "flat" / "patient0001_4CH_ED.nii.gz", np.zeros((6, 5), np.uint8), (1.0, 1.0))
    with pytest.raises(FileFormatError, match="two CAMUS files for the same item"):
        CamusDataset(tmp_path)
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "unrelated" / "notes.nii.gz").write_bytes(b"x")
    with pytest.raises(FileFormatError, match="no CAMUS files"):
        CamusDataset(tmp_path / "unrelated")
    with pytest.raises(FileFormatError, match="is not a folder"):
        CamusDataset(tmp_path / "missing")


def test_camus_info_parsing(tmp_path: Path) -> None:
    cfg = tmp_path / "Info_2CH.cfg"
    cfg.write_text("ED: 12\n\nImageQuality: Medium\nUnknownKey: 3\n")
    assert read_camus_info(cfg) == CamusInfo(ed_frame=12, image_quality="Medium")
    cfg.write_text("ED: twelve\n")
    with pytest.raises(FileFormatError, match=r"Info_2CH\.cfg: ED has an invalid value 'twelve'"):
        read_camus_info(cfg)
    cfg.write_text("ED 12\n")
    with pytest.raises(FileFormatError, match="line 1 is not 'Key: value'"):
        read_camus_info(cfg)


@pytest.mark.shared_data("camus_train")
def test_camus_real_flat_folder() -> None:
    dataset = CamusDataset(CAMUS_FLAT)
    assert len(dataset.patients) == 100 and dataset.patients[0] == "patient0001"
    for view, phase in (("2CH", "ED"), ("4CH", "ES")):
        image, labels = dataset.load("patient0001", view, phase)
        assert image.array.shape == labels.array.shape == (224, 224) and image.array.dtype == np.uint8
        assert set(np.unique(labels.array)) == {0, 1, 2, 3}
        assert image.array.std() > 10  # real echo texture, not a blank frame
    with pytest.raises(FileFormatError, match="no Info_2CH.cfg"):
        dataset.info("patient0001", "2CH")


# ---------------------------------------------------------------- video


def _synthetic_frames(count: int = 8, rows: int = 48, cols: int = 64) -> np.ndarray:
    """(frames, rows, cols, 3) BGR uint8: a bright square moving right on a vertical gradient."""
    frames = np.zeros((count, rows, cols, 3), np.uint8)
    frames[...] = np.linspace(20, 120, rows, dtype=np.uint8)[None, :, None, None]
    for index in range(count):
        frames[index, 16:32, 4 + 4 * index : 20 + 4 * index] = (40, 60, 230)  # reddish in BGR
    return frames


def _write_video(path: Path, fourcc: str, frames: np.ndarray, fps: float) -> bool:
    size = (frames.shape[2], frames.shape[1])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        return False
    for frame in frames:
        writer.write(frame)
    writer.release()
    return True


@pytest.mark.parametrize("name, fourcc", [("echo.avi", "MJPG"), ("echo.mp4", "mp4v")])
def test_video_round_trip(tmp_path: Path, name: str, fourcc: str) -> None:
    frames = _synthetic_frames()
    if not _write_video(tmp_path / name, fourcc, frames, fps=25.0):
        pytest.skip(f"this OpenCV build cannot write {fourcc}")
    video = read_video(tmp_path / name)
    assert video.array.shape == (8, 48, 64) and video.array.dtype == np.uint8
    assert video.frame_interval == pytest.approx(1 / 25)
    expected = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames]).astype(float)
    assert np.abs(video.array - expected).mean() < 6
    # the square moves 4 pixels right per frame: its brightest column follows it
    square_columns = video.array[:, 24].astype(float).argmax(axis=1)
    assert np.all(np.abs(np.diff(square_columns[1:-1])) <= 8) and square_columns[-1] > square_columns[0] + 20
    color = read_video(tmp_path / name, grayscale=False)
    assert color.multichannel and color.array.shape == (8, 48, 64, 3)
    red, blue = color.array[0, 24, 12].astype(int)[[0, 2]]
    assert red > blue + 100  # BGR from OpenCV was turned into RGB


def test_video_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match="does not exist"):
        read_video(tmp_path / "none.avi")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(FileFormatError, match="empty"):
        read_video(tmp_path / "empty.mp4")
    (tmp_path / "junk.avi").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(FileFormatError, match=r"junk\.avi"):
        read_video(tmp_path / "junk.avi")
