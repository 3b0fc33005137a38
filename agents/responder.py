"""The responder: each stored user message answered by a model, streamed to the session as it is written.

Flow: ``conversation_inbound`` stores a ``user.message`` and then publishes a reply request (``reply.requests``,
keyed by session); the ``responder`` agent takes at most ``SOMA_SLM_CONCURRENCY`` of them at once per worker (the
rest wait in Kafka), reads the session's history from PostgreSQL, calls the model server's OpenAI-compatible
``POST /v1/chat/completions`` with ``stream: true`` and publishes to ``conversation.outbound``:

- ``assistant.delta`` events (``stream_id``, ``index`` 0, 1, ...) with the tokens gathered over
  ``SOMA_SLM_COALESCE_SECONDS``, as they arrive;
- then one ``assistant.final`` whose ``message`` is exactly the concatenation of that stream's deltas, with
  ``metadata.status``: ``complete``, ``length`` (``SOMA_SLM_MAX_TOKENS`` reached), ``stopped`` (a client asked,
  app/stops.py: the model's connection is closed, which ends its generation), ``timeout``
  (``SOMA_SLM_TIMEOUT_SECONDS``) or ``failed`` (the model server broke off mid-reply; ``metadata.error``).

Exactly one final per user message: its event id is derived from the message's, so the store keeps one even if
it is published twice, and the ``reply_runs`` table (tables/reply_runs.py) marks each reply started and finished
before its request is acknowledged. A request read again (a crash, a rebalance, a replay) whose reply finished is
skipped; one whose reply was started and not finished was interrupted mid-reply: the new owner publishes a
``system.notice`` (``metadata.notice = reply_restarted``, ``metadata.stream_id`` = the abandoned stream: a client
drops that stream's deltas) and replies again under a new ``stream_id`` (the attempt's number is its suffix).

A model server that cannot be reached before the reply's first token is retried with backoff, holding the
request (replies wait in Kafka meanwhile); one that answers 5xx is asked three times, then the reply fails; one
that breaks a reply off mid-way (:class:`ModelBrokeOff`) is asked again, on a new stream after a
``reply_restarted`` notice, up to three attempts.

With ``SOMA_SLM_TOOLS``, the model may call tools: each call is published as a ``tool.request`` (run by the tool
executor, agents/tool_requests.py, like any other), its stored ``tool.result`` is given back to the model, which
is asked again; at most ``SOMA_SLM_TOOL_ROUNDS`` rounds, then it answers without tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
import weakref
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import aiohttp
from faust.types import StreamT

from agents.boundary import decode, retry_transient
from agents.context import AgentContext, agent_context
from agents.tool_requests import result_id
from app import app, events, retry, stops
from app.repository import BatchResult, Incoming, stored_event, stored_ids
from app.topics import CONVERSATION_OUTBOUND, REPLY_REQUESTS, TOOL_REQUESTS
from tables.reply_runs import mark, run_of

if TYPE_CHECKING:
    import aiopg
    from faust.types import EventT

    from app.settings import ResponderSettings

log = logging.getLogger(__name__)

# the ids of a reply's events derive from the user message's, so that a republished event is stored once
NAMESPACE = uuid.UUID("6f0b8f3e-2a4c-4d7e-9b1a-5c3e7d9f1a20")
# the model's answer is read line by line (server-sent events); a silent stream is given up after this
READ_TIMEOUT_SECONDS = 60.0
# messages of the history read at most (then cut to SOMA_SLM_HISTORY_CHARS)
HISTORY_EVENTS = 200
# a client's stop (app/stops.py) is looked for this often while the model writes
STOP_CHECK_SECONDS = 0.1
# a model server answering 5xx is asked this many times before the reply fails
SERVER_ERROR_ATTEMPTS = 3
# a reply the model server breaks off mid-way is attempted this many times (each a new stream) before it fails
BROKEN_ATTEMPTS = 3
# a reply's reader and stop watcher, cancelled when it ends, are waited for this long at most
CANCEL_GRACE_SECONDS = 5.0
# a tool request's result is looked for in PostgreSQL this often (its tool has its own timeout)
TOOL_RESULT_POLL_SECONDS = 0.2
# what the model is told of each tool it may call (agents/tools/)
TOOL_SPECS: dict[str, dict[str, Any]] = {
    "echo": {
        "description": "Repeat the given text back.",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    },
    "timestamp": {
        "description": "The current date and time (UTC).",
        "parameters": {"type": "object", "properties": {}},
    },
    "http_fetch": {
        "description": "Fetch a web page (allowed hosts only) and return its status and text.",
        "parameters": {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]},
    },
}


def tool_spec(name: str) -> dict[str, Any]:
    spec = TOOL_SPECS.get(name, {"description": f"The {name} tool.", "parameters": {"type": "object"}})
    return {"name": name, **spec}


class ModelUnavailable(ConnectionError):
    """The model server could not be reached, or answered 5xx, before the reply's first token (transient)."""


