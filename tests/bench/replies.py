"""W5 replies: a user message's time to its first ``assistant.delta`` and the tokens per second written, at 1, 4
and 16 sessions asking at once, beside the model server asked directly (the same prompt, as many at once).

Both go through the one llama.cpp server of the run (SmolLM2-135M, 2 threads), which answers one request at a
time: the figures say what the service adds to the model (queueing in Kafka, storing and streaming each delta),
not how fast a model can be.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from tests.bench.harness import Result, Stack, cpu_seconds, start_worker, summary_ms
from tests.support.private import private_slm

PROMPT = "Write a short paragraph about rivers."


async def _direct_one(http: aiohttp.ClientSession, url: str, max_tokens: int) -> tuple[float, int, float]:
    """One streamed completion: (seconds to the first token, tokens, seconds to the end)."""
    began = time.perf_counter()
    first = 0.0
    tokens = 0
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    async with http.post(f"{url}/v1/chat/completions", json=body) as response:
        async for raw in response.content:
            line = raw.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            for choice in json.loads(line[5:]).get("choices", ()):
                if (choice.get("delta") or {}).get("content"):
                    tokens += 1
                    first = first or time.perf_counter() - began
    return first, tokens, time.perf_counter() - began


async def _soma_one(http: aiohttp.ClientSession, base: str, session: str) -> tuple[float, int, float]:
    """One message posted with its session's WebSocket open: (seconds to the first delta, tokens, to the final)."""
    async with http.ws_connect(f"{base.replace('http', 'ws')}/v1/session/{session}/stream") as ws:
        began = time.perf_counter()
        async with http.post(f"{base}/v1/session/message", json={"session_id": session, "message": PROMPT}) as r:
            assert r.status == 202, await r.text()
        first = 0.0
        while True:
            frame = json.loads((await ws.receive(timeout=600)).data)
            if frame.get("type") == "assistant.delta":
                first = first or time.perf_counter() - began
            elif frame.get("type") == "assistant.final":
                return first, int(frame["metadata"]["tokens"]), time.perf_counter() - began


def _summary(runs: list[tuple[float, int, float]], wall: float) -> Result:
    tokens = sum(t for _, t, _ in runs)
    return {
        "first_delta_ms": summary_ms([f for f, _, _ in runs]),
        "reply_ms": summary_ms([e for _, _, e in runs]),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
    }


async def replies(stack: Stack, concurrency: list[int], max_tokens: int) -> Result:
    out: dict[str, Any] = {"max_tokens": max_tokens, "prompt": PROMPT, "runs": {}}
    slm_context = private_slm(stack.settings, threads=2)  # as make run SLM=1 runs it
    slm = await asyncio.to_thread(slm_context.__enter__)
    try:
        with stack.slice("replies") as iso:
            env = iso.env(SOMA_SLM_URL=slm.url, SOMA_SLM_TEMPERATURE="0", SOMA_SLM_MAX_TOKENS=str(max_tokens))
            worker = start_worker(env, "replies-worker")
            try:
                await worker.wait_http()
                async with aiohttp.ClientSession() as http:
                    await _soma_one(http, worker.url, "warm-up")  # the partitions assigned, the model loaded
                    for n in concurrency:
                        began = time.perf_counter()
                        direct = await asyncio.gather(*(_direct_one(http, slm.url, max_tokens) for _ in range(n)))
                        direct_wall = time.perf_counter() - began
                        cpu = cpu_seconds(worker.pid)
                        began = time.perf_counter()
                        soma = await asyncio.gather(*(_soma_one(http, worker.url, f"r{n}-{i}") for i in range(n)))
                        soma_wall = time.perf_counter() - began
                        tokens = sum(t for _, t, _ in soma)
                        out["runs"][str(n)] = {
                            "soma": {
                                **_summary(soma, soma_wall),
                                "worker_cpu_ms_per_token": round((cpu_seconds(worker.pid) - cpu) * 1000 / tokens, 3),
                            },
                            "direct": _summary(direct, direct_wall),
                        }
                        print(f"   {n} at once: {json.dumps(out['runs'][str(n)])}", flush=True)
            finally:
                worker.stop()
    finally:
        await asyncio.to_thread(slm_context.__exit__, None, None, None)
    return out
