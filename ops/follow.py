"""``faust -A app follow-session SESSION``: a session's stored events, then (``--follow``) its live ones.

History comes page by page from ``GET /v1/session/{id}/events`` (no cap on its length); ``--follow`` then opens
the WebSocket stream at the last seq printed, so the seam has no gap and no duplicate (the server resumes
exactly after it). Authentication: ``--token`` or the ``SOMAAGENT_TOKEN`` variable.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import aiohttp
from faust.cli import argument, option

from app import app
from ops.base import (
    FAILED,
    USAGE,
    WORKER_OPTIONS,
    CommandError,
    OpsCommand,
    bearer_headers,
    stream_url,
    worker_url,
)

PAGE = 1_000


def _line(event: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    text = event.get("message")
    if text is None:
        text = json.dumps(event.get("payload", {}), ensure_ascii=False)
    return f"{event.get('seq', '?'):>6}  {event.get('occurred_at', '')}  {event.get('type', '?'):<16} {text}"


async def _get(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> dict[str, Any]:
    try:
        async with http.get(url, headers=headers) as resp:
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
    *WORKER_OPTIONS,
    option("--after", type=int, default=0, show_default=True, help="print events with seq > AFTER"),
    option("--limit", type=int, default=0, help="print at most this many events (0: all) and stop"),
    option("--follow/--no-follow", default=False, help="after the stored events, print live ones until Ctrl-C"),
    option("--format", "fmt", default="text", show_default=True, help="text (one line each) or json"),
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
    base = worker_url(url)
    headers = bearer_headers(token)
    printed = 0
    last = after
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)) as http:
        while True:
            size = PAGE if not limit else min(PAGE, limit - printed)
            page = await _get(http, f"{base}/v1/session/{session}/events?after={last}&limit={size}", headers)
            for event in page["events"]:
                print(_line(event, fmt), flush=True)
                last = event["seq"]
                printed += 1
            if (limit and printed >= limit) or not page["events"]:
                break
        if not follow or (limit and printed >= limit):
            return 0
        try:
            async with http.ws_connect(stream_url(base, session, last), headers=headers, heartbeat=20) as ws:
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
