"""Shared pytest fixtures."""

import pytest


@pytest.fixture
def mrml_scene():
    """A fresh MRML scene from the slicer-core wheel, cleared after the test."""
    import slicer

    scene = slicer.vtkMRMLScene()
    yield scene
    scene.Clear(1)
