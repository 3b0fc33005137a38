"""WebSocket transport of a session stream: events as JSON frames, client messages in, acks and errors out.

Frames from the server: each stored event (JSON with its ``seq``), then control frames with a ``type`` of
``recovered`` (after the replay), ``ack`` (a client message was accepted) or ``error``. Close codes:
1001 server shutdown, 1009 client frame too large, 1013 slow reader (reconnect with ``?after=<last seq>``),
1011 internal error.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, WSMsgType, web

from app import events, metrics
from app.errors import ApiError, error_body
from app.feed_hub import FeedItem
from app.rate_limit import RateLimited
from views import replies
from views.base import caller_key, limit, principal
from views.intake import accept_message, validated
from views.session_stream import SlowReader
from views.stream_connection import StreamConnection

if TYPE_CHECKING:
    from app.faust_app import SomaApp

log = logging.getLogger(__name__)
DELIVERED = metrics.streams.delivered  # events written, by transport (app/metrics.py reads them)
SLOW_READER = 1013  # RFC 6455 "try again later"
CLOSE_SECONDS = 5.0
ABORT_GRACE_SECONDS = 60.0
# an event is written straight from the feed while the socket's unsent bytes stay below this; above it the
# viewer's queue takes over (and closes a reader that stays behind, 1013)
DIRECT_WRITE_MAX_BUFFER = 256 * 1024
TEXT = 0x81  # FIN + text opcode
# a client that goes on sending past its rate limit this many messages in a row is disconnected (1008)
ABUSE_AFTER_REFUSALS = 10


def text_frame(item: FeedItem) -> bytes:
    """A complete server-to-client text frame (RFC 6455 5.2: unmasked, uncompressed) of the event's JSON."""
    size = len(item.raw)
    if size < 126:
        header = struct.pack("!BB", TEXT, size)
    elif size < 65536:
        header = struct.pack("!BBH", TEXT, 126, size)
    else:
        header = struct.pack("!BBQ", TEXT, 127, size)
    return header + item.raw