class ModelFailed(Exception):
    """The model server refused the request (4xx) or broke off mid-reply."""


class ModelBrokeOff(ModelFailed):
    """The model server broke off mid-reply: the connection failed, the stream ended without a finish reason, or
    it sent nothing but keep-alives for ``READ_TIMEOUT_SECONDS``. The reply is attempted again (a new stream,
    after a ``reply_restarted`` notice), ``BROKEN_ATTEMPTS`` times at most."""


class ModelError(ModelFailed):
    """The model server answered 5xx: tried again a few times (``SERVER_ERROR_ATTEMPTS``), then the reply fails
    (llama.cpp's server answers 500 to a request it finds invalid, which no retry mends)."""


def _id(kind: str, *parts: object) -> str:
    return str(uuid.uuid5(NAMESPACE, ":".join([kind, *map(str, parts)])))


def final_id(request_id: str) -> str:
    """The event id of the one final reply to user message ``request_id``."""
    return _id("final", request_id)


# -- requests: published after a user message is stored -------------------------------------------------------


async def request_replies(ctx: AgentContext, result: BatchResult, items: list[Incoming]) -> None:
    """After a batch of ``conversation.inbound`` is stored: a reply request for each of its user messages.

    Duplicates too (a replay): their request may have been lost with a worker; the responder skips a message
    that has its final already.
    """
    if not ctx.responder.url:
        return
    for item in items:
        event = item.event
        if event.get("type") != "user.message":
            continue
        request = {
            "event_id": _id("reply", event["event_id"]),
            "session_id": event["session_id"],
            "request_id": event["event_id"],
            "persona_id": event.get("persona_id"),
            "version": 1,
            "occurred_at": events.now_iso(),
        }
        await retry_transient(
            "publish reply request", functools.partial(ctx.send, REPLY_REQUESTS, request, "reply_request")
        )


# -- the agent ----------------------------------------------------------------------------------------------------

_session_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def _lock(session_id: str) -> asyncio.Lock:
    """One reply at a time per session (its requests may be taken by two of the agent's actors at once)."""
    lock = _session_locks.get(session_id)
    if lock is None:
        lock = _session_locks[session_id] = asyncio.Lock()
    return lock


@app.agent(app.session_topics[REPLY_REQUESTS], name="responder", concurrency=app.settings.slm_concurrency)
async def responder(stream: StreamT[bytes]) -> None:
    ctx = agent_context(app)
    async for event in stream.events():  # acknowledged when the next one is taken: after its reply
        await answer(ctx, event)


async def answer(ctx: AgentContext, event: EventT[bytes]) -> None:
    """Reply to one request; never raises (the agent would acknowledge it and go on anyway)."""
    try:
        request = decode(event.message.value, "reply_request", ctx.settings.max_event_bytes)
    except Exception as exc:  # not ours: nothing to answer
        message = event.message
        log.error("reply request %s[%d]@%d is not one: %s", message.topic, message.partition, message.offset, exc)
        return
    if not ctx.responder.url:
        log.warning("reply request for %s ignored: SOMA_SLM_URL is not set on this worker", request["request_id"])
        return
    try:
        async with _lock(request["session_id"]):
            await _reply(ctx, event, request)
    except asyncio.CancelledError:
        raise
    except Exception:  # a defect: outages are retried inside, the model's failures answered as such
        log.exception("the reply to %s failed", request["request_id"])


