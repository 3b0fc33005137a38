"""``faust -A app follow-session SESSION``: a session's stored events, then (``--follow``) its live ones.

History comes page by page from ``GET /v1/session/{id}/events`` (no cap on its length); ``--follow`` then opens
the WebSocket stream at the last seq printed, so the seam has no gap and no duplicate (the server resumes
exactly after it). Authentication: ``--token`` or the ``SOMAAGENT_TOKEN`` variable.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import aiohttp
from faust.cli import argument, option

from app import app
from ops.base import FAILED, USAGE, CommandError, OpsCommand

PAGE = 1_000
TOKEN_VARIABLE = "SOMAAGENT_TOKEN"  # noqa: S105 - the name of a variable, not a secret


def _line(event: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    text = event.get("message")
    if text is None:
        text = json.dumps(event.get("payload", {}), ensure_ascii=False)
    return f"{event.get('seq', '?'):>6}  {event.get('occurred_at', '')}  {event.get('type', '?'):<16} {text}"


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _get(http: aiohttp.ClientSession, url: str, token: str | None) -> dict[str, Any]:
    try:
        async with http.get(url, headers=_headers(token)) as resp:
            body: dict[str, Any] = await resp.json(content_type=None)
            if resp.status == 200:
                return body
            error = body.get("error", {}) if isinstance(body, dict) else {}
            code = FAILED if resp.status in (401, 403, 404) else USAGE
            raise CommandError(f"{resp.status} {error.get('code', '')}: {error.get('message', '')}".strip(), code)
    except aiohttp.ClientError as exc:
        raise CommandError(f"cannot reach {url.split('/v1/')[0]}: {exc}") from None


@app.command(
    argument("session"),
    option("--url", default=None, help="a worker's base URL [default: http://127.0.0.1:<SOMA_WEB_PORT>]"),
    option("--after", type=int, default=0, show_default=True, help="print events with seq > AFTER"),
    option("--limit", type=int, default=0, help="print at most this many events (0: all) and stop"),
    option("--follow/--no-follow", default=False, help="after the stored events, print live ones until Ctrl-C"),
    option("--format", "fmt", default="text", show_default=True, help="text (one line each) or json"),
    option("--token", default=None, help=f"bearer token (default: ${TOKEN_VARIABLE})"),
    base=OpsCommand,
)
async def follow_session(
    self: OpsCommand,
    session: str,
    url: str | None,
    after: int,
    limit: int,
    follow: bool,
    fmt: str,
    token: str | None,
) -> int:
    """Print a session's stored events in seq order, then with --follow its live events, with no gap."""
    if fmt not in ("text", "json"):
        raise CommandError(f"--format must be text or json, not {fmt!r}")
    if after < 0 or limit < 0:
        raise CommandError("--after and --limit must be >= 0")
    base = (url or f"http://127.0.0.1:{app.settings.web_port}").rstrip("/")
    token = token or os.environ.get(TOKEN_VARIABLE) or None
    printed = 0
    last = after
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)) as http:
        while True:
            size = PAGE if not limit else min(PAGE, limit - printed)
            page = await _get(http, f"{base}/v1/session/{session}/events?after={last}&limit={size}", token)
            for event in page["events"]:
                print(_line(event, fmt), flush=True)
                last = event["seq"]
                printed += 1
            if (limit and printed >= limit) or not page["events"]:
                break
        if not follow or (limit and printed >= limit):
            return 0
        ws_url = base.replace("http", "ws", 1) + f"/v1/session/{session}/stream?after={last}"
        try:
            async with http.ws_connect(ws_url, headers=_headers(token), heartbeat=20) as ws:
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    frame = json.loads(message.data)
                    if "seq" not in frame:
                        continue  # control frames (recovered, acks)
                    if frame["seq"] <= last:
                        continue
                    print(_line(frame, fmt), flush=True)
                    last = frame["seq"]
                    printed += 1
                    if limit and printed >= limit:
                        return 0
        except aiohttp.WSServerHandshakeError as exc:
            raise CommandError(f"the stream was refused: {exc.status} {exc.message}", FAILED) from None
        except aiohttp.ClientError as exc:
            raise CommandError(f"the stream was lost: {exc}", FAILED) from None
    print(f"follow-session: the stream of {session} ended at seq {last}", file=sys.stderr)
    return FAILED
