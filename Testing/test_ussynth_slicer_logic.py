"""USSynth module logic (``USSynth/USSynthLib``) on real MRML nodes from slicer-core.

Truth: the ``deepultrasound synth`` command-line contract (arguments, slice-major K N stack on the label
grid, exit status 2 with one error line), label values that a segmentation keeps, and a stand-in engine
(``Testing/data/fake_synth_engine.py``) whose sample n of frame k is ``0.1 label + 0.01 n + 0.001 k``, run
in a real background process. Where the engine offers ``synth``, its error for a missing model is checked too.
"""

from __future__ import annotations

import ast
import os
import stat
import sys
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from deepultrasound.capabilities import capabilities

ROOT = Path(__file__).resolve().parent.parent
# In Slicer every scripted module folder is on sys.path; do the same here for the Lib packages.
for moduleDir in ("DeepUltrasoundCommon", "USSynth"):
    sys.path.insert(0, str(ROOT / moduleDir))

from DeepUltrasoundCommonLib import EngineMethod, VolumeGeometry, arrayToVolume, volumeToArray  # noqa: E402
from DeepUltrasoundCommonLib.engineJob import BackgroundJobLogic  # noqa: E402
from USSynthLib import (  # noqa: E402
    SAMPLES_ATTRIBUTE,
    SynthesisJob,
    SynthesisSettings,
    samplesOfStack,
    segmentationLabels,
    synthesisArguments,
    synthesisInput,
)

#: an oblique probe pose: lines along I, samples along J, frames along K (mm)
OBLIQUE = VolumeGeometry.fromSpacingOrigin(
    spacing=(0.3, 0.05, 2.0),
    origin=(-12.5, 4.0, 30.0),
    directions=np.array([[0.0, -1.0, 0.0], [np.sqrt(0.5), 0.0, np.sqrt(0.5)], [-np.sqrt(0.5), 0.0, np.sqrt(0.5)]]),
)
AXIS_ALIGNED = VolumeGeometry.fromSpacingOrigin(spacing=(0.4, 0.1, 1.0), origin=(3.0, -2.0, 7.0))
FAKE_ENGINE = ROOT / "Testing" / "data" / "fake_synth_engine.py"
FAKE_MODEL = "fake-synthesis"
TIMEOUT_S = 60.0
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the stand-in engine starts through a shell script")


@pytest.fixture
def scene():
    """A scene as the application sets it up for sequences: the Sequences logic registers the browser node class
    and keeps proxy nodes up to date."""
    scene = slicer.vtkMRMLScene()
    sequences = slicer.vtkSlicerSequencesLogic()
    sequences.SetMRMLScene(scene)
    yield scene
    scene.Clear(1)
    sequences.SetMRMLScene(None)


@pytest.fixture
def fakePython(tmp_path) -> str:
    """An interpreter wrapper that runs the stand-in engine where the module runs ``python -m deepultrasound``."""
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_ENGINE}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return str(wrapper)


def labelFrames(frames: int = 2, height: int = 12, width: int = 10) -> np.ndarray:
    """``(K, H, W)`` uint8 with labels 1 and 4 on every frame and 2 on frame 0 only."""
    labels = np.zeros((frames, height, width), np.uint8)
    labels[:, 2:6, 3:7] = 1
    labels[:, 7:10, 1:4] = 4
    labels[0, 0, :] = 2
    return labels


def labelMap(scene, labels: np.ndarray, geometry: VolumeGeometry = OBLIQUE, name: str = "labels"):
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    arrayToVolume(labels, node, geometry)
    return node


def segmentationOf(scene, labels: np.ndarray, geometry: VolumeGeometry = OBLIQUE):
    """A segmentation imported from a label map (segments keep its values) on the label map's grid."""
    source = labelMap(scene, labels, geometry, "source")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "anatomy")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(source)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(source, segmentation)
    return segmentation


def expectedSamples(labels: np.ndarray, samples: int) -> np.ndarray:
    """``(N, K, H, W)`` the stand-in engine's known answer."""
    frames = np.arange(len(labels))[:, None, None]
    return np.stack([0.1 * labels + 0.01 * n + 0.001 * frames for n in range(samples)]).astype(np.float32)