async def _reply(ctx: AgentContext, event: EventT[bytes], request: dict[str, Any]) -> None:
    request_id = request["request_id"]
    pool = await ctx.resources.postgres()
    if await retry_transient("read stored final", lambda: stored_ids(pool, [final_id(request_id)])):
        return
    run = run_of(request_id, event)
    if run is not None and run.get("finished"):
        return  # its final is published (and on its way to the store)
    reply = Reply(ctx, request, attempt=run["attempt"] + 1 if run else 1)
    if run is not None:
        await reply.restarted(run["stream_id"])
    started = {"attempt": reply.attempt, "stream_id": reply.stream_id, "finished": False}
    await retry_transient("mark the reply started", lambda: mark(request_id, event, started))
    messages = await retry_transient("read history", lambda: history(pool, ctx.responder, request))
    for tries in range(1, BROKEN_ATTEMPTS + 1):
        ctx.metrics.replies_running += 1
        try:
            status, error = await reply.generate(messages)
        finally:
            ctx.metrics.replies_running -= 1
        if not reply.broke_off or tries == BROKEN_ATTEMPTS:
            break
        # the model server broke off: the same request again, on a new stream the clients are told of
        log.warning("the model server broke off the reply to %s (%s); attempting it again", request_id, error)
        abandoned = reply.stream_id
        reply = Reply(ctx, request, attempt=reply.attempt + 1)
        await reply.restarted(abandoned)
        started = {"attempt": reply.attempt, "stream_id": reply.stream_id, "finished": False}
        await retry_transient("mark the reply restarted", functools.partial(mark, request_id, event, started))
    await reply.finish(status, error)
    ctx.metrics.replied(status, reply.tokens)
    finished = {**started, "finished": True}
    await retry_transient("mark the reply finished", lambda: mark(request_id, event, finished))


