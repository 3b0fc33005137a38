"""The Faust application, built from :class:`Settings` with explicit arguments only."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from functools import cache
from typing import Any

import faust
from aiokafka.errors import KafkaError
from faust.exceptions import NotReady
from faust.types.web import Web
from mode import ServiceT
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent

from app import diagnostics, retry, tracing
from app.auth import Authenticator
from app.metrics import Metrics
from app.policy import Policy
from app.producer import IdempotentProducer
from app.rate_limit import Limit, RateLimiter
from app.resources import Resources
from app.settings import Settings
from app.storage_lag import StorageLag
from app.tickets import Tickets
from app.topics import Topics
from app.transport import ResumeKeepingFlowControl, SomaTransport

log = logging.getLogger(__name__)

# agents, tables and views register themselves on the app when faust scans these packages
DISCOVERED = ["tables", "agents", "views", "ops"]


class SomaApp(faust.App):
    """faust.App holding our settings, shared connections and topic catalogue."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        options: dict[str, Any] = {
            # env={}: faust reads BROKER_URL, WEB_PORT, ... from os.environ and lets them override the
            # constructor's arguments; our settings are the one source of truth
            "env": {},
            "broker": f"kafka://{settings.kafka_bootstrap}",
            # tables: the redis:// store of tables/ (registered when faust imports that package)
            "store": settings.table_store,
            "datadir": str(settings.data_dir),
            "autodiscover": DISCOVERED,
            "topic_partitions": settings.topic_partitions,
            "topic_replication_factor": settings.topic_replication,
            "producer_acks": -1,
            # metadata refreshed every 30 s rather than 5 min: a subscribed topic that was missing from the
            # metadata (or that gained partitions) is assigned at the next refresh
            "consumer_metadata_max_age_ms": 30_000,
            "broker_session_timeout": settings.kafka_session_timeout_seconds,
            "broker_heartbeat_interval": settings.kafka_session_timeout_seconds / 4,
            "web_enabled": True,
            "web_bind": settings.web_host,
            "web_host": settings.web_host,
            "web_port": settings.web_port,
            # faust's /table and /router endpoints would expose table contents to anyone
            "web_tables_enabled": False,
            "web_router_enabled": False,
            "web_application_options": {"client_max_size": settings.max_body_bytes},
        }
        credentials = kafka_credentials(settings)
        if credentials is not None:
            options["broker_credentials"] = credentials
        options.update(overrides)
        super().__init__(settings.app_id, **options)
        self.settings = settings
        self.resources = Resources(settings)
        self.storage_lag = StorageLag(settings, self.resources.redis)
        self.auth = Authenticator(settings.auth(), self.resources.http)
        self.tickets = Tickets(settings.auth(), self.resources.redis)
        self.rate_limits = RateLimiter(
            self.resources.redis,
            settings.redis_prefix,
            Limit("caller", settings.rate_limit_per_second, settings.rate_limit_burst)
            if settings.rate_limit_per_second
            else None,
            Limit("address", settings.rate_limit_address_per_second, settings.rate_limit_address_burst)
            if settings.rate_limit_address_per_second
            else None,
        )
        self.policy = Policy(
            settings.opa_url, settings.opa_timeout_seconds, settings.opa_cache_seconds, self.resources.http
        )
        self.session_topics = Topics(self)
        self.metrics = Metrics(settings.metrics_enabled)

    async def on_first_start(self) -> None:
        # before anything makes a span or an HTTP client: the worker's traces, if OTEL_* asks for them
        tracing.configure(instance=str(self.settings.web_port))
        await super().on_first_start()

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        # the spans still buffered are exported (the SDK's exporter blocks: off the loop)
        await asyncio.to_thread(tracing.shutdown)

    def on_init_dependencies(self) -> Iterable[ServiceT]:
        return [*super().on_init_dependencies(), self.resources, self.storage_lag]

    def _on_autodiscovery_error(self, name: str) -> None:
        # faust only logs a module that fails to import, leaving a worker without that agent or view;
        # a broken module must stop the worker at start-up instead
        raise

    def _create_directories(self) -> None:
        # faust makes only the last level: with servers reused from elsewhere, ``.stack/`` may not exist yet
        self.conf.datadir.mkdir(parents=True, exist_ok=True)
        super()._create_directories()

    def _new_web(self) -> Web:
        from views.server import GuardedWeb  # the web layer, imported only by a worker that serves it

        return GuardedWeb(self)

    def _new_transport(self) -> SomaTransport:
        return SomaTransport(self.conf.broker_consumer, self)

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return ResumeKeepingFlowControl(loop=self.loop)

    def _new_producer(self) -> IdempotentProducer:
        return IdempotentProducer(self.transport, loop=self.loop, beacon=self.beacon)

    async def on_started(self) -> None:
        await super().on_started()
        diagnostics.install(self.loop)
        if self.settings.dev_tokens:
            log.warning("SOMA_DEV_TOKENS is on: POST /dev/token gives anyone a token of any tenant; development only")
        if not self.settings.auth_required:
            log.warning(
                "authentication is OFF (SOMA_AUTH_REQUIRED=0): anyone who reaches port %d can read and post "
                "every session; see docs/configuration.md, Authentication",
                self.settings.web_port,
            )
        self.add_future(self._declare_topics())

    async def _declare_topics(self) -> None:
        """Declare every session and dead-letter topic (agents declare only those they read).

        Retried in the background: a broker that restarts just then must not stop the worker.
        """
        delays = retry.TOPIC_DECLARE.delays()
        for topic in self.session_topics.all():
            while True:
                if self.should_stop:
                    return  # a worker stopped right after it started: its producer is gone
                try:
                    await topic.maybe_declare()
                    break
                except NotReady:
                    return  # the producer has stopped: the worker is shutting down
                except KafkaError as exc:
                    delay = next(delays)
                    log.warning("declaring %s failed, retrying in %.1fs: %r", topic.get_topic_name(), delay, exc)
                    await asyncio.sleep(delay)


def kafka_credentials(settings: Settings) -> Any:
    """faust's credentials for the brokers (SASL, TLS), or None for PLAINTEXT."""
    security = settings.kafka_security()
    if security["security_protocol"].startswith("SASL"):
        return faust.SASLCredentials(
            username=security["sasl_plain_username"],
            password=security["sasl_plain_password"],
            mechanism=security["sasl_mechanism"],
            ssl_context=security["ssl_context"],
        )
    if security["security_protocol"] == "SSL":
        return faust.SSLCredentials(security["ssl_context"])
    return None


def create_app(settings: Settings, **overrides: Any) -> SomaApp:
    return SomaApp(settings, **overrides)


@cache
def default_app() -> SomaApp:
    """The process's app, from the environment's ``SOMA_*`` settings."""
    return create_app(Settings.from_env())
