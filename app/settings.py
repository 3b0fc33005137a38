"""The one settings object: parsed once from ``SOMA_*`` environment variables, frozen."""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import SettingsError

PREFIX = "SOMA_"
# the local stack's Kafka cluster: node i on port + 3 i (deploy/localstack/kafka_cluster.py)
MAX_LOCAL_BROKERS = 9
# the local folders (.stack/...) are relative to where the worker or the stack starts: a checkout for make run
# and make test, the working directory of an installed worker
ROOT = Path.cwd()


@dataclass(frozen=True)
class StreamSettings:
    """The slice of the settings a session stream and its two transports use (views/session_stream.py)."""

    queue_max: int  # events a viewer may fall behind before it is closed as a slow reader
    recovery_max: int  # events a resume (or a feed reconnect) may replay from PostgreSQL
    subscribe_deadline_seconds: float  # the feed must take the subscription within this, or 503
    sse_retry_ms: int
    sse_heartbeat_seconds: float
    ws_heartbeat_seconds: float
    ws_max_message_bytes: int


@dataclass(frozen=True)
class AgentSettings:
    """The slice of the settings the batching agents use (agents/pipeline.py, agents/boundary.py)."""

    batch_max: int  # events stored in one batch at most
    batch_within_seconds: float  # a batch waits this long for more events while it is below batch_max
    max_event_bytes: int  # a larger record is dead-lettered unparsed
    topic_prefix: str  # stripped from a record's topic to name its dead-letter topic
    redis_prefix: str  # of the session feed's channels


@dataclass(frozen=True)
class ToolSettings:
    """The slice of the settings the tool executor and its tools use (agents/tools/)."""

    timeout_seconds: float  # a tool's run, and its policy check, unless the tool has its own timeout
    timeouts: dict[str, float]  # per tool (SOMA_TOOL_TIMEOUTS)
    http_fetch_hosts: frozenset[str]  # hosts http_fetch may reach
    http_fetch_ports: frozenset[int] | None  # ports it may reach (None: any)
    http_fetch_allow_private: bool  # loopback, private and link-local addresses too
    http_fetch_max_bytes: int
    max_event_bytes: int  # a larger result becomes an error result

    def timeout(self, name: str) -> float:
        """Seconds tool ``name`` may run: its ``SOMA_TOOL_TIMEOUTS`` entry, else ``SOMA_TOOL_TIMEOUT_SECONDS``."""
        return self.timeouts.get(name, self.timeout_seconds)


@dataclass(frozen=True)
class ResponderSettings:
    """The slice of the settings the responder uses (agents/responder.py)."""

    url: str  # the model server's base URL; empty: no replies
    model: str
    max_tokens: int
    temperature: float
    history_chars: int  # of the session's earlier messages sent with each one
    coalesce_seconds: float  # tokens gathered this long into one assistant.delta
    timeout_seconds: float  # a whole reply
    system_prompt: str
    personas: dict[str, str]  # persona id -> system prompt
    tools: tuple[str, ...] = ()  # offered to the model
    tool_choice: str = "auto"  # "auto", "none" or a tool's name (forced in the first round)
    tool_rounds: int = 2  # rounds of tool calls at most; then the model answers without tools

    def prompt(self, persona_id: str | None) -> str:
        return self.personas.get(persona_id or "", self.system_prompt)


@dataclass(frozen=True)
class AuthSettings:
    """The slice of the settings authentication uses (app/auth.py, views/tickets.py)."""

    required: bool
    jwt_secret: str = field(repr=False)
    jwt_public_key: str = field(repr=False)
    jwks_url: str
    algorithms: tuple[str, ...]
    audience: str
    issuer: str
    leeway_seconds: float
    tenant_claims: tuple[str, ...]
    jwks_cache_seconds: float
    jwks_min_refetch_seconds: float
    jwks_timeout_seconds: float
    max_token_bytes: int
    ticket_ttl_seconds: int
    cookie: str
    redis_prefix: str


