"""Volume nodes <-> numpy arrays, with their geometry.

Array convention (Slicer's): a volume of I x J x K voxels is the numpy array ``(K, J, I)``
and a vector volume of C components is ``(K, J, I, C)``. For ultrasound images the module
code reads I as lateral (beam lines), J as axial (samples, depth) and K as frame (time).

Geometry is the IJK-to-RAS matrix: column ``n`` of its upper 3 x 3 block is the direction
of voxel axis ``n`` scaled by the spacing along it (mm), and its last column holds the
RAS position (mm) of the centre of voxel ``(0, 0, 0)``.

Only ``slicer`` MRML utilities and numpy are used here, so this runs with ``slicer-core``
outside the Slicer application.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer

#: dtypes that Slicer renders and stores; int64/uint64 are refused by ``updateVolumeFromArray``.
_NARROWED_INTEGER_DTYPE = {np.dtype(np.int64): np.int32, np.dtype(np.uint64): np.uint32}


@dataclass(frozen=True)
class VolumeGeometry:
    """Where the voxels of a volume lie in RAS space.

    Args:
        ijkToRas: ``(4, 4)`` homogeneous matrix from voxel index ``(i, j, k, 1)`` to RAS mm.
    """

    ijkToRas: np.ndarray

    def __post_init__(self) -> None:
        matrix = np.array(self.ijkToRas, dtype=np.float64)
        if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
            raise ValueError(f"IJK-to-RAS must be a finite 4 x 4 matrix, got shape {matrix.shape}")
        if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
            raise ValueError("IJK-to-RAS is singular: a voxel axis has zero spacing or two axes are parallel")
        object.__setattr__(self, "ijkToRas", matrix)

    @classmethod
    def fromSpacingOrigin(
        cls,
        spacing: tuple[float, float, float],
        origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
        directions: np.ndarray | None = None,
    ) -> VolumeGeometry:
        """Geometry from spacing (mm along i, j, k), origin (RAS mm) and unit direction columns ``(3, 3)``."""
        directions = np.eye(3) if directions is None else np.asarray(directions, dtype=np.float64)
        matrix = np.eye(4)
        matrix[:3, :3] = directions * np.asarray(spacing, dtype=np.float64)[np.newaxis, :]
        matrix[:3, 3] = origin
        return cls(matrix)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k: ``(3,)``."""
        return np.linalg.norm(self.ijkToRas[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """RAS position (mm) of the centre of voxel ``(0, 0, 0)``: ``(3,)``."""
        return self.ijkToRas[:3, 3].copy()

    @property
    def directions(self) -> np.ndarray:
        """Unit direction of each voxel axis, one per column: ``(3, 3)``."""
        return self.ijkToRas[:3, :3] / self.spacing[np.newaxis, :]

    def isClose(self, other: VolumeGeometry, toleranceMm: float = 1e-4) -> bool:
        """Whether both geometries place every voxel within ``toleranceMm`` of each other (per matrix entry)."""
        return bool(np.allclose(self.ijkToRas, other.ijkToRas, rtol=0.0, atol=toleranceMm))


def volumeGeometry(volumeNode: slicer.vtkMRMLVolumeNode) -> VolumeGeometry:
    """The geometry of ``volumeNode`` (its IJK-to-RAS matrix)."""
    matrix = slicer.util.vtkMatrixFromArray(np.eye(4))
    volumeNode.GetIJKToRASMatrix(matrix)
    return VolumeGeometry(slicer.util.arrayFromVTKMatrix(matrix))


def setVolumeGeometry(volumeNode: slicer.vtkMRMLVolumeNode, geometry: VolumeGeometry) -> None:
    """Set spacing, origin and directions of ``volumeNode`` from ``geometry``."""
    volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(geometry.ijkToRas))


def volumeToArray(volumeNode: slicer.vtkMRMLVolumeNode) -> tuple[np.ndarray, VolumeGeometry]:
    """Copy of the voxels of ``volumeNode`` and its geometry.

    Returns:
        ``(array, geometry)``: array ``(K, J, I)`` for scalar and label map volumes,
        ``(K, J, I, C)`` for vector volumes, in the node's own dtype; it does not share
        memory with the node, so changing it leaves the scene untouched.

    Raises:
        ValueError: no node, or a node without image data.
    """
    if volumeNode is None:
        raise ValueError("No volume selected: choose an input volume")
    if volumeNode.GetImageData() is None:
        raise ValueError(f"Volume '{volumeNode.GetName()}' has no image data: load or compute its voxels first")
    return np.array(slicer.util.arrayFromVolume(volumeNode), copy=True), volumeGeometry(volumeNode)


def arrayToVolume(array: np.ndarray, volumeNode: slicer.vtkMRMLVolumeNode, geometry: VolumeGeometry) -> None:
    """Write ``array`` and ``geometry`` into ``volumeNode`` (voxels are copied).

    Args:
        array: ``(J, I)`` (one frame), ``(K, J, I)`` or, for a vector volume node,
            ``(K, J, I, C)``. int64/uint64 are stored as int32/uint32 (Slicer refuses 64-bit
            integer voxels); other dtypes are kept.
        volumeNode: node to fill; it keeps its class (scalar, label map, vector).
        geometry: where the voxels lie.

    Raises:
        ValueError: no node, an array of the wrong rank, non-finite floats, or 64-bit
            integers outside the 32-bit range.
    """
    if volumeNode is None:
        raise ValueError("No output volume selected: choose or create an output volume")
    array = np.asarray(array)
    isVector = volumeNode.IsA("vtkMRMLVectorVolumeNode")
    # A 2-D array is one frame; make it 3-D here because updateVolumeFromArray turns 2-D input into float64.
    if array.ndim == 2 and not isVector:
        array = array[np.newaxis]
    expectedRank = 4 if isVector else 3
    if array.ndim != expectedRank:
        kind = "(K, J, I, C) for a vector volume" if isVector else "(J, I) or (K, J, I)"
        raise ValueError(f"Cannot store an array of shape {array.shape} in '{volumeNode.GetName()}': expected {kind}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ValueError(f"Refusing to store non-finite values (NaN or inf) in '{volumeNode.GetName()}'")
    narrowed = _NARROWED_INTEGER_DTYPE.get(array.dtype)
    if narrowed is not None:
        info = np.iinfo(narrowed)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(
                f"Values in [{array.min()}, {array.max()}] do not fit in {np.dtype(narrowed).name} "
                f"for '{volumeNode.GetName()}'"
            )
        array = array.astype(narrowed)
    slicer.util.updateVolumeFromArray(volumeNode, np.ascontiguousarray(array))
    setVolumeGeometry(volumeNode, geometry)


def labelMapToArray(labelVolume: slicer.vtkMRMLLabelMapVolumeNode) -> tuple[np.ndarray, VolumeGeometry]:
    """Labels ``(K, J, I)`` int32 (0 is background) and their geometry.

    Raises:
        ValueError: no node, not a label map volume, or negative labels.
    """
    if labelVolume is not None and not labelVolume.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ValueError(
            f"'{labelVolume.GetName()}' is not a label map volume: convert it to a label map in the Volumes module"
        )
    labels, geometry = volumeToArray(labelVolume)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"'{labelVolume.GetName()}' stores {labels.dtype} voxels: labels must be integers")
    if labels.size and labels.min() < 0:
        raise ValueError(f"'{labelVolume.GetName()}' has negative labels (min {labels.min()}): labels must be >= 0")
    return labels.astype(np.int32, copy=False), geometry


def newFrameTime(volumeNode, lastTime: int | None) -> int | None:
    """Modification time of ``volumeNode``'s image data when it holds a frame not seen yet, else None.

    An observer of ``ImageDataModifiedEvent`` is called when new image data is set before its voxels
    are filled, and again once for the data and its voxels: only a filled image whose time differs
    from ``lastTime`` is a new frame.
    """
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetPointData().GetScalars() is None:
        return None
    time = imageData.GetMTime()
    return None if time == lastTime else time
