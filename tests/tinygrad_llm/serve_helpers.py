"""Starting the server in a test: ``for port in start(app): ...`` serves ``app`` on a free port of 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

NAME = "tiny-chat"
"""The model's name in the API in these tests."""


def start(app) -> Iterator[int]:
    """Serve ``app`` on a free port of 127.0.0.1 in a thread; yields the port, stops the server afterwards."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()
