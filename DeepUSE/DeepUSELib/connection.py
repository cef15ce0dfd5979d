"""The OpenIGTLink connection to the scanner, through OpenIGTLinkIF's connector node.

The connector (``vtkMRMLIGTLConnectorNode``) comes with the SlicerOpenIGTLink extension, so
these functions run in the Slicer application only. The scanner (``deepultrasound scanner`` or a
PLUS server) is the server; Slicer connects as a client. Every IMAGE message of device ``RF``
updates a scalar volume node named ``RF``, which :class:`.live.LiveStrainLogic` observes.
"""

from __future__ import annotations

import slicer

#: OpenIGTLink device name of the RF frames sent by ``deepultrasound scanner``
RF_DEVICE_NAME = "RF"
CONNECTOR_NAME = "DeepUSE scanner connection"
#: the connector that receives Strain and BMode from the live strain process
STRAIN_CONNECTOR_NAME = "DeepUSE live strain connection"


def connectToScanner(
    scene: slicer.vtkMRMLScene,
    host: str,
    port: int,
    connector: slicer.vtkMRMLNode | None = None,
    name: str = CONNECTOR_NAME,
) -> slicer.vtkMRMLNode:
    """Start a client connection to ``host:port``, reusing ``connector`` when given; returns the connector node.

    ``name`` names a new connector node: the scanner's, or :data:`STRAIN_CONNECTOR_NAME` for the
    live strain process's serve port.

    The connector then waits for the server and reconnects on its own; see :func:`connectionState`.

    Raises:
        ValueError: an empty host, a port outside 1..65535, or a connector that fails to start.
    """
    if not host.strip():
        raise ValueError("Enter the scanner's host name or address, e.g. 127.0.0.1")
    if not 1 <= port <= 65535:
        raise ValueError(f"Port {port} is outside 1..65535")
    if connector is None:
        connector = scene.AddNewNodeByClass("vtkMRMLIGTLConnectorNode", name)
    connector.Stop()
    connector.SetTypeClient(host.strip(), port)
    if connector.Start() != 1:
        raise ValueError(f"Could not start the OpenIGTLink connection to {host}:{port}")
    return connector


def disconnectFromScanner(connector: slicer.vtkMRMLNode | None) -> None:
    """Stop the connection; the incoming volume nodes stay in the scene."""
    if connector is not None:
        connector.Stop()


def connectionState(connector: slicer.vtkMRMLNode | None) -> str:
    """``"off"``, ``"waiting for the scanner"`` or ``"connected"``."""
    if connector is None:
        return "off"
    states = {
        slicer.vtkMRMLIGTLConnectorNode.StateWaitConnection: "waiting for the scanner",
        slicer.vtkMRMLIGTLConnectorNode.StateConnected: "connected",
    }
    return states.get(connector.GetState(), "off")


def incomingNode(connector: slicer.vtkMRMLNode | None, deviceName: str, className: str):
    """The node of class ``className`` the connector fills with the ``deviceName`` messages, or None before the
    first one (an IMAGE message fills a scalar volume, a STATUS message a ``vtkMRMLIGTLStatusNode``)."""
    if connector is None:
        return None
    for index in range(connector.GetNumberOfIncomingMRMLNodes()):
        node = connector.GetIncomingMRMLNode(index)
        if node is not None and node.GetName() == deviceName and node.IsA(className):
            return node
    return None


def incomingVolume(connector: slicer.vtkMRMLNode | None, deviceName: str = RF_DEVICE_NAME):
    """The scalar volume node the connector fills with the ``deviceName`` images, or None before the first one."""
    return incomingNode(connector, deviceName, "vtkMRMLScalarVolumeNode")


def incomingStatus(connector: slicer.vtkMRMLNode | None, deviceName: str):
    """The ``vtkMRMLIGTLStatusNode`` of the ``deviceName`` STATUS messages, or None before the first one."""
    return incomingNode(connector, deviceName, "vtkMRMLIGTLStatusNode")
