"""Apache Kafka for the local stack: Maven Central jars, KRaft mode (broker and controller in one node)."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from deploy.localstack.base import Component, StackError, WrongService, apt_install, port_open

DEPLOY = Path(__file__).resolve().parent.parent
POM = DEPLOY / "pom.xml"
LOG_CONFIG = DEPLOY / "kafka" / "log4j2.properties"
PROBE_TOPIC = "__soma_stack_probe"


def kafka_version() -> str:
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if found is None:
        raise StackError(f"kafka: no <kafka.version> in {POM}")
    return found.group(1)


def fetch_jars(cache_dir: Path) -> Path:
    """The broker's jars from Maven Central, fetched once into ``cache_dir`` (outside git)."""
    libs = cache_dir / f"kafka-{kafka_version()}" / "libs"
    if (libs / ".complete").exists():
        return libs
    if shutil.which("java") is None:
        apt_install("openjdk-17-jre-headless")
    if shutil.which("mvn") is None:
        apt_install("maven")
    staging = libs.with_name("libs.partial")
    shutil.rmtree(staging, ignore_errors=True)
    subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
        ],
        check=True,
    )
    (staging / ".complete").touch()
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs


def kafka_uuid() -> str:
    """A random id as Kafka writes one (base64url, no padding); never one that would read as an option."""
    while True:
        found = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not found.startswith("-"):
            return found


@dataclass(frozen=True)
class Voter:
    node_id: int
    host: str
    controller_port: int
    directory_id: str  # of the node's metadata log, given to every node when it is formatted


@dataclass(frozen=True)
class Quorum:
    """The KRaft controller quorum of a cluster of combined broker+controller nodes, all formatted with one
    cluster id and the same initial voters (a dynamic quorum: ``--initial-controllers``)."""

    cluster_id: str
    voters: tuple[Voter, ...]

    @property
    def replication(self) -> int:
        """Replicas of the internal topics (offsets, transactions) and of topics created without a count."""
        return min(3, len(self.voters))

    @property
    def min_insync(self) -> int:
        """With 3 replicas, 2 in sync: one node may be down without refusing acks=all writes."""
        return 2 if self.replication >= 3 else 1

    def bootstrap_servers(self) -> str:
        return ",".join(f"{v.host}:{v.controller_port}" for v in self.voters)

    def initial_controllers(self) -> str:
        return ",".join(f"{v.node_id}@{v.host}:{v.controller_port}:{v.directory_id}" for v in self.voters)


