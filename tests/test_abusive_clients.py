"""Slow and abusive HTTP clients: malformed bytes, slowloris heads and bodies, more connections than allowed.

One worker with small limits (32 connections, 2 s to send a request head or a body) and raw sockets, so that
each case sends exactly the bytes it names.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.diagnostics import RepeatLimiter
from tests.support.blocking import off_loop
from tests.support.client import get_json
from tests.support.isolation import Isolated
from tests.support.worker import Worker, running

MAX_CONNECTIONS = 32


@pytest.fixture(scope="module")
async def worker(iso_module: Isolated, artifacts: Path) -> AsyncIterator[Worker]:
    env = iso_module.env(
        SOMA_HTTP_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        SOMA_HTTP_IDLE_TIMEOUT_SECONDS="2",
        SOMA_HTTP_BODY_TIMEOUT_SECONDS="2",
    )
    async with running(env, artifacts / "logs" / f"abusive-{iso_module.tag}.log") as worker:
        yield worker


def connect(worker: Worker) -> socket.socket:
    return socket.create_connection(("127.0.0.1", worker.port), timeout=30)


def read_until_closed(sock: socket.socket, timeout: float = 30.0) -> bytes:
    """Everything the server sends until it closes the connection; fails if it keeps it open past ``timeout``."""
    sock.settimeout(timeout)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
    return int(status_line.split()[1]), headers, json.loads(body)


HEAD = b"GET /health HTTP/1.1\r\nHost: t\r\n"
POST_HEAD = b"POST /v1/session/message HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (HEAD + b"Bad Header\r\n\r\n", 400, "malformed_http"),
        (b"GARBAGE\r\n\r\n", 400, "malformed_http"),
        # a TLS ClientHello sent to the plain-HTTP port
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "malformed_http"),
        (HEAD + b"X-Long: " + b"a" * 9_000 + b"\r\n\r\n", 431, "request_head_too_large"),
        (b"GET /" + b"a" * 9_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 431, "request_head_too_large"),
        (HEAD + b"".join(b"X-%d: 1\r\n" % n for n in range(200)) + b"\r\n", 431, "request_head_too_large"),
        (POST_HEAD + b"Content-Length: abc\r\n\r\n{}", 400, "malformed_http"),
        (POST_HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, "malformed_http"),
        (POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400, "malformed_http"),
        # an Idempotency-Key holding the UTF-8 form of an unpaired surrogate (U+D800): once a 500
        (
            POST_HEAD + b'Idempotency-Key: \xed\xa0\x80\r\nContent-Length: 15\r\n\r\n{"message":"x"}',
            400,
            "invalid_idempotency_key",
        ),
    ],
    ids=[
        "header-without-colon",
        "not-http",
        "tls-hello",
        "header-9000-bytes",
        "url-9000-bytes",
        "200-headers",
        "content-length-not-a-number",
        "two-content-lengths",
        "bad-chunk-size",
        "idempotency-key-surrogate",
    ],
)
async def test_malformed_http_is_answered_in_the_json_envelope(
    worker: Worker, raw: bytes, status: int, code: str
) -> None:
    def exchange() -> bytes:
        with connect(worker) as sock:
            sock.sendall(raw)
            return read_until_closed(sock)

    answer = await asyncio.to_thread(exchange)
    got_status, headers, body = parse_answer(answer)
    assert (got_status, headers["content-type"].split(";")[0], body["error"]["code"]) == (
        status,
        "application/json",
        code,
    ), answer[:300]
    assert body["error"]["message"]
    _, openapi = await get_json(worker.url, "/openapi.json")
    assert code in openapi["paths"]["/health"]["get"]["responses"][str(status)]["description"]


@pytest.mark.parametrize("trickle", [b"", b"X-Slow: 1\r\n"], ids=["sends-nothing", "a-header-at-a-time"])
async def test_a_request_head_not_complete_within_the_idle_timeout_is_closed(worker: Worker, trickle: bytes) -> None:
    """Slowloris: the connection is closed ~2 s after it opened, however the head trickles in."""

    def slow_client() -> bytes:
        with connect(worker) as sock:
            if trickle:
                sock.sendall(HEAD)
            sock.settimeout(0.5)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if trickle:
                        sock.sendall(trickle)
                    if sock.recv(65536) == b"":
                        return b"closed"
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    return b"closed"
            return b"still open after 30 s"

    assert await asyncio.to_thread(slow_client) == b"closed"


async def test_a_body_not_complete_within_the_body_timeout_is_408(worker: Worker) -> None:
    def slow_body() -> bytes:
        with connect(worker) as sock:
            sock.sendall(POST_HEAD + b"Content-Length: 100\r\n\r\n" + b'{"message": "')
            return read_until_closed(sock)

    status, headers, body = parse_answer(await asyncio.to_thread(slow_body))
    assert (status, body["error"]["code"]) == (408, "body_timeout")
    assert headers.get("connection", "").lower() == "close"


@contextmanager
def idle_connections(worker: Worker, count: int) -> Iterator[list[socket.socket]]:
    sockets = [connect(worker) for _ in range(count)]
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


async def wait_status(worker: Worker, path: str, status: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    seen: Any = None
    while time.monotonic() < deadline:
        seen = await get_json(worker.url, path)
        if seen[0] == status:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"GET {path} answered {seen} for {timeout} s, expected {status}")


async def served(worker: Worker, method: str, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
    """The answer to a request, retried while the worker says 503 too_many_connections (as a client would)."""
    deadline = time.monotonic() + timeout
    while True:
        async with aiohttp.ClientSession() as http, http.request(method, worker.url + path, json=body) as resp:
            status, answer = resp.status, await resp.json()
        if not (status == 503 and answer.get("error", {}).get("code") == "too_many_connections"):
            return status, answer
        assert time.monotonic() < deadline, f"{method} {path}: 503 too_many_connections for {timeout} s"
        await asyncio.sleep(float(resp.headers.get("Retry-After", "1")) / 4)


async def test_idle_connections_beyond_the_limit_never_starve_health_or_posts(worker: Worker) -> None:
    """Once 20,000 idle connections took every descriptor of the worker; now the oldest idle ones make room.

    While the kernel still hands the 200 over (some only after SYN retries), every connection the worker holds
    may be younger than the 0.25 s that makes one evictable: a newcomer is then told 503 too_many_connections
    with Retry-After, and its retry is served.
    """
    async with off_loop(idle_connections(worker, 200)):
        status, _ = await served(worker, "GET", "/health")
        assert status == 200
        status, answer = await served(
            worker, "POST", "/v1/session/message", {"message": "served beside 200 idle sockets"}
        )
        assert status == 202, answer
        # (closed connections leave the count as the worker gets to them: a moment over the limit is no failure)
        deadline = time.monotonic() + 30
        while True:
            status, info = await served(worker, "GET", "/v1/worker")
            counts = info["connections"]
            if counts["open"] <= MAX_CONNECTIONS:
                break
            assert time.monotonic() < deadline, counts
            await asyncio.sleep(0.2)
        assert counts["max"] == MAX_CONNECTIONS, counts
        # beyond the limit, each was refused, or made room by closing the oldest idle one (or the idle timeout did)
        assert counts["refused"] + counts["evicted"] >= 1, counts
        # the 200 sockets do not each hold a descriptor of the worker (refused ones only for their last second)
        deadline = time.monotonic() + 30
        while len(await asyncio.to_thread(os.listdir, f"/proc/{worker.pid}/fd")) >= 200:
            assert time.monotonic() < deadline, "the worker holds a descriptor for each idle socket"
            await asyncio.sleep(0.2)


async def test_when_every_connection_is_busy_a_newcomer_gets_503_and_the_streams_go_on(worker: Worker) -> None:
    session = f"busy-{os.getpid()}"
    async with aiohttp.ClientSession() as http:
        async with http.post(worker.url + "/v1/session/message", json={"session_id": session, "message": "m"}) as r:
            assert r.status == 202
    streams = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    opened: list[aiohttp.ClientResponse] = []
    try:
        opened += [
            await streams.get(f"{worker.url}/v1/session/{session}/events", headers={"Accept": "text/event-stream"})
            for _ in range(MAX_CONNECTIONS)
        ]
        assert {resp.status for resp in opened} == {200}

        def newcomer() -> bytes:
            with connect(worker) as sock:
                sock.sendall(HEAD + b"\r\n")
                return read_until_closed(sock)

        status, headers, body = parse_answer(await asyncio.to_thread(newcomer))
        assert (status, headers["retry-after"], body["error"]["code"]) == (503, "1", "too_many_connections")
        # the streams were not disturbed: each still has its session's event to read
        for resp in opened:
            while b"data:" not in await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 30):
                pass
    finally:
        for resp in opened:
            resp.close()
        await streams.close()
    await wait_status(worker, "/health", 200)


def test_a_repeated_log_record_is_written_once_per_window_with_a_count() -> None:
    """The worker log once grew by 84 MB with one line repeated 186,749 times."""
    logger = logging.getLogger(f"test.repeat.{os.getpid()}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    # a window far longer than the 10,000 calls take on any machine, however busy (0.2 s did not suffice once)
    limiter = RepeatLimiter(window=3600)
    handler.addFilter(limiter)
    logger.addHandler(handler)
    try:
        for _ in range(10_000):
            logger.error("socket.accept() out of system resource: %s", "Too many open files")
        logger.error("another kind")
        logger.info("info is never held back")
        logger.info("info is never held back")
        assert records == [
            "socket.accept() out of system resource: Too many open files",
            "another kind",
            "info is never held back",
            "info is never held back",
        ]
        limiter.window = 0.2  # then a short one, waited out: the next record says how many were held back
        deadline = time.monotonic() + 0.2
        while time.monotonic() <= deadline:
            time.sleep(0.05)
        logger.error("socket.accept() out of system resource: %s", "Too many open files")
        assert records[-1].startswith("socket.accept() out of system resource: Too many open files [9999 more")
    finally:
        logger.removeHandler(handler)
