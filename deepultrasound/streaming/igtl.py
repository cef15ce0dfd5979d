"""OpenIGTLink with pyigtl: images <-> IMAGE messages with their geometry, STATUS messages, and a
server and a client fit for a long-running stream.

Geometry. A frame ``(H, W)`` = (axial samples, lines) travels as a one-slice IMAGE ``(1, H, W)``
(pyigtl axes k, j, i): index i runs along the lines (lateral), j along the samples (axial,
downwards). ``ijk_to_world`` holds the spacing and orientation: its columns are the i, j and k
steps in mm, ``direction[:, 0] * lateral_mm``, ``direction[:, 1] * axial_mm``, ``direction[:, 2]
* 1 mm``, and its last column the position of pixel (0, 0) in mm. The default orientation is the
identity (x lateral, y depth), the geometry of :class:`deepultrasound.io.Image`.

Frame numbers. Our scanner sends header-version-2 messages with metadata ``FrameIndex`` (its frame
counter); the stream copies it to its outputs with ``ReferenceIndex``, so a viewer can match
results with source frames. Sources without it (any PLUS server) work the same.

What pyigtl lacks and is added here:

- STATUS messages (:class:`StatusMessage`), registered with pyigtl so that both ends decode them;
- :class:`IgtlServer`: binds any address, installs no signal handlers (pyigtl's server replaces
  SIGINT/SIGTERM, wrong inside a host application and in worker threads), can be created in any
  thread, and never blocks or grows a backlog when its client is slow or gone;
- :class:`IgtlClient`: its own receive loop (pyigtl's cannot bound a message's size): a header
  that declares more than ``max_message_bytes`` or is not OpenIGTLink drops the connection before
  anything is allocated, a body with a wrong CRC-64 or one pyigtl cannot decode is skipped, every
  such problem and every lost connection becomes a one-line :class:`LinkEvent` (no traceback), it
  reconnects with back-off, and waiting for a message is event-driven rather than polled;
- a fast checksum: pyigtl computes the CRC-64 of every message body with crcmod's byte-table
  loop, about 250 MB/s (3.4 ms per 1600 x 128 float32 frame, holding the GIL, on every frame a
  scanner sends and on both images the stream serves). Importing this module swaps in fastcrc's
  CRC-64/ECMA-182, the same checksum (OpenIGTLink's: polynomial 0x42F0E1EBA9EA3693, no
  reflection, initial value and final xor 0), about 100x faster.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pyigtl
from fastcrc import crc64
from pyigtl import comm, messages

from deepultrasound.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_SOURCE_PORT = 18944
"""The OpenIGTLink port of PLUS servers and of ``deepultrasound scanner``."""
DEFAULT_OUTPUT_PORT = 18945
"""The port ``deepultrasound stream`` serves strain and B-mode on."""

FRAME_INDEX_KEY = "FrameIndex"
REFERENCE_INDEX_KEY = "ReferenceIndex"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20
"""Largest message body a client accepts by default: a 4096 x 1024 float32 frame (16 MiB) with 4x headroom."""

#: OpenIGTLink STATUS codes used here (protocol v2 status codes)
STATUS_OK = 1
STATUS_UNKNOWN_ERROR = 2
STATUS_NOT_FOUND = 4
STATUS_CONNECTION_LOST = 7
STATUS_OVERFLOW = 8
STATUS_CHECKSUM_ERROR = 9
STATUS_DEVICE_NOT_READY = 13

_DECODE_ERRORS = (ValueError, struct.error, NotImplementedError, KeyError, IndexError)
"""What pyigtl raises for a message whose body is inconsistent (socket errors are OSErrors)."""


@dataclass(frozen=True)
class FrameGeometry:
    """Placement of a frame in mm: ``spacing`` (lateral, axial), ``origin`` (x, y, z) of pixel (0, 0),
    ``direction`` 3 x 3 row-major direction cosines (columns: lateral, axial, normal)."""

    spacing: tuple[float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def axial_spacing_mm(self) -> float:
        return self.spacing[1]

    def ijk_to_world(self) -> np.ndarray:
        """4 x 4 matrix: columns the i (lateral), j (axial), k steps in mm, then the origin."""
        matrix = np.eye(4)
        direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        matrix[:3, :3] = direction * np.array([self.spacing[0], self.spacing[1], 1.0])
        matrix[:3, 3] = self.origin
        return matrix

    def shifted_rows(self, rows: int) -> FrameGeometry:
        """The geometry of the same frame without its first ``rows`` rows (a crop)."""
        direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        origin = np.asarray(self.origin) + direction[:, 1] * self.spacing[1] * rows
        return FrameGeometry(self.spacing, tuple(float(v) for v in origin), self.direction)


def image_message(
    frame: np.ndarray,
    geometry: FrameGeometry,
    device_name: str,
    timestamp: float | None = None,
    metadata: dict[str, str] | None = None,
) -> pyigtl.ImageMessage:
    """An IMAGE message of ``frame`` ``(H, W)`` (dtype kept: float32, int16, ...) placed by ``geometry``.

    With ``metadata`` the message uses header version 2 (OpenIGTLink 3), which carries it.
    """
    if frame.ndim != 2:
        raise InputError(f"an IMAGE frame must be 2-D (H, W), got shape {frame.shape}")
    message = pyigtl.ImageMessage(
        np.ascontiguousarray(frame)[None],
        ijk_to_world_matrix=geometry.ijk_to_world(),
        timestamp=timestamp,
        device_name=device_name,
    )
    if metadata:
        message.header_version = 2
        message.metadata = dict(metadata)
    return message


def frame_from_message(message: pyigtl.MessageBase) -> tuple[np.ndarray, FrameGeometry]:
    """The ``(H, W)`` frame (dtype as sent) and geometry of an IMAGE message.

    Accepts one-slice images ``(1, H, W)`` and pyigtl's packing of 2-D arrays ``(H, W, 1)``.

    Raises:
        InputError: not an IMAGE message, a volume of several slices, or several components.
    """
    if not isinstance(message, pyigtl.ImageMessage):
        raise InputError(f"device {message.device_name!r} sent a {message.message_type} message; expected IMAGE")
    image = np.asarray(message.image)
    matrix = np.asarray(message.ijk_to_world_matrix, dtype=float)
    if image.ndim == 3 and image.shape[0] == 1:
        frame = image[0]
    elif image.ndim == 3 and image.shape[2] == 1:  # pyigtl sends a 2-D array as k = rows, j = cols
        frame = image[:, :, 0]
        matrix = matrix[:, [1, 2, 0, 3]]
    else:
        raise InputError(
            f"device {message.device_name!r} sent an image of shape {image.shape} (slices, rows, cols"
            "[, components]); expected one 2-D frame"
        )
    steps = np.linalg.norm(matrix[:3, :3], axis=0)
    if not np.all(steps > 0):
        raise InputError(f"device {message.device_name!r} sent an image with zero spacing: {steps}")
    direction = (matrix[:3, :3] / steps).reshape(-1)
    geometry = FrameGeometry(
        (float(steps[0]), float(steps[1])), tuple(float(v) for v in matrix[:3, 3]), tuple(float(v) for v in direction)
    )
    return frame.astype(frame.dtype.newbyteorder("="), copy=False), geometry


def frame_index(message: pyigtl.MessageBase, key: str = FRAME_INDEX_KEY) -> int | None:
    """The integer metadata ``key`` of a message, None when absent or not an integer."""
    try:
        return int(message.metadata[key])
    except (KeyError, ValueError, TypeError):
        return None


class StatusMessage(pyigtl.MessageBase):
    """OpenIGTLink STATUS: ``code`` (1 OK, 2 unknown error, ...), ``subcode``, ``error_name`` (20
    characters at most) and a free ``status_string``."""

    def __init__(
        self,
        code: int = STATUS_OK,
        status_string: str = "",
        error_name: str = "",
        subcode: int = 0,
        timestamp: float | None = None,
        device_name: str | None = None,
    ) -> None:
        super().__init__(timestamp=timestamp, device_name=device_name)
        self._message_type = "STATUS"
        self.code = code
        self.subcode = subcode
        self.error_name = error_name
        self.status_string = status_string
        self._valid_message = True

    def content_asstring(self) -> str:
        return f"Code: {self.code}\nError name: {self.error_name}\nStatus: {self.status_string}"

    def _pack_content(self) -> bytes:
        name = self.error_name.encode("utf8")[:20]
        return struct.pack("> H q 20s", self.code, self.subcode, name) + self.status_string.encode("utf8") + b"\0"

    def _unpack_content(self, content: bytes) -> None:
        self.code, self.subcode, name = struct.unpack("> H q 20s", content[:30])
        self.error_name = name.rstrip(b"\0").decode("utf8", errors="replace")
        self.status_string = content[30:].split(b"\0", 1)[0].decode("utf8", errors="replace")


messages.message_type_to_class_constructor.setdefault("STATUS", StatusMessage)
messages.CRC64 = crc64.ecma_182  # OpenIGTLink's CRC-64 (see the module docstring)


class _ViewerConnection(socketserver.BaseRequestHandler):
    """Serves one connected client of an :class:`IgtlServer` until it leaves or the server stops.

    pyigtl's own handler prints a traceback and logs an error on the root logger when a client
    simply disconnects; a viewer closing its connection is normal here, so it is logged at INFO
    and only unexpected failures are logged as errors. Runs in the server's serving thread.
    """

    server: "IgtlServer"

    def handle(self) -> None:
        server = self.server
        server._connected = True
        self.request.settimeout(0.01)
        try:
            while not server.communication_thread_stop_requested:
                while server._receive_message_from_socket(self.request):
                    if server.communication_thread_stop_requested:
                        return
                while server._send_queued_message_from_socket(self.request):
                    pass
        except (ConnectionError, TimeoutError) as error:
            logger.info("OpenIGTLink client on port %d disconnected (%s)", server.port, error)
        except Exception:
            logger.exception("OpenIGTLink connection on port %d failed", server.port)
        finally:
            server._communication_error_occurred()


class IgtlServer(comm.OpenIGTLinkServer):
    """pyigtl's server bound to ``host:port`` (port 0: a free port, see :attr:`port`), one client at a time.

    Unlike pyigtl's own constructor this installs no signal handlers and may run in any thread.
    :meth:`publish` never blocks: with no client connected, or ``max_backlog`` messages still
    waiting to go out (a slow client), the message is dropped and counted in :attr:`unsent`.
    Thread ownership: pyigtl's serving thread sends; any thread may publish.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", max_backlog: int = 4) -> None:
        comm.OpenIGTLinkBase.__init__(self)
        self.allow_reuse_address = True
        try:
            socketserver.TCPServer.__init__(self, (host, port), _ViewerConnection)
        except OSError as error:
            raise InputError(f"cannot serve OpenIGTLink on {host}:{port}: {error}") from error
        self.host, self.port = self.server_address[:2]
        self.max_backlog = max_backlog
        self.unsent = 0
        self._thread = threading.Thread(target=self.serve_forever, name=f"igtl-server-{self.port}", daemon=True)
        self._thread.start()

    def publish(self, *outgoing: pyigtl.MessageBase) -> bool:
        """Queue messages for the connected client; False (and counted) when they were dropped."""
        if not self.is_connected() or len(self.outgoing_messages) + len(outgoing) > self.max_backlog:
            self.unsent += len(outgoing)
            return False
        for message in outgoing:
            self.send_message(message, wait=False)
        return True

    def report(self, status: StatusMessage) -> bool:
        """Queue a STATUS for the connected client even when images are backlogged (reports are
        rare and small; pyigtl's queue keeps the newest 100); False (counted) with no client."""
        if not self.is_connected():
            self.unsent += 1
            return False
        return self.send_message(status, wait=False)

    def stop(self) -> None:
        """Close the connection and the listening socket; returns once the serving thread ended."""
        self._close_server()
        self._thread.join()

    def __enter__(self) -> IgtlServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class LinkProblem(Enum):
    """What can go wrong on a client's connection: (STATUS error name, STATUS code) it is reported under."""

    MESSAGE_TOO_LARGE = ("MessageTooLarge", STATUS_OVERFLOW)
    MALFORMED_HEADER = ("MalformedHeader", STATUS_UNKNOWN_ERROR)
    TRUNCATED_MESSAGE = ("TruncatedMessage", STATUS_CONNECTION_LOST)
    CONNECTION_LOST = ("ConnectionLost", STATUS_CONNECTION_LOST)
    CHECKSUM_ERROR = ("ChecksumError", STATUS_CHECKSUM_ERROR)
    MALFORMED_MESSAGE = ("MalformedMessage", STATUS_CHECKSUM_ERROR)

    @property
    def error_name(self) -> str:
        return self.value[0]

    @property
    def code(self) -> int:
        return self.value[1]

    @property
    def drops_connection(self) -> bool:
        """The connection ends: the byte stream cannot be followed past a bad header, or it is gone.
        A message with a wrong checksum or an undecodable body is skipped instead."""
        return self not in (LinkProblem.CHECKSUM_ERROR, LinkProblem.MALFORMED_MESSAGE)


