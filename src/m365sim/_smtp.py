"""Exchange Online SMTP submission: being written."""

from __future__ import annotations

import asyncio
import socket
import ssl

from ._state import SimState


class SmtpSubmission:
    def __init__(self, state: SimState, tls: ssl.SSLContext) -> None:
        self.state = state
        self.tls = tls
        self._server: asyncio.Server | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(asyncio.Protocol, sock=sock)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
