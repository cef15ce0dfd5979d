"""A stand-in IGT viewer in a process of its own, as 3D Slicer is, for ``deepultrasound bench stream``.

``python -m deepultrasound.elastography.live.viewer PORT [HOST]`` connects to a strain stream's output
port, prints ``connected`` once the connection stands, then one line per strain IMAGE message
received: its end-to-end latency in ms (the source frame's timestamp to arrival here, both wall
clock on this machine). It runs until it is terminated; it exits with status 1 when no
connection stands within :data:`CONNECT_TIMEOUT_S`.
"""

from __future__ import annotations

import sys
import time

from deepultrasound.elastography.live.pipeline import StreamConfig
from deepultrasound.streaming.igtl import IgtlClient

CONNECT_TIMEOUT_S = 30.0


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    port, host = int(arguments[0]), arguments[1] if len(arguments) > 1 else "127.0.0.1"
    client = IgtlClient(host=host, port=port)
    try:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while not client.is_connected():
            if time.monotonic() > deadline:
                print(f"no connection to {host}:{port} within {CONNECT_TIMEOUT_S} s", file=sys.stderr)
                return 1
            time.sleep(0.01)
        print("connected", flush=True)
        while True:
            for message in client.take(0.5):
                if message.device_name == StreamConfig.strain_device and message.message_type == "IMAGE":
                    print(f"{1000.0 * (time.time() - message.timestamp):.3f}", flush=True)
    finally:
        client.stop()


if __name__ == "__main__":
    sys.exit(main())
