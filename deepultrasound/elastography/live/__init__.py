"""Live DeepUSE: frame-by-frame strain from RF over OpenIGTLink, and its benchmarks.

- ``processor``  :class:`LiveStrainProcessor`: one RF frame in, strain + B-mode out (shared with
  the DeepUSE Slicer module; no networking)
- ``pipeline``   the threaded receive -> network -> strain -> send pipeline, with reconnect
- ``command``    ``deepultrasound stream``
- ``viewer``     a viewer process that receives the served images, as 3D Slicer does
- ``bench``      ``deepultrasound bench stream``; ``soak``: ``bench soak``
- ``throughput`` ``deepultrasound bench throughput``: model + strain per frame on one device

The OpenIGTLink transport and the scanner simulator are :mod:`deepultrasound.streaming`. Only
``processor`` is imported here, so hosts that must not load pyigtl (3D Slicer) can use it.
"""

from deepultrasound.elastography.live.processor import TIMING_STAGES, FrameResult, LiveStrainProcessor, check_frame

__all__ = ["TIMING_STAGES", "FrameResult", "LiveStrainProcessor", "check_frame"]
