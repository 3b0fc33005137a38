"""GET /metrics on every worker, scraped by a real Prometheus: the series an operator needs, with values from
real traffic (messages posted, events stored and streamed, a record dead-lettered), read back from its API."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from deploy.localstack.go_tools import PROMTOOL
from deploy.localstack.prometheus_server import PrometheusServer
from tests.support.client import post_message
from tests.support.isolation import Isolated
from tests.support.kafka import create_topic, produce, read_topic
from tests.support.private import private_prometheus
from tests.support.worker import Worker, running_pair


@pytest.fixture(scope="module")
async def pair(iso_module: Isolated, artifacts: Path) -> AsyncIterator[tuple[Worker, Worker]]:
    async with running_pair(iso_module.env(), artifacts / "logs", f"metrics-{iso_module.tag}") as workers:
        yield workers


@pytest.fixture(scope="module")
def prometheus(iso_module: Isolated, pair: tuple[Worker, Worker]) -> Iterator[PrometheusServer]:
    with private_prometheus(iso_module.settings, [f"127.0.0.1:{worker.port}" for worker in pair]) as server:
        yield server


async def query(prometheus: PrometheusServer, promql: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{prometheus.url}/api/v1/query", params={"query": promql}) as resp,
    ):
        body = await resp.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def value(prometheus: PrometheusServer, promql: str) -> float:
    found = await query(prometheus, promql)
    return float(found[0]["value"][1]) if found else 0.0


async def test_prometheus_scrapes_both_workers_and_sees_the_traffic(
    iso_module: Isolated, pair: tuple[Worker, Worker], prometheus: PrometheusServer
) -> None:
    a, b = pair
    settings = iso_module.settings
    # traffic once Prometheus scrapes both: its rates then see the counters move
    deadline = time.monotonic() + 60
    while await value(prometheus, 'sum(up{job="soma"})') < 2:
        assert time.monotonic() < deadline, "Prometheus never scraped both workers"
        await asyncio.sleep(0.2)
    session = f"metrics-{uuid.uuid4().hex[:8]}"
    # a viewer on B, messages through A and B (spread over a few scrapes), and a poison record
    stream = f"{b.url.replace('http', 'ws')}/v1/session/{session}/stream"
    async with aiohttp.ClientSession() as http, http.ws_connect(stream) as ws:
        for n, worker in enumerate([a, b] * 15):
            status, answer = await post_message(worker.url, {"session_id": session, "message": f"m{n}"})
            assert status == 202, answer
            await asyncio.sleep(0.1)
        seqs: list[int] = []
        while len(seqs) < 30:
            frame = json.loads((await ws.receive(timeout=30)).data)
            if "seq" in frame:
                seqs.append(frame["seq"])
    topic = iso_module.topic("conversation.inbound")
    await create_topic(settings.kafka_bootstrap, topic, settings.topic_partitions)
    await produce(settings.kafka_bootstrap, topic, [(b"poisoned", b"{not json", [])])
    await read_topic(settings.kafka_bootstrap, iso_module.topic("conversation.inbound.dlq"), expect=1, timeout=60)

    expected = {
        # the seed gateway's names
        'sum(gateway_requests_total{route="/v1/session/message",method="POST",status="202"})': 10,
        'sum(gateway_request_latency_seconds_count{route="/v1/session/message"})': 10,
        'sum(gateway_kafka_publish_total{status="ok"})': 10,
        'sum(gateway_streamed_events_total{transport="ws"})': 10,
        # the agents: stored, in batches, timed; the dead letter with its class
        'sum(soma_events_processed_total{agent="conversation.inbound"})': 10,
        'sum(soma_batch_size_count{agent="conversation.inbound"})': 1,
        'sum(soma_store_latency_seconds_count{agent="conversation.inbound"})': 1,
        'sum(soma_dead_letters_total{error_class="json.decoder.JSONDecodeError"})': 1,
        'sum(soma_events_failed_total{outcome="dead_lettered"})': 1,
        # both workers up and scraped
        'sum(up{job="soma"})': 2,
        'count(soma_consumer_lag{topic="' + topic + '"})': settings.topic_partitions,
    }
    deadline = time.monotonic() + 60
    seen: dict[str, float] = {}
    while time.monotonic() < deadline:
        seen = {promql: await value(prometheus, promql) for promql in expected}
        if all(seen[promql] >= least for promql, least in expected.items()):
            break
        await asyncio.sleep(0.5)
    short = {promql: (seen[promql], least) for promql, least in expected.items() if seen[promql] < least}
    assert not short, f"series below what the traffic made (seen, expected at least): {short}"
    # every series the gauges read at scrape time is there, per worker
    for name in (
        "soma_retries_in_progress",
        "soma_streams_open",
        "soma_feed_watched_sessions",
        "gateway_active_websockets",
    ):
        assert len(await query(prometheus, name)) == 2, name


DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "somaagent01.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
SERIES = re.compile(r"\b((?:gateway|soma)_[a-z_]+|up)\b")


async def exported(worker: Worker) -> set[str]:
    """Every series name a worker's /metrics exports (a histogram's _bucket, _sum and _count included)."""
    async with aiohttp.ClientSession() as http, http.get(f"{worker.url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    names = {"up"}  # Prometheus' own, per target
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    return names


def plot(panels: list[tuple[str, list[list[tuple[float, float]]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (len(panels) + 1) // 2
    figure, axes = plt.subplots(rows, 2, figsize=(14, 2.6 * rows))
    for axis, (title, lines) in zip(axes.flat, panels, strict=False):
        axis.set_title(title, fontsize=9)
        for points in lines:
            axis.plot([t for t, _ in points], [v for _, v in points], marker=".", markersize=3, linewidth=1)
        axis.tick_params(labelsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)


async def test_the_dashboard_queries_only_exported_series_and_renders_from_prometheus(
    pair: tuple[Worker, Worker], prometheus: PrometheusServer, artifacts: Path
) -> None:
    names = await exported(pair[0])
    dashboard = json.loads(await asyncio.to_thread(DASHBOARD.read_text))
    assert dashboard["uid"] == "somaagent01" and dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            unknown = set(SERIES.findall(target["expr"])) - names
            assert not unknown, f"{panel['title']}: {target['expr']} names series no worker exports: {unknown}"
    # a chart needs a few samples (a rate, two in its window): wait until most panels have five points
    deadline = time.monotonic() + 60
    while True:
        rendered = await panels_from(prometheus, dashboard["panels"])
        with_data = [title for title, lines in rendered if any(len(points) >= 5 for points in lines)]
        if len(with_data) >= len(rendered) // 2 or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    # the dashboard drawn from real data (Grafana has no route to this machine): artifacts/dashboard.png
    await asyncio.to_thread(plot, rendered, artifacts / "dashboard.png")
    assert len(with_data) >= len(rendered) // 2, f"only these panels have data after the traffic: {with_data}"


async def panels_from(
    prometheus: PrometheusServer, panels: list[dict[str, Any]]
) -> list[tuple[str, list[list[tuple[float, float]]]]]:
    """Each panel's lines over the last two minutes, a point a second, from Prometheus' API (which parses and
    runs each query: a typo in PromQL is a 400 here)."""
    rendered: list[tuple[str, list[list[tuple[float, float]]]]] = []
    end = time.time()
    async with aiohttp.ClientSession() as http:
        for panel in panels:
            lines: list[list[tuple[float, float]]] = []
            for target in panel["targets"]:
                params = {"query": target["expr"], "start": str(end - 120), "end": str(end), "step": "1"}
                async with http.get(f"{prometheus.url}/api/v1/query_range", params=params) as resp:
                    body = await resp.json()
                assert body["status"] == "success", (panel["title"], target["expr"], body)
                lines += [[(float(t) - end, float(v)) for t, v in s["values"]] for s in body["data"]["result"]]
            rendered.append((panel["title"], lines))
    return rendered


async def test_alert_rules_pass_promtool_and_query_only_exported_series(pair: tuple[Worker, Worker]) -> None:
    promtool = await asyncio.to_thread(PROMTOOL.require, Path())
    for args in (
        ["check", "rules", str(ALERTS)],
        ["test", "rules", "alerts_test.yml"],
        ["check", "config", "compose-prometheus.yml"],  # compose.yaml's Prometheus, with the rules beside it
    ):
        done = await asyncio.to_thread(
            subprocess.run, [str(promtool), *args], cwd=ALERTS.parent, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
    names = await exported(pair[0])
    rules = await asyncio.to_thread(ALERTS.read_text)
    exprs = re.findall(r"^\s+expr: (.+)$", rules, re.MULTILINE)
    assert len(exprs) == 6
    for expr in exprs:
        assert set(SERIES.findall(expr)) <= names, expr
