"""OpenIGTLink transport shared by live capabilities, and a scanner stand-in.

- ``igtl``     images <-> IMAGE messages with geometry, STATUS messages, a bounded and checked
  receive loop (:class:`~deepultrasound.streaming.igtl.IgtlClient`) and a server that reports what
  it drops
- ``queues``   the latest-frame-wins hand-over between pipeline stages
- ``scanner``  ``deepultrasound scanner``: an OpenIGTLink server streaming RF like a PLUS server

The live strain pipeline built on them is :mod:`deepultrasound.elastography.live`.
"""
