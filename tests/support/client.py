"""HTTP, WebSocket and raw SSE clients of a worker, reading exactly what a client receives."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp


async def post_message(base: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(base + "/v1/session/message", json=body, headers=headers or {}) as resp,
    ):
        return resp.status, await resp.json()


async def get_json(base: str, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(base + path) as resp:
        return resp.status, await resp.json()


class SseReader:
    """Reads the raw bytes of an SSE response and splits them into blocks (separated by a blank line)."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.buffer = b""
        self.raw = b""

    async def block(self, timeout: float = 15.0) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no complete SSE block within {timeout} s; have {self.buffer!r}"
            chunk = await asyncio.wait_for(self.resp.content.readany(), remaining)
            assert chunk, "the stream ended"
            self.buffer += chunk
            self.raw += chunk
        block, self.buffer = self.buffer.split(b"\n\n", 1)
        return block + b"\n\n"

    async def events(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The next ``count`` events (comments skipped), each as {id, event, data}."""
        found: list[dict[str, Any]] = []
        while len(found) < count:
            block = await self.block(timeout)
            if block.startswith(b":"):
                continue
            fields = dict(line.split(": ", 1) for line in block.decode().strip().split("\n"))
            found.append(
                {
                    "id": fields.get("id"),
                    "event": fields.get("event"),
                    "data": json.loads(fields["data"]) if "data" in fields else None,
                    "raw": block,
                }
            )
        return found


async def ws_frames(ws: aiohttp.ClientWebSocketResponse, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    frames = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{len(frames)} frames within {timeout} s, expected {count}: {frames}"
        message = await ws.receive(timeout=remaining)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        frames.append(json.loads(message.data))
    return frames