class Reply:
    """One attempt at answering a user message: its deltas as they come, then its final."""

    def __init__(self, ctx: AgentContext, request: dict[str, Any], attempt: int) -> None:
        self.ctx = ctx
        self.settings = ctx.responder
        self.request_id: str = request["request_id"]
        self.session_id: str = request["session_id"]
        self.persona_id: str | None = request.get("persona_id")
        self.attempt = attempt
        self.stream_id = f"{self.request_id}.{attempt}"
        self.parts: list[str] = []  # the text of each delta published, in order
        self.pending = ""  # tokens not published yet
        self.tokens = 0
        self.sending: tuple[asyncio.Future[None], str] | None = None  # a delta being published, and its text
        self.broke_off = False  # the model server broke the answer off (ModelBrokeOff): worth another attempt

    def _event(self, event_id: str, type_: str, role: str, message: str, **extra: Any) -> dict[str, Any]:
        return {
            "event_id": event_id,
            "session_id": self.session_id,
            "persona_id": self.persona_id,
            "role": role,
            "type": type_,
            "message": message,
            "version": events.EVENT_VERSION,
            "occurred_at": events.now_iso(),
            **extra,
        }

    async def _send(self, event: dict[str, Any]) -> None:
        await retry_transient(
            f"publish {event['type']}", lambda: self.ctx.send(CONVERSATION_OUTBOUND, event, "conversation_event")
        )

    async def restarted(self, abandoned: str) -> None:
        notice = self._event(
            _id("restart", abandoned),
            "system.notice",
            "system",
            "The reply was interrupted and starts again.",
            metadata={"notice": "reply_restarted", "reply_to": self.request_id, "stream_id": abandoned},
        )
        await self._send(notice)

    async def flush(self) -> None:
        """Publish the tokens gathered so far as the stream's next delta.

        The send is shielded: a reply cancelled meanwhile (stopped, timed out) lets it finish, and
        :meth:`settle` counts it, so that the final is exactly the deltas that were published.
        """
        await self.settle()
        if not self.pending:
            return
        text, self.pending = self.pending, ""
        index = len(self.parts)
        delta = self._event(
            _id("delta", self.stream_id, index),
            "assistant.delta",
            "assistant",
            text,
            stream_id=self.stream_id,
            index=index,
            metadata={"reply_to": self.request_id},
        )
        self.sending = (asyncio.ensure_future(self._send(delta)), text)
        await asyncio.shield(self.sending[0])
        self.sending = None
        self.parts.append(text)

    async def settle(self) -> None:
        """Wait for a delta whose send was under way when the reply was cancelled, and count it."""
        if self.sending is not None:
            sent, text = self.sending
            await sent
            self.sending = None
            self.parts.append(text)

    async def generate(self, messages: list[dict[str, Any]]) -> tuple[str, str | None]:
        """Stream the model's answer out as deltas until it ends, a client stops it, or its time is up;
        (status, error)."""
        settings = self.settings
        reader = asyncio.ensure_future(self._read(messages))
        watcher = asyncio.ensure_future(self._watch_stop(time.time()))
        try:
            async with asyncio.timeout(settings.timeout_seconds):
                await asyncio.wait({reader, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            status: tuple[str, str | None] = ("timeout", f"no complete answer within {settings.timeout_seconds:g} s")
        else:
            status = reader.result() if reader.done() else ("stopped", None)
        finally:
            for task in (watcher, reader):
                task.cancel()  # the reader's model connection closes: the server stops generating
            # bounded: a task that swallowed its cancellation must not hold the reply (and its partition) forever
            tasks: set[asyncio.Future[Any]] = {watcher, reader}
            _, stuck = await asyncio.wait(tasks, timeout=CANCEL_GRACE_SECONDS)
            for left in stuck:
                log.error("the reply to %s left a task that did not end when cancelled: %r", self.request_id, left)
        await self.flush()  # what was read before the end
        return status

    async def _read(self, messages: list[dict[str, Any]]) -> tuple[str, str | None]:
        """The model's answer, round after round: a round that ends in tool calls runs them through the tool
        executor (``tool.requests``), gives their results to the model and asks again, at most
        ``SOMA_SLM_TOOL_ROUNDS`` times; then the model answers without tools."""
        settings = self.settings
        conversation = list(messages)
        try:
            for round_ in range(settings.tool_rounds + 1):
                forcing = settings.tool_choice not in ("auto", "none")
                # a forced tool is called once, in the first round; "auto" lets the model call tools each round
                offer = bool(settings.tools) and round_ < settings.tool_rounds and settings.tool_choice != "none"
                offer = offer and (round_ == 0 or not forcing)
                choice: Any = None
                if offer:
                    choice = {"type": "function", "function": {"name": settings.tool_choice}} if forcing else "auto"
                finish, calls = await self._round(conversation, settings.tools if offer else (), choice)
                if not calls:
                    if finish is None:  # the stream ended without saying why: the server cut it short
                        raise ModelBrokeOff("the model server ended the answer without a finish reason")
                    return ("length" if finish == "length" else "complete"), None
                conversation += await self._run_tools(round_, calls)
            return "failed", "tool rounds exhausted"  # not reached: the last round offers no tools
        except (ModelBrokeOff, aiohttp.ClientError) as exc:
            self.broke_off = True
            log.warning("the model server broke off the reply to %s: %r", self.request_id, exc)
            return "failed", str(exc) or type(exc).__name__
        except (ModelFailed, ValueError) as exc:
            log.warning("the model server failed mid-reply to %s: %r", self.request_id, exc)
            return "failed", str(exc) or type(exc).__name__

    async def _round(
        self, messages: list[dict[str, Any]], tools: tuple[str, ...], choice: Any
    ) -> tuple[str | None, list[dict[str, str]]]:
        """One call of the model: its text published as deltas; (finish reason, the tool calls it asked for)."""
        loop = asyncio.get_running_loop()
        delays = retry.INFRASTRUCTURE.delays()
        for attempt in range(1, SERVER_ERROR_ATTEMPTS + 1):
            try:
                chunks = await retry_transient(
                    "call the model server", lambda: _open_stream(self.ctx, messages, tools, choice)
                )
                break
            except ModelError as exc:
                if attempt == SERVER_ERROR_ATTEMPTS:
                    raise
                log.warning("the model server failed (attempt %d of %d): %s", attempt, SERVER_ERROR_ATTEMPTS, exc)
                await asyncio.sleep(next(delays))
        flushed = loop.time()
        finish: str | None = None
        calls: dict[int, dict[str, str]] = {}
        async with contextlib.aclosing(chunks):
            async for content, reason, tool_calls in chunks:
                if content:
                    self.pending += content
                    self.tokens += 1
                for call in tool_calls:
                    found = calls.setdefault(int(call.get("index", 0)), {"id": "", "name": "", "arguments": ""})
                    function = call.get("function") or {}
                    found["id"] = call.get("id") or found["id"]
                    found["name"] = function.get("name") or found["name"]
                    found["arguments"] += function.get("arguments") or ""
                if reason:
                    finish = reason
                if loop.time() - flushed >= self.settings.coalesce_seconds:
                    await self.flush()
                    flushed = loop.time()
        await self.flush()
        return finish, [calls[i] for i in sorted(calls)]

    async def _run_tools(self, round_: int, calls: list[dict[str, str]]) -> list[dict[str, Any]]:
        """Run each call through the tool executor and wait for its stored result; the messages that give the
        model its calls and their results (a denied, failed or malformed call reaches it as such)."""
        results: list[dict[str, Any]] = []
        for n, call in enumerate(calls):
            try:
                args = json.loads(call["arguments"] or "{}")
                if not isinstance(args, dict):
                    raise ValueError("the arguments are not a JSON object")
            except ValueError as exc:
                results.append({"status": "error", "error": f"arguments not understood: {exc}"})
                continue
            request_id = _id("tool", self.stream_id, round_, n)
            request: dict[str, Any] = {
                "event_id": request_id,
                "session_id": self.session_id,
                "persona_id": self.persona_id,
                "type": "tool.request",
                "role": "assistant",
                "tool_name": call["name"],
                "args": args,
                "metadata": {"reply_to": self.request_id, "stream_id": self.stream_id},
                "version": events.EVENT_VERSION,
                "occurred_at": events.now_iso(),
            }
            await retry_transient(
                "publish tool request", functools.partial(self.ctx.send, TOOL_REQUESTS, request, "tool_request")
            )
            result = await self._tool_result(request_id)
            results.append({"status": result.get("status"), "result": result.get("payload")})
        said = "\n".join(
            f"The function {call['name']} returned: {json.dumps(result)}"
            for call, result in zip(calls, results, strict=True)
        )
        return [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                    for c in calls
                ],
            },
            # as a user message: llama.cpp's chatml function-calling template does not show "tool" messages
            {"role": "user", "content": f"{said}\nNow answer my previous message using this."},
        ]

    async def _tool_result(self, request_id: str) -> dict[str, Any]:
        """The stored result of tool request ``request_id``, once the executor has answered it."""
        pool = await self.ctx.resources.postgres()
        wanted = result_id(request_id)
        while True:
            found = await retry_transient("read tool result", lambda: stored_event(pool, wanted))
            if found is not None:
                return found
            await asyncio.sleep(TOOL_RESULT_POLL_SECONDS)

    async def _watch_stop(self, began: float) -> None:
        """Return once a client has asked the session's reply to stop (app/stops.py)."""
        settings = self.ctx.settings
        await stops.wait_for_stop(
            self.ctx.resources.redis, settings.redis_prefix, self.session_id, began, STOP_CHECK_SECONDS
        )

    async def finish(self, status: str, error: str | None) -> None:
        metadata = {"reply_to": self.request_id, "status": status, "model": self.settings.model}
        metadata["deltas"] = str(len(self.parts))
        metadata["tokens"] = str(self.tokens)
        if error is not None:
            metadata["error"] = error[:1000]
        final = self._event(
            final_id(self.request_id),
            "assistant.final",
            "assistant",
            "".join(self.parts),
            stream_id=self.stream_id,
            metadata=metadata,
        )
        await self._send(final)


