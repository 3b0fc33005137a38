"""``python -m tests.bench.big_bodies``: normal POST latency alone, then beside 13 clients posting ~0.9 MB bodies.

Issue 9 measured 11 ms -> 7 s for the normal POSTs' p50 once 13 such bodies were in flight. Prints, asserts
nothing (a benchmark, not a test).
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from tests.bench.harness import Stack, percentile, start_worker

HEADERS = {"Content-Type": "application/json"}
BIG = json.dumps({"message": "x" * 900_000}).encode()  # under the 1 MiB body limit
SMALL = json.dumps({"session_id": "small", "message": "hi"}).encode()


async def measure(url: str, heavy_clients: int, seconds: float) -> tuple[list[float], list[int]]:
    latencies: list[float] = []
    big_answers: list[int] = []
    stop = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def heavy() -> None:
            while time.monotonic() < stop:
                async with http.post(url, data=BIG, headers=HEADERS) as resp:
                    big_answers.append(resp.status)
                    await resp.read()

        async def light() -> None:
            while time.monotonic() < stop:
                began = time.perf_counter()
                async with http.post(url, data=SMALL, headers=HEADERS) as resp:
                    assert resp.status == 202, resp.status
                latencies.append(time.perf_counter() - began)
                await asyncio.sleep(0.02)

        await asyncio.gather(*(heavy() for _ in range(heavy_clients)), *(light() for _ in range(2)))
    return sorted(latencies), big_answers


async def main() -> None:
    stack = Stack()
    try:
        with stack.slice("big-bodies") as iso:
            worker = start_worker(iso.env(), "big-bodies-worker")
            try:
                await worker.wait_http()
                url = worker.url + "/v1/session/message"
                alone, _ = await measure(url, 0, 15)
                beside, big = await measure(url, 13, 15)
            finally:
                worker.stop()
    finally:
        stack.close()
    for name, samples in (("alone", alone), ("beside 13 clients posting 0.9 MB bodies", beside)):
        p50, p99 = (percentile(samples, q) * 1000 for q in (0.5, 0.99))
        print(f"normal POSTs {name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(samples)}")
    print(f"big bodies answered: {len(big)}, statuses {sorted(set(big))}")


if __name__ == "__main__":
    asyncio.run(main())