@dataclass(frozen=True)
class Settings:
    """Every setting of the service and of its local stack; ``docs/configuration.md`` lists them."""

    # identity: the Faust app id is also the Kafka consumer group
    app_id: str = "somaagent01"
    # infrastructure addresses
    kafka_bootstrap: str = "127.0.0.1:9092"
    # brokers of the local stack's Kafka (deploy/localstack/kafka_cluster.py): 1, or a KRaft cluster of 3 on
    # consecutive port groups; from_env derives the defaults of the bootstrap list and replication from it
    kafka_brokers: int = 1
    redis_url: str = "redis://127.0.0.1:6379/0"
    # repr=False: the DSN carries a password and settings get logged
    postgres_dsn: str = field(default="postgresql://somaagent:somaagent@127.0.0.1:5432/somaagent", repr=False)
    # Kafka authentication (app/kafka_auth.py): SASL (SCRAM-SHA-512/256 or PLAIN) and/or TLS for every client
    # of the worker; off (PLAINTEXT) by default for the local stack
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    # TLS to the brokers: on with a CA file (or "system" for the system's CAs); a client certificate optional
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    # topics: every session-keyed topic shares one partition count (one owner per session)
    topic_prefix: str = ""
    topic_partitions: int = 3
    topic_replication: int = 1
    # a write (acks=all) succeeds only while this many replicas have it; 0: the broker's default
    topic_min_insync_replicas: int = 0
    # dead letters are kept this long (hours) before the broker may delete them; 0: forever
    dlq_retention_hours: float = 672.0
    # GET /metrics and the per-request and per-batch observations behind it (app/metrics.py); 0: off
    metrics_enabled: bool = True
    # the worker's web server
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    max_body_bytes: int = 1_048_576
    # connections at once (capped below the descriptor limit); a request head must arrive within the idle
    # timeout of a connection opening or of its previous response; a body within the body timeout
    http_max_connections: int = 10_000
    http_idle_timeout_seconds: float = 30.0
    http_body_timeout_seconds: float = 30.0
    # faust's local state directory (table checkpoints)
    data_dir: Path = ROOT / ".stack" / "faust"
    # health checks and connections
    health_timeout_seconds: float = 2.0
    # a Redis command's answer is awaited this long before Redis counts as unavailable (not the health timeout:
    # a busy event loop or a short stall must not turn into a false outage)
    redis_timeout_seconds: float = 10.0
    postgres_pool_max: int = 10
    kafka_publish_timeout_seconds: float = 10.0
    # client messages waiting for the broker's ack at once; beyond it a POST is 503 overloaded (Retry-After)
    max_inflight_publishes: int = 2_000
    # a client message is refused (503 storage_behind) while storage is further behind intake than this;
    # 0: never refused for it
    max_storage_lag_seconds: float = 5.0
    # a client's read (session, events, stream opening) waits this long for PostgreSQL, then answers 503
    read_deadline_seconds: float = 5.0
    # a worker that dies keeps its partitions until the broker stops hearing from it for this long
    kafka_session_timeout_seconds: float = 10.0
    # agents: events are stored in batches of at most batch_max, gathered for at most batch_within_seconds
    batch_max: int = 500
    batch_within_seconds: float = 0.01
    # a record larger than this is poison (dead-lettered) before it is parsed
    max_event_bytes: int = 262_144
    # Redis: every key and channel of this app starts with this prefix (the session feed is
    # <prefix>session:<session_id>:feed)
    redis_prefix: str = "soma:"
    session_cache_ttl_seconds: int = 900
    # a tool request's "started" mark (tables/tool_runs.py) is kept this long: a replay within it never runs
    # the tool again
    tool_run_ttl_seconds: int = 86_400
    # faust tables: their store ("redis://" = SOMA_REDIS_URL, or "memory://"), and how often the Redis store
    # writes the changes of each partition behind
    table_store: str = "redis://"
    table_flush_interval_seconds: float = 0.25
    # the agents write the session tables out at most this often (each write is a changelog record)
    table_mirror_interval_seconds: float = 1.0
    # streams (WebSocket and SSE): recovery depth, per-connection queue, keep-alives, message size
    stream_recovery_max: int = 10_000
    stream_queue_max: int = 1_000
    sse_heartbeat_seconds: float = 15.0
    sse_retry_ms: int = 2_000
    ws_heartbeat_seconds: float = 20.0
    ws_max_message_bytes: int = 65_536
    idempotency_ttl_seconds: int = 86_400
    # tools: default timeout, per-tool overrides ("http_fetch=5,echo=1"), http_fetch limits
    tool_timeout_seconds: float = 10.0
    tool_timeouts: str = ""
    http_fetch_allowlist: str = ""
    http_fetch_max_bytes: int = 131_072
    # ports http_fetch may reach ("*": any), and whether it may reach loopback, private, link-local (cloud
    # metadata) and other non-public addresses: never by default
    http_fetch_ports: str = "80,443"
    http_fetch_allow_private: bool = False
    # authentication (app/auth.py): off by default for the local tour (the worker says so at start-up); on,
    # every /v1 endpoint and stream needs a JWT verified with exactly one of a shared secret (HS*), a PEM
    # public key (RS*/ES*/PS*/EdDSA; the PEM itself or a file's path) or a JWKS URL
    auth_required: bool = False
    jwt_secret: str = field(default="", repr=False)
    jwt_public_key: str = field(default="", repr=False)
    jwks_url: str = ""
    # allowed algorithms, of the key's family only; empty: HS256 for a secret, RS256,ES256 for public keys
    jwt_algorithms: str = ""
    jwt_audience: str = ""
    jwt_issuer: str = ""
    jwt_leeway_seconds: float = 10.0
    # the first of these claims a token carries is its tenant (a token with none is refused)
    jwt_tenant_claims: str = "tenant,org,customer"
    jwks_cache_seconds: float = 300.0
    jwks_min_refetch_seconds: float = 30.0
    jwks_timeout_seconds: float = 2.0
    jwt_max_bytes: int = 6_144
    # single-use stream tickets (POST /v1/stream-tickets) for EventSource and browsers' WebSockets
    stream_ticket_ttl_seconds: int = 30
    # a token in this cookie authenticates SSE streams (EventSource cannot send headers)
    auth_cookie: str = "soma_token"
    # a development issuer: POST /dev/token signs tokens with SOMA_JWT_SECRET for anyone who asks (for the
    # local tour and the console; never in production: the worker warns at start-up)
    dev_tokens: bool = False
    # rate limits shared by all workers (app/rate_limit.py; 0 = off): per caller (tenant and subject; with
    # authentication off, per address) and per client address, requests (and WebSocket messages) per second
    # and the burst allowed at once
    rate_limit_per_second: float = 0.0
    rate_limit_burst: int = 40
    rate_limit_address_per_second: float = 0.0
    rate_limit_address_burst: int = 100
    # WebSocket pages from these origins may open streams (comma-separated, e.g. https://app.example.com);
    # a handshake without Origin (not a browser) or from the worker's own origin is always allowed
    ws_allowed_origins: str = ""
    # streams open at once on one worker, per tenant and per client address (0 = no limit)
    streams_per_tenant: int = 10_000
    streams_per_address: int = 0
    # authorization by OPA (app/policy.py): off when the URL is empty; its decision paths for API requests and
    # for tools; a decision not made within the timeout denies; decisions remembered this long per input
    opa_url: str = ""
    opa_decision_path: str = "somastack/allow"
    opa_tool_decision_path: str = "somastack/tool_allow"
    opa_timeout_seconds: float = 1.0
    opa_cache_seconds: float = 5.0
    # the responder (agents/responder.py): off when the URL is empty; else each stored user message is answered
    # by an OpenAI-compatible model server (POST <url>/v1/chat/completions, streamed) as assistant.delta
    # events, coalesced this often, then one assistant.final; at most slm_concurrency replies at once per worker
    # (the rest wait in Kafka); the session's history up to slm_history_chars goes with each message; the
    # persona's system prompt from slm_personas (a JSON object: persona id -> prompt), else slm_system_prompt
    slm_url: str = ""
    slm_model: str = "smollm2"
    slm_concurrency: int = 2
    slm_max_tokens: int = 256
    slm_temperature: float = 0.7
    slm_history_chars: int = 6_000
    slm_coalesce_seconds: float = 0.05
    slm_timeout_seconds: float = 120.0
    slm_system_prompt: str = "You are SomaAgent, a helpful assistant. Answer briefly and plainly."
    slm_personas: str = ""
    # tools the model may call (comma-separated names of agents/tools; empty: none), how it chooses ("auto",
    # "none", or a tool's name: that tool is called first), and how many rounds of calls a reply may make
    slm_tools: str = ""
    slm_tool_choice: str = "auto"
    slm_tool_rounds: int = 2
    # a reply's "started" mark (tables/reply_runs.py) is kept this long
    reply_run_ttl_seconds: int = 86_400
    # voice messages (views/voice.py): off when the URL is empty; else POST /v1/session/{id}/voice takes audio of
    # at most voice_max_bytes, has it transcribed by an OpenAI-compatible speech server
    # (POST <url>/v1/audio/transcriptions, model stt_model) within stt_timeout_seconds, at most stt_concurrency
    # at once per worker, and posts the transcript as a user.message with metadata.source = "voice"
    stt_url: str = ""
    stt_model: str = "whisper-1"
    stt_timeout_seconds: float = 60.0
    stt_concurrency: int = 2
    voice_max_bytes: int = 10_485_760
    # the local stack (deploy/stack.py): where its data, logs and downloaded jars live
    stack_dir: Path = ROOT / ".stack"
    cache_dir: Path = Path.home() / ".cache" / "somaagent01"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); fail on bad or unknown variables."""
        env = os.environ if environ is None else environ
        known = {PREFIX + f.name.upper(): f for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in known)
        if unknown:
            raise SettingsError(
                f"unknown setting(s) {', '.join(unknown)}; see docs/configuration.md for the valid names"
            )
        values: dict[str, Any] = {}
        for name, f in known.items():
            if name in env:
                values[f.name] = _parse(name, env[name], f)
        settings = cls(**{**cluster_defaults(values.get("kafka_brokers", 1)), **values})
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject values that would only fail later, mid-stream."""
        if not 1 <= self.web_port <= 65535:
            raise SettingsError(f"SOMA_WEB_PORT must be a TCP port, not {self.web_port}")
        if not 1 <= self.kafka_brokers <= MAX_LOCAL_BROKERS:
            raise SettingsError(f"SOMA_KAFKA_BROKERS must be within 1..{MAX_LOCAL_BROKERS} (3 for a cluster)")
        if self.topic_partitions < 1 or self.topic_replication < 1:
            raise SettingsError("SOMA_TOPIC_PARTITIONS and SOMA_TOPIC_REPLICATION must be >= 1")
        if not 0 <= self.topic_min_insync_replicas <= self.topic_replication:
            raise SettingsError(
                "SOMA_TOPIC_MIN_INSYNC_REPLICAS must be between 0 (the broker's default) and SOMA_TOPIC_REPLICATION"
            )
        if self.dlq_retention_hours < 0:
            raise SettingsError("SOMA_DLQ_RETENTION_HOURS must be >= 0 (0: forever)")
        if self.max_body_bytes < 1024:
            raise SettingsError("SOMA_MAX_BODY_BYTES must be at least 1024")
        if not 6 <= self.kafka_session_timeout_seconds <= 300:
            raise SettingsError("SOMA_KAFKA_SESSION_TIMEOUT_SECONDS must be within the broker's 6..300 s")
        if (
            self.health_timeout_seconds <= 0
            or self.kafka_publish_timeout_seconds <= 0
            or self.read_deadline_seconds <= 0
            or self.http_idle_timeout_seconds <= 0
            or self.http_body_timeout_seconds <= 0
            or self.redis_timeout_seconds <= 0
        ):
            raise SettingsError("timeouts must be positive")
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("SOMA_REDIS_URL must be a redis:// or rediss:// URL")
        if not self.table_store.startswith(("redis://", "rediss://", "memory://")):
            raise SettingsError("SOMA_TABLE_STORE must be a redis://, rediss:// or memory:// URL")
        if self.table_mirror_interval_seconds <= 0:
            raise SettingsError("SOMA_TABLE_MIRROR_INTERVAL_SECONDS must be positive")
        if self.table_flush_interval_seconds <= 0 or self.session_cache_ttl_seconds < 1:
            raise SettingsError("SOMA_TABLE_FLUSH_INTERVAL_SECONDS and SOMA_SESSION_CACHE_TTL_SECONDS must be positive")
        if not self.postgres_dsn.startswith(("postgresql://", "postgres://")):
            raise SettingsError("SOMA_POSTGRES_DSN must be a postgresql:// URL")
        if self.http_max_connections < 16:
            raise SettingsError("SOMA_HTTP_MAX_CONNECTIONS must be >= 16")
        if self.max_inflight_publishes < 1:
            raise SettingsError("SOMA_MAX_INFLIGHT_PUBLISHES must be >= 1")
        if self.tool_run_ttl_seconds < 60:
            raise SettingsError("SOMA_TOOL_RUN_TTL_SECONDS must be >= 60")
        if self.max_storage_lag_seconds < 0:
            raise SettingsError("SOMA_MAX_STORAGE_LAG_SECONDS must be >= 0 (0: off)")
        if self.batch_max < 1 or self.batch_within_seconds < 0:
            raise SettingsError("SOMA_BATCH_MAX must be >= 1 and SOMA_BATCH_WITHIN_SECONDS >= 0")
        if self.max_event_bytes < 1024 or self.tool_timeout_seconds <= 0 or self.http_fetch_max_bytes < 1:
            raise SettingsError(
                "SOMA_MAX_EVENT_BYTES, SOMA_TOOL_TIMEOUT_SECONDS and SOMA_HTTP_FETCH_MAX_BYTES are too small"
            )
        self._validate_auth()
        self._validate_kafka_auth()
        self.persona_prompts()  # raises on a malformed SOMA_SLM_PERSONAS
        if self.slm_url and not self.slm_url.startswith(("http://", "https://")):
            raise SettingsError(f"SOMA_SLM_URL must be an http(s):// URL, not {self.slm_url!r}")
        if self.slm_concurrency < 1:
            raise SettingsError("SOMA_SLM_CONCURRENCY must be >= 1")
        offered = self.responder().tools
        if self.slm_tool_choice not in ("auto", "none", *offered):
            raise SettingsError("SOMA_SLM_TOOL_CHOICE must be auto, none or one of SOMA_SLM_TOOLS")
        if self.slm_tool_rounds < 0:
            raise SettingsError("SOMA_SLM_TOOL_ROUNDS must be >= 0")
        if self.stt_url and not self.stt_url.startswith(("http://", "https://")):
            raise SettingsError(f"SOMA_STT_URL must be an http(s):// URL, not {self.stt_url!r}")
        if self.stt_concurrency < 1 or self.stt_timeout_seconds <= 0 or self.voice_max_bytes < 1024:
            raise SettingsError(
                "SOMA_STT_CONCURRENCY must be >= 1, SOMA_STT_TIMEOUT_SECONDS > 0 and SOMA_VOICE_MAX_BYTES >= 1024"
            )
        self.http_fetch_port_set()
        if self.stream_recovery_max < 1 or self.stream_queue_max < 1 or self.ws_max_message_bytes < 1024:
            raise SettingsError(
                "SOMA_STREAM_RECOVERY_MAX, SOMA_STREAM_QUEUE_MAX and SOMA_WS_MAX_MESSAGE_BYTES too small"
            )
        if self.sse_heartbeat_seconds <= 0 or self.ws_heartbeat_seconds <= 0 or self.idempotency_ttl_seconds < 1:
            raise SettingsError("heartbeats and SOMA_IDEMPOTENCY_TTL_SECONDS must be positive")
        self.tool_timeout_map()

    def tool_timeout_map(self) -> dict[str, float]:
        """Per-tool timeouts from ``SOMA_TOOL_TIMEOUTS`` ("name=seconds,name=seconds")."""
        timeouts: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in self.tool_timeouts.split(","))):
            name, sep, seconds = item.partition("=")
            try:
                value = float(seconds)
            except ValueError:
                value = -1.0
            if not sep or not name.strip() or value <= 0:
                raise SettingsError(f"SOMA_TOOL_TIMEOUTS: {item!r} is not name=seconds")
            timeouts[name.strip()] = value
        return timeouts

    def http_fetch_port_set(self) -> frozenset[int] | None:
        """``SOMA_HTTP_FETCH_PORTS`` as ports; None for ``*`` (any)."""
        if self.http_fetch_ports.strip() == "*":
            return None
        try:
            ports = frozenset(int(p) for p in self.http_fetch_ports.split(",") if p.strip())
        except ValueError as exc:
            raise SettingsError(f"SOMA_HTTP_FETCH_PORTS must be ports separated by commas, or *: {exc}") from exc
        if not all(1 <= p <= 65535 for p in ports):
            raise SettingsError("SOMA_HTTP_FETCH_PORTS must be TCP ports (1-65535)")
        return ports

    def http_fetch_hosts(self) -> frozenset[str]:
        """Hosts ``http_fetch`` may reach (``SOMA_HTTP_FETCH_ALLOWLIST``, comma-separated); empty = none."""
        return frozenset(h.strip().lower() for h in self.http_fetch_allowlist.split(",") if h.strip())

    @property
    def streams(self) -> StreamSettings:
        """The session streams' slice."""
        return StreamSettings(
            queue_max=self.stream_queue_max,
            recovery_max=self.stream_recovery_max,
            subscribe_deadline_seconds=self.read_deadline_seconds,
            sse_retry_ms=self.sse_retry_ms,
            sse_heartbeat_seconds=self.sse_heartbeat_seconds,
            ws_heartbeat_seconds=self.ws_heartbeat_seconds,
            ws_max_message_bytes=self.ws_max_message_bytes,
        )

    def agents(self) -> AgentSettings:
        """The batching agents' slice."""
        return AgentSettings(
            batch_max=self.batch_max,
            batch_within_seconds=self.batch_within_seconds,
            max_event_bytes=self.max_event_bytes,
            topic_prefix=self.topic_prefix,
            redis_prefix=self.redis_prefix,
        )

    def auth(self) -> AuthSettings:
        """Authentication's slice; a PEM given as a file's path is read here, once."""
        public_key = self.jwt_public_key
        if public_key and not public_key.lstrip().startswith("-----BEGIN"):
            public_key = Path(public_key).expanduser().read_text()
        return AuthSettings(
            required=self.auth_required,
            jwt_secret=self.jwt_secret,
            jwt_public_key=public_key,
            jwks_url=self.jwks_url,
            algorithms=self.jwt_algorithm_list(),
            audience=self.jwt_audience,
            issuer=self.jwt_issuer,
            leeway_seconds=self.jwt_leeway_seconds,
            tenant_claims=tuple(c.strip() for c in self.jwt_tenant_claims.split(",") if c.strip()),
            jwks_cache_seconds=self.jwks_cache_seconds,
            jwks_min_refetch_seconds=self.jwks_min_refetch_seconds,
            jwks_timeout_seconds=self.jwks_timeout_seconds,
            max_token_bytes=self.jwt_max_bytes,
            ticket_ttl_seconds=self.stream_ticket_ttl_seconds,
            cookie=self.auth_cookie,
            redis_prefix=self.redis_prefix,
        )

    def allowed_origins(self) -> frozenset[str]:
        return frozenset(o.strip().rstrip("/").lower() for o in self.ws_allowed_origins.split(",") if o.strip())

    def jwt_algorithm_list(self) -> tuple[str, ...]:
        """The allowed algorithms: ``SOMA_JWT_ALGORITHMS``, else the key family's default."""
        given = tuple(a.strip() for a in self.jwt_algorithms.split(",") if a.strip())
        if given:
            return given
        return ("HS256",) if self.jwt_secret else ("RS256", "ES256")

    def responder(self) -> ResponderSettings:
        """The responder's slice."""
        return ResponderSettings(
            url=self.slm_url.rstrip("/"),
            model=self.slm_model,
            max_tokens=self.slm_max_tokens,
            temperature=self.slm_temperature,
            history_chars=self.slm_history_chars,
            coalesce_seconds=self.slm_coalesce_seconds,
            timeout_seconds=self.slm_timeout_seconds,
            system_prompt=self.slm_system_prompt,
            personas=self.persona_prompts(),
            tools=tuple(name.strip() for name in self.slm_tools.split(",") if name.strip()),
            tool_choice=self.slm_tool_choice,
            tool_rounds=self.slm_tool_rounds,
        )

    def persona_prompts(self) -> dict[str, str]:
        if not self.slm_personas:
            return {}
        try:
            personas = json.loads(self.slm_personas)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"SOMA_SLM_PERSONAS must be a JSON object (persona id -> prompt): {exc}") from exc
        if not isinstance(personas, dict) or not all(isinstance(v, str) for v in personas.values()):
            raise SettingsError("SOMA_SLM_PERSONAS must be a JSON object of strings (persona id -> system prompt)")
        return personas

    def tools(self) -> ToolSettings:
        """The tool executor's slice."""
        return ToolSettings(
            timeout_seconds=self.tool_timeout_seconds,
            timeouts=self.tool_timeout_map(),
            http_fetch_hosts=self.http_fetch_hosts(),
            http_fetch_ports=self.http_fetch_port_set(),
            http_fetch_allow_private=self.http_fetch_allow_private,
            http_fetch_max_bytes=self.http_fetch_max_bytes,
            max_event_bytes=self.max_event_bytes,
        )

    def _validate_kafka_auth(self) -> None:
        mechanisms = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
        if self.kafka_sasl_mechanism and self.kafka_sasl_mechanism not in mechanisms:
            raise SettingsError(f"SOMA_KAFKA_SASL_MECHANISM must be one of {', '.join(mechanisms)}")
        if self.kafka_sasl_mechanism and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise SettingsError("SOMA_KAFKA_SASL_MECHANISM needs SOMA_KAFKA_SASL_USERNAME and SOMA_KAFKA_SASL_PASSWORD")
        if self.kafka_sasl_mechanism == "PLAIN" and not self.kafka_ssl_cafile:
            raise SettingsError("SASL PLAIN sends the password as it is: it needs TLS (SOMA_KAFKA_SSL_CAFILE)")
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            raise SettingsError("SOMA_KAFKA_SSL_CERTFILE and SOMA_KAFKA_SSL_KEYFILE go together")
        if self.kafka_ssl_certfile and not self.kafka_ssl_cafile:
            raise SettingsError("a client certificate (SOMA_KAFKA_SSL_CERTFILE) needs SOMA_KAFKA_SSL_CAFILE")

    def kafka_security(self) -> dict[str, Any]:
        """The aiokafka arguments for the brokers' listener: security protocol, SASL and TLS."""
        context = None
        if self.kafka_ssl_cafile:
            cafile = None if self.kafka_ssl_cafile == "system" else self.kafka_ssl_cafile
            context = ssl.create_default_context(cafile=cafile)
            if self.kafka_ssl_certfile:
                context.load_cert_chain(self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        if self.kafka_sasl_mechanism:
            return {
                "security_protocol": "SASL_SSL" if context else "SASL_PLAINTEXT",
                "sasl_mechanism": self.kafka_sasl_mechanism,
                "sasl_plain_username": self.kafka_sasl_username,
                "sasl_plain_password": self.kafka_sasl_password,
                "ssl_context": context,
            }
        if context is not None:
            return {"security_protocol": "SSL", "ssl_context": context}
        return {"security_protocol": "PLAINTEXT"}

    def _validate_auth(self) -> None:
        """One key family, its own algorithms only, a bounded leeway (RFC 8725)."""
        keys = [name for name, value in (("SOMA_JWT_SECRET", self.jwt_secret), ("SOMA_JWT_PUBLIC_KEY",
                self.jwt_public_key), ("SOMA_JWKS_URL", self.jwks_url)) if value]  # fmt: skip
        if len(keys) > 1:
            raise SettingsError(f"set one key source, not {' and '.join(keys)}: one verifier per key family")
        if self.auth_required and not keys:
            raise SettingsError("SOMA_AUTH_REQUIRED needs SOMA_JWT_SECRET, SOMA_JWT_PUBLIC_KEY or SOMA_JWKS_URL")
        symmetric = {"HS256", "HS384", "HS512"}
        asymmetric = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
        family = symmetric if self.jwt_secret else asymmetric
        wrong = [a for a in self.jwt_algorithm_list() if a not in family]
        if wrong:
            kind = "a shared secret" if self.jwt_secret else "public keys"
            raise SettingsError(f"SOMA_JWT_ALGORITHMS {', '.join(wrong)} cannot be verified with {kind}")
        if self.jwt_secret and len(self.jwt_secret.encode()) < 32:
            raise SettingsError("SOMA_JWT_SECRET must be at least 32 bytes (RFC 7518 3.2)")
        if self.dev_tokens and not (self.auth_required and self.jwt_secret):
            raise SettingsError(
                "SOMA_DEV_TOKENS needs SOMA_AUTH_REQUIRED and SOMA_JWT_SECRET (it signs with the secret)"
            )
        if not 0 <= self.jwt_leeway_seconds <= 60:
            raise SettingsError("SOMA_JWT_LEEWAY_SECONDS must be within 0..60")
        if self.rate_limit_per_second < 0 or self.rate_limit_address_per_second < 0:
            raise SettingsError("rate limits must be >= 0 (0: off)")
        if self.rate_limit_burst < 1 or self.rate_limit_address_burst < 1:
            raise SettingsError("SOMA_RATE_LIMIT_BURST and SOMA_RATE_LIMIT_ADDRESS_BURST must be >= 1")
        if self.streams_per_tenant < 0 or self.streams_per_address < 0:
            raise SettingsError("SOMA_STREAMS_PER_TENANT and SOMA_STREAMS_PER_ADDRESS must be >= 0 (0: no limit)")
        if self.opa_url and not self.opa_url.startswith(("https://", "http://")):
            raise SettingsError("SOMA_OPA_URL must be an http(s) URL")
        if self.opa_timeout_seconds <= 0 or self.opa_cache_seconds < 0:
            raise SettingsError("SOMA_OPA_TIMEOUT_SECONDS must be positive and SOMA_OPA_CACHE_SECONDS >= 0")
        if self.jwks_url and not self.jwks_url.startswith(("https://", "http://")):
            raise SettingsError("SOMA_JWKS_URL must be an http(s) URL")
        if not [c for c in self.jwt_tenant_claims.split(",") if c.strip()]:
            raise SettingsError("SOMA_JWT_TENANT_CLAIMS must name at least one claim")
        if (
            self.jwks_cache_seconds <= 0
            or self.jwks_min_refetch_seconds < 0
            or self.jwks_timeout_seconds <= 0
            or self.jwt_max_bytes < 256
            or not 1 <= self.stream_ticket_ttl_seconds <= 300
        ):
            raise SettingsError("JWKS timings must be positive, SOMA_JWT_MAX_BYTES >= 256, ticket TTL 1..300 s")

    def topic_config(self, dead_letters: bool) -> dict[str, str]:
        """The topic-level configuration a topic is created with (an existing topic keeps its own)."""
        config: dict[str, str] = {}
        if self.topic_min_insync_replicas:
            config["min.insync.replicas"] = str(self.topic_min_insync_replicas)
        if dead_letters:
            config["retention.ms"] = str(int(self.dlq_retention_hours * 3_600_000) or -1)
        return config

    def topic(self, name: str) -> str:
        """The real topic name of a logical topic (tests give each run its own prefix)."""
        return self.topic_prefix + name


def cluster_defaults(brokers: int) -> dict[str, Any]:
    """With ``SOMA_KAFKA_BROKERS`` > 1, what the settings left unset default to: the local cluster's nodes as
    the bootstrap list (node i on 9092 + 3 i) and its replication (3 replicas, 2 in sync)."""
    if brokers <= 1 or brokers > MAX_LOCAL_BROKERS:
        return {}
    host, _, port = Settings.kafka_bootstrap.rpartition(":")
    return {
        "kafka_bootstrap": ",".join(f"{host}:{int(port) + 3 * i}" for i in range(brokers)),
        "topic_replication": min(3, brokers),
        "topic_min_insync_replicas": 2 if brokers >= 3 else 0,
    }


def _parse(name: str, raw: str, f: dataclasses.Field[Any]) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind == "Path":
            return Path(raw).expanduser()
        return raw
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind}") from exc
