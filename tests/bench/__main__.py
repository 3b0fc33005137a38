"""``python -m tests.bench [--quick] [--only w1,w1http,w2,w3,w5]``: the benchmark, written to docs/benchmarks.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import time
from typing import Any

from tests.bench import delivery, harness, ingest, replies, report
from tests.bench.harness import ARTIFACTS, Stack

# (quick, full) sizes of each workload
SIZES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "w1": ({"count": 20_000, "sessions": 1_000}, {"count": 100_000, "sessions": 1_000}),
    "w1http": (
        {"seconds": 10, "connections": 32, "sessions": 1_000},
        {"seconds": 30, "connections": 32, "sessions": 1_000},
    ),
    "w2": ({"rate": 1_000, "seconds": 15, "sessions": 100}, {"rate": 1_000, "seconds": 60, "sessions": 100}),
    "w3": ({"rate": 100, "seconds": 10, "viewers": 1_000}, {"rate": 100, "seconds": 30, "viewers": 1_000}),
    "w5": ({"concurrency": [1, 4], "max_tokens": 32}, {"concurrency": [1, 4, 16], "max_tokens": 64}),
}


def machine() -> dict[str, Any]:
    def version(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "not found"

    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": version("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        "cores": version("nproc"),
        "python": platform.python_version(),
        "load_before": version("cat", "/proc/loadavg"),
    }


async def run(only: list[str], quick: bool) -> dict[str, Any]:
    stack = Stack()
    results: dict[str, Any] = {"machine": machine(), "quick": quick}
    try:
        for name in only:
            size = SIZES[name][0 if quick else 1]
            began = time.monotonic()
            print(f"== {name} {size}", flush=True)
            if name == "w1":
                results[name] = await ingest.ingest_direct(stack, **size)
            elif name == "w1http":
                results[name] = await ingest.ingest_http(stack, **size)
            elif name == "w2":
                results[name] = await delivery.latency(stack, **size)
            elif name == "w3":
                results[name] = await delivery.fanout(stack, **size)
            elif name == "w5":
                results[name] = await replies.replies(stack, **size)
            print(json.dumps(report.brief(results[name])), flush=True)
            print(f"   ({time.monotonic() - began:.0f} s)", flush=True)
    finally:
        stack.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes: the whole run in under 3 minutes")
    parser.add_argument("--only", default="w1,w1http,w2,w3,w5", help="comma-separated workloads")
    parser.add_argument("--out", default=None, help="write the results as JSON here too")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--set", action="append", default=[], help="override a size: w1.count=50000")
    parser.add_argument(
        "--otlp",
        default=None,
        metavar="URL",
        help="workers export traces to this OTLP/HTTP endpoint, with the OTEL_* variables set here (a sampler)",
    )
    args = parser.parse_args()
    if args.otlp:
        harness.WORKER_ENV.update({k: v for k, v in os.environ.items() if k.startswith("OTEL_")})
        harness.WORKER_ENV.update(OTEL_EXPORTER_OTLP_ENDPOINT=args.otlp, OTEL_SERVICE_NAME="somaagent01-bench")
    for item in args.set:
        key, value = item.split("=", 1)
        workload, field = key.split(".", 1)
        for size in SIZES[workload]:
            size[field] = type(size[field])(value)
    results = asyncio.run(run(args.only.split(","), args.quick))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = args.out or str(ARTIFACTS / f"results-{'quick' if args.quick else 'full'}.json")
    with open(out, "w") as fh:
        json.dump(results, fh, indent=1)
    print(f"results: {out}")
    if not args.no_docs:
        report.write(results, " ".join(["make", "bench-quick" if args.quick else "bench"]))
        print(f"written: {report.DOC} and its charts in {report.CHARTS}")


if __name__ == "__main__":
    main()