@dataclass(frozen=True)
class LinkEvent:
    """A :class:`LinkProblem` that happened, with a one-line ``text`` saying where and what."""

    problem: LinkProblem
    text: str


class _ConnectionEnded(Exception):
    """The connection must close: ``event`` says why."""

    def __init__(self, event: LinkEvent) -> None:
        super().__init__(event.text)
        self.event = event


@dataclass(frozen=True)
class _Header:
    fields: dict[str, object]  # pyigtl's parsed header: header_version, message_type, device_name, timestamp
    body_size: int
    crc: int


_HEADER = struct.Struct("> H 12s 20s II Q Q")
_HEADER_VERSIONS = (1, 2)  # 1: OpenIGTLink 1-2; 2: OpenIGTLink 3 (extended header and metadata)


def _parse_header(raw: bytes, max_message_bytes: int) -> _Header:
    """The header of a message, checked before a byte of its body is read.

    Raises:
        _ConnectionEnded: the bytes are not an OpenIGTLink header, or declare a body larger than
            ``max_message_bytes``; either way the stream cannot be followed past them.
    """
    version, message_type, device_name, _, _, body_size, crc = _HEADER.unpack(raw)
    names = (message_type.rstrip(b"\0"), device_name.rstrip(b"\0"))
    readable = names[0] and all(name.isascii() and name.decode().isprintable() for name in names)
    if version not in _HEADER_VERSIONS or not readable:
        raise _ConnectionEnded(
            LinkEvent(
                LinkProblem.MALFORMED_HEADER,
                f"not an OpenIGTLink header (version {version}, type {names[0][:12]!r}); connection dropped",
            )
        )
    if body_size > max_message_bytes:
        raise _ConnectionEnded(
            LinkEvent(
                LinkProblem.MESSAGE_TOO_LARGE,
                f"{names[0].decode()} message from {names[1].decode()!r} declares {body_size} bytes, more than the "
                f"{max_message_bytes} accepted; connection dropped (raise --max-message-mb / max_message_bytes if "
                "the source sends frames that large)",
            )
        )
    return _Header(messages.MessageBase.parse_header(raw), body_size, crc)


