"""Every error code a client can receive is in app.errors.CODES with its status, used, and documented."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from app.errors import CODES, ApiError, UnknownErrorCode, error_body

ROOT = Path(__file__).resolve().parent.parent
# how a module names a code it answers: a class's ``code = "..."``, ``code="..."``, ``error_body("...")``,
# a WebSocket ``_error_frame("...")``, or a tuple of codes looked up with ``status_of``
NAMED = re.compile(r"""\bcode\s*=\s*"([a-z_]+)"|(?:error_body|_error_frame)\(\s*"([a-z_]+)\"""")
LOOKED_UP = re.compile(r"status_of\(code\)[^(]* for code in \(([^)]*)\)")


def named_codes() -> dict[str, list[str]]:
    """Each code the service's modules name, with where (the registry's own entries do not match NAMED)."""
    found: dict[str, list[str]] = {}
    for package in ("app", "agents", "tables", "views"):
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            codes = [a or b for a, b in NAMED.findall(text)]
            for group in LOOKED_UP.findall(text):
                codes += re.findall(r'"([a-z_]+)"', group)
            for code in codes:
                found.setdefault(code, []).append(str(path.relative_to(ROOT)))
    return found


def test_every_code_a_module_answers_is_registered() -> None:
    # tool results carry codes of their own (agents/tools), answered to the model, not to an HTTP client
    unknown = {code: where for code, where in named_codes().items() if code not in CODES and "tool" not in where[0]}
    assert not unknown, f"codes not in app.errors.CODES: {unknown}"


def test_every_registered_code_is_answered_somewhere() -> None:
    unused = set(CODES) - set(named_codes())
    assert not unused, f"codes in app.errors.CODES that no module answers: {sorted(unused)}"


def test_the_scan_sees_each_way_of_naming_a_code() -> None:
    assert [a or b for a, b in NAMED.findall('    code = "overloaded"\n raise ApiError("x", code="body_timeout")')] == [
        "overloaded",
        "body_timeout",
    ]
    assert [a or b for a, b in NAMED.findall('error_body("too_many_connections", "...")')] == ["too_many_connections"]
    assert LOOKED_UP.findall('{status_of(code): code for code in ("not_found", "method_not_allowed")}')


def test_an_unregistered_code_is_refused_where_it_is_raised_or_declared() -> None:
    with pytest.raises(UnknownErrorCode):
        ApiError("no such code", code="no_such_code")
    with pytest.raises(UnknownErrorCode):
        error_body("no_such_code", "x")
    with pytest.raises(UnknownErrorCode):

        class Undocumented(ApiError):
            code = "undocumented"


def test_an_error_answers_the_status_of_its_code() -> None:
    assert ApiError("x", code="idempotency_key_reused").status == 422
    assert ApiError("x", code="upgrade_required").status == 426
    with pytest.raises(TypeError):
        ApiError("a bare ApiError needs a code")


def routed_views() -> dict[str, Any]:
    """Every view the app routes, as a worker has them (faust's scan of tables/, agents/, views/)."""
    from app import app

    app.discover()
    return dict(app.web.views)


# views that are pages for people, not part of the documented API
PAGES = {"/", "/static/{name}"}


def test_every_routed_view_documents_exactly_the_methods_it_serves() -> None:
    from faust.web import View

    from views.openapi import document

    views = routed_views()
    assert {"/v1/session/message", "/health", "/openapi.json"} <= set(views)
    documented = document()["paths"]
    for path, view in views.items():
        served = {
            m for m in ("get", "post", "put", "patch", "delete") if getattr(type(view), m) is not getattr(View, m)
        }
        assert served, f"{path} serves no method"
        if path in PAGES:
            assert view.openapi is None and path not in documented, f"{path} is a page, not an API operation"
            continue
        assert view.openapi is not None, f"{path} ({type(view).__name__}) declares no OpenAPI operations"
        assert set(view.openapi) == served, f"{path}: serves {sorted(served)}, documents {sorted(view.openapi)}"
        assert set(documented[path]) == served
        for method, operation in documented[path].items():
            assert operation.get("summary") and operation.get("responses"), f"{method.upper()} {path}"
    assert set(documented) == set(views) - PAGES


def test_the_openapi_document_lists_every_http_code_under_its_status() -> None:
    from views.openapi import document

    routed_views()

    described: dict[str, str] = {}
    for path in document()["paths"].values():
        for operation in path.values():
            for status, answer in operation.get("responses", {}).items():
                described[status] = described.get(status, "") + " " + answer.get("description", "")
    for code, known in CODES.items():
        if known.websocket_only:
            continue
        assert str(known.status) in described, f"no operation answers {known.status} ({code})"
        assert re.search(rf"\b{code}\b", described[str(known.status)]), f"{code} is not documented under {known.status}"


def test_the_operations_guide_lists_every_http_code_under_its_status() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    table = text[text.index("## Error codes of the HTTP API") :]
    rows = {row[0]: row[1] for row in re.findall(r"^\| (\d{3}) \| (.*) \|$", table, re.MULTILINE)}
    for code, known in CODES.items():
        if known.websocket_only:
            assert f"`{code}`" in table, f"{code} (WebSocket frames) is not in docs/operations.md"
        else:
            assert f"`{code}`" in rows.get(str(known.status), ""), f"{code} is not in the {known.status} row"