class SocketConnection(StreamConnection):
    transport = "ws"

    def __init__(
        self, app: SomaApp, request: web.Request, ws: web.WebSocketResponse, session_id: str, after: int
    ) -> None:
        super().__init__(app, request, session_id, after, principal(request))
        self.ws = ws
        self._refused_in_row = 0  # client messages refused by the rate limit since the last accepted one
        self.stream.direct = self._write_now

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        # the client leaving ends the receive task; a close of ours (slow reader, shutdown) ends the stream
        return {"receive": self._receive(), "send": self._send_events(), "watchdog": self._close_when_overflowing()}

    async def _receive(self) -> None:
        async for message in self.ws:
            if message.type == WSMsgType.TEXT:
                await self._on_client_message(message.data)
            elif message.type == WSMsgType.BINARY:
                await self._send(_error_frame("binary_not_supported", "send JSON text frames"))

    async def _send(self, frame: dict[str, Any]) -> None:
        async with self._send_lock:
            self.check_open()
            await self.ws.send_frame(events.encode(frame), WSMsgType.TEXT)

    async def _send_item(self, item: FeedItem) -> None:
        async with self._send_lock:
            self.check_open()
            await self.ws.send_frame(item.raw, WSMsgType.TEXT)
            DELIVERED["ws"] += 1

    def _write_now(self, item: FeedItem) -> bool:
        """The feed's fast path: the frame every viewer of the session shares, written without a task switch.

        Safe beside aiohttp's own writes: the socket is uncompressed and every write of a whole frame is
        synchronous, so frames never interleave; refused while a send of the task is in progress.
        """
        transport = self.request.transport
        if (
            transport is None
            or transport.is_closing()
            or self.ws.closed
            or self._send_lock.locked()
            or transport.get_write_buffer_size() > DIRECT_WRITE_MAX_BUFFER
        ):
            return False
        transport.write(item.frame("ws", text_frame))
        DELIVERED["ws"] += 1
        return True

    async def _send_events(self) -> None:
        try:
            async for item in self.stream.history():
                await self._send_item(item)
            await self._send(self.stream.recovery.frame())
            async for item in self.stream.live():
                await self._send_item(item)
        except SlowReader:
            await self.close(SLOW_READER, f"slow reader; resume with after={self.stream.last_sent}")
        except (ConnectionResetError, RuntimeError) as exc:  # the peer went away mid-send
            log.debug("WebSocket stream of session %s: the peer went away (%r)", self.session_id, exc)
        except Exception:
            log.exception("stream of session %s failed", self.session_id)
            await self.close(WSCloseCode.INTERNAL_ERROR, "internal error; resume with after")

    async def _close_when_overflowing(self) -> None:
        # the sender may be stuck writing to a reader that does not read: close from here
        await self.stream.overflowed.wait()
        await self.close(SLOW_READER, f"slow reader; resume with after={self.stream.last_sent}")

    async def _on_client_message(self, data: str) -> None:
        limits = self.app.rate_limits
        if limits.enabled:
            address = self.request.remote
            try:
                await limit(limits, caller_key(self.principal, address), address)
                self._refused_in_row = 0
            except RateLimited as exc:
                self._refused_in_row += 1
                if self._refused_in_row >= ABUSE_AFTER_REFUSALS:
                    await self.close(WSCloseCode.POLICY_VIOLATION, "rate limit exceeded again and again")
                    return
                await self._send({"type": "error", **exc.body()["error"], "retry_after": exc.retry_after})
                return
        try:
            body = events.decode(data)
        except ValueError:
            await self._send(_error_frame("malformed_json", "frame is not valid JSON"))
            return
        ref = body.get("ref") if isinstance(body, dict) else None
        if isinstance(body, dict) and body.get("action") == "stop":
            try:
                asked = await replies.stop(self.session_id)
            except ApiError as exc:
                await self._send({"type": "error", "ref": ref, **exc.body()["error"]})
                return
            await self._send({"type": "ack", "ref": ref, "session_id": self.session_id, "stop_requested_at": asked})
            return
        try:
            if isinstance(body, dict):
                body = {k: v for k, v in body.items() if k != "ref"}
                if body.setdefault("session_id", self.session_id) != self.session_id:
                    raise ApiError("session_id differs from the stream's session", code="session_mismatch")
            answer = await accept_message(self.app, validated("message_request", body), self.principal)
        except ApiError as exc:
            await self._send({"type": "error", "ref": ref, **exc.body()["error"]})
            return
        await self._send({"type": "ack", "ref": ref, **answer})

    async def close(self, code: int, reason: str) -> None:
        """Send the close frame and release the stream; a peer that does not read is dropped later."""
        metrics.streams.closed["ws", str(code)] += 1
        try:
            async with asyncio.timeout(CLOSE_SECONDS):
                await self.ws.close(code=code, message=reason.encode()[:120])
        except (TimeoutError, ConnectionResetError, RuntimeError) as exc:
            # the close frame is queued behind what the peer has not read yet; it gets both if it reads
            # within the grace period, after which the connection (and its buffer) is dropped
            log.debug(
                "stream of session %s: close %d not taken by the peer (%r); dropped later", self.session_id, code, exc
            )
            transport = self.request.transport
            if transport is not None:
                asyncio.get_running_loop().call_later(ABORT_GRACE_SECONDS, transport.abort)
        self.end()

    async def shutdown(self) -> None:
        await self.close(WSCloseCode.GOING_AWAY, "server shutting down; resume with after")

    async def expire(self) -> None:
        await self.close(WSCloseCode.POLICY_VIOLATION, f"token expired; resume with after={self.stream.last_sent}")


async def serve(app: SomaApp, request: web.Request, session_id: str, after: int) -> web.WebSocketResponse:
    settings = app.settings.streams
    # compress=False: frames are shared by every viewer of a session and written whole (see _write_now)
    ws = web.WebSocketResponse(
        heartbeat=settings.ws_heartbeat_seconds, max_msg_size=settings.ws_max_message_bytes, compress=False
    )
    connection = SocketConnection(app, request, ws, session_id, after)
    async with connection.subscribed():
        await ws.prepare(request)
        await connection.run()
    return ws


def _error_frame(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", **error_body(code, message)["error"]}
