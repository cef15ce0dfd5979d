"""Tracking of a sequence in a background process, with progress and Cancel.

The frames ``(T, H, W)`` (colour ``(T, H, W, C)``) go to a temporary NRRD file on the engine grid
(:meth:`.inputs.TrackingFrames.engineGeometry`: the frames' pixel size, the frame interval along K)
and the labelled frame's CAMUS labels ``(1, H, W)`` beside them; ``deepultrasound track`` (started with
Slicer's Python, see :class:`DeepUltrasoundCommonLib.engineJob.EngineJob`) writes into a folder there
the label sequence, the displacements, ``strain.csv`` and ``summary.json``, which are read back into a
:class:`Tracking`. The engine reports its progress over the frames as tqdm lines
(``"tracking:  40%|####  | 2/5 [00:01<00:02, ...]"``).

Files whose grid is not the one handed to the engine are refused: the module would place the labels
and displacements elsewhere than the engine computed them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from DeepUltrasoundCommonLib.engineJob import EngineJob, readVolumeArray, writeArrayFile

from .inputs import TrackingFrames
from .logic import CAMUS_LABELS, TrackingMethod, pixelsFromEngineDisplacement, trackingArguments

#: mm within which the grid of the engine's output files must match the grid handed to it
GRID_TOLERANCE_MM = 1e-4
#: the engine's output folder inside the job's temporary folder
OUTPUT_FOLDER = "tracked"


def _figure(figures: dict, key: str, unit: str) -> str:
    value = figures.get(key)
    return "n/a" if value is None else f"{value:.1f}{unit}"


@dataclass(frozen=True)
class Tracking:
    """What ``deepultrasound track`` computed.

    Attributes:
        labels: ``(T, H, W)`` uint8 CAMUS labels of every frame.
        displacement: ``(T, 2, H, W)`` float32 pixels (channel 0 lateral) of each frame onto the labelled frame.
        strainColumns: the columns of ``strain.csv`` in order, each the column's text values, one per frame.
        figures: the contents of ``summary.json`` (ED and ES frames, EF, strain at ES, units, method, flagged
            frames).
    """

    labels: np.ndarray
    displacement: np.ndarray
    strainColumns: dict[str, list[str]]
    figures: dict

    def summary(self) -> str:
        figures = self.figures
        return (
            f"{figures['frames']} frames tracked from frame {figures['labelled_frame']} ({figures['method']}): "
            f"ED frame {figures['ed_frame']}, ES frame {figures['es_frame']}; "
            f"EF {_figure(figures, 'ejection_fraction_percent', ' %')}, "
            f"GLS at ES {_figure(figures, 'gls_endo_percent', ' %')} (endocardial), "
            f"{_figure(figures, 'gls_mid_percent', ' %')} (mid-wall), "
            f"radial strain {_figure(figures, 'radial_percent', ' %')}; {self.flagText()}"
        )

    def flagText(self) -> str:
        """Which frames the engine's quality figure flagged (their labels and strain may be wrong), or none."""
        flagged = self.figures.get("flagged_frames", [])
        if not flagged:
            return "no frame flagged"
        return f"FLAGGED frames {flagged}: low similarity or folding, do not trust their labels and strain"


class TrackingJob(EngineJob):
    """One tracking run (see :class:`DeepUltrasoundCommonLib.engineJob.EngineJob`).

    Args:
        tracking: the frames (:func:`.inputs.framesOfInput`).
        labels: ``(H, W)`` CAMUS labels of frame ``labelledFrame``.
        labelledFrame: the labelled frame, ``0 <= labelledFrame < T``.
        method: network (and model) or baseline, and device.
        python: interpreter of the process (default: Slicer's ``PythonSlicer``).

    Attributes:
        progress: ``(frames done, frames to track)`` as last reported, or None before the first report.
    """

    description = "Tracking"

    def __init__(
        self,
        tracking: TrackingFrames,
        labels: np.ndarray,
        labelledFrame: int,
        method: TrackingMethod,
        python: str | None = None,
    ) -> None:
        super().__init__(python)
        if labels.shape != tracking.frames.shape[1:3]:
            raise ValueError(f"Labels {labels.shape} and frames {tracking.frames.shape[1:3]} differ in size")
        if not 0 <= labelledFrame < tracking.count:
            raise ValueError(f"Labelled frame {labelledFrame} is outside the frames 0..{tracking.count - 1}")
        self.tracking, self.labels, self.labelledFrame, self.method = tracking, labels, labelledFrame, method
        self.engineGeometry = tracking.engineGeometry()

    def writeInputs(self, folder: Path) -> list[str]:
        scene = self.tracking.node.GetScene()
        className = "vtkMRMLVectorVolumeNode" if self.tracking.colour else "vtkMRMLScalarVolumeNode"
        writeArrayFile(self.tracking.frames, self.engineGeometry, folder / "frames.nrrd", scene, className)
        writeArrayFile(self.labels[np.newaxis].astype(np.uint8), self.engineGeometry, folder / "labels.nrrd", scene)
        return trackingArguments(
            folder / "frames.nrrd", folder / "labels.nrrd", self.labelledFrame, folder / OUTPUT_FOLDER, self.method
        )

    def readResults(self, folder: Path) -> Tracking:
        """Read the engine's files, checked against the frames handed to it.

        Raises:
            ValueError: a file cannot be read, or its size, grid or values are not the expected ones.
        """
        output, scene = folder / OUTPUT_FOLDER, self.tracking.node.GetScene()
        expected = self.tracking.frames.shape[:3]
        labels, labelsGeometry = readVolumeArray(output / "labels.mha", scene)
        vectors = "vtkMRMLVectorVolumeNode"
        displacement, displacementGeometry = readVolumeArray(output / "displacement.mha", scene, vectors)
        for name, shape, geometry in (
            ("labels", labels.shape, labelsGeometry),
            ("displacements", displacement.shape[:3], displacementGeometry),
        ):
            if shape != expected:
                raise ValueError(f"The engine wrote {name} of shape {shape}; expected {expected} (frames, J, I)")
            if not geometry.isClose(self.engineGeometry, GRID_TOLERANCE_MM):
                raise ValueError(
                    f"The engine wrote {name} on another grid (IJK-to-RAS\n{geometry.ijkToRas.round(6)}) than the "
                    f"frames' (\n{self.engineGeometry.ijkToRas.round(6)})"
                )
        if displacement.shape[3:] != (2,) or labels.max() > max(CAMUS_LABELS):
            raise ValueError(
                f"The engine wrote displacements with {displacement.shape[3:]} components (expected 2) or labels "
                f"up to {labels.max()} (expected at most {max(CAMUS_LABELS)})"
            )
        with (output / "strain.csv").open(newline="", encoding="utf-8") as file:
            rows = list(csv.reader(file))
        columns = {name: [row[index] for row in rows[1:]] for index, name in enumerate(rows[0])}
        figures = json.loads((output / "summary.json").read_text(encoding="utf-8"))
        pixels = pixelsFromEngineDisplacement(displacement, displacementGeometry)
        return Tracking(labels.astype(np.uint8), pixels, columns, figures)