def temporaryFolders() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("SynthesisJob-")}


def parameterNodeDefaults() -> dict[str, object]:
    """Field name -> default value of ``USSynthParameterNode`` in ``USSynth.py`` (fields without a default left out)."""
    tree = ast.parse((ROOT / "USSynth" / "USSynth.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "USSynthParameterNode")
    return {
        statement.target.id: ast.literal_eval(statement.value)
        for statement in node.body
        if isinstance(statement, ast.AnnAssign) and statement.value is not None
    }


# Settings and command line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "options"),
    [
        (SynthesisSettings(), ["--n", "1", "--seed", "0", "--device", "auto"]),
        (
            SynthesisSettings(4, 20, 2.5, 7, "sector", EngineMethod(model="echo-synth", device="cpu")),
            ["--n", "4", "--steps", "20", "--guidance", "2.5", "--probe", "sector", "--seed", "7"]
            + ["--model", "echo-synth", "--device", "cpu"],
        ),
        (
            SynthesisSettings(samples=2, probe="linear"),
            ["--n", "2", "--probe", "linear", "--seed", "0"] + ["--device", "auto"],
        ),
    ],
    ids=["model-defaults", "everything-set", "probe-only"],
)
def test_command_line_follows_the_cli_contract(settings, options):
    arguments = synthesisArguments(Path("labels.nrrd"), Path("out.nrrd"), settings)
    assert arguments == ["synth", "labels.nrrd", "-o", "out.nrrd", *options]


def test_parameter_node_fields_make_the_command_line():
    """The fields read are those of USSynthParameterNode; its defaults leave sampling to the model."""
    defaults = parameterNodeDefaults()
    assert SynthesisSettings.fromParameterNode(SimpleNamespace(**defaults)) == SynthesisSettings()
    chosen = {**defaults, "samples": 3, "samplingSteps": 25, "guidance": 1.5, "seed": 11, "probe": "sector"}
    settings = SynthesisSettings.fromParameterNode(SimpleNamespace(**{**chosen, "modelName": "echo-synth"}))
    assert synthesisArguments(Path("l"), Path("o"), settings)[2:] == [
        *("-o", "o", "--n", "3", "--steps", "25", "--guidance", "1.5", "--probe", "sector", "--seed", "11"),
        *("--model", "echo-synth", "--device", "auto"),
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"samples": 0}, "Samples must be >= 1"),
        ({"steps": -1}, "steps -1"),
        ({"guidance": -0.5}, "guidance -0.5"),
        ({"probe": "convex"}, "Unknown probe 'convex'"),
    ],
)
def test_bad_settings_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        SynthesisSettings(**arguments)


def test_engine_stack_is_slice_major():
    frames, samples = 3, 2
    stack = np.arange(frames * samples, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    split = samplesOfStack(stack, frames, samples)
    assert split.shape == (samples, frames, 2, 2)
    for k in range(frames):
        for n in range(samples):
            assert split[n, k, 0, 0] == k * samples + n
    with pytest.raises(ValueError, match="expected 3 frame\\(s\\) x 2 sample\\(s\\) = 6"):
        samplesOfStack(stack[:5], frames, samples)


# Labels -------------------------------------------------------------------------------------------


def test_segmentation_keeps_its_label_values_on_its_reference_grid(scene):
    labels = labelFrames()
    segmentation = segmentationOf(scene, labels)
    overlapping = np.zeros_like(labels)
    overlapping[1, 6:9, 2:5] = 3  # over label 4 and background, in a layer of its own, listed after label 4
    source = labelMap(scene, overlapping, name="overlapping")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(source, segmentation)
    assert segmentation.GetSegmentation().GetNumberOfLayers() == 2
    colours = scene.GetNumberOfNodesByClass("vtkMRMLColorNode")
    exported, geometry = synthesisInput(segmentation)
    np.testing.assert_array_equal(exported, np.maximum(labels, overlapping))  # 4 wins over 3
    assert exported.dtype == np.int32 and geometry.isClose(OBLIQUE, 1e-9)
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 2  # no staging node is left
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorNode") == colours  # nor the export's colour table


def test_labels_that_cannot_condition_are_refused(scene):
    with pytest.raises(ValueError, match="Select a label map or a segmentation"):
        synthesisInput(None)
    with pytest.raises(ValueError, match="only background"):
        synthesisInput(labelMap(scene, np.zeros((1, 4, 4), np.uint8)))
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(ValueError, match="'empty' has no segments"):
        synthesisInput(empty)
    segmentation = segmentationOf(scene, labelFrames())
    segments = segmentation.GetSegmentation()
    segments.GetNthSegment(1).SetLabelValue(segments.GetNthSegment(0).GetLabelValue())
    with pytest.raises(ValueError, match="share the label value 1"):
        segmentationLabels(segmentation)
    noGrid = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "no grid")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
        labelMap(scene, labelFrames(), name="drawn"), noGrid
    )
    with pytest.raises(ValueError, match="no reference image grid"):
        synthesisInput(noGrid)


