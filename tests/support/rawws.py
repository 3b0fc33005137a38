"""A WebSocket client that can be made to read slowly: a raw socket with a tiny receive buffer."""

from __future__ import annotations

import base64
import os
import socket
import struct


class RawWebSocket:
    def __init__(self, host: str, port: int, path: str, receive_buffer: int = 4096) -> None:
        self.sock = socket.socket()
        # set before connect so the window the server may fill stays tiny
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(1024)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _need(self, count: int, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before a whole frame arrived")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def frame(self, timeout: float = 30.0) -> tuple[int, bytes]:
        """The next (opcode, payload) sent by the server (server frames are not masked)."""
        first, second = self._need(2, timeout)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack(">H", self._need(2, timeout))
        elif length == 127:
            (length,) = struct.unpack(">Q", self._need(8, timeout))
        return first & 0x0F, self._need(length, timeout)

    def close_code(self, timeout: float = 60.0) -> tuple[int, int, str]:
        """Read everything up to the close frame: (data frames read, close code, reason)."""
        frames = 0
        while True:
            opcode, payload = self.frame(timeout)
            if opcode == 0x8:
                (code,) = struct.unpack(">H", payload[:2])
                return frames, code, payload[2:].decode()
            frames += 1

    def close(self) -> None:
        self.sock.close()