class IgtlClient:
    """A receiving OpenIGTLink client: connects to ``host:port``, keeps the newest IMAGE of every
    device (a frame replaced unread is counted as overwritten) and every other message (STATUS,
    STRING: none is lost to a newer one), and reconnects with back-off whenever the connection
    ends, until :meth:`stop`.

    Every message is checked before it is used: a header that is not OpenIGTLink or declares a
    body over ``max_message_bytes`` drops the connection (nothing is allocated for it); a body
    whose CRC-64 does not match, or that pyigtl cannot decode (an image smaller than its declared
    size, an unknown scalar type), is skipped. Each such problem, and each lost connection, is
    kept as a one-line :class:`LinkEvent` for the owner to report (:meth:`take_events`);
    nothing is printed. Message types pyigtl does not know are skipped silently.

    pyigtl's own client is not used: its receive loop allocates whatever body size a header
    declares (2^62 bytes raise MemoryError in its thread), prints a traceback for every socket
    error, retries every 10 ms without back-off, and never notices a server that closed the
    connection. It offers no hook before the allocation, so the loop is written here and pyigtl
    only decodes messages (:meth:`pyigtl.MessageBase.unpack`).

    Thread ownership: one communication thread reads the socket and writes the inbox, the
    counters and the events under ``_lock``; any thread may call the public methods.

    Args:
        max_message_bytes: largest message body accepted, in bytes (default: a 4096 x 1024
            float32 frame with 4x headroom).
        reconnect_initial_s, reconnect_max_s: wait before reconnecting, doubled after each
            connection that delivered no message, reset by one that did.
        stall_timeout_s: a message whose bytes stop arriving for this long ends the connection.
    """

    _POLL_S = 0.05  # socket timeout: how often the thread checks for stop while idle
    _MAX_EVENTS = 100  # events kept until taken (the oldest go first)
    _MAX_QUEUED = 100  # messages other than IMAGE kept until taken (the oldest go first)

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_SOURCE_PORT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        reconnect_initial_s: float = 0.01,
        reconnect_max_s: float = 1.0,
        stall_timeout_s: float = 5.0,
    ) -> None:
        if max_message_bytes < 1:
            raise InputError(f"max_message_bytes must be at least 1, got {max_message_bytes}")
        self.host, self.port = host, port
        self.max_message_bytes = max_message_bytes
        self.reconnect_initial_s, self.reconnect_max_s = reconnect_initial_s, reconnect_max_s
        self.stall_timeout_s = stall_timeout_s
        self._lock = threading.Condition()
        self._images: dict[str, tuple[int, pyigtl.MessageBase]] = {}  # device -> (arrival number, newest IMAGE)
        self._queued: deque[tuple[int, pyigtl.MessageBase]] = deque(maxlen=self._MAX_QUEUED)  # other messages
        self._arrivals = 0
        self._arrived: dict[str, int] = {}
        self._overwritten: dict[str, int] = {}
        self._events: deque[LinkEvent] = deque(maxlen=self._MAX_EVENTS)
        self._event_count = 0
        self._connected = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"igtl-client-{host}:{port}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ any thread

    def is_connected(self) -> bool:
        return self._connected

    def arrived(self, device_name: str) -> int:
        """Messages of ``device_name`` received so far."""
        with self._lock:
            return self._arrived.get(device_name, 0)

    def overwritten(self, device_name: str) -> int:
        """Messages of ``device_name`` replaced by a newer one before :meth:`take` read them."""
        with self._lock:
            return self._overwritten.get(device_name, 0)

    def take(self, timeout: float) -> list[pyigtl.MessageBase]:
        """The messages received since the last call in arrival order (of IMAGEs the newest of each
        device), waiting up to ``timeout`` s for one (woken by an arrival or a :class:`LinkEvent`);
        [] on timeout."""
        with self._lock:
            events_seen = self._event_count
            self._lock.wait_for(lambda: self._images or self._queued or self._event_count != events_seen, timeout)
            taken = sorted([*self._images.values(), *self._queued], key=lambda arrival: arrival[0])
            self._images.clear()
            self._queued.clear()
            return [message for _, message in taken]

    def take_events(self) -> list[LinkEvent]:
        """The :class:`LinkEvent` s since the last call, oldest first (at most the last 100)."""
        with self._lock:
            events = list(self._events)
            self._events.clear()
            return events

    def stop(self) -> None:
        """Close the connection; returns once the communication thread ended."""
        self._stop.set()
        self._thread.join()

    # ------------------------------------------------------------------ communication thread

    def _record(self, event: LinkEvent) -> None:
        with self._lock:
            self._event_count += 1
            self._events.append(event)
            self._lock.notify_all()

    def _run(self) -> None:
        delay = self.reconnect_initial_s
        while not self._stop.is_set():
            try:
                connection = socket.create_connection((self.host, self.port), timeout=self._POLL_S)
            except OSError:
                self._stop.wait(delay)
                delay = min(2 * delay, self.reconnect_max_s)
                continue
            with connection:
                self._connected = True
                try:
                    delivered = self._receive_until_closed(connection)
                finally:
                    self._connected = False
            if delivered:
                delay = self.reconnect_initial_s
            elif not self._stop.is_set():
                self._stop.wait(delay)
                delay = min(2 * delay, self.reconnect_max_s)

    def _receive_until_closed(self, connection: socket.socket) -> bool:
        """Read messages until stopped or the connection ends; True when any message was received."""
        delivered = False
        try:
            while not self._stop.is_set():
                delivered |= self._receive(connection)
        except _ConnectionEnded as ended:
            self._record(ended.event)
        except OSError as error:  # reset, refused, unreachable: one line, no traceback
            self._record(LinkEvent(LinkProblem.CONNECTION_LOST, f"{self.host}:{self.port}: {error}"))
        return delivered

    def _receive(self, connection: socket.socket) -> bool:
        """Read one message if one starts within the poll interval; True when it was stored."""
        raw_header = self._read(connection, messages.MessageBase.IGTL_HEADER_SIZE, "header", may_idle=True)
        if raw_header is None:
            return False
        header = _parse_header(raw_header, self.max_message_bytes)
        message_type = header.fields["message_type"]
        body = self._read(connection, header.body_size, f"{message_type} message", may_idle=False)
        if body is None:  # stopped
            return False
        if crc64.ecma_182(body) != header.crc:
            self._record(
                LinkEvent(
                    LinkProblem.CHECKSUM_ERROR,
                    f"{message_type} message from {header.fields['device_name']!r} skipped: CRC-64 mismatch",
                )
            )
            return False
        message = messages.MessageBase.create_message(message_type)
        if message is None:
            return False
        try:
            message.unpack(header.fields, body)
        except _DECODE_ERRORS as error:
            self._record(
                LinkEvent(
                    LinkProblem.MALFORMED_MESSAGE,
                    f"undecodable {message_type} message from {header.fields['device_name']!r} skipped: "
                    f"{type(error).__name__}: {error}",
                )
            )
            return False
        with self._lock:
            self._store(message)
            self._lock.notify_all()
        return True

    def _store(self, message: pyigtl.MessageBase) -> None:
        """Into the inbox (caller holds ``_lock``): an IMAGE replaces its device's unread one, any
        other message is queued; what is replaced or pushed out of the queue counts as overwritten."""
        name = message.device_name
        self._arrived[name] = self._arrived.get(name, 0) + 1
        self._arrivals += 1
        if message.message_type == "IMAGE":
            replaced = self._images.get(name)
            self._images[name] = (self._arrivals, message)
        else:
            replaced = self._queued[0] if len(self._queued) == self._queued.maxlen else None
            self._queued.append((self._arrivals, message))
        if replaced is not None:
            overwritten_name = replaced[1].device_name
            self._overwritten[overwritten_name] = self._overwritten.get(overwritten_name, 0) + 1

    def _read(self, connection: socket.socket, size: int, what: str, may_idle: bool) -> bytearray | None:
        """Exactly ``size`` bytes; None when stopped, or (``may_idle``) when none came within the
        poll interval. A closed or stalled connection raises :class:`_ConnectionEnded`."""
        buffer = bytearray(size)
        view = memoryview(buffer)
        received = 0
        last_progress = time.monotonic()
        while received < size:
            try:
                count = connection.recv_into(view[received:])
            except TimeoutError:
                if self._stop.is_set() or (may_idle and received == 0):
                    return None
                if time.monotonic() - last_progress > self.stall_timeout_s:
                    raise _ConnectionEnded(self._truncated(what, received, size, "stalled")) from None
                continue
            if count == 0:
                if received == 0 and may_idle:
                    raise _ConnectionEnded(
                        LinkEvent(LinkProblem.CONNECTION_LOST, f"{self.host}:{self.port} closed the connection")
                    )
                raise _ConnectionEnded(self._truncated(what, received, size, "closed"))
            received += count
            last_progress = time.monotonic()
        return buffer

    def _truncated(self, what: str, received: int, size: int, how: str) -> LinkEvent:
        return LinkEvent(
            LinkProblem.TRUNCATED_MESSAGE,
            f"{self.host}:{self.port} {how} the connection after {received} of the {size} bytes of a {what}",
        )