# The job ------------------------------------------------------------------------------------------


def test_job_refuses_bad_input_before_starting(scene):
    output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "synthetic")
    before = temporaryFolders()
    with pytest.raises(ValueError, match="Select a label map"):
        SynthesisJob(None, output, SynthesisSettings())
    with pytest.raises(ValueError, match="only background"):
        SynthesisJob(labelMap(scene, np.zeros((2, 6, 5), np.uint8)), output, SynthesisSettings())
    labels = labelMap(scene, labelFrames())
    with pytest.raises(ValueError, match="output image volume"):
        SynthesisJob(labels, None, SynthesisSettings())
    recording = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "recording")
    arrayToVolume(np.zeros((1, 4, 4), np.float32), output, OBLIQUE)
    recording.SetDataNodeAtValue(output, "0")
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "recording")
    browser.SetAndObserveMasterSequenceNodeID(recording.GetID())
    with pytest.raises(ValueError, match="shows an item of sequence 'recording'"):
        SynthesisJob(labels, browser.GetProxyNode(recording), SynthesisSettings())
    assert temporaryFolders() == before


def test_label_file_carries_the_labels_and_their_geometry(scene, tmp_path):
    labels = labelFrames()
    job = SynthesisJob(labelMap(scene, labels), scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"), SynthesisSettings())
    arguments = job.writeInputs(tmp_path)
    assert arguments[:4] == ["synth", str(tmp_path / "labels.nrrd"), "-o", str(tmp_path / "synthetic.nrrd")]
    image = sitk.ReadImage(str(tmp_path / "labels.nrrd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels)
    lpsToRas = np.diag([-1.0, -1.0, 1.0])  # ITK files are in LPS
    np.testing.assert_allclose(lpsToRas @ np.array(image.GetOrigin()), OBLIQUE.origin, atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), OBLIQUE.spacing, atol=1e-9)
    np.testing.assert_allclose(lpsToRas @ np.array(image.GetDirection()).reshape(3, 3), OBLIQUE.directions, atol=1e-6)
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 1  # no staging node is left


@pytest.mark.parametrize("source", ["label map", "segmentation"])
def test_samples_lie_on_the_label_grid_and_are_browsed_in_the_output_volume(scene, fakePython, source):
    labels = labelFrames()
    labelsNode = labelMap(scene, labels) if source == "label map" else segmentationOf(scene, labels)
    output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "synthetic")
    volumes = scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode")
    before = temporaryFolders()
    settings = SynthesisSettings(samples=3, method=EngineMethod(model=FAKE_MODEL))
    job = SynthesisJob(labelsNode, output, settings, python=fakePython)
    result = job.run(timeoutS=TIMEOUT_S)

    truth = expectedSamples(labels, 3)
    shown, geometry = volumeToArray(output)
    np.testing.assert_allclose(shown, truth[0], atol=1e-6)
    assert geometry.isClose(OBLIQUE, 1e-9)
    sequence = scene.GetFirstNode("synthetic samples", "vtkMRMLSequenceNode")
    assert sequence.GetAttribute(SAMPLES_ATTRIBUTE) and sequence.GetNumberOfDataNodes() == 3
    assert sequence.GetIndexName() == "sample"
    for n in range(3):
        item, itemGeometry = volumeToArray(sequence.GetNthDataNode(n))
        np.testing.assert_allclose(item, truth[n], atol=1e-6)
        assert itemGeometry.isClose(OBLIQUE, 1e-9) and sequence.GetNthIndexValue(n) == str(n)
    browser = scene.GetFirstNode("synthetic samples", "vtkMRMLSequenceBrowserNode")
    browser.SetSelectedItemNumber(2)  # browsing moves the output volume to sample 2, on the same grid
    np.testing.assert_allclose(volumeToArray(output)[0], truth[2], atol=1e-6)
    assert result.summary() == (
        "wrote 3 sample(s) of 2 frame(s) of 12 x 10: 3 ddim steps -> 'synthetic', 3 samples browsed in sequence "
        "'synthetic samples'"
    )
    assert job.progress is not None  # the engine's tqdm lines
    assert temporaryFolders() == before
    assert scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == volumes  # no staging node left behind


def test_one_frame_one_sample_is_one_volume_and_a_rerun_refills_the_samples(scene, fakePython):
    labels = labelFrames(frames=1)
    labelsNode = labelMap(scene, labels, AXIS_ALIGNED)
    output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "synthetic")
    single = SynthesisSettings(method=EngineMethod(model=FAKE_MODEL))
    SynthesisJob(labelsNode, output, single, python=fakePython).run(timeoutS=TIMEOUT_S)  # a 2-D image file
    shown, geometry = volumeToArray(output)
    np.testing.assert_allclose(shown, expectedSamples(labels, 1)[0], atol=1e-6)
    assert geometry.isClose(AXIS_ALIGNED, 1e-9)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode") == 0

    several = SynthesisSettings(samples=4, method=EngineMethod(model=FAKE_MODEL))
    SynthesisJob(labelsNode, output, several, python=fakePython).run(timeoutS=TIMEOUT_S)
    SynthesisJob(labelsNode, output, single, python=fakePython).run(timeoutS=TIMEOUT_S)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode") == 1  # the samples' sequence, refilled
    assert scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode") == 1
    assert scene.GetFirstNodeByClass("vtkMRMLSequenceNode").GetNumberOfDataNodes() == 1