async def _open_stream(
    ctx: AgentContext, messages: list[dict[str, Any]], tools: tuple[str, ...] = (), choice: Any = None
) -> AsyncGenerator[tuple[str | None, str | None, list[dict[str, Any]]], None]:
    """Start the model's streamed answer; its (content, finish reason) chunks. ModelUnavailable (transient)
    while nothing has been read; a 4xx is ModelFailed."""
    settings = ctx.responder
    body = {
        "model": settings.model,
        "messages": messages,
        "stream": True,
        "max_tokens": settings.max_tokens,
        "temperature": settings.temperature,
    }
    if tools:
        body["tools"] = [{"type": "function", "function": tool_spec(name)} for name in tools]
        body["tool_choice"] = choice
    timeout = aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=READ_TIMEOUT_SECONDS)
    try:
        response = await ctx.resources.http().post(f"{settings.url}/v1/chat/completions", json=body, timeout=timeout)
    except (aiohttp.ClientError, OSError) as exc:
        raise ModelUnavailable(f"the model server at {settings.url} is unreachable: {exc!r}") from exc
    if response.status >= 500:
        text = (await response.text())[:500]
        response.release()
        raise ModelError(f"the model server answered {response.status}: {text}")
    if response.status != 200:
        text = (await response.text())[:500]
        response.release()
        raise ModelFailed(f"the model server refused the request ({response.status}): {text}")
    return _chunks(response)


