"""uvicorn with a drain phase: on SIGTERM/SIGINT the service first drains, then stops listening.

Plain uvicorn closes its listening socket first, so requests that arrive during shutdown are
refused at the TCP level and the load balancer learns nothing. Here the first signal flips the
service to draining (``/readyz`` and new requests answer 503, every admitted request is still
decoded and answered), and only then does uvicorn shut down. A second signal abandons the drain
(every admitted request still unanswered, queued or decoding, gets 503) and exits.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType

import uvicorn

from dgr2.service.runtime import Runtime

log = logging.getLogger(__name__)
# the exit status of a server that started but could not warm its models (1 and 2 are start-up and usage errors)
EXIT_WARM_UP_FAILED = 3


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_requested = False
        self._drain_task: asyncio.Task[None] | None = None
        self.fatal_error: str | None = None
        runtime.on_fatal = self._fatal

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is None:
            super().handle_exit(sig, frame)
            return
        if self._drain_requested:  # second signal: give up on the drain; what is admitted gets 503, then exit
            super().handle_exit(sig, frame)  # not force_exit: uvicorn still writes those 503s before it closes
            self._loop.call_soon_threadsafe(self.runtime.abandon_drain)
            return
        self._drain_requested = True
        if hasattr(self, "_captured_signals"):  # uvicorn re-raises captured signals after a clean stop
            self._captured_signals.append(sig)
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _fatal(self, message: str) -> None:
        """The models cannot serve (a failed warm-up): stop listening and let the process exit non-zero."""
        log.error("%s; exiting with status %d", message, EXIT_WARM_UP_FAILED)
        self.fatal_error = message
        self.should_exit = True

    def request_shutdown(self) -> None:
        """Graceful stop from any thread (what SIGTERM does); for embedding and tests."""
        if self._drain_requested or self._loop is None or self._loop.is_closed():
            self.should_exit = True
            return
        self._drain_requested = True
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self.runtime.drain()
        finally:
            self.should_exit = True


def build_server(app, host: str, port: int, log_level: str = "info") -> DrainingServer:
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=5, server_header=False)
    return DrainingServer(config, app.state.runtime)