def test_engine_error_line_reaches_the_message_and_the_output_is_untouched(scene, fakePython):
    output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "synthetic")
    before = temporaryFolders()
    settings = SynthesisSettings(method=EngineMethod(model="missing-model"))
    with pytest.raises(
        ValueError, match=r"(?s)Synthesis failed \(exit status 2\):.*no synthesis model named 'missing-model'"
    ):
        SynthesisJob(labelMap(scene, labelFrames()), output, settings, python=fakePython).run(timeoutS=TIMEOUT_S)
    assert output.GetImageData() is None and temporaryFolders() == before


def test_a_result_off_the_label_pixels_is_refused(scene, fakePython, monkeypatch):
    monkeypatch.setenv("FAKE_SYNTH_PIXEL_SCALE", "2")
    output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "synthetic")
    settings = SynthesisSettings(samples=2, method=EngineMethod(model=FAKE_MODEL))
    with pytest.raises(ValueError, match=r"The engine wrote pixels of \[0.6 +0.1 *\] mm; the labels' are"):
        SynthesisJob(labelMap(scene, labelFrames()), output, settings, python=fakePython).run(timeoutS=TIMEOUT_S)
    assert output.GetImageData() is None


def test_cancel_ends_the_process_and_removes_its_files(scene, fakePython):
    output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "synthetic")
    before = temporaryFolders()
    settings = SynthesisSettings(samples=2, steps=100000, method=EngineMethod(model=FAKE_MODEL))
    job = SynthesisJob(labelMap(scene, labelFrames()), output, settings, python=fakePython).start()
    tick = threading.Event()
    for _ in range(600):  # until the engine reports progress, at most 30 s
        if not job.poll() or job.progress is not None:
            break
        tick.wait(0.05)
    assert job.running and job.progress is not None
    job.cancel()
    assert not job.running and job.process.returncode not in (0, None)  # ended by the interrupt or the kill
    assert temporaryFolders() == before
    with pytest.raises(ValueError, match="Synthesis failed"):
        job.finish()
    assert output.GetImageData() is None


