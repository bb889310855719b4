"""Running the app: uvicorn's HTTP protocol with an idle timeout, and a server in a thread on a loopback port."""

import socket
import threading
import time
from typing import Any

from fastapi import FastAPI

__all__ = ["IDLE_TIMEOUT", "idle_closing_protocol", "BackgroundServer"]


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


IDLE_TIMEOUT = 30.0  # seconds a connection may stay open without sending a whole request


def idle_closing_protocol(idle_timeout: float = IDLE_TIMEOUT) -> type:
    """uvicorn's HTTP protocol (httptools when installed, else h11, as its ``http="auto"``) that closes a
    connection which sends no complete request within ``idle_timeout`` seconds of opening or of its last
    data. uvicorn itself times out only idle keep-alive connections after a response: a client that opens
    a socket and sends nothing (or half a request) would hold it, and a file descriptor, forever."""
    try:
        import httptools  # noqa: F401 - uvicorn's choice when it is installed
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class IdleClosingProtocol(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._close_when_idle()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is None or self.cycle.response_complete:  # still no whole request
                self._close_when_idle()

        def _close_when_idle(self) -> None:
            if self.transport.is_closing():
                return
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(idle_timeout, self.timeout_keep_alive_handler)

    return IdleClosingProtocol


class BackgroundServer:
    """Run an app with uvicorn in a thread on a loopback port (tests, benchmarks, notebooks).

    ``with BackgroundServer(app) as server: urllib.request.urlopen(server.url + "/health")``
    """

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        idle_timeout: float = IDLE_TIMEOUT,  # connections sending no whole request for this long are closed
    ) -> None:
        import uvicorn

        self.host = host
        self.port = port or _free_port(host)
        config = uvicorn.Config(
            app,
            host=host,
            port=self.port,
            log_level=log_level,
            lifespan="on",
            http=idle_closing_protocol(idle_timeout),
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="attngan-serve-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start on {self.url} within {timeout:g} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
