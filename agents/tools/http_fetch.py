"""``http_fetch``: GET or HEAD an http(s) URL whose host is allowlisted, the body capped in size."""

from __future__ import annotations

from typing import Any

import aiohttp
from yarl import URL

from agents.tools.registry import ToolContext, ToolError, tool

ARGS = frozenset({"url", "method"})
METHODS = frozenset({"GET", "HEAD"})
SCHEMES = frozenset({"http", "https"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
CHUNK_BYTES = 65_536
# the only response headers passed on: the rest is noise for a model and may carry cookies
RESULT_HEADERS = ("Content-Type", "Content-Length")


@tool("http_fetch")
async def http_fetch(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Args: ``url`` (required), ``method`` ("GET" default, or "HEAD").

    Result: ``url`` (final, after redirects), ``status``, ``headers`` (content-type and content-length when
    sent), ``body`` (utf-8 text, invalid bytes replaced; "" for HEAD), ``bytes`` (body size) and
    ``truncated`` (always false: a body over ``SOMA_HTTP_FETCH_MAX_BYTES`` is the error ``response_too_large``).
    Redirects are followed, at most 5, each hop checked against the allowlist like the first URL.
    """
    url, method = _parse_args(args)
    hosts = ctx.settings.http_fetch_hosts
    _check_url(url, hosts)
    for _ in range(MAX_REDIRECTS + 1):
        try:
            # aiohttp's own redirect following would reach hosts the allowlist never saw
            async with ctx.http.request(method, url, allow_redirects=False) as response:
                location = response.headers.get("Location")
                if response.status in REDIRECT_STATUSES and location:
                    url = _redirect_target(url, location, hosts)
                    continue
                return await _result(url, method, response, ctx.settings.http_fetch_max_bytes)
        except aiohttp.ClientError as exc:
            raise ToolError(f"fetching {url} failed: {type(exc).__name__}: {exc}", "fetch_failed") from exc
    raise ToolError(f"more than {MAX_REDIRECTS} redirects, last to {url}", "too_many_redirects")


def _parse_args(args: dict[str, Any]) -> tuple[URL, str]:
    unknown = set(args) - ARGS
    if unknown:
        raise ToolError(f"unknown args: {', '.join(sorted(unknown))}; expected url and method", "invalid_args")
    raw = args.get("url")
    if not isinstance(raw, str) or not raw.strip():
        raise ToolError("url is required: an http or https URL string", "invalid_args")
    method = args.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise ToolError(f"method must be GET or HEAD, not {method!r}", "invalid_args")
    try:
        url = URL(raw.strip())
    except ValueError as exc:
        raise ToolError(f"url {raw!r} is not a valid URL: {exc}", "invalid_args") from exc
    if url.scheme not in SCHEMES:
        raise ToolError(f"url {raw!r}: only http and https URLs can be fetched", "invalid_args")
    if not url.host:
        raise ToolError(f"url {raw!r} has no host", "invalid_args")
    return url, method.upper()


def _check_url(url: URL, hosts: frozenset[str]) -> None:
    host = (url.host or "").lower()
    if host not in hosts:
        raise ToolError(f"host {host!r} is not in SOMA_HTTP_FETCH_ALLOWLIST", "host_not_allowed")


def _redirect_target(current: URL, location: str, hosts: frozenset[str]) -> URL:
    try:
        target = current.join(URL(location))
    except ValueError as exc:
        raise ToolError(f"redirect to an invalid URL {location!r}", "invalid_redirect") from exc
    if target.scheme not in SCHEMES or not target.host:
        raise ToolError(f"redirect to {location!r}: only http and https URLs can be fetched", "invalid_redirect")
    _check_url(target, hosts)
    return target


async def _result(url: URL, method: str, response: aiohttp.ClientResponse, max_bytes: int) -> dict[str, Any]:
    body = bytearray()
    if method == "GET":
        # a declared length settles it before any byte is read; a compressed length says nothing about the
        # decoded size, so then only the count of decoded bytes (which also stops a zip bomb) decides
        declared = response.content_length
        if declared is not None and declared > max_bytes and "Content-Encoding" not in response.headers:
            raise ToolError(f"response of {declared} bytes exceeds the limit of {max_bytes}", "response_too_large")
        async for chunk in response.content.iter_chunked(CHUNK_BYTES):
            body += chunk
            if len(body) > max_bytes:
                raise ToolError(f"response exceeds the limit of {max_bytes} bytes", "response_too_large")
    headers = {name.lower(): response.headers[name] for name in RESULT_HEADERS if name in response.headers}
    return {
        "url": str(url),
        "status": response.status,
        "headers": headers,
        "body": body.decode("utf-8", errors="replace"),
        "bytes": len(body),
        "truncated": False,
    }