def test_the_logic_cancels_its_background_job_when_the_scene_closes(scene, fakePython, monkeypatch):
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)  # the application's scene, which the logic observes
    logic = BackgroundJobLogic()
    output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "synthetic")
    settings = SynthesisSettings(samples=2, steps=100000, method=EngineMethod(model=FAKE_MODEL))
    labels = labelMap(scene, labelFrames())
    started = logic.runJob(lambda: SynthesisJob(labels, output, settings, python=fakePython), waitForCompletion=False)
    job = logic.job
    assert started == "" and job.running
    scene.Clear(0)
    assert logic.job is None and not job.running


# The engine itself --------------------------------------------------------------------------------

needsSynth = pytest.mark.skipif("synth" not in capabilities().commands, reason="the engine has no 'synth' yet")


@pytest.fixture(scope="module")
def echoModel(tmp_path_factory) -> Path:
    """An untrained tiny echo synthesis bundle (16 x 16), exported as the engine's own tests make theirs."""
    from test_synthesis_command import export_untrained  # imports torch: only where the engine runs

    return export_untrained(tmp_path_factory.mktemp("models"), "echo", "tiny-echo")


@needsSynth
def test_engine_names_a_missing_model(scene):
    output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "synthetic")
    settings = SynthesisSettings(steps=1, method=EngineMethod(model="no-such-synthesis-model", device="cpu"))
    with pytest.raises(ValueError, match=r"(?s)Synthesis failed \(exit status 2\):.*no-such-synthesis-model"):
        SynthesisJob(labelMap(scene, labelFrames()), output, settings, python=sys.executable).run(timeoutS=TIMEOUT_S)
    assert output.GetImageData() is None


@needsSynth
def test_engine_samples_are_its_stack_slice_major_on_the_label_grid(scene, echoModel, tmp_path):
    """Sample n of frame k is slice k N + n of the file the engine writes for the same labels and options."""
    labels = np.zeros((2, 20, 16), np.uint8)  # CAMUS values: LV cavity, myocardium, left atrium
    labels[:, 4:14, 5:11] = 2
    labels[:, 5:13, 6:10] = 1
    labels[1, 14:18, 5:11] = 3
    labelsNode = labelMap(scene, labels)
    output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "synthetic")
    settings = SynthesisSettings(samples=2, steps=2, seed=3, method=EngineMethod(model=str(echoModel), device="cpu"))
    job = SynthesisJob(labelsNode, output, settings, python=sys.executable)
    result = job.run(timeoutS=TIMEOUT_S)
    assert "model tiny-echo" in result.summary() and result.summary().endswith("sequence 'synthetic samples'")

    from deepultrasound.cli import main

    arguments = SynthesisJob(labelsNode, output, settings).writeInputs(tmp_path)
    assert main(arguments) == 0
    stack = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "synthetic.nrrd")))
    sequence = scene.GetFirstNode("synthetic samples", "vtkMRMLSequenceNode")
    assert sequence.GetNumberOfDataNodes() == 2
    for n in range(2):
        sample, geometry = volumeToArray(sequence.GetNthDataNode(n))
        assert sample.shape == labels.shape and geometry.isClose(OBLIQUE, 1e-9)
        assert 0.0 <= sample.min() and sample.max() <= 1.0
        for k in range(2):
            np.testing.assert_allclose(sample[k], stack[k * 2 + n], atol=1e-6)
    assert not np.allclose(stack[0], stack[1])  # two samples of one frame differ