async def _chunks(
    response: aiohttp.ClientResponse,
) -> AsyncGenerator[tuple[str | None, str | None, list[dict[str, Any]]], None]:
    """The server-sent events of a streamed chat completion, as (content, finish reason, tool call parts).

    A server that keeps the stream open with keep-alives (llama.cpp's, through sse-starlette, pings every 15 s,
    so the socket's read timeout never fires) and writes nothing else for ``READ_TIMEOUT_SECONDS`` has broken
    the answer off.
    """
    loop = asyncio.get_running_loop()
    heard = loop.time()
    try:
        async for raw in response.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                if loop.time() - heard > READ_TIMEOUT_SECONDS:
                    silent = f"{READ_TIMEOUT_SECONDS:g} s"
                    raise ModelBrokeOff(f"the model server wrote nothing but keep-alives for {silent}")
                continue
            heard = loop.time()
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            chunk = json.loads(data)
            if "error" in chunk:
                raise ModelFailed(f"the model server reported an error: {chunk['error']}")
            for choice in chunk.get("choices", ()):
                delta = choice.get("delta") or {}
                yield delta.get("content"), choice.get("finish_reason"), delta.get("tool_calls") or []
    finally:
        response.release()


# -- history --------------------------------------------------------------------------------------------------

_HISTORY = """
SELECT role, payload->>'message' FROM session_events
WHERE session_id = %s AND type IN ('user.message', 'assistant.final')
  AND seq <= (SELECT seq FROM session_events WHERE event_id = %s)
ORDER BY seq DESC LIMIT %s
"""


async def history(pool: aiopg.Pool, settings: ResponderSettings, request: dict[str, Any]) -> list[dict[str, str]]:
    """The model's input: the persona's system prompt, then the session's messages up to the one answered, the
    oldest dropped beyond ``SOMA_SLM_HISTORY_CHARS`` (the answered one always goes, cut to the budget)."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(_HISTORY, (request["session_id"], request["request_id"], HISTORY_EVENTS))
        rows = await cur.fetchall()
    budget = settings.history_chars
    kept: list[dict[str, str]] = []
    for role, message in rows:  # newest first
        text = message or ""
        if kept and len(text) > budget:
            break
        text = text[-budget:] if not kept else text
        kept.append({"role": "assistant" if role == "assistant" else "user", "content": text})
        budget -= len(text)
        if budget <= 0:
            break
    return [{"role": "system", "content": settings.prompt(request.get("persona_id"))}, *reversed(kept)]
