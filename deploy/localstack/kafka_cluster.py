"""A Kafka cluster on loopback: several KRaft nodes (broker and controller each) forming one quorum."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka.admin import AIOKafkaAdminClient

from deploy.localstack.base import Component, StackError, WrongService, port_open, tail
from deploy.localstack.kafka_broker import KafkaBroker, Quorum, Voter, fetch_jars, kafka_uuid

if TYPE_CHECKING:
    from app.settings import Settings

# a node's ports: clients, its controller (+1), SASL (+2, which only a single broker of the tests opens)
PORTS_PER_NODE = 3


def local_kafka(settings: Settings) -> Component:
    """The stack's Kafka: one broker (``.stack/kafka``) or, with ``SOMA_KAFKA_BROKERS`` > 1, a cluster
    (``.stack/kafka-cluster``) whose first node is on the first address of ``SOMA_KAFKA_BOOTSTRAP``."""
    home = settings.stack_dir
    if settings.kafka_brokers == 1:
        return KafkaBroker.from_bootstrap(
            settings.kafka_bootstrap, home / "kafka", settings.cache_dir, settings.topic_partitions
        )
    return KafkaCluster.from_bootstrap(
        settings.kafka_bootstrap,
        home / "kafka-cluster",
        settings.cache_dir,
        size=settings.kafka_brokers,
        partitions=settings.topic_partitions,
    )


def node_ports(port: int, size: int) -> list[int]:
    """The client port of each node: ``port``, ``port + 3``, ``port + 6``..."""
    return [port + PORTS_PER_NODE * i for i in range(size)]


def cluster_brokers(bootstrap: str) -> list[int]:
    """Ids of the brokers the cluster reports (those registered and not fenced)."""

    async def describe() -> list[int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        await admin.start()
        try:
            found: dict[str, Any] = await admin.describe_cluster()
            return sorted(int(broker["node_id"]) for broker in found["brokers"])
        finally:
            await admin.close()

    # its own thread and loop, like KafkaBroker.answers: callers may already run an event loop
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(asyncio.wait_for(describe(), timeout=30))).result()


class KafkaCluster(Component):
    """``size`` combined broker+controller nodes of one quorum (``--initial-controllers``): node ``n`` (from 1)
    serves clients on ``port + 3 * (n - 1)`` and its controller on the next port, at home in ``<home>/node-<n>``
    with its own log and pid file. The cluster id and the nodes' metadata directory ids are kept in
    ``<home>/quorum.json``, so that a node formatted later (or again) joins the same quorum."""

    name = "kafka"
    # three JVMs starting at once on a small, busy machine
    start_seconds = 180.0

    def __init__(
        self,
        host: str,
        port: int,
        home: Path,
        cache_dir: Path,
        size: int = 3,
        partitions: int = 3,
        heap: str | None = None,
    ) -> None:
        super().__init__(host, port, home)
        self.cache_dir = cache_dir
        self.size = size
        ports = node_ports(port, size)
        self.quorum = self._quorum(host, ports)
        self.nodes = [
            KafkaBroker(host, p, home / f"node-{n}", cache_dir, partitions, node_id=n, quorum=self.quorum, heap=heap)
            for n, p in enumerate(ports, start=1)
        ]

    @classmethod
    def from_bootstrap(
        cls, bootstrap: str, home: Path, cache_dir: Path, size: int = 3, partitions: int = 3
    ) -> KafkaCluster:
        host, _, port = bootstrap.split(",")[0].rpartition(":")
        return cls(host or "127.0.0.1", int(port), home, cache_dir, size, partitions)

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def quorum_path(self) -> Path:
        return self.home / "quorum.json"

    @property
    def log_path(self) -> Path:
        return self.home / "node-*" / f"{self.name}.log"

    def node(self, node_id: int) -> KafkaBroker:
        return self.nodes[node_id - 1]

    def _kept(self) -> dict[str, Any] | None:
        try:
            kept: dict[str, Any] = json.loads(self.quorum_path.read_text())
        except FileNotFoundError:
            return None
        return kept

    def _quorum(self, host: str, ports: list[int]) -> Quorum:
        """The quorum the nodes were formatted with, or a new one for nodes yet to be formatted."""
        kept = self._kept()
        if kept is not None and len(kept["directory_ids"]) == len(ports):
            cluster_id, directories = kept["cluster_id"], kept["directory_ids"]
        else:  # none yet, or another size: prepare() refuses the latter
            cluster_id, directories = kafka_uuid(), [kafka_uuid() for _ in ports]
        voters = tuple(
            Voter(n, host, p + 1, d) for n, (p, d) in enumerate(zip(ports, directories, strict=True), start=1)
        )
        return Quorum(cluster_id, voters)

    def ours(self) -> int | None:
        """Pid of a node this stack started, if one is running."""
        return next((pid for pid in (node.ours() for node in self.nodes) if pid is not None), None)

    def answers(self) -> bool:
        return all(node.answers() for node in self.nodes)

    def install(self) -> None:
        fetch_jars(self.cache_dir)

    def prepare(self) -> None:
        quorum = {"cluster_id": self.quorum.cluster_id, "directory_ids": [v.directory_id for v in self.quorum.voters]}
        kept = self._kept()
        if kept is None:
            self.quorum_path.write_text(json.dumps(quorum, indent=2) + "\n")
        elif kept != quorum:
            raise StackError(
                f"kafka: {self.home} holds a cluster of {len(kept['directory_ids'])} nodes, not {self.size}: "
                f"set SOMA_KAFKA_BROKERS={len(kept['directory_ids'])}, or remove {self.home} (its topics with it)"
            )
        for node in self.nodes:
            node.home.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(self.size) as pool:
            list(pool.map(KafkaBroker.prepare, self.nodes))

    def launch(self) -> None:
        """Every node not running, at once: a quorum elects its leader only once a majority is up."""
        for node in self.nodes:
            if node.ours() is None:
                node.launch()

    def up(self) -> str:
        """Start the nodes that are not running; reuse a cluster of as many brokers that answers there."""
        foreign = [node for node in self.nodes if node.ours() is None and port_open(node.host, node.port)]
        if foreign:
            if len(foreign) == self.size and self.safe_answers() and len(cluster_brokers(self.bootstrap)) >= self.size:
                return "reused"
            raise WrongService(
                f"kafka: {', '.join(node.bootstrap for node in foreign)} already answer(s), but not as a cluster "
                f"of {self.size} started here (a single broker of another stack?): stop it, or give "
                "SOMA_KAFKA_BOOTSTRAP a free port"
            )
        starting = sum(node.ours() is None for node in self.nodes)
        self.install()
        self.home.mkdir(parents=True, exist_ok=True)
        self.prepare()
        self.launch()
        self.wait()
        if not starting:
            return "running"
        return f"started ({self.size} nodes)" if starting == self.size else f"started {starting} of {self.size} nodes"

    def wait(self) -> None:
        """Until every node answers a round trip (a topic of ``min(3, size)`` replicas: every broker is in)."""
        deadline = time.monotonic() + self.start_seconds
        waiting = list(self.nodes)
        with ThreadPoolExecutor(self.size) as pool:
            while True:
                answered = list(pool.map(KafkaBroker.safe_answers, waiting))
                waiting = [node for node, ok in zip(waiting, answered, strict=True) if not ok]
                if not waiting:
                    return
                for node in waiting:
                    if node.pid_path.exists() and node.ours() is None:
                        raise StackError(f"kafka node {node.node_id} exited while starting\n{tail(node.log_path)}")
                if time.monotonic() > deadline:
                    late = waiting[0]
                    raise StackError(
                        f"kafka nodes {', '.join(str(node.node_id) for node in waiting)} did not answer within "
                        f"{self.start_seconds:.0f} s; last lines of {late.log_path}:\n{tail(late.log_path)}"
                    )
                time.sleep(0.5)

    def stop(self) -> bool:
        """Stop every node this stack started, all at once; True when one was stopped."""
        with ThreadPoolExecutor(self.size) as pool:
            return any(list(pool.map(KafkaBroker.stop, self.nodes)))

    def status(self) -> str:
        lines = [f"node {node.node_id} on {node.host}:{node.port}: {node.status()}" for node in self.nodes]
        return f"cluster of {self.size} nodes, bootstrap {self.bootstrap}\n" + "\n".join(
            f"{'':10}{line}" for line in lines
        )