class KafkaBroker(Component):
    name = "kafka"
    start_seconds = 90.0

    def __init__(
        self,
        host: str,
        port: int,
        home: Path,
        cache_dir: Path,
        partitions: int = 3,
        scram: tuple[str, str] | None = None,
        node_id: int = 1,
        quorum: Quorum | None = None,
        heap: str | None = None,
    ) -> None:
        """``scram``: (user, password) of a SASL_PLAINTEXT listener with SCRAM-SHA-512 on ``port + 2``, the user
        created when the storage is formatted (the PLAINTEXT listener on ``port`` stays, for the stack's probe).

        ``quorum``: this node (``node_id``) is one of a cluster's (deploy/localstack/kafka_cluster.py); without
        it, a cluster of one, its own quorum. ``heap``: the JVM's heap options (default ``KAFKA_HEAP_OPTS``).
        """
        super().__init__(host, port, home)
        self.cache_dir = cache_dir
        self.partitions = partitions
        self.controller_port = port + 1
        self.scram = scram
        self.sasl_port = port + 2
        self.node_id = node_id
        self.quorum = quorum
        self.heap = heap
        self.replication = quorum.replication if quorum else 1

    @classmethod
    def from_bootstrap(cls, bootstrap: str, home: Path, cache_dir: Path, partitions: int = 3) -> KafkaBroker:
        host, _, port = bootstrap.split(",")[0].rpartition(":")
        return cls(host or "127.0.0.1", int(port), home, cache_dir, partitions)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.home / "server.properties"

    def answers(self) -> bool:
        """A real round trip: create a topic, produce one record with acks=all, consume it back."""
        try:
            # its own thread and loop: callers may already run an event loop (the test suite does)
            with ThreadPoolExecutor(1) as pool:
                return pool.submit(lambda: asyncio.run(asyncio.wait_for(self._round_trip(), timeout=30))).result()
        except KafkaConnectionError:
            if port_open(self.host, self.port):
                raise WrongService(f"kafka: {self.bootstrap} is open but does not speak the Kafka protocol") from None
            raise

    async def _round_trip(self) -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        await admin.start()
        try:
            try:
                await admin.create_topics([NewTopic(PROBE_TOPIC, 1, self.replication)])
            except TopicAlreadyExistsError:
                pass
        finally:
            await admin.close()
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, request_timeout_ms=5000
        )
        await producer.start()
        try:
            token = uuid.uuid4().bytes
            sent = await producer.send_and_wait(PROBE_TOPIC, token, key=b"probe", partition=0)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(PROBE_TOPIC, 0)
            consumer.assign([tp])
            consumer.seek(tp, sent.offset)
            record = await consumer.getone()
            return bool(record.value == token)
        finally:
            await consumer.stop()

    def install(self) -> None:
        fetch_jars(self.cache_dir)

    def _listeners(self) -> list[str]:
        plain = f"PLAINTEXT://{self.host}:{self.port}"
        controller = f"CONTROLLER://{self.host}:{self.controller_port}"
        if self.scram is None:
            return [
                f"listeners={plain},{controller}",
                f"advertised.listeners={plain}",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            ]
        sasl = f"SASL_PLAINTEXT://{self.host}:{self.sasl_port}"
        return [
            f"listeners={plain},{controller},{sasl}",
            f"advertised.listeners={plain},{sasl}",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        ]

    def _cluster_defaults(self) -> list[str]:
        """Internal topics at the cluster's replication; a cluster's defaults for every topic too."""
        if self.quorum is None:
            return []
        return [
            f"default.replication.factor={self.replication}",
            f"min.insync.replicas={self.quorum.min_insync}",
            f"share.coordinator.state.topic.min.isr={self.quorum.min_insync}",
        ]

    def prepare(self) -> None:
        data = self.home / "data"
        quorum = self.quorum
        isr = quorum.min_insync if quorum else 1
        self.config_path.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    f"node.id={self.node_id}",
                    "controller.quorum.bootstrap.servers="
                    + (quorum.bootstrap_servers() if quorum else f"{self.host}:{self.controller_port}"),
                    *self._listeners(),
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={data}",
                    f"num.partitions={self.partitions}",
                    f"offsets.topic.replication.factor={self.replication}",
                    "offsets.topic.num.partitions=10",
                    f"transaction.state.log.replication.factor={self.replication}",
                    f"transaction.state.log.min.isr={isr}",
                    f"share.coordinator.state.topic.replication.factor={self.replication}",
                    "group.initial.rebalance.delay.ms=0",
                    *self._cluster_defaults(),
                    "",
                ]
            )
        )
        if (data / "meta.properties").exists():
            return
        if quorum is None:
            cluster_id, controllers = kafka_uuid(), ["--standalone"]
        else:
            # every node is formatted with the same id and voters; its metadata log takes the directory id the
            # voters give its node id
            cluster_id, controllers = quorum.cluster_id, [f"--initial-controllers={quorum.initial_controllers()}"]
        subprocess.run(
            [
                "java",
                "-cp",
                f"{fetch_jars(self.cache_dir)}/*",
                f"-Dlog4j2.configurationFile={LOG_CONFIG}",
                "kafka.tools.StorageTool",
                "format",
                # with "=": a base64url id may begin with "-" and would read as an option
                f"--cluster-id={cluster_id}",
                "-c",
                str(self.config_path),
                *controllers,
                *(
                    ["--add-scram", f"SCRAM-SHA-512=[name={self.scram[0]},password={self.scram[1]}]"]
                    if self.scram
                    else []
                ),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def launch(self) -> None:
        libs = fetch_jars(self.cache_dir)
        heap = (self.heap or os.environ.get("KAFKA_HEAP_OPTS", "-Xms256m -Xmx1g")).split()
        self.spawn(
            [
                "java",
                *heap,
                "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={LOG_CONFIG}",
                "-cp",
                f"{libs}/*",
                "kafka.Kafka",
                str(self.config_path),
            ]
        )


__all__ = ["KafkaBroker", "KafkaError", "Quorum", "Voter", "fetch_jars", "kafka_uuid", "kafka_version"]
