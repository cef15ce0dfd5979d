"""Checks that an image file is present and holds all the pixel data its header promises.

SimpleITK alone is not enough: it reads a truncated ``.nii.gz`` silently (the missing voxels
become zeros) and reports a short MetaImage ``.raw`` as "No such file or directory". These checks
read the header, compute the expected byte count and compare it with the bytes on disk.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import SimpleITK as sitk

from deepultrasound.errors import FileFormatError

# Bytes per component of each SimpleITK pixel type (scalar and vector forms).
_COMPONENT_BYTES = {
    name: size
    for size, names in {
        1: ("UInt8", "Int8"),
        2: ("UInt16", "Int16"),
        4: ("UInt32", "Int32", "Float32"),
        8: ("UInt64", "Int64", "Float64"),
    }.items()
    for name in names
}
_PIXEL_BYTES = {
    getattr(sitk, prefix + name): size for name, size in _COMPONENT_BYTES.items() for prefix in ("sitk", "sitkVector")
}
_NIFTI_HEADER_BYTES = 544  # enough for both the NIfTI-1 (348) and NIfTI-2 (540) headers
_GZIP_CHUNK = 1 << 20


def require_nonempty_file(path: Path) -> None:
    """Raise FileFormatError unless ``path`` is an existing, non-empty regular file."""
    if not path.exists():
        raise FileFormatError(f"{path} does not exist")
    if not path.is_file():
        raise FileFormatError(f"{path} is not a file")
    if path.stat().st_size == 0:
        raise FileFormatError(f"{path} is empty (0 bytes)")


def sitk_reason(exc: RuntimeError) -> str:
    """The informative last line of a SimpleITK exception message, in plain words where known."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[-1].removeprefix("sitk::ERROR: ") if lines else type(exc).__name__
    return "its content is not recognised" if reason.startswith("Unable to determine ImageIO") else reason


def check_image_file(path: Path, suffix: str) -> None:
    """Raise FileFormatError unless ``path`` (of format ``suffix``) is complete and readable.

    Args:
        path: the image file (for ``.mhd`` the header; its data file is checked too).
        suffix: the lower-case format suffix, e.g. ``".nii.gz"``.
    """
    require_nonempty_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise FileFormatError(f"{path} is corrupt or not a {suffix} image: {sitk_reason(exc)}") from exc
    pixel_bytes = _PIXEL_BYTES.get(reader.GetPixelID())
    if pixel_bytes is None:
        raise FileFormatError(
            f"{path} has pixel type {sitk.GetPixelIDValueAsString(reader.GetPixelID())}, which is not supported"
        )
    expected = math.prod(reader.GetSize()) * reader.GetNumberOfComponents() * pixel_bytes
    stored, data_file = _stored_data_bytes(path, suffix)
    if stored is not None and stored < expected:
        raise FileFormatError(
            f"{data_file} is truncated: it holds {stored} bytes of pixel data but the header of {path.name} "
            f"describes {expected} bytes (size {reader.GetSize()})"
        )


def _stored_data_bytes(path: Path, suffix: str) -> tuple[int | None, Path]:
    """Bytes of pixel data present on disk and the file holding them; None where not checkable."""
    if suffix in (".mha", ".mhd"):
        return _metaimage_data_bytes(path)
    if suffix == ".nii":
        with open(path, "rb") as handle:
            header = handle.read(_NIFTI_HEADER_BYTES)
        return path.stat().st_size - _nifti_data_offset(header, path), path
    if suffix == ".nii.gz":
        header, total = _gunzip_measure(path)
        return total - _nifti_data_offset(header, path), path
    return None, path  # NRRD and PNG readers detect short data themselves


def _metaimage_data_bytes(path: Path) -> tuple[int | None, Path]:
    """Data bytes of a MetaImage file: after the header (``.mha``) or in the named data file."""
    fields: dict[str, str] = {}
    header_bytes = 0
    with open(path, "rb") as handle:
        for raw_line in handle:
            header_bytes += len(raw_line)
            key, sep, value = raw_line.decode("latin-1").partition("=")
            if not sep:
                raise FileFormatError(f"{path} is not a MetaImage file: header line {raw_line[:60]!r}")
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
    data_name = fields.get("ElementDataFile", "")
    compressed = fields.get("CompressedData", "False").lower() == "true"
    if compressed or data_name.upper().startswith("LIST") or "%" in data_name:
        return None, path
    skip = max(int(fields.get("HeaderSize", "0") or 0), 0)
    if data_name.upper() == "LOCAL":
        return path.stat().st_size - header_bytes - skip, path
    data_path = path.parent / data_name
    if not data_path.is_file():
        raise FileFormatError(f"{path} names the data file {data_name!r}, which does not exist beside it")
    return data_path.stat().st_size - skip, data_path


def _nifti_data_offset(header: bytes, path: Path) -> int:
    """Byte offset of the voxel data (``vox_offset``) in a NIfTI-1 or NIfTI-2 header."""
    for order in "<>":
        if len(header) >= 352 and struct.unpack(order + "i", header[:4])[0] == 348:
            return int(struct.unpack(order + "f", header[108:112])[0])
        if len(header) >= _NIFTI_HEADER_BYTES and struct.unpack(order + "i", header[:4])[0] == 540:
            return int(struct.unpack(order + "q", header[168:176])[0])
    raise FileFormatError(f"{path} does not start with a NIfTI header")


def _gunzip_measure(path: Path) -> tuple[bytes, int]:
    """Decompress a gzip file fully: its first bytes and its total length. Truncation raises."""
    try:
        with gzip.open(path, "rb") as stream:
            header = stream.read(_NIFTI_HEADER_BYTES)
            total = len(header)
            while chunk := stream.read(_GZIP_CHUNK):
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        raise FileFormatError(f"{path} is truncated or not valid gzip data: {exc}") from exc
    return header, total
