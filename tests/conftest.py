"""Fixtures: the real stack (started or reused), and per-test isolation on it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from blockbuster import BlockBuster, blockbuster_ctx
from playwright.async_api import Browser, async_playwright

from app.settings import Settings
from deploy.localstack.__main__ import components
from deploy.localstack.base import require_command
from tests.support import secrets
from tests.support.isolation import (
    Isolated,
    admin_execute,
    base_settings,
    drop_stale_databases,
    isolated,
    migrated_template,
)

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


# the files that take longest (a minute or more of waiting on outages, rebalances, clusters), run first: with
# --dist loadfile a long file handed out last keeps one process busy while the others have finished
LONGEST_FIRST = (
    "test_faults.py",
    "test_cli.py",
    "test_table_recovery.py",
    "test_kafka_cluster.py",
    "test_feed_faults.py",
    "test_replicas.py",
    "test_event_core.py",
    "test_schema_drift.py",
    "test_responder.py",
    "test_traces.py",
    "test_voice.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that reaches a real server (through ``stack``) is an integration test; the rest need none.
    The longest files go first (a stable sort: each file's tests stay together, in their order)."""
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))


@pytest.fixture(scope="session")
def stack() -> Settings:
    """Kafka, Redis and Postgres, up and answering; a test that cannot reach them fails here."""
    settings = base_settings()
    for component in components(settings):
        component.up()
    return settings


@pytest.fixture(scope="session")
def template_db(stack: Settings) -> Iterator[str]:
    drop_stale_databases(stack.postgres_dsn)
    template = migrated_template(stack)
    yield template
    admin_execute(stack.postgres_dsn, f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')


@pytest.fixture
def iso(stack: Settings, template_db: str, tmp_path: Path) -> Iterator[Isolated]:
    with isolated(stack, template_db, tmp_path / "faust-data") as value:
        yield value


@pytest.fixture(scope="module")
def iso_module(stack: Settings, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    with isolated(stack, template_db, tmp_path_factory.mktemp("faust-data")) as value:
        yield value


@pytest.fixture(scope="session")
def artifacts() -> Iterator[Path]:
    """Where tests write logs and screenshots. At the end of the session every log written during it is read:
    a token or a secret the suite gave a worker, found in one, fails the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    began = time.time()
    yield ARTIFACTS
    written = [p for p in (ARTIFACTS / "logs").glob("*.log") if p.stat().st_mtime >= began]
    found = secrets.leaks(written)
    assert not found, "secrets or tokens in logs:\n" + "\n".join(found[:20])


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Any test during which its event loop was blocked by a synchronous call fails (aiohttp's suite does the
    same): a blocking helper of a test goes through a thread (``asyncio.to_thread``)."""
    with blockbuster_ctx() as detector:
        # libraries' own one-time looks: playwright's for its bundled driver (a browser test's start); mode's
        # registries (faust's stores and codecs) reading the installed entry points once per process
        detector.functions["os.stat"].can_block_in("playwright/_impl/_driver.py", "compute_driver_executable")
        for function in ("os.stat", "os.listdir", "io.TextIOWrapper.read", "io.BufferedReader.read"):
            detector.functions[function].can_block_in("mode/utils/imports.py", "load_extension_class_names")
        # a worker's log read to explain a failure: the test has failed already
        for function in ("io.TextIOWrapper.read", "io.BufferedReader.read", "os.stat"):
            detector.functions[function].can_block_in("tests/support/worker.py", "log")
        yield detector


# Debian's Chromium, not a Playwright browser build (those are downloads this project never makes)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary, apt-installed on a machine that lacks it."""
    return require_command("chromium", "chromium")


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()
