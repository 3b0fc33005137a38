"""The backoff policies (app/retry.py): their arithmetic, and that no other module keeps a backoff of its own."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from app import retry
from app.retry import Backoff

ROOT = Path(__file__).resolve().parent.parent
# a hand-rolled backoff: a delay doubled, or grown by a power of the attempt number
HAND_ROLLED = re.compile(
    r"(delay|wait|backoff)\w*\s*\*\s*2\b|\*\s*2\s*,\s*[\w.]+\)|\*\s*2\s*\*\*\s*\w*attempt", re.IGNORECASE
)


def test_delays_double_from_first_up_to_the_cap() -> None:
    assert list(itertools.islice(Backoff(0.1, 1.0).delays(), 7)) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_each_run_of_attempts_starts_again_from_first() -> None:
    policy = Backoff(0.5, 4.0)
    first_run = policy.delays()
    assert [next(first_run) for _ in range(3)] == [0.5, 1.0, 2.0]
    assert next(policy.delays()) == 0.5


@pytest.mark.parametrize(("first", "cap"), [(0.0, 1.0), (2.0, 1.0), (-1.0, 5.0)])
def test_a_policy_that_cannot_back_off_is_refused(first: float, cap: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(first, cap)


def test_every_boundary_policy_is_a_backoff() -> None:
    policies = {name: value for name, value in vars(retry).items() if isinstance(value, Backoff)}
    assert set(policies) >= {"INFRASTRUCTURE", "UNKNOWN_ERROR", "FEED_RECONNECT", "TABLE_LOAD", "TABLE_FLUSH"}


def test_no_module_keeps_a_backoff_of_its_own() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for package in ("app", "agents", "tables", "views")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name != "retry.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if HAND_ROLLED.search(line)
    ]
    assert not offenders, "use a policy of app/retry.py:\n" + "\n".join(offenders)


def test_the_structural_check_sees_a_hand_rolled_backoff() -> None:
    assert HAND_ROLLED.search("                delay = min(delay * 2, 5.0)")
    assert HAND_ROLLED.search("            await asyncio.sleep(0.1 * 2**attempt)")
    assert HAND_ROLLED.search("                delay = min(max(delay, 0.25) * 2, 5.0)")
    assert not HAND_ROLLED.search("    return value * 2")
