"""One settings object from SOMA_* variables; faust's own variables cannot override it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from app.errors import SettingsError
from app.faust_app import create_app
from app.producer import IdempotentProducer
from app.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_defaults_with_an_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.web_port == 6066


def test_values_are_parsed_by_type() -> None:
    settings = Settings.from_env(
        {
            "SOMA_WEB_PORT": "7000",
            "SOMA_HEALTH_TIMEOUT_SECONDS": "0.5",
            "SOMA_DATA_DIR": "/tmp/x",
            "SOMA_TOPIC_PREFIX": "dev.",
        }
    )
    assert settings.web_port == 7000
    assert settings.health_timeout_seconds == 0.5
    assert settings.data_dir == Path("/tmp/x")
    assert settings.topic("conversation.inbound") == "dev.conversation.inbound"


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"SOMA_WEB_PROT": "7000"}, "SOMA_WEB_PROT"),
        ({"SOMA_WEB_PORT": "seven"}, "SOMA_WEB_PORT"),
        ({"SOMA_WEB_PORT": "70000"}, "SOMA_WEB_PORT"),
        ({"SOMA_TOPIC_PARTITIONS": "0"}, "SOMA_TOPIC_PARTITIONS"),
        ({"SOMA_TOPIC_MIN_INSYNC_REPLICAS": "2"}, "SOMA_TOPIC_MIN_INSYNC_REPLICAS"),
        ({"SOMA_DLQ_RETENTION_HOURS": "-1"}, "SOMA_DLQ_RETENTION_HOURS"),
        ({"SOMA_KAFKA_BROKERS": "0"}, "SOMA_KAFKA_BROKERS"),
        ({"SOMA_KAFKA_BROKERS": "10"}, "SOMA_KAFKA_BROKERS"),
        ({"SOMA_REDIS_URL": "http://x"}, "SOMA_REDIS_URL"),
        ({"SOMA_POSTGRES_DSN": "mysql://x"}, "SOMA_POSTGRES_DSN"),
    ],
)
def test_unknown_or_bad_settings_fail_at_start(env: dict[str, str], complaint: str) -> None:
    with pytest.raises(SettingsError, match=complaint):
        Settings.from_env(env)


def test_topic_configuration_sets_min_isr_everywhere_and_retention_on_dead_letters() -> None:
    settings = Settings.from_env({"SOMA_TOPIC_REPLICATION": "3", "SOMA_TOPIC_MIN_INSYNC_REPLICAS": "2"})
    assert settings.topic_config(dead_letters=False) == {"min.insync.replicas": "2"}
    assert settings.topic_config(dead_letters=True) == {"min.insync.replicas": "2", "retention.ms": "2419200000"}
    forever = Settings.from_env({"SOMA_DLQ_RETENTION_HOURS": "0"})
    assert forever.topic_config(dead_letters=False) == {}  # min ISR 0: the broker's default
    assert forever.topic_config(dead_letters=True) == {"retention.ms": "-1"}


def test_a_local_cluster_of_3_brokers_sets_the_defaults_of_bootstrap_and_replication() -> None:
    cluster = Settings.from_env({"SOMA_KAFKA_BROKERS": "3"})
    assert cluster.kafka_bootstrap == "127.0.0.1:9092,127.0.0.1:9095,127.0.0.1:9098"
    assert (cluster.topic_replication, cluster.topic_min_insync_replicas) == (3, 2)
    # what is set stays as it is
    given = Settings.from_env(
        {"SOMA_KAFKA_BROKERS": "3", "SOMA_KAFKA_BOOTSTRAP": "127.0.0.1:19092", "SOMA_TOPIC_MIN_INSYNC_REPLICAS": "1"}
    )
    assert (given.kafka_bootstrap, given.topic_replication, given.topic_min_insync_replicas) == (
        "127.0.0.1:19092",
        3,
        1,
    )
    one = Settings.from_env({"SOMA_KAFKA_BROKERS": "1"})
    assert (one.kafka_bootstrap, one.topic_replication, one.topic_min_insync_replicas) == ("127.0.0.1:9092", 1, 0)


def test_the_dsn_password_is_never_printed() -> None:
    settings = Settings.from_env({"SOMA_POSTGRES_DSN": "postgresql://u:s3cret@h:5432/d"})
    assert "s3cret" not in repr(settings)


def test_faust_environment_variables_do_not_override_our_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "BROKER_URL": "kafka://elsewhere:1",
        "WEB_PORT": "1111",
        "WEB_BIND": "0.0.0.0",
        "APP_DATADIR": "/nowhere",
        "WEB_ENABLED": "false",
        "TOPIC_PARTITIONS": "99",
        "PRODUCER_ACKS": "1",
        "ENV_PREFIX": "X_",
        "FAUST_WEB_PORT": "2222",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env({"SOMA_WEB_PORT": "7010", "SOMA_TOPIC_PARTITIONS": "4"})
    app = create_app(settings)
    conf = app.conf
    assert [str(url) for url in conf.broker] == ["kafka://127.0.0.1:9092"]
    assert conf.web_port == 7010
    assert conf.web_bind == "127.0.0.1"
    assert conf.web_enabled is True
    assert conf.topic_partitions == 4
    assert conf.producer_acks == -1
    assert conf.web_tables_enabled is False
    assert conf.web_router_enabled is False


async def test_the_producer_waits_for_all_replicas_and_is_idempotent(stack: Settings) -> None:
    app = create_app(stack)
    producer = app.producer
    assert isinstance(producer, IdempotentProducer)
    real = producer._new_producer()
    await real.start()
    try:
        await real.send_and_wait("__soma_stack_probe", b"idempotence", key=b"k", partition=0)
        assert real._sender._acks == -1
        # only an idempotent producer asks the broker for a producer id (InitProducerId)
        assert real._txn_manager is not None
        assert real._txn_manager.producer_id >= 0
    finally:
        await real.stop()


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text()
    for field in dataclasses.fields(Settings):
        assert f"`SOMA_{field.name.upper()}`" in text, f"SOMA_{field.name.upper()} missing from {DOCS.name}"
