"""Path and query parameters of the session views, checked once with stable error codes."""

from __future__ import annotations

import re
from collections.abc import Mapping

from app.errors import ApiError

SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# ASCII digits only (str.isdigit() accepts U+00B2, which int() refuses, and U+0661, which int() reads as 1), and few
# enough of them that int() stays cheap (Python refuses more than 4,300 digits, with a ValueError)
DIGITS = re.compile(r"[0-9]{1,19}")


class InvalidParameter(ApiError):
    code = "invalid_parameter"


def session_id(raw: str) -> str:
    if not SESSION_ID.fullmatch(raw):
        raise InvalidParameter("session id must be 1-128 characters of A-Z a-z 0-9 . _ : - (not starting with . _ : -)")
    return raw


def integer(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise InvalidParameter(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def resume_position(query: Mapping[str, str], headers: Mapping[str, str]) -> int:
    """Where a stream resumes: ``Last-Event-ID`` (what a browser sends back) or ``?after=``; 0 = the start."""
    last_event_id = headers.get("Last-Event-ID")
    if last_event_id:
        return integer({"Last-Event-ID": last_event_id.strip()}, "Last-Event-ID", 0, 0, 2**62)
    return integer(query, "after", 0, 0, 2**62)
