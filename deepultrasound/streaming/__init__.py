"""Live DeepUSE: frame-by-frame strain, OpenIGTLink in and out, a scanner simulator, the stream pipeline.

- ``processor``  :class:`LiveStrainProcessor`: one RF frame in, strain + B-mode out (shared with
  the DeepUSE Slicer module; no networking)
- ``igtl``       pyigtl helpers: images <-> IMAGE messages with geometry, STATUS messages, a server
  and a client that report what they drop
- ``queues``     the latest-frame-wins hand-over between pipeline stages
- ``scanner``    ``deepultrasound scanner``: an OpenIGTLink server streaming RF like a PLUS server
- ``pipeline``   the threaded receive -> network -> strain -> send pipeline, with reconnect
- ``command``    ``deepultrasound stream``
- ``bench``      ``deepultrasound bench stream``; ``soak``: ``bench soak``
- ``throughput`` ``deepultrasound bench throughput``: model + strain per frame on one device

Only ``processor`` is imported here, so hosts that must not load pyigtl (3D Slicer) can use it.
"""

from deepultrasound.streaming.processor import TIMING_STAGES, FrameResult, LiveStrainProcessor, check_frame

__all__ = ["TIMING_STAGES", "FrameResult", "LiveStrainProcessor", "check_frame"]
