"""A real MLLP receiver for the outbound tests: python-hl7's asyncio MLLP server (``hl7.mllp``)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import hl7
from hl7.mllp import start_hl7_server


class Receiver:
    """Records every message; answers with ``mode`` (AA, AE, AR) or nothing (``silent``)."""

    def __init__(self, mode: str = "AA") -> None:
        self.mode = mode
        self.messages: list[str] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0

    async def start(self, port: int = 0) -> Receiver:
        self.server = await start_hl7_server(self._client, "127.0.0.1", port)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _client(self, reader: Any, writer: Any) -> None:
        self.connections += 1
        try:
            while not reader.at_eof():
                try:
                    message = await reader.readmessage()
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                self.messages.append(str(message))
                if self.mode == "silent":
                    continue
                writer.writemessage(message.create_ack(self.mode))
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def types(self) -> list[str]:
        return [str(hl7.parse(m).segment("MSH")(9)) for m in self.messages]


class ThreadedReceiver:
    """The same receiver on its own event loop in a thread (for tests that drive a server subprocess)."""

    def __init__(self, mode: str = "AA") -> None:
        self.receiver = Receiver(mode)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.receiver.start(), self.loop).result(10)
        return self.receiver

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
