"""Shared pytest fixtures, and the ``shared_data`` marker.

A test that reads the shared development data names the sub-folders it needs::

    @pytest.mark.shared_data("deepuse_reference")
    def test_usenet_matches_original(): ...

and is skipped, with the folder named, where they are missing (a clone without the data runs
everything else). The folder is :func:`deepultrasound.io.shared_data.shared_data_dir`; a module
locates files with ``shared_data_dir() / "deepuse_reference"``.
"""

import pytest

from deepultrasound.io.shared_data import BESIDE_CHECKOUT, DATA_ENVIRONMENT_VARIABLE, shared_data_dir


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "shared_data(*folders): needs these sub-folders of the shared data; skipped where they are missing"
    )


def missing_shared_data(folders: tuple[str, ...]) -> str | None:
    """Why a test needing ``folders`` cannot run, or None when they are all there."""
    root = shared_data_dir()
    missing = [folder for folder in folders if not (root / folder).exists()]
    if not missing:
        return None
    return (
        f"shared data not found: {', '.join(missing)} missing in {root}; "
        f"set {DATA_ENVIRONMENT_VARIABLE} or place the data at {BESIDE_CHECKOUT}"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the tests whose shared data is missing (a skip marker, so the summary names each test)."""
    for item in items:
        folders = tuple(folder for marker in item.iter_markers("shared_data") for folder in marker.args)
        reason = missing_shared_data(folders) if folders else None
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def mrml_scene():
    """A fresh MRML scene from the slicer-core wheel, cleared after the test."""
    import slicer

    scene = slicer.vtkMRMLScene()
    yield scene
    scene.Clear(1)
