"""Baseline for HTTP intake: the least a POST handler can do (parse JSON, produce with acks=all, answer 202)."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

from aiohttp import web
from aiokafka import AIOKafkaProducer


async def main(bootstrap: str, topic: str, port: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()

    async def post(request: web.Request) -> web.Response:
        body = await request.json()
        event = {"event_id": str(uuid.uuid4()), "session_id": body["session_id"], "message": body["message"]}
        await producer.send_and_wait(topic, json.dumps(event).encode(), key=event["session_id"].encode())
        return web.json_response({"session_id": event["session_id"], "event_id": event["event_id"]}, status=202)

    app = web.Application()
    app.router.add_post("/v1/session/message", post)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await producer.stop()


if __name__ == "__main__":
    # the same event loop as the worker (asyncio's: uvloop breaks aiopg in a Postgres outage, docs/benchmarks.md)
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
