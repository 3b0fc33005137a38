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
    ) -> None:
        """``scram``: (user, password) of a SASL_PLAINTEXT listener with SCRAM-SHA-512 on ``port + 2``, the user
        created when the storage is formatted (the PLAINTEXT listener on ``port`` stays, for the stack's probe)."""
        super().__init__(host, port, home)
        self.cache_dir = cache_dir
        self.partitions = partitions
        self.controller_port = port + 1
        self.scram = scram
        self.sasl_port = port + 2

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
                await admin.create_topics([NewTopic(PROBE_TOPIC, 1, 1)])
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

    def prepare(self) -> None:
        data = self.home / "data"
        self.config_path.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers={self.host}:{self.controller_port}",
                    *self._listeners(),
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={data}",
                    f"num.partitions={self.partitions}",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=10",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "group.initial.rebalance.delay.ms=0",
                    "",
                ]
            )
        )
        if (data / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
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
                "--standalone",
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
        heap = os.environ.get("KAFKA_HEAP_OPTS", "-Xms256m -Xmx1g").split()
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


__all__ = ["KafkaBroker", "KafkaError", "fetch_jars", "kafka_version"]
