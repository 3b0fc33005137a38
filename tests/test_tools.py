"""The tool registry and built-in tools, http_fetch against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agents.tools import (
    PolicyDecision,
    ToolCall,
    ToolContext,
    ToolError,
    ToolOutcome,
    get_tool,
    run_tool,
    tool,
    tool_names,
    unregister,
)
from agents.tools import http_fetch as http_fetch_module
from app import schemas
from app.settings import Settings

MAX_BYTES = 1000
SLOW_SECONDS = 5.0
TEST_TOOLS = (
    "test_recorder",
    "test_sleeper",
    "test_tool_error",
    "test_boom",
    "test_own_timeout",
    "test_not_dict",
    "test_not_json",
)


def result_event(name: str, outcome: ToolOutcome) -> dict[str, Any]:
    """The tool_result the executor would publish for ``outcome``; it must validate."""
    event = {
        "event_id": str(uuid.uuid4()),
        "session_id": "s1",
        "tool_name": name,
        "status": outcome.status,
        "payload": outcome.payload,
        "metadata": {},
        "execution_time": outcome.execution_time,
    }
    schemas.validate("tool_result", event)
    return event


async def call(name: str, args: dict[str, Any], ctx: ToolContext, **kwargs: Any) -> ToolOutcome:
    outcome = await run_tool(name, args, ctx, session_id="s1", metadata={"trace": "t1"}, **kwargs)
    result_event(name, outcome)
    return outcome


def error_code(outcome: ToolOutcome) -> str:
    assert outcome.status == "error", outcome
    code: str = outcome.payload["error"]["code"]
    assert outcome.payload["error"]["message"]
    return code


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass
class Server:
    port: int
    release: asyncio.Event

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[Server]:
    release = asyncio.Event()
    port = free_port()

    async def text(request: web.Request) -> web.Response:
        return web.Response(text="hello, tools \u2713")

    async def binary(request: web.Request) -> web.Response:
        return web.Response(body=b"ok \xff\xfe end", content_type="application/octet-stream")

    async def large(request: web.Request) -> web.Response:
        return web.Response(text="x" * (MAX_BYTES * 5))

    async def exact(request: web.Request) -> web.Response:
        return web.Response(text="y" * MAX_BYTES)

    async def large_chunked(request: web.Request) -> web.StreamResponse:
        # no Content-Length: only counting the bytes read can stop it
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(10):
            await response.write(b"z" * 300)
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.Response:
        # held until the fixture ends, so runner cleanup does not wait for a sleeping handler
        try:
            await asyncio.wait_for(release.wait(), SLOW_SECONDS)
        except TimeoutError:
            pass
        return web.Response(text="late")

    async def redirect_out(request: web.Request) -> web.Response:
        # localhost is the very same server, so only the allowlist check can stop this hop
        raise web.HTTPFound(f"http://localhost:{port}/text")

    async def redirect_in(request: web.Request) -> web.Response:
        raise web.HTTPFound("/text")

    async def redirect_loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/redirect-loop")

    async def redirect_file(request: web.Request) -> web.Response:
        raise web.HTTPFound("file:///etc/passwd")

    async def redirect_port(request: web.Request) -> web.Response:
        # the same allowed host, another port (a service the tool must not reach)
        raise web.HTTPFound(f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}/text")

    app = web.Application()
    app.router.add_get("/text", text)
    app.router.add_get("/binary", binary)
    app.router.add_get("/large", large)
    app.router.add_get("/exact", exact)
    app.router.add_get("/large-chunked", large_chunked)
    app.router.add_get("/slow", slow)
    app.router.add_get("/redirect-out", redirect_out)
    app.router.add_get("/redirect-in", redirect_in)
    app.router.add_get("/redirect-loop", redirect_loop)
    app.router.add_get("/redirect-file", redirect_file)
    app.router.add_get("/redirect-port", redirect_port)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield Server(port, release)
    finally:
        release.set()
        await runner.cleanup()


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def make_ctx(http: aiohttp.ClientSession, **changes: Any) -> ToolContext:
    base = {
        "http_fetch_allowlist": "127.0.0.1",
        "http_fetch_max_bytes": MAX_BYTES,
        "tool_timeouts": "http_fetch=0.3",
        # the test server is on loopback, on a port of its own
        "http_fetch_allow_private": True,
        "http_fetch_ports": "*",
    }
    return ToolContext(settings=dataclasses.replace(Settings.from_env({}), **{**base, **changes}).tools(), http=http)


@pytest.fixture
def ctx(http: aiohttp.ClientSession) -> ToolContext:
    return make_ctx(http)


@pytest.fixture
def test_tools() -> Iterator[list[dict[str, Any]]]:
    """Throw-away tools registered with the real decorator; removed again after the test."""
    calls: list[dict[str, Any]] = []

    @tool("test_recorder")
    async def recorder(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        calls.append(args)
        return {"recorded": len(calls)}

    @tool("test_sleeper")
    async def sleeper(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        await asyncio.sleep(SLOW_SECONDS)
        return {}

    @tool("test_tool_error")
    async def tool_error(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        raise ToolError("the thing is broken", "thing_broken")

    @tool("test_boom")
    async def boom(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        raise RuntimeError("boom")

    @tool("test_own_timeout")
    async def own_timeout(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        raise TimeoutError("an upstream timed out")

    @tool("test_not_dict")
    async def not_dict(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        result: Any = ["not", "a", "dict"]
        return result  # type: ignore[no-any-return]

    @tool("test_not_json")
    async def not_json(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        calls.append(args)
        return {"when": asyncio.get_running_loop(), "ids": {1, 2}} if args.get("object") else {1: "int key"}

    try:
        yield calls
    finally:
        for name in TEST_TOOLS:
            unregister(name)
    assert not set(TEST_TOOLS) & set(tool_names())


def test_builtins_register_on_import() -> None:
    assert {"echo", "timestamp", "http_fetch"} <= set(tool_names())
    assert not set(TEST_TOOLS) & set(tool_names())


def test_registration_rules() -> None:
    with pytest.raises(ValueError, match="does not match"):
        tool("Bad-Name")
    echo = get_tool("echo")
    assert echo is not None
    tool("echo")(echo)  # the same function again is harmless

    async def other(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        return {}

    with pytest.raises(ValueError, match="already registered"):
        tool("echo")(other)
    assert get_tool("echo") is echo


async def test_echo(ctx: ToolContext) -> None:
    args = {"text": "hi", "n": 3, "nested": {"list": [1, 2]}}
    outcome = await call("echo", args, ctx)
    assert outcome.status == "ok"
    assert outcome.payload == {"echo": args}


async def test_timestamp(ctx: ToolContext) -> None:
    outcome = await call("timestamp", {}, ctx)
    assert outcome.status == "ok"
    iso, epoch = outcome.payload["iso"], outcome.payload["epoch"]
    assert iso.endswith("Z")
    parsed = datetime.fromisoformat(iso)
    assert parsed.tzinfo is not None and parsed.utcoffset() is not None and not parsed.utcoffset()
    assert abs(parsed.timestamp() - epoch) < 1e-5
    assert abs(datetime.now(UTC).timestamp() - epoch) < 5
    assert error_code(await call("timestamp", {"tz": "Europe/Paris"}, ctx)) == "invalid_args"


async def test_unknown_tool(ctx: ToolContext) -> None:
    outcome = await call("no_such_tool", {}, ctx)
    assert error_code(outcome) == "unknown_tool"
    assert "no_such_tool" in outcome.payload["error"]["message"]


async def test_policy_deny_does_not_run_the_tool(ctx: ToolContext, test_tools: list[dict[str, Any]]) -> None:
    seen: list[ToolCall] = []

    async def deny(call: ToolCall) -> PolicyDecision:
        seen.append(call)
        return PolicyDecision(allowed=False, reason="not for this session")

    outcome = await call("test_recorder", {"a": 1}, ctx, policy=deny)
    assert outcome.status == "blocked" and outcome.payload["error"]["code"] == "policy_denied"
    assert outcome.payload["error"]["message"] == "not for this session"
    assert test_tools == []
    assert seen == [ToolCall(session_id="s1", tool_name="test_recorder", args={"a": 1}, metadata={"trace": "t1"})]

    # the same call allowed (default policy) does run, so the recorder would have seen a denied call
    outcome = await call("test_recorder", {"a": 1}, ctx)
    assert outcome.status == "ok" and outcome.payload == {"recorded": 1}
    assert test_tools == [{"a": 1}]


async def test_failing_policy_fails_closed(ctx: ToolContext, test_tools: list[dict[str, Any]]) -> None:
    async def broken(call: ToolCall) -> PolicyDecision:
        raise ConnectionError("opa unreachable")

    outcome = await call("test_recorder", {}, ctx, policy=broken)
    assert outcome.status == "blocked" and outcome.payload["error"]["code"] == "policy_failed"
    assert "opa unreachable" in outcome.payload["error"]["message"]
    assert test_tools == []


async def test_timeout(http: aiohttp.ClientSession, test_tools: list[dict[str, Any]]) -> None:
    ctx = make_ctx(http, tool_timeouts="test_sleeper=0.2")
    started = time.monotonic()
    outcome = await call("test_sleeper", {}, ctx)
    assert outcome.status == "timeout"
    assert outcome.payload["error"]["code"] == "timeout"
    assert 0.2 <= outcome.execution_time < 1.5
    assert time.monotonic() - started < 1.5


async def test_default_timeout_applies(http: aiohttp.ClientSession, test_tools: list[dict[str, Any]]) -> None:
    ctx = make_ctx(http, tool_timeouts="", tool_timeout_seconds=0.2)
    outcome = await call("test_sleeper", {}, ctx)
    assert outcome.status == "timeout"


async def test_cancellation_propagates(ctx: ToolContext, test_tools: list[dict[str, Any]]) -> None:
    task = asyncio.ensure_future(run_tool("test_sleeper", {}, ctx, session_id="s1", metadata={}))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_tool_error(ctx: ToolContext, test_tools: list[dict[str, Any]]) -> None:
    outcome = await call("test_tool_error", {}, ctx)
    assert outcome.payload == {"error": {"code": "thing_broken", "message": "the thing is broken"}}


async def test_exception_is_tool_failed(ctx: ToolContext, test_tools: list[dict[str, Any]]) -> None:
    outcome = await call("test_boom", {}, ctx)
    assert outcome.payload == {"error": {"code": "tool_failed", "message": "RuntimeError: boom"}}
    # a TimeoutError of the tool's own is a failure, not our deadline
    outcome = await call("test_own_timeout", {}, ctx)
    assert outcome.payload == {"error": {"code": "tool_failed", "message": "TimeoutError: an upstream timed out"}}
    outcome = await call("test_not_dict", {}, ctx)
    assert error_code(outcome) == "tool_failed"


async def test_a_result_that_is_not_json_is_the_tools_failure(
    ctx: ToolContext, test_tools: list[dict[str, Any]]
) -> None:
    # it could not be carried by a tool_result: the executor would fail after the tool ran, and run it again
    for args in ({"object": True}, {}):
        outcome = await call("test_not_json", args, ctx)
        assert outcome.status == "error" and error_code(outcome) == "tool_failed", outcome
        assert "not JSON" in outcome.payload["error"]["message"]
    assert len(test_tools) == 2  # each ran once


async def test_http_fetch_get(ctx: ToolContext, server: Server) -> None:
    outcome = await call("http_fetch", {"url": server.url("/text")}, ctx)
    assert outcome.status == "ok", outcome
    body = "hello, tools \u2713"
    assert outcome.payload == {
        "url": server.url("/text"),
        "status": 200,
        "headers": {"content-type": "text/plain; charset=utf-8", "content-length": str(len(body.encode()))},
        "body": body,
        "bytes": len(body.encode()),
        "truncated": False,
    }


async def test_http_fetch_invalid_utf8_is_replaced(ctx: ToolContext, server: Server) -> None:
    outcome = await call("http_fetch", {"url": server.url("/binary")}, ctx)
    assert outcome.payload["body"] == "ok \ufffd\ufffd end"
    assert outcome.payload["bytes"] == 9


async def test_http_fetch_head(ctx: ToolContext, server: Server) -> None:
    outcome = await call("http_fetch", {"url": server.url("/text"), "method": "head"}, ctx)
    assert outcome.status == "ok"
    assert outcome.payload["status"] == 200
    assert outcome.payload["body"] == "" and outcome.payload["bytes"] == 0
    assert outcome.payload["headers"]["content-length"] == str(len("hello, tools \u2713".encode()))
    # HEAD of a body over the limit is fine: nothing is read
    outcome = await call("http_fetch", {"url": server.url("/large"), "method": "HEAD"}, ctx)
    assert outcome.status == "ok" and outcome.payload["bytes"] == 0


async def test_http_fetch_host_not_allowed(http: aiohttp.ClientSession, server: Server) -> None:
    ctx = make_ctx(http)
    outcome = await call("http_fetch", {"url": server.url("/text", host="localhost")}, ctx)
    assert error_code(outcome) == "host_not_allowed"
    # empty allowlist: nothing is allowed
    outcome = await call("http_fetch", {"url": server.url("/text")}, make_ctx(http, http_fetch_allowlist=""))
    assert error_code(outcome) == "host_not_allowed"
    # the host match ignores case on both sides
    ctx = make_ctx(http, http_fetch_allowlist="example.org, LocalHost")
    outcome = await call("http_fetch", {"url": server.url("/text", host="LOCALHOST")}, ctx)
    assert outcome.status == "ok" and outcome.payload["status"] == 200


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"url": ""},
        {"url": 42},
        {"url": "ftp://127.0.0.1/file"},
        {"url": "file:///etc/passwd"},
        {"url": "127.0.0.1/text"},
        {"url": "http://"},
        {"url": "http://127.0.0.1:99999/"},
        {"url": "http://127.0.0.1/", "method": "POST"},
        {"url": "http://127.0.0.1/", "method": None},
        {"url": "http://127.0.0.1/", "headers": {"x": "y"}},
    ],
)
async def test_http_fetch_invalid_args(ctx: ToolContext, args: dict[str, Any]) -> None:
    assert error_code(await call("http_fetch", args, ctx)) == "invalid_args"


async def test_http_fetch_too_large(ctx: ToolContext, server: Server) -> None:
    outcome = await call("http_fetch", {"url": server.url("/large")}, ctx)
    assert error_code(outcome) == "response_too_large"
    outcome = await call("http_fetch", {"url": server.url("/large-chunked")}, ctx)
    assert error_code(outcome) == "response_too_large"
    # exactly the limit is allowed
    outcome = await call("http_fetch", {"url": server.url("/exact")}, ctx)
    assert outcome.status == "ok" and outcome.payload["bytes"] == MAX_BYTES


async def test_http_fetch_timeout(ctx: ToolContext, server: Server) -> None:
    started = time.monotonic()
    outcome = await call("http_fetch", {"url": server.url("/slow")}, ctx)
    assert outcome.status == "timeout" and outcome.payload["error"]["code"] == "timeout"
    assert 0.3 <= outcome.execution_time < 2
    assert time.monotonic() - started < 2


async def test_http_fetch_redirects(ctx: ToolContext, server: Server) -> None:
    # a hop to a host off the allowlist is refused, though the host is up and serves the same page
    outcome = await call("http_fetch", {"url": server.url("/redirect-out")}, ctx)
    assert error_code(outcome) == "host_not_allowed"
    assert "localhost" in outcome.payload["error"]["message"]
    # a hop that stays on allowed hosts is followed
    outcome = await call("http_fetch", {"url": server.url("/redirect-in")}, ctx)
    assert outcome.status == "ok"
    assert outcome.payload["url"] == server.url("/text") and outcome.payload["body"] == "hello, tools \u2713"
    outcome = await call("http_fetch", {"url": server.url("/redirect-loop")}, ctx)
    assert error_code(outcome) == "too_many_redirects"
    outcome = await call("http_fetch", {"url": server.url("/redirect-file")}, ctx)
    assert error_code(outcome) == "invalid_redirect"


async def test_http_fetch_refuses_addresses_that_are_not_public(http: aiohttp.ClientSession, server: Server) -> None:
    # an allowlisted name is not enough: what it resolves to decides (loopback, cloud metadata, private)
    ctx = make_ctx(
        http, http_fetch_allowlist="localhost,127.0.0.1,169.254.169.254,10.0.0.1", http_fetch_allow_private=False
    )
    for url in (
        server.url("/text", host="localhost"),
        server.url("/text"),
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
    ):
        outcome = await call("http_fetch", {"url": url}, ctx)
        assert error_code(outcome) == "address_not_allowed", (url, outcome)
    # IPv4 carried in IPv6 is judged as the IPv4 it carries
    for text, public in [("::ffff:127.0.0.1", False), ("::ffff:8.8.8.8", True), ("fe80::1", False), ("8.8.8.8", True)]:
        assert http_fetch_module._public(ipaddress.ip_address(text)) is public, text
    # a redirect to a loopback address is checked like the first URL
    allowed = make_ctx(http, http_fetch_allowlist="127.0.0.1,localhost")
    outcome = await call("http_fetch", {"url": server.url("/redirect-out")}, allowed)
    assert outcome.status == "ok"  # both loopback, and allowed here
    refusing = make_ctx(http, http_fetch_allowlist="127.0.0.1,localhost", http_fetch_allow_private=False)
    assert error_code(await call("http_fetch", {"url": server.url("/redirect-out")}, refusing)) == "address_not_allowed"


async def test_http_fetch_ports_are_checked_at_every_hop(http: aiohttp.ClientSession, server: Server) -> None:
    ctx = make_ctx(http, http_fetch_ports=str(server.port))
    assert (await call("http_fetch", {"url": server.url("/text")}, ctx)).status == "ok"
    outcome = await call("http_fetch", {"url": server.url("/redirect-port")}, ctx)
    assert error_code(outcome) == "port_not_allowed", outcome
    # the default ports are the web's own
    default = make_ctx(http, http_fetch_ports="80,443")
    assert error_code(await call("http_fetch", {"url": server.url("/text")}, default)) == "port_not_allowed"


async def test_http_fetch_connection_refused(ctx: ToolContext) -> None:
    outcome = await call("http_fetch", {"url": f"http://127.0.0.1:{free_port()}/"}, ctx)
    assert error_code(outcome) == "fetch_failed"
