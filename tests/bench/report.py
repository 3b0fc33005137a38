"""The benchmark's results as the measured section of docs/benchmarks.md and PNG charts under docs/bench/."""

from __future__ import annotations

import itertools
import re
from typing import Any

from tests.bench.harness import ROOT

TIMES = "\u00d7"  # the multiplication sign of "0.5 x baseline"

DOC = ROOT / "docs" / "benchmarks.md"
CHARTS = ROOT / "docs" / "bench"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def brief(result: dict[str, Any]) -> dict[str, Any]:
    """A result without its time series, for the console."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        if key == "timeline":
            continue
        out[key] = brief(value) if isinstance(value, dict) else value
    return out


def _ms(summary: dict[str, float] | None, key: str) -> str:
    if not summary or key not in summary:
        return "—"
    return f"{summary[key]:.1f}"


def _ingest(r: dict[str, Any]) -> list[str]:
    return [
        f"{r['events']:,} events over {r['sessions']:,} sessions, produced before the worker starts.",
        "",
        "| what | per second | worker CPU per event | ratio |",
        "|---|---|---|---|",
        f"| **stored by the service** | **{r['stored_per_s']:,}** | {r['worker_cpu_ms_per_event'] * 1000:.0f} µs | "
        f"**{r['ratio_to_insert']:.2f}** {TIMES} insert |",
        f"| baseline: plain INSERT … unnest of the same rows (aiopg, batches of 500) | {r['insert_per_s']:,} | | 1 |",
        f"| baseline: plain aiokafka consumer of the same topic (+ JSON decode) | {r['kafka_consume_per_s']:,} | | |",
    ]


def _http(r: dict[str, Any]) -> list[str]:
    refused = sum(n for code, n in r["statuses"].items() if int(code) != 202)
    return [
        f"wrk, {r['connections']} connections, {r['seconds']} s, 1,000 sessions; answers {r['statuses']}, "
        f"{r['errors']} socket errors.",
        "",
        "| what | accepted/s | CPU per request | latency p50 / p99 | ratio |",
        "|---|---|---|---|---|",
        f"| **the service** (202 = broker acked) | **{r['accepted_per_s']:,}** | "
        f"{r['worker_cpu_ms_per_request'] * 1000:.0f} µs | "
        f"{r['latency_ms']['p50']:.1f} / {r['latency_ms']['p99']:.1f} ms | "
        f"**{r['ratio_to_baseline']:.2f}** {TIMES} baseline |",
        f"| baseline: plain aiohttp + aiokafka (acks=all) handler | {r['baseline_accepted_per_s']:,} | "
        f"{r['baseline_cpu_ms_per_request'] * 1000:.0f} µs | {r['baseline_latency_ms']['p50']:.1f} / "
        f"{r['baseline_latency_ms']['p99']:.1f} ms | 1 |",
        "",
        f"Stored while the load ran: {r['stored_during_load_per_s']:,}/s; the backlog was stored "
        f"**{r['drain_after_load_s']:.2f} s** after the load ended; {refused:,} requests not answered 202.",
    ]


def _delivery_rows(r: dict[str, Any], peers: list[str]) -> list[str]:
    rows = [
        "| path | delivered / expected | p50 | p90 | p99 | max | server CPU per delivery | gaps, dups |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "soma": "**this service**: POST → Kafka → agent → Postgres → Redis → WebSocket",
        "centrifugo": "Centrifugo 6.9.1 (Redis engine): HTTP publish → WebSocket",
        "kafka": "baseline: raw aiokafka produce (acks=all) → consume",
    }
    for peer in peers:
        p = r.get(peer)
        if p is None:
            continue
        d = p.get("delivery_ms")
        expected = p.get("expected_deliveries", p["deliveries"])
        cpu = f"{p['server_cpu_us_per_delivery']:.0f} µs" if "server_cpu_us_per_delivery" in p else ""
        order = f"{p.get('gaps', 0)}, {p.get('dups', 0)}" if "gaps" in p else ""
        rows.append(
            f"| {names[peer]} | {p['deliveries']:,} / {expected:,} | {_ms(d, 'p50')} | {_ms(d, 'p90')} | "
            f"{_ms(d, 'p99')} | {_ms(d, 'max')} | {cpu} | {order} |"
        )
    return rows


def _latency(r: dict[str, Any]) -> list[str]:
    soma = r["soma"]
    return [
        f"{r['rate']:,} messages/s offered for {r['seconds']} s over {r['sessions']} sessions, one WebSocket viewer "
        f"each (milliseconds). POSTs answered: {soma['status']}, {soma['errors']} errors; POST → 202 p99 "
        f"{_ms(soma.get('post_ms'), 'p99')} ms; generator send lag p99 {_ms(soma.get('send_lag_ms'), 'p99')} ms.",
        "",
        *_delivery_rows(r, ["soma", "kafka", "centrifugo"]),
    ]


def _fanout(r: dict[str, Any]) -> list[str]:
    soma, peer = r["soma"], r.get("centrifugo", {})
    per_s = f"{soma['deliveries_per_s']:,.0f}"
    ratio = ""
    if peer.get("server_cpu_us_per_delivery"):
        times = soma["server_cpu_us_per_delivery"] / peer["server_cpu_us_per_delivery"]
        ratio = f"; CPU per delivery {times:.2f} {TIMES} Centrifugo's"
    return [
        f"One session, {r['viewers']:,} WebSocket viewers, {r['rate']} messages/s for {r['seconds']} s: "
        f"**{per_s} deliveries/s**{ratio}; viewers closed: {soma['viewers_closed']} {soma['close_codes']}.",
        "",
        *_delivery_rows(r, ["soma", "centrifugo"]),
    ]


def _replies(r: dict[str, Any]) -> list[str]:
    lines = [
        f"Each session posts “{r['prompt']}” (at most {r['max_tokens']} tokens, temperature 0) with its WebSocket "
        "open, all at once; then the model server is asked the same directly, as many at once. One llama.cpp "
        "server (SmolLM2-135M, 2 threads) answers one request at a time: the later replies wait.",
        "",
        "| sessions at once | first delta p50 / max | whole reply p50 / max | tokens/s | worker CPU per token "
        "| model server alone: first token p50 / max, tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for n, run in r["runs"].items():
        soma, direct = run["soma"], run["direct"]
        lines.append(
            f"| {n} | {_ms(soma['first_delta_ms'], 'p50')} / {_ms(soma['first_delta_ms'], 'max')} ms "
            f"| {_ms(soma['reply_ms'], 'p50')} / {_ms(soma['reply_ms'], 'max')} ms | {soma['tokens_per_s']} "
            f"| {soma['worker_cpu_ms_per_token'] * 1000:.0f} µs "
            f"| {_ms(direct['first_delta_ms'], 'p50')} / {_ms(direct['first_delta_ms'], 'max')} ms, "
            f"{direct['tokens_per_s']} |"
        )
    return lines


SECTIONS = {
    "w1": ("W1 ingest: events produced straight to `conversation.inbound`", _ingest),
    "w1http": ("W1 ingest over HTTP: wrk POSTs to `/v1/session/message`", _http),
    "w2": ("W2 latency: POST → WebSocket delivery", _latency),
    "w3": ("W3 fan-out: one session, many WebSocket viewers", _fanout),
    "w5": ("W5 replies: POST → first assistant.delta, and tokens/s", _replies),
}


def charts(results: dict[str, Any], tag: str) -> list[str]:
    """PNG charts of the run; returns their paths relative to docs/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    CHARTS.mkdir(parents=True, exist_ok=True)
    made: list[str] = []
    delivery = [(name, results[name]) for name in ("w2", "w3") if name in results]
    if delivery:
        fig, axes = plt.subplots(1, len(delivery), figsize=(6 * len(delivery), 4), squeeze=False)
        for ax, (name, r) in zip(axes[0], delivery, strict=True):
            peers = [p for p in ("soma", "kafka", "centrifugo") if p in r]
            quantiles = ["p50", "p90", "p99", "max"]
            width = 0.8 / len(peers)
            for i, peer in enumerate(peers):
                values = [r[peer]["delivery_ms"].get(q, 0) for q in quantiles]
                ax.bar([x + i * width for x in range(len(quantiles))], values, width, label=peer)
            ax.set_xticks([x + width * (len(peers) - 1) / 2 for x in range(len(quantiles))], quantiles)
            ax.set_yscale("log")
            ax.set_ylabel("delivery latency, ms (log)")
            ax.set_title(SECTIONS[name][0].split(":")[0] + f" ({r['rate']}/s)")
            ax.legend()
        fig.tight_layout()
        path = CHARTS / f"latency-{tag}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made.append(path.relative_to(DOC.parent).as_posix())
    series = []
    if "w1" in results:
        # the row count was polled every 0.1 s: rates over whole seconds
        per_second: dict[int, int] = {}
        for t, n in results["w1"]["timeline"]:
            per_second[int(t)] = n
        seconds = sorted(per_second)
        rates = [(float(t1), float(per_second[t1] - per_second[t0])) for t0, t1 in itertools.pairwise(seconds)]
        series.append(("W1 stored events/s", rates))
    for name in ("w2", "w3"):
        if name in results and "timeline" in results[name]["soma"]:
            series.append(
                (f"{name.upper()} deliveries/s", [(p["t"], p["delivered"]) for p in results[name]["soma"]["timeline"]])
            )
    if series:
        fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.5), squeeze=False)
        for ax, (title, points) in zip(axes[0], series, strict=True):
            ax.plot([t for t, _ in points], [v for _, v in points])
            ax.set_title(title)
            ax.set_xlabel("seconds")
            ax.set_ylim(bottom=0)
        fig.tight_layout()
        path = CHARTS / f"throughput-{tag}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made.append(path.relative_to(DOC.parent).as_posix())
    return made


def write(results: dict[str, Any], command: str) -> None:
    """Replace the measured section of docs/benchmarks.md (between its markers) with this run."""
    tag = "quick" if results.get("quick") else "full"
    m = results["machine"]
    lines = [
        BEGIN,
        f"## Measured by `{command}` ({m['when']})",
        "",
        f"{m['cores']} cores ({m['cpu'].strip()}), Python {m['python']}, Kafka, Redis and PostgreSQL on the same "
        f"machine; load average before the run: {m['load_before']}. Every baseline ran in the same run. "
        "Read the ratios and the CPU per event: on a shared 2-core machine they are steadier than the rates.",
    ]
    for name, (title, render) in SECTIONS.items():
        if name in results:
            lines += ["", f"### {title}", "", *render(results[name])]
    for chart in charts(results, tag):
        lines += ["", f"![{chart}]({chart})"]
    lines.append(END)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = "\n".join(lines)
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)
