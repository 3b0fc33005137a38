"""``http_fetch``: GET or HEAD an http(s) URL whose host is allowlisted, the body capped in size.

Server-side request forgery is closed at every hop (the first URL and each redirect): the host must be in
``SOMA_HTTP_FETCH_ALLOWLIST``, the port in ``SOMA_HTTP_FETCH_PORTS``, and every address the host resolves to
must be public (not loopback, private, link-local (cloud metadata), shared, multicast or reserved) unless
``SOMA_HTTP_FETCH_ALLOW_PRIVATE`` is on. The request then goes to the address that was checked, never to a
second resolution of the name (DNS rebinding): the URL carries the address, the Host header and TLS's server
name the host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import aiohttp
from yarl import URL

from agents.tools.registry import ToolContext, ToolError, tool
from app.settings import ToolSettings

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
    settings = ctx.settings
    hosts = settings.http_fetch_hosts
    _check_url(url, hosts)
    for _ in range(MAX_REDIRECTS + 1):
        address = await _checked_address(url, settings)
        try:
            # aiohttp's own redirect following would reach hosts the allowlist never saw
            async with ctx.http.request(
                method,
                url.with_host(address),
                allow_redirects=False,
                headers={"Host": _host_header(url)},
                server_hostname=url.host if url.scheme == "https" else None,
            ) as response:
                location = response.headers.get("Location")
                if response.status in REDIRECT_STATUSES and location:
                    url = _redirect_target(url, location, hosts)
                    continue
                return await _result(url, method, response, settings.http_fetch_max_bytes)
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


async def _checked_address(url: URL, settings: ToolSettings) -> str:
    """The address to connect to for ``url``: its port allowed, every address of its host public (or allowed)."""
    port = url.port or (443 if url.scheme == "https" else 80)
    if settings.http_fetch_ports is not None and port not in settings.http_fetch_ports:
        allowed = ", ".join(str(p) for p in sorted(settings.http_fetch_ports))
        raise ToolError(f"port {port} is not in SOMA_HTTP_FETCH_PORTS ({allowed})", "port_not_allowed")
    host = url.host or ""
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ToolError(f"host {host!r} does not resolve: {exc}", "fetch_failed") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    if not addresses:
        raise ToolError(f"host {host!r} has no address", "fetch_failed")
    if not settings.http_fetch_allow_private:
        for text in addresses:
            if not _public(ipaddress.ip_address(text.split("%")[0])):
                # any non-public answer refuses the host: a name that resolves both ways is a rebinding attempt
                raise ToolError(
                    f"host {host!r} resolves to {text}, which is not a public address", "address_not_allowed"
                )
    first = addresses[0]
    return first


def _host_header(url: URL) -> str:
    host = url.raw_host or ""
    return host if url.is_default_port() else f"{host}:{url.port}"


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A globally routable unicast address (IPv4-mapped IPv6 judged as the IPv4 it carries)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


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
